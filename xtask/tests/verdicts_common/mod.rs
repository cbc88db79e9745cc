//! Simulated runs for the verdict tests: trial values drawn around fixed
//! true values with multiplicative (log-normal) noise, from a seeded RNG.

#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use xtask::fixtures::{ok_trial, run, workload};
use xtask::run_record::{metric_catalog, Fingerprint, MetricKind, RunRecord, TrialSummary};

/// Trial-to-trial coefficient of variation per metric kind, and how much of
/// it is shared by all metrics of a trial (a slow trial is slow everywhere).
#[derive(Clone, Copy, Debug)]
pub struct Noise {
    pub throughput_cv: f64,
    pub central_cv: f64,
    pub tail_cv: f64,
    /// Fraction of each metric's log-variance that is common to the trial.
    pub shared: f64,
}

/// Two cores, noisy neighbours: the CPU smoke suite (3 trials per side).
pub const CPU_NOISE: Noise = Noise {
    throughput_cv: 0.03,
    central_cv: 0.04,
    tail_cv: 0.10,
    shared: 0.5,
};

/// A dedicated GPU (5 trials per side).
pub const GPU_NOISE: Noise = Noise {
    throughput_cv: 0.01,
    central_cv: 0.015,
    tail_cv: 0.05,
    shared: 0.5,
};

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A standard normal draw (Box–Muller).
pub fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The judged metrics with a plausible true value each.
pub fn judged_metrics() -> Vec<(&'static str, MetricKind, f64)> {
    metric_catalog()
        .into_iter()
        .filter(|d| d.kind != MetricKind::Info)
        .enumerate()
        .map(|(i, d)| (d.name, d.kind, 10.0 + i as f64 * 7.0))
        .collect()
}

fn cv(noise: &Noise, kind: MetricKind) -> f64 {
    match kind {
        MetricKind::Throughput => noise.throughput_cv,
        MetricKind::LatencyCentral => noise.central_cv,
        MetricKind::LatencyTail | MetricKind::Info => noise.tail_cv,
    }
}

/// `trials` ok trials; `factor(metric)` multiplies a metric's true value.
pub fn trials(
    rng: &mut ChaCha8Rng,
    noise: &Noise,
    n: usize,
    factor: &dyn Fn(&str) -> f64,
    output_hash: &str,
) -> Vec<TrialSummary> {
    (0..n)
        .map(|i| {
            let common = normal(rng);
            let metrics: Vec<(&str, f64)> = judged_metrics()
                .into_iter()
                .map(|(name, kind, truth)| {
                    // throughput up means latency down in the same trial
                    let sign = if kind == MetricKind::Throughput {
                        1.0
                    } else {
                        -1.0
                    };
                    let z = noise.shared.sqrt() * sign * common
                        + (1.0 - noise.shared).sqrt() * normal(rng);
                    (name, truth * factor(name) * (cv(noise, kind) * z).exp())
                })
                .collect();
            ok_trial(i as u32, &metrics, output_hash)
        })
        .collect()
}

pub const WORKLOADS: [&str; 4] = ["chat", "long_prefill", "long_decode", "shared_prefix"];

/// A run of every workload in `WORKLOADS`.
pub fn simulated_run(
    rng: &mut ChaCha8Rng,
    fingerprint: &Fingerprint,
    noise: &Noise,
    n: usize,
    factor: &dyn Fn(&str, &str) -> f64,
) -> RunRecord {
    let workloads = WORKLOADS
        .iter()
        .map(|w| workload(w, trials(rng, noise, n, &|m| factor(w, m), "out")))
        .collect();
    run(fingerprint.clone(), workloads)
}
