//! CUDA backend (bf16, cudarc). Owned by the CUDA work item.
use super::*;

/// True when a CUDA driver library loads and reports at least one GPU.
pub fn is_available() -> bool {
    false
}

pub struct CudaBackend {}

impl CudaBackend {
    pub fn new(checkpoint: &Checkpoint, cfg: &EngineConfig) -> Result<Self, BackendError> {
        let _ = (checkpoint, cfg);
        Err(BackendError::NoDriver("CUDA backend not built yet".into()))
    }
}

impl Backend for CudaBackend {
    fn info(&self) -> BackendInfo {
        todo!()
    }
    fn kv_block_bytes(&self, _block_size: usize) -> usize {
        todo!()
    }
    fn kv_memory_budget(&self, _cfg: &EngineConfig) -> Result<u64, BackendError> {
        todo!()
    }
    fn allocate_kv_cache(&mut self, _n: usize, _bs: usize) -> Result<(), BackendError> {
        todo!()
    }
    fn forward(&mut self, _batch: &[SeqStep<'_>]) -> Result<Vec<u32>, BackendError> {
        todo!()
    }
    fn forward_logits(&mut self, _batch: &[SeqStep<'_>]) -> Result<Vec<Vec<f32>>, BackendError> {
        todo!()
    }
}

/// Static properties of one GPU, for the pipeline's fingerprint
/// (`engine info --json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GpuProperties {
    pub ordinal: usize,
    pub name: String,
    pub uuid: String,
    pub compute_capability: (i32, i32),
    pub sm_count: i32,
    pub total_memory_bytes: u64,
    /// cuDriverGetVersion, e.g. 13000.
    pub cuda_driver_version: i32,
}

/// Properties of every visible GPU; an empty list when no driver is present.
pub fn device_properties() -> Result<Vec<GpuProperties>, BackendError> {
    Ok(Vec::new())
}
