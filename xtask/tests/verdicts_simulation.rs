//! The statistics validated by simulation (deterministic seeds): the false
//! alarm rate of a whole comparison under no change (A/A), and the power to
//! catch a 5% throughput drop.

mod verdicts_common;

use verdicts_common::*;
use xtask::compare::compare_runs;
use xtask::compare::verdict::{Policy, Verdict};
use xtask::fixtures::{cpu_fingerprint, gpu_fingerprint};

const SEEDS: u64 = 1000;

struct AaRates {
    /// Comparisons with any REGRESSED or IMPROVED verdict.
    flagged: f64,
    /// Comparisons with any Holm-adjusted p below α, threshold or not: the
    /// error rate the correction itself controls.
    significant: f64,
    /// Share of all metric verdicts that are UNCHANGED.
    unchanged: f64,
}

fn aa_rates(noise: &Noise, trials_per_side: usize, gpu: bool) -> AaRates {
    let fp = if gpu {
        gpu_fingerprint()
    } else {
        cpu_fingerprint()
    };
    let mut flagged = 0;
    let mut significant = 0;
    let mut unchanged = 0usize;
    let mut total_metrics = 0usize;
    for seed in 0..SEEDS {
        let mut r = rng(seed);
        let a = simulated_run(&mut r, &fp, noise, trials_per_side, &|_, _| 1.0);
        let b = simulated_run(&mut r, &fp, noise, trials_per_side, &|_, _| 1.0);
        let c = compare_runs(("a", &a), ("b", &b), &[], &Policy::default()).unwrap();
        let s = c.summary();
        assert_eq!(s.no_verdict, 0);
        assert_eq!(s.output_changed, 0);
        if s.regressed + s.improved > 0 {
            flagged += 1;
        }
        if c.workloads
            .iter()
            .flat_map(|w| &w.metrics)
            .any(|m| m.p_adjusted.is_some_and(|p| p < 0.05))
        {
            significant += 1;
        }
        unchanged += s.unchanged;
        total_metrics += s.regressed + s.improved + s.unchanged + s.inconclusive;
    }
    AaRates {
        flagged: flagged as f64 / SEEDS as f64,
        significant: significant as f64 / SEEDS as f64,
        unchanged: unchanged as f64 / total_metrics as f64,
    }
}

fn print(label: &str, r: &AaRates) {
    println!(
        "A/A {label}: {:.1}% of comparisons flagged, {:.1}% with any significant metric, {:.1}% of metrics UNCHANGED",
        r.flagged * 100.0,
        r.significant * 100.0,
        r.unchanged * 100.0
    );
}

/// Both A/A checks hold the same bar: at most 5% of simulated comparisons
/// flag anything, and at most 5% have any Holm-adjusted p below 0.05.
fn assert_family_wise_rate_at_most_five_percent(r: &AaRates) {
    assert!(
        r.flagged <= 0.05,
        "family-wise false alarm rate {}",
        r.flagged
    );
    assert!(
        r.significant <= 0.05,
        "Holm's family-wise error rate {}",
        r.significant
    );
}

#[test]
fn aa_cpu_noise_three_trials_flags_at_most_five_percent() {
    let r = aa_rates(&CPU_NOISE, 3, false);
    print("CPU, 3 trials", &r);
    assert_family_wise_rate_at_most_five_percent(&r);
}

#[test]
fn aa_gpu_noise_five_trials_flags_at_most_five_percent() {
    let r = aa_rates(&GPU_NOISE, 5, true);
    print("GPU, 5 trials", &r);
    assert_family_wise_rate_at_most_five_percent(&r);
    // with 5 quiet trials most metrics should be shown equivalent, not just "not flagged"
    assert!(r.unchanged > 0.5, "only {} UNCHANGED", r.unchanged);
}

/// The throughput metrics of one workload drop 5% (CV 1%, 5 trials per side);
/// every other metric of every workload is unchanged and still in the family.
#[test]
fn five_percent_throughput_drop_is_regressed_at_least_95_percent_of_the_time() {
    let noise = Noise {
        throughput_cv: 0.01,
        ..GPU_NOISE
    };
    let fp = gpu_fingerprint();
    let mut caught = 0;
    let mut false_flags = 0;
    for seed in 0..SEEDS {
        let mut r = rng(10_000 + seed);
        let a = simulated_run(&mut r, &fp, &noise, 5, &|_, _| 1.0);
        let b = simulated_run(&mut r, &fp, &noise, 5, &|w, m| {
            if w == "chat" && m == "output_throughput" {
                0.95
            } else {
                1.0
            }
        });
        let c = compare_runs(("a", &a), ("b", &b), &[], &Policy::default()).unwrap();
        for w in &c.workloads {
            for m in &w.metrics {
                let target = w.name == "chat" && m.metric == "output_throughput";
                match (target, m.verdict) {
                    (true, Verdict::Regressed) => caught += 1,
                    (false, Verdict::Regressed | Verdict::Improved) => false_flags += 1,
                    _ => {}
                }
            }
        }
        assert_eq!(c.exit_code() == 1, c.summary().regressed > 0);
    }
    let power = caught as f64 / SEEDS as f64;
    println!(
        "power: {:.1}% REGRESSED; {false_flags} false flags elsewhere",
        power * 100.0
    );
    assert!(power >= 0.95, "power {power}");
}
