//! The SLURM launcher on a real cluster: `.ci/slurm/start.sh` starts a
//! one-node one on the CI machine, then
//!
//! ```sh
//! SLURM_CONF=/tmp/dyno-slurm/slurm.conf DYNO_SLURM_TESTS=1 \
//!     cargo test -p xtask --test slurm_cluster -- --nocapture
//! ```
//!
//! Without `DYNO_SLURM_TESTS=1` every test here returns at once (with a
//! line saying so). The engine is `$DYNO_ENGINE_BIN`, else
//! `target/release/engine` (built with cargo when missing). The store and
//! the sweep files live in a folder every "node" sees (here: the machine).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn enabled(test: &str) -> bool {
    let on = std::env::var("DYNO_SLURM_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("{test}: skipped (set DYNO_SLURM_TESTS=1 with a SLURM cluster up; see .ci/slurm/start.sh)");
    }
    on
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn engine() -> PathBuf {
    if let Some(bin) = std::env::var_os("DYNO_ENGINE_BIN") {
        return bin.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let bin = target.join("release/engine");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", "engine"])
            .current_dir(root())
            .status()
            .unwrap();
        assert!(status.success(), "building the engine failed");
    }
    bin
}

/// A folder for one test's store and files, removed at the end.
fn workdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("dyno-slurm-{name}-"))
        .tempdir()
        .unwrap()
}

fn xtask(sweep: &Path, results: &Path, engine: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("sweep")
        .arg(sweep)
        .args(["--launcher", "slurm", "--device", "cpu"])
        .arg("--results")
        .arg(results)
        .arg("--engine-bin")
        .arg(engine)
        .args(args)
        .env("DYNO_ROOT", root())
        .output()
        .unwrap();
    eprintln!(
        "$ xtask sweep {} {}\n{}{}",
        sweep.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until squeue lists no queued or running job named `dyno.<sweep>.*`.
fn wait_for_sweep(sweep: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        let out = Command::new("squeue")
            .args(["-h", "--me", "-o", "%j|%T"])
            .output()
            .unwrap();
        let active = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(&format!("dyno.{sweep}.")))
            .count();
        if active == 0 {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "sweep {sweep}: {active} job(s) still active after {limit:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Two points of `tiny` and one the engine rejects (`invalid-config`),
/// one trial each, through sbatch; then a re-run submits nothing.
#[test]
fn a_cpu_sweep_on_tiny_through_sbatch() {
    if !enabled("a_cpu_sweep_on_tiny_through_sbatch") {
        return;
    }
    let engine = engine();
    let dir = workdir("sweep");
    let sweep = dir.path().join("sweep.toml");
    std::fs::write(
        &sweep,
        r#"name = "ci-slurm"
description = "CI: two tiny points and an invalid one through sbatch"
trials = 1
device = "cpu"

[fixed]
model = "tiny"
seed = 3
requests = 4
warmup_requests = 1
prompt_len = 8
output_len = 4

[[experiment]]
name = "seqs"
max_num_seqs = [2, 4]

[[experiment]]
name = "invalid"
block_size = 0

[slurm]
time = "10"
"#,
    )
    .unwrap();
    let results = dir.path().join("results");
    let first = xtask(&sweep, &results, &engine, &[]);
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(text(&first).matches("submitted point").count(), 3);
    let again = xtask(&sweep, &results, &engine, &[]);
    assert_eq!(
        text(&again).matches("submitted point").count(),
        0,
        "a point was submitted twice: {}",
        text(&again)
    );

    wait_for_sweep("ci-slurm", Duration::from_secs(600));
    let status = xtask(&sweep, &results, &engine, &["--status"]);
    let s = text(&status);
    assert!(status.status.success(), "{s}");
    assert!(s.contains("2 done"), "{s}");
    assert!(s.contains("1 failed (invalid-config)"), "{s}");

    // Every point in the ledger, with a log next to it.
    let ledger = results.join("sweeps/ci-slurm/cpu");
    let entries: Vec<_> = std::fs::read_dir(&ledger)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(entries.len(), 3);
    for e in entries {
        let point = e.path().file_stem().unwrap().to_string_lossy().into_owned();
        let logs: Vec<_> = std::fs::read_dir(ledger.join("jobs").join(&point))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("slurm-"))
            .collect();
        assert_eq!(logs.len(), 1, "point {point}");
    }

    let rerun = xtask(&sweep, &results, &engine, &[]);
    assert!(rerun.status.success(), "{}", text(&rerun));
    assert_eq!(text(&rerun).matches("submitted point").count(), 0);
    assert!(
        text(&rerun).contains("nothing to submit"),
        "{}",
        text(&rerun)
    );

    // Many jobs wrote into one store: it verifies.
    let verify = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["store", "verify"])
        .env("DYNO_ROOT", dir.path())
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify));

    let report = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("sweep")
        .arg(&sweep)
        .args(["--device", "cpu", "--report-only", "--results"])
        .arg(&results)
        .env("DYNO_ROOT", root())
        .output()
        .unwrap();
    assert!(
        report.status.code().is_some_and(|c| c <= 1),
        "{}",
        text(&report)
    );
}

/// A point that outlives its time limit: SLURM kills the job (TIMEOUT) and
/// the point is recorded as `timeout`; a re-run does not submit it again.
/// The engine is a stand-in that hangs, so the limit (1 minute, SLURM's
/// smallest) is what ends it.
#[test]
fn a_job_killed_at_its_time_limit_is_a_timeout() {
    if !enabled("a_job_killed_at_its_time_limit_is_a_timeout") {
        return;
    }
    let dir = workdir("timeout");
    let real_engine = engine();
    let engine = dir.path().join("hanging-engine");
    std::fs::write(
        &engine,
        "#!/bin/sh\ncase \"$1\" in\n  info) echo '{\"engine_version\":\"0.0.0\",\"backends\":[\"cpu\"],\"cuda_available\":false,\"cpu_threads\":2,\"gpus\":[]}' ;;\n  *) exec sleep 600 ;;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&engine, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sweep = dir.path().join("sweep.toml");
    std::fs::write(
        &sweep,
        r#"name = "ci-slurm-timeout"
description = "CI: one point that outlives its time limit"
trials = 1
device = "cpu"

[fixed]
model = "tiny"
seed = 4
requests = 2
warmup_requests = 0
prompt_len = 8
output_len = 4

[[experiment]]
name = "hang"

[slurm]
time = "1"
"#,
    )
    .unwrap();
    let results = dir.path().join("results");
    // The model must exist before the job starts: the stand-in cannot
    // synthesize it.
    xtask::model::resolve("tiny", &real_engine, &root().join(".models")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("sweep")
        .arg(&sweep)
        .args(["--launcher", "slurm", "--device", "cpu", "--results"])
        .arg(&results)
        .arg("--engine-bin")
        .arg(&engine)
        .env("DYNO_ROOT", root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).matches("submitted point").count(), 1);
    wait_for_sweep("ci-slurm-timeout", Duration::from_secs(240));
    let status = xtask(&sweep, &results, &engine, &["--status"]);
    let s = text(&status);
    assert!(s.contains("1 failed (timeout)"), "{s}");
    assert!(s.contains("TIMEOUT"), "{s}");
    let rerun = xtask(&sweep, &results, &engine, &[]);
    assert_eq!(
        text(&rerun).matches("submitted point").count(),
        0,
        "{}",
        text(&rerun)
    );
}

/// SLURM refuses what it cannot run: a partition that does not exist, a
/// GPU the node does not have. Each point is named with SLURM's reason, and
/// nothing is queued.
#[test]
fn jobs_slurm_rejects_are_reported_per_point() {
    if !enabled("jobs_slurm_rejects_are_reported_per_point") {
        return;
    }
    let dir = workdir("reject");
    let sweep = dir.path().join("sweep.toml");
    std::fs::write(
        &sweep,
        r#"name = "ci-slurm-reject"
description = "CI: jobs SLURM refuses"
trials = 1

[fixed]
model = "tiny"
requests = 2
prompt_len = 8
output_len = 4

[[experiment]]
name = "seqs"
max_num_seqs = [2, 4]
"#,
    )
    .unwrap();
    let results = dir.path().join("results");
    let engine = dir.path().join("engine");
    std::fs::write(&engine, "").unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .arg("sweep")
            .arg(&sweep)
            .args(["--launcher", "slurm", "--results"])
            .arg(&results)
            .arg("--engine-bin")
            .arg(&engine)
            .args(args)
            .env("DYNO_ROOT", root())
            .output()
            .unwrap()
    };
    let out = run(&["--device", "cpu", "--partition", "no-such-partition"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert_eq!(t.matches("SLURM rejected the job").count(), 2, "{t}");
    assert!(t.to_lowercase().contains("invalid partition"), "{t}");

    let out = run(&["--device", "cuda", "--gpus-per-point", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert_eq!(t.matches("SLURM rejected the job").count(), 2, "{t}");
    assert!(t.contains("0 submitted"), "{t}");
}
