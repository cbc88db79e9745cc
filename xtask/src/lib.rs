//! dyno's benchmark pipeline (`cargo xtask ...`): build the engine, pin the
//! environment's fingerprint, run workloads as repeated trials, compute
//! metrics, store them content-addressed, compare and report.

pub mod baseline;
pub mod bench;
pub mod build;
pub mod cli;
pub mod compare;
pub mod engine_info;
pub mod fingerprint;
pub mod gpu_monitor;
pub mod http;
pub mod metrics;
pub mod model;
pub mod progress;
pub mod report;
pub mod run_record;
pub mod store;
pub mod trial;
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
