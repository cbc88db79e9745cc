//! The content-addressed results store (`results/`).
//!
//! ```text
//! results/
//!   objects/ab/cdef...   one object per file, named by blake3(canonical JSON)
//!   tmp/                 temporary files, renamed into place when complete
//!   index.json           the runs in the store (see `index.rs`)
//!   index.lock           held while the index is rewritten
//! ```
//!
//! Objects are immutable and verified on every read. Runs reference their
//! raw per-request records and step logs by object id
//! (`TrialSummary::records_object` / `step_log_object`); gc and export
//! follow those references.

mod canonical;
mod error;
mod export;
mod gc;
mod index;
mod object;
mod repair;
mod verify;

use std::fs;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use canonical::{hash_hex, to_canonical_bytes};
pub use error::StoreError;
pub use gc::{GcReport, DEFAULT_GC_GRACE};
pub use index::{lock_timeout, RunIndexEntry, LOCK_TIMEOUT_ENV};
pub use repair::{FsckReport, ReindexReport};
pub use verify::{BrokenRun, CorruptObject, MissingObject, VerifyReport};

use crate::run_record::{ObjectId, RunRecord};
use index::RunIndex;
use object::ObjectDir;

/// The store under `root` (normally `<repo>/results`).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    objects: ObjectDir,
    index: RunIndex,
}

impl Store {
    /// Opens the store rooted at `root`, creating its directories as needed.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let objects = root.join("objects");
        let tmp = root.join("tmp");
        for dir in [&objects, &tmp] {
            fs::create_dir_all(dir).map_err(|e| StoreError::io("creating", dir, e))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
            objects: ObjectDir::new(objects, tmp.clone()),
            index: RunIndex::new(root.join("index.json"), root.join("index.lock"), tmp),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stores `value` as canonical JSON and returns its name. Storing the same
    /// value twice gives the same name and one object.
    pub fn put<T: Serialize>(&self, value: &T) -> Result<ObjectId, StoreError> {
        let bytes = to_canonical_bytes(value).map_err(StoreError::Serialize)?;
        self.objects.write(&bytes)
    }

    /// Reads object `id`, refusing it if its bytes no longer hash to `id`.
    pub fn get<T: DeserializeOwned>(&self, id: &str) -> Result<T, StoreError> {
        let bytes = self.objects.read(id)?;
        serde_json::from_slice(&bytes).map_err(|error| StoreError::Decode {
            id: id.to_string(),
            type_name: std::any::type_name::<T>(),
            error,
        })
    }

    pub fn contains(&self, id: &str) -> Result<bool, StoreError> {
        self.objects.contains(id)
    }

    /// Stores `run` and lists it in the index. Every object the run references
    /// must already be in the store, and every metric must be finite (JSON
    /// has no NaN: it would come back as null and fail to read).
    pub fn add_run(&self, run: &RunRecord) -> Result<ObjectId, StoreError> {
        check_metrics_finite(run)?;
        for (reference, id) in run_references(run) {
            if !self.contains(&id)? {
                return Err(StoreError::InvalidRun {
                    reason: format!("{reference} names object {id}, which is not in the store"),
                });
            }
        }
        // The run object first, the index last: if indexing fails the run
        // is still in the store, and `reindex` finds it from the objects.
        let id = self.put(run)?;
        self.index
            .add(RunIndexEntry::new(id.clone(), run))
            .map_err(|e| StoreError::NotIndexed {
                id: id.clone(),
                root: self.root.clone(),
                reason: e.to_string(),
            })?;
        Ok(id)
    }

    /// Checks, before anything is measured, that a run can be stored at the
    /// end: the index reads, its lock can be taken (waiting visibly for a
    /// holder, up to the lock timeout), and the store's directories accept
    /// a file. Nothing is written that stays. Bench passes
    /// [`lock_timeout`].
    pub fn preflight(&self, lock_timeout: std::time::Duration) -> Result<(), StoreError> {
        self.index.read()?;
        drop(self.index.lock_within(lock_timeout)?);
        let tmp = self.root.join("tmp");
        // Unique per call: runs on several threads of one process (the
        // tests) share the process id, and one's remove raced another's.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe = tmp.join(format!("preflight-{}-{n}.tmp", std::process::id()));
        fs::write(&probe, b"probe").map_err(|e| StoreError::io("writing", &probe, e))?;
        fs::remove_file(&probe).map_err(|e| StoreError::io("removing", &probe, e))?;
        Ok(())
    }

    /// The indexed runs, in the order they were added.
    pub fn runs(&self) -> Result<Vec<RunIndexEntry>, StoreError> {
        self.index.read()
    }

    /// Finds a run by full id, unique id prefix, or `latest` (the newest
    /// `created_at`; among equal times, the one added last).
    pub fn resolve_run(&self, spec: &str) -> Result<(ObjectId, RunRecord), StoreError> {
        let runs = self.runs()?;
        if spec == "latest" {
            return self.latest_readable(&runs);
        }
        let id = resolve_prefix(&runs, spec)?;
        let run = self.get(&id)?;
        Ok((id, run))
    }
}

/// The one indexed run whose id starts with `spec`.
fn resolve_prefix(runs: &[RunIndexEntry], spec: &str) -> Result<ObjectId, StoreError> {
    let candidates: Vec<&RunIndexEntry> = if spec.is_empty() {
        Vec::new()
    } else {
        runs.iter().filter(|r| r.id.starts_with(spec)).collect()
    };
    match candidates.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(StoreError::UnknownRun {
            spec: spec.to_string(),
            count: runs.len(),
        }),
        many => Err(StoreError::AmbiguousRun {
            spec: spec.to_string(),
            candidates: many.iter().map(|r| r.id.clone()).collect(),
        }),
    }
}

impl Store {
    /// The newest run that reads. A broken newest run (object corrupt or
    /// deleted) is skipped with a warning rather than blocking every
    /// `latest` until the store is repaired.
    fn latest_readable(&self, runs: &[RunIndexEntry]) -> Result<(ObjectId, RunRecord), StoreError> {
        let mut skipped = Vec::new();
        for entry in newest_first(runs) {
            match self.get::<RunRecord>(&entry.id) {
                Ok(run) => {
                    for (id, reason) in &skipped {
                        eprintln!(
                            "warning: skipped the newer run {id} for `latest`: {reason}; \
                             `cargo xtask store fsck --repair --results {}` drops it from the index",
                            self.root.display()
                        );
                    }
                    return Ok((entry.id.clone(), run));
                }
                Err(e) => skipped.push((entry.id.clone(), e.to_string())),
            }
        }
        match skipped.into_iter().next() {
            // Every run is broken: say why the newest one is.
            Some((id, reason)) => Err(StoreError::InvalidRun {
                reason: format!("no indexed run is readable; the newest, {id}: {reason}"),
            }),
            None => Err(StoreError::NoRuns),
        }
    }
}

/// Index entries from newest `created_at` to oldest; among equal times,
/// the one added last first.
fn newest_first(runs: &[RunIndexEntry]) -> Vec<&RunIndexEntry> {
    let mut order: Vec<(usize, &RunIndexEntry)> = runs.iter().enumerate().collect();
    let time = |r: &RunIndexEntry| {
        chrono::DateTime::parse_from_rfc3339(&r.created_at)
            .map(|t| t.timestamp_nanos_opt().unwrap_or(i64::MAX))
            .unwrap_or(i64::MIN)
    };
    order.sort_by(|(ia, a), (ib, b)| time(b).cmp(&time(a)).then(ib.cmp(ia)));
    order.into_iter().map(|(_, r)| r).collect()
}

/// Every object a run references, with where the reference is (for messages).
pub fn run_references(run: &RunRecord) -> Vec<(String, ObjectId)> {
    let mut refs = Vec::new();
    for workload in &run.workloads {
        for trial in &workload.trials {
            let at =
                |field: &str| format!("workload '{}' trial {} {field}", workload.name, trial.index);
            if let Some(id) = &trial.records_object {
                refs.push((at("records_object"), id.clone()));
            }
            if let Some(id) = &trial.step_log_object {
                refs.push((at("step_log_object"), id.clone()));
            }
        }
    }
    refs
}

fn check_metrics_finite(run: &RunRecord) -> Result<(), StoreError> {
    for workload in &run.workloads {
        for trial in &workload.trials {
            for (name, value) in &trial.metrics {
                if !value.is_finite() {
                    return Err(StoreError::InvalidRun {
                        reason: format!(
                            "workload '{}' trial {} metric {name} is {value}; \
                             only finite numbers can be stored",
                            workload.name, trial.index
                        ),
                    });
                }
            }
            if !trial.wall_s.is_finite() {
                return Err(StoreError::InvalidRun {
                    reason: format!(
                        "workload '{}' trial {} wall_s is {}; only finite numbers can be stored",
                        workload.name, trial.index, trial.wall_s
                    ),
                });
            }
        }
    }
    Ok(())
}
