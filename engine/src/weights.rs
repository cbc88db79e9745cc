//! Safetensors checkpoints through mmap: single file or sharded
//! (`model.safetensors.index.json`), f32/f16/bf16, validated against the
//! config. CONTRACT: `Checkpoint` and `TensorView` are what backends consume.

use std::path::Path;

use crate::config::{DType, ModelConfig};

/// A tensor in the checkpoint, borrowed from the mmap.
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    /// Raw little-endian bytes.
    pub data: &'a [u8],
}

impl TensorView<'_> {
    /// Values upcast to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        todo!("engine-model work item")
    }
    /// Values converted to bf16.
    pub fn to_bf16(&self) -> Vec<half::bf16> {
        todo!("engine-model work item")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// A validated checkpoint directory: config + memory-mapped tensors.
pub struct Checkpoint {
    pub config: ModelConfig,
    // private: mmaps, name → (file, offset) index
}

impl Checkpoint {
    /// Opens `dir` (config.json + model.safetensors or sharded index) and
    /// validates every expected tensor's presence, dtype and shape.
    pub fn open(dir: &Path) -> Result<Checkpoint, WeightsError> {
        let _ = dir;
        todo!("engine-model work item")
    }
    /// The tensor named exactly as in HF (`model.layers.0.self_attn.q_proj.weight`).
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>, WeightsError> {
        let _ = name;
        todo!("engine-model work item")
    }
    /// blake3 over config.json and the safetensors files, hex.
    pub fn content_hash(&self) -> String {
        todo!("engine-model work item")
    }
}
