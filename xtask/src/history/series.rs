//! From the store to series: the runs of one fingerprint class, oldest
//! first, and one value per run for a metric.

use std::collections::BTreeMap;
use std::path::Path;

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
    /// Position of the run among all runs of its class, in the history's
    /// order (series of one class may skip runs that lack their metric).
    pub position: usize,
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

/// Reorders the runs of the classes `hashes` by the committer time of their commit, read
/// from the git repository at or above `repo_root`; runs of one commit keep
/// their run-time order. A run without a commit, or with one the repository
/// does not have (a shallow clone), is an error naming it.
pub fn order_by_commit_time(
    catalogue: &mut Catalogue,
    hashes: &[String],
    repo_root: &Path,
) -> anyhow::Result<()> {
    let repo = crate::git::repository(repo_root).map_err(|e| {
        anyhow::anyhow!(
            "--order commit needs the git repository of the runs' commits; none at {}: {e}",
            repo_root.display(),
        )
    })?;
    let mut times: BTreeMap<String, i64> = BTreeMap::new();
    let selected = |hash: &String| hashes.contains(hash);
    for class in catalogue
        .classes
        .values()
        .filter(|c| selected(&c.class_hash))
    {
        for run in &class.runs {
            let Some(commit) = &run.commit else {
                anyhow::bail!(
                    "run {} has no commit, so --order commit cannot place it; use --order run",
                    run.run_id
                );
            };
            if times.contains_key(commit) {
                continue;
            }
            let time = crate::git::commit_time(&repo, commit).ok_or_else(|| {
                anyhow::anyhow!(
                    "commit {commit} of run {} is not in the repository at {}; \
                     fetch it (`git fetch --unshallow` in a shallow clone) or use --order run",
                    run.run_id,
                    repo.display(),
                )
            })?;
            times.insert(commit.clone(), time);
        }
    }
    for class in catalogue
        .classes
        .values_mut()
        .filter(|c| hashes.contains(&c.class_hash))
    {
        // Stable: runs of one commit stay in run-time order.
        class
            .runs
            .sort_by_key(|r| r.commit.as_ref().and_then(|c| times.get(c)).copied());
    }
    Ok(())
}

impl ClassHistory {
    /// One point per run that has at least one ok trial with `metric`;
    /// runs from a dirty work tree only when `include_dirty`.
    pub fn points(&self, metric: &str, include_dirty: bool) -> Vec<Point> {
        self.runs
            .iter()
            .enumerate()
            .filter(|(_, r)| include_dirty || !r.dirty)
            .filter_map(|(position, r)| {
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
                let value = crate::stats::mean(&trials);
                Some(Point {
                    position,
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
