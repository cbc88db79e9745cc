//! From two sides' trials to verdicts: per metric (speed), per workload
//! (outputs, failed trials), with one multiple-testing family per comparison.

use serde::{Deserialize, Serialize};

use super::stats::{holm_adjust, LogComparison, StatsError};
use super::thresholds::Thresholds;
use crate::run_record::{metric_catalog, MetricKind};
use crate::side::Side;
use crate::stats;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    /// Significant after correction, and worse than the threshold.
    Regressed,
    /// Significant after correction, and better than the threshold.
    Improved,
    /// Equivalent: the change is shown to lie within ± the threshold.
    Unchanged,
    /// Neither: the trials cannot tell (see the minimum detectable effect).
    Inconclusive,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Regressed => "REGRESSED",
            Verdict::Improved => "IMPROVED",
            Verdict::Unchanged => "UNCHANGED",
            Verdict::Inconclusive => "INCONCLUSIVE",
        })
    }
}

/// The knobs of the tests. Defaults: α = 0.05 family-wise, power 0.8 for the
/// minimum detectable effect, 95% intervals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub alpha: f64,
    pub power: f64,
    pub confidence: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            alpha: 0.05,
            power: 0.8,
            confidence: 0.95,
        }
    }
}

/// How the two sides' values are related, which decides the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Design {
    /// Two separate runs: Welch's t-test on their trials. Covers the
    /// trial-to-trial noise only, not what differs from one run (one
    /// sitting) to the next.
    TrialLevel,
    /// One interleaved A/B session: each block's log ratio is one paired
    /// observation, so drift during the session cancels.
    Paired,
    /// A run against a committed baseline's history of runs: trials nested
    /// in runs, so the run-to-run spread is part of the test.
    Nested,
}

impl Design {
    pub fn describe(self) -> &'static str {
        match self {
            Design::TrialLevel => {
                "trial-level test of two separate runs: run-to-run drift is not covered (prefer an interleaved A/B)"
            }
            Design::Paired => "interleaved A/B on one machine, paired by block",
            Design::Nested => "against the baseline's run history (trials nested in runs)",
        }
    }
}

/// Two sides of one workload that share a fingerprint class.
#[derive(Debug, Clone)]
pub struct WorkloadPair {
    pub design: Design,
    pub name: String,
    /// Class differences the caller allowed (`compare --across`).
    pub allowed_differences: Vec<crate::baseline::class::FieldDifference>,
    pub baseline: Side,
    pub candidate: Side,
    /// From the candidate's spec: the change under review sets the bar.
    pub thresholds: Thresholds,
    pub greedy: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricResult {
    pub metric: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub kind: MetricKind,
    pub threshold: f64,
    pub n_baseline: usize,
    pub n_candidate: usize,
    /// Geometric means of the ok trials (None when a side has no value).
    pub baseline_mean: Option<f64>,
    pub candidate_mean: Option<f64>,
    /// candidate / baseline − 1.
    pub change: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    pub p_value: Option<f64>,
    /// Holm-adjusted over the whole comparison.
    pub p_adjusted: Option<f64>,
    /// TOST p-value for "within ± threshold".
    pub equivalence_p: Option<f64>,
    /// This test's share of α at the first Holm step (α·w/Σw).
    pub alpha_share: Option<f64>,
    /// Smallest relative change these trials would detect at `alpha_share`
    /// with the policy's power.
    pub mde: Option<f64>,
    pub verdict: Verdict,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutputVerdict {
    Same,
    Changed,
    /// The baseline's own trials disagree: this workload's outputs depend on
    /// timing (e.g. batch composition under open-loop arrivals), so a
    /// difference says nothing about the change under test.
    Nondeterministic,
    /// A side carries no output hash.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputCheck {
    pub verdict: OutputVerdict,
    pub greedy: bool,
    pub baseline_hashes: Vec<String>,
    pub candidate_hashes: Vec<String>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialCheck {
    pub baseline_failed: usize,
    pub baseline_total: usize,
    pub candidate_failed: usize,
    pub candidate_total: usize,
    /// The candidate fails a larger share of its trials than the baseline.
    pub more_failures: bool,
    pub candidate_failures: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadVerdicts {
    pub metrics: Vec<MetricResult>,
    pub output: OutputCheck,
    pub trials: TrialCheck,
}

/// One judged metric before the family's correction is known.
struct Pending {
    result: MetricResult,
    test: Result<LogComparison, String>,
}

fn pending_for(pair: &WorkloadPair) -> Vec<Pending> {
    let mut out = Vec::new();
    for def in metric_catalog() {
        let Some(threshold) = pair.thresholds.for_metric(&def) else {
            continue;
        };
        let b = pair.baseline.values(def.name);
        let c = pair.candidate.values(def.name);
        if b.is_empty() && c.is_empty() {
            continue;
        }
        let test = match pair.design {
            Design::TrialLevel => LogComparison::new(&b, &c),
            Design::Paired => {
                let cb = pair.candidate.values_by_block(def.name);
                let pairs: Vec<(f64, f64)> = pair
                    .baseline
                    .values_by_block(def.name)
                    .into_iter()
                    .filter_map(|(block, vb)| Some((vb, *cb.get(&block)?)))
                    .collect();
                LogComparison::paired(&pairs)
            }
            Design::Nested => LogComparison::nested(&pair.baseline.values_by_run(def.name), &c),
        };
        let test = match test {
            Ok(t) => Ok(t),
            Err(StatsError::TooFewValues { .. }) if pair.design == Design::Paired => Err(format!(
                "{} block(s) with this metric ok on both sides; a paired test needs 2",
                b.len().min(c.len())
            )),
            Err(StatsError::TooFewValues { .. }) => Err(format!(
                "{} ok trial(s) with this metric in the baseline, {} in the candidate; a test needs 2 per side",
                b.len(),
                c.len()
            )),
            Err(StatsError::NotPositive { value }) => Err(format!(
                "a trial value is {value}: relative change undefined at zero"
            )),
            Err(StatsError::ShortHistory { runs, needed }) => Err(format!(
                "the baseline holds {runs} run(s) with this metric: the run-to-run spread needs {needed}, so no flag (promote more runs, or run an interleaved A/B)"
            )),
        };
        let identical = b.len() >= 2 && c.len() >= 2 && b.iter().chain(&c).all(|v| *v == b[0]);
        let (bm, cm) = (stats::geometric_mean(&b), stats::geometric_mean(&c));
        out.push(Pending {
            result: MetricResult {
                metric: def.name.to_string(),
                unit: def.unit.to_string(),
                higher_is_better: def.higher_is_better,
                kind: def.kind,
                threshold,
                n_baseline: b.len(),
                n_candidate: c.len(),
                baseline_mean: bm,
                candidate_mean: cm,
                change: match (bm, cm) {
                    (Some(b), Some(c)) if b > 0.0 => Some(c / b - 1.0),
                    _ => None,
                },
                ci_low: None,
                ci_high: None,
                p_value: None,
                p_adjusted: None,
                equivalence_p: None,
                alpha_share: None,
                mde: None,
                verdict: if identical {
                    Verdict::Unchanged
                } else {
                    Verdict::Inconclusive
                },
                note: None,
            },
            test: match test {
                Err(_) if identical => Err("identical values on both sides".to_string()),
                // Timings never repeat exactly unless they are quantized
                // (e.g. percentiles at the histogram's resolution): the
                // difference is then a rounding step, not a measured effect.
                Ok(t) if t.zero_variance() && t.log_diff != 0.0 => Err(
                    "no trial-to-trial variation on either side (quantized values): no test possible"
                        .to_string(),
                ),
                other => other,
            },
        });
    }
    out
}

/// Latency changes smaller than this (in ms) are never flagged.
pub(crate) const MIN_LATENCY_CHANGE_MS: f64 = 0.005;

fn decide(
    result: &mut MetricResult,
    test: &LogComparison,
    p_adjusted: f64,
    alpha_share: f64,
    policy: &Policy,
) {
    let change = test.relative_change();
    let (lo, hi) = test.relative_ci(policy.confidence);
    let thr = result.threshold;
    let equivalence_p = test.equivalence_p(thr);
    let mde = test.minimum_detectable_effect(alpha_share, policy.power);
    let worse = if result.higher_is_better {
        change < -thr
    } else {
        change > thr
    };
    let better = if result.higher_is_better {
        change > thr
    } else {
        change < -thr
    };
    // A latency change of a few microseconds is below what a step-timed
    // engine resolves (e.g. queue time at 2 µs): no flag, however
    // significant, when the means differ by less than the floor.
    let below_floor = result.unit == "ms"
        && matches!((result.baseline_mean, result.candidate_mean),
            (Some(b), Some(c)) if (c - b).abs() < MIN_LATENCY_CHANGE_MS);
    let (worse, better) = (worse && !below_floor, better && !below_floor);
    let significant = p_adjusted < policy.alpha;
    result.change = Some(change);
    result.ci_low = Some(lo);
    result.ci_high = Some(hi);
    result.p_value = Some(test.p_value());
    result.p_adjusted = Some(p_adjusted);
    result.equivalence_p = Some(equivalence_p);
    result.alpha_share = Some(alpha_share);
    result.mde = Some(mde);
    result.verdict = if significant && worse {
        Verdict::Regressed
    } else if significant && better {
        Verdict::Improved
    } else if equivalence_p < policy.alpha || below_floor {
        Verdict::Unchanged
    } else {
        Verdict::Inconclusive
    };
    result.note = if below_floor && significant {
        Some(format!(
            "a change below the {} µs floor for latencies",
            MIN_LATENCY_CHANGE_MS * 1000.0
        ))
    } else if result.verdict == Verdict::Inconclusive && significant {
        Some(format!(
            "a real change, but its interval crosses the ±{:.0}% threshold",
            thr * 100.0
        ))
    } else if result.verdict == Verdict::Inconclusive {
        Some(format!(
            "{}+{} trials at this noise detect only changes beyond {}",
            test.n_baseline,
            test.n_candidate,
            crate::format::magnitude(mde)
        ))
    } else {
        None
    };
}

fn output_check(pair: &WorkloadPair) -> OutputCheck {
    let b = pair.baseline.output_hashes();
    let c = pair.candidate.output_hashes();
    let mut notes = Vec::new();
    for (side, hashes) in [("baseline", &b), ("candidate", &c)] {
        if hashes.len() > 1 {
            notes.push(format!(
                "{} distinct outputs across the {side}'s trials",
                hashes.len()
            ));
        }
    }
    let verdict = if b.is_empty() || c.is_empty() {
        notes.push("no output hash on one side".into());
        OutputVerdict::Unknown
    } else if b.len() > 1 {
        OutputVerdict::Nondeterministic
    } else if c.iter().all(|h| b.contains(h)) {
        OutputVerdict::Same
    } else {
        OutputVerdict::Changed
    };
    if !pair.greedy && verdict == OutputVerdict::Changed {
        notes.push("sampled (temperature > 0) workload: reported, not failed".into());
    }
    OutputCheck {
        verdict,
        greedy: pair.greedy,
        baseline_hashes: b,
        candidate_hashes: c,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

fn trial_check(pair: &WorkloadPair) -> TrialCheck {
    let (bf, bt) = (pair.baseline.failed_count(), pair.baseline.trials.len());
    let (cf, ct) = (pair.candidate.failed_count(), pair.candidate.trials.len());
    let rate = |f: usize, t: usize| if t == 0 { 0.0 } else { f as f64 / t as f64 };
    TrialCheck {
        baseline_failed: bf,
        baseline_total: bt,
        candidate_failed: cf,
        candidate_total: ct,
        more_failures: rate(cf, ct) > rate(bf, bt),
        candidate_failures: pair.candidate.failures(),
    }
}

/// How a workload's share of α is split between kinds of metric. Throughput
/// is the primary endpoint (what a regression check exists for); latencies
/// are many, correlated, and judged against wider thresholds. With equal
/// weights a lone 5% throughput drop (1% noise, 5 trials) was caught in
/// only ~84% of simulated comparisons of a 4-workload suite; see
/// docs/REGRESSIONS.md.
fn kind_share(kind: MetricKind) -> f64 {
    match kind {
        MetricKind::Throughput => 0.5,
        MetricKind::LatencyCentral => 0.3,
        MetricKind::LatencyTail => 0.2,
        MetricKind::Info => 0.0,
    }
}

/// Holm weights: every workload gets an equal share; inside it, each kind
/// present gets `kind_share` (renormalised over the kinds present), split
/// evenly among its tests.
fn family_weights(kinds_per_workload: &[Vec<MetricKind>]) -> Vec<Vec<f64>> {
    kinds_per_workload
        .iter()
        .map(|kinds| {
            let count = |k: MetricKind| kinds.iter().filter(|x| **x == k).count() as f64;
            let present: f64 = [
                MetricKind::Throughput,
                MetricKind::LatencyCentral,
                MetricKind::LatencyTail,
            ]
            .into_iter()
            .filter(|k| count(*k) > 0.0)
            .map(kind_share)
            .sum();
            kinds
                .iter()
                .map(|k| kind_share(*k) / present / count(*k))
                .collect()
        })
        .collect()
}

/// Judges every pair. All judged metrics of all pairs form one family for
/// the (weighted) Holm correction. Returns the verdicts in pair order and
/// the family size.
pub fn judge(pairs: &[WorkloadPair], policy: &Policy) -> (Vec<WorkloadVerdicts>, usize) {
    let mut pending: Vec<Vec<Pending>> = pairs.iter().map(pending_for).collect();
    let kinds: Vec<Vec<MetricKind>> = pending
        .iter()
        .map(|per_pair| {
            per_pair
                .iter()
                .filter(|p| p.test.is_ok())
                .map(|p| p.result.kind)
                .collect()
        })
        .collect();
    let weights: Vec<f64> = family_weights(&kinds).into_iter().flatten().collect();
    let p_values: Vec<f64> = pending
        .iter()
        .flatten()
        .filter_map(|p| p.test.as_ref().ok().map(|t| t.p_value()))
        .collect();
    let family = p_values.len();
    let total_weight: f64 = weights.iter().sum();
    let adjusted = holm_adjust(&p_values, &weights);
    let mut tests = adjusted.into_iter().zip(weights);
    for per_pair in &mut pending {
        for p in per_pair.iter_mut() {
            match &p.test {
                Ok(test) => {
                    let (p_adj, w) = tests.next().unwrap_or((1.0, 0.0));
                    decide(
                        &mut p.result,
                        test,
                        p_adj,
                        policy.alpha * w / total_weight,
                        policy,
                    );
                }
                Err(why) => p.result.note = Some(why.clone()),
            }
        }
    }
    let verdicts = pairs
        .iter()
        .zip(pending)
        .map(|(pair, per_pair)| WorkloadVerdicts {
            metrics: per_pair.into_iter().map(|p| p.result).collect(),
            output: output_check(pair),
            trials: trial_check(pair),
        })
        .collect();
    (verdicts, family)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_workload_gets_an_equal_share_split_by_kind() {
        use MetricKind::*;
        let full = vec![
            Throughput,
            Throughput,
            LatencyCentral,
            LatencyTail,
            LatencyTail,
        ];
        let latency_only = vec![LatencyCentral, LatencyTail];
        let w = family_weights(&[full, latency_only]);
        let sums: Vec<f64> = w.iter().map(|ws| ws.iter().sum()).collect();
        assert!((sums[0] - 1.0).abs() < 1e-12 && (sums[1] - 1.0).abs() < 1e-12);
        assert!(
            (w[0][0] - 0.25).abs() < 1e-12,
            "half of the share over 2 throughput tests"
        );
        assert!((w[0][2] - 0.3).abs() < 1e-12);
        assert!((w[0][3] - 0.1).abs() < 1e-12);
        // no throughput metric: central and tail share the whole workload 3:2
        assert!((w[1][0] - 0.6).abs() < 1e-12 && (w[1][1] - 0.4).abs() < 1e-12);
    }
}
