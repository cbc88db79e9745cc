//! The statistics behind a verdict, on the log of trial values.
//!
//! Why logs: speed metrics are positive and their noise is multiplicative
//! (a 2% jitter is 2% at any scale), so a difference of log means is a
//! relative change, its confidence interval maps back through `exp`, and the
//! test treats a halving and a doubling symmetrically. Why Welch: the two
//! sides come from different builds and often different noise; Welch's
//! t-test does not assume equal variances. Trials are the unit of
//! replication: each value here is one trial's metric.

use statrs::distribution::{ContinuousCDF, StudentsT};
use thiserror::Error;

use crate::stats::mean_var;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum StatsError {
    #[error("fewer than 2 values on a side (baseline {baseline}, candidate {candidate})")]
    TooFewValues { baseline: usize, candidate: usize },
    #[error("non-positive or non-finite value {value}: the log scale is undefined")]
    NotPositive { value: f64 },
    #[error("the baseline holds {runs} run(s); the run-to-run spread needs {needed}")]
    ShortHistory { runs: usize, needed: usize },
}

/// Welch's t-test of `log(candidate)` against `log(baseline)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogComparison {
    pub n_baseline: usize,
    pub n_candidate: usize,
    /// mean(log candidate) − mean(log baseline).
    pub log_diff: f64,
    /// Standard error of `log_diff`; 0 when both sides have zero variance.
    pub se: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
}

fn logs(xs: &[f64]) -> Result<Vec<f64>, StatsError> {
    xs.iter()
        .map(|&x| {
            if x > 0.0 && x.is_finite() {
                Ok(x.ln())
            } else {
                Err(StatsError::NotPositive { value: x })
            }
        })
        .collect()
}

/// Quantile of Student's t with `df` degrees of freedom.
fn t_quantile(df: f64, p: f64) -> f64 {
    let p = p.clamp(0.0, 1.0);
    match StudentsT::new(0.0, 1.0, df) {
        Ok(t) => t.inverse_cdf(p),
        // df is always > 0 here; a normal quantile is the limit anyway.
        Err(_) => f64::NAN,
    }
}

/// P(T > t) for Student's t with `df` degrees of freedom.
fn t_sf(df: f64, t: f64) -> f64 {
    match StudentsT::new(0.0, 1.0, df) {
        Ok(d) => d.sf(t),
        Err(_) => f64::NAN,
    }
}

impl LogComparison {
    pub fn new(baseline: &[f64], candidate: &[f64]) -> Result<Self, StatsError> {
        if baseline.len() < 2 || candidate.len() < 2 {
            return Err(StatsError::TooFewValues {
                baseline: baseline.len(),
                candidate: candidate.len(),
            });
        }
        let (mb, vb) = mean_var(&logs(baseline)?);
        let (mc, vc) = mean_var(&logs(candidate)?);
        let (nb, nc) = (baseline.len() as f64, candidate.len() as f64);
        let (sb, sc) = (vb / nb, vc / nc);
        let se = (sb + sc).sqrt();
        let df_denominator = sb * sb / (nb - 1.0) + sc * sc / (nc - 1.0);
        let df = if df_denominator > 0.0 {
            (sb + sc).powi(2) / df_denominator
        } else {
            nb + nc - 2.0
        };
        Ok(LogComparison {
            n_baseline: baseline.len(),
            n_candidate: candidate.len(),
            log_diff: mc - mb,
            se,
            df,
        })
    }

    /// Both sides repeated one value each: the t statistic is undefined and
    /// the difference, if any, is exact.
    pub fn zero_variance(&self) -> bool {
        self.se == 0.0
    }

    /// candidate / baseline − 1 (ratio of geometric means).
    pub fn relative_change(&self) -> f64 {
        self.log_diff.exp_m1()
    }

    /// Two-sided p-value for "no change".
    pub fn p_value(&self) -> f64 {
        if self.zero_variance() {
            return if self.log_diff == 0.0 { 1.0 } else { 0.0 };
        }
        (2.0 * t_sf(self.df, (self.log_diff / self.se).abs())).min(1.0)
    }

    /// Two-sided confidence interval of the relative change at `confidence`.
    pub fn relative_ci(&self, confidence: f64) -> (f64, f64) {
        let half = if self.zero_variance() {
            0.0
        } else {
            t_quantile(self.df, 0.5 + confidence / 2.0) * self.se
        };
        (
            (self.log_diff - half).exp_m1(),
            (self.log_diff + half).exp_m1(),
        )
    }

    /// p-value of the two one-sided tests (TOST) that the relative change
    /// lies inside (−threshold, +threshold): small means "equivalent".
    /// Rejecting both at level α is the same as the (1 − 2α) interval lying
    /// inside the bounds.
    pub fn equivalence_p(&self, threshold: f64) -> f64 {
        let lower = (-threshold).ln_1p();
        let upper = threshold.ln_1p();
        if self.zero_variance() {
            return if self.log_diff > lower && self.log_diff < upper {
                0.0
            } else {
                1.0
            };
        }
        let p_lower = t_sf(self.df, (self.log_diff - lower) / self.se);
        let p_upper = t_sf(self.df, (upper - self.log_diff) / self.se);
        p_lower.max(p_upper)
    }

    /// The smallest relative change a two-sided test at level `alpha` would
    /// detect with probability `power`, given this noise and trial count.
    pub fn minimum_detectable_effect(&self, alpha: f64, power: f64) -> f64 {
        if self.zero_variance() {
            return 0.0;
        }
        let t_alpha = t_quantile(self.df, 1.0 - alpha / 2.0);
        let t_beta = t_quantile(self.df, power);
        ((t_alpha + t_beta) * self.se).exp_m1()
    }
}

impl LogComparison {
    /// A paired comparison: `pairs` holds (baseline, candidate) values of
    /// the same block of an interleaved A/B session. Each block's log ratio
    /// is one observation, so whatever drifted during the session (clocks,
    /// temperature, neighbours) cancels within the block, and the test is a
    /// one-sample t-test of the mean log ratio (df = blocks − 1).
    pub fn paired(pairs: &[(f64, f64)]) -> Result<Self, StatsError> {
        if pairs.len() < 2 {
            return Err(StatsError::TooFewValues {
                baseline: pairs.len(),
                candidate: pairs.len(),
            });
        }
        let b: Vec<f64> = pairs.iter().map(|p| p.0).collect();
        let c: Vec<f64> = pairs.iter().map(|p| p.1).collect();
        let diffs: Vec<f64> = logs(&c)?
            .into_iter()
            .zip(logs(&b)?)
            .map(|(lc, lb)| lc - lb)
            .collect();
        let (mean, var) = mean_var(&diffs);
        let n = diffs.len() as f64;
        Ok(LogComparison {
            n_baseline: pairs.len(),
            n_candidate: pairs.len(),
            log_diff: mean,
            se: (var / n).sqrt(),
            df: n - 1.0,
        })
    }

    /// A candidate run against a baseline history of several runs, with
    /// trials nested in runs: log value = run effect + trial noise. The
    /// run-to-run variance σ²_b is what makes two back-to-back runs of one
    /// binary differ by more than their trials suggest; it can only be
    /// estimated from several runs, so fewer than `MIN_HISTORY_RUNS` is an
    /// error (the caller reports INCONCLUSIVE and says why).
    ///
    /// With R baseline runs of n_r trials, run means m_r, their variance
    /// s²_m (df R − 1), the pooled within-run variance MSW (baseline and
    /// candidate trials, df N − R − 1) and h = mean(1/n_r):
    /// σ²_b ≈ s²_m − h·MSW, and the variance of (candidate mean − mean of
    /// run means) is σ²_b(1 + 1/R) + MSW(1/n_c + h/R)
    /// = (1 + 1/R)·s²_m + (1/n_c − h)·MSW, with Satterthwaite's df. When
    /// the history shows no run-level spread beyond its trials (s²_m below
    /// h·MSW) the trial-level variance MSW(1/n_c + h/R) is used instead.
    pub fn nested(history: &[Vec<f64>], candidate: &[f64]) -> Result<Self, StatsError> {
        let runs: Vec<&Vec<f64>> = history.iter().filter(|r| !r.is_empty()).collect();
        let n_c = candidate.len();
        if n_c < 1 {
            return Err(StatsError::TooFewValues {
                baseline: runs.iter().map(|r| r.len()).sum(),
                candidate: 0,
            });
        }
        if runs.len() < MIN_HISTORY_RUNS {
            return Err(StatsError::ShortHistory {
                runs: runs.len(),
                needed: MIN_HISTORY_RUNS,
            });
        }
        let run_logs: Vec<Vec<f64>> = runs.iter().map(|r| logs(r)).collect::<Result<_, _>>()?;
        let cand_logs = logs(candidate)?;
        let r = run_logs.len() as f64;
        let run_means: Vec<f64> = run_logs.iter().map(|l| mean_var(l).0).collect();
        let (grand, s2_m) = mean_var(&run_means);
        let (cand_mean, _) = mean_var(&cand_logs);
        // Pooled within-run sum of squares over every run with 2+ trials,
        // the candidate's included.
        let mut ss_w = 0.0;
        let mut df_w = 0.0;
        for l in run_logs.iter().chain(std::iter::once(&cand_logs)) {
            if l.len() >= 2 {
                let (_, v) = mean_var(l);
                ss_w += v * (l.len() as f64 - 1.0);
                df_w += l.len() as f64 - 1.0;
            }
        }
        let msw = if df_w > 0.0 { ss_w / df_w } else { 0.0 };
        let h = run_logs.iter().map(|l| 1.0 / l.len() as f64).sum::<f64>() / r;
        let nc = n_c as f64;
        let trial_only = msw * (1.0 / nc + h / r);
        let a = 1.0 + 1.0 / r;
        let b = 1.0 / nc - h;
        let with_runs = a * s2_m + b * msw;
        let (var, df) = if s2_m > h * msw && with_runs > trial_only {
            let denom = (a * s2_m).powi(2) / (r - 1.0)
                + if df_w > 0.0 {
                    (b * msw).powi(2) / df_w
                } else {
                    0.0
                };
            let df = if denom > 0.0 {
                with_runs * with_runs / denom
            } else {
                r - 1.0
            };
            (with_runs, df)
        } else {
            (trial_only, df_w.max(1.0))
        };
        Ok(LogComparison {
            n_baseline: run_logs.iter().map(Vec::len).sum(),
            n_candidate: n_c,
            log_diff: cand_mean - grand,
            se: var.max(0.0).sqrt(),
            df,
        })
    }
}

/// Baseline runs needed before the run-to-run spread is estimated at all
/// (two runs give one degree of freedom: an estimate too wild to act on).
pub const MIN_HISTORY_RUNS: usize = 3;

/// Holm's step-down adjustment with weights: adjusted p-values in the
/// input order; reject where the adjusted value is below α.
///
/// Holm controls the family-wise error rate (the chance of *any* false flag
/// in a comparison) under any dependence between tests. Our metrics are
/// strongly dependent (all percentiles of one run move together), which
/// rules out corrections that assume independence, and a pull request's
/// check fails on a single flag, so FWER (not the false discovery rate of
/// Benjamini–Hochberg) is the error maintainers feel. Holm is uniformly more
/// powerful than Bonferroni with the same guarantee.
///
/// Weights (Holm 1979, weighted form) spend more of α on the tests that
/// matter most; equal weights give the textbook procedure. Test i is first
/// compared with α·wᵢ/Σw; after each rejection its weight goes back to the
/// remaining tests.
pub fn holm_adjust(p_values: &[f64], weights: &[f64]) -> Vec<f64> {
    let m = p_values.len();
    assert_eq!(m, weights.len(), "one weight per p-value");
    let ratio = |i: usize| p_values[i] / weights[i];
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| ratio(a).total_cmp(&ratio(b)));
    let mut remaining: f64 = weights.iter().sum();
    let mut adjusted = vec![1.0; m];
    let mut running_max: f64 = 0.0;
    for &i in &order {
        let scaled = (remaining * ratio(i)).min(1.0);
        running_max = running_max.max(scaled);
        adjusted[i] = running_max;
        remaining -= weights[i];
    }
    adjusted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn welch_matches_a_hand_computed_case() {
        // logs of e^1,e^2,e^3 vs e^2,e^4,e^6: means 2 and 4, variances 1 and 4.
        let e = std::f64::consts::E;
        let a = [e, e.powi(2), e.powi(3)];
        let b = [e.powi(2), e.powi(4), e.powi(6)];
        let c = LogComparison::new(&a, &b).unwrap();
        assert!(close(c.log_diff, 2.0, 1e-12));
        assert!(close(c.se, (1.0f64 / 3.0 + 4.0 / 3.0).sqrt(), 1e-12));
        // df = (5/3)^2 / ((1/9)/2 + (16/9)/2) = 25/9 / (17/18) = 50/17
        assert!(close(c.df, 50.0 / 17.0, 1e-12));
        // t = 2/sqrt(5/3) = 1.549; two-sided p with df 2.94 is about 0.22
        let p = c.p_value();
        assert!(p > 0.2 && p < 0.24, "p = {p}");
    }

    #[test]
    fn identical_sides_have_p_one_and_zero_change() {
        let c = LogComparison::new(&[5.0, 5.0, 5.0], &[5.0, 5.0]).unwrap();
        assert!(c.zero_variance());
        assert_eq!(c.p_value(), 1.0);
        assert_eq!(c.relative_change(), 0.0);
        assert_eq!(c.equivalence_p(0.02), 0.0);
    }

    #[test]
    fn repeated_values_have_exactly_zero_variance() {
        let c = LogComparison::new(&[0.003; 3], &[0.002; 3]).unwrap();
        assert!(c.zero_variance());
    }

    #[test]
    fn exact_difference_without_noise_is_certain() {
        let c = LogComparison::new(&[10.0, 10.0], &[11.0, 11.0]).unwrap();
        assert_eq!(c.p_value(), 0.0);
        assert!(close(c.relative_change(), 0.1, 1e-12));
        assert_eq!(
            c.relative_ci(0.95),
            (c.relative_change(), c.relative_change())
        );
        assert_eq!(c.equivalence_p(0.05), 1.0);
    }

    #[test]
    fn rejects_too_few_and_non_positive_values() {
        assert!(matches!(
            LogComparison::new(&[1.0], &[1.0, 2.0]),
            Err(StatsError::TooFewValues {
                baseline: 1,
                candidate: 2
            })
        ));
        assert!(matches!(
            LogComparison::new(&[0.0, 1.0], &[1.0, 2.0]),
            Err(StatsError::NotPositive { .. })
        ));
    }

    #[test]
    fn ci_brackets_the_estimate_and_widens_with_confidence() {
        let c = LogComparison::new(&[100.0, 102.0, 98.0], &[95.0, 96.0, 94.5]).unwrap();
        let (lo95, hi95) = c.relative_ci(0.95);
        let (lo99, hi99) = c.relative_ci(0.99);
        let r = c.relative_change();
        assert!(lo95 < r && r < hi95);
        assert!(lo99 < lo95 && hi99 > hi95);
    }

    #[test]
    fn tost_agrees_with_the_90_percent_interval() {
        let c =
            LogComparison::new(&[100.0, 100.5, 99.5, 100.2], &[100.1, 99.8, 100.4, 99.9]).unwrap();
        let (lo, hi) = c.relative_ci(0.90);
        for thr in [0.002, 0.005, 0.01, 0.02] {
            let inside = lo > -thr && hi < thr;
            // the bounds are asymmetric on the relative scale (ln(1-t), ln(1+t)),
            // so only check thresholds far from the interval's edges
            if (lo + thr).abs() > 1e-3 && (hi - thr).abs() > 1e-3 {
                assert_eq!(c.equivalence_p(thr) < 0.05, inside, "thr {thr}");
            }
        }
    }

    #[test]
    fn mde_shrinks_with_more_trials() {
        let few = LogComparison::new(&[100.0, 101.0, 99.0], &[100.0, 101.0, 99.0]).unwrap();
        let many_side = [100.0, 101.0, 99.0, 100.0, 101.0, 99.0, 100.0, 101.0, 99.0];
        let many = LogComparison::new(&many_side, &many_side).unwrap();
        let (a, b) = (
            few.minimum_detectable_effect(0.05, 0.8),
            many.minimum_detectable_effect(0.05, 0.8),
        );
        assert!(a > b && b > 0.0, "{a} {b}");
    }

    #[test]
    fn holm_matches_a_textbook_example() {
        let adj = holm_adjust(&[0.01, 0.04, 0.03, 0.005], &[1.0; 4]);
        // sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> max 0.06
        let want = [0.03, 0.06, 0.06, 0.02];
        for (a, w) in adj.iter().zip(want) {
            assert!(close(*a, w, 1e-12), "{adj:?}");
        }
        assert!(holm_adjust(&[], &[]).is_empty());
    }

    #[test]
    fn weighted_holm_spends_more_alpha_on_heavier_tests() {
        // weights 3:1 of 4: the heavy test is first held to α·3/4, the light one to α/4
        let adj = holm_adjust(&[0.03, 0.045], &[3.0, 1.0]);
        assert!(close(adj[0], 0.04, 1e-12), "{adj:?}");
        // after the heavy one is rejected the light one gets all of α
        assert!(close(adj[1], 0.045, 1e-12), "{adj:?}");
        // equal weights would have rejected neither at α = 0.05
        assert!(holm_adjust(&[0.03, 0.045], &[1.0, 1.0])
            .iter()
            .all(|p| *p > 0.05));
        // scaling all weights changes nothing
        assert_eq!(
            holm_adjust(&[0.01, 0.2], &[2.0, 6.0]),
            holm_adjust(&[0.01, 0.2], &[1.0, 3.0])
        );
    }

    #[test]
    fn paired_test_cancels_a_shared_drift() {
        // both sides drift by the same factor per block: the ratio is 1.05 throughout
        let pairs: Vec<(f64, f64)> = (0..5)
            .map(|i| {
                let drift = 1.0 + 0.01 * i as f64;
                (
                    100.0 * drift,
                    105.0 * drift * (1.0 + 0.001 * (i % 2) as f64),
                )
            })
            .collect();
        let c = LogComparison::paired(&pairs).unwrap();
        assert_eq!(c.df, 4.0);
        assert!((c.relative_change() - 0.0505).abs() < 0.002);
        assert!(c.p_value() < 1e-6, "{}", c.p_value());
        // Welch on the same values sees the drift as noise
        let (a, b): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
        assert!(LogComparison::new(&a, &b).unwrap().se > 5.0 * c.se);
        assert!(LogComparison::paired(&pairs[..1]).is_err());
    }

    #[test]
    fn nested_test_needs_three_runs_and_widens_with_run_spread() {
        let tight = vec![vec![100.0, 100.1, 99.9]; 3];
        assert!(matches!(
            LogComparison::nested(&tight[..2], &[100.0, 100.0]),
            Err(StatsError::ShortHistory { runs: 2, needed: 3 })
        ));
        // A candidate without a value is not a short history.
        assert!(matches!(
            LogComparison::nested(&tight, &[]),
            Err(StatsError::TooFewValues { candidate: 0, .. })
        ));
        let c = LogComparison::nested(&tight, &[102.0, 102.1, 101.9]).unwrap();
        assert!(c.p_value() < 0.001, "identical runs: trial noise only");
        // the same trial noise, but the run means spread by ~1%
        let spread = vec![
            vec![99.0, 99.1, 98.9],
            vec![101.0, 101.1, 100.9],
            vec![100.0, 100.1, 99.9],
        ];
        let w = LogComparison::nested(&spread, &[102.0, 102.1, 101.9]).unwrap();
        assert!(w.se > 5.0 * c.se, "{} vs {}", w.se, c.se);
        assert!(
            w.p_value() > 0.05,
            "a 2% change within 1% run spread: {}",
            w.p_value()
        );
        assert!((w.relative_change() - 0.02).abs() < 0.001);
    }
}
