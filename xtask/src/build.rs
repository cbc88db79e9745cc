//! Release build of the engine through `$CARGO`. The compiler's own messages
//! go to the terminal; cargo's JSON on stdout tells where the binary landed
//! (whatever `CARGO_TARGET_DIR` says).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::fingerprint::BuildInfo;

pub const PROFILE: &str = "release";

pub struct BuiltEngine {
    pub binary: PathBuf,
    pub info: BuildInfo,
}

pub fn build_engine(repo_root: &Path) -> anyhow::Result<BuiltEngine> {
    build(repo_root, None, &[])
}

/// The release engine with cargo `features` of the engine crate (e.g.
/// `serve` for `--serve`; none for `engine bench`, which keeps that build
/// lean).
pub fn build_engine_with(repo_root: &Path, features: &[&str]) -> anyhow::Result<BuiltEngine> {
    build(repo_root, None, features)
}

/// Builds the engine of the workspace at `repo_root` (e.g. a worktree of
/// another revision) into `target_dir`, so that it shares compiled
/// dependencies with the main workspace.
pub fn build_engine_into(repo_root: &Path, target_dir: &Path) -> anyhow::Result<BuiltEngine> {
    build(repo_root, Some(target_dir), &[])
}

fn build(
    repo_root: &Path,
    target_dir: Option<&Path>,
    features: &[&str],
) -> anyhow::Result<BuiltEngine> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec![
        "build".to_string(),
        "--release".into(),
        "--package".into(),
        "engine".into(),
        "--bin".into(),
        "engine".into(),
        "--message-format=json-render-diagnostics".into(),
    ];
    if !features.is_empty() {
        args.push("--features".into());
        args.push(features.join(","));
    }
    eprintln!(
        "building the engine ({PROFILE}{}) with {cargo}",
        if features.is_empty() {
            String::new()
        } else {
            format!(", features {}", features.join(","))
        }
    );
    let mut command = duct::cmd(&cargo, args).dir(repo_root);
    if let Some(dir) = target_dir {
        command = command.env("CARGO_TARGET_DIR", dir);
    }
    let output = command
        .stdout_capture()
        .unchecked()
        .run()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !output.status.success() {
        bail!(
            "building the engine failed ({}); cargo's errors are above",
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let binary = engine_executable(&stdout)
        .context("cargo built the engine but reported no `engine` executable")?;
    Ok(BuiltEngine {
        binary,
        info: BuildInfo {
            profile: PROFILE.into(),
            features: features.iter().map(|f| f.to_string()).collect(),
        },
    })
}

/// The `executable` of the last compiler-artifact message for the `engine`
/// binary target.
fn engine_executable(cargo_json: &str) -> Option<PathBuf> {
    cargo_json
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "engine")
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_engine_executable() {
        let json = r#"{"reason":"compiler-artifact","target":{"name":"workloads"},"executable":null}
{"reason":"compiler-artifact","target":{"name":"engine","kind":["lib"]},"executable":null}
{"reason":"compiler-artifact","target":{"name":"engine","kind":["bin"]},"executable":"/t/release/engine"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            engine_executable(json),
            Some(PathBuf::from("/t/release/engine"))
        );
        assert_eq!(engine_executable("not json"), None);
    }
}
