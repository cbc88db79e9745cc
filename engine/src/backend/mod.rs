//! The backend boundary. CONTRACT shared by the scheduler/engine (callers) and
//! the CPU and CUDA backends (implementers).
//!
//! The scheduler decides *what* runs in a step and owns KV *block ids*; a
//! backend owns the KV *memory* and does the math: for each sequence in the
//! batch it runs `tokens` at positions `start_pos..`, writes their K/V into
//! the blocks named by `block_table`, attends causally over everything before
//! them, and samples one token where asked — or, when the chunk ends in
//! speculative draft tokens (`SampleSpec::num_drafts`), one token after each
//! of its last `num_drafts + 1` tokens.
//!
//! With prefix caching, several sequences' tables may name the same block,
//! and a sequence may start (`start_pos > 0`) on blocks that an *earlier*
//! sequence of the same step writes (a prefix-cache hit on a block that step
//! completes). So a backend writes the K/V of every token of a layer before
//! any token attends in that layer (or at least runs sequences in batch
//! order); both backends do (CPU: `layer.rs` writes, then attends; CUDA:
//! the K/V-writing kernel of a layer, then its attention kernel). No two
//! sequences of a step write the same block.

pub mod cpu;
pub mod cuda;
pub mod rope;

use crate::engine_config::{DeviceKind, EngineConfig};
use crate::weights::Checkpoint;

/// What `forward` returns in place of a token when the row of logits it
/// would sample from is not all finite: no vocabulary is this large.
pub const NONFINITE_LOGITS: u32 = u32::MAX;

/// Pipelined stepping (`Backend::launch`): a token `PENDING_TOKEN | r` in a
/// batch stands for the token the previously launched step sampled in its
/// row `r` (in that step's batch order), which the host does not know yet.
/// The backend reads it where the previous step left it (on the GPU), so
/// the next step is launched before the host has seen the previous one's
/// result. Row `r` holding [`NONFINITE_LOGITS`] reads as token 0: the
/// engine drops what that sequence's row computes. No vocabulary reaches
/// 2^31, so the bit is free.
pub const PENDING_TOKEN: u32 = 1 << 31;

/// The previous step's sample row a token refers to, if it is pending.
pub fn pending_row(token: u32) -> Option<usize> {
    (token & PENDING_TOKEN != 0).then_some((token & !PENDING_TOKEN) as usize)
}

/// What to sample after the last token of a chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSpec {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    /// Per-request seed and the index of the token being sampled: the random
    /// draw is a pure function of (seed, index), so a request samples the same
    /// tokens alone or in any batch (see `sampler::uniform`).
    pub seed: u64,
    pub index: u32,
    /// Speculative decoding: the chunk's last `num_drafts` tokens are draft
    /// tokens under verification. The backend samples after each of the
    /// last `num_drafts + 1` tokens, the j-th of them with draw index
    /// `index + j` (exactly what plain decoding would draw there). 0 for
    /// plain decoding and prefill.
    pub num_drafts: u32,
}

impl SampleSpec {
    /// Tokens sampled for this entry: `num_drafts + 1`.
    pub fn num_rows(&self) -> usize {
        self.num_drafts as usize + 1
    }

    /// The spec of the j-th sampled row (its own draw index).
    pub fn row(&self, j: usize) -> SampleSpec {
        SampleSpec {
            index: self.index + j as u32,
            num_drafts: 0,
            ..self.clone()
        }
    }
}

/// One sequence's work in a step: a prefill chunk or a single decode token.
#[derive(Debug, Clone)]
pub struct SeqStep<'a> {
    pub seq_id: u64,
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`; positions `0..start_pos` are already cached.
    pub start_pos: usize,
    /// KV block ids covering positions `0..start_pos + tokens.len()`.
    pub block_table: &'a [u32],
    /// `None` for a prefill chunk that does not end the prompt.
    pub sample: Option<SampleSpec>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BackendInfo {
    /// "cpu" or "cuda".
    pub kind: String,
    /// CPU model or GPU name.
    pub device_name: String,
    /// Compute dtype: "f32" (CPU) or "bf16" (CUDA).
    pub dtype: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no CUDA driver: {0}")]
    NoDriver(String),
    #[error("CUDA: {0}")]
    Cuda(String),
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
}

pub trait Backend {
    fn info(&self) -> BackendInfo;
    /// `max_num_seqs` for a config that leaves it at 0
    /// (`engine_config::auto_max_num_seqs` for this device).
    fn auto_max_num_seqs(&self) -> usize {
        crate::engine_config::auto_max_num_seqs(None)
    }
    /// Bytes one KV block of `block_size` tokens takes over all layers, K and V.
    fn kv_block_bytes(&self, block_size: usize) -> usize;
    /// Bytes this backend may spend on the KV cache under `cfg`
    /// (CPU: `cpu_kv_cache_bytes`; CUDA: from `gpu_memory_utilization`).
    fn kv_memory_budget(&self, cfg: &EngineConfig) -> Result<u64, BackendError>;
    /// Allocates the KV pool once. Called before the first `forward`.
    fn allocate_kv_cache(
        &mut self,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<(), BackendError>;
    /// Runs one step; returns `num_drafts + 1` sampled tokens (1 without
    /// drafts) for each entry whose `sample` is `Some`, in batch order, then
    /// position order, with [`NONFINITE_LOGITS`] for a row whose logits
    /// hold a NaN or an infinity (the request cannot go on).
    fn forward(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<u32>, BackendError>;
    /// Whether `launch` and `collect` work (pipelined stepping: the engine
    /// schedules and launches step N+1 while step N runs, vLLM's async
    /// scheduling). Backends without it get `forward` only.
    fn supports_pipelining(&self) -> bool {
        false
    }
    /// Starts a step without waiting for it: what `forward` does, less the
    /// wait. Its tokens may be [`PENDING_TOKEN`] references to the rows of
    /// the previously launched step. At most two launched steps are
    /// uncollected at a time (the one running and the one queued behind
    /// it); a third `launch` is an error.
    fn launch(&mut self, batch: &[SeqStep<'_>]) -> Result<(), BackendError> {
        let _ = batch;
        Err(BackendError::InvalidBatch(format!(
            "the {} backend does not pipeline steps",
            self.info().kind
        )))
    }
    /// Waits for the oldest uncollected `launch` and returns what `forward`
    /// would have returned for it.
    fn collect(&mut self) -> Result<Vec<u32>, BackendError> {
        Err(BackendError::InvalidBatch(format!(
            "the {} backend does not pipeline steps",
            self.info().kind
        )))
    }
    /// Like `forward` but returns the f32 logits of *every* token in the batch
    /// (in batch order, then position order); used by golden tests.
    fn forward_logits(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Vec<f32>>, BackendError>;
    /// Peak device memory in bytes (CUDA), or None.
    fn peak_memory_bytes(&self) -> Option<u64> {
        None
    }
    /// Whether `forward` honours `SampleSpec::num_drafts` (speculative
    /// decoding); the engine refuses speculative settings otherwise.
    fn supports_draft_verification(&self) -> bool {
        false
    }
    /// Kernel launches in the last decode step, when the backend counts them.
    fn launches_per_decode_step(&self) -> Option<u64> {
        None
    }
}

/// Picks and builds the backend for `device`. `Auto` falls back to the CPU
/// when no CUDA driver or GPU is present; `Cuda` fails with a clear message.
pub fn create(
    device: DeviceKind,
    checkpoint: &Checkpoint,
    cfg: &EngineConfig,
) -> Result<Box<dyn Backend>, BackendError> {
    match device {
        DeviceKind::Cpu => Ok(Box::new(cpu::CpuBackend::new(checkpoint, cfg)?)),
        DeviceKind::Cuda => Ok(Box::new(cuda::CudaBackend::new(checkpoint, cfg)?)),
        DeviceKind::Auto => {
            if cuda::is_available() {
                Ok(Box::new(cuda::CudaBackend::new(checkpoint, cfg)?))
            } else {
                Ok(Box::new(cpu::CpuBackend::new(checkpoint, cfg)?))
            }
        }
    }
}
