//! The environment a run was measured in, captured once per run: source and
//! toolchain, host, GPUs. What cannot be read is recorded as "unknown" rather
//! than guessed (a GPU machine without cargo has no rustc to ask).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::git::GitState;
use crate::run_record::{HostFingerprint, SourceFingerprint};

pub const UNKNOWN: &str = "unknown";

/// How the engine binary came to be.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    pub profile: String,
    pub features: Vec<String>,
}

impl BuildInfo {
    /// For a binary handed in with `--engine-bin`: cargo puts release builds
    /// under `.../release/` and dev builds under `.../debug/`; anything else
    /// is recorded as unknown.
    pub fn prebuilt(binary: &Path) -> BuildInfo {
        let profile = binary
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .filter(|n| *n == "release" || *n == "debug")
            .unwrap_or(UNKNOWN);
        BuildInfo {
            profile: profile.to_string(),
            features: Vec::new(),
        }
    }

    /// A prebuilt binary's build, with the profile the user named for it
    /// (`--engine-profile`, `--a-engine-profile`) where there is one.
    pub fn prebuilt_as(binary: &Path, profile: Option<&str>) -> BuildInfo {
        let mut build = BuildInfo::prebuilt(binary);
        if let Some(profile) = profile {
            build.profile = profile.to_string();
        }
        build
    }
}

/// The engine's environment switches (`workloads::engine_knobs::
/// ENV_SWITCHES`) set in this process's environment, which every engine it
/// starts inherits.
pub fn inherited_engine_env() -> BTreeMap<String, String> {
    engine_env_from(&BTreeMap::new(), |name| {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    })
}

/// The switches an engine gets: each one `explicit` (an A/B side's
/// `--a-env`/`--b-env`) sets, else the value `inherited` gives for it.
pub fn engine_env_from(
    explicit: &BTreeMap<String, String>,
    inherited: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    workloads::engine_knobs::ENV_SWITCHES
        .iter()
        .filter_map(|name| {
            let value = explicit.get(*name).cloned().or_else(|| inherited(name))?;
            Some((name.to_string(), value))
        })
        .collect()
}

pub fn source(repo_root: &Path, engine_bin: &Path, build: &BuildInfo) -> SourceFingerprint {
    let declared = std::env::var("DYNO_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let (commit, diff_hash) = resolve_commit(crate::git::state(repo_root), declared);
    SourceFingerprint {
        git_commit: commit,
        git_dirty: diff_hash.is_some(),
        git_diff_hash: diff_hash,
        rustc_version: tool_version(&std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())),
        cargo_version: tool_version(&std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())),
        build_profile: build.profile.clone(),
        features: build.features.clone(),
        engine_binary_hash: hash_file(engine_bin).unwrap_or_else(|_| UNKNOWN.into()),
        cargo_lock_hash: hash_file(&repo_root.join("Cargo.lock")).ok(),
    }
}

/// The commit and the diff hash (None = clean) to record. `declared` is
/// DYNO_GIT_COMMIT, set by whoever copied the tree elsewhere (the GPU machine
/// has no cargo, so binaries are built here and the tree copied there). A
/// copy without history has no commit of its own; a copy with stale history
/// has the wrong one, and its changes against that HEAD describe nothing. In
/// both cases the declared commit is recorded, with no diff hash, and a
/// warning says so; when it names the repository's HEAD, git's full id and
/// diff are kept.
fn resolve_commit(
    git: Option<GitState>,
    declared: Option<String>,
) -> (Option<String>, Option<String>) {
    let Some(declared) = declared.map(|d| d.trim().to_lowercase()) else {
        return git.map_or((None, None), |g| (g.commit, g.diff_hash));
    };
    match git {
        Some(g)
            if g.commit
                .as_deref()
                .is_some_and(|c| c.starts_with(&declared) || declared.starts_with(c)) =>
        {
            (g.commit, g.diff_hash)
        }
        Some(g) => {
            crate::warnings::emit(&crate::warnings::Warning::DeclaredCommitNotHead {
                declared: declared.clone(),
                head: g.commit.clone().unwrap_or_else(|| "none".into()),
            });
            (Some(declared), None)
        }
        None => (Some(declared), None),
    }
}

/// `<tool> --version`'s first line, or "unknown" when it cannot run.
fn tool_version(tool: &str) -> String {
    duct::cmd(tool, ["--version"])
        .stderr_null()
        .read()
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| UNKNOWN.into())
}

pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    hash_reader(&mut hasher, std::fs::File::open(path)?)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// blake3 over every file under `dir` in sorted relative-path order,
/// names included: the identity of a checkpoint directory.
pub fn hash_dir(dir: &Path) -> std::io::Result<String> {
    let mut files = Vec::new();
    collect_files(dir, dir, &mut files)?;
    files.sort();
    let mut hasher = blake3::Hasher::new();
    for rel in files {
        let name = rel.to_string_lossy();
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        let file = std::fs::File::open(dir.join(&rel))?;
        hasher.update(&file.metadata()?.len().to_le_bytes());
        hash_reader(&mut hasher, file)?;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

fn collect_files(
    base: &Path,
    dir: &Path,
    out: &mut Vec<std::path::PathBuf>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_files(base, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(base) {
            out.push(rel.to_path_buf());
        }
    }
    Ok(())
}

fn hash_reader(hasher: &mut blake3::Hasher, mut reader: impl Read) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

pub fn host() -> HostFingerprint {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| UNKNOWN.into());
    HostFingerprint {
        cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| UNKNOWN.into()),
        cores: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(0),
        memory_bytes: mem_total_bytes(&meminfo).unwrap_or(0),
        os: os_name(&os_release).unwrap_or_else(|| std::env::consts::OS.into()),
        kernel,
    }
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn os_name(os_release: &str) -> Option<String> {
    let line = os_release.lines().find(|l| l.starts_with("PRETTY_NAME="))?;
    Some(line["PRETTY_NAME=".len()..].trim_matches('"').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_env_keeps_the_switches_an_explicit_value_wins() {
        let inherited = |name: &str| match name {
            "DYNO_CUDA_ATTN_MMA" => Some("0".to_string()),
            "DYNO_CUDA_PDL" => Some("0".to_string()),
            "DYNO_API_KEY" => Some("secret".to_string()),
            _ => None,
        };
        let explicit: BTreeMap<String, String> = [
            ("DYNO_CUDA_PDL".to_string(), "1".to_string()),
            ("DYNO_CUDA_KV_LAYOUT".to_string(), "head".to_string()),
            ("RUST_LOG".to_string(), "debug".to_string()),
        ]
        .into();
        let env = engine_env_from(&explicit, inherited);
        let expected: BTreeMap<String, String> = [
            ("DYNO_CUDA_ATTN_MMA", "0"),
            ("DYNO_CUDA_KV_LAYOUT", "head"),
            ("DYNO_CUDA_PDL", "1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        // Not the API key (not a switch, and a secret), not RUST_LOG.
        assert_eq!(env, expected);
        assert!(engine_env_from(&BTreeMap::new(), |_| None).is_empty());
    }

    #[test]
    fn parses_proc_files() {
        let cpu = "processor\t: 0\nmodel name\t: AMD EPYC 9654 96-Core Processor\n";
        assert_eq!(
            cpu_model(cpu).as_deref(),
            Some("AMD EPYC 9654 96-Core Processor")
        );
        assert_eq!(
            mem_total_bytes("MemTotal:       16384 kB\nMemFree: 1 kB\n"),
            Some(16384 * 1024)
        );
        assert_eq!(
            os_name("NAME=\"Ubuntu\"\nPRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\n").as_deref(),
            Some("Ubuntu 24.04.1 LTS")
        );
        assert_eq!(cpu_model(""), None);
    }

    #[test]
    fn dir_hash_sees_names_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"1").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), b"2").unwrap();
        let h1 = hash_dir(dir.path()).unwrap();
        assert_eq!(h1, hash_dir(dir.path()).unwrap());
        std::fs::write(dir.path().join("sub/b"), b"3").unwrap();
        let h2 = hash_dir(dir.path()).unwrap();
        assert_ne!(h1, h2);
        std::fs::rename(dir.path().join("a"), dir.path().join("c")).unwrap();
        assert_ne!(h2, hash_dir(dir.path()).unwrap());
    }

    #[test]
    fn prebuilt_profile_from_cargo_layout() {
        let p = BuildInfo::prebuilt(Path::new("/x/target/release/engine"));
        assert_eq!(p.profile, "release");
        let p = BuildInfo::prebuilt(Path::new("/opt/engine"));
        assert_eq!(p.profile, UNKNOWN);
    }

    #[test]
    fn missing_tool_is_unknown() {
        assert_eq!(tool_version("/nonexistent/tool-for-dyno"), UNKNOWN);
    }

    fn state(commit: Option<&str>, diff: Option<&str>) -> Option<GitState> {
        Some(GitState {
            commit: commit.map(str::to_string),
            diff_hash: diff.map(str::to_string),
        })
    }

    #[test]
    fn declared_commit_fills_in_or_overrides_a_stale_head() {
        let d = |s: &str| Some(s.to_string());
        // Nothing declared: git's view as is.
        assert_eq!(
            resolve_commit(state(Some("abc123"), Some("h")), None),
            (d("abc123"), d("h"))
        );
        // A copy without history: the declared commit, nothing to diff.
        assert_eq!(resolve_commit(None, d("8B552FF")), (d("8b552ff"), None));
        // The declared commit is HEAD (short form): git's full id and diff.
        assert_eq!(
            resolve_commit(state(Some("8b552ff0e1"), Some("h")), d("8b552ff")),
            (d("8b552ff0e1"), d("h"))
        );
        // A stale HEAD: the declared commit, and the diff against the stale
        // HEAD is dropped.
        assert_eq!(
            resolve_commit(state(Some("158ec5f2d1"), Some("h")), d("8b552ff")),
            (d("8b552ff"), None)
        );
    }

    #[test]
    fn this_checkout_has_a_commit() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        if let Some(g) = crate::git::state(root) {
            assert_eq!(g.commit.map(|c| c.len()), Some(40));
        }
    }
}
