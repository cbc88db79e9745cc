//! Activation buffers, allocated once for the largest step
//! (`max_num_batched_tokens` tokens, `max_num_seqs` sampled rows) so the
//! decode loop allocates nothing and graphs can bake the addresses in.

use std::sync::Arc;

use cudarc::driver::CudaStream;

use super::super::BackendError;
use super::buffer::DeviceBuffer;
use super::kernels::{attention_group_chunks, GEMV_MAX_HIDDEN, GEMV_MAX_T, GEMV_WARPS};
use super::nvrtc::KernelShape;
use super::step_meta::MetaLayout;

/// Model sizes the kernels need.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub hidden: usize,
    pub inter: usize,
    pub nq: usize,
    pub nkv: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub layers: usize,
    pub eps: f32,
    pub max_model_len: usize,
}

impl Dims {
    pub fn qkv_width(&self) -> usize {
        (self.nq + 2 * self.nkv) * self.head_dim
    }

    /// Attention blocks per query token and context split: one per KV head
    /// and chunk of its GQA group (the grid's y dimension).
    pub fn attention_head_blocks(&self) -> usize {
        self.nkv * attention_group_chunks(self.nq / self.nkv)
    }

    pub fn kernel_shape(
        &self,
        attention: super::kernels::AttentionTuning,
        kv_layout: super::kernels::KvLayout,
    ) -> KernelShape {
        KernelShape {
            attention,
            kv_layout,
            head_dim: self.head_dim,
            group: self.nq / self.nkv,
            hidden: self.hidden,
            qdim: self.nq * self.head_dim,
            inter: self.inter,
        }
    }

    /// Whether `norm_qkv_qk_norm_rope_cache` can apply q/k norms: each of
    /// its blocks must hold rotation pairs of one head only (a head's last
    /// block normalizes it), i.e. half the head dim a multiple of
    /// `GEMV_WARPS`.
    pub fn qk_norm_in_qkv_kernel(&self) -> bool {
        (self.head_dim / 2).is_multiple_of(GEMV_WARPS)
    }

    /// Whether steps of at most `GEMV_MAX_T` tokens can use the fused
    /// small-batch kernels: every product's input must split into 16-byte
    /// chunks and the normalized input must fit their shared memory.
    pub fn small_batch_kernels(&self) -> bool {
        let q = self.nq * self.head_dim;
        self.hidden.is_multiple_of(8)
            && q.is_multiple_of(8)
            && self.inter.is_multiple_of(8)
            && self.hidden <= GEMV_MAX_HIDDEN
    }
}

pub struct Arena {
    /// Rows of logits computed at once.
    pub logits_rows: usize,
    /// Capacity of the attention partial buffers, in (token, split) pairs.
    pub partial_rows: usize,
    pub residual: DeviceBuffer,
    pub hidden: DeviceBuffer,
    pub x: DeviceBuffer,
    pub qkv: DeviceBuffer,
    pub attn: DeviceBuffer,
    pub gate_up: DeviceBuffer,
    pub act: DeviceBuffer,
    pub part_acc: DeviceBuffer,
    pub part_ml: DeviceBuffer,
    /// One counter per (token, kv head): splits finished (reset by the last).
    pub split_counters: DeviceBuffer,
    /// One counter per (token tile, q/k head) of `norm_qkv_qk_norm_rope_cache`:
    /// blocks finished with the head (reset by the last).
    pub head_counters: DeviceBuffer,
    pub selected: DeviceBuffer,
    pub logits: DeviceBuffer,
    pub sampled: DeviceBuffer,
    pub meta: DeviceBuffer,
    pub meta_len: usize,
}

/// Rows of logits computed at once for `max_seqs` sequences.
pub fn logits_rows(max_seqs: usize) -> usize {
    max_seqs.max(64)
}

/// Bytes of `norm_qkv_qk_norm_rope_cache`'s head counters for steps of up to
/// `max_tokens` tokens: an i32 per q/k head per tile of `GEMV_MAX_T`
/// tokens (a step of more than one tile runs these kernels only under
/// `batch_invariant` with the gemv products).
pub fn head_counter_bytes(d: &Dims, max_tokens: usize) -> usize {
    max_tokens.div_ceil(GEMV_MAX_T).max(1) * (d.nq + d.nkv) * 4
}

/// (token, split) pairs the partial buffers hold by default (the
/// per-step split heuristic stays within them).
pub const PARTIAL_ROWS: usize = 4096;

impl Arena {
    /// `partial_rows`: (token, split) pairs of the attention partial
    /// buffers: `PARTIAL_ROWS`, or with `batch_invariant` the largest step's
    /// tokens times its most splits.
    pub fn allocate(
        stream: &Arc<CudaStream>,
        d: &Dims,
        max_tokens: usize,
        max_seqs: usize,
        block_size: usize,
        partial_rows: usize,
    ) -> Result<Self, BackendError> {
        let t = max_tokens;
        let logits_rows = logits_rows(max_seqs);
        let bf = 2usize;
        let f = 4usize;
        let mb = |bytes: usize, what: &str| DeviceBuffer::zeroed(stream, bytes, what);
        let layout = MetaLayout {
            tokens_cap: t,
            samples_cap: t,
        };
        let meta_len = layout.len(max_seqs, d.max_model_len.div_ceil(block_size));
        Ok(Arena {
            logits_rows,
            partial_rows,
            residual: mb(t * d.hidden * f, "residual")?,
            hidden: mb(t * d.hidden * bf, "hidden")?,
            x: mb(t * d.hidden * f, "x")?,
            // f32: q stays f32 into attention; k and v are rounded once,
            // into the bf16 cache.
            qkv: mb(t * d.qkv_width() * f, "qkv")?,
            attn: mb(t * d.nq * d.head_dim * bf, "attention output")?,
            // f32: SiLU·mul rounds its product to bf16 once.
            gate_up: mb(t * 2 * d.inter * f, "gate_up")?,
            act: mb(t * d.inter * bf, "act")?,
            part_acc: mb(partial_rows * d.nq * d.head_dim * f, "attention partials")?,
            part_ml: mb(partial_rows * d.nq * 2 * f, "attention partial maxima")?,
            split_counters: mb(
                t * d.attention_head_blocks() * 4,
                "attention split counters",
            )?,
            head_counters: mb(head_counter_bytes(d, t), "QKV head counters")?,
            selected: mb(logits_rows * d.hidden * bf, "selected rows")?,
            logits: mb(logits_rows * d.vocab * f, "logits")?,
            sampled: mb(logits_rows * 4, "sampled tokens")?,
            meta: mb(meta_len * 4, "step metadata")?,
            meta_len,
        })
    }

    pub fn bytes(&self) -> usize {
        [
            &self.residual,
            &self.hidden,
            &self.x,
            &self.qkv,
            &self.attn,
            &self.gate_up,
            &self.act,
            &self.part_acc,
            &self.part_ml,
            &self.split_counters,
            &self.head_counters,
            &self.selected,
            &self.logits,
            &self.sampled,
            &self.meta,
        ]
        .iter()
        .map(|b| b.bytes)
        .sum()
    }
}
