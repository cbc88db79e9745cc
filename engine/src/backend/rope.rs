//! Rotary position embedding, HF convention (`rotate_half`: the first half of
//! a head pairs with the second half), with optional `llama3` frequency
//! scaling: the one implementation both backends use. The CPU backend
//! rotates with [`Rope::angles`]; the CUDA backend uploads
//! [`Rope::cos_sin_table`], built from the same angles, so the two cannot
//! drift apart at long positions. Angles are formed the way transformers
//! forms them (f32 inverse frequencies times the f32 position, rounded to
//! f32), then cos/sin are taken in f64 and rounded to f32.

use crate::config::{Llama3RopeScaling, ModelConfig};

pub struct Rope {
    inv_freq: Vec<f32>,
}

/// cos/sin of every frequency for one position.
pub struct RopeAngles {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Rope {
        let dim = cfg.head_dim;
        let base = cfg.rope_theta as f32;
        let mut inv_freq: Vec<f32> = (0..dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
            .collect();
        if let Some(scaling) = &cfg.rope_scaling {
            inv_freq = llama3_scale(&inv_freq, scaling);
        }
        Rope { inv_freq }
    }

    /// `(cos, sin)` of every frequency at `position`.
    fn cos_sin(&self, position: usize) -> impl Iterator<Item = (f32, f32)> + '_ {
        let p = position as f32;
        self.inv_freq.iter().map(move |&f| {
            let a = (p * f) as f64;
            (a.cos() as f32, a.sin() as f32)
        })
    }

    pub fn angles(&self, position: usize) -> RopeAngles {
        let (cos, sin) = self.cos_sin(position).unzip();
        RopeAngles { cos, sin }
    }

    /// Interleaved `(cos, sin)` pairs, `[position][head_dim / 2]`, for
    /// positions `0..max_positions` (the CUDA kernels' table).
    pub fn cos_sin_table(&self, max_positions: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(max_positions * self.inv_freq.len() * 2);
        for pos in 0..max_positions {
            for (c, s) in self.cos_sin(pos) {
                out.push(c);
                out.push(s);
            }
        }
        out
    }

    /// Rotates every head (`head_dim` = 2 × frequencies) of `row` in place.
    pub fn apply(&self, row: &mut [f32], angles: &RopeAngles) {
        let half = self.inv_freq.len();
        for head in row.chunks_exact_mut(2 * half) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * angles.cos[i] - b * angles.sin[i];
                x2[i] = b * angles.cos[i] + a * angles.sin[i];
            }
        }
    }
}

/// Llama 3.1's scaling: long wavelengths are slowed by `factor`, short ones
/// kept, and the band between interpolated smoothly.
fn llama3_scale(inv_freq: &[f32], s: &Llama3RopeScaling) -> Vec<f32> {
    let factor = s.factor as f32;
    let (low, high) = (s.low_freq_factor as f32, s.high_freq_factor as f32);
    let old_len = s.original_max_position_embeddings as f32;
    let low_freq_wavelen = old_len / low;
    let high_freq_wavelen = old_len / high;
    inv_freq
        .iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_freq_wavelen {
                f
            } else if wavelen > low_freq_wavelen {
                f / factor
            } else {
                let smooth = (old_len / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::preset;

    #[test]
    fn rotation_keeps_norm_and_position_zero_is_identity() {
        let rope = Rope::new(&preset("tiny-qwen2").unwrap());
        let x: Vec<f32> = (0..64).map(|i| i as f32 * 0.1 - 2.0).collect();
        let mut y = x.clone();
        rope.apply(&mut y, &rope.angles(0));
        assert_eq!(x, y);
        rope.apply(&mut y, &rope.angles(37));
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&x) - norm(&y)).abs() < 1e-3);
        // rotate_half pairing: element 0 mixes with element 16 (half of 32).
        let mut e = vec![0.0f32; 32];
        e[0] = 1.0;
        rope.apply(&mut e, &rope.angles(1));
        assert!((e[0] - 1f32.cos()).abs() < 1e-6 && (e[16] - 1f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn the_cuda_table_holds_the_cpu_angles() {
        let rope = Rope::new(&preset("llama-3.2-1b").unwrap());
        let half = rope.inv_freq.len();
        let table = rope.cos_sin_table(40_000);
        for pos in [0, 1, 777, 32_767, 39_999] {
            let a = rope.angles(pos);
            for i in 0..half {
                let at = (pos * half + i) * 2;
                assert_eq!((table[at], table[at + 1]), (a.cos[i], a.sin[i]));
            }
        }
    }

    #[test]
    fn llama3_scaling_bands() {
        let cfg = preset("llama-3.2-1b").unwrap();
        let plain = Rope::new(&ModelConfig {
            rope_scaling: None,
            ..cfg.clone()
        });
        let scaled = Rope::new(&cfg);
        // Highest frequency (short wavelength) unchanged, lowest divided by 32.
        assert_eq!(scaled.inv_freq[0], plain.inv_freq[0]);
        let last = plain.inv_freq.len() - 1;
        assert!((scaled.inv_freq[last] - plain.inv_freq[last] / 32.0).abs() < 1e-12);
        // In between, the scaled frequency lies between the two.
        let mid = plain
            .inv_freq
            .iter()
            .position(|&f| {
                let w = 2.0 * std::f32::consts::PI / f;
                w > 8192.0 / 4.0 && w < 8192.0
            })
            .unwrap();
        let (p, s) = (plain.inv_freq[mid], scaled.inv_freq[mid]);
        assert!(s < p && s > p / 32.0);
    }
}
