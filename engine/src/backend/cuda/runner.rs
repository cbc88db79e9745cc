//! The forward pass as a sequence of launches on the backend's stream:
//! embed+norm, then per layer QKV GEMM → bias/q-k-norm/RoPE/KV write →
//! paged attention (splits merged in-kernel) → O GEMM → residual-add+norm →
//! gate-up GEMM → SiLU·mul → down GEMM → residual-add+norm, then the final
//! norm of the sampled rows, the LM head and sampling. The same code runs
//! eagerly and under CUDA-graph capture; it reads every per-step value from
//! the step-metadata buffer, so a captured graph replays any step of its size.
//!
//! Steps of at most `GEMV_MAX_T` tokens (batch-1 to batch-8 decode) take the
//! small-batch path instead: five kernels per layer, no cuBLAS —
//! RMSNorm+QKV+bias+RoPE+KV write, attention, O+residual add,
//! RMSNorm+gate-up+SiLU·mul, down+residual add (`kernels/gemv.cu`); Qwen3's
//! per-head q/k norm needs whole heads, so there the QKV product and
//! bias/norm/RoPE/KV write stay two kernels. Its numerics are the GEMM path's:
//! the same bf16 roundings, f32 accumulation. With `DYNO_CUDA_PERSISTENT=1`
//! (off by default: slower on the H200) those layers are one launch of
//! `decode_layers` instead, the same bodies as phases of a persistent grid,
//! the same bits ([`PersistentDecode`]).
//!
//! With `batch_invariant` every step takes the GEMM path, the products go
//! through [`InvariantGemm`] (one pinned cuBLASLt algorithm per weight
//! shape), and attention cuts each query's context into units of
//! `split_keys` keys whose partials are folded in order — by the last of
//! one block per unit at small steps, by one block per query at steps that
//! fill the GPU (`attention_units`) — so a token's arithmetic never depends
//! on the step's other tokens. With `DYNO_INVARIANT_PRODUCTS=gemv` it is the other way
//! round: every step takes the small-batch path, a step of more than
//! `GEMV_MAX_T` tokens as tiles of that many (`blockIdx.y`), whose per-token
//! sums do not depend on the tile ([`InvariantProducts`]); the pinned GEMM
//! is then only the LM head's. Norms, RoPE/KV write, SiLU·mul, the final norm and sampling
//! are already per row: one block (or grid-stride element) per token, the
//! same reduction whatever the grid.

use super::super::BackendError;
use super::arena::{Arena, Dims};
use super::buffer::DeviceBuffer;
use super::gemm::Gemm;
use super::gemm_lt::InvariantGemm;
use super::kernels::{
    AddRmsnorm, Attention, DecodeLayers, DownProjResidual, DownProjResidualSplit, EmbedRmsnorm,
    FinalRmsnormRows, Kernels, NormGateUpSilu, NormQkv, NormQkvRopeCache, OProjResidual,
    OProjResidualSplit, QkvRopeCache, SampleRows, SiluMul, ADD_RMSNORM_WARPS, ATTN_MAX_SPLITS,
    GEMV_MAX_T, GEMV_ROWS, GEMV_WARPS, ROPE_CACHE_THREADS,
};
use super::kv_pool::KvPool;
use super::persistent::PersistentDecode;
use super::step_meta::MetaLayout;
use super::weights::DeviceWeights;

/// The matrix products of a forward pass.
pub enum Products {
    /// cuBLAS's choice of kernel per call (fastest; the reduction order of a
    /// row may change with the row count).
    Cublas(Gemm),
    /// One pinned, self-checked algorithm per weight shape
    /// (`batch_invariant`).
    Invariant(InvariantGemm),
}

impl Products {
    /// `y[t, n] = Σ_k x[t, k] · w[n, k]`, row-major, device pointers.
    pub fn linear(
        &self,
        x: u64,
        w: u64,
        y: u64,
        rows: usize,
        n: usize,
        k: usize,
    ) -> Result<(), BackendError> {
        match self {
            Products::Cublas(g) => g.linear(x, w, y, rows, n, k),
            Products::Invariant(g) => g.linear(x, w, y, rows, n, k),
        }
    }
}

/// The fewest keys per attention split `batch_invariant` allows: the
/// context limit over `ATTN_MAX_SPLITS`, rounded up to a multiple of 64 (a
/// whole number of block iterations for every head dim: a block takes 8 to
/// 64 keys per iteration), so that the longest context still needs at most
/// `ATTN_MAX_SPLITS` splits — the grid, the partial buffers and the merge
/// stay as bounded as without the knob.
pub fn invariant_min_split_keys(max_model_len: usize) -> usize {
    max_model_len
        .div_ceil(ATTN_MAX_SPLITS)
        .max(1)
        .next_multiple_of(64)
}

/// Keys per split `batch_invariant` takes unless the context limit asks
/// for more. Each unit of a query costs a merge of the block's warps and a
/// fold (and, split, a block's setup and a partial write): on the H200
/// (docs/BENCHMARKS.md, issue 15) the knob cost smollm2-135m offline
/// 3.4 % at 256 keys and 1.7 % at 512, while batch-1 decode under the knob
/// stayed at 0.922 ms per token either way (it had gone from 1.26 to
/// 1.38 ms at 64 → 256 before the knob's small steps changed).
pub const INVARIANT_SPLIT_KEYS: usize = 512;

/// Keys per attention split under `batch_invariant`: fixed per process, so
/// a query's splits depend on its context length only —
/// `INVARIANT_SPLIT_KEYS`, or `invariant_min_split_keys` where a long
/// `max_model_len` needs coarser splits. The price: short contexts get few
/// splits (one below `split_keys` keys), so small decode batches use fewer
/// blocks than the default heuristic gives them.
pub fn invariant_split_keys(max_model_len: usize) -> usize {
    invariant_min_split_keys(max_model_len).max(INVARIANT_SPLIT_KEYS)
}

/// Attention blocks per split from which `batch_invariant` runs one block
/// per query (`attention_units`): where the default heuristic
/// ([`attention_splits`]) stops splitting large steps, so both paths split
/// the same steps. The two give the same bits; the block per query skips
/// the partial writes, the split blocks' setup and the merge (docs/BENCHMARKS.md).
pub fn invariant_one_block_from(sm_count: usize) -> usize {
    sm_count.max(1) * LARGE_STEP_BLOCKS_PER_SM
}

/// The attention grid's splits under `batch_invariant` for a step of
/// `blocks` blocks per split whose longest context is `max_context` keys:
/// one (a block per query folding its units) from `one_block_from` blocks
/// on, else one per unit of `split_keys` keys.
pub fn invariant_splits(
    blocks: usize,
    max_context: usize,
    split_keys: usize,
    one_block_from: usize,
) -> usize {
    if blocks >= one_block_from {
        1
    } else {
        max_context.div_ceil(split_keys.max(1)).max(1)
    }
}

/// (token, split) rows the attention partial buffers need under
/// `batch_invariant`: only steps below `one_block_from` blocks per split
/// (at most `max_step_tokens` tokens, `head_blocks` blocks per token) take
/// a split per unit, at most `max_splits`; larger steps fold their units
/// in one block and write no partials. (Before `attention_units`, every
/// step could split: `max_num_batched_tokens` × `max_splits` rows, 2.2 GB
/// for qwen3-0.6b at its 40,960-token context, taken from the KV pool.)
pub fn invariant_partial_rows(
    max_step_tokens: usize,
    head_blocks: usize,
    max_splits: usize,
    one_block_from: usize,
) -> usize {
    let split_tokens = max_step_tokens.min(one_block_from.saturating_sub(1) / head_blocks.max(1));
    split_tokens * max_splits
}

pub struct Runner {
    pub kernels: Kernels,
    pub gemm: Products,
    pub weights: DeviceWeights,
    pub arena: Arena,
    pub cos_sin: DeviceBuffer,
    pub dims: Dims,
    pub sm_count: usize,
    /// Keys per attention split (`batch_invariant`), 0 = splits chosen
    /// per step by `attention_splits`.
    pub split_keys: usize,
    /// Under `batch_invariant`: steps with at least this many attention
    /// blocks per split (query tokens × kv heads × group chunks) run one
    /// block per query that folds its units (`attention_units`) instead of
    /// a block per unit; [`invariant_one_block_from`] or
    /// `DYNO_CUDA_INVARIANT_ONE_BLOCK`.
    pub invariant_one_block_from: usize,
    /// Under `batch_invariant`: every step, whatever its size, runs the
    /// small-batch kernels in tiles of `GEMV_MAX_T` tokens instead of the
    /// pinned cuBLASLt GEMMs (`DYNO_INVARIANT_PRODUCTS=gemv`; see
    /// [`InvariantProducts`]).
    pub invariant_products: InvariantProducts,
    /// `decode_layers` for small steps, where built (`persistent.rs`).
    pub persistent: Option<PersistentDecode>,
    /// Small steps of models with q/k norms run `norm_qkv_qk_norm_rope_cache`
    /// (the norms applied by each head's last block) instead of
    /// `norm_qkv` then `qkv_rope_cache`: [`qk_norm_fused`].
    pub qk_norm_fused: bool,
    /// Which of the small steps' O and down products split K across a
    /// block's warps (`o_proj_residual_split`, `down_proj_residual_split`):
    /// [`gemv_split_k`].
    pub gemv_split_k: GemvSplitK,
    /// Prefill steps of one split run `attention_prefill` (under
    /// `batch_invariant`, `attention_units_prefill`): [`attention_prefill`].
    pub attention_prefill: bool,
}

/// The small-batch path's products that add into the residual stream.
#[derive(Debug, Clone, Copy)]
enum ResidualProduct {
    /// The attention output's projection (K = query width).
    O,
    /// The MLP's down projection (K = intermediate size).
    Down,
}

/// Which small-step residual products split their K across a block's
/// warps (`o_proj_residual_split`, `down_proj_residual_split`) instead of a
/// warp per `GEMV_ROWS` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GemvSplitK {
    /// The O product (K = the query width).
    pub o: bool,
    /// The down product (K = the intermediate size).
    pub down: bool,
}

/// The smallest K the default splits. The H200 measured the split kernels
/// at batch 1 (docs/BENCHMARKS.md, "Splitting the O and down products'
/// K"): qwen3-0.6b (K 2,048 and 3,072) −3.5 % TPOT, smollm2-135m (576 and
/// 1,536) +4.1 %: a warp's quarter of a short row is too little work to
/// pay for the block's shared-memory sum.
pub const GEMV_SPLIT_K_MIN_K: usize = 2048;

/// Whether a product of inner size `k` can split: each warp's slice must
/// be whole 16-byte chunks.
pub fn gemv_split_k_fits(k: usize) -> bool {
    k.is_multiple_of(8 * GEMV_WARPS)
}

/// Which of the O (K = `q_width`) and down (K = `inter`) products split
/// their K: `DYNO_CUDA_GEMV_SPLIT_K` unset, each product whose K is at
/// least [`GEMV_SPLIT_K_MIN_K`] and fits; `1`, both (an error that says so
/// where a width does not fit); `0`, neither.
pub fn gemv_split_k(
    setting: Option<&str>,
    q_width: usize,
    inter: usize,
) -> Result<GemvSplitK, BackendError> {
    let auto = |k: usize| k >= GEMV_SPLIT_K_MIN_K && gemv_split_k_fits(k);
    match setting.map(str::trim) {
        None => Ok(GemvSplitK {
            o: auto(q_width),
            down: auto(inter),
        }),
        Some("0") => Ok(GemvSplitK::default()),
        Some("1") if gemv_split_k_fits(q_width) && gemv_split_k_fits(inter) => Ok(GemvSplitK {
            o: true,
            down: true,
        }),
        Some("1") => Err(BackendError::Cuda(format!(
            "DYNO_CUDA_GEMV_SPLIT_K=1: the query width ({q_width}) and the intermediate size \
             ({inter}) must be multiples of {} to split across {GEMV_WARPS} warps",
            8 * GEMV_WARPS
        ))),
        Some(other) => Err(BackendError::Cuda(format!(
            "DYNO_CUDA_GEMV_SPLIT_K={other}: expected 0 or 1 (unset: split where K is at \
             least {GEMV_SPLIT_K_MIN_K})"
        ))),
    }
}

/// Whether small steps of a model with q/k norms fuse them into the QKV
/// kernel: where the head dim allows (`Dims::qk_norm_in_qkv_kernel`) unless
/// `DYNO_CUDA_QK_NORM_FUSED=0` (the two kernels, which give the same bits:
/// the GPU test `cuda_persistent` compares them).
pub fn qk_norm_fused(setting: Option<&str>, head_dim_allows: bool) -> Result<bool, BackendError> {
    match setting.map(str::trim) {
        None | Some("1") => Ok(head_dim_allows),
        Some("0") => Ok(false),
        Some(other) => Err(BackendError::Cuda(format!(
            "DYNO_CUDA_QK_NORM_FUSED={other}: expected 0 or 1"
        ))),
    }
}

/// Whether prefill steps of one split run `attention_prefill` (under
/// `batch_invariant`, `attention_units_prefill`: a block takes consecutive
/// query tokens of a sequence together): yes unless
/// `DYNO_CUDA_ATTN_PREFILL=0` (`attention` or `attention_units`, a block
/// per token; the same bits, so one binary can A/B the two).
pub fn attention_prefill(setting: Option<&str>) -> Result<bool, BackendError> {
    match setting.map(str::trim) {
        None | Some("1") => Ok(true),
        Some("0") => Ok(false),
        Some(other) => Err(BackendError::Cuda(format!(
            "DYNO_CUDA_ATTN_PREFILL={other}: expected 0 or 1"
        ))),
    }
}

/// How `batch_invariant` computes the layers' products. Both give each
/// token the same sums in the same order whatever shares its step; they
/// differ in cost. `Cublaslt` (the default): one pinned cuBLASLt algorithm
/// per weight shape — tensor cores, so large steps stay fast, but a batch-1
/// step loses the fused small-batch kernels. `Gemv`: the fused small-batch
/// kernels for every step, a tile of `GEMV_MAX_T` tokens per block row —
/// batch 1 costs what it costs without the knob, large steps run on CUDA
/// cores. Only models the small-batch kernels cover can use `Gemv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvariantProducts {
    Cublaslt,
    Gemv,
}

impl InvariantProducts {
    /// From `DYNO_INVARIANT_PRODUCTS` (`cublaslt` or `gemv`; unset =
    /// `cublaslt`).
    pub fn parse(value: Option<&str>) -> Result<Self, BackendError> {
        match value.map(str::trim) {
            None | Some("cublaslt") => Ok(InvariantProducts::Cublaslt),
            Some("gemv") => Ok(InvariantProducts::Gemv),
            Some(other) => Err(BackendError::Cuda(format!(
                "DYNO_INVARIANT_PRODUCTS={other}: expected `cublaslt` or `gemv`"
            ))),
        }
    }
}

/// Attention blocks per SM a step of more than `GEMV_MAX_T` tokens aims
/// at: [`attention_splits`] splits contexts until the grid has that many,
/// and under `batch_invariant` a step that has them without splitting
/// runs one block per query ([`invariant_one_block_from`]).
const LARGE_STEP_BLOCKS_PER_SM: usize = 8;

/// Splits of the context per query token for attention: enough blocks to
/// fill the GPU at small batches, one split for large prefill steps. At most
/// `ATTN_MAX_SPLITS`; the kernel uses fewer when the context is short.
/// `head_blocks` is the grid's blocks per token and split (kv heads × GQA
/// group chunks). Small-batch steps aim at 2 blocks per SM rather than 8:
/// their splits are a single block iteration each, so beyond that more
/// splits only add merge work (measured: batch 8 went from 1.40 to 1.52 ms
/// per step with the larger count).
pub fn attention_splits(
    tokens: usize,
    head_blocks: usize,
    sm_count: usize,
    partial_rows: usize,
) -> usize {
    let blocks_per_sm = if tokens <= GEMV_MAX_T {
        2
    } else {
        LARGE_STEP_BLOCKS_PER_SM
    };
    let blocks_wanted = sm_count * blocks_per_sm;
    let per_split = (tokens * head_blocks).max(1);
    let n = blocks_wanted.div_ceil(per_split).clamp(1, ATTN_MAX_SPLITS);
    n.min((partial_rows / tokens.max(1)).max(1))
}

impl Runner {
    fn meta(&self, layout: &MetaLayout, offset: usize) -> u64 {
        let _ = layout;
        self.arena.meta.at::<u32>(offset)
    }

    /// Whether a step of `tokens` tokens runs the small-batch kernels
    /// (never with `batch_invariant`: their sums run in another order than
    /// the GEMMs', so a row's result would depend on the step's size).
    pub fn small_batch(&self, tokens: usize) -> bool {
        if !self.dims.small_batch_kernels() {
            return false;
        }
        if self.batch_invariant() {
            return self.invariant_products == InvariantProducts::Gemv;
        }
        tokens <= GEMV_MAX_T
    }

    pub fn batch_invariant(&self) -> bool {
        self.split_keys > 0
    }

    /// The attention grid's split count (its z dimension) for a step of
    /// `tokens` tokens whose longest context is `max_context` keys. With
    /// `batch_invariant`, [`invariant_splits`] (graphs pass
    /// `max_model_len`), and an error rather than fewer splits when the
    /// partial buffers cannot hold them.
    pub fn attention_grid_splits(
        &self,
        tokens: usize,
        max_context: usize,
    ) -> Result<usize, BackendError> {
        let a = &self.arena;
        if self.split_keys == 0 {
            return Ok(attention_splits(
                tokens,
                self.dims.attention_head_blocks(),
                self.sm_count,
                a.partial_rows,
            ));
        }
        let z = invariant_splits(
            tokens * self.dims.attention_head_blocks(),
            max_context,
            self.split_keys,
            self.invariant_one_block_from,
        );
        if z > 1 && tokens * z > a.partial_rows {
            return Err(BackendError::InvalidBatch(format!(
                "attention: {tokens} tokens x {z} context splits exceed the {} partial rows \
                 allocated for batch_invariant",
                a.partial_rows
            )));
        }
        Ok(z)
    }

    /// Runs every layer for `tokens` query tokens (padding included), whose
    /// longest context is `max_context` keys (at most `max_model_len`).
    /// `joint`: whether a sequence may have several query tokens in the step
    /// (prefill chunks, drafts; attention then takes them together), false
    /// for decode steps. Returns the f32 buffer the final norm still has to add to the
    /// residual (the last down projection's output), or 0 when the residual
    /// is complete.
    pub fn layers(
        &self,
        kv: &KvPool,
        layout: &MetaLayout,
        tokens: usize,
        max_context: usize,
        joint: bool,
    ) -> Result<u64, BackendError> {
        let nsplit = self.attention_grid_splits(tokens, max_context)?;
        if self.small_batch(tokens) {
            match &self.persistent {
                Some(p) => self.layers_persistent(p, kv, layout, tokens, nsplit)?,
                None => self.layers_small_batch(kv, layout, tokens, nsplit, joint)?,
            }
            return Ok(0);
        }
        let d = &self.dims;
        let a = &self.arena;
        let k = &self.kernels;
        let h = d.hidden as i32;
        let hd = d.head_dim;
        let threads = 256u32;
        let t = tokens as u32;
        let first = &self.weights.layers[0];
        k.embed_rmsnorm(
            (t, 1, 1),
            threads,
            EmbedRmsnorm {
                tokens: self.meta(layout, layout.tokens()),
                emb: self.weights.embed.ptr,
                w: first.input_norm.ptr,
                residual: a.residual.ptr,
                out: a.hidden.ptr,
                hidden: h,
                eps: d.eps,
                sampled: a.sampled.ptr,
                vocab: d.vocab as i32,
            },
        )?;
        // add_rmsnorm: a warp per token.
        let norm_grid = (tokens.div_ceil(ADD_RMSNORM_WARPS) as u32, 1, 1);
        let norm_threads = (ADD_RMSNORM_WARPS * 32) as u32;
        let nlayers = self.weights.layers.len();
        for (li, w) in self.weights.layers.iter().enumerate() {
            self.gemm.linear(
                a.hidden.ptr,
                w.qkv.ptr,
                a.qkv.ptr,
                tokens,
                d.qkv_width(),
                d.hidden,
            )?;
            k.count_external_launch();
            self.rope_cache(kv, layout, li, tokens)?;
            self.attention(kv, layout, li, tokens, nsplit, joint)?;
            self.gemm.linear(
                a.attn.ptr,
                w.o_proj.ptr,
                a.x.ptr,
                tokens,
                d.hidden,
                d.nq * hd,
            )?;
            k.count_external_launch();
            k.add_rmsnorm(
                norm_grid,
                norm_threads,
                AddRmsnorm {
                    x: a.x.ptr,
                    residual: a.residual.ptr,
                    w: w.post_attention_norm.ptr,
                    out: a.hidden.ptr,
                    tokens: tokens as i32,
                    eps: d.eps,
                },
            )?;
            self.gemm.linear(
                a.hidden.ptr,
                w.gate_up.ptr,
                a.gate_up.ptr,
                tokens,
                2 * d.inter,
                d.hidden,
            )?;
            k.count_external_launch();
            // x: a row's 4-wide chunks, 128 threads a block; y: a token
            // each (the kernel strides past the grid's 65,535 limit).
            let row_blocks = d.inter.div_ceil(4 * 128) as u32;
            k.silu_mul(
                (row_blocks, tokens.min(65_535) as u32, 1),
                128,
                SiluMul {
                    gate_up: a.gate_up.ptr,
                    out: a.act.ptr,
                    tokens: tokens as i32,
                    inter: d.inter as i32,
                },
            )?;
            self.gemm
                .linear(a.act.ptr, w.down.ptr, a.x.ptr, tokens, d.hidden, d.inter)?;
            k.count_external_launch();
            if li + 1 < nlayers {
                k.add_rmsnorm(
                    norm_grid,
                    norm_threads,
                    AddRmsnorm {
                        x: a.x.ptr,
                        residual: a.residual.ptr,
                        w: self.weights.layers[li + 1].input_norm.ptr,
                        out: a.hidden.ptr,
                        tokens: tokens as i32,
                        eps: d.eps,
                    },
                )?;
            }
        }
        Ok(a.x.ptr)
    }

    /// The small-batch path (at most `GEMV_MAX_T` tokens): the residual is
    /// updated in place by the O and down products, and each RMSNorm is the
    /// prologue of the product that consumes it.
    fn layers_small_batch(
        &self,
        kv: &KvPool,
        layout: &MetaLayout,
        tokens: usize,
        nsplit: usize,
        joint: bool,
    ) -> Result<(), BackendError> {
        let d = &self.dims;
        let a = &self.arena;
        let k = &self.kernels;
        let t = tokens as i32;
        let rows_per_block = GEMV_WARPS * GEMV_ROWS;
        // One block row per tile of GEMV_MAX_T tokens (a single tile unless
        // `batch_invariant` runs larger steps through these kernels).
        let tiles = tokens.div_ceil(GEMV_MAX_T).max(1) as u32;
        let grid = |rows: usize| (rows.div_ceil(rows_per_block) as u32, tiles, 1);
        let threads = (GEMV_WARPS * 32) as u32;
        self.embed_small_batch(layout, tokens)?;
        for (li, w) in self.weights.layers.iter().enumerate() {
            // One warp per RoPE pair (rows i and i + head_dim/2).
            let pair_grid = ((d.qkv_width() / 2).div_ceil(GEMV_WARPS) as u32, tiles, 1);
            let qkv_args = NormQkvRopeCache {
                residual: a.residual.ptr,
                norm_w: w.input_norm.ptr,
                w: w.qkv.ptr,
                bias: w.qkv_bias.as_ref().map_or(0, |b| b.ptr),
                cos_sin: self.cos_sin.ptr,
                positions: self.meta(layout, layout.positions()),
                slots: self.meta(layout, layout.slots()),
                qkv: a.qkv.ptr,
                k_cache: kv.k(li),
                v_cache: kv.v(li),
                t,
                nq: d.nq as i32,
                nkv: d.nkv as i32,
                eps: d.eps,
            };
            if w.q_norm.is_none() && w.k_norm.is_none() {
                k.norm_qkv_rope_cache(pair_grid, threads, qkv_args)?;
            } else if self.qk_norm_fused {
                k.norm_qkv_qk_norm_rope_cache(
                    pair_grid,
                    threads,
                    qkv_args.with_qk_norms(
                        w.q_norm.as_ref().map_or(0, |b| b.ptr),
                        w.k_norm.as_ref().map_or(0, |b| b.ptr),
                        a.head_counters.ptr,
                    ),
                )?;
            } else {
                k.norm_qkv(
                    grid(d.qkv_width()),
                    threads,
                    NormQkv {
                        residual: a.residual.ptr,
                        norm_w: w.input_norm.ptr,
                        w: w.qkv.ptr,
                        y: a.qkv.ptr,
                        t,
                        n: d.qkv_width() as i32,
                        eps: d.eps,
                    },
                )?;
                self.rope_cache(kv, layout, li, tokens)?;
            }
            self.attention(kv, layout, li, tokens, nsplit, joint)?;
            self.residual_product(ResidualProduct::O, a.attn.ptr, w.o_proj.ptr, tokens)?;
            // One warp per (gate row, up row) pair.
            k.norm_gate_up_silu(
                (d.inter.div_ceil(GEMV_WARPS) as u32, tiles, 1),
                threads,
                NormGateUpSilu {
                    residual: a.residual.ptr,
                    norm_w: w.post_attention_norm.ptr,
                    w: w.gate_up.ptr,
                    act: a.act.ptr,
                    t,
                    eps: d.eps,
                },
            )?;
            self.residual_product(ResidualProduct::Down, a.act.ptr, w.down.ptr, tokens)?;
        }
        Ok(())
    }

    /// residual += x · Wᵀ for a small step's O or down product: a warp per
    /// `GEMV_ROWS` rows, or where `gemv_split_k` says so for the product a
    /// block per `GEMV_ROWS` rows whose warps split K.
    fn residual_product(
        &self,
        product: ResidualProduct,
        x: u64,
        w: u64,
        tokens: usize,
    ) -> Result<(), BackendError> {
        let k = &self.kernels;
        let tiles = tokens.div_ceil(GEMV_MAX_T).max(1) as u32;
        let threads = (GEMV_WARPS * 32) as u32;
        let hidden = self.dims.hidden;
        let residual = self.arena.residual.ptr;
        let (t, n) = (tokens as i32, hidden as i32);
        let split = match product {
            ResidualProduct::O => self.gemv_split_k.o,
            ResidualProduct::Down => self.gemv_split_k.down,
        };
        // Split: a block per GEMV_ROWS rows; else a warp per GEMV_ROWS rows.
        let rows_per_block = if split {
            GEMV_ROWS
        } else {
            GEMV_WARPS * GEMV_ROWS
        };
        let grid = (hidden.div_ceil(rows_per_block) as u32, tiles, 1);
        // The four kernels take the same arguments.
        macro_rules! launch {
            ($kernel:ident, $args:ident) => {
                k.$kernel(
                    grid,
                    threads,
                    $args {
                        x,
                        w,
                        residual,
                        t,
                        n,
                    },
                )
            };
        }
        match (product, split) {
            (ResidualProduct::O, false) => launch!(o_proj_residual, OProjResidual),
            (ResidualProduct::Down, false) => launch!(down_proj_residual, DownProjResidual),
            (ResidualProduct::O, true) => launch!(o_proj_residual_split, OProjResidualSplit),
            (ResidualProduct::Down, true) => {
                launch!(down_proj_residual_split, DownProjResidualSplit)
            }
        }
    }

    /// The embedding of a small-batch step. Only the residual is needed
    /// (the first layer's QKV product recomputes the norm as its prologue).
    fn embed_small_batch(&self, layout: &MetaLayout, tokens: usize) -> Result<(), BackendError> {
        let d = &self.dims;
        self.kernels.embed_rmsnorm(
            (tokens as u32, 1, 1),
            256,
            EmbedRmsnorm {
                tokens: self.meta(layout, layout.tokens()),
                emb: self.weights.embed.ptr,
                w: self.weights.layers[0].input_norm.ptr,
                residual: self.arena.residual.ptr,
                out: self.arena.hidden.ptr,
                hidden: d.hidden as i32,
                eps: d.eps,
                sampled: self.arena.sampled.ptr,
                vocab: d.vocab as i32,
            },
        )
    }

    /// The small-batch path's layers in one launch of `decode_layers`
    /// (the same bodies as phases of a persistent grid; built only for
    /// models whose QKV body is fused, without `batch_invariant`).
    fn layers_persistent(
        &self,
        p: &PersistentDecode,
        kv: &KvPool,
        layout: &MetaLayout,
        tokens: usize,
        nsplit: usize,
    ) -> Result<(), BackendError> {
        let d = &self.dims;
        let a = &self.arena;
        self.embed_small_batch(layout, tokens)?;
        self.kernels.decode_layers(
            (p.blocks, 1, 1),
            (GEMV_WARPS * 32) as u32,
            DecodeLayers {
                layers: p.layer_table.ptr,
                nlayers: self.weights.layers.len() as i32,
                residual: a.residual.ptr,
                qkv: a.qkv.ptr,
                attn: a.attn.ptr,
                act: a.act.ptr,
                cos_sin: self.cos_sin.ptr,
                positions: self.meta(layout, layout.positions()),
                slots: self.meta(layout, layout.slots()),
                seq_idx: self.meta(layout, layout.seq_idx()),
                block_tables: self.meta(layout, layout.block_tables()),
                bt_stride: self.meta(layout, layout.bt_stride()),
                k_cache: kv.k(0),
                v_cache: kv.v(0),
                block_size: kv.block_size as i32,
                t: tokens as i32,
                nq: d.nq as i32,
                nkv: d.nkv as i32,
                eps: d.eps,
                scale: 1.0 / (d.head_dim as f32).sqrt(),
                nsplit: nsplit as i32,
                part_acc: a.part_acc.ptr,
                part_ml: a.part_ml.ptr,
                counters: a.split_counters.ptr,
                barrier_count: p.barrier.ptr,
            },
        )
    }

    /// Bias / q-k norm / RoPE / KV-cache write after the QKV product of
    /// layer `li`.
    fn rope_cache(
        &self,
        kv: &KvPool,
        layout: &MetaLayout,
        li: usize,
        tokens: usize,
    ) -> Result<(), BackendError> {
        let d = &self.dims;
        let a = &self.arena;
        let w = &self.weights.layers[li];
        let t = tokens as u32;
        self.kernels.qkv_rope_cache(
            (t, 1, 1),
            ROPE_CACHE_THREADS.min((d.nq + 2 * d.nkv) as u32 * 32),
            QkvRopeCache {
                qkv: a.qkv.ptr,
                bias: w.qkv_bias.as_ref().map_or(0, |b| b.ptr),
                q_norm: w.q_norm.as_ref().map_or(0, |b| b.ptr),
                k_norm: w.k_norm.as_ref().map_or(0, |b| b.ptr),
                cos_sin: self.cos_sin.ptr,
                positions: self.meta(layout, layout.positions()),
                slots: self.meta(layout, layout.slots()),
                k_cache: kv.k(li),
                v_cache: kv.v(li),
                nq: d.nq as i32,
                nkv: d.nkv as i32,
                eps: d.eps,
            },
        )
    }

    /// Paged attention of layer `li`: splits merged in-kernel, or under
    /// `batch_invariant` at one split, `attention_units`.
    fn attention(
        &self,
        kv: &KvPool,
        layout: &MetaLayout,
        li: usize,
        tokens: usize,
        nsplit: usize,
        joint: bool,
    ) -> Result<(), BackendError> {
        let d = &self.dims;
        let a = &self.arena;
        let t = tokens as u32;
        let args = Attention {
            qkv: a.qkv.ptr,
            k_cache: kv.k(li),
            v_cache: kv.v(li),
            positions: self.meta(layout, layout.positions()),
            seq_idx: self.meta(layout, layout.seq_idx()),
            block_tables: self.meta(layout, layout.block_tables()),
            bt_stride: self.meta(layout, layout.bt_stride()),
            block_size: kv.block_size as i32,
            nkv: d.nkv as i32,
            scale: 1.0 / (d.head_dim as f32).sqrt(),
            out: a.attn.ptr,
            part_acc: a.part_acc.ptr,
            part_ml: a.part_ml.ptr,
            counters: a.split_counters.ptr,
            split_keys: self.split_keys as i32,
        };
        let grid = (t, d.attention_head_blocks() as u32, nsplit as u32);
        if self.batch_invariant() && nsplit == 1 {
            // Large steps under the knob: one block per query folds its
            // units (the same bits as a block per unit); with prefill
            // chunks a block takes consecutive query tokens of a sequence
            // together (each with the bits it gets alone).
            if joint && self.attention_prefill {
                return self
                    .kernels
                    .attention_units_prefill(grid, 128, args.units_prefill());
            }
            return self
                .kernels
                .attention_units(grid, 128, args.without_splits());
        }
        if joint && nsplit == 1 && !self.batch_invariant() && self.attention_prefill {
            // Prefill chunks: a block takes consecutive query tokens of a
            // sequence together (the bits `attention` gives each alone).
            return self.kernels.attention_prefill(grid, 128, args.prefill());
        }
        self.kernels.attention(grid, 128, args)
    }

    /// Final norm + LM head for `rows` rows whose token indices are at
    /// `rows_ptr`; f32 logits land in the arena (`rows` ≤ `logits_rows`).
    /// `pending` is what `layers` returned: an f32 buffer still to be added
    /// to the residual, or 0.
    pub fn logits(&self, rows_ptr: u64, rows: usize, pending: u64) -> Result<(), BackendError> {
        let d = &self.dims;
        let a = &self.arena;
        if rows > a.logits_rows {
            return Err(BackendError::InvalidBatch(format!(
                "{rows} logit rows exceed the capacity of {}",
                a.logits_rows
            )));
        }
        self.kernels.final_rmsnorm_rows(
            (rows as u32, 1, 1),
            256,
            FinalRmsnormRows {
                rows: rows_ptr,
                x: pending,
                residual: a.residual.ptr,
                w: self.weights.final_norm.ptr,
                out: a.selected.ptr,
                hidden: d.hidden as i32,
                eps: d.eps,
            },
        )?;
        self.gemm.linear(
            a.selected.ptr,
            self.weights.lm_head_ptr(),
            a.logits.ptr,
            rows,
            d.vocab,
            d.hidden,
        )?;
        self.kernels.count_external_launch();
        Ok(())
    }

    /// Samples one token per logits row into `arena.sampled`; the rows'
    /// sampling parameters are the step's sampled rows `first..first + rows`
    /// (`first` > 0 when a step's rows are run in chunks).
    pub fn sample(
        &self,
        layout: &MetaLayout,
        first: usize,
        rows: usize,
    ) -> Result<(), BackendError> {
        let a = &self.arena;
        self.kernels.sample_rows(
            (rows as u32, 1, 1),
            1024,
            SampleRows {
                logits: a.logits.ptr,
                vocab: self.dims.vocab as i32,
                temperature: self.meta(layout, layout.temperature() + first),
                top_k: self.meta(layout, layout.top_k() + first),
                top_p: self.meta(layout, layout.top_p() + first),
                seed_lo: self.meta(layout, layout.seed_lo() + first),
                seed_hi: self.meta(layout, layout.seed_hi() + first),
                draw_index: self.meta(layout, layout.draw_index() + first),
                out: a.sampled.ptr,
            },
        )
    }

    /// One whole decode/prefill step up to sampled tokens in the arena
    /// (`max_context` and `joint` as for `layers`).
    pub fn step(
        &self,
        kv: &KvPool,
        layout: &MetaLayout,
        tokens: usize,
        samples: usize,
        max_context: usize,
        joint: bool,
    ) -> Result<(), BackendError> {
        let pending = self.layers(kv, layout, tokens, max_context, joint)?;
        if samples > 0 {
            self.logits(self.meta(layout, layout.sample_rows()), samples, pending)?;
            self.sample(layout, 0, samples)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_fill_the_gpu_at_small_batches_and_vanish_at_large() {
        assert_eq!(attention_splits(1, 3, 132, 4096), 32);
        assert_eq!(attention_splits(8, 3, 132, 4096), 11);
        assert_eq!(attention_splits(8192, 3, 132, 4096), 1);
        let s = attention_splits(64, 8, 132, 4096);
        assert!(s >= 2 && 64 * s <= 4096, "{s}");
        assert!(attention_splits(4000, 1, 132, 4096) == 1);
    }

    #[test]
    fn prefill_attention_is_on_unless_switched_off_and_bad_values_are_named() {
        assert!(attention_prefill(None).unwrap());
        assert!(attention_prefill(Some(" 1 ")).unwrap());
        assert!(!attention_prefill(Some("0")).unwrap());
        for bad in ["2", "yes", ""] {
            let e = attention_prefill(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(&format!("DYNO_CUDA_ATTN_PREFILL={bad}")), "{e}");
        }
    }

    #[test]
    fn qk_norm_fusion_follows_the_head_dim_unless_switched_off() {
        assert!(qk_norm_fused(None, true).unwrap());
        assert!(qk_norm_fused(Some(" 1"), true).unwrap());
        // Half the head dim not a multiple of GEMV_WARPS: the two kernels.
        assert!(!qk_norm_fused(None, false).unwrap());
        assert!(!qk_norm_fused(Some("1"), false).unwrap());
        assert!(!qk_norm_fused(Some("0"), true).unwrap());
        let err = qk_norm_fused(Some("yes"), true).unwrap_err().to_string();
        assert!(err.contains("DYNO_CUDA_QK_NORM_FUSED=yes"), "{err}");
        let d = |head_dim| Dims {
            hidden: 1024,
            inter: 3072,
            nq: 16,
            nkv: 8,
            head_dim,
            vocab: 1000,
            layers: 1,
            eps: 1e-6,
            max_model_len: 512,
        };
        assert!(d(128).qk_norm_in_qkv_kernel() && d(64).qk_norm_in_qkv_kernel());
        assert!(!d(36).qk_norm_in_qkv_kernel());
    }

    #[test]
    fn gemv_split_k_splits_long_rows_by_default_and_refuses_widths_that_do_not_split() {
        let both = GemvSplitK {
            o: true,
            down: true,
        };
        let neither = GemvSplitK::default();
        // smollm2-135m (query width 576, intermediate 1,536): neither;
        // qwen3-0.6b (2,048, 3,072): both; qwen2.5-0.5b (896, 4,864): down.
        assert_eq!(gemv_split_k(None, 576, 1536).unwrap(), neither);
        assert_eq!(gemv_split_k(None, 2048, 3072).unwrap(), both);
        assert_eq!(
            gemv_split_k(None, 896, 4864).unwrap(),
            GemvSplitK {
                o: false,
                down: true
            }
        );
        // Long but not whole 32-value slices: not split by default.
        assert_eq!(gemv_split_k(None, 2056, 3080).unwrap(), neither);
        assert_eq!(gemv_split_k(Some("0"), 2048, 3072).unwrap(), neither);
        assert_eq!(gemv_split_k(Some(" 1 "), 576, 1536).unwrap(), both);
        let err = gemv_split_k(Some("1"), 576, 1544).unwrap_err().to_string();
        assert!(
            err.contains("DYNO_CUDA_GEMV_SPLIT_K=1")
                && err.contains("1544")
                && err.contains("multiples of 32"),
            "{err}"
        );
        let err = gemv_split_k(Some("2"), 576, 1536).unwrap_err().to_string();
        assert!(err.contains("DYNO_CUDA_GEMV_SPLIT_K=2"), "{err}");
        assert!(gemv_split_k_fits(4864) && !gemv_split_k_fits(40 * 9));
    }

    #[test]
    fn invariant_products_parse_the_two_names_and_refuse_others() {
        assert_eq!(
            InvariantProducts::parse(None).unwrap(),
            InvariantProducts::Cublaslt
        );
        assert_eq!(
            InvariantProducts::parse(Some(" gemv ")).unwrap(),
            InvariantProducts::Gemv
        );
        assert_eq!(
            InvariantProducts::parse(Some("cublaslt")).unwrap(),
            InvariantProducts::Cublaslt
        );
        let err = InvariantProducts::parse(Some("cublas"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("DYNO_INVARIANT_PRODUCTS=cublas"), "{err}");
    }

    #[test]
    fn invariant_steps_that_fill_the_gpu_take_one_block_per_query() {
        let from = invariant_one_block_from(132);
        assert_eq!(from, 1056);
        // Small steps: one split per unit of the longest context.
        assert_eq!(invariant_splits(3, 1280, 256, from), 5);
        assert_eq!(invariant_splits(3, 1281, 256, from), 6);
        assert_eq!(invariant_splits(1055, 300, 256, from), 2);
        assert_eq!(invariant_splits(3, 100, 256, from), 1);
        // From the threshold on: one block per query, whatever the context.
        assert_eq!(invariant_splits(1056, 1280, 256, from), 1);
        assert_eq!(invariant_splits(3072, 32_768, 256, from), 1);
        // The default heuristic stops splitting at the same step size.
        assert_eq!(attention_splits(352, 3, 132, 1 << 20), 1);
        assert!(attention_splits(351, 3, 132, 1 << 20) > 1);
    }

    #[test]
    fn invariant_partial_buffers_hold_every_split_step_and_no_more() {
        // (max step tokens, head blocks, max model len, split keys, threshold)
        for (tokens, hb, len, keys, from) in [
            (8192usize, 3, 1280usize, 256usize, 1056), // smollm2-135m offline, H200
            (8192, 8, 40_960, 1280, 1056),             // qwen3-0.6b at its default context
            (2048, 2, 512, 256, 256),                  // the GPU tests' threshold override
            (16, 3, 1024, 256, 1_000_000),             // every step splits
            (4096, 1, 300, 64, 1),                     // no step splits
        ] {
            let max_splits = len.div_ceil(keys);
            let rows = invariant_partial_rows(tokens, hb, max_splits, from);
            let mut most = 0;
            for t in 1..=tokens {
                for ctx in [1, keys, keys + 1, len] {
                    let z = invariant_splits(t * hb, ctx, keys, from);
                    if z > 1 {
                        most = most.max(t * z);
                    }
                }
            }
            assert!(
                most <= rows,
                "{tokens} {hb} {len}: a step needs {most} > {rows}"
            );
            // Tight where any step splits at the longest context.
            if most > 0 {
                assert_eq!(most, rows, "{tokens} {hb} {len}");
            }
        }
        // qwen3-0.6b: 131 tokens x 32 splits instead of 8,192 x 32.
        assert_eq!(invariant_partial_rows(8192, 8, 32, 1056), 131 * 32);
    }

    #[test]
    fn invariant_splits_cover_the_longest_context_within_the_split_limit() {
        for len in [
            1,
            63,
            64,
            256,
            2048,
            8192,
            8193,
            32_768,
            40_960,
            131_072,
            1 << 20,
        ] {
            let min = invariant_min_split_keys(len);
            assert!(min >= 64 && min.is_multiple_of(64), "{len}: {min}");
            assert!(len.div_ceil(min) <= ATTN_MAX_SPLITS, "{len}: {min}");
            // Not coarser than needed: one multiple of 64 fewer would
            // overflow the split limit (or is below the minimum).
            assert!(
                min == 64 || len.div_ceil(min - 64) > ATTN_MAX_SPLITS,
                "{len}: {min}"
            );
            // The default: the measured 512 keys, or the minimum above it.
            let keys = invariant_split_keys(len);
            assert_eq!(keys, min.max(INVARIANT_SPLIT_KEYS), "{len}");
            assert!(len.div_ceil(keys) <= ATTN_MAX_SPLITS, "{len}: {keys}");
        }
        assert_eq!(invariant_min_split_keys(1536), 64);
        assert_eq!(invariant_split_keys(1536), 512);
        assert_eq!(invariant_split_keys(16_384), 512);
        assert_eq!(invariant_split_keys(16_385), 576);
        assert_eq!(invariant_split_keys(131_072), 4096);
    }
}
