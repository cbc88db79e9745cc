//! Verdicts on hand-made runs: each flag, each refusal, each edge case, and
//! what the reports and exit codes say about them.

mod verdicts_common;

use verdicts_common::*;
use xtask::baseline::{self, class::FingerprintClass};
use xtask::compare::verdict::{OutputVerdict, Policy, Verdict};
use xtask::compare::{compare_runs, compare_with_baselines, report, Comparison};
use xtask::fixtures::{cpu_fingerprint, failed_trial, gpu_fingerprint, ok_trial, run, workload};
use xtask::run_record::{RunRecord, WorkloadRun};

fn tput(values: &[f64], hash: &str) -> Vec<xtask::run_record::TrialSummary> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            ok_trial(
                i as u32,
                &[("output_throughput", *v), ("p50_ttft_ms", 10_000.0 / v)],
                hash,
            )
        })
        .collect()
}

fn one(w: WorkloadRun) -> RunRecord {
    run(gpu_fingerprint(), vec![w])
}

fn compare(a: &RunRecord, b: &RunRecord) -> Comparison {
    compare_runs(("aaaa", a), ("bbbb", b), &[], &Policy::default()).unwrap()
}

fn metric<'a>(c: &'a Comparison, name: &str) -> &'a xtask::compare::verdict::MetricResult {
    c.workloads[0]
        .metrics
        .iter()
        .find(|m| m.metric == name)
        .unwrap()
}

const BASE: [f64; 5] = [1000.0, 1010.0, 990.0, 1005.0, 995.0];

#[test]
fn clear_drop_is_regressed_with_exit_code_1() {
    let a = one(workload("w", tput(&BASE, "h")));
    let slower: Vec<f64> = BASE.iter().map(|v| v * 0.9).collect();
    let b = one(workload("w", tput(&slower, "h")));
    let c = compare(&a, &b);
    let m = metric(&c, "output_throughput");
    assert_eq!(m.verdict, Verdict::Regressed);
    assert!((m.change.unwrap() + 0.1).abs() < 1e-9);
    assert!(m.ci_low.unwrap() < -0.1 && m.ci_high.unwrap() > -0.1);
    // latency went up by 1/0.9: also a regression (lower is better)
    assert_eq!(metric(&c, "p50_ttft_ms").verdict, Verdict::Regressed);
    assert_eq!(c.exit_code(), 1);
    let md = report::markdown(&c);
    assert!(md.starts_with("### ❌"), "{md}");
    // title, the design's note, then the counts
    assert!(md.lines().nth(2).unwrap().contains("trial-level"), "{md}");
    assert!(md.lines().nth(4).unwrap().contains("2 regressed"), "{md}");
    // the other direction is an improvement and exits 0
    let back = compare(&b, &a);
    assert_eq!(
        metric(&back, "output_throughput").verdict,
        Verdict::Improved
    );
    assert_eq!(back.exit_code(), 0);
}

#[test]
fn a_spec_threshold_override_raises_the_bar() {
    let a = one(workload("w", tput(&BASE, "h")));
    let slower: Vec<f64> = BASE.iter().map(|v| v * 0.97).collect();
    let b = one(workload("w", tput(&slower, "h")));
    assert_eq!(
        metric(&compare(&a, &b), "output_throughput").verdict,
        Verdict::Regressed
    );
    let mut lenient = workload("w", tput(&slower, "h"));
    lenient.spec = serde_json::json!({"name": "w", "thresholds": {"output_throughput": 0.05}});
    let c = compare(&a, &one(lenient));
    let m = metric(&c, "output_throughput");
    assert_eq!(m.threshold, 0.05);
    assert_ne!(m.verdict, Verdict::Regressed);
    // a bad override is a usage error, not a silent default
    let mut bad = workload("w", tput(&slower, "h"));
    bad.spec = serde_json::json!({"thresholds": {"output_throughput": 2.0}});
    assert!(compare_runs(("a", &a), ("b", &one(bad)), &[], &Policy::default()).is_err());
}

#[test]
fn quiet_identical_runs_are_unchanged() {
    let a = one(workload("w", tput(&BASE, "h")));
    let jitter: Vec<f64> = BASE.iter().rev().copied().collect();
    let c = compare(&a, &one(workload("w", tput(&jitter, "h"))));
    assert_eq!(metric(&c, "output_throughput").verdict, Verdict::Unchanged);
    assert_eq!(c.exit_code(), 0);
    // exactly repeated values on both sides: unchanged without a test
    let flat = one(workload("w", tput(&[1000.0; 3], "h")));
    let c = compare(&flat, &flat.clone());
    assert_eq!(metric(&c, "output_throughput").verdict, Verdict::Unchanged);
}

#[test]
fn output_change_is_its_own_flag() {
    let a = one(workload("w", tput(&BASE, "h1")));
    let b = one(workload("w", tput(&BASE, "h2")));
    let c = compare(&a, &b);
    let w = &c.workloads[0];
    assert_eq!(w.output.as_ref().unwrap().verdict, OutputVerdict::Changed);
    assert_eq!(
        metric(&c, "output_throughput").verdict,
        Verdict::Unchanged,
        "speed judged apart"
    );
    assert_eq!(c.summary().output_changed_greedy, 1);
    assert_eq!(c.exit_code(), 1, "greedy output changed");
    assert!(report::markdown(&c).contains("OUTPUT-CHANGED"));
    assert!(report::terminal(&c).contains("OUTPUT-CHANGED"));
    // a baseline whose own trials disagree cannot judge outputs (measured on
    // the H100: Poisson arrivals batch differently in every trial)
    let mut mixed = tput(&BASE, "h1");
    mixed[1].output_hash = Some("h1b".into());
    let c = compare(&one(workload("w", mixed)), &b);
    let o = c.workloads[0].output.as_ref().unwrap();
    assert_eq!(o.verdict, OutputVerdict::Nondeterministic);
    assert!(o
        .note
        .as_deref()
        .unwrap()
        .contains("2 distinct outputs across the baseline"));
    assert_eq!(c.exit_code(), 0);
    // a deterministic baseline and a candidate that starts to vary: changed
    let mut varying = tput(&BASE, "h1");
    varying[4].output_hash = Some("h9".into());
    let c = compare(&a, &one(workload("w", varying)));
    assert_eq!(
        c.workloads[0].output.as_ref().unwrap().verdict,
        OutputVerdict::Changed
    );
    // sampled workloads: reported, not failed
    let mut sampled = workload("w", tput(&BASE, "h2"));
    sampled.spec = serde_json::json!({"sampling": {"temperature": 0.8}});
    let c = compare(&a, &one(sampled));
    assert_eq!(c.summary().output_changed, 1);
    assert_eq!(c.exit_code(), 0);
}

#[test]
fn class_mismatch_gives_no_verdict_and_names_the_fields() {
    let a = one(workload("w", tput(&BASE, "h")));
    let mut other = workload("w", tput(&[500.0, 510.0, 490.0], "x"));
    other.engine_config = serde_json::json!({"max_num_seqs": 1});
    let mut b = run(cpu_fingerprint(), vec![other]);
    b.fingerprint.model_hash = "m2".into();
    let c = compare(&a, &b);
    let w = &c.workloads[0];
    let why = w.no_verdict.as_deref().unwrap();
    for field in [
        "device",
        "gpu_model",
        "host_cpu",
        "model_hash",
        "engine_config",
    ] {
        assert!(why.contains(field), "{why}");
    }
    assert!(w.metrics.is_empty() && w.output.is_none());
    assert!(!c.has_verdicts());
    assert_eq!(c.exit_code(), 0);
    assert!(report::terminal(&c).contains("no verdict: different fingerprint classes"));

    // --across engine_config: only that field may differ
    let mut slow = workload("w", tput(&[500.0, 505.0, 495.0, 502.0, 498.0], "h"));
    slow.engine_config = serde_json::json!({"max_num_seqs": 1});
    let c = compare_runs(
        ("a", &a),
        ("b", &one(slow)),
        &["engine_config".into()],
        &Policy::default(),
    )
    .unwrap();
    assert_eq!(metric(&c, "output_throughput").verdict, Verdict::Regressed);
    assert_eq!(c.workloads[0].class_differences[0].field, "engine_config");
    assert!(report::terminal(&c).contains("compared across engine_config"));
    assert!(compare_runs(("a", &a), ("b", &b), &["commit".into()], &Policy::default()).is_err());
}

#[test]
fn workloads_in_one_run_only_are_listed_not_dropped() {
    let a = run(
        gpu_fingerprint(),
        vec![
            workload("w", tput(&BASE, "h")),
            workload("old", tput(&BASE, "h")),
        ],
    );
    let b = run(
        gpu_fingerprint(),
        vec![
            workload("w", tput(&BASE, "h")),
            workload("new", tput(&BASE, "h")),
        ],
    );
    let c = compare(&a, &b);
    let why: Vec<(&str, &str)> = c
        .workloads
        .iter()
        .filter_map(|w| w.no_verdict.as_deref().map(|n| (w.name.as_str(), n)))
        .collect();
    assert_eq!(
        why,
        vec![("new", "only in run bbbb"), ("old", "only in run aaaa")]
    );
}

#[test]
fn failed_trials_are_counted_and_new_failures_fail_the_check() {
    let a = one(workload("w", tput(&BASE, "h")));
    let mut trials = tput(&BASE[..3], "h");
    trials.push(failed_trial(
        3,
        "engine exit status: 101; CUDA error: out of memory",
    ));
    trials.push(failed_trial(4, "timed out"));
    let c = compare(&a, &one(workload("w", trials)));
    let t = c.workloads[0].trials.as_ref().unwrap();
    assert_eq!(
        (t.candidate_failed, t.candidate_total, t.baseline_failed),
        (2, 5, 0)
    );
    assert!(t.more_failures);
    assert_eq!(metric(&c, "output_throughput").n_candidate, 3);
    assert_eq!(c.exit_code(), 1);
    let md = report::markdown(&c);
    assert!(md.contains("failed more trials"), "{md}");
    assert!(md.contains("out of memory"), "{md}");
}

#[test]
fn fewer_than_two_ok_trials_is_inconclusive_with_a_reason() {
    let a = one(workload("w", tput(&BASE, "h")));
    let mut trials = tput(&[900.0], "h");
    trials.push(failed_trial(1, "crash"));
    let c = compare(&a, &one(workload("w", trials)));
    let m = metric(&c, "output_throughput");
    assert_eq!(m.verdict, Verdict::Inconclusive);
    assert!(m.p_value.is_none() && m.mde.is_none());
    assert!(
        m.note.as_deref().unwrap().contains("1 in the candidate"),
        "{:?}",
        m.note
    );
}

#[test]
fn zero_values_are_not_tested_on_the_log_scale() {
    let zero = |v: f64| {
        (0..3)
            .map(|i| ok_trial(i, &[("mean_queue_ms", v * i as f64)], "h"))
            .collect()
    };
    let c = compare(
        &one(workload("w", zero(1.0))),
        &one(workload("w", zero(2.0))),
    );
    let m = metric(&c, "mean_queue_ms");
    assert_eq!(m.verdict, Verdict::Inconclusive);
    assert!(m.note.as_deref().unwrap().contains("undefined at zero"));
    let all_zero: Vec<_> = (0..3)
        .map(|i| ok_trial(i, &[("mean_queue_ms", 0.0)], "h"))
        .collect();
    let z = one(workload("w", all_zero));
    assert_eq!(
        metric(&compare(&z, &z.clone()), "mean_queue_ms").verdict,
        Verdict::Unchanged
    );
}

#[test]
fn against_committed_baselines() {
    let root = tempfile::tempdir().unwrap();
    let mut r = rng(7);
    let fp = gpu_fingerprint();
    // a full history (5 runs): the run-to-run spread is known
    for id in [
        "base-run-1",
        "base-run-2",
        "base-run-3",
        "base-run-4",
        "base-run",
    ] {
        let base = simulated_run(&mut r, &fp, &GPU_NOISE, 5, &|_, _| 1.0);
        let promoted = baseline::promote(root.path(), id, &base).unwrap();
        assert_eq!(promoted.promoted.len(), WORKLOADS.len());
    }

    let slower = simulated_run(&mut r, &fp, &GPU_NOISE, 5, &|w, m| {
        if w == "chat" && m.contains("throughput") {
            0.9
        } else {
            1.0
        }
    });
    let c = compare_with_baselines(root.path(), "cand-run", &slower, &Policy::default()).unwrap();
    assert!(c.has_verdicts());
    let chat = c.workloads.iter().find(|w| w.name == "chat").unwrap();
    let tput = chat
        .metrics
        .iter()
        .find(|m| m.metric == "output_throughput")
        .unwrap();
    assert_eq!(tput.verdict, Verdict::Regressed);
    assert_eq!(c.exit_code(), 1);
    assert_eq!(chat.baseline.as_ref().unwrap().run_id, "base-run");

    // another GPU: no baseline of its class, and the nearest one is named
    let mut other_gpu = slower.clone();
    other_gpu.fingerprint.gpus[0].name = "NVIDIA H200".into();
    let c = compare_with_baselines(root.path(), "x", &other_gpu, &Policy::default()).unwrap();
    assert!(!c.has_verdicts());
    let why = c.workloads[0].no_verdict.as_deref().unwrap();
    assert!(
        why.contains("gpu_model: NVIDIA H200 vs NVIDIA H100 80GB HBM3"),
        "{why}"
    );
    let class = FingerprintClass::of(&other_gpu.fingerprint, &other_gpu.workloads[0]);
    assert!(why.contains(&class.hash()), "{why}");
}

#[test]
fn reports_carry_summary_details_and_json() {
    let a = one(workload("w", tput(&BASE, "h")));
    let slower: Vec<f64> = BASE.iter().map(|v| v * 0.9).collect();
    let c = compare(&a, &one(workload("w", tput(&slower, "h"))));
    let md = report::markdown(&c);
    let details = md.find("<details>").unwrap();
    assert!(md.find("regressed").unwrap() < details, "summary first");
    assert!(md[details..].contains("| output_throughput (tok/s) | 1000, 1010, 990.0, 1005, 995.0 | 900.0, 909.0, 891.0, 904.5, 895.5 |"), "{md}");
    assert!(md[details..].contains("fingerprint class"));
    assert!(md.contains("run `aaaa`") && md.contains("run `bbbb`"));
    let json: serde_json::Value = serde_json::from_str(&report::json(&c)).unwrap();
    assert_eq!(json["exit_code"], 1);
    assert_eq!(json["summary"]["regressed"], 2);
    assert_eq!(
        json["comparison"]["workloads"][0]["metrics"][0]["verdict"],
        "REGRESSED"
    );
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("step_summary.md");
    std::fs::write(&summary, "earlier step\n").unwrap();
    report::append_markdown(&summary, &c).unwrap();
    let text = std::fs::read_to_string(&summary).unwrap();
    assert!(
        text.starts_with("earlier step\n### ❌ dyno bench"),
        "{text}"
    );
}

#[test]
fn a_microsecond_latency_change_is_not_flagged_however_significant() {
    // Queue time 2.0 µs → 2.6 µs (+30 %, tight trials): below the 5 µs floor.
    // The same +30 % on a millisecond-scale TPOT is a regression.
    let trials = |queue: f64, tpot: f64| -> Vec<xtask::run_record::TrialSummary> {
        (0..5)
            .map(|i| {
                let jitter = 1.0 + 0.001 * i as f64;
                ok_trial(
                    i,
                    &[
                        ("mean_queue_ms", queue * jitter),
                        ("p50_tpot_ms", tpot * jitter),
                    ],
                    "h",
                )
            })
            .collect()
    };
    let a = one(workload("w", trials(0.0020, 0.60)));
    let b = one(workload("w", trials(0.0026, 0.78)));
    let c = compare(&a, &b);
    let queue = metric(&c, "mean_queue_ms");
    assert_eq!(queue.verdict, Verdict::Unchanged, "{queue:?}");
    assert!(
        queue.note.as_deref().unwrap_or("").contains("floor"),
        "{queue:?}"
    );
    assert_eq!(metric(&c, "p50_tpot_ms").verdict, Verdict::Regressed);
}
