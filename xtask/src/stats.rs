//! The one statistics helper: means, spreads and percentiles of plain
//! samples. Everything that summarises numbers (metrics, reports, the store's
//! listings, the verdicts' tests) comes here, so a definition changes in one
//! place.
//!
//! Percentiles follow numpy's default (`method="linear"`, Hyndman & Fan
//! type 7), which is what `vllm bench serve` reports: for sorted values
//! x₀..xₙ₋₁ and a quantile q, the virtual index h = (n − 1)·q and the value
//! x⌊h⌋ + (h − ⌊h⌋)·(x⌊h⌋₊₁ − x⌊h⌋), with numpy's own rounding of that
//! interpolation so results agree to the last bit (see the fixtures in
//! `xtask/tests/fixtures/percentiles.json`).

/// Arithmetic mean; NaN for no values.
pub(crate) fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Mean and sample variance (n − 1). Repeated values have exactly zero
/// variance: summing them can leave a rounding residue that would pass for
/// a (tiny) measured spread. The variance is 0 for fewer than two values.
pub(crate) fn mean_var(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, 0.0);
    }
    if xs.iter().all(|x| *x == xs[0]) {
        return (xs[0], 0.0);
    }
    let n = xs.len() as f64;
    let m = mean(xs);
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, var)
}

/// Population standard deviation (n), numpy's `std`, which vLLM reports.
pub(crate) fn population_stdev(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt()
}

/// Mean, sample standard deviation and coefficient of variation of the
/// values a metric took across trials (or runs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub n: usize,
    pub mean: f64,
    pub stdev: f64,
    /// stdev / |mean|; 0 when the mean is 0.
    pub cv: f64,
}

pub(crate) fn spread(xs: &[f64]) -> Option<Spread> {
    if xs.is_empty() {
        return None;
    }
    let (mean, var) = mean_var(xs);
    let stdev = var.sqrt();
    let cv = if mean != 0.0 { stdev / mean.abs() } else { 0.0 };
    Some(Spread {
        n: xs.len(),
        mean,
        stdev,
        cv,
    })
}

/// Geometric mean of positive values (the centre on the log scale the
/// verdicts test on); the arithmetic mean when a value is not positive.
pub(crate) fn geometric_mean(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    if xs.iter().all(|x| *x > 0.0) {
        Some((xs.iter().map(|x| x.ln()).sum::<f64>() / xs.len() as f64).exp())
    } else {
        Some(mean(xs))
    }
}

/// numpy's `percentile(xs, p)` for every `p` in `percents` (0..=100), with
/// the default linear method. NaN for each when `xs` is empty; NaN values in
/// `xs` sort last (as numpy's do) and so poison only the top quantiles.
pub(crate) fn percentiles(xs: &[f64], percents: &[f64]) -> Vec<f64> {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    percents
        .iter()
        .map(|p| percentile_of_sorted(&sorted, *p))
        .collect()
}

/// One percentile of already sorted values (see `percentiles`).
pub(crate) fn percentile_of_sorted(sorted: &[f64], percent: f64) -> f64 {
    let n = sorted.len();
    if n == 0 || !(0.0..=100.0).contains(&percent) {
        return f64::NAN;
    }
    // numpy: q = p / 100, virtual index (n - 1) * q, neighbours floor and
    // floor + 1 clipped to the last index, gamma = index - floor.
    let q = percent / 100.0;
    let virtual_index = (n - 1) as f64 * q;
    let below = virtual_index.floor();
    let gamma = virtual_index - below;
    let lo = (below as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    lerp(sorted[lo], sorted[hi], gamma)
}

/// numpy's `_lerp`: from `b` downwards when t ≥ 0.5, which keeps the result
/// monotonic and exact at t = 1.
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// The median (numpy's, i.e. the 50th percentile).
pub(crate) fn median(xs: &[f64]) -> f64 {
    percentiles(xs, &[50.0])[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_known_answers() {
        let s = spread(&[9.0, 10.0, 11.0]).unwrap();
        assert_eq!((s.n, s.mean, s.stdev), (3, 10.0, 1.0));
        assert!((s.cv - 0.1).abs() < 1e-12);
        let one = spread(&[4.0]).unwrap();
        assert_eq!((one.stdev, one.cv), (0.0, 0.0));
        assert!(spread(&[]).is_none());
    }

    #[test]
    fn repeated_values_have_exactly_zero_variance() {
        assert_eq!(mean_var(&[0.003; 3]), (0.003, 0.0));
    }

    #[test]
    fn linear_percentiles_interpolate_between_neighbours() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        // h = 3 * 0.5 = 1.5 -> 2.5; h = 3 * 0.9 = 2.7 -> 3.7
        let p = percentiles(&xs, &[0.0, 50.0, 90.0, 100.0]);
        assert_eq!(p[0], 1.0);
        assert_eq!(p[1], 2.5);
        assert!((p[2] - 3.7).abs() < 1e-12);
        assert_eq!(p[3], 4.0);
        assert_eq!(percentiles(&[7.0], &[99.0]), vec![7.0]);
        assert!(percentiles(&[], &[50.0])[0].is_nan());
        assert!(percentile_of_sorted(&xs, 101.0).is_nan());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn population_and_sample_stdev() {
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert_eq!(population_stdev(&xs), 2.0);
        assert!((mean_var(&xs).1 - 32.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn geometric_mean_of_powers() {
        assert!((geometric_mean(&[1.0, 100.0]).unwrap() - 10.0).abs() < 1e-12);
        assert_eq!(geometric_mean(&[0.0, 2.0]), Some(1.0));
        assert_eq!(geometric_mean(&[]), None);
    }
}
