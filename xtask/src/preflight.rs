//! Checks made before the first trial, so that a run is never measured in
//! full only to fail on something knowable at the start: the specs'
//! thresholds name known metrics, and their `[engine]` overrides are a
//! valid engine config (asked of the engine binary itself, which owns the
//! knobs). Errors name the spec file, line and field.

use std::path::Path;

use anyhow::{anyhow, Context};
use workloads::catalogue::Catalogue;
use workloads::spec::WorkloadSpec;
use workloads::InvalidToml;

use crate::compare::thresholds::{ThresholdError, Thresholds};

/// Every spec's `[thresholds]` is known to `compare` (else each later
/// compare of the run would fail).
pub fn check_thresholds(catalogue: &Catalogue, specs: &[WorkloadSpec]) -> anyhow::Result<()> {
    for spec in specs {
        let json = serde_json::to_value(spec)?;
        if let Err(e) = Thresholds::from_spec(&spec.name, &json) {
            let field = match &e {
                ThresholdError::NotATable { .. } => "thresholds".to_string(),
                ThresholdError::UnknownKey { key, .. } | ThresholdError::OutOfRange { key, .. } => {
                    format!("thresholds.{key}")
                }
            };
            return Err(located(catalogue, spec, &field, e.to_string()));
        }
    }
    Ok(())
}

/// A scratch folder name no other check uses at the same time: the process
/// id alone is shared by runs on several threads of one process (the
/// tests), and one run's cleanup removed another's file mid-check.
pub fn scratch_name() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("preflight-{}-{n}", std::process::id())
}

/// Every spec's `[engine]` table is a config `engine` accepts: checked with
/// `engine check-config`, first whole, then key by key to name the culprit.
/// An engine binary too old to have `check-config` is not checked.
pub fn check_engine_overrides(
    engine: &Path,
    catalogue: &Catalogue,
    specs: &[WorkloadSpec],
    scratch: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let result = check_each(engine, catalogue, specs, scratch);
    // Best effort: the scratch file says nothing once checked.
    let _ = std::fs::remove_dir_all(scratch);
    result
}

fn check_each(
    engine: &Path,
    catalogue: &Catalogue,
    specs: &[WorkloadSpec],
    scratch: &Path,
) -> anyhow::Result<()> {
    for spec in specs {
        let Some(table) = spec.engine.as_ref().filter(|t| !t.is_empty()) else {
            continue;
        };
        let whole = match check_config(engine, table, scratch)? {
            Checked::Ok => continue,
            Checked::Unsupported => {
                eprintln!(
                    "warning: {} has no `check-config`; [engine] overrides are checked by each trial",
                    engine.display()
                );
                return Ok(());
            }
            Checked::Invalid(message) => message,
        };
        for (key, value) in table {
            let one = toml::Table::from_iter([(key.clone(), value.clone())]);
            if let Checked::Invalid(message) = check_config(engine, &one, scratch)? {
                return Err(located(
                    catalogue,
                    spec,
                    &format!("engine.{key}"),
                    format!("the engine refuses it: {message}"),
                ));
            }
        }
        return Err(located(
            catalogue,
            spec,
            "engine",
            format!("the engine refuses these overrides together: {whole}"),
        ));
    }
    Ok(())
}

enum Checked {
    Ok,
    Invalid(String),
    Unsupported,
}

fn check_config(engine: &Path, table: &toml::Table, scratch: &Path) -> anyhow::Result<Checked> {
    let path = scratch.join("engine-overrides.toml");
    let text = toml::to_string(table).context("serializing [engine] overrides")?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let out = duct::cmd(
        engine,
        [
            "check-config".as_ref(),
            "--config".as_ref(),
            path.as_os_str(),
        ],
    )
    .stdin_null()
    .stdout_capture()
    .stderr_capture()
    .unchecked()
    .run()
    .with_context(|| format!("running {} check-config", engine.display()))?;
    if out.status.success() {
        return Ok(Checked::Ok);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("unrecognized subcommand") {
        return Ok(Checked::Unsupported);
    }
    // "error: <file>: <message>" → the message alone: the file is ours.
    let message = stderr
        .trim()
        .trim_start_matches("error: ")
        .replace(&format!("{}: ", path.display()), "");
    Ok(Checked::Invalid(message))
}

/// `spec`'s file, line and `field` with `message`, as the workloads crate
/// reports its own spec errors.
fn located(
    catalogue: &Catalogue,
    spec: &WorkloadSpec,
    field: &str,
    message: String,
) -> anyhow::Error {
    match catalogue.spec_path(&spec.name) {
        Some(path) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            anyhow!("{}", InvalidToml::at_field(path, &text, field, message))
        }
        None => anyhow!("workload `{}`: field `{field}`: {message}", spec.name),
    }
}
