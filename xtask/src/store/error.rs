//! What can go wrong in the store. Every variant names the file or object it
//! is about, so the message alone tells the user where to look.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    // The cause is part of the message (and deliberately not a `source`), so
    // it is printed once whether the error is shown alone or through anyhow.
    #[error("{action} {path}: {error}")]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("cannot serialize value for the store: {0}")]
    Serialize(serde_json::Error),

    #[error("object {id} is not a valid {type_name}: {error}")]
    Decode {
        id: String,
        type_name: &'static str,
        error: serde_json::Error,
    },

    #[error(
        "object {id} is corrupt: its bytes hash to {actual} ({path}); \
         run `cargo xtask store verify`"
    )]
    Corrupt {
        id: String,
        actual: String,
        path: PathBuf,
    },

    #[error("object {id} is not in the store ({path})")]
    NotFound { id: String, path: PathBuf },

    #[error("'{id}' is not an object id (expected 64 lowercase hex digits)")]
    InvalidId { id: String },

    #[error("run index {path} is unreadable: {reason}")]
    Index { path: PathBuf, reason: String },

    #[error(
        "{path} is held by {holder}; gave up after {waited_s} s; let that process finish \
         (or stop it) and try again, or set DYNO_STORE_LOCK_TIMEOUT_S to wait longer"
    )]
    Locked {
        path: PathBuf,
        holder: String,
        waited_s: u64,
    },

    #[error(
        "run {id} is stored but not in the index ({reason}); once that is fixed, \
         `cargo xtask store reindex --results {}` lists it again",
        root.display()
    )]
    NotIndexed {
        id: String,
        root: PathBuf,
        reason: String,
    },

    #[error("the store has no runs yet")]
    NoRuns,

    #[error(
        "no run matches '{spec}' ({count} runs in the store; `cargo xtask store ls` lists them)"
    )]
    UnknownRun { spec: String, count: usize },

    #[error("'{spec}' matches {} runs: {}; give more digits", candidates.len(), candidates.join(", "))]
    AmbiguousRun {
        spec: String,
        candidates: Vec<String>,
    },

    #[error("run is not valid for the store: {reason}")]
    InvalidRun { reason: String },

    #[error(
        "gc refused: indexed run {id} cannot be read ({reason}), so the objects it \
         references cannot be told apart from garbage; `cargo xtask store fsck --repair` \
         drops it from the index (or `cargo xtask store rm {id}`), then gc can run"
    )]
    GcBlocked { id: String, reason: String },

    #[error("export of run {run} failed: {reason}")]
    Export { run: String, reason: String },

    #[error("bad import file {path}: {reason}")]
    Import { path: PathBuf, reason: String },
}

impl StoreError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        error: std::io::Error,
    ) -> Self {
        StoreError::Io {
            action,
            path: path.into(),
            error,
        }
    }
}
