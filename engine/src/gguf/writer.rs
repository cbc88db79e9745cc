//! A small GGUF writer: synthetic files for tests of the reader, the name
//! mapping and the tokenizer, without a 100 MB download.

use super::file::{DEFAULT_ALIGNMENT, MAGIC};
use super::metadata::{type_id, MetaValue};
use super::tensor_type::{quantize, TensorEncoding};

#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    /// name, ggml dims, ggml type id, encoded bytes
    tensors: Vec<(String, Vec<usize>, u32, Vec<u8>)>,
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter::default()
    }

    pub fn meta(&mut self, key: &str, value: MetaValue) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor of row-major `shape` (HF order) holding `values`,
    /// encoded as `encoding`.
    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        encoding: TensorEncoding,
        values: &[f32],
    ) -> Result<&mut Self, String> {
        let bytes = quantize(encoding, values).map_err(|e| format!("tensor {name}: {e}"))?;
        let dims = shape.iter().rev().copied().collect();
        Ok(self.raw_tensor(name, dims, encoding.ggml_id(), bytes))
    }

    /// Adds a tensor with raw ggml `dims`, type id and bytes (for files that
    /// are wrong on purpose).
    pub fn raw_tensor(
        &mut self,
        name: &str,
        dims: Vec<usize>,
        ty: u32,
        bytes: Vec<u8>,
    ) -> &mut Self {
        self.tensors.push((name.to_string(), dims, ty, bytes));
        self
    }

    /// The file's bytes (GGUF version 3, default alignment).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(MAGIC);
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            out.extend(value_type(value).to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for (name, dims, ty, bytes) in &self.tensors {
            write_string(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for &d in dims {
                out.extend((d as u64).to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + bytes.len()).next_multiple_of(DEFAULT_ALIGNMENT);
        }
        let data_start = out.len().next_multiple_of(DEFAULT_ALIGNMENT);
        out.resize(data_start, 0);
        for ((_, _, _, bytes), off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off, 0);
            out.extend(bytes);
        }
        out
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn value_type(v: &MetaValue) -> u32 {
    use type_id as t;
    match v {
        MetaValue::U8(_) => t::U8,
        MetaValue::I8(_) => t::I8,
        MetaValue::U16(_) => t::U16,
        MetaValue::I16(_) => t::I16,
        MetaValue::U32(_) => t::U32,
        MetaValue::I32(_) => t::I32,
        MetaValue::U64(_) => t::U64,
        MetaValue::I64(_) => t::I64,
        MetaValue::F32(_) => t::F32,
        MetaValue::F64(_) => t::F64,
        MetaValue::Bool(_) => t::BOOL,
        MetaValue::String(_) => t::STRING,
        MetaValue::Array(_) => t::ARRAY,
    }
}

fn write_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend(x.to_le_bytes()),
        MetaValue::I16(x) => out.extend(x.to_le_bytes()),
        MetaValue::U32(x) => out.extend(x.to_le_bytes()),
        MetaValue::I32(x) => out.extend(x.to_le_bytes()),
        MetaValue::U64(x) => out.extend(x.to_le_bytes()),
        MetaValue::I64(x) => out.extend(x.to_le_bytes()),
        MetaValue::F32(x) => out.extend(x.to_le_bytes()),
        MetaValue::F64(x) => out.extend(x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::String(s) => write_string(out, s),
        MetaValue::Array(items) => {
            // An empty array is written as an array of u8.
            let ty = items.first().map_or(type_id::U8, value_type);
            out.extend(ty.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
    }
}
