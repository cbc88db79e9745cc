//! `verify`: re-hash every object and check that everything the index
//! reaches is present and readable.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use serde::Serialize;

use super::error::StoreError;
use super::object::Entry;
use super::{run_references, Store};
use crate::run_record::{ObjectId, RunRecord};

/// An object whose bytes no longer hash to its name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CorruptObject {
    pub id: ObjectId,
    pub path: PathBuf,
    /// What the bytes hash to now.
    pub actual: String,
}

/// An object that something refers to but the store does not have.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MissingObject {
    pub id: ObjectId,
    /// "index" or "run <id>: workload 'w' trial 0 records_object".
    pub referenced_by: String,
}

/// An indexed run whose object is intact but does not read as a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokenRun {
    pub id: ObjectId,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VerifyReport {
    pub objects_checked: usize,
    pub runs_checked: usize,
    pub corrupt: Vec<CorruptObject>,
    pub missing: Vec<MissingObject>,
    pub broken_runs: Vec<BrokenRun>,
    /// Files under `objects/` whose path is not an object name.
    pub stray: Vec<PathBuf>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty()
            && self.missing.is_empty()
            && self.broken_runs.is_empty()
            && self.stray.is_empty()
    }
}

impl Store {
    /// Checks every object and every index entry. Problems are collected in
    /// the report, not returned as errors; an error means the check itself
    /// could not run (for example an unreadable directory or index).
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let mut present = BTreeSet::new();
        let mut corrupt = BTreeSet::new();
        for entry in self.objects.walk()? {
            match entry {
                Entry::Stray(path) => report.stray.push(path),
                Entry::Object { id, path } => {
                    report.objects_checked += 1;
                    let actual = hash_file(&path)?;
                    if actual != id {
                        corrupt.insert(id.clone());
                        report.corrupt.push(CorruptObject {
                            id: id.clone(),
                            path,
                            actual,
                        });
                    }
                    present.insert(id);
                }
            }
        }

        for entry in self.runs()? {
            report.runs_checked += 1;
            if !present.contains(&entry.id) {
                report.missing.push(MissingObject {
                    id: entry.id.clone(),
                    referenced_by: "index".to_string(),
                });
                continue;
            }
            if corrupt.contains(&entry.id) {
                continue; // already reported; its references cannot be trusted
            }
            let run: RunRecord = match self.get(&entry.id) {
                Ok(run) => run,
                Err(e) => {
                    report.broken_runs.push(BrokenRun {
                        id: entry.id.clone(),
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            for (reference, id) in run_references(&run) {
                if !present.contains(&id) {
                    report.missing.push(MissingObject {
                        id,
                        referenced_by: format!("run {}: {reference}", entry.id),
                    });
                }
            }
        }
        Ok(report)
    }
}

/// blake3 of a file, streamed so large record objects are not read whole.
fn hash_file(path: &std::path::Path) -> Result<String, StoreError> {
    let file = fs::File::open(path).map_err(|e| StoreError::io("opening", path, e))?;
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(file)
        .map_err(|e| StoreError::io("reading", path, e))?;
    Ok(hasher.finalize().to_hex().to_string())
}
