//! Batch saturation: where decode stops being nearly free per extra
//! sequence.
//!
//! From the step logs of a closed-loop batch sweep, take the pure decode
//! steps (no prefill tokens) and, per batch size B, the median step time.
//! Fit a two-regime hinge (roofline-style): `t(B) = a + s1·B` up to the
//! knee `B_sat`, `t(B) = a + s1·B_sat + s2·(B − B_sat)` beyond, by least
//! squares on relative error (each batch size weighs the same whatever its
//! step time) with the knee searched on a fine log grid. The 95 % interval
//! of `B_sat` comes from a bootstrap: resample each batch size's steps with
//! replacement, take medians, refit. `B_opt` is the smallest measured batch
//! whose decode tok/s (B / median step time) reaches 95 % of the best.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use workloads::StepLogEntry;

/// Bootstrap resamples for the interval of `B_sat`.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;
/// Fraction of the best decode tok/s that `B_opt` must reach.
pub const B_OPT_FRACTION: f64 = 0.95;
/// Knee candidates between the smallest and largest batch size.
const GRID: usize = 400;
/// A batch size needs this many decode steps to enter the fit.
const MIN_STEPS: usize = 3;

/// The median decode step time at one batch size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchPoint {
    pub batch_size: u32,
    pub steps: usize,
    pub median_step_ms: f64,
    /// batch_size / median step time.
    pub decode_tok_s: f64,
    /// "unsaturated" (at or below B_sat) or "saturated".
    pub regime: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BsatFit {
    pub points: Vec<BatchPoint>,
    /// Step time at B → 0, ms.
    pub intercept_ms: f64,
    /// ms per extra sequence below the knee.
    pub slope_below_ms: f64,
    /// ms per extra sequence above the knee.
    pub slope_above_ms: f64,
    pub b_sat: f64,
    /// 95 % bootstrap interval of `b_sat` (2.5th, 97.5th percentiles).
    pub b_sat_ci: (f64, f64),
    pub b_opt: u32,
    pub best_decode_tok_s: f64,
    pub resamples: usize,
}

impl BsatFit {
    /// The fitted step time at `b`, ms.
    pub fn step_ms(&self, b: f64) -> f64 {
        hinge(
            self.intercept_ms,
            self.slope_below_ms,
            self.slope_above_ms,
            self.b_sat,
            b,
        )
    }
}

fn hinge(a: f64, s1: f64, s2: f64, knee: f64, b: f64) -> f64 {
    if b <= knee {
        a + s1 * b
    } else {
        a + s1 * knee + s2 * (b - knee)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BsatError {
    #[error(
        "B_sat needs decode steps at 3 or more batch sizes (with {MIN_STEPS}+ steps each); got {0}"
    )]
    TooFewBatchSizes(usize),
}

/// Fits the hinge to the decode steps of `steps` (every point's step log
/// pooled; the batch size is read from each step).
pub fn fit(steps: &[StepLogEntry], seed: u64) -> Result<BsatFit, BsatError> {
    let mut by_batch: std::collections::BTreeMap<u32, Vec<f64>> = Default::default();
    for s in steps
        .iter()
        .filter(|s| s.prefill_tokens == 0 && s.decode_tokens > 0 && s.batch_size > 0)
    {
        by_batch
            .entry(s.batch_size)
            .or_default()
            .push(s.duration_s * 1e3);
    }
    by_batch.retain(|_, v| v.len() >= MIN_STEPS);
    if by_batch.len() < 3 {
        return Err(BsatError::TooFewBatchSizes(by_batch.len()));
    }
    let groups: Vec<(f64, Vec<f64>)> = by_batch
        .into_iter()
        .map(|(b, v)| (f64::from(b), v))
        .collect();
    let medians: Vec<(f64, f64)> = groups.iter().map(|(b, v)| (*b, median(v))).collect();
    let (a, s1, s2, knee) = fit_hinge(&medians);

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut knees = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let mut sample = Vec::new();
    for _ in 0..BOOTSTRAP_RESAMPLES {
        let resampled: Vec<(f64, f64)> = groups
            .iter()
            .map(|(b, v)| {
                sample.clear();
                sample.extend((0..v.len()).map(|_| v[rng.random_range(0..v.len())]));
                (*b, median(&sample))
            })
            .collect();
        knees.push(fit_hinge(&resampled).3);
    }
    knees.sort_by(f64::total_cmp);
    let ci = (quantile(&knees, 0.025), quantile(&knees, 0.975));

    let best = medians.iter().map(|(b, t)| b / t * 1e3).fold(0.0, f64::max);
    let b_opt = medians
        .iter()
        .find(|(b, t)| b / t * 1e3 >= B_OPT_FRACTION * best)
        .map(|(b, _)| *b as u32)
        .unwrap_or(0);
    let points = groups
        .iter()
        .zip(&medians)
        .map(|((b, v), (_, t))| BatchPoint {
            batch_size: *b as u32,
            steps: v.len(),
            median_step_ms: *t,
            decode_tok_s: b / t * 1e3,
            regime: if *b <= knee {
                "unsaturated"
            } else {
                "saturated"
            },
        })
        .collect();
    Ok(BsatFit {
        points,
        intercept_ms: a,
        slope_below_ms: s1,
        slope_above_ms: s2,
        b_sat: knee,
        b_sat_ci: ci,
        b_opt,
        best_decode_tok_s: best,
        resamples: BOOTSTRAP_RESAMPLES,
    })
}

/// Least-squares hinge on relative error: the knee on a log grid between
/// the smallest and largest B; for each knee the model is linear in
/// (a, s1, s2), solved by weighted normal equations (weights 1/t²).
fn fit_hinge(points: &[(f64, f64)]) -> (f64, f64, f64, f64) {
    let lo = points.first().map(|p| p.0).unwrap_or(1.0);
    let hi = points.last().map(|p| p.0).unwrap_or(lo);
    let mut best = (f64::INFINITY, (0.0, 0.0, 0.0, lo));
    for i in 0..=GRID {
        let knee = lo * (hi / lo).powf(i as f64 / GRID as f64);
        // Features: 1, min(B, knee), max(B − knee, 0).
        let rows: Vec<([f64; 3], f64, f64)> = points
            .iter()
            .map(|&(b, t)| ([1.0, b.min(knee), (b - knee).max(0.0)], t, 1.0 / (t * t)))
            .collect();
        let Some(beta) = weighted_least_squares(&rows) else {
            continue;
        };
        let sse: f64 = rows
            .iter()
            .map(|(x, t, w)| {
                let fit = beta[0] * x[0] + beta[1] * x[1] + beta[2] * x[2];
                w * (t - fit) * (t - fit)
            })
            .sum();
        if sse < best.0 {
            best = (sse, (beta[0], beta[1], beta[2], knee));
        }
    }
    best.1
}

/// Solves the 3×3 weighted normal equations; `None` when singular (e.g. no
/// point above the knee makes the third feature all zeros: then the knee is
/// the largest B and s2 is taken as s1).
fn weighted_least_squares(rows: &[([f64; 3], f64, f64)]) -> Option<[f64; 3]> {
    let above = rows.iter().any(|(x, _, _)| x[2] > 0.0);
    let k = if above { 3 } else { 2 };
    let mut m = [[0.0f64; 4]; 3];
    for (x, t, w) in rows {
        for i in 0..k {
            for j in 0..k {
                m[i][j] += w * x[i] * x[j];
            }
            m[i][3] += w * x[i] * t;
        }
    }
    // Gaussian elimination with partial pivoting on the k×k system.
    for col in 0..k {
        let pivot = (col..k).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[pivot][col].abs() < 1e-300 {
            return None;
        }
        m.swap(col, pivot);
        let pivot_row = m[col];
        for (row, r) in m.iter_mut().enumerate().take(k) {
            if row != col {
                let f = r[col] / pivot_row[col];
                for (v, p) in r.iter_mut().zip(pivot_row).skip(col) {
                    *v -= f * p;
                }
            }
        }
    }
    let mut beta = [0.0; 3];
    for i in 0..k {
        beta[i] = m[i][3] / m[i][i];
    }
    if !above {
        beta[2] = beta[1];
    }
    Some(beta)
}

fn median(v: &[f64]) -> f64 {
    crate::stats::percentiles(v, &[50.0])[0]
}

/// numpy-linear quantile (`q` in 0..=1) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    crate::stats::percentile_of_sorted(sorted, q * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(batch: u32, ms: f64) -> StepLogEntry {
        serde_json::from_value(serde_json::json!({
            "step": 0, "start_s": 0.0, "duration_s": ms / 1e3, "batch_size": batch,
            "prefill_tokens": 0, "decode_tokens": batch, "num_waiting": 0,
            "kv_blocks_used": 1, "kv_blocks_total": 8, "preempted": 0
        }))
        .unwrap()
    }

    /// Steps from a known hinge with ±3 % multiplicative noise.
    fn synthetic(knee: f64, seed: u64) -> Vec<StepLogEntry> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::new();
        for b in [1u32, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024] {
            for _ in 0..40 {
                let t = hinge(2.0, 0.002, 0.02, knee, f64::from(b));
                out.push(step(b, t * (1.0 + rng.random_range(-0.03..0.03))));
            }
        }
        out
    }

    #[test]
    fn recovers_a_known_knee_with_an_interval_around_it() {
        for knee in [48.0, 200.0] {
            let fit = fit(&synthetic(knee, 1), 7).unwrap();
            assert!(
                (fit.b_sat / knee - 1.0).abs() < 0.35,
                "knee {knee}: fitted {}",
                fit.b_sat
            );
            assert!(
                fit.b_sat_ci.0 <= fit.b_sat && fit.b_sat <= fit.b_sat_ci.1,
                "{fit:?}"
            );
            assert!(
                fit.b_sat_ci.0 < knee * 1.5 && fit.b_sat_ci.1 > knee / 1.5,
                "{:?}",
                fit.b_sat_ci
            );
            assert!(fit.slope_above_ms > 5.0 * fit.slope_below_ms, "{fit:?}");
            assert!((fit.intercept_ms - 2.0).abs() < 0.3, "{fit:?}");
            for p in &fit.points {
                let want = if f64::from(p.batch_size) <= fit.b_sat {
                    "unsaturated"
                } else {
                    "saturated"
                };
                assert_eq!(p.regime, want);
            }
        }
    }

    #[test]
    fn b_opt_is_the_smallest_batch_within_5_percent_of_the_best() {
        let fit = fit(&synthetic(64.0, 2), 3).unwrap();
        let best = fit
            .points
            .iter()
            .map(|p| p.decode_tok_s)
            .fold(0.0, f64::max);
        let first = fit
            .points
            .iter()
            .find(|p| p.decode_tok_s >= 0.95 * best)
            .unwrap();
        assert_eq!(fit.b_opt, first.batch_size);
        assert_eq!(fit.best_decode_tok_s, best);
    }

    #[test]
    fn prefill_steps_and_thin_batches_are_left_out() {
        let mut steps = vec![
            step(1, 1.0),
            step(1, 1.0),
            step(1, 1.0),
            step(2, 1.0),
            step(2, 1.0),
            step(2, 1.0),
        ];
        steps.push(step(4, 1.0)); // one step: too few
        let mut prefill = step(8, 5.0);
        prefill.prefill_tokens = 100;
        steps.extend([prefill.clone(), prefill.clone(), prefill]);
        assert_eq!(fit(&steps, 0).unwrap_err(), BsatError::TooFewBatchSizes(2));
    }
}
