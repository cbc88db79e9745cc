//! Model configuration parsed from a Hugging Face `config.json`.
//! CONTRACT (shared by the CPU and CUDA backends): the fields of
//! [`ModelConfig`] are fixed; the parser fills them.

use std::path::Path;

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Architecture {
    /// `LlamaForCausalLM`
    Llama,
    /// `Qwen2ForCausalLM`: q/k/v projections carry a bias.
    Qwen2,
    /// `Qwen3ForCausalLM`: per-head RMSNorm on q and k, explicit head_dim.
    Qwen3,
}

impl Architecture {
    /// The HF class name, as in `config.json`'s `architectures`.
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
        }
    }
    /// The HF `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }
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

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
    /// The name torch and `config.json` use.
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }
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
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl ModelConfig {
    /// Reads `dir/config.json` (or a path to the file itself).
    pub fn load(path: &Path) -> Result<ModelConfig, ConfigError> {
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Io {
            path: file.display().to_string(),
            cause: source,
        })?;
        ModelConfig::parse(&text).map_err(|message| ConfigError::Invalid {
            path: file.display().to_string(),
            message,
        })
    }

    /// Parses the text of a `config.json`; the error names the field.
    pub fn parse(text: &str) -> Result<ModelConfig, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let obj = value
            .as_object()
            .ok_or_else(|| "top level is not a JSON object".to_string())?;
        parse_object(obj)
    }

    /// Query heads per KV head (GQA group size).
    pub fn gqa_group(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Parameter count (embedding and lm_head counted separately when untied).
    pub fn num_parameters(&self) -> usize {
        let (h, hd) = (self.hidden_size, self.head_dim);
        let q = self.num_attention_heads * hd;
        let kv = self.num_key_value_heads * hd;
        let mut layer = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + 2 * h;
        if self.attention_bias {
            layer += q + 2 * kv;
        }
        if self.qk_norm {
            layer += 2 * hd;
        }
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + h + self.num_hidden_layers * layer
    }
}

fn parse_object(obj: &Map<String, Value>) -> Result<ModelConfig, String> {
    let architecture = parse_architecture(obj)?;
    if let Some(act) = obj.get("hidden_act") {
        if act.as_str() != Some("silu") {
            return Err(format!("hidden_act: only \"silu\" is supported, got {act}"));
        }
    }
    if bool_or(obj, "mlp_bias", false)? {
        return Err("mlp_bias: true is not supported".into());
    }
    if bool_or(obj, "use_sliding_window", false)? {
        return Err("use_sliding_window: true is not supported".into());
    }
    let hidden_size = required_usize(obj, "hidden_size")?;
    let num_attention_heads = required_usize(obj, "num_attention_heads")?;
    let num_key_value_heads = match obj.get("num_key_value_heads") {
        None | Some(Value::Null) => num_attention_heads,
        Some(_) => required_usize(obj, "num_key_value_heads")?,
    };
    let head_dim = match obj.get("head_dim") {
        None | Some(Value::Null) => {
            if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
                return Err(format!(
                    "head_dim: absent and hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
                ));
            }
            hidden_size / num_attention_heads
        }
        Some(_) => required_usize(obj, "head_dim")?,
    };
    let rope_parameters = obj.get("rope_parameters").and_then(Value::as_object);
    let rope_theta = match (obj.get("rope_theta"), rope_parameters) {
        (Some(v), _) if !v.is_null() => required_f64(obj, "rope_theta")?,
        (_, Some(params)) if params.contains_key("rope_theta") => {
            required_f64(params, "rope_theta").map_err(|e| format!("rope_parameters.{e}"))?
        }
        _ => return Err("rope_theta: missing".into()),
    };
    let rope_scaling = match obj.get("rope_scaling") {
        Some(v) if !v.is_null() => parse_rope_scaling(v, "rope_scaling")?,
        _ => match obj.get("rope_parameters") {
            Some(v) if !v.is_null() => parse_rope_scaling(v, "rope_parameters")?,
            _ => None,
        },
    };
    let qwen2 = architecture == Architecture::Qwen2;
    let cfg = ModelConfig {
        architecture,
        vocab_size: required_usize(obj, "vocab_size")?,
        hidden_size,
        intermediate_size: required_usize(obj, "intermediate_size")?,
        num_hidden_layers: required_usize(obj, "num_hidden_layers")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: required_f64(obj, "rms_norm_eps")?,
        rope_theta,
        rope_scaling,
        max_position_embeddings: required_usize(obj, "max_position_embeddings")?,
        tie_word_embeddings: bool_or(obj, "tie_word_embeddings", false)?,
        // Qwen2's attention always has q/k/v biases; the others opt in.
        attention_bias: qwen2 || bool_or(obj, "attention_bias", false)?,
        qk_norm: architecture == Architecture::Qwen3,
        bos_token_id: optional_token(obj, "bos_token_id")?,
        eos_token_ids: eos_tokens(obj)?,
        torch_dtype: parse_dtype(obj)?,
        initializer_range: match obj.get("initializer_range") {
            None | Some(Value::Null) => 0.02,
            Some(_) => required_f64(obj, "initializer_range")?,
        },
    };
    validate(&cfg)?;
    Ok(cfg)
}

/// The largest size config.json may give any dimension (vocabulary,
/// hidden size, heads, context).
pub const MAX_DIMENSION: usize = 1 << 24;
/// The most layers config.json may give (real models have a few hundred).
pub const MAX_LAYERS: usize = 4096;

pub(crate) fn validate(cfg: &ModelConfig) -> Result<(), String> {
    let positive = [
        ("vocab_size", cfg.vocab_size),
        ("hidden_size", cfg.hidden_size),
        ("intermediate_size", cfg.intermediate_size),
        ("num_hidden_layers", cfg.num_hidden_layers),
        ("num_attention_heads", cfg.num_attention_heads),
        ("num_key_value_heads", cfg.num_key_value_heads),
        ("head_dim", cfg.head_dim),
        ("max_position_embeddings", cfg.max_position_embeddings),
    ];
    for (name, value) in positive {
        if value == 0 {
            return Err(format!("{name}: must be positive"));
        }
        // Far above any real model, and low enough that products of two
        // sizes cannot overflow.
        if value > MAX_DIMENSION {
            return Err(format!(
                "{name}: must be at most {MAX_DIMENSION}, got {value}"
            ));
        }
    }
    if cfg.num_hidden_layers > MAX_LAYERS {
        return Err(format!(
            "num_hidden_layers: must be at most {MAX_LAYERS}, got {}",
            cfg.num_hidden_layers
        ));
    }
    if !cfg
        .num_attention_heads
        .is_multiple_of(cfg.num_key_value_heads)
    {
        return Err(format!(
            "num_key_value_heads: {} does not divide num_attention_heads {}",
            cfg.num_key_value_heads, cfg.num_attention_heads
        ));
    }
    if !cfg.head_dim.is_multiple_of(2) {
        return Err(format!(
            "head_dim: must be even for RoPE, got {}",
            cfg.head_dim
        ));
    }
    if !(cfg.rms_norm_eps.is_finite() && cfg.rms_norm_eps > 0.0) {
        return Err(format!(
            "rms_norm_eps: must be positive, got {}",
            cfg.rms_norm_eps
        ));
    }
    if !(cfg.rope_theta.is_finite() && cfg.rope_theta > 0.0) {
        return Err(format!(
            "rope_theta: must be positive, got {}",
            cfg.rope_theta
        ));
    }
    if let Some(bad) = cfg
        .eos_token_ids
        .iter()
        .find(|&&id| id as usize >= cfg.vocab_size)
    {
        return Err(format!(
            "eos_token_id: {bad} is not below vocab_size {}",
            cfg.vocab_size
        ));
    }
    Ok(())
}

fn parse_architecture(obj: &Map<String, Value>) -> Result<Architecture, String> {
    let list = obj
        .get("architectures")
        .ok_or_else(|| "architectures: missing".to_string())?
        .as_array()
        .ok_or_else(|| "architectures: not a list".to_string())?;
    let name = match list.as_slice() {
        [one] => one
            .as_str()
            .ok_or_else(|| "architectures: not a list of strings".to_string())?,
        _ => {
            return Err(format!(
                "architectures: expected exactly one entry, got {}",
                list.len()
            ))
        }
    };
    match name {
        "LlamaForCausalLM" => Ok(Architecture::Llama),
        "Qwen2ForCausalLM" => Ok(Architecture::Qwen2),
        "Qwen3ForCausalLM" => Ok(Architecture::Qwen3),
        other => Err(format!(
            "architectures: unsupported {other:?} (supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)"
        )),
    }
}

fn parse_rope_scaling(value: &Value, field: &str) -> Result<Option<Llama3RopeScaling>, String> {
    let obj = value
        .as_object()
        .ok_or_else(|| format!("{field}: not an object"))?;
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{field}.rope_type: missing"))?;
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let f = |name: &str| required_f64(obj, name).map_err(|e| format!("{field}.{e}"));
            Ok(Some(Llama3RopeScaling {
                factor: f("factor")?,
                low_freq_factor: f("low_freq_factor")?,
                high_freq_factor: f("high_freq_factor")?,
                original_max_position_embeddings: required_usize(
                    obj,
                    "original_max_position_embeddings",
                )
                .map_err(|e| format!("{field}.{e}"))?,
            }))
        }
        other => Err(format!(
            "{field}.rope_type: unsupported {other:?} (supported: llama3)"
        )),
    }
}

fn parse_dtype(obj: &Map<String, Value>) -> Result<DType, String> {
    let (field, value) = match (obj.get("torch_dtype"), obj.get("dtype")) {
        (Some(v), _) if !v.is_null() => ("torch_dtype", v),
        (_, Some(v)) if !v.is_null() => ("dtype", v),
        _ => return Err("torch_dtype: missing (also no dtype)".into()),
    };
    match value.as_str() {
        Some("float32") => Ok(DType::F32),
        Some("float16") => Ok(DType::F16),
        Some("bfloat16") => Ok(DType::BF16),
        _ => Err(format!(
            "{field}: unsupported {value} (supported: float32, float16, bfloat16)"
        )),
    }
}

fn eos_tokens(obj: &Map<String, Value>) -> Result<Vec<u32>, String> {
    match obj.get("eos_token_id") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| token_id(v).ok_or_else(|| format!("eos_token_id: bad entry {v}")))
            .collect(),
        Some(v) => token_id(v)
            .map(|id| vec![id])
            .ok_or_else(|| format!("eos_token_id: expected an id or a list of ids, got {v}")),
    }
}

fn optional_token(obj: &Map<String, Value>, field: &str) -> Result<Option<u32>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => token_id(v)
            .map(Some)
            .ok_or_else(|| format!("{field}: expected a token id, got {v}")),
    }
}

fn token_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

fn required_usize(obj: &Map<String, Value>, field: &str) -> Result<usize, String> {
    let v = obj.get(field).ok_or_else(|| format!("{field}: missing"))?;
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("{field}: expected a non-negative integer, got {v}"))
}

fn required_f64(obj: &Map<String, Value>, field: &str) -> Result<f64, String> {
    let v = obj.get(field).ok_or_else(|| format!("{field}: missing"))?;
    v.as_f64()
        .ok_or_else(|| format!("{field}: expected a number, got {v}"))
}

fn bool_or(obj: &Map<String, Value>, field: &str, default: bool) -> Result<bool, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(format!("{field}: expected true or false, got {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llama() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 128256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "max_position_embeddings": 131072, "tie_word_embeddings": true,
            "hidden_act": "silu",
            "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            "bos_token_id": 128000, "eos_token_id": 128001, "torch_dtype": "bfloat16"
        })
    }

    fn parse(v: &Value) -> Result<ModelConfig, String> {
        ModelConfig::parse(&v.to_string())
    }

    #[test]
    fn llama_with_llama3_scaling() {
        let cfg = parse(&llama()).unwrap();
        assert_eq!(cfg.architecture, Architecture::Llama);
        assert_eq!(cfg.head_dim, 64);
        assert_eq!(cfg.gqa_group(), 4);
        assert!(cfg.tie_word_embeddings && !cfg.attention_bias && !cfg.qk_norm);
        assert_eq!(cfg.rope_scaling.as_ref().unwrap().factor, 32.0);
        assert_eq!(
            cfg.rope_scaling.unwrap().original_max_position_embeddings,
            8192
        );
        assert_eq!(cfg.eos_token_ids, vec![128001]);
        assert_eq!(cfg.bos_token_id, Some(128000));
        assert_eq!(cfg.torch_dtype, DType::BF16);
        assert_eq!(cfg.initializer_range, 0.02);
    }

    #[test]
    fn qwen2_has_bias_and_eos_list() {
        let mut v = llama();
        v["architectures"] = json!(["Qwen2ForCausalLM"]);
        v["rope_scaling"] = Value::Null;
        v["eos_token_id"] = json!([151643, 151645]);
        v["vocab_size"] = json!(151936);
        v["dtype"] = json!("float32");
        v.as_object_mut().unwrap().remove("torch_dtype");
        let cfg = parse(&v).unwrap();
        assert!(cfg.attention_bias && !cfg.qk_norm);
        assert_eq!(cfg.rope_scaling, None);
        assert_eq!(cfg.eos_token_ids, vec![151643, 151645]);
        assert_eq!(cfg.torch_dtype, DType::F32);
    }

    #[test]
    fn qwen3_explicit_head_dim_and_qk_norm() {
        let mut v = llama();
        v["architectures"] = json!(["Qwen3ForCausalLM"]);
        v["hidden_size"] = json!(1024);
        v["num_attention_heads"] = json!(16);
        v["head_dim"] = json!(128);
        v["rope_scaling"] = Value::Null;
        v["tie_word_embeddings"] = json!(false);
        let cfg = parse(&v).unwrap();
        assert_eq!(cfg.head_dim, 128);
        assert!(cfg.qk_norm && !cfg.attention_bias && !cfg.tie_word_embeddings);
    }

    #[test]
    fn rope_parameters_form_is_accepted() {
        let mut v = llama();
        let obj = v.as_object_mut().unwrap();
        obj.remove("rope_theta");
        obj.remove("rope_scaling");
        obj.insert(
            "rope_parameters".into(),
            json!({"rope_type": "default", "rope_theta": 1e6}),
        );
        let cfg = parse(&v).unwrap();
        assert_eq!(cfg.rope_theta, 1e6);
        assert_eq!(cfg.rope_scaling, None);
    }

    #[test]
    fn missing_fields_are_named() {
        for field in [
            "hidden_size",
            "vocab_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "rms_norm_eps",
            "rope_theta",
            "max_position_embeddings",
            "architectures",
            "torch_dtype",
        ] {
            let mut v = llama();
            v.as_object_mut().unwrap().remove(field);
            let err = parse(&v).unwrap_err();
            assert!(err.starts_with(field), "{field}: {err}");
        }
    }

    #[test]
    fn unsupported_values_are_errors() {
        let mut v = llama();
        v["architectures"] = json!(["MistralForCausalLM"]);
        assert!(parse(&v).unwrap_err().contains("MistralForCausalLM"));

        let mut v = llama();
        v["rope_scaling"] = json!({"type": "yarn", "factor": 4.0});
        assert!(parse(&v).unwrap_err().contains("yarn"));

        let mut v = llama();
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0});
        assert!(parse(&v).unwrap_err().contains("low_freq_factor"));

        let mut v = llama();
        v["num_key_value_heads"] = json!(5);
        assert!(parse(&v).unwrap_err().starts_with("num_key_value_heads"));

        let mut v = llama();
        v["torch_dtype"] = json!("int8");
        assert!(parse(&v).unwrap_err().starts_with("torch_dtype"));

        let mut v = llama();
        v["eos_token_id"] = json!("x");
        assert!(parse(&v).unwrap_err().starts_with("eos_token_id"));

        let mut v = llama();
        v["hidden_size"] = json!(-3);
        assert!(parse(&v).unwrap_err().starts_with("hidden_size"));
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{\"architectures\": [\"LlamaForCausalLM\"]}").unwrap();
        let err = ModelConfig::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("hidden_size"),
            "{err}"
        );
        let err = ModelConfig::load(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
