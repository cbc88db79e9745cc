//! The run index: `results/index.json`, the list of runs in the store.
//!
//! It is the store's only mutable file. Every change is a read-modify-write
//! under an exclusive lock on `results/index.lock`, and the new index is
//! written to a temporary file and renamed over the old one, so concurrent
//! bench processes never lose an entry and a reader never sees half a file
//! (readers need no lock).

use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::StoreError;
use super::object::write_atomic;
use crate::run_record::{ObjectId, RunRecord};

const INDEX_VERSION: u32 = 1;

/// One line of `store ls`: enough to pick a run without loading it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIndexEntry {
    pub id: ObjectId,
    /// RFC 3339, copied from the run.
    pub created_at: String,
    pub suite: Option<String>,
    pub device: String,
    pub model: String,
    pub workloads: Vec<String>,
    pub git_commit: Option<String>,
    #[serde(default)]
    pub git_dirty: bool,
}

impl RunIndexEntry {
    pub fn new(id: ObjectId, run: &RunRecord) -> Self {
        RunIndexEntry {
            id,
            created_at: run.created_at.clone(),
            suite: run.suite.clone(),
            device: run.fingerprint.device.clone(),
            model: run.fingerprint.model.clone(),
            workloads: run.workloads.iter().map(|w| w.name.clone()).collect(),
            git_commit: run.fingerprint.source.git_commit.clone(),
            git_dirty: run.fingerprint.source.git_dirty,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    runs: Vec<RunIndexEntry>,
}

#[derive(Debug, Clone)]
pub struct RunIndex {
    path: PathBuf,
    lock_path: PathBuf,
    tmp: PathBuf,
}

/// Holds the index lock until dropped (closing the file releases it).
#[derive(Debug)]
pub struct IndexLock {
    _file: fs::File,
}

impl RunIndex {
    pub fn new(path: PathBuf, lock_path: PathBuf, tmp: PathBuf) -> Self {
        RunIndex {
            path,
            lock_path,
            tmp,
        }
    }

    /// Blocks until this process holds the index lock exclusively.
    // File::lock is stable since Rust 1.89; the toolchain in use is newer than
    // the workspace's declared rust-version.
    #[allow(clippy::incompatible_msrv)]
    pub fn lock(&self) -> Result<IndexLock, StoreError> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| StoreError::io("opening lock file", &self.lock_path, e))?;
        file.lock()
            .map_err(|e| StoreError::io("locking", &self.lock_path, e))?;
        Ok(IndexLock { _file: file })
    }

    /// The runs in the index, in the order they were added. A store without
    /// an index file has no runs.
    pub fn read(&self) -> Result<Vec<RunIndexEntry>, StoreError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io("reading", &self.path, e)),
        };
        let file: IndexFile = serde_json::from_slice(&bytes).map_err(|e| StoreError::Index {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        if file.version != INDEX_VERSION {
            return Err(StoreError::Index {
                path: self.path.clone(),
                reason: format!(
                    "version {} is not the supported version {INDEX_VERSION}",
                    file.version
                ),
            });
        }
        Ok(file.runs)
    }

    /// Adds `entry` unless a run with its id is already listed. Returns
    /// whether the index changed.
    pub fn add(&self, entry: RunIndexEntry) -> Result<bool, StoreError> {
        let _lock = self.lock()?;
        let mut runs = self.read()?;
        if runs.iter().any(|r| r.id == entry.id) {
            return Ok(false);
        }
        runs.push(entry);
        self.write_locked(runs)?;
        Ok(true)
    }

    /// Replaces the index. The caller must hold the lock.
    fn write_locked(&self, runs: Vec<RunIndexEntry>) -> Result<(), StoreError> {
        let file = IndexFile {
            version: INDEX_VERSION,
            runs,
        };
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(StoreError::Serialize)?;
        bytes.push(b'\n');
        write_atomic(&self.tmp, &self.path, &bytes)
    }
}
