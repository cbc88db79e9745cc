//! RMSNorm as HF computes it: `w · x / sqrt(mean(x²) + eps)`, one row at a
//! time (rows never interact, so batching cannot change a result).

/// Normalises every `width`-long row of `x` in place.
pub fn rms_norm_rows(x: &mut [f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    for row in x.chunks_exact_mut(width) {
        let sum_sq: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let scale = 1.0 / ((sum_sq / width as f64) as f32 + eps).sqrt();
        for (v, w) in row.iter_mut().zip(weight) {
            *v = w * (*v * scale);
        }
    }
}

/// `rms_norm_rows` into a new buffer.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mut out = x.to_vec();
    rms_norm_rows(&mut out, weight, eps);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_rms_after_norm_and_weight_applied() {
        let x = [3.0f32, -4.0, 0.0, 5.0, 1.0, 1.0, 1.0, 1.0];
        let y = rms_norm(&x, &[1.0, 1.0, 1.0, 2.0], 0.0);
        let rms = (50.0f32 / 4.0).sqrt();
        assert!((y[0] - 3.0 / rms).abs() < 1e-6);
        assert!((y[3] - 2.0 * 5.0 / rms).abs() < 1e-6);
        assert_eq!(&y[4..7], &[1.0, 1.0, 1.0]);
        assert_eq!(y[7], 2.0);
    }
}
