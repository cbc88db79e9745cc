//! The size of a shift: the relative change between the means of the
//! segments on either side of a change point, with a confidence interval.
//!
//! Each value is one run's mean, so the interval is built from the run-to-run
//! spread (what the next run will see), not from trials within a run. The
//! ratio's interval is Welch's on the log scale through the delta method:
//! var(log ȳ) ≈ s² / (n·ȳ²) per side, Welch–Satterthwaite degrees of freedom.
//! It treats the split as given; since the detector picked the split that
//! separates the sides best, the interval is somewhat narrower than an
//! interval for a split fixed in advance.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::stats::mean_var;

/// Before/after means and their relative change.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Shift {
    pub n_before: usize,
    pub n_after: usize,
    pub mean_before: f64,
    pub mean_after: f64,
    /// mean_after / mean_before − 1; None when a mean is not positive.
    pub relative_change: Option<f64>,
    /// 95% interval of `relative_change`; None when it is undefined or a side
    /// has a single value.
    pub ci95: Option<(f64, f64)>,
}

/// The shift from `before` to `after` (each non-empty).
pub fn shift(before: &[f64], after: &[f64]) -> Shift {
    let (mb, vb) = mean_var(before);
    let (ma, va) = mean_var(after);
    let (nb, na) = (before.len() as f64, after.len() as f64);
    let positive = mb > 0.0 && ma > 0.0;
    let relative_change = positive.then(|| ma / mb - 1.0);
    let ci95 = (positive && before.len() > 1 && after.len() > 1)
        .then(|| {
            let log_ratio = (ma / mb).ln();
            let (ub, ua) = (vb / (nb * mb * mb), va / (na * ma * ma));
            let se = (ub + ua).sqrt();
            if se == 0.0 {
                return Some((ma / mb - 1.0, ma / mb - 1.0));
            }
            let df = (ub + ua).powi(2) / (ub * ub / (nb - 1.0) + ua * ua / (na - 1.0));
            let t = StudentsT::new(0.0, 1.0, df).ok()?.inverse_cdf(0.975);
            Some(((log_ratio - t * se).exp_m1(), (log_ratio + t * se).exp_m1()))
        })
        .flatten();
    Shift {
        n_before: before.len(),
        n_after: after.len(),
        mean_before: mb,
        mean_after: ma,
        relative_change,
        ci95,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_percent_up_with_an_interval_around_it() {
        let before = [100.0, 101.0, 99.0, 100.5, 99.5];
        let after = [110.0, 111.0, 109.0, 110.5, 109.5];
        let s = shift(&before, &after);
        assert!((s.relative_change.unwrap() - 0.10).abs() < 1e-12);
        let (lo, hi) = s.ci95.unwrap();
        assert!(
            lo < 0.10 && 0.10 < hi && lo > 0.08 && hi < 0.12,
            "{lo} {hi}"
        );
    }

    #[test]
    fn zero_means_have_no_relative_change() {
        let s = shift(&[0.0, 0.0, 0.0], &[0.1, 0.2, 0.1]);
        assert_eq!(s.relative_change, None);
        assert_eq!(s.ci95, None);
        let single = shift(&[1.0], &[2.0, 2.1]);
        assert!(single.relative_change.is_some());
        assert_eq!(single.ci95, None);
    }
}
