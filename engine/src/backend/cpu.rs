//! CPU backend (f32 compute). Owned by the engine-model work item.
use super::*;

pub struct CpuBackend {}

impl CpuBackend {
    pub fn new(checkpoint: &Checkpoint, cfg: &EngineConfig) -> Result<Self, BackendError> {
        let _ = (checkpoint, cfg);
        todo!("engine-model work item")
    }
}

impl Backend for CpuBackend {
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
