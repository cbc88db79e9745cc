//! Repairing the store with its own tools: `rm` (drop a run), `reindex`
//! (rebuild `index.json` from the objects) and `fsck` (check everything,
//! optionally repair what can be repaired without losing a measurement).
//!
//! The index is derived data: every run object names itself, so the index
//! can always be rebuilt from `objects/`. Objects are never rewritten; a
//! corrupt one is moved aside to `quarantine/` (not deleted) by a repair.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

use serde::Serialize;

use super::error::StoreError;
use super::index::RunIndexEntry;
use super::object::Entry;
use super::verify::{CorruptObject, MissingObject};
use super::{newest_first, resolve_prefix, run_references, Store};
use crate::run_record::{ObjectId, RunRecord};

/// What `reindex` found and wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReindexReport {
    pub objects_checked: usize,
    /// The runs now in the index.
    pub indexed: Vec<ObjectId>,
    /// Runs that were not in the index before.
    pub added: Vec<ObjectId>,
    /// Index entries dropped, with why (object missing, corrupt, not a run).
    pub dropped: Vec<(ObjectId, String)>,
    /// Why the old index could not be read, if it could not.
    pub old_index_error: Option<String>,
    pub corrupt: Vec<CorruptObject>,
}

/// What `fsck` found, and with `--repair` what it did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FsckReport {
    pub objects_checked: usize,
    pub corrupt: Vec<CorruptObject>,
    /// Files under `objects/` whose path is not an object name.
    pub stray: Vec<PathBuf>,
    pub index_error: Option<String>,
    /// Index entries whose run object is missing, corrupt or not a run.
    pub broken_entries: Vec<(ObjectId, String)>,
    /// Intact run objects the index does not list (e.g. a bench whose
    /// index write failed).
    pub unindexed_runs: Vec<ObjectId>,
    /// Objects a readable run references but the store lacks.
    pub missing: Vec<MissingObject>,
    /// Set by a repair: corrupt objects moved to `quarantine/`.
    pub quarantined: Vec<PathBuf>,
    pub repaired: bool,
}

impl FsckReport {
    /// Problems a repair fixes: corrupt objects, a broken index, broken or
    /// missing index entries.
    pub fn repairable(&self) -> usize {
        self.corrupt.len()
            + usize::from(self.index_error.is_some())
            + self.broken_entries.len()
            + self.unindexed_runs.len()
    }

    /// Problems left for a person: stray files, runs with missing parts.
    pub fn manual(&self) -> usize {
        self.stray.len() + self.missing.len()
    }
}

/// Every object, hashed; the intact ones that read as runs.
struct Scan {
    objects_checked: usize,
    present: BTreeSet<ObjectId>,
    corrupt: Vec<CorruptObject>,
    runs: BTreeMap<ObjectId, RunRecord>,
    stray: Vec<PathBuf>,
}

impl Store {
    /// Removes run `spec` (id, unique prefix or `latest`) from the index and
    /// deletes its run object; its records are left for `gc`. Works on a
    /// run whose object is corrupt or gone, which is the point.
    pub fn remove_run(&self, spec: &str) -> Result<ObjectId, StoreError> {
        let runs = self.runs()?;
        let id = if spec == "latest" {
            newest_first(&runs)
                .first()
                .map(|r| r.id.clone())
                .ok_or(StoreError::NoRuns)?
        } else {
            resolve_prefix(&runs, spec)?
        };
        self.index.remove(&id)?;
        if self.objects.path_of(&id)?.exists() {
            self.objects.remove(&id)?;
        }
        Ok(id)
    }

    /// Rebuilds the index from the objects: every intact object that reads
    /// as a run is listed (in the old index's order where it had one, new
    /// ones by creation time); entries whose object is missing or corrupt
    /// are dropped. Holds the index lock throughout.
    pub fn reindex(&self) -> Result<ReindexReport, StoreError> {
        let _lock = self.index.lock()?;
        let scan = self.scan()?;
        self.reindex_locked(scan)
    }

    fn reindex_locked(&self, scan: Scan) -> Result<ReindexReport, StoreError> {
        let (old, old_index_error) = match self.index.read() {
            Ok(runs) => (runs, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let mut report = ReindexReport {
            objects_checked: scan.objects_checked,
            old_index_error,
            corrupt: scan.corrupt.clone(),
            ..ReindexReport::default()
        };
        let mut entries: Vec<RunIndexEntry> = Vec::new();
        for entry in old {
            if entries.iter().any(|e| e.id == entry.id) {
                continue;
            }
            match scan.runs.get(&entry.id) {
                Some(run) => entries.push(RunIndexEntry::new(entry.id.clone(), run)),
                None => report
                    .dropped
                    .push((entry.id.clone(), why_not_a_run(&scan, &entry.id))),
            }
        }
        let mut new: Vec<(&ObjectId, &RunRecord)> = scan
            .runs
            .iter()
            .filter(|(id, _)| !entries.iter().any(|e| &e.id == *id))
            .collect();
        new.sort_by(|a, b| a.1.created_at.cmp(&b.1.created_at).then(a.0.cmp(b.0)));
        for (id, run) in new {
            report.added.push(id.clone());
            entries.push(RunIndexEntry::new(id.clone(), run));
        }
        report.indexed = entries.iter().map(|e| e.id.clone()).collect();
        self.index.write_locked(entries)?;
        Ok(report)
    }

    /// Checks every object, the index and every run's references. With
    /// `repair`, moves corrupt objects to `quarantine/` and rebuilds the
    /// index (as `reindex`); runs are never deleted by a repair.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport, StoreError> {
        let _lock = self.index.lock()?;
        let scan = self.scan()?;
        let mut report = FsckReport {
            objects_checked: scan.objects_checked,
            corrupt: scan.corrupt.clone(),
            stray: scan.stray.clone(),
            ..FsckReport::default()
        };
        let indexed: BTreeSet<ObjectId> = match self.index.read() {
            Ok(runs) => {
                for entry in &runs {
                    if !scan.runs.contains_key(&entry.id) {
                        let why = why_not_a_run(&scan, &entry.id);
                        report.broken_entries.push((entry.id.clone(), why));
                    }
                }
                runs.into_iter().map(|r| r.id).collect()
            }
            Err(e) => {
                report.index_error = Some(e.to_string());
                BTreeSet::new()
            }
        };
        for (id, run) in &scan.runs {
            if !indexed.contains(id) {
                report.unindexed_runs.push(id.clone());
            }
            for (reference, object) in run_references(run) {
                if !scan.present.contains(&object) {
                    report.missing.push(MissingObject {
                        id: object,
                        referenced_by: format!("run {id}: {reference}"),
                    });
                }
            }
        }
        if repair && report.repairable() > 0 {
            let quarantine = self.root.join("quarantine");
            for c in &scan.corrupt {
                fs::create_dir_all(&quarantine)
                    .map_err(|e| StoreError::io("creating", &quarantine, e))?;
                let to = quarantine.join(&c.id);
                fs::rename(&c.path, &to)
                    .map_err(|e| StoreError::io("moving to quarantine", &c.path, e))?;
                report.quarantined.push(to);
            }
            self.reindex_locked(scan)?;
            report.repaired = true;
        }
        Ok(report)
    }

    fn scan(&self) -> Result<Scan, StoreError> {
        let mut scan = Scan {
            objects_checked: 0,
            present: BTreeSet::new(),
            corrupt: Vec::new(),
            runs: BTreeMap::new(),
            stray: Vec::new(),
        };
        for entry in self.objects.walk()? {
            let (id, path) = match entry {
                Entry::Stray(path) => {
                    scan.stray.push(path);
                    continue;
                }
                Entry::Object { id, path } => (id, path),
            };
            scan.objects_checked += 1;
            let bytes = match self.objects.read(&id) {
                Ok(bytes) => bytes,
                Err(StoreError::Corrupt { actual, .. }) => {
                    scan.corrupt.push(CorruptObject { id, path, actual });
                    continue;
                }
                // Removed between the walk and the read (a concurrent gc).
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            scan.present.insert(id.clone());
            // Records and step logs are JSON arrays; only objects can be runs.
            if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
                if let Ok(run) = serde_json::from_slice::<RunRecord>(&bytes) {
                    scan.runs.insert(id, run);
                }
            }
        }
        Ok(scan)
    }
}

fn why_not_a_run(scan: &Scan, id: &str) -> String {
    if scan.corrupt.iter().any(|c| c.id == id) {
        "its object is corrupt".to_string()
    } else if scan.present.contains(id) {
        "its object is not a run".to_string()
    } else {
        "its object is missing".to_string()
    }
}
