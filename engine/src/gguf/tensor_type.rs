//! Tensor encodings a checkpoint may use, and their dequantization to f32.
//!
//! Quantized GGUF types store a row as blocks of 32 values (ggml's
//! `QK4_0` / `QK4_1` / `QK8_0`), each block with an f16 scale:
//! - `Q8_0`: `d: f16, q: [i8; 32]`, value `q · d`;
//! - `Q4_0`: `d: f16, q: [u8; 16]`, value `(nibble − 8) · d`;
//! - `Q4_1`: `d: f16, m: f16, q: [u8; 16]`, value `nibble · d + m`;
//!
//! where byte `j` of `q` holds value `j` in its low nibble and value `j + 16`
//! in its high nibble (ggml's `dequantize_row_q4_0`).

use half::{bf16, f16};

/// Values per quantized block.
const QK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TensorEncoding {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl TensorEncoding {
    /// The encoding of ggml type id `id`; unsupported types are named.
    pub fn from_ggml(id: u32) -> Result<TensorEncoding, String> {
        Ok(match id {
            0 => TensorEncoding::F32,
            1 => TensorEncoding::F16,
            2 => TensorEncoding::Q4_0,
            3 => TensorEncoding::Q4_1,
            8 => TensorEncoding::Q8_0,
            30 => TensorEncoding::BF16,
            other => {
                return Err(format!(
                    "ggml type {} is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                    ggml_type_name(other)
                ))
            }
        })
    }

    pub fn ggml_id(self) -> u32 {
        match self {
            TensorEncoding::F32 => 0,
            TensorEncoding::F16 => 1,
            TensorEncoding::Q4_0 => 2,
            TensorEncoding::Q4_1 => 3,
            TensorEncoding::Q8_0 => 8,
            TensorEncoding::BF16 => 30,
        }
    }

    /// Values per block (1 for plain floats).
    pub fn block_values(self) -> usize {
        match self {
            TensorEncoding::F32 | TensorEncoding::F16 | TensorEncoding::BF16 => 1,
            TensorEncoding::Q8_0 | TensorEncoding::Q4_0 | TensorEncoding::Q4_1 => QK,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            TensorEncoding::F32 => 4,
            TensorEncoding::F16 | TensorEncoding::BF16 => 2,
            TensorEncoding::Q8_0 => 2 + QK,
            TensorEncoding::Q4_0 => 2 + QK / 2,
            TensorEncoding::Q4_1 => 4 + QK / 2,
        }
    }

    /// Bytes of `n` values, or why they cannot be stored (not whole blocks,
    /// or an overflow).
    pub fn bytes_for(self, n: usize) -> Result<usize, String> {
        let per = self.block_values();
        if !n.is_multiple_of(per) {
            return Err(format!(
                "{n} values are not a whole number of {self:?} blocks of {per}"
            ));
        }
        (n / per)
            .checked_mul(self.block_bytes())
            .ok_or_else(|| format!("{n} values overflow the address space"))
    }

    /// Decodes `data` (exactly `bytes_for(n)` bytes) into f32 values.
    pub fn dequantize(self, data: &[u8]) -> Vec<f32> {
        let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
        match self {
            TensorEncoding::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            TensorEncoding::F16 => data.chunks_exact(2).map(|b| f16_at(b, 0)).collect(),
            TensorEncoding::BF16 => data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            TensorEncoding::Q8_0 => {
                let mut out = Vec::with_capacity(data.len() / self.block_bytes() * QK);
                for block in data.chunks_exact(self.block_bytes()) {
                    let d = f16_at(block, 0);
                    out.extend(block[2..].iter().map(|&q| q as i8 as f32 * d));
                }
                out
            }
            TensorEncoding::Q4_0 | TensorEncoding::Q4_1 => {
                let mut out = vec![0.0f32; data.len() / self.block_bytes() * QK];
                let q_at = if self == TensorEncoding::Q4_0 { 2 } else { 4 };
                for (block, dst) in data
                    .chunks_exact(self.block_bytes())
                    .zip(out.chunks_exact_mut(QK))
                {
                    let d = f16_at(block, 0);
                    let (offset, min) = if self == TensorEncoding::Q4_0 {
                        (-8.0, 0.0)
                    } else {
                        (0.0, f16_at(block, 2))
                    };
                    for (j, &q) in block[q_at..].iter().enumerate() {
                        dst[j] = ((q & 0x0f) as f32 + offset) * d + min;
                        dst[j + QK / 2] = ((q >> 4) as f32 + offset) * d + min;
                    }
                }
                out
            }
        }
    }
}

/// ggml's name for a type id (for error messages).
fn ggml_type_name(id: u32) -> String {
    const NAMES: &[(u32, &str)] = &[
        (6, "Q5_0"),
        (7, "Q5_1"),
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (12, "Q4_K"),
        (13, "Q5_K"),
        (14, "Q6_K"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
    ];
    match NAMES.iter().find(|(i, _)| *i == id) {
        Some((_, name)) => format!("{name} ({id})"),
        None => format!("{id} (unknown)"),
    }
}

/// Quantizers for the synthetic GGUF writer (tests, fixtures): the inverse
/// of [`TensorEncoding::dequantize`] with ggml's reference rounding.
pub fn quantize(encoding: TensorEncoding, values: &[f32]) -> Result<Vec<u8>, String> {
    encoding.bytes_for(values.len())?;
    let mut out = Vec::with_capacity(encoding.bytes_for(values.len())?);
    match encoding {
        TensorEncoding::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
        TensorEncoding::F16 => values
            .iter()
            .for_each(|&v| out.extend(f16::from_f32(v).to_le_bytes())),
        TensorEncoding::BF16 => values
            .iter()
            .for_each(|&v| out.extend(bf16::from_f32(v).to_le_bytes())),
        TensorEncoding::Q8_0 => {
            for block in values.chunks_exact(QK) {
                let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        TensorEncoding::Q4_0 => {
            for block in values.chunks_exact(QK) {
                // ggml: the value of largest magnitude maps to −8.
                let max = block
                    .iter()
                    .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                for j in 0..QK / 2 {
                    out.push(q(block[j]) | (q(block[j + QK / 2]) << 4));
                }
            }
        }
        TensorEncoding::Q4_1 => {
            for block in values.chunks_exact(QK) {
                let min = block.iter().copied().fold(f32::INFINITY, f32::min);
                let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                for j in 0..QK / 2 {
                    out.push(q(block[j]) | (q(block[j + QK / 2]) << 4));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_made_blocks_decode_as_ggml_does() {
        // Q4_0: d = 2, byte j = low nibble j, high nibble 15 - j.
        let mut b = f16::from_f32(2.0).to_le_bytes().to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = TensorEncoding::Q4_0.dequantize(&b);
        assert_eq!(v[0], -16.0);
        assert_eq!(v[5], (5.0 - 8.0) * 2.0);
        assert_eq!(v[16], 14.0);
        // Q4_1: d = 0.5, m = -1.
        let mut b = f16::from_f32(0.5).to_le_bytes().to_vec();
        b.extend(f16::from_f32(-1.0).to_le_bytes());
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = TensorEncoding::Q4_1.dequantize(&b);
        assert_eq!(v[3], 0.5);
        assert_eq!(v[16], 6.5);
        // Q8_0: d = 0.25, q = -3.
        let mut b = f16::from_f32(0.25).to_le_bytes().to_vec();
        b.extend([(-3i8) as u8; 32]);
        assert!(TensorEncoding::Q8_0
            .dequantize(&b)
            .iter()
            .all(|&x| x == -0.75));
    }

    #[test]
    fn quantize_round_trips_within_half_a_step() {
        let values: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        for (enc, steps) in [
            (TensorEncoding::Q8_0, 127.0),
            (TensorEncoding::Q4_0, 8.0),
            (TensorEncoding::Q4_1, 15.0),
        ] {
            let back = enc.dequantize(&quantize(enc, &values).unwrap());
            for (block, got) in values.chunks(QK).zip(back.chunks(QK)) {
                let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let step = 2.0 * amax / steps;
                for (a, b) in block.iter().zip(got) {
                    assert!((a - b).abs() <= step * 0.51 + 1e-3, "{enc:?}: {a} vs {b}");
                }
            }
        }
        let f = TensorEncoding::BF16.dequantize(&quantize(TensorEncoding::BF16, &[1.5]).unwrap());
        assert_eq!(f, vec![1.5]);
    }

    #[test]
    fn unsupported_types_are_named_and_partial_blocks_refused() {
        assert!(TensorEncoding::from_ggml(12).unwrap_err().contains("Q4_K"));
        assert!(TensorEncoding::from_ggml(999).unwrap_err().contains("999"));
        assert!(TensorEncoding::Q4_1.bytes_for(33).is_err());
        assert_eq!(TensorEncoding::Q4_1.bytes_for(64).unwrap(), 40);
    }
}
