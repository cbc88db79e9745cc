//! `gc`: remove objects that no indexed run reaches.
//!
//! A bench process stores a trial's records before it adds the run that
//! references them, so a young unreferenced object may belong to a run still
//! in progress. gc therefore spares unreferenced objects younger than a grace
//! period (like git's prune expiry); writing an object again refreshes its age.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::error::StoreError;
use super::object::Entry;
use super::{run_references, Store};
use crate::run_record::{ObjectId, RunRecord};

/// Unreferenced objects younger than this are kept by `gc`: longer than any
/// suite takes, so an in-progress run never loses its records.
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Objects reachable from the index.
    pub kept: usize,
    /// Unreferenced objects removed (or, on a dry run, that would be).
    pub removed: Vec<ObjectId>,
    pub removed_bytes: u64,
    /// Unreferenced objects kept because they are younger than the grace period.
    pub spared_recent: Vec<ObjectId>,
    /// Leftover temporary files removed from `tmp/`.
    pub removed_tmp_files: usize,
}

impl Store {
    /// Removes unreferenced objects older than [`DEFAULT_GC_GRACE`].
    pub fn gc(&self, dry_run: bool) -> Result<GcReport, StoreError> {
        self.gc_with_grace(dry_run, DEFAULT_GC_GRACE)
    }

    /// Removes unreferenced objects older than `grace` (zero: all of them).
    /// Holds the index lock throughout, so no run is added meanwhile. Refuses
    /// to run if an indexed run cannot be read, since its references would
    /// then look like garbage.
    pub fn gc_with_grace(&self, dry_run: bool, grace: Duration) -> Result<GcReport, StoreError> {
        let _lock = self.index.lock()?;
        let mut reachable = BTreeSet::new();
        for entry in self.index.read()? {
            let run: RunRecord = self.get(&entry.id).map_err(|e| StoreError::GcBlocked {
                id: entry.id.clone(),
                reason: e.to_string(),
            })?;
            reachable.extend(run_references(&run).into_iter().map(|(_, id)| id));
            reachable.insert(entry.id);
        }

        let now = SystemTime::now();
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        for entry in self.objects.walk()? {
            let Entry::Object { id, path } = entry else {
                continue; // stray files are for a person to look at
            };
            if reachable.contains(&id) {
                report.kept += 1;
                continue;
            }
            let meta = fs::metadata(&path).map_err(|e| StoreError::io("inspecting", &path, e))?;
            if age(&meta, now) < grace {
                report.spared_recent.push(id);
                continue;
            }
            if !dry_run {
                self.objects.remove(&id)?;
            }
            report.removed_bytes += meta.len();
            report.removed.push(id);
        }
        report.removed_tmp_files = clean_tmp(&self.root.join("tmp"), now, grace, dry_run)?;
        Ok(report)
    }
}

fn age(meta: &fs::Metadata, now: SystemTime) -> Duration {
    meta.modified()
        .ok()
        .and_then(|mtime| now.duration_since(mtime).ok())
        .unwrap_or(Duration::ZERO)
}

/// Removes temporary files left by writers that died, once they are older
/// than `grace` (a live writer's file is seconds old).
fn clean_tmp(
    tmp: &Path,
    now: SystemTime,
    grace: Duration,
    dry_run: bool,
) -> Result<usize, StoreError> {
    let mut removed = 0;
    let reader = fs::read_dir(tmp).map_err(|e| StoreError::io("listing", tmp, e))?;
    for entry in reader {
        let entry = entry.map_err(|e| StoreError::io("listing", tmp, e))?;
        let path = entry.path();
        let meta = entry
            .metadata()
            .map_err(|e| StoreError::io("inspecting", &path, e))?;
        if !meta.is_file() || age(&meta, now) < grace {
            continue;
        }
        if !dry_run {
            match fs::remove_file(&path) {
                Ok(()) => {}
                // Its writer finished (renamed it) after we listed it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("removing", path, e)),
            }
        }
        removed += 1;
    }
    Ok(removed)
}
