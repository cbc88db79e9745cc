//! The model's weights on the device, in bf16, with the projections that run
//! back to back fused into one matrix: q, k and v into `qkv` (and their
//! biases), gate and up into `gate_up`. One GEMM each instead of three and two.

use std::sync::Arc;

use cudarc::driver::CudaStream;
use half::bf16;

use super::super::BackendError;
use super::buffer::DeviceBuffer;
use crate::config::ModelConfig;

pub struct LayerWeights {
    pub input_norm: DeviceBuffer,
    /// `[(nq + 2 nkv) · head_dim, hidden]`
    pub qkv: DeviceBuffer,
    pub qkv_bias: Option<DeviceBuffer>,
    pub q_norm: Option<DeviceBuffer>,
    pub k_norm: Option<DeviceBuffer>,
    /// `[hidden, nq · head_dim]`
    pub o_proj: DeviceBuffer,
    pub post_attention_norm: DeviceBuffer,
    /// `[2 · intermediate, hidden]`: gate rows then up rows.
    pub gate_up: DeviceBuffer,
    /// `[hidden, intermediate]`
    pub down: DeviceBuffer,
}

pub struct DeviceWeights {
    pub embed: DeviceBuffer,
    /// `None` when tied to the embedding.
    pub lm_head: Option<DeviceBuffer>,
    pub final_norm: DeviceBuffer,
    pub layers: Vec<LayerWeights>,
    /// bf16 bytes uploaded.
    pub bytes: usize,
}

impl DeviceWeights {
    pub fn lm_head_ptr(&self) -> u64 {
        self.lm_head.as_ref().unwrap_or(&self.embed).ptr
    }

    /// Uploads every tensor that `load(name)` returns (bf16 values of the HF
    /// tensor `name`), checking each length against `config`.
    pub fn upload(
        stream: &Arc<CudaStream>,
        config: &ModelConfig,
        load: &dyn Fn(&str) -> Result<Vec<bf16>, BackendError>,
    ) -> Result<Self, BackendError> {
        let c = config;
        let (h, hd, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (nq, nkv) = (c.num_attention_heads, c.num_key_value_heads);
        let mut bytes = 0usize;
        let mut get = |name: &str, len: usize| -> Result<Vec<bf16>, BackendError> {
            let v = load(name)?;
            if v.len() != len {
                return Err(BackendError::Cuda(format!(
                    "tensor {name}: expected {len} values, found {}",
                    v.len()
                )));
            }
            bytes += len * 2;
            Ok(v)
        };
        let up = |name: &str, v: &[bf16]| DeviceBuffer::upload(stream, v, name);

        let embed_v = get("model.embed_tokens.weight", c.vocab_size * h)?;
        let embed = up("model.embed_tokens.weight", &embed_v)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(up(
                "lm_head.weight",
                &get("lm_head.weight", c.vocab_size * h)?,
            )?)
        };
        let final_norm = up("model.norm.weight", &get("model.norm.weight", h)?)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let a = format!("{p}.self_attn");
            let mut qkv = get(&format!("{a}.q_proj.weight"), nq * hd * h)?;
            qkv.extend(get(&format!("{a}.k_proj.weight"), nkv * hd * h)?);
            qkv.extend(get(&format!("{a}.v_proj.weight"), nkv * hd * h)?);
            let qkv_bias = if c.attention_bias {
                let mut b = get(&format!("{a}.q_proj.bias"), nq * hd)?;
                b.extend(get(&format!("{a}.k_proj.bias"), nkv * hd)?);
                b.extend(get(&format!("{a}.v_proj.bias"), nkv * hd)?);
                Some(up(&format!("{a}.qkv bias"), &b)?)
            } else {
                None
            };
            let (q_norm, k_norm) = if c.qk_norm {
                (
                    Some(up("q_norm", &get(&format!("{a}.q_norm.weight"), hd)?)?),
                    Some(up("k_norm", &get(&format!("{a}.k_norm.weight"), hd)?)?),
                )
            } else {
                (None, None)
            };
            let m = format!("{p}.mlp");
            let mut gate_up = get(&format!("{m}.gate_proj.weight"), inter * h)?;
            gate_up.extend(get(&format!("{m}.up_proj.weight"), inter * h)?);
            layers.push(LayerWeights {
                input_norm: up(
                    "input_layernorm",
                    &get(&format!("{p}.input_layernorm.weight"), h)?,
                )?,
                qkv: up(&format!("{a}.qkv"), &qkv)?,
                qkv_bias,
                q_norm,
                k_norm,
                o_proj: up("o_proj", &get(&format!("{a}.o_proj.weight"), h * nq * hd)?)?,
                post_attention_norm: up(
                    "post_attention_layernorm",
                    &get(&format!("{p}.post_attention_layernorm.weight"), h)?,
                )?,
                gate_up: up(&format!("{m}.gate_up"), &gate_up)?,
                down: up(
                    "down_proj",
                    &get(&format!("{m}.down_proj.weight"), h * inter)?,
                )?,
            });
        }
        Ok(DeviceWeights {
            embed,
            lm_head,
            final_norm,
            layers,
            bytes,
        })
    }
}
