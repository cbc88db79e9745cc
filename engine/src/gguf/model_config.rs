//! A [`ModelConfig`] from GGUF metadata (`llama.*`, `qwen2.*`, `qwen3.*`
//! keys, llama.cpp's `LLM_KV_*` names) and the tensors present.

use super::file::GgufFile;
use super::tensor_type::TensorEncoding;
use crate::config::{Architecture, DType, Llama3RopeScaling, ModelConfig};

/// llama.cpp writes llama3 RoPE scaling as this tensor of per-frequency
/// divisors rather than as metadata.
pub(crate) const ROPE_FREQS: &str = "rope_freqs.weight";

/// `bytes` is the whole file (for the `rope_freqs` tensor).
pub(crate) fn model_config(file: &GgufFile, bytes: &[u8]) -> Result<ModelConfig, String> {
    let m = &file.metadata;
    let arch_name = m
        .str("general.architecture")?
        .ok_or("general.architecture: missing")?;
    let architecture = match arch_name {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        "qwen3" => Architecture::Qwen3,
        other => {
            return Err(format!(
                "general.architecture: unsupported {other:?} (supported: llama, qwen2, qwen3)"
            ))
        }
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let hidden_size = m.required_usize(&key("embedding_length"))?;
    let num_attention_heads = m.required_usize(&key("attention.head_count"))?;
    let num_key_value_heads = m
        .usize(&key("attention.head_count_kv"))?
        .unwrap_or(num_attention_heads);
    let head_dim = match m.usize(&key("attention.key_length"))? {
        Some(d) => d,
        None if num_attention_heads > 0 && hidden_size % num_attention_heads == 0 => {
            hidden_size / num_attention_heads
        }
        None => {
            return Err(format!(
                "{}: absent and embedding_length {hidden_size} is not a multiple of head_count {num_attention_heads}",
                key("attention.key_length")
            ))
        }
    };
    if let Some(v) = m.usize(&key("attention.value_length"))? {
        if v != head_dim {
            return Err(format!(
                "{}: {v} differs from the key length {head_dim} (not supported)",
                key("attention.value_length")
            ));
        }
    }
    if let Some(r) = m.usize(&key("rope.dimension_count"))? {
        if r != head_dim {
            return Err(format!(
                "{}: RoPE on {r} of {head_dim} head dimensions (partial rotary) is not supported",
                key("rope.dimension_count")
            ));
        }
    }
    if let Some(kind) = m.str(&key("rope.scaling.type"))? {
        if kind != "none" {
            return Err(format!(
                "{}: {kind:?} is not supported (llama3 scaling comes as {ROPE_FREQS})",
                key("rope.scaling.type")
            ));
        }
    }
    let embed = file
        .tensor("token_embd.weight")
        .ok_or("tensor token_embd.weight: missing")?;
    let vocab_size = match embed.dims.as_slice() {
        [h, v] if *h == hidden_size => *v,
        dims => {
            return Err(format!(
                "tensor token_embd.weight: dims {dims:?}, expected [{hidden_size}, vocab]"
            ))
        }
    };
    if let Some(v) = m.usize(&key("vocab_size"))? {
        if v != vocab_size {
            return Err(format!(
                "{}: {v} differs from token_embd.weight's {vocab_size} rows",
                key("vocab_size")
            ));
        }
    }
    let rope_theta = m.f64(&key("rope.freq_base"))?.unwrap_or(10000.0);
    let rope_scaling = match file.tensor(ROPE_FREQS) {
        None => None,
        Some(t) => {
            let factors = t.encoding.dequantize(&bytes[t.start..t.end]);
            let original = m
                .usize(&key("rope.scaling.original_context_length"))?
                .unwrap_or(LLAMA3_DEFAULT_ORIGINAL_CONTEXT);
            Some(
                fit_llama3(&factors, rope_theta, head_dim, original)
                    .map_err(|e| format!("tensor {ROPE_FREQS}: {e}"))?,
            )
        }
    };
    let token = |k: &str| -> Result<Option<u32>, String> {
        m.usize(k)?
            .map(|v| u32::try_from(v).map_err(|_| format!("{k}: {v} is not a token id")))
            .transpose()
    };
    let mut eos_token_ids = Vec::new();
    for k in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = token(k)? {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }
    let cfg = ModelConfig {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size: m.required_usize(&key("feed_forward_length"))?,
        num_hidden_layers: m.required_usize(&key("block_count"))?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: m
            .f64(&key("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| format!("{}: missing", key("attention.layer_norm_rms_epsilon")))?,
        rope_theta,
        rope_scaling,
        max_position_embeddings: m.required_usize(&key("context_length"))?,
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        attention_bias: architecture == Architecture::Qwen2
            || file.tensor("blk.0.attn_q.bias").is_some(),
        qk_norm: architecture == Architecture::Qwen3,
        bos_token_id: token("tokenizer.ggml.bos_token_id")?,
        eos_token_ids,
        // What the weights become at load: f32 only when stored as f32.
        torch_dtype: match embed.encoding {
            TensorEncoding::F32 => DType::F32,
            TensorEncoding::F16 => DType::F16,
            _ => DType::BF16,
        },
        initializer_range: 0.02,
    };
    crate::config::validate(&cfg)?;
    Ok(cfg)
}

/// The converter's default `original_max_position_embeddings`.
const LLAMA3_DEFAULT_ORIGINAL_CONTEXT: usize = 8192;

/// Recovers the llama3 scaling parameters from the per-frequency divisors
/// llama.cpp stores (`LlamaModel.generate_extra_tensors`): `factor` is the
/// divisor of the lowest frequencies; in the band between, `1/divisor` is
/// linear in `original / wavelength`, which gives `low_freq_factor` and
/// `high_freq_factor`. The fit is checked by recomputing every divisor.
fn fit_llama3(
    factors: &[f32],
    theta: f64,
    head_dim: usize,
    original: usize,
) -> Result<Llama3RopeScaling, String> {
    let half = head_dim / 2;
    if factors.len() != half {
        return Err(format!(
            "{} values, expected head_dim / 2 = {half}",
            factors.len()
        ));
    }
    let x: Vec<f64> = (0..half)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            original as f64 * freq / (2.0 * std::f64::consts::PI)
        })
        .collect();
    let factor = factors.iter().copied().fold(1.0f32, f32::max) as f64;
    let tol = 1e-4;
    let band: Vec<(f64, f64)> = factors
        .iter()
        .zip(&x)
        .filter(|(&f, _)| (f as f64) > 1.0 + tol && (f as f64) < factor - tol)
        .map(|(&f, &x)| (x, (factor / f as f64 - 1.0) / (factor - 1.0)))
        .collect();
    // smooth = (x - low) / (high - low): two band points give low and high;
    // with fewer, HF's defaults (1, 4) must reproduce the divisors.
    let (low, high) = match (band.first(), band.last()) {
        (Some(&(x0, s0)), Some(&(x1, s1))) if band.len() >= 2 && (x1 - x0).abs() > 1e-9 => {
            let a = (s1 - s0) / (x1 - x0);
            let low = x0 - s0 / a;
            (low, low + 1.0 / a)
        }
        _ => (1.0, 4.0),
    };
    let scaling = Llama3RopeScaling {
        factor,
        low_freq_factor: (low * 1e6).round() / 1e6,
        high_freq_factor: (high * 1e6).round() / 1e6,
        original_max_position_embeddings: original,
    };
    for (i, (&f, &x)) in factors.iter().zip(&x).enumerate() {
        let want = if x > scaling.high_freq_factor {
            1.0
        } else if x < scaling.low_freq_factor {
            factor
        } else {
            let s = (x - scaling.low_freq_factor)
                / (scaling.high_freq_factor - scaling.low_freq_factor);
            1.0 / ((1.0 - s) / factor + s)
        };
        if (want - f as f64).abs() > 1e-3 * want {
            return Err(format!(
                "value {i} ({f}) does not follow llama3 scaling (fitted factor {factor}, \
                 low {}, high {}: expected {want})",
                scaling.low_freq_factor, scaling.high_freq_factor
            ));
        }
    }
    Ok(scaling)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The converter's divisors for Llama 3.2 (factor 32, 1, 4, 8192).
    #[test]
    fn llama3_parameters_are_recovered_from_rope_freqs() {
        let (theta, dim, orig) = (500000.0f64, 64usize, 8192usize);
        let (factor, low, high) = (32.0f64, 1.0f64, 4.0f64);
        let factors: Vec<f32> = (0..dim / 2)
            .map(|i| {
                let freq = 1.0 / theta.powf((2 * i) as f64 / dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let (lw, hw) = (orig as f64 / low, orig as f64 / high);
                (if wavelen < hw {
                    1.0
                } else if wavelen > lw {
                    factor
                } else {
                    let s = (orig as f64 / wavelen - low) / (high - low);
                    1.0 / ((1.0 - s) / factor + s)
                }) as f32
            })
            .collect();
        let s = fit_llama3(&factors, theta, dim, orig).unwrap();
        assert_eq!(s.factor, 32.0);
        assert!((s.low_freq_factor - 1.0).abs() < 1e-4, "{s:?}");
        assert!((s.high_freq_factor - 4.0).abs() < 1e-4, "{s:?}");
        let mut bad = factors.clone();
        bad[0] = 3.0;
        assert!(fit_llama3(&bad, theta, dim, orig).is_err());
        assert!(fit_llama3(&factors[1..], theta, dim, orig).is_err());
    }
}
