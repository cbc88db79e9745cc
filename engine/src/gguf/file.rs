//! The GGUF container: header, metadata, tensor infos and the data section
//! (llama.cpp's `docs/gguf.md`, versions 2 and 3). Parsing only indexes the
//! bytes; every tensor's range is checked to lie inside the file.

use super::cursor::Cursor;
use super::metadata::{MetaValue, Metadata};
use super::tensor_type::TensorEncoding;

pub const MAGIC: &[u8; 4] = b"GGUF";
/// Data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: usize = 4;

/// One tensor's entry: where its bytes are and how they are encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (row) dimension. HF's shape is
    /// the reverse.
    pub dims: Vec<usize>,
    pub encoding: TensorEncoding,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

impl TensorInfo {
    /// The shape in row-major (HF / PyTorch) order.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
}

impl GgufFile {
    /// Parses the header of a whole GGUF file held in `bytes`. Errors name
    /// the field or tensor (the caller adds the file's path).
    pub fn parse(bytes: &[u8]) -> Result<GgufFile, String> {
        let mut c = Cursor::new(bytes);
        if c.take(4, "magic")? != MAGIC {
            return Err("magic: not a GGUF file (does not start with \"GGUF\")".into());
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(format!("version: {version} is not supported (2 or 3)"));
        }
        // A tensor info takes at least 8 (name) + 4 + 8 + 4 + 8 bytes, a
        // key/value at least 8 + 4 + 1.
        let n_tensors = c.count(32, "tensor_count")?;
        let n_kv = c.count(13, "metadata_kv_count")?;
        let mut metadata = Metadata::default();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let ty = c.u32(&key)?;
            let value = MetaValue::read(&mut c, ty, &key)?;
            if metadata.entries.insert(key.clone(), value).is_some() {
                return Err(format!("{key}: appears twice in the metadata"));
            }
        }
        let alignment = match metadata.usize("general.alignment")? {
            None => DEFAULT_ALIGNMENT,
            Some(a) if a > 0 && a.is_power_of_two() => a,
            Some(a) => return Err(format!("general.alignment: {a} is not a power of two")),
        };

        let mut raw = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor #{i} name"))?;
            let what = |field: &str| format!("tensor {name}: {field}");
            let n_dims = c.u32(&what("n_dims"))? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(format!(
                    "tensor {name}: {n_dims} dimensions (1 to {MAX_DIMS} supported)"
                ));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let d = c.u64(&what("dims"))?;
                dims.push(
                    usize::try_from(d)
                        .map_err(|_| format!("tensor {name}: dimension {d} too large"))?,
                );
            }
            let ty = c.u32(&what("type"))?;
            let offset = c.u64(&what("offset"))?;
            raw.push((name, dims, ty, offset));
        }
        let data_start = c.position().next_multiple_of(alignment);

        let mut tensors = Vec::with_capacity(raw.len());
        let mut seen = std::collections::HashSet::new();
        for (name, dims, ty, offset) in raw {
            if !seen.insert(name.clone()) {
                return Err(format!("tensor {name}: appears twice"));
            }
            let encoding =
                TensorEncoding::from_ggml(ty).map_err(|e| format!("tensor {name}: {e}"))?;
            let n = dims
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| format!("tensor {name}: dimensions {dims:?} overflow"))?;
            if !dims[0].is_multiple_of(encoding.block_values()) {
                return Err(format!(
                    "tensor {name}: row length {} is not a multiple of the {encoding:?} block ({})",
                    dims[0],
                    encoding.block_values()
                ));
            }
            let nbytes = encoding
                .bytes_for(n)
                .map_err(|e| format!("tensor {name}: {e}"))?;
            let offset = usize::try_from(offset)
                .map_err(|_| format!("tensor {name}: offset {offset} too large"))?;
            if !offset.is_multiple_of(alignment) {
                return Err(format!(
                    "tensor {name}: offset {offset} is not aligned to {alignment}"
                ));
            }
            let start = data_start
                .checked_add(offset)
                .ok_or_else(|| format!("tensor {name}: offset {offset} overflows"))?;
            let end = start
                .checked_add(nbytes)
                .filter(|&e| e <= bytes.len())
                .ok_or_else(|| {
                    format!(
                        "tensor {name}: bytes {start}..{} lie beyond the end of the file ({} bytes; truncated?)",
                        start.saturating_add(nbytes),
                        bytes.len()
                    )
                })?;
            tensors.push(TensorInfo {
                name,
                dims,
                encoding,
                start,
                end,
            });
        }
        Ok(GgufFile {
            version,
            metadata,
            tensors,
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}
