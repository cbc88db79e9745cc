//! One side of a comparison: the trials of one workload, from a stored run
//! or from a committed baseline, with where they came from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::baseline::class::FingerprintClass;
use crate::run_record::{Fingerprint, ObjectId, RunRecord, TrialStatus, TrialSummary, WorkloadRun};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialData {
    pub index: u32,
    pub status: TrialStatus,
    pub output_hash: Option<String>,
    pub metrics: BTreeMap<String, f64>,
    /// The interleaved A/B block, when the trial ran in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<u32>,
}

impl From<&TrialSummary> for TrialData {
    fn from(t: &TrialSummary) -> Self {
        TrialData {
            index: t.index,
            status: t.status.clone(),
            output_hash: t.output_hash.clone(),
            metrics: t.metrics.clone(),
            block: t.block,
        }
    }
}

/// The trials of one earlier run in a baseline's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunTrials {
    pub run_id: ObjectId,
    pub commit: Option<String>,
    pub created_at: String,
    pub trials: Vec<TrialData>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Side {
    /// "run 1a2b3c4d5e6f", or "class 858de8aab8f695fc" for a committed baseline.
    pub label: String,
    pub run_id: ObjectId,
    pub commit: Option<String>,
    pub git_dirty: bool,
    pub created_at: String,
    pub class: FingerprintClass,
    pub trials: Vec<TrialData>,
    /// A committed baseline's earlier runs (newest first), for the
    /// run-to-run spread; empty for a stored run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_runs: Vec<RunTrials>,
    /// Short description of the machine, for the report ("NVIDIA H200,
    /// driver 580, CUDA 13.0"; the host CPU for CPU runs).
    #[serde(default)]
    pub machine: String,
}

pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

impl Side {
    pub fn from_run(run_id: &str, run: &RunRecord, workload: &WorkloadRun) -> Side {
        Side {
            label: format!("run {}", short_id(run_id)),
            run_id: run_id.to_string(),
            commit: run.fingerprint.source.git_commit.clone(),
            git_dirty: run.fingerprint.source.git_dirty,
            created_at: run.created_at.clone(),
            class: FingerprintClass::of(&run.fingerprint, workload),
            trials: workload.trials.iter().map(TrialData::from).collect(),
            earlier_runs: Vec::new(),
            machine: machine(&run.fingerprint),
        }
    }

    /// Values of `metric` per run of the history (this side's trials first,
    /// then each earlier run), ok trials only.
    pub fn values_by_run(&self, metric: &str) -> Vec<Vec<f64>> {
        let ok = |ts: &[TrialData]| -> Vec<f64> {
            ts.iter()
                .filter(|t| matches!(t.status, TrialStatus::Ok))
                .filter_map(|t| t.metrics.get(metric).copied())
                .collect()
        };
        std::iter::once(ok(&self.trials))
            .chain(self.earlier_runs.iter().map(|r| ok(&r.trials)))
            .collect()
    }

    /// The metric's value per interleaved block, for ok trials that have it.
    pub fn values_by_block(&self, metric: &str) -> BTreeMap<u32, f64> {
        self.ok_trials()
            .filter_map(|t| Some((t.block?, *t.metrics.get(metric)?)))
            .collect()
    }

    fn ok_trials(&self) -> impl Iterator<Item = &TrialData> {
        self.trials
            .iter()
            .filter(|t| matches!(t.status, TrialStatus::Ok))
    }

    pub fn ok_count(&self) -> usize {
        self.ok_trials().count()
    }

    pub fn failed_count(&self) -> usize {
        self.trials.len() - self.ok_count()
    }

    /// The metric's value in every ok trial that has it.
    pub fn values(&self, metric: &str) -> Vec<f64> {
        self.ok_trials()
            .filter_map(|t| t.metrics.get(metric).copied())
            .collect()
    }

    /// Distinct output hashes of the ok trials, sorted.
    pub fn output_hashes(&self) -> Vec<String> {
        let mut hashes: Vec<String> = self
            .ok_trials()
            .filter_map(|t| t.output_hash.clone())
            .collect();
        hashes.sort();
        hashes.dedup();
        hashes
    }

    /// Ok trials that carry no output hash.
    pub fn unhashed_count(&self) -> usize {
        self.ok_trials().filter(|t| t.output_hash.is_none()).count()
    }

    /// Why each failed trial failed, for the report.
    pub fn failures(&self) -> Vec<String> {
        self.trials
            .iter()
            .filter_map(|t| match &t.status {
                TrialStatus::Ok => None,
                TrialStatus::Failed { reason } => Some(format!("trial {}: {reason}", t.index)),
                TrialStatus::TimedOut { after_s } => {
                    Some(format!("trial {}: timed out after {after_s:.0} s", t.index))
                }
            })
            .collect()
    }
}

/// The machine of a run in a few words: GPU, driver and CUDA, or the CPU.
pub fn machine(f: &Fingerprint) -> String {
    match f.gpus.first() {
        Some(g) => format!(
            "{}, driver {}, CUDA {}",
            g.name, g.driver_version, g.cuda_driver_version
        ),
        None => format!("{} ({} cores)", f.host.cpu_model, f.host.cores),
    }
}

/// Greedy unless the spec sets a positive `temperature` anywhere (the
/// request default is 0, i.e. greedy). Only greedy outputs must be
/// bit-identical between builds, so only they fail a check on change.
pub fn is_greedy(spec: &serde_json::Value) -> bool {
    fn max_temperature(v: &serde_json::Value) -> f64 {
        match v {
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(k, v)| match (k.as_str(), v.as_f64()) {
                    ("temperature", Some(t)) => t,
                    _ => max_temperature(v),
                })
                .fold(0.0, f64::max),
            serde_json::Value::Array(items) => {
                items.iter().map(max_temperature).fold(0.0, f64::max)
            }
            _ => 0.0,
        }
    }
    max_temperature(spec) <= 0.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{cpu_fingerprint, failed_trial, ok_trial, run, workload};

    #[test]
    fn failed_trials_are_counted_not_dropped() {
        let w = workload(
            "chat",
            vec![
                ok_trial(0, &[("output_throughput", 10.0)], "h1"),
                failed_trial(1, "engine exited with signal 9"),
                ok_trial(2, &[("output_throughput", 11.0)], "h1"),
            ],
        );
        let r = run(cpu_fingerprint(), vec![w.clone()]);
        let side = Side::from_run("abcdef0123456789", &r, &w);
        assert_eq!(side.label, "run abcdef012345");
        assert_eq!((side.ok_count(), side.failed_count()), (2, 1));
        assert_eq!(side.values("output_throughput"), vec![10.0, 11.0]);
        assert_eq!(side.output_hashes(), vec!["h1".to_string()]);
        assert_eq!(
            side.failures(),
            vec!["trial 1: engine exited with signal 9".to_string()]
        );
    }

    #[test]
    fn greedy_unless_a_positive_temperature_is_set() {
        assert!(is_greedy(&serde_json::json!({"name": "x"})));
        assert!(is_greedy(
            &serde_json::json!({"sampling": {"temperature": 0.0}})
        ));
        assert!(!is_greedy(
            &serde_json::json!({"sampling": {"temperature": 0.7}})
        ));
        assert!(!is_greedy(
            &serde_json::json!({"mix": [{"temperature": 0.0}, {"temperature": 1.0}]})
        ));
    }
}
