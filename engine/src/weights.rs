//! Safetensors checkpoints through mmap: single file or sharded
//! (`model.safetensors.index.json`), f32/f16/bf16, validated against the
//! config. CONTRACT: `Checkpoint` and `TensorView` are what backends consume.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, DType, ModelConfig};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// A tensor in the checkpoint, borrowed from the mmap.
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    /// Raw little-endian bytes.
    pub data: &'a [u8],
}

impl TensorView<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Values upcast to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => self
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::F16 => self
                .data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::BF16 => self
                .data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }
    /// Values converted to bf16.
    pub fn to_bf16(&self) -> Vec<half::bf16> {
        match self.dtype {
            DType::BF16 => self
                .data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]))
                .collect(),
            _ => self
                .to_f32()
                .into_iter()
                .map(half::bf16::from_f32)
                .collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

fn invalid(path: &Path, message: impl Into<String>) -> WeightsError {
    WeightsError::Invalid {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Every tensor a checkpoint for `cfg` must hold, with its HF name and shape,
/// sorted by name.
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let i = cfg.intermediate_size;
    let mut out = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![cfg.vocab_size, h],
        ),
        ("model.norm.weight".to_string(), vec![h]),
    ];
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
        if cfg.attention_bias {
            out.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
            out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        }
        if cfg.qk_norm {
            out.push((format!("{p}.self_attn.q_norm.weight"), vec![cfg.head_dim]));
            out.push((format!("{p}.self_attn.k_norm.weight"), vec![cfg.head_dim]));
        }
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
    }
    out.sort();
    out
}

/// `model.layers.<i>.…` → i.
fn layer_index(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// The index of the first NaN or infinite element of little-endian `data`,
/// with which it is. Works on the bits: an all-ones exponent.
fn first_nonfinite(dtype: DType, data: &[u8]) -> Option<(usize, &'static str)> {
    let (index, nan) = match dtype {
        DType::F32 => data.chunks_exact(4).enumerate().find_map(|(i, b)| {
            let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            (bits & 0x7f80_0000 == 0x7f80_0000).then_some((i, bits & 0x007f_ffff != 0))
        }),
        DType::F16 => data.chunks_exact(2).enumerate().find_map(|(i, b)| {
            let bits = u16::from_le_bytes([b[0], b[1]]);
            (bits & 0x7c00 == 0x7c00).then_some((i, bits & 0x03ff != 0))
        }),
        DType::BF16 => data.chunks_exact(2).enumerate().find_map(|(i, b)| {
            let bits = u16::from_le_bytes([b[0], b[1]]);
            (bits & 0x7f80 == 0x7f80).then_some((i, bits & 0x007f != 0))
        }),
    }?;
    Some((index, if nan { "NaN" } else { "infinite" }))
}

struct MappedFile {
    path: PathBuf,
    map: memmap2::Mmap,
}

struct TensorEntry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range inside the mmap.
    start: usize,
    end: usize,
}

/// A validated checkpoint directory: config + memory-mapped tensors.
pub struct Checkpoint {
    pub config: ModelConfig,
    config_path: PathBuf,
    /// config.json as read at open, for the content hash.
    config_bytes: Vec<u8>,
    files: Vec<MappedFile>,
    tensors: HashMap<String, TensorEntry>,
}

impl Checkpoint {
    /// Opens `dir` (config.json + model.safetensors or sharded index) and
    /// validates every expected tensor's presence, dtype and shape.
    pub fn open(dir: &Path) -> Result<Checkpoint, WeightsError> {
        let config_path = dir.join("config.json");
        let config_bytes = std::fs::read(&config_path).map_err(|source| ConfigError::Io {
            path: config_path.display().to_string(),
            cause: source,
        })?;
        let config = String::from_utf8(config_bytes.clone())
            .map_err(|_| "not UTF-8 text".to_string())
            .and_then(|text| ModelConfig::parse(&text))
            .map_err(|message| ConfigError::Invalid {
                path: config_path.display().to_string(),
                message,
            })?;
        let file_names = safetensors_files(dir)?;
        let mut files = Vec::with_capacity(file_names.len());
        let mut tensors = HashMap::new();
        for (index, (file_name, wanted)) in file_names.into_iter().enumerate() {
            let path = dir.join(&file_name);
            let map = map_file(&path)?;
            index_file(&path, &map, index, &mut tensors)?;
            if let Some(wanted) = wanted {
                // Every name the shard index puts in this file must be there.
                if let Some(name) = wanted.iter().find(|n| {
                    tensors
                        .get(*n)
                        .is_none_or(|e: &TensorEntry| e.file != index)
                }) {
                    return Err(invalid(
                        &path,
                        format!("tensor {name}: listed in {SHARD_INDEX} but not in this file"),
                    ));
                }
            }
            files.push(MappedFile { path, map });
        }
        let checkpoint = Checkpoint {
            config,
            config_path,
            config_bytes,
            files,
            tensors,
        };
        checkpoint.validate(dir)?;
        Ok(checkpoint)
    }

    fn validate(&self, dir: &Path) -> Result<(), WeightsError> {
        let layers = self.config.num_hidden_layers;
        let mut extra: Vec<&String> = self
            .tensors
            .keys()
            .filter(|name| layer_index(name).is_some_and(|l| l >= layers))
            .collect();
        extra.sort();
        if let Some(name) = extra.first() {
            return Err(invalid(
                &self.files[self.tensors[*name].file].path,
                format!(
                    "tensor {name}: belongs to a layer past the {layers} of config.json's \
                     num_hidden_layers ({} such tensors); the config does not match the weights",
                    extra.len()
                ),
            ));
        }
        let expected = expected_tensors(&self.config);
        for (name, shape) in &expected {
            let Some(entry) = self.tensors.get(name) else {
                return Err(invalid(
                    dir,
                    format!("tensor {name}: missing from the checkpoint"),
                ));
            };
            if &entry.shape != shape {
                return Err(invalid(
                    &self.files[entry.file].path,
                    format!(
                        "tensor {name}: shape {:?}, expected {shape:?} from config.json",
                        entry.shape
                    ),
                ));
            }
        }
        self.check_finite(&expected)
    }

    /// Every weight is finite: one NaN or infinity makes every output
    /// garbage, so it is an error at load (one pass over the weights, in
    /// parallel), naming the tensor, rather than nonsense tokens later.
    fn check_finite(&self, expected: &[(String, Vec<usize>)]) -> Result<(), WeightsError> {
        use rayon::prelude::*;
        let bad = expected
            .par_iter()
            .filter_map(|(name, _)| {
                let entry = &self.tensors[name];
                let data = &self.files[entry.file].map[entry.start..entry.end];
                first_nonfinite(entry.dtype, data).map(|(index, what)| (name, index, what))
            })
            .min_by(|a, b| a.0.cmp(b.0));
        match bad {
            None => Ok(()),
            Some((name, index, what)) => Err(invalid(
                &self.files[self.tensors[name].file].path,
                format!("tensor {name}: element {index} is {what}; the weights are corrupt"),
            )),
        }
    }

    /// The tensor named exactly as in HF (`model.layers.0.self_attn.q_proj.weight`).
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>, WeightsError> {
        let (key, entry) = self.tensors.get_key_value(name).ok_or_else(|| {
            invalid(
                &self.config_path,
                format!("tensor {name}: not in the checkpoint"),
            )
        })?;
        Ok(TensorView {
            name: key,
            dtype: entry.dtype,
            shape: &entry.shape,
            data: &self.files[entry.file].map[entry.start..entry.end],
        })
    }

    /// Names of all tensors in the checkpoint, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// blake3 over config.json and the safetensors files, hex.
    pub fn content_hash(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hash_part(&mut hasher, "config.json", &self.config_bytes);
        let mut files: Vec<&MappedFile> = self.files.iter().collect();
        files.sort_by(|a, b| a.path.file_name().cmp(&b.path.file_name()));
        for file in files {
            let name = file
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            hash_part(&mut hasher, &name, &file.map);
        }
        hasher.finalize().to_hex().to_string()
    }
}

/// Names and lengths go in first so that moving bytes between parts changes
/// the hash.
fn hash_part(hasher: &mut blake3::Hasher, name: &str, bytes: &[u8]) {
    hasher.update(&(name.len() as u64).to_le_bytes());
    hasher.update(name.as_bytes());
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    for chunk in bytes.chunks(1 << 24) {
        hasher.update(chunk);
    }
}

/// A safetensors file name and the tensor names the shard index assigns to
/// it (None for a single file).
type ShardFile = (String, Option<Vec<String>>);

/// The safetensors files of `dir`.
fn safetensors_files(dir: &Path) -> Result<Vec<ShardFile>, WeightsError> {
    let index_path = dir.join(SHARD_INDEX);
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path)
            .map_err(|e| invalid(&index_path, e.to_string()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| invalid(&index_path, format!("not JSON: {e}")))?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| invalid(&index_path, "weight_map: missing or not an object"))?;
        let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (tensor, file) in map {
            let file = file
                .as_str()
                .filter(|f| !f.contains('/') && !f.contains('\\') && f.ends_with(".safetensors"))
                .ok_or_else(|| {
                    invalid(
                        &index_path,
                        format!("weight_map.{tensor}: bad file name {file}"),
                    )
                })?;
            by_file
                .entry(file.to_string())
                .or_default()
                .push(tensor.clone());
        }
        if by_file.is_empty() {
            return Err(invalid(&index_path, "weight_map: empty"));
        }
        return Ok(by_file.into_iter().map(|(f, t)| (f, Some(t))).collect());
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![(SINGLE_FILE.to_string(), None)]);
    }
    Err(invalid(
        dir,
        format!("neither {SINGLE_FILE} nor {SHARD_INDEX} found"),
    ))
}

fn map_file(path: &Path) -> Result<memmap2::Mmap, WeightsError> {
    let file = std::fs::File::open(path).map_err(|e| invalid(path, e.to_string()))?;
    // SAFETY: the map is read-only; as with every mmap-based loader, another
    // process truncating the file while we run is outside our control.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| invalid(path, format!("mmap: {e}")))
}

/// Parses one file's header (which also checks that the data section has
/// exactly the length the header promises) and records its tensors.
fn index_file(
    path: &Path,
    map: &[u8],
    file: usize,
    tensors: &mut HashMap<String, TensorEntry>,
) -> Result<(), WeightsError> {
    let (header_len, metadata) = safetensors::SafeTensors::read_metadata(map).map_err(|e| {
        invalid(
            path,
            format!("not a valid safetensors file (truncated or corrupt?): {e}"),
        )
    })?;
    let data_start = 8 + header_len;
    for (name, info) in metadata.tensors() {
        let dtype = match info.dtype {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            other => {
                return Err(invalid(
                    path,
                    format!("tensor {name}: dtype {other:?} is not supported (F32, F16, BF16)"),
                ))
            }
        };
        let (start, end) = info.data_offsets;
        if tensors.contains_key(&name) {
            return Err(invalid(
                path,
                format!("tensor {name}: appears in more than one file"),
            ));
        }
        tensors.insert(
            name,
            TensorEntry {
                file,
                dtype,
                shape: info.shape.clone(),
                start: data_start + start,
                end: data_start + end,
            },
        );
    }
    Ok(())
}
