//! `y = x · Wᵀ (+ b)` for all tokens of a step in one multithreaded GEMM.
//!
//! Batch invariance: a token's output row must be bit-identical whatever
//! other rows share the call. The `gemm` crate sums over the inner dimension
//! in blocks of `kc`, and on its blocked path `kc` depends only on that
//! dimension (and the cache sizes); its threads split rows and columns, never
//! the sum. Other paths sum in another order: a single row (a GEMV kernel), at
//! most 64 outputs with at most 64 rows (a small-size `kc`), and, for
//! row-major weights, at most 256 outputs in all (a "horizontal" kernel). We
//! pad the row count so none is taken; the padding rows are zeros and are
//! dropped. `rows_are_independent_of_batch` checks it.

use gemm::Parallelism;

pub struct Linear {
    /// `Wᵀ`, row-major `[in_features, out_features]`: HF stores W as
    /// `[out, in]`; transposed once at load, the GEMM reads it in place
    /// instead of repacking the whole matrix on every call.
    weight_t: Vec<f32>,
    bias: Option<Vec<f32>>,
    pub in_features: usize,
    pub out_features: usize,
}

impl Linear {
    /// `weight` is row-major `[out_features, in_features]`, as HF stores it.
    pub fn new(
        weight: &[f32],
        bias: Option<Vec<f32>>,
        out_features: usize,
        in_features: usize,
    ) -> Linear {
        debug_assert_eq!(weight.len(), out_features * in_features);
        debug_assert!(bias.as_ref().is_none_or(|b| b.len() == out_features));
        let mut weight_t = vec![0.0f32; weight.len()];
        for (o, row) in weight.chunks_exact(in_features).enumerate() {
            for (i, &w) in row.iter().enumerate() {
                weight_t[i * out_features + o] = w;
            }
        }
        Linear {
            weight_t,
            bias,
            in_features,
            out_features,
        }
    }

    /// Several projections of the same input stacked into one (q/k/v,
    /// gate/up), so one GEMM serves them all.
    pub fn stack(parts: Vec<(Vec<f32>, Option<Vec<f32>>, usize)>, in_features: usize) -> Linear {
        let out_features = parts.iter().map(|p| p.2).sum();
        let has_bias = parts.iter().any(|p| p.1.is_some());
        let mut weight = Vec::with_capacity(out_features * in_features);
        let mut bias = Vec::with_capacity(if has_bias { out_features } else { 0 });
        for (w, b, out) in parts {
            weight.extend_from_slice(&w);
            if has_bias {
                match b {
                    Some(b) => bias.extend_from_slice(&b),
                    None => bias.extend(std::iter::repeat_n(0.0, out)),
                }
            }
        }
        Linear::new(&weight, has_bias.then_some(bias), out_features, in_features)
    }

    /// `x` is row-major `[rows, in_features]`; returns `[rows, out_features]`.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        debug_assert_eq!(x.len(), rows * self.in_features);
        let (k, n) = (self.in_features, self.out_features);
        let padded_rows = rows.max(min_rows(n));
        let padded;
        let lhs = if padded_rows == rows {
            x
        } else {
            let mut p = vec![0.0f32; padded_rows * k];
            p[..x.len()].copy_from_slice(x);
            padded = p;
            &padded
        };
        let mut out = vec![0.0f32; padded_rows * n];
        // SAFETY: all three buffers are contiguous row-major with the sizes
        // and strides given: dst [padded_rows, n], lhs [padded_rows, k] and
        // rhs = Wᵀ [k, n].
        unsafe {
            gemm::gemm(
                padded_rows,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                lhs.as_ptr(),
                1,
                k as isize,
                self.weight_t.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::Rayon(0),
            );
        }
        out.truncate(rows * n);
        if let Some(bias) = &self.bias {
            for row in out.chunks_exact_mut(n) {
                for (y, b) in row.iter_mut().zip(bias) {
                    *y += b;
                }
            }
        }
        out
    }
}

/// Fewest rows for which `gemm` takes its blocked path for `n` outputs.
fn min_rows(n: usize) -> usize {
    let small = if n <= 64 { 65 } else { 0 };
    2.max(256 / n + 1).max(small)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn matches_naive_product_with_bias() {
        let (n, k, rows) = (70, 33, 5);
        let w = pseudo_random(n * k, 1);
        let b = pseudo_random(n, 2);
        let x = pseudo_random(rows * k, 3);
        let lin = Linear::new(&w, Some(b.clone()), n, k);
        let y = lin.forward(&x, rows);
        for r in 0..rows {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                    .sum::<f64>()
                    + b[j] as f64;
                assert!((y[r * n + j] as f64 - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn rows_are_independent_of_batch() {
        // Inner sizes above and below the gemm crate's blocking, outputs on
        // both sides of the small-size threshold.
        for &(n, k) in &[(40, 24), (128, 256), (512, 256), (300, 1100), (2048, 256)] {
            let lin = Linear::new(&pseudo_random(n * k, 7), None, n, k);
            let x = pseudo_random(300 * k, 9);
            let alone: Vec<Vec<f32>> = (0..300)
                .map(|r| lin.forward(&x[r * k..(r + 1) * k], 1))
                .collect();
            for rows in [2, 3, 8, 16, 31, 64, 65, 97, 300] {
                let y = lin.forward(&x[..rows * k], rows);
                for r in 0..rows {
                    assert!(
                        y[r * n..(r + 1) * n] == alone[r][..],
                        "n={n} k={k}: row {r} differs in a batch of {rows}"
                    );
                }
            }
        }
    }
}
