//! The run index: `results/index.json`, the list of runs in the store.
//!
//! It is the store's only mutable file. Every change is a read-modify-write
//! under an exclusive lock on `results/index.lock`, and the new index is
//! written to a temporary file and renamed over the old one, so concurrent
//! bench processes never lose an entry and a reader never sees half a file
//! (readers need no lock).

use std::fs;
use std::io::{ErrorKind, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::StoreError;
use super::object::write_atomic;
use crate::run_record::{ObjectId, RunRecord};

const INDEX_VERSION: u32 = 1;

/// Seconds to wait for another process's index lock before giving up.
pub const LOCK_TIMEOUT_ENV: &str = "DYNO_STORE_LOCK_TIMEOUT_S";
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(120);
const LOCK_POLL: Duration = Duration::from_millis(50);

/// How long `lock` waits: `$DYNO_STORE_LOCK_TIMEOUT_S` or two minutes
/// (index writes take milliseconds; a longer hold is a stuck process).
pub fn lock_timeout() -> Duration {
    std::env::var(LOCK_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .map_or(DEFAULT_LOCK_TIMEOUT, Duration::from_secs_f64)
}

/// What the holder of the lock wrote into it, or "another process".
fn read_holder(lock_path: &Path) -> String {
    match fs::read_to_string(lock_path) {
        Ok(text) if !text.trim().is_empty() => text.trim().chars().take(300).collect(),
        _ => "another process".to_string(),
    }
}

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

    /// Takes the index lock, waiting up to [`lock_timeout`] for another
    /// process to release it. While it waits it says so on stderr, naming
    /// the holder (the pid and command it wrote into the lock file); after
    /// the timeout the error names the holder too.
    // File::lock / try_lock are stable since Rust 1.89; the toolchain in use
    // is newer than the workspace's declared rust-version.
    #[allow(clippy::incompatible_msrv)]
    pub fn lock(&self) -> Result<IndexLock, StoreError> {
        self.lock_within(lock_timeout())
    }

    #[allow(clippy::incompatible_msrv)]
    pub fn lock_within(&self, timeout: Duration) -> Result<IndexLock, StoreError> {
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| StoreError::io("opening lock file", &self.lock_path, e))?;
        let started = Instant::now();
        let mut announced = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {
                    let holder = read_holder(&self.lock_path);
                    if started.elapsed() >= timeout {
                        return Err(StoreError::Locked {
                            path: self.lock_path.clone(),
                            holder,
                            waited_s: started.elapsed().as_secs(),
                        });
                    }
                    if !announced {
                        eprintln!(
                            "waiting for {} (held by {holder}); giving up after {} s \
                             (set {LOCK_TIMEOUT_ENV} to change)",
                            self.lock_path.display(),
                            timeout.as_secs()
                        );
                        announced = true;
                    }
                    std::thread::sleep(LOCK_POLL);
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(StoreError::io("locking", &self.lock_path, e))
                }
            }
        }
        // Who holds it, for anyone who has to wait: best effort, the lock
        // itself is what excludes.
        let me = format!(
            "pid {} ({}) since {}",
            std::process::id(),
            std::env::args().collect::<Vec<_>>().join(" "),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let _ = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(me.as_bytes()));
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

    /// Removes the run `id` from the index. Returns whether it was listed.
    pub fn remove(&self, id: &str) -> Result<bool, StoreError> {
        let _lock = self.lock()?;
        let mut runs = self.read()?;
        let before = runs.len();
        runs.retain(|r| r.id != id);
        if runs.len() == before {
            return Ok(false);
        }
        self.write_locked(runs)?;
        Ok(true)
    }

    /// Replaces the index. The caller must hold the lock.
    pub(super) fn write_locked(&self, runs: Vec<RunIndexEntry>) -> Result<(), StoreError> {
        let file = IndexFile {
            version: INDEX_VERSION,
            runs,
        };
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(StoreError::Serialize)?;
        bytes.push(b'\n');
        write_atomic(&self.tmp, &self.path, &bytes)
    }
}
