//! The sweep acceptance test, on the CPU with the real engine and the
//! `tiny` preset: a 2 × 2 engine-knob grid × concurrency {1, 2, 4} plus one
//! point the engine rejects. The sweep is killed (its whole process group,
//! engine included) once a few points are recorded; the store still
//! verifies, and the re-run resumes: finished points are not run again,
//! the rejected point is recorded as `invalid-config`, every other point
//! completes, and the HTML report renders in headless Chromium (skipped,
//! saying so, where no browser is installed).
//!
//! The engine is built in release through cargo unless `DYNO_ENGINE_BIN`
//! names a binary. About 40 s on 2 cores once the engine is built.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xtask::store::Store;
use xtask::sweep::{PointRecord, PointStatus};

const SWEEP: &str = r#"name = "acceptance"
description = "2 x 2 engine knobs x concurrency {1, 2, 4} on tiny, and a point the engine rejects"
trials = 1

[fixed]
model = "tiny"
seed = 5
requests = 4
warmup_requests = 1
prompt_len = 16
output_len = 8
ignore_eos = true
concurrency = [1, 2, 4]

[[experiment]]
name = "grid"
max_num_seqs = [2, 4]
max_num_batched_tokens = [64, 128]

# max_num_batched_tokens below max_num_seqs: the engine refuses the config.
[[experiment]]
name = "rejected"
max_num_seqs = 8
max_num_batched_tokens = 4
concurrency = 1
"#;

const POINTS: usize = 13;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn engine_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("DYNO_ENGINE_BIN") {
        return PathBuf::from(bin);
    }
    xtask::build::build_engine(&repo_root())
        .expect("building the engine")
        .binary
}

fn sweep_command(file: &Path, results: &Path, engine: &Path, log: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.arg("sweep")
        .arg(file)
        .args(["--device", "cpu", "--results"])
        .arg(results)
        .arg("--engine-bin")
        .arg(engine)
        .env("DYNO_ROOT", repo_root())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
    cmd
}

fn ledger(results: &Path) -> BTreeMap<String, PointRecord> {
    let dir = results.join("sweeps/acceptance/cpu");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let r: PointRecord =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            out.insert(r.point_id.clone(), r);
        }
    }
    out
}

#[test]
fn a_killed_sweep_resumes_records_the_rejected_point_and_reports() {
    let engine = engine_binary();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acceptance.toml");
    std::fs::write(&file, SWEEP).unwrap();
    let results = dir.path().join("results");

    // First run, in its own process group, killed once 4 points are in.
    let mut first = sweep_command(&file, &results, &engine, &dir.path().join("first"));
    first.process_group(0);
    let mut child = first.spawn().unwrap();
    let started = Instant::now();
    while ledger(&results).len() < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no 4 points in 300 s"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the sweep ended before it was killed: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let group = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait().unwrap();
    let before = ledger(&results);
    assert!(
        before.len() >= 4 && before.len() < POINTS,
        "killed midway: {} points recorded",
        before.len()
    );
    let store = Store::open(&results).unwrap();
    assert!(
        store.verify().unwrap().is_clean(),
        "the store verifies after the kill"
    );

    // The re-run resumes.
    let log = dir.path().join("second");
    let status = sweep_command(&file, &results, &engine, &log)
        .status()
        .unwrap();
    let out = std::fs::read_to_string(log.with_extension("out")).unwrap();
    let err = std::fs::read_to_string(log.with_extension("err")).unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "a failed point makes exit code 1\n{out}\n{err}"
    );
    let after = ledger(&results);
    assert_eq!(after.len(), POINTS, "{out}\n{err}");
    for (id, r) in &before {
        let now = &after[id];
        assert_eq!(now.attempts, 1, "point {id} ({}) ran again", r.label);
        assert_eq!(now.run_id, r.run_id, "point {id} has a new run");
    }
    let rejected: Vec<&PointRecord> = after.values().filter(|r| !r.is_done()).collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].experiment, "rejected");
    match &rejected[0].status {
        PointStatus::Failed { class, message } => {
            assert_eq!(class.name(), "invalid-config");
            assert!(message.contains("max_num_batched_tokens"), "{message}");
        }
        PointStatus::Done => unreachable!(),
    }
    assert!(after
        .values()
        .filter(|r| r.experiment == "grid")
        .all(|r| r.is_done() && r.run_id.is_some()));
    // Every point's run is an ordinary stored run.
    for r in after.values() {
        if let Some(id) = &r.run_id {
            let (_, run) = store.resolve_run(id).unwrap();
            assert_eq!(run.suite.as_deref(), Some("sweep:acceptance"));
            assert_eq!(run.workloads[0].name, r.workload);
        }
    }
    assert!(store.verify().unwrap().is_clean());

    // Reports.
    let report = results.join("sweeps/acceptance/cpu/report");
    let csv = std::fs::read_to_string(report.join("benchmarking_results.csv")).unwrap();
    assert_eq!(csv.lines().count(), POINTS + 1, "{csv}");
    let header = csv.lines().next().unwrap();
    for column in [
        "experiment",
        "mns",
        "mnbt",
        "output_tps_per_gpu",
        "gpu_days_to_process_1b_tokens",
        "gpus_for_1b_tokens_per_hour",
        "failure_class",
        "p99_ttft_ms_mean",
        "p99_ttft_ms_stdev",
    ] {
        assert!(
            header.split(',').any(|c| c == column),
            "{column} in {header}"
        );
    }
    assert!(csv.contains("invalid-config"));
    let summary = std::fs::read_to_string(report.join("optimization_summary.csv")).unwrap();
    assert_eq!(
        summary.lines().count(),
        4,
        "one row per concurrency:\n{summary}"
    );
    check_html_renders(&report.join("report.html"));
}

/// Renders the report in headless Chromium and checks that every plot laid
/// out an SVG and that every table is there (the report's own script counts
/// them into `data-rendered`).
fn check_html_renders(html: &Path) {
    let text = std::fs::read_to_string(html).unwrap();
    let plots = text.matches("<figure class=\"plot\"").count();
    assert!(plots >= 5, "{plots} plots in the report");
    for id in xtask::sweep::report::html::TABLE_IDS {
        assert!(text.contains(&format!("id=\"{id}\"")), "table {id}");
    }
    let Some(browser) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    else {
        eprintln!(
            "SKIPPED: rendering the HTML report: no chromium on PATH (`apt-get install chromium`; .ci/run installs it)"
        );
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let rendered = dom
        .split("data-rendered=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| {
            panic!(
                "{browser} did not run the report's script: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        rendered.starts_with(&format!("plots={plots}/{plots} tables=3 ")),
        "rendered: {rendered}"
    );
}
