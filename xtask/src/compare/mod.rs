//! Regression verdicts: a stored run against the committed baselines of its
//! classes, or two stored runs against each other.
//!
//! stats (Welch on logs, intervals, TOST, MDE, Holm) → verdict (per metric,
//! per workload, one correction family per comparison) → report (terminal,
//! Markdown, JSON, GitHub step summary). `commands::compare` wires it to
//! the store.

mod markdown;
pub mod report;
pub mod stats;
pub mod thresholds;
pub mod verdict;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::baseline::class::FieldDifference;
use crate::baseline::{self, Lookup};
use crate::run_record::{RunRecord, WorkloadRun};
use crate::side::{is_greedy, short_id, Side};
use thresholds::{ThresholdError, Thresholds};
use verdict::{
    judge, Design, MetricResult, OutputCheck, OutputVerdict, Policy, TrialCheck, Verdict,
    WorkloadPair,
};

/// One workload of a comparison: its verdicts, or why it has none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadComparison {
    pub name: String,
    pub baseline: Option<Side>,
    pub candidate: Option<Side>,
    /// Set when the workload gets no verdict: why.
    pub no_verdict: Option<String>,
    /// For a class mismatch: the fields that differ. With `--across`, the
    /// differences that were allowed on purpose (the verdicts stand).
    pub class_differences: Vec<FieldDifference>,
    pub metrics: Vec<MetricResult>,
    pub output: Option<OutputCheck>,
    pub trials: Option<TrialCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// "run X against committed baselines" or "run B against run A".
    pub title: String,
    /// How the sides relate, and so what the tests cover.
    pub design: Design,
    pub policy: Policy,
    /// Tests in the Holm family (judged metrics of all compared workloads).
    pub family_size: usize,
    pub workloads: Vec<WorkloadComparison>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub regressed: usize,
    pub improved: usize,
    pub unchanged: usize,
    pub inconclusive: usize,
    /// Workloads whose outputs changed (greedy ones fail the check).
    pub output_changed: usize,
    pub output_changed_greedy: usize,
    /// Workloads whose candidate failed a larger share of trials.
    pub more_failed_trials: usize,
    pub no_verdict: usize,
    pub workloads: usize,
}

impl Comparison {
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            workloads: self.workloads.len(),
            ..Summary::default()
        };
        for w in &self.workloads {
            if w.no_verdict.is_some() {
                s.no_verdict += 1;
            }
            for m in &w.metrics {
                match m.verdict {
                    Verdict::Regressed => s.regressed += 1,
                    Verdict::Improved => s.improved += 1,
                    Verdict::Unchanged => s.unchanged += 1,
                    Verdict::Inconclusive => s.inconclusive += 1,
                }
            }
            if let Some(o) = &w.output {
                if o.verdict == OutputVerdict::Changed {
                    s.output_changed += 1;
                    if o.greedy {
                        s.output_changed_greedy += 1;
                    }
                }
            }
            if w.trials.as_ref().is_some_and(|t| t.more_failures) {
                s.more_failed_trials += 1;
            }
        }
        s
    }

    /// Whether any workload got a verdict at all.
    pub fn has_verdicts(&self) -> bool {
        self.workloads.iter().any(|w| w.no_verdict.is_none())
    }

    /// 1 when a metric regressed, a greedy workload's output changed, or the
    /// candidate fails more of its trials; 0 otherwise.
    pub fn exit_code(&self) -> i32 {
        let s = self.summary();
        if s.regressed + s.output_changed_greedy + s.more_failed_trials > 0 {
            1
        } else {
            0
        }
    }
}

fn no_verdict(
    name: &str,
    baseline: Option<Side>,
    candidate: Option<Side>,
    why: String,
    class_differences: Vec<FieldDifference>,
) -> WorkloadComparison {
    WorkloadComparison {
        name: name.to_string(),
        baseline,
        candidate,
        no_verdict: Some(why),
        class_differences,
        metrics: vec![],
        output: None,
        trials: None,
    }
}

/// A pair to judge, or the slot's explanation of why not.
enum Slot {
    Pair(WorkloadPair),
    Skip(WorkloadComparison),
}

fn pair_for(
    baseline: Side,
    candidate: Side,
    spec_of_candidate: &WorkloadRun,
    across: &[String],
    design: Design,
) -> Result<Slot, ThresholdError> {
    let name = candidate.class.workload.clone();
    let (allowed, diff): (Vec<FieldDifference>, Vec<FieldDifference>) = baseline
        .class
        .differences(&candidate.class)
        .into_iter()
        .partition(|d| across.contains(&d.field));
    if !diff.is_empty() {
        let fields: Vec<String> = diff.iter().map(|d| d.to_string()).collect();
        return Ok(Slot::Skip(no_verdict(
            &name,
            Some(baseline),
            Some(candidate),
            format!(
                "different fingerprint classes, not comparable: {}",
                fields.join("; ")
            ),
            diff,
        )));
    }
    Ok(Slot::Pair(WorkloadPair {
        design,
        allowed_differences: allowed,
        name,
        baseline,
        candidate,
        thresholds: Thresholds::from_spec(&spec_of_candidate.name, &spec_of_candidate.spec)?,
        greedy: is_greedy(&spec_of_candidate.spec),
    }))
}

fn finish(title: String, design: Design, slots: Vec<Slot>, policy: &Policy) -> Comparison {
    let pairs: Vec<WorkloadPair> = slots
        .iter()
        .filter_map(|s| match s {
            Slot::Pair(p) => Some(p.clone()),
            Slot::Skip(_) => None,
        })
        .collect();
    let (verdicts, family_size) = judge(&pairs, policy);
    let mut verdicts = verdicts.into_iter();
    let workloads = slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Skip(w) => w,
            Slot::Pair(p) => {
                let (metrics, output, trials) = match verdicts.next() {
                    Some(v) => (v.metrics, Some(v.output), Some(v.trials)),
                    None => (Vec::new(), None, None),
                };
                WorkloadComparison {
                    name: p.name,
                    baseline: Some(p.baseline),
                    candidate: Some(p.candidate),
                    no_verdict: None,
                    class_differences: p.allowed_differences,
                    metrics,
                    output,
                    trials,
                }
            }
        })
        .collect();
    Comparison {
        title,
        design,
        policy: *policy,
        family_size,
        workloads,
    }
}

/// Class fields that `--across` may set aside (not `workload`: workloads
/// are matched by name).
pub const ACROSS_FIELDS: [&str; 10] = [
    "device",
    "gpu_model",
    "driver_major",
    "cuda_version",
    "host_cpu",
    "model_hash",
    "workload_hash",
    "engine_config",
    "build_profile",
    "engine_env",
];

/// The class fields the two sides of one A/B session differ in on
/// purpose, which their comparison sets aside: `engine_config` when the
/// sides set different knobs (`--a-set`/`--b-set`), `engine_env` when their
/// engines got different environment switches (`--a-env`/`--b-env`).
pub fn varied_by_session(a: &RunRecord, b: &RunRecord) -> Vec<String> {
    let overrides = |r: &RunRecord| r.interleaved.as_ref().map(|i| i.engine_overrides.clone());
    let mut fields = Vec::new();
    if overrides(a) != overrides(b) {
        fields.push("engine_config".to_string());
    }
    if a.fingerprint.engine_env != b.fingerprint.engine_env {
        fields.push("engine_env".to_string());
    }
    fields
}

/// Run `b` (candidate) against run `a` (baseline), workload by workload
/// (matched by name; a verdict only where the classes match, apart from the
/// class fields named in `across`, which the caller chose to vary, e.g.
/// `engine_config` to measure a config change).
pub fn compare_runs(
    a: (&str, &RunRecord),
    b: (&str, &RunRecord),
    across: &[String],
    policy: &Policy,
) -> Result<Comparison, CompareError> {
    if let Some(bad) = across.iter().find(|f| !ACROSS_FIELDS.contains(&f.as_str())) {
        return Err(CompareError::UnknownField {
            field: bad.clone(),
            known: ACROSS_FIELDS.join(", "),
        });
    }
    let (a_id, a_run) = a;
    let (b_id, b_run) = b;
    let design = match (&a_run.interleaved, &b_run.interleaved) {
        (Some(x), Some(y)) if x.session == y.session && x.side != y.side => Design::Paired,
        _ => Design::TrialLevel,
    };
    let mut slots = Vec::new();
    for w in &b_run.workloads {
        let candidate = Side::from_run(b_id, b_run, w);
        match a_run.workloads.iter().find(|x| x.name == w.name) {
            Some(aw) => slots.push(pair_for(
                Side::from_run(a_id, a_run, aw),
                candidate,
                w,
                across,
                design,
            )?),
            None => slots.push(Slot::Skip(no_verdict(
                &w.name,
                None,
                Some(candidate),
                format!("only in run {}", short_id(b_id)),
                vec![],
            ))),
        }
    }
    for aw in a_run
        .workloads
        .iter()
        .filter(|aw| !b_run.workloads.iter().any(|w| w.name == aw.name))
    {
        slots.push(Slot::Skip(no_verdict(
            &aw.name,
            Some(Side::from_run(a_id, a_run, aw)),
            None,
            format!("only in run {}", short_id(a_id)),
            vec![],
        )));
    }
    let label = |run: &RunRecord, id: &str| match &run.interleaved {
        Some(i) if design == Design::Paired => {
            format!("{:?} = run {} ({})", i.side, short_id(id), i.label)
        }
        _ => format!("run {}", short_id(id)),
    };
    let mut title = format!("{} against {}", label(b_run, b_id), label(a_run, a_id));
    if !across.is_empty() {
        title.push_str(&format!(" (across {})", across.join(", ")));
    }
    Ok(finish(title, design, slots, policy))
}

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Baseline(#[from] baseline::file::BaselineError),
    #[error(transparent)]
    Threshold(#[from] ThresholdError),
    #[error("--across {field}: not a class field that may vary (one of: {known})")]
    UnknownField { field: String, known: String },
}

/// Each workload of a run against the committed baseline of its class.
pub fn compare_with_baselines(
    repo_root: &Path,
    run_id: &str,
    run: &RunRecord,
    policy: &Policy,
) -> Result<Comparison, CompareError> {
    let mut slots = Vec::new();
    for w in &run.workloads {
        let candidate = Side::from_run(run_id, run, w);
        match baseline::lookup(repo_root, &candidate.class)? {
            Lookup::Found { class, baseline } => slots.push(pair_for(
                baseline.to_side(&class.class),
                candidate,
                w,
                &[],
                Design::Nested,
            )?),
            Lookup::Missing {
                explanation,
                nearest,
            } => slots.push(Slot::Skip(no_verdict(
                &w.name,
                None,
                Some(candidate),
                explanation,
                nearest,
            ))),
        }
    }
    Ok(finish(
        format!("run {} against committed baselines", short_id(run_id)),
        Design::Nested,
        slots,
        policy,
    ))
}

/// For `cargo xtask bench`: checks a just-stored run against the committed
/// baselines, prints the table (and the GitHub job summary when set), and
/// returns the exit code, or None when no workload has a baseline of its
/// class (the printed table says why for each).
pub fn against_baseline(
    run_id: &str,
    run: &RunRecord,
    repo_root: &Path,
) -> anyhow::Result<Option<i32>> {
    use anyhow::Context;
    let comparison = compare_with_baselines(repo_root, run_id, run, &Policy::default())
        .context("comparing against committed baselines")?;
    report::print_out(&report::terminal(&comparison))?;
    report::append_step_summary(&comparison).context("appending to $GITHUB_STEP_SUMMARY")?;
    Ok(comparison.has_verdicts().then(|| comparison.exit_code()))
}
