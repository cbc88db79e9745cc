//! dyno's benchmark pipeline (`cargo xtask ...`): build the engine, pin the
//! environment's fingerprint, run workloads as repeated trials, compute
//! metrics, store them content-addressed, compare and report.
//!
//! Layers, each depending only on the ones below it (no cycles):
//!
//! 1. commands: `cli` (every flag) and `commands::*` (one module per
//!    command: flags in, exit code out);
//! 2. run and report: `bench` (build, fingerprint, trials), `ab` (an
//!    interleaved A/B session), `trial`,
//!    `report` (tables, exports), `progress`;
//! 3. judgement and keeping: `compare`, `baseline`, `store`, `metrics`;
//! 4. records: `run_record` (the stored run and the metric names), `side`
//!    (one side of a comparison), `baseline::class` (fingerprint classes);
//!    and the leaf helpers `stats`, `format`, `warnings`;
//! 5. the `workloads` crate (specs, requests, records, `engine info`).

pub mod ab;
pub mod baseline;
pub mod bench;
pub mod build;
pub mod cli;
pub mod commands;
pub mod compare;
pub mod engine_info;
pub mod fingerprint;
#[doc(hidden)]
pub mod fixtures;
pub mod format;
pub(crate) mod git;
pub mod gpu_monitor;
pub mod history;
pub mod http;
pub mod launcher;
pub mod metrics;
pub mod model;
pub mod preflight;
pub mod progress;
pub mod report;
pub mod run_record;
pub mod side;
pub mod stats;
pub mod store;
pub mod sweep;
pub mod trial;
pub mod warnings;
pub mod workload_plan;

use std::path::{Path, PathBuf};

/// The workspace root: `$DYNO_ROOT` if set, else the nearest ancestor of the
/// current directory holding both `Cargo.toml` and `workloads/`, else the
/// directory xtask was compiled in. The search matters on the GPU machine,
/// where a carried xtask binary runs from a different path than it was built.
pub fn repo_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("DYNO_ROOT") {
        return PathBuf::from(dir);
    }
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            if is_workspace_root(dir) {
                return dir.to_path_buf();
            }
        }
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn is_workspace_root(dir: &Path) -> bool {
    dir.join("Cargo.toml").is_file() && dir.join("workloads").is_dir()
}
