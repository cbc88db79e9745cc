//! Model configuration parsed from a Hugging Face `config.json`.
//! CONTRACT (shared by the CPU and CUDA backends): the fields of
//! [`ModelConfig`] are fixed; the parser fills them.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Architecture {
    /// `LlamaForCausalLM`
    Llama,
    /// `Qwen2ForCausalLM`: q/k/v projections carry a bias.
    Qwen2,
    /// `Qwen3ForCausalLM`: per-head RMSNorm on q and k, explicit head_dim.
    Qwen3,
}

/// `rope_scaling` of type `llama3`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DType {
    F32,
    F16,
    BF16,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Qwen2: q/k/v have biases (also Llama with `attention_bias: true`).
    pub attention_bias: bool,
    /// Qwen3: q_norm / k_norm weights per layer.
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    /// All EOS ids (HF allows a list).
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` / `dtype` of the checkpoint.
    pub torch_dtype: DType,
    pub initializer_range: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl ModelConfig {
    /// Reads `dir/config.json` (or a path to the file itself).
    pub fn load(path: &Path) -> Result<ModelConfig, ConfigError> {
        let _ = path;
        todo!("engine-model work item")
    }
}
