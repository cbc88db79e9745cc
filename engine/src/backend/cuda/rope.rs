//! The RoPE cos/sin table, computed once on the host in f64 (with llama3
//! frequency scaling where the config asks for it) and uploaded as
//! `[position][head_dim / 2]` pairs of f32 `(cos, sin)`.

use crate::config::ModelConfig;

/// Inverse frequencies `θ^(-2j/d)` for `j < d/2`, llama3-scaled if set.
pub fn inv_freq(config: &ModelConfig) -> Vec<f64> {
    let d = config.head_dim as f64;
    let base: Vec<f64> = (0..config.head_dim / 2)
        .map(|j| config.rope_theta.powf(-(2.0 * j as f64) / d))
        .collect();
    let Some(s) = &config.rope_scaling else {
        return base;
    };
    let old = s.original_max_position_embeddings as f64;
    let low_wavelen = old / s.low_freq_factor;
    let high_wavelen = old / s.high_freq_factor;
    base.into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen > low_wavelen {
                f / s.factor
            } else if wavelen < high_wavelen {
                f
            } else {
                let smooth =
                    (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * f / s.factor + smooth * f
            }
        })
        .collect()
}

/// Interleaved `(cos, sin)` for positions `0..max_positions`.
pub fn cos_sin_table(config: &ModelConfig, max_positions: usize) -> Vec<f32> {
    let freqs = inv_freq(config);
    let mut out = Vec::with_capacity(max_positions * freqs.len() * 2);
    for pos in 0..max_positions {
        for &f in &freqs {
            let angle = pos as f64 * f;
            out.push(angle.cos() as f32);
            out.push(angle.sin() as f32);
        }
    }
    out
}
