//! One decoder layer (Llama / Qwen2 / Qwen3): pre-norm attention and pre-norm
//! gated MLP, each added back to the residual stream.

use super::attention::{Heads, KvCache, TokenPlace};
use super::linear::Linear;
use super::mlp::silu_mul;
use super::rmsnorm::{rms_norm, rms_norm_rows};
use crate::backend::rope::{Rope, RopeAngles};
use crate::config::ModelConfig;
use crate::weights::{Checkpoint, WeightsError};

pub struct DecoderLayer {
    index: usize,
    input_norm: Vec<f32>,
    /// q, k and v projections stacked: `[q | k | v]` per row.
    qkv: Linear,
    /// Qwen3: per-head RMSNorm weights for q and k.
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    o_proj: Linear,
    post_norm: Vec<f32>,
    /// gate and up projections stacked: `[gate | up]` per row.
    gate_up: Linear,
    down: Linear,
    heads: Heads,
    eps: f32,
    intermediate: usize,
}

/// What every layer of a step shares: where each token sits and its RoPE
/// angles.
pub struct StepContext<'a> {
    pub places: &'a [TokenPlace<'a>],
    pub angles: &'a [RopeAngles],
    pub rope: &'a Rope,
}

impl DecoderLayer {
    pub fn load(ckpt: &Checkpoint, index: usize) -> Result<DecoderLayer, WeightsError> {
        let cfg: &ModelConfig = &ckpt.config;
        let p = format!("model.layers.{index}");
        let get = |name: &str| -> Result<Vec<f32>, WeightsError> {
            Ok(ckpt.tensor(&format!("{p}.{name}"))?.to_f32())
        };
        let bias = |name: &str| -> Result<Option<Vec<f32>>, WeightsError> {
            if cfg.attention_bias {
                get(&format!("self_attn.{name}_proj.bias")).map(Some)
            } else {
                Ok(None)
            }
        };
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let q_out = cfg.num_attention_heads * hd;
        let kv_out = cfg.num_key_value_heads * hd;
        let qkv = Linear::stack(
            vec![
                (get("self_attn.q_proj.weight")?, bias("q")?, q_out),
                (get("self_attn.k_proj.weight")?, bias("k")?, kv_out),
                (get("self_attn.v_proj.weight")?, bias("v")?, kv_out),
            ],
            h,
        );
        let qk_norm = if cfg.qk_norm {
            Some((
                get("self_attn.q_norm.weight")?,
                get("self_attn.k_norm.weight")?,
            ))
        } else {
            None
        };
        let i = cfg.intermediate_size;
        let gate_up = Linear::stack(
            vec![
                (get("mlp.gate_proj.weight")?, None, i),
                (get("mlp.up_proj.weight")?, None, i),
            ],
            h,
        );
        Ok(DecoderLayer {
            index,
            input_norm: get("input_layernorm.weight")?,
            qkv,
            qk_norm,
            o_proj: Linear::new(&get("self_attn.o_proj.weight")?, None, h, q_out),
            post_norm: get("post_attention_layernorm.weight")?,
            gate_up,
            down: Linear::new(&get("mlp.down_proj.weight")?, None, h, i),
            heads: Heads {
                q_heads: cfg.num_attention_heads,
                kv_heads: cfg.num_key_value_heads,
                head_dim: hd,
            },
            eps: cfg.rms_norm_eps as f32,
            intermediate: i,
        })
    }

    /// Runs the layer over `x` (`[tokens, hidden]`, updated in place), storing
    /// this layer's K/V for the step's tokens before attending.
    pub fn forward(&self, x: &mut [f32], step: &StepContext<'_>, cache: &mut KvCache) {
        let tokens = step.places.len();
        let Heads {
            q_heads,
            kv_heads,
            head_dim,
        } = self.heads;
        let (q_w, kv_w) = (q_heads * head_dim, kv_heads * head_dim);

        let normed = rms_norm(x, &self.input_norm, self.eps);
        let qkv = self.qkv.forward(&normed, tokens);
        let mut q = Vec::with_capacity(tokens * q_w);
        let mut k = Vec::with_capacity(tokens * kv_w);
        let mut v = Vec::with_capacity(tokens * kv_w);
        for row in qkv.chunks_exact(q_w + 2 * kv_w) {
            q.extend_from_slice(&row[..q_w]);
            k.extend_from_slice(&row[q_w..q_w + kv_w]);
            v.extend_from_slice(&row[q_w + kv_w..]);
        }
        if let Some((q_norm, k_norm)) = &self.qk_norm {
            rms_norm_rows(&mut q, q_norm, self.eps);
            rms_norm_rows(&mut k, k_norm, self.eps);
        }
        for t in 0..tokens {
            step.rope
                .apply(&mut q[t * q_w..(t + 1) * q_w], &step.angles[t]);
            step.rope
                .apply(&mut k[t * kv_w..(t + 1) * kv_w], &step.angles[t]);
        }
        cache.write(self.index, step.places, &k, &v);
        let attn = cache.attend(self.index, step.places, &q, self.heads);
        add(x, &self.o_proj.forward(&attn, tokens));

        let normed = rms_norm(x, &self.post_norm, self.eps);
        let act = silu_mul(&self.gate_up.forward(&normed, tokens), self.intermediate);
        add(x, &self.down.forward(&act, tokens));
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
