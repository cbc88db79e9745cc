//! Change points by e-divisive means (Matteson & James, "A Nonparametric
//! Approach for Multiple Change Point Analysis of Multivariate Data", JASA
//! 2014), the method behind MongoDB's signal-processing service and Apache
//! Otava (formerly DataStax's hunter).
//!
//! Why this method: it assumes no distribution (run means of latencies are
//! skewed, and a few slow runs must not read as a shift), it finds any number
//! of change points by recursive bisection, and its permutation test gives a
//! p-value that is exact for exchangeable data, so "no shift" histories are
//! flagged at the stated rate, whatever the noise looks like.
//!
//! The statistic, for a segment split at τ into X = z[..τ] and Y = z[τ..]
//! with m and k points (distance exponent 1, the usual choice in (0, 2)):
//!
//! ```text
//! Ê = 2/(m·k) Σ|x−y| − 1/C(m,2) Σ_{i<j}|x_i−x_j| − 1/C(k,2) Σ_{i<j}|y_i−y_j|
//! Q̂ = m·k/(m+k) · Ê
//! ```
//!
//! Ê is the energy distance between the two sides: zero in expectation when
//! they come from one distribution, positive when they differ in any way.
//! As in the paper, X starts at the segment's start and Y ends at any κ up
//! to the segment's end (the best (τ, κ) wins; τ is the change point).
//! Searching κ matters for a shift that is later undone (a regression, then
//! its fix): with Y fixed to the rest of the segment, Y mixes both levels
//! and the split is much weaker. A 2-D prefix sum of the distance matrix
//! makes each (τ, κ) O(1), so a search costs O(n²), like the fixed-κ
//! variant that Otava and MongoDB use.
//!
//! Recursive bisection: the best split over all current segments is tested by
//! permuting the values *within* each segment (which keeps the change points
//! already found) and recomputing the best split; the p-value is
//! (1 + #{permuted ≥ observed}) / (1 + permutations). A significant split
//! becomes a change point and the search goes on; the first split that is not
//! significant ends it. The permutations use a seeded generator, so the same
//! history always gives the same answer.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How the detector searches and when it believes a split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DetectConfig {
    /// A split becomes a change point when its permutation p-value is at
    /// most this.
    pub alpha: f64,
    /// Permutations per test; the smallest possible p-value is
    /// 1 / (permutations + 1).
    pub permutations: u32,
    /// Fewest points on each side of a split (at least 2: a side needs a
    /// within-side distance).
    pub min_segment: usize,
    /// Seed of the permutations.
    pub seed: u64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            alpha: 0.01,
            permutations: 999,
            min_segment: 3,
            seed: 0,
        }
    }
}

/// A detected change point: the first index of the new level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChangePoint {
    pub index: usize,
    /// The divergence statistic Q̂ of the split.
    pub q: f64,
    /// Permutation p-value of the split, when it was accepted.
    pub p_value: f64,
}

/// The fewest runs in which a change point can be found: 2 × min_segment,
/// and enough runs for the permutation test to reach `alpha` at all. The
/// most extreme arrangement of n runs (and its mirror image) is 2 of the
/// C(n, ⌊n/2⌋) ways to split them in halves, so p ≥ 2 / C(n, ⌊n/2⌋): with
/// α = 0.01 that takes 10 runs, with 0.05 8, and more permutations than
/// 1/α (checked by the command).
pub fn min_runs(config: &DetectConfig) -> usize {
    let mut n = 2 * config.min_segment.max(2);
    while n < 64 && 2.0 / central_binomial(n) > config.alpha {
        n += 1;
    }
    n
}

/// C(n, ⌊n/2⌋) as a float.
fn central_binomial(n: usize) -> f64 {
    let k = n / 2;
    (1..=k).fold(1.0, |acc, i| acc * (n - k + i) as f64 / i as f64)
}

/// Change points of `values`, in index order. Needs at least
/// `2 * min_segment` values to find anything.
pub fn detect(values: &[f64], config: &DetectConfig) -> Vec<ChangePoint> {
    let min = config.min_segment.max(2);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut found: Vec<ChangePoint> = Vec::new();
    let mut shuffled = values.to_vec();
    loop {
        let bounds = segments(values.len(), &found);
        let Some((index, q)) = best_over_segments(values, &bounds, min) else {
            break;
        };
        // Each test permutes the values as they stand, within the segments
        // of this step (finer than the last step's).
        shuffled.copy_from_slice(values);
        let Some(p_value) = permutation_p(
            &mut shuffled,
            &bounds,
            min,
            q,
            config.permutations,
            config.alpha,
            &mut rng,
        ) else {
            break;
        };
        found.push(ChangePoint { index, q, p_value });
        found.sort_by_key(|c| c.index);
    }
    found
}

/// [start, end) of each segment between the change points found so far.
fn segments(n: usize, found: &[ChangePoint]) -> Vec<(usize, usize)> {
    let mut cuts: Vec<usize> = found.iter().map(|c| c.index).collect();
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        out.push((start, cut));
        start = cut;
    }
    out.push((start, n));
    out
}

/// The best split of any segment: (absolute index, Q̂).
fn best_over_segments(
    values: &[f64],
    bounds: &[(usize, usize)],
    min: usize,
) -> Option<(usize, f64)> {
    bounds
        .iter()
        .filter_map(|&(s, e)| best_split(&values[s..e], min).map(|(tau, q)| (s + tau, q)))
        .fold(None, |best: Option<(usize, f64)>, cand| match best {
            Some(b) if b.1 >= cand.1 => Some(b),
            _ => Some(cand),
        })
}

/// The permutation p-value of an observed best split `q`, or None when it
/// is not significant at `alpha`. Stops as soon as the p-value can no longer
/// reach `alpha` (a non-significant split usually costs a few dozen
/// permutations, not all of them).
fn permutation_p(
    buf: &mut [f64],
    bounds: &[(usize, usize)],
    min: usize,
    q: f64,
    permutations: u32,
    alpha: f64,
    rng: &mut ChaCha8Rng,
) -> Option<f64> {
    let total = f64::from(permutations) + 1.0;
    let mut exceed = 0u32;
    for _ in 0..permutations {
        // A permutation of a permutation is as uniform as one of the
        // original order, so `buf` need not be reset between draws of one
        // test: only which values lie in which segment matters.
        for &(s, e) in bounds {
            buf[s..e].shuffle(rng);
        }
        let permuted = bounds
            .iter()
            .filter_map(|&(s, e)| best_split(&buf[s..e], min).map(|(_, q)| q))
            .fold(f64::NEG_INFINITY, f64::max);
        if permuted >= q {
            exceed += 1;
            if (1.0 + f64::from(exceed)) / total > alpha {
                return None;
            }
        }
    }
    let p = (1.0 + f64::from(exceed)) / total;
    (p <= alpha).then_some(p)
}

/// The split τ (first index of the right side) of `z` maximizing Q̂ over
/// X = z[..τ], Y = z[τ..κ] for every κ, with at least `min` points in X and
/// in Y, and its Q̂. O(n²) time and space.
pub(crate) fn best_split(z: &[f64], min: usize) -> Option<(usize, f64)> {
    let n = z.len();
    if n < 2 * min || min < 2 {
        return None;
    }
    // prefix[a * w + b] = Σ_{i<a, j<b} |z_i − z_j|, w = n + 1.
    let w = n + 1;
    let mut prefix = vec![0.0f64; w * w];
    for a in 1..=n {
        let mut row = 0.0;
        for b in 1..=n {
            row += (z[a - 1] - z[b - 1]).abs();
            prefix[a * w + b] = prefix[(a - 1) * w + b] + row;
        }
    }
    // Σ of |z_i − z_j| over rows [r0, r1) and columns [c0, c1).
    let block = |r0: usize, r1: usize, c0: usize, c1: usize| {
        prefix[r1 * w + c1] - prefix[r0 * w + c1] - prefix[r1 * w + c0] + prefix[r0 * w + c0]
    };
    let mut best: Option<(usize, f64)> = None;
    for tau in min..=n - min {
        let m = tau as f64;
        // Each pair counted twice in a square block.
        let within_left = block(0, tau, 0, tau) / 2.0;
        let left_term = within_left / (m * (m - 1.0) / 2.0);
        for kappa in tau + min..=n {
            let k = (kappa - tau) as f64;
            let between = block(0, tau, tau, kappa);
            let within_right = block(tau, kappa, tau, kappa) / 2.0;
            let energy = 2.0 * between / (m * k) - left_term - within_right / (k * (k - 1.0) / 2.0);
            let q = m * k / (m + k) * energy;
            if best.is_none_or(|(_, b)| q > b) {
                best = Some((tau, q));
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q̂ of z[..tau] against z[tau..] straight from the definition.
    fn q_direct(z: &[f64], tau: usize) -> f64 {
        let (x, y) = z.split_at(tau);
        let (m, k) = (x.len() as f64, y.len() as f64);
        let between: f64 = x
            .iter()
            .flat_map(|a| y.iter().map(move |b| (a - b).abs()))
            .sum();
        let within = |s: &[f64]| -> f64 {
            let mut t = 0.0;
            for i in 0..s.len() {
                for j in i + 1..s.len() {
                    t += (s[i] - s[j]).abs();
                }
            }
            t
        };
        let e = 2.0 * between / (m * k)
            - within(x) / (m * (m - 1.0) / 2.0)
            - within(y) / (k * (k - 1.0) / 2.0);
        m * k / (m + k) * e
    }

    #[test]
    fn prefix_sums_match_the_definition() {
        let z = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0];
        for min in [2, 3, 4] {
            let (tau, q) = best_split(&z, min).unwrap();
            let mut direct = (0, f64::NEG_INFINITY);
            for t in min..=z.len() - min {
                for kappa in t + min..=z.len() {
                    let q = q_direct(&z[..kappa], t);
                    if q > direct.1 {
                        direct = (t, q);
                    }
                }
            }
            assert_eq!(tau, direct.0, "min {min}");
            assert!((q - direct.1).abs() < 1e-9, "{q} vs {}", direct.1);
        }
    }

    #[test]
    fn a_clean_step_is_found_at_its_first_new_point() {
        let mut z = vec![10.0, 10.2, 9.9, 10.1, 10.0, 9.8, 10.1];
        z.extend([12.0, 12.1, 11.9, 12.2, 12.0, 11.8]);
        let cps = detect(&z, &DetectConfig::default());
        assert_eq!(cps.len(), 1, "{cps:?}");
        assert_eq!(cps[0].index, 7);
        assert!(cps[0].p_value <= 0.01);
    }

    #[test]
    fn runs_needed_for_the_permutation_test() {
        let at = |alpha| {
            min_runs(&DetectConfig {
                alpha,
                ..DetectConfig::default()
            })
        };
        assert_eq!(central_binomial(10), 252.0);
        assert_eq!(at(0.01), 10);
        assert_eq!(at(0.05), 8);
        assert_eq!(at(0.5), 6);
        // Nine runs cannot beat α = 0.01 even with a huge step.
        let mut z = vec![1.0; 5];
        z.extend([100.0; 4]);
        assert!(detect(&z, &DetectConfig::default()).is_empty());
        z.push(100.0);
        assert_eq!(detect(&z, &DetectConfig::default())[0].index, 5);
    }

    #[test]
    fn too_short_or_constant_series_have_no_change_point() {
        let config = DetectConfig::default();
        assert!(detect(&[1.0, 2.0, 3.0, 4.0, 5.0], &config).is_empty());
        assert!(detect(&[], &config).is_empty());
        assert!(detect(&[7.0; 20], &config).is_empty());
    }

    #[test]
    fn the_answer_does_not_depend_on_the_call() {
        let z: Vec<f64> = (0..30)
            .map(|i| ((i * 37) % 11) as f64 + if i >= 18 { 6.0 } else { 0.0 })
            .collect();
        let config = DetectConfig::default();
        assert_eq!(detect(&z, &config), detect(&z, &config));
    }
}
