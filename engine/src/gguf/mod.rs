//! GGUF checkpoints (llama.cpp's format): the container ([`file`]), its
//! metadata ([`metadata`]), tensor encodings and dequantization
//! ([`tensor_type`]), llama.cpp's tensor names and q/k row order
//! ([`names`]), the model config from metadata ([`model_config`]), and a
//! writer for synthetic files ([`writer`]).
//!
//! [`crate::weights::Checkpoint::open`] reads a `.gguf` file through
//! [`index`]; backends then see HF-named tensors as for safetensors,
//! dequantized to f32 (CPU) or bf16 (CUDA) at load.

mod cursor;
pub mod file;
pub mod metadata;
pub(crate) mod model_config;
pub(crate) mod names;
pub mod tensor_type;
pub mod writer;

pub use file::{GgufFile, TensorInfo};
pub use metadata::{MetaValue, Metadata};
pub use tensor_type::TensorEncoding;
pub use writer::GgufWriter;

use crate::config::{Architecture, ModelConfig};

/// A GGUF tensor under its HF name.
pub(crate) struct MappedTensor {
    pub hf_name: String,
    pub info: TensorInfo,
    /// Llama q/k projections: undo llama.cpp's row permutation with this
    /// many heads (see [`names`]).
    pub unpermute_heads: Option<usize>,
}

/// The parsed file: config, metadata (for the tokenizer) and tensors
/// under HF names. Tensors llama.cpp writes that the engine does not use
/// (`rope_freqs.weight`, folded into the config) are left out.
pub(crate) struct Indexed {
    pub config: ModelConfig,
    pub metadata: Metadata,
    pub tensors: Vec<MappedTensor>,
}

pub(crate) fn index(bytes: &[u8]) -> Result<Indexed, String> {
    let file = GgufFile::parse(bytes)?;
    let config = model_config::model_config(&file, bytes)?;
    let mut tensors = Vec::with_capacity(file.tensors.len());
    for info in file.tensors {
        let Some(hf_name) = names::hf_name(&info.name) else {
            if info.name == model_config::ROPE_FREQS {
                continue;
            }
            return Err(format!(
                "tensor {}: not a tensor of a Llama/Qwen2/Qwen3 model",
                info.name
            ));
        };
        let unpermute_heads = match names::rope_permuted(&hf_name) {
            Some(is_q) if config.architecture == Architecture::Llama => Some(if is_q {
                config.num_attention_heads
            } else {
                config.num_key_value_heads
            }),
            _ => None,
        };
        if let Some(heads) = unpermute_heads {
            // [rows] for a bias, [cols, rows] for a weight (ggml order).
            let rows = if info.dims.len() == 1 {
                info.dims[0]
            } else {
                info.dims[1]
            };
            if rows != heads * config.head_dim {
                return Err(format!(
                    "tensor {}: {rows} rows, expected {heads} heads × head_dim {}",
                    info.name, config.head_dim
                ));
            }
        }
        tensors.push(MappedTensor {
            hf_name,
            info,
            unpermute_heads,
        });
    }
    Ok(Indexed {
        config,
        metadata: file.metadata,
        tensors,
    })
}
