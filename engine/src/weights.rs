//! Checkpoints through mmap: a Hugging Face directory (config.json +
//! safetensors, single file or sharded `model.safetensors.index.json`,
//! f32/f16/bf16) or a llama.cpp GGUF file (see [`crate::gguf`]), validated
//! against the config. CONTRACT: `Checkpoint` and `TensorView` are what
//! backends consume; tensors are named and shaped as in HF either way.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, ModelConfig};
use crate::gguf::{self, TensorEncoding};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// A tensor in the checkpoint, borrowed from the mmap.
pub struct TensorView<'a> {
    pub name: &'a str,
    pub encoding: TensorEncoding,
    pub shape: &'a [usize],
    /// Raw little-endian bytes in `encoding`.
    pub data: &'a [u8],
    /// GGUF Llama q/k: llama.cpp's row order, undone with this many heads.
    unpermute_heads: Option<usize>,
}

impl TensorView<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Values upcast or dequantized to f32, in HF row order.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut values = self.encoding.dequantize(self.data);
        if let Some(heads) = self.unpermute_heads {
            let cols = if self.shape.len() == 1 {
                1
            } else {
                self.shape[1]
            };
            gguf::names::unpermute_rows(&mut values, cols, heads);
        }
        values
    }
    /// Values converted to bf16.
    pub fn to_bf16(&self) -> Vec<half::bf16> {
        match self.encoding {
            TensorEncoding::BF16 if self.unpermute_heads.is_none() => self
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
/// with which it is. Works on the bits: an all-ones exponent. For the
/// quantized GGUF encodings the f16 scales (and minimums) of each 32-element
/// block are checked: a non-finite scale makes its whole block non-finite,
/// and the quantized values themselves are integers.
fn first_nonfinite(encoding: TensorEncoding, data: &[u8]) -> Option<(usize, &'static str)> {
    let f16_at = |b: &[u8], at: usize| {
        let bits = u16::from_le_bytes([b[at], b[at + 1]]);
        (bits & 0x7c00 == 0x7c00).then_some(bits & 0x03ff != 0)
    };
    let blocks = |size: usize, scales: &'static [usize]| {
        data.chunks_exact(size).enumerate().find_map(|(i, b)| {
            scales
                .iter()
                .find_map(|&at| f16_at(b, at))
                .map(|nan| (i * 32, nan))
        })
    };
    let (index, nan) = match encoding {
        TensorEncoding::F32 => data.chunks_exact(4).enumerate().find_map(|(i, b)| {
            let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            (bits & 0x7f80_0000 == 0x7f80_0000).then_some((i, bits & 0x007f_ffff != 0))
        }),
        TensorEncoding::F16 => data
            .chunks_exact(2)
            .enumerate()
            .find_map(|(i, b)| f16_at(b, 0).map(|nan| (i, nan))),
        TensorEncoding::BF16 => data.chunks_exact(2).enumerate().find_map(|(i, b)| {
            let bits = u16::from_le_bytes([b[0], b[1]]);
            (bits & 0x7f80 == 0x7f80).then_some((i, bits & 0x007f != 0))
        }),
        TensorEncoding::Q8_0 => blocks(34, &[0]),
        TensorEncoding::Q4_0 => blocks(18, &[0]),
        TensorEncoding::Q4_1 => blocks(20, &[0, 2]),
    }?;
    Some((index, if nan { "NaN" } else { "infinite" }))
}

struct MappedFile {
    path: PathBuf,
    map: memmap2::Mmap,
}

struct TensorEntry {
    file: usize,
    encoding: TensorEncoding,
    unpermute_heads: Option<usize>,
    shape: Vec<usize>,
    /// Absolute byte range inside the mmap.
    start: usize,
    end: usize,
}

/// A validated checkpoint: config + memory-mapped tensors.
pub struct Checkpoint {
    pub config: ModelConfig,
    config_path: PathBuf,
    /// config.json as read at open, for the content hash (empty for GGUF).
    config_bytes: Vec<u8>,
    files: Vec<MappedFile>,
    tensors: HashMap<String, TensorEntry>,
    /// A GGUF file's metadata (tokenizer, chat template).
    gguf_metadata: Option<gguf::Metadata>,
}

impl Checkpoint {
    /// Opens a HF directory (config.json + model.safetensors or sharded
    /// index) or a GGUF file, and validates every expected tensor's
    /// presence and shape.
    pub fn open(path: &Path) -> Result<Checkpoint, WeightsError> {
        if path.is_file() {
            return Checkpoint::open_gguf(path);
        }
        Checkpoint::open_dir(path)
    }

    /// The path the checkpoint was opened from: the GGUF file, or the
    /// directory of config.json.
    pub fn source_path(&self) -> &Path {
        if self.gguf_metadata.is_some() {
            &self.config_path
        } else {
            self.config_path.parent().unwrap_or(&self.config_path)
        }
    }

    /// The GGUF metadata, when the checkpoint is a GGUF file.
    pub fn gguf_metadata(&self) -> Option<&gguf::Metadata> {
        self.gguf_metadata.as_ref()
    }

    fn open_gguf(path: &Path) -> Result<Checkpoint, WeightsError> {
        let map = map_file(path)?;
        let indexed = gguf::index(&map).map_err(|e| invalid(path, e))?;
        let mut tensors = HashMap::with_capacity(indexed.tensors.len());
        for t in indexed.tensors {
            let entry = TensorEntry {
                file: 0,
                encoding: t.info.encoding,
                unpermute_heads: t.unpermute_heads,
                shape: t.info.shape(),
                start: t.info.start,
                end: t.info.end,
            };
            if tensors.insert(t.hf_name.clone(), entry).is_some() {
                return Err(invalid(
                    path,
                    format!("tensor {}: appears twice", t.info.name),
                ));
            }
        }
        let checkpoint = Checkpoint {
            config: indexed.config,
            config_path: path.to_path_buf(),
            config_bytes: Vec::new(),
            files: vec![MappedFile {
                path: path.to_path_buf(),
                map,
            }],
            tensors,
            gguf_metadata: Some(indexed.metadata),
        };
        checkpoint.validate(path)?;
        Ok(checkpoint)
    }

    fn open_dir(dir: &Path) -> Result<Checkpoint, WeightsError> {
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
            gguf_metadata: None,
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
                        "tensor {name}: shape {:?}, expected {shape:?} from {}",
                        entry.shape,
                        if self.gguf_metadata.is_some() {
                            "the GGUF metadata"
                        } else {
                            "config.json"
                        }
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
                first_nonfinite(entry.encoding, data).map(|(index, what)| (name, index, what))
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
            encoding: entry.encoding,
            shape: &entry.shape,
            data: &self.files[entry.file].map[entry.start..entry.end],
            unpermute_heads: entry.unpermute_heads,
        })
    }

    /// Names of all tensors in the checkpoint, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// blake3 over config.json and the safetensors files (or the GGUF
    /// file), hex.
    pub fn content_hash(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        if self.gguf_metadata.is_some() {
            for file in &self.files {
                hash_part(&mut hasher, "gguf", &file.map);
            }
            return hasher.finalize().to_hex().to_string();
        }
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
        let encoding = match info.dtype {
            safetensors::Dtype::F32 => TensorEncoding::F32,
            safetensors::Dtype::F16 => TensorEncoding::F16,
            safetensors::Dtype::BF16 => TensorEncoding::BF16,
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
                encoding,
                unpermute_heads: None,
                shape: info.shape.clone(),
                start: data_start + start,
                end: data_start + end,
            },
        );
    }
    Ok(())
}
