//! GGUF metadata: typed key/value pairs (`general.architecture`,
//! `llama.block_count`, `tokenizer.ggml.tokens`, ...).

use std::collections::BTreeMap;

use super::cursor::Cursor;

/// Arrays nest (an array of arrays) at most this deep.
const MAX_DEPTH: usize = 4;

#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

/// GGUF value type ids.
pub(crate) mod type_id {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

impl MetaValue {
    /// The value as an integer, whatever integer type the file used.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i128().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// A short description for error messages (not the whole value).
    fn kind(&self) -> &'static str {
        match self {
            MetaValue::String(_) => "a string",
            MetaValue::Array(_) => "an array",
            MetaValue::Bool(_) => "a bool",
            MetaValue::F32(_) | MetaValue::F64(_) => "a float",
            _ => "an integer",
        }
    }

    pub(crate) fn read(c: &mut Cursor<'_>, ty: u32, what: &str) -> Result<MetaValue, String> {
        read_value(c, ty, what, 0)
    }
}

fn read_value(c: &mut Cursor<'_>, ty: u32, what: &str, depth: usize) -> Result<MetaValue, String> {
    use type_id as t;
    Ok(match ty {
        t::U8 => MetaValue::U8(c.u8(what)?),
        t::I8 => MetaValue::I8(c.u8(what)? as i8),
        t::U16 => MetaValue::U16(c.u16(what)?),
        t::I16 => MetaValue::I16(c.u16(what)? as i16),
        t::U32 => MetaValue::U32(c.u32(what)?),
        t::I32 => MetaValue::I32(c.u32(what)? as i32),
        t::U64 => MetaValue::U64(c.u64(what)?),
        t::I64 => MetaValue::I64(c.u64(what)? as i64),
        t::F32 => MetaValue::F32(c.f32(what)?),
        t::F64 => MetaValue::F64(c.f64(what)?),
        t::BOOL => match c.u8(what)? {
            0 => MetaValue::Bool(false),
            1 => MetaValue::Bool(true),
            b => return Err(format!("{what}: bool byte {b} is neither 0 nor 1")),
        },
        t::STRING => MetaValue::String(c.string(what)?),
        t::ARRAY => {
            if depth >= MAX_DEPTH {
                return Err(format!("{what}: arrays nested deeper than {MAX_DEPTH}"));
            }
            let item_ty = c.u32(what)?;
            // The smallest encoding of one item bounds the count by the bytes left.
            let min_item = match item_ty {
                t::U8 | t::I8 | t::BOOL => 1,
                t::U16 | t::I16 => 2,
                t::U32 | t::I32 | t::F32 => 4,
                t::U64 | t::I64 | t::F64 | t::STRING => 8,
                t::ARRAY => 12,
                other => return Err(format!("{what}: unknown array item type {other}")),
            };
            let n = c.count(min_item, what)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_value(c, item_ty, what, depth + 1)?);
            }
            MetaValue::Array(items)
        }
        other => return Err(format!("{what}: unknown value type {other}")),
    })
}

/// All key/value pairs of a file, with getters whose errors name the key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    pub entries: BTreeMap<String, MetaValue>,
}

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.entries.get(key)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// An optional non-negative integer that fits in usize.
    pub fn usize(&self, key: &str) -> Result<Option<usize>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i128()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| format!("{key}: expected a non-negative integer, got {}", v.kind())),
        }
    }

    pub fn required_usize(&self, key: &str) -> Result<usize, String> {
        self.usize(key)?.ok_or_else(|| format!("{key}: missing"))
    }

    pub fn f64(&self, key: &str) -> Result<Option<f64>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("{key}: expected a number, got {}", v.kind())),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(format!("{key}: expected a bool, got {}", v.kind())),
        }
    }

    pub fn str(&self, key: &str) -> Result<Option<&str>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| format!("{key}: expected a string, got {}", v.kind())),
        }
    }

    /// An array whose every item is a string.
    pub fn str_array(&self, key: &str) -> Result<Option<Vec<&str>>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .ok_or_else(|| format!("{key}[{i}]: expected a string, got {}", v.kind()))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(format!("{key}: expected an array, got {}", v.kind())),
        }
    }

    /// An array whose every item is an integer in i64 range.
    pub fn int_array(&self, key: &str) -> Result<Option<Vec<i64>>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_i128()
                        .and_then(|n| i64::try_from(n).ok())
                        .ok_or_else(|| format!("{key}[{i}]: expected an integer, got {}", v.kind()))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(format!("{key}: expected an array, got {}", v.kind())),
        }
    }
}
