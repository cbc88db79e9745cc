//! From the store to series: the runs of one fingerprint class, oldest
//! first, and one value per run for a metric.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::baseline::class::FingerprintClass;
use crate::run_record::{ObjectId, RunRecord, TrialStatus, WorkloadRun};
use crate::store::Store;

/// One run of a class: where it came from and its trials of the class's
/// workload.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassRun {
    pub run_id: ObjectId,
    pub created_at: String,
    pub commit: Option<String>,
    pub dirty: bool,
    pub workload: WorkloadRun,
}

/// Every stored run of one class, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassHistory {
    pub class_hash: String,
    pub class: FingerprintClass,
    /// The model's name (a label; the class holds its hash).
    pub model: String,
    pub runs: Vec<ClassRun>,
}

/// One point of a series: one run's mean of a metric over its ok trials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub run_id: ObjectId,
    pub created_at: String,
    pub commit: Option<String>,
    pub dirty: bool,
    /// Mean over the run's ok trials that have the metric.
    pub value: f64,
    /// Those trials' values, in trial order.
    pub trials: Vec<f64>,
}

/// The stored runs by class hash, each class's runs ordered by run time
/// (`created_at`; runs made at the same instant keep the order they were
/// added to the store in), and the classes of the newest bench.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Catalogue {
    pub classes: BTreeMap<String, ClassHistory>,
    /// (workload, class hash) measured by the newest bench: the newest run
    /// and every other run of its commit (a suite over several models
    /// stores one run per model), oldest run first, in workload order.
    pub latest: Vec<(String, String)>,
}

/// Reads every run in the store. A run that cannot be read is an error
/// naming it: history over a damaged store would silently drop points.
pub fn catalogue(store: &Store) -> anyhow::Result<Catalogue> {
    let entries = store.runs()?;
    let mut runs: Vec<(chrono::DateTime<chrono::FixedOffset>, ObjectId, RunRecord)> = Vec::new();
    for entry in entries {
        let run: RunRecord = store.get(&entry.id).map_err(|e| {
            anyhow::anyhow!(
                "reading run {} from the store: {e} (`cargo xtask store verify` checks the whole store)",
                entry.id
            )
        })?;
        let at = chrono::DateTime::parse_from_rfc3339(&run.created_at).map_err(|e| {
            anyhow::anyhow!(
                "run {}: created_at '{}' is not an RFC 3339 time: {e}",
                entry.id,
                run.created_at
            )
        })?;
        runs.push((at, entry.id, run));
    }
    // Stable: equal times keep the index order.
    runs.sort_by_key(|(at, _, _)| *at);
    let mut out = Catalogue::default();
    for (_, id, run) in &runs {
        for workload in &run.workloads {
            let class = FingerprintClass::of(&run.fingerprint, workload);
            let hash = class.hash();
            let entry = out
                .classes
                .entry(hash.clone())
                .or_insert_with(|| ClassHistory {
                    class_hash: hash,
                    class,
                    model: run.fingerprint.model.clone(),
                    runs: Vec::new(),
                });
            entry.runs.push(ClassRun {
                run_id: id.clone(),
                created_at: run.created_at.clone(),
                commit: run.fingerprint.source.git_commit.clone(),
                dirty: run.fingerprint.source.git_dirty,
                workload: workload.clone(),
            });
        }
    }
    if let Some((_, newest_id, newest)) = runs.last() {
        let commit = &newest.fingerprint.source.git_commit;
        for (_, id, run) in &runs {
            let same_bench = id == newest_id
                || (commit.is_some() && &run.fingerprint.source.git_commit == commit);
            if !same_bench {
                continue;
            }
            for w in &run.workloads {
                let key = (
                    w.name.clone(),
                    FingerprintClass::of(&run.fingerprint, w).hash(),
                );
                if !out.latest.contains(&key) {
                    out.latest.push(key);
                }
            }
        }
    }
    Ok(out)
}

impl ClassHistory {
    /// One point per run that has at least one ok trial with `metric`;
    /// runs from a dirty work tree only when `include_dirty`.
    pub fn points(&self, metric: &str, include_dirty: bool) -> Vec<Point> {
        self.runs
            .iter()
            .filter(|r| include_dirty || !r.dirty)
            .filter_map(|r| {
                let trials: Vec<f64> = r
                    .workload
                    .trials
                    .iter()
                    .filter(|t| matches!(t.status, TrialStatus::Ok))
                    .filter_map(|t| t.metrics.get(metric).copied())
                    .collect();
                if trials.is_empty() {
                    return None;
                }
                let value = trials.iter().sum::<f64>() / trials.len() as f64;
                Some(Point {
                    run_id: r.run_id.clone(),
                    created_at: r.created_at.clone(),
                    commit: r.commit.clone(),
                    dirty: r.dirty,
                    value,
                    trials,
                })
            })
            .collect()
    }

    pub fn dirty_runs(&self) -> usize {
        self.runs.iter().filter(|r| r.dirty).count()
    }
}
