//! Synthetic checkpoints: HF-format directories (config.json +
//! model.safetensors) with the real shapes of known models and seeded
//! normal(0, initializer_range) weights, so speed and correctness can be
//! checked without downloading anything.
//!
//! Byte-identical output for a seed on any machine and thread count: every
//! tensor has its own ChaCha8 key (blake3 of seed and name), every fixed-size
//! chunk of it its own ChaCha stream, and the normal draw uses the pure-Rust
//! `libm` (not the platform's) for the Box–Muller transform.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::config::{Architecture, DType, Llama3RopeScaling, ModelConfig};
use crate::weights::{expected_tensors, SINGLE_FILE};

/// Elements per independent random stream (even, for Box–Muller pairs).
const CHUNK: usize = 1 << 16;

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("unknown preset {name:?}; known presets: {known}")]
    UnknownPreset { name: String, known: String },
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
}

/// What `write_preset` wrote.
#[derive(Debug, Clone)]
pub struct SynthSummary {
    pub dir: PathBuf,
    pub num_parameters: usize,
    pub bytes: u64,
}

/// Names accepted by [`preset`] and [`write_preset`].
pub fn preset_names() -> &'static [&'static str] {
    &[
        "tiny",
        "tiny-qwen2",
        "tiny-qwen3",
        "smollm2-135m",
        "qwen2.5-0.5b",
        "qwen3-0.6b",
        "llama-3.2-1b",
        "smollm2-360m",
        "smollm2-1.7b",
        "qwen3-1.7b",
        "qwen3-4b",
        "qwen3-8b",
        "qwen2.5-7b",
        "llama-3.2-3b",
        "llama-3.1-8b",
    ]
}

struct Shape {
    arch: Architecture,
    vocab: usize,
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    theta: f64,
    eps: f64,
    max_pos: usize,
    tied: bool,
    bos: u32,
    eos: u32,
    init: f64,
}

impl Shape {
    fn config(self, rope_scaling: Option<Llama3RopeScaling>) -> ModelConfig {
        ModelConfig {
            architecture: self.arch,
            vocab_size: self.vocab,
            hidden_size: self.hidden,
            intermediate_size: self.inter,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            num_key_value_heads: self.kv_heads,
            head_dim: self.head_dim,
            rms_norm_eps: self.eps,
            rope_theta: self.theta,
            rope_scaling,
            max_position_embeddings: self.max_pos,
            tie_word_embeddings: self.tied,
            attention_bias: self.arch == Architecture::Qwen2,
            qk_norm: self.arch == Architecture::Qwen3,
            bos_token_id: Some(self.bos),
            eos_token_ids: vec![self.eos],
            torch_dtype: DType::BF16,
            initializer_range: self.init,
        }
    }
}

/// The model config of a preset. Real presets use the values of the
/// published `config.json`s.
pub fn preset(name: &str) -> Result<ModelConfig, SynthError> {
    let tiny = |arch, head_dim, tied| Shape {
        arch,
        vocab: 2048,
        hidden: 256,
        inter: 768,
        layers: 4,
        heads: 8,
        kv_heads: 4,
        head_dim,
        theta: 10000.0,
        eps: 1e-6,
        max_pos: 2048,
        tied,
        bos: 1,
        eos: 2,
        init: 0.02,
    };
    // Qwen3 dense models: 151,936-token vocabulary, head_dim 128, 8 KV heads.
    let qwen3 = |hidden, inter, layers, heads, tied| {
        Shape {
            arch: Architecture::Qwen3,
            vocab: 151936,
            hidden,
            inter,
            layers,
            heads,
            kv_heads: 8,
            head_dim: 128,
            theta: 1000000.0,
            eps: 1e-6,
            max_pos: 40960,
            tied,
            bos: 151643,
            eos: 151645,
            init: 0.02,
        }
        .config(None)
    };
    // Llama 3.x: 128,256-token vocabulary, head_dim 128, 8 KV heads, llama3 RoPE.
    let llama3 = |hidden, inter, layers, heads, tied, factor| {
        Shape {
            arch: Architecture::Llama,
            vocab: 128256,
            hidden,
            inter,
            layers,
            heads,
            kv_heads: 8,
            head_dim: 128,
            theta: 500000.0,
            eps: 1e-5,
            max_pos: 131072,
            tied,
            bos: 128000,
            eos: 128001,
            init: 0.02,
        }
        .config(Some(Llama3RopeScaling {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        }))
    };
    let cfg = match name {
        // Untied lm_head, and llama3 RoPE scaling with a short original
        // context so all three frequency bands occur at head_dim 32.
        "tiny" => tiny(Architecture::Llama, 32, false).config(Some(Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 256,
        })),
        "tiny-qwen2" => tiny(Architecture::Qwen2, 32, true).config(None),
        // head_dim × heads ≠ hidden, as in the real Qwen3 models.
        "tiny-qwen3" => tiny(Architecture::Qwen3, 64, true).config(None),
        "smollm2-135m" => Shape {
            arch: Architecture::Llama,
            vocab: 49152,
            hidden: 576,
            inter: 1536,
            layers: 30,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            theta: 100000.0,
            eps: 1e-5,
            max_pos: 8192,
            tied: true,
            bos: 0,
            eos: 0,
            init: 0.041666666666666664,
        }
        .config(None),
        "qwen2.5-0.5b" => Shape {
            arch: Architecture::Qwen2,
            vocab: 151936,
            hidden: 896,
            inter: 4864,
            layers: 24,
            heads: 14,
            kv_heads: 2,
            head_dim: 64,
            theta: 1000000.0,
            eps: 1e-6,
            max_pos: 32768,
            tied: true,
            bos: 151643,
            eos: 151643,
            init: 0.02,
        }
        .config(None),
        "qwen3-0.6b" => Shape {
            arch: Architecture::Qwen3,
            vocab: 151936,
            hidden: 1024,
            inter: 3072,
            layers: 28,
            heads: 16,
            kv_heads: 8,
            head_dim: 128,
            theta: 1000000.0,
            eps: 1e-6,
            max_pos: 40960,
            tied: true,
            bos: 151643,
            eos: 151645,
            init: 0.02,
        }
        .config(None),
        "llama-3.2-1b" => Shape {
            arch: Architecture::Llama,
            vocab: 128256,
            hidden: 2048,
            inter: 8192,
            layers: 16,
            heads: 32,
            kv_heads: 8,
            head_dim: 64,
            theta: 500000.0,
            eps: 1e-5,
            max_pos: 131072,
            tied: true,
            bos: 128000,
            eos: 128001,
            init: 0.02,
        }
        .config(Some(Llama3RopeScaling {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        })),
        "smollm2-360m" => Shape {
            arch: Architecture::Llama,
            vocab: 49152,
            hidden: 960,
            inter: 2560,
            layers: 32,
            heads: 15,
            kv_heads: 5,
            head_dim: 64,
            theta: 100000.0,
            eps: 1e-5,
            max_pos: 8192,
            tied: true,
            bos: 0,
            eos: 0,
            init: 0.02,
        }
        .config(None),
        "smollm2-1.7b" => Shape {
            arch: Architecture::Llama,
            vocab: 49152,
            hidden: 2048,
            inter: 8192,
            layers: 24,
            heads: 32,
            kv_heads: 32,
            head_dim: 64,
            theta: 130000.0,
            eps: 1e-5,
            max_pos: 8192,
            tied: true,
            bos: 0,
            eos: 0,
            init: 0.02,
        }
        .config(None),
        "qwen3-1.7b" => qwen3(2048, 6144, 28, 16, true),
        "qwen3-4b" => qwen3(2560, 9728, 36, 32, true),
        "qwen3-8b" => qwen3(4096, 12288, 36, 32, false),
        "qwen2.5-7b" => Shape {
            arch: Architecture::Qwen2,
            vocab: 152064,
            hidden: 3584,
            inter: 18944,
            layers: 28,
            heads: 28,
            kv_heads: 4,
            head_dim: 128,
            theta: 1000000.0,
            eps: 1e-6,
            max_pos: 32768,
            tied: false,
            bos: 151643,
            eos: 151645,
            init: 0.02,
        }
        .config(None),
        "llama-3.2-3b" => llama3(3072, 8192, 28, 24, true, 32.0),
        "llama-3.1-8b" => llama3(4096, 14336, 32, 32, false, 8.0),
        _ => {
            return Err(SynthError::UnknownPreset {
                name: name.to_string(),
                known: preset_names().join(", "),
            })
        }
    };
    Ok(cfg)
}

/// Writes preset `name` with weights drawn from `seed` into `out` (created
/// if needed).
pub fn write_preset(name: &str, seed: u64, out: &Path) -> Result<SynthSummary, SynthError> {
    write_checkpoint(&preset(name)?, seed, out)
}

/// Writes `cfg` as an HF checkpoint directory with seeded weights stored in
/// `cfg.torch_dtype`: matrices and embeddings ~ normal(0, initializer_range),
/// biases likewise (HF zeroes them; random ones make them matter in tests),
/// norm weights 1.0 as HF initialises them.
pub fn write_checkpoint(
    cfg: &ModelConfig,
    seed: u64,
    out: &Path,
) -> Result<SynthSummary, SynthError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SynthError::Io {
            path: path.clone(),
            cause: source,
        }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let config_path = out.join("config.json");
    let mut config_text =
        serde_json::to_string_pretty(&config_json(cfg)).map_err(|e| io(&config_path)(e.into()))?;
    config_text.push('\n');
    std::fs::write(&config_path, config_text).map_err(io(&config_path))?;

    let tensors = expected_tensors(cfg);
    let elem = cfg.torch_dtype.size();
    let mut header: BTreeMap<String, Value> = BTreeMap::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0usize;
    for (name, shape) in &tensors {
        let bytes = shape.iter().product::<usize>() * elem;
        header.insert(
            name.clone(),
            json!({
                "dtype": safetensors_dtype(cfg.torch_dtype),
                "shape": shape,
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
    }
    let mut header_bytes = serde_json::to_vec(&header).map_err(|e| io(out)(e.into()))?;
    while header_bytes.len() % 8 != 0 {
        header_bytes.push(b' ');
    }

    let weights_path = out.join(SINGLE_FILE);
    let file = std::fs::File::create(&weights_path).map_err(io(&weights_path))?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 22, file);
    writer
        .write_all(&(header_bytes.len() as u64).to_le_bytes())
        .and_then(|()| writer.write_all(&header_bytes))
        .map_err(io(&weights_path))?;
    let mut buffer = Vec::new();
    for (name, shape) in &tensors {
        let len = shape.iter().product::<usize>();
        buffer.clear();
        buffer.resize(len * elem, 0u8);
        fill_tensor(cfg, seed, name, &mut buffer);
        writer.write_all(&buffer).map_err(io(&weights_path))?;
    }
    writer.flush().map_err(io(&weights_path))?;
    Ok(SynthSummary {
        dir: out.to_path_buf(),
        num_parameters: cfg.num_parameters(),
        bytes: 8 + header_bytes.len() as u64 + offset as u64,
    })
}

fn safetensors_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
    }
}

/// Fills `out` (raw little-endian bytes in `cfg.torch_dtype`) with tensor
/// `name`'s values.
fn fill_tensor(cfg: &ModelConfig, seed: u64, name: &str, out: &mut [u8]) {
    let elem = cfg.torch_dtype.size();
    let is_norm = name.ends_with("norm.weight");
    let key = tensor_key(seed, name);
    let std = cfg.initializer_range as f32;
    out.par_chunks_mut(CHUNK * elem)
        .enumerate()
        .for_each(|(chunk, bytes)| {
            let n = bytes.len() / elem;
            let values: Vec<f32> = if is_norm {
                vec![1.0; n]
            } else {
                normal_chunk(key, chunk as u64, n, std)
            };
            for (dst, v) in bytes.chunks_exact_mut(elem).zip(values) {
                match cfg.torch_dtype {
                    DType::F32 => dst.copy_from_slice(&v.to_le_bytes()),
                    DType::F16 => dst.copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                    DType::BF16 => dst.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                }
            }
        });
}

fn tensor_key(seed: u64, name: &str) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"dyno-synth-v1");
    hasher.update(&seed.to_le_bytes());
    hasher.update(name.as_bytes());
    *hasher.finalize().as_bytes()
}

/// `n` draws of normal(0, std) from stream `stream` of the tensor's key.
fn normal_chunk(key: [u8; 32], stream: u64, n: usize, std: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(stream);
    let mut values = Vec::with_capacity(n + 1);
    while values.len() < n {
        // u1 in (0, 1] so ln(u1) is finite; 24 bits fill an f32 mantissa.
        let u1 = ((rng.next_u32() >> 8) + 1) as f32 * (1.0 / (1u32 << 24) as f32);
        let u2 = (rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
        let radius = libm::sqrtf(-2.0 * libm::logf(u1)) * std;
        let (sin, cos) = libm::sincosf(2.0 * std::f32::consts::PI * u2);
        values.push(radius * cos);
        values.push(radius * sin);
    }
    values.truncate(n);
    values
}

/// `config.json` as transformers writes it for this architecture.
pub fn config_json(cfg: &ModelConfig) -> Value {
    let rope_scaling = match &cfg.rope_scaling {
        None => Value::Null,
        Some(s) => json!({
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        }),
    };
    let eos = match cfg.eos_token_ids.as_slice() {
        [one] => json!(one),
        many => json!(many),
    };
    let mut v = json!({
        "architectures": [cfg.architecture.hf_class()],
        "model_type": cfg.architecture.model_type(),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "initializer_range": cfg.initializer_range,
        "attention_dropout": 0.0,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos,
        "torch_dtype": cfg.torch_dtype.torch_name(),
        "use_cache": true,
    });
    let extra = match cfg.architecture {
        Architecture::Llama => json!({
            "attention_bias": cfg.attention_bias,
            "mlp_bias": false,
            "pretraining_tp": 1,
        }),
        Architecture::Qwen2 | Architecture::Qwen3 => json!({
            "attention_bias": cfg.attention_bias,
            "use_sliding_window": false,
            "sliding_window": null,
            "max_window_layers": cfg.num_hidden_layers,
        }),
    };
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        obj.extend(extra.clone());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::Checkpoint;

    #[test]
    fn presets_parse_back_and_have_expected_sizes() {
        for name in preset_names() {
            let cfg = preset(name).unwrap();
            let text = config_json(&cfg).to_string();
            assert_eq!(ModelConfig::parse(&text).unwrap(), cfg, "{name}");
        }
        let params = |n: &str| preset(n).unwrap().num_parameters();
        assert!((2_000_000..8_000_000).contains(&params("tiny")));
        assert!((134_000_000..136_000_000).contains(&params("smollm2-135m")));
        assert!((490_000_000..500_000_000).contains(&params("qwen2.5-0.5b")));
        assert!((590_000_000..600_000_000).contains(&params("qwen3-0.6b")));
        assert!((1_230_000_000..1_240_000_000).contains(&params("llama-3.2-1b")));
        // Parameter counts of the published checkpoints (safetensors
        // metadata of the HF repos): the shapes agree exactly. Qwen3-1.7B's
        // files store the tied lm_head as a second copy (2,031,739,904).
        for (name, published) in [
            ("smollm2-360m", 361_821_120usize),
            ("smollm2-1.7b", 1_711_376_384),
            ("qwen3-1.7b", 2_031_739_904 - 151_936 * 2_048),
            ("qwen3-4b", 4_022_468_096),
            ("qwen3-8b", 8_190_735_360),
            ("qwen2.5-7b", 7_615_616_512),
            ("llama-3.2-3b", 3_212_749_824),
            ("llama-3.1-8b", 8_030_261_248),
        ] {
            assert_eq!(params(name), published, "{name}");
        }
        assert!(preset("gpt2").unwrap_err().to_string().contains("tiny"));
    }

    #[test]
    fn same_seed_same_bytes_different_seed_different_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let read = |d: &str| std::fs::read(dir.path().join(d).join(SINGLE_FILE)).unwrap();
        write_preset("tiny-qwen2", 7, &dir.path().join("a")).unwrap();
        write_preset("tiny-qwen2", 7, &dir.path().join("b")).unwrap();
        write_preset("tiny-qwen2", 8, &dir.path().join("c")).unwrap();
        assert!(read("a") == read("b"));
        assert!(read("a") != read("c"));
        let a = Checkpoint::open(&dir.path().join("a")).unwrap();
        assert_eq!(a.config, preset("tiny-qwen2").unwrap());
    }

    #[test]
    fn draws_are_normal_with_the_requested_std_and_norms_are_one() {
        let dir = tempfile::tempdir().unwrap();
        write_preset("tiny", 3, dir.path()).unwrap();
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        let w = ckpt.tensor("model.embed_tokens.weight").unwrap().to_f32();
        let n = w.len() as f64;
        let mean = w.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 1e-3, "{mean}");
        assert!((var.sqrt() - 0.02).abs() < 2e-4, "{}", var.sqrt());
        let norm = ckpt.tensor("model.norm.weight").unwrap().to_f32();
        assert!(norm.iter().all(|&x| x == 1.0));
    }
}
