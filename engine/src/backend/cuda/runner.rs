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
//! the same bf16 roundings, f32 accumulation.

use super::super::BackendError;
use super::arena::{Arena, Dims};
use super::buffer::DeviceBuffer;
use super::gemm::Gemm;
use super::kernels::{
    attention_group_chunks, Arg, Kernels, ATTN_MAX_SPLITS, GEMV_MAX_T, GEMV_ROWS, GEMV_WARPS,
    ROPE_CACHE_THREADS,
};
use super::kv_pool::KvPool;
use super::step_meta::MetaLayout;
use super::weights::DeviceWeights;

pub struct Runner {
    pub kernels: Kernels,
    pub gemm: Gemm,
    pub weights: DeviceWeights,
    pub arena: Arena,
    pub cos_sin: DeviceBuffer,
    pub dims: Dims,
    pub sm_count: usize,
}

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
    let blocks_per_sm = if tokens <= GEMV_MAX_T { 2 } else { 8 };
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

    /// Whether a step of `tokens` tokens runs the small-batch kernels.
    pub fn small_batch(&self, tokens: usize) -> bool {
        tokens <= GEMV_MAX_T && self.dims.small_batch_kernels()
    }

    /// Runs every layer for `tokens` query tokens (padding included). Returns
    /// the f32 buffer the final norm still has to add to the residual (the
    /// last down projection's output), or 0 when the residual is complete.
    pub fn layers(
        &self,
        kv: &KvPool,
        layout: &MetaLayout,
        tokens: usize,
    ) -> Result<u64, BackendError> {
        if self.small_batch(tokens) {
            self.layers_small_batch(kv, layout, tokens)?;
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
        k.launch(
            "embed_rmsnorm",
            (t, 1, 1),
            threads,
            &[
                Arg::Ptr(self.meta(layout, layout.tokens())),
                Arg::Ptr(self.weights.embed.ptr),
                Arg::Ptr(first.input_norm.ptr),
                Arg::Ptr(a.residual.ptr),
                Arg::Ptr(a.hidden.ptr),
                Arg::I32(h),
                Arg::F32(d.eps),
            ],
        )?;
        let blocks_per_split = d.nkv * attention_group_chunks(d.nq / d.nkv);
        let nsplit = attention_splits(tokens, blocks_per_split, self.sm_count, a.partial_rows);
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
            self.attention(kv, layout, li, tokens, nsplit)?;
            self.gemm.linear(
                a.attn.ptr,
                w.o_proj.ptr,
                a.x.ptr,
                tokens,
                d.hidden,
                d.nq * hd,
            )?;
            k.count_external_launch();
            k.launch(
                "add_rmsnorm",
                (t, 1, 1),
                threads,
                &[
                    Arg::Ptr(a.x.ptr),
                    Arg::Ptr(a.residual.ptr),
                    Arg::Ptr(w.post_attention_norm.ptr),
                    Arg::Ptr(a.hidden.ptr),
                    Arg::I32(h),
                    Arg::F32(d.eps),
                ],
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
            let n = tokens * d.inter;
            let blocks = n.div_ceil(256).min(self.sm_count * 16) as u32;
            k.launch(
                "silu_mul",
                (blocks, 1, 1),
                256,
                &[
                    Arg::Ptr(a.gate_up.ptr),
                    Arg::Ptr(a.act.ptr),
                    Arg::I32(tokens as i32),
                    Arg::I32(d.inter as i32),
                ],
            )?;
            self.gemm
                .linear(a.act.ptr, w.down.ptr, a.x.ptr, tokens, d.hidden, d.inter)?;
            k.count_external_launch();
            if li + 1 < nlayers {
                k.launch(
                    "add_rmsnorm",
                    (t, 1, 1),
                    threads,
                    &[
                        Arg::Ptr(a.x.ptr),
                        Arg::Ptr(a.residual.ptr),
                        Arg::Ptr(self.weights.layers[li + 1].input_norm.ptr),
                        Arg::Ptr(a.hidden.ptr),
                        Arg::I32(h),
                        Arg::F32(d.eps),
                    ],
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
    ) -> Result<(), BackendError> {
        let d = &self.dims;
        let a = &self.arena;
        let k = &self.kernels;
        let t = tokens as i32;
        let rows_per_block = GEMV_WARPS * GEMV_ROWS;
        let grid = |rows: usize| (rows.div_ceil(rows_per_block) as u32, 1, 1);
        let threads = (GEMV_WARPS * 32) as u32;
        // residual += x · Wᵀ (the O and down products).
        let gemv_residual = |name: &str, x: u64, w: u64| {
            k.launch(
                name,
                grid(d.hidden),
                threads,
                &[
                    Arg::Ptr(x),
                    Arg::Ptr(w),
                    Arg::Ptr(a.residual.ptr),
                    Arg::I32(t),
                    Arg::I32(d.hidden as i32),
                ],
            )
        };
        // Only the residual is needed from the embedding kernel (its
        // normalized output is recomputed by norm_qkv).
        k.launch(
            "embed_rmsnorm",
            (tokens as u32, 1, 1),
            256,
            &[
                Arg::Ptr(self.meta(layout, layout.tokens())),
                Arg::Ptr(self.weights.embed.ptr),
                Arg::Ptr(self.weights.layers[0].input_norm.ptr),
                Arg::Ptr(a.residual.ptr),
                Arg::Ptr(a.hidden.ptr),
                Arg::I32(d.hidden as i32),
                Arg::F32(d.eps),
            ],
        )?;
        let blocks_per_split = d.nkv * attention_group_chunks(d.nq / d.nkv);
        let nsplit = attention_splits(tokens, blocks_per_split, self.sm_count, a.partial_rows);
        for (li, w) in self.weights.layers.iter().enumerate() {
            if w.q_norm.is_none() && w.k_norm.is_none() {
                // One warp per RoPE pair (rows i and i + head_dim/2).
                k.launch(
                    "norm_qkv_rope_cache",
                    ((d.qkv_width() / 2).div_ceil(GEMV_WARPS) as u32, 1, 1),
                    threads,
                    &[
                        Arg::Ptr(a.residual.ptr),
                        Arg::Ptr(w.input_norm.ptr),
                        Arg::Ptr(w.qkv.ptr),
                        Arg::Ptr(w.qkv_bias.as_ref().map_or(0, |b| b.ptr)),
                        Arg::Ptr(self.cos_sin.ptr),
                        Arg::Ptr(self.meta(layout, layout.positions())),
                        Arg::Ptr(self.meta(layout, layout.slots())),
                        Arg::Ptr(a.qkv.ptr),
                        Arg::Ptr(kv.k(li)),
                        Arg::Ptr(kv.v(li)),
                        Arg::I32(t),
                        Arg::I32(d.nq as i32),
                        Arg::I32(d.nkv as i32),
                        Arg::F32(d.eps),
                    ],
                )?;
            } else {
                k.launch(
                    "norm_qkv",
                    grid(d.qkv_width()),
                    threads,
                    &[
                        Arg::Ptr(a.residual.ptr),
                        Arg::Ptr(w.input_norm.ptr),
                        Arg::Ptr(w.qkv.ptr),
                        Arg::Ptr(a.qkv.ptr),
                        Arg::I32(t),
                        Arg::I32(d.qkv_width() as i32),
                        Arg::F32(d.eps),
                    ],
                )?;
                self.rope_cache(kv, layout, li, tokens)?;
            }
            self.attention(kv, layout, li, tokens, nsplit)?;
            gemv_residual("o_proj_residual", a.attn.ptr, w.o_proj.ptr)?;
            // One warp per (gate row, up row) pair.
            k.launch(
                "norm_gate_up_silu",
                (d.inter.div_ceil(GEMV_WARPS) as u32, 1, 1),
                threads,
                &[
                    Arg::Ptr(a.residual.ptr),
                    Arg::Ptr(w.post_attention_norm.ptr),
                    Arg::Ptr(w.gate_up.ptr),
                    Arg::Ptr(a.act.ptr),
                    Arg::I32(t),
                    Arg::F32(d.eps),
                ],
            )?;
            gemv_residual("down_proj_residual", a.act.ptr, w.down.ptr)?;
        }
        Ok(())
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
        self.kernels.launch(
            "qkv_rope_cache",
            (t, 1, 1),
            ROPE_CACHE_THREADS.min((d.nq + 2 * d.nkv) as u32 * 32),
            &[
                Arg::Ptr(a.qkv.ptr),
                Arg::Ptr(w.qkv_bias.as_ref().map_or(0, |b| b.ptr)),
                Arg::Ptr(w.q_norm.as_ref().map_or(0, |b| b.ptr)),
                Arg::Ptr(w.k_norm.as_ref().map_or(0, |b| b.ptr)),
                Arg::Ptr(self.cos_sin.ptr),
                Arg::Ptr(self.meta(layout, layout.positions())),
                Arg::Ptr(self.meta(layout, layout.slots())),
                Arg::Ptr(kv.k(li)),
                Arg::Ptr(kv.v(li)),
                Arg::I32(d.nq as i32),
                Arg::I32(d.nkv as i32),
                Arg::F32(d.eps),
            ],
        )
    }

    /// Paged attention of layer `li` (splits merged in-kernel).
    fn attention(
        &self,
        kv: &KvPool,
        layout: &MetaLayout,
        li: usize,
        tokens: usize,
        nsplit: usize,
    ) -> Result<(), BackendError> {
        let d = &self.dims;
        let a = &self.arena;
        let t = tokens as u32;
        self.kernels.launch(
            "attention",
            (
                t,
                (d.nkv * attention_group_chunks(d.nq / d.nkv)) as u32,
                nsplit as u32,
            ),
            128,
            &[
                Arg::Ptr(a.qkv.ptr),
                Arg::Ptr(kv.k(li)),
                Arg::Ptr(kv.v(li)),
                Arg::Ptr(self.meta(layout, layout.positions())),
                Arg::Ptr(self.meta(layout, layout.seq_idx())),
                Arg::Ptr(self.meta(layout, layout.block_tables())),
                Arg::Ptr(self.meta(layout, layout.bt_stride())),
                Arg::I32(kv.block_size as i32),
                Arg::I32(d.nkv as i32),
                Arg::F32(1.0 / (d.head_dim as f32).sqrt()),
                Arg::Ptr(a.attn.ptr),
                Arg::Ptr(a.part_acc.ptr),
                Arg::Ptr(a.part_ml.ptr),
                Arg::Ptr(a.split_counters.ptr),
            ],
        )
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
        self.kernels.launch(
            "final_rmsnorm_rows",
            (rows as u32, 1, 1),
            256,
            &[
                Arg::Ptr(rows_ptr),
                Arg::Ptr(pending),
                Arg::Ptr(a.residual.ptr),
                Arg::Ptr(self.weights.final_norm.ptr),
                Arg::Ptr(a.selected.ptr),
                Arg::I32(d.hidden as i32),
                Arg::F32(d.eps),
            ],
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
        self.kernels.launch(
            "sample_rows",
            (rows as u32, 1, 1),
            1024,
            &[
                Arg::Ptr(a.logits.ptr),
                Arg::I32(self.dims.vocab as i32),
                Arg::Ptr(self.meta(layout, layout.temperature() + first)),
                Arg::Ptr(self.meta(layout, layout.top_k() + first)),
                Arg::Ptr(self.meta(layout, layout.top_p() + first)),
                Arg::Ptr(self.meta(layout, layout.seed_lo() + first)),
                Arg::Ptr(self.meta(layout, layout.seed_hi() + first)),
                Arg::Ptr(self.meta(layout, layout.draw_index() + first)),
                Arg::Ptr(a.sampled.ptr),
            ],
        )
    }

    /// One whole decode/prefill step up to sampled tokens in the arena.
    pub fn step(
        &self,
        kv: &KvPool,
        layout: &MetaLayout,
        tokens: usize,
        samples: usize,
    ) -> Result<(), BackendError> {
        let pending = self.layers(kv, layout, tokens)?;
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
}
