//! A sweep over server settings as one command: `cargo xtask sweep FILE
//! --target URL --launch CMD` with a `{max_num_seqs}` placeholder starts
//! `engine serve` (on `tiny`, CPU) once per point with that point's value,
//! drives it over HTTP, and stops it. Without `--launch` the same sweep is
//! refused (its knobs cannot reach a server it did not start). The engine
//! is built with `--features serve` in the test profile.

mod engine_build;

use engine_build::{engine_with_features, free_port, workspace_root};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use xtask::run_record::{RunRecord, TrialStatus};
use xtask::store::Store;
use xtask::sweep::{PointRecord, PointStatus};

const SWEEP: &str = r#"name = "http-knobs"
description = "max_num_seqs {1, 2} of engine serve on tiny, over HTTP"
trials = 1

[fixed]
model = "tiny"
seed = 3
requests = 4
warmup_requests = 1
prompt_len = 8
output_len = 4
ignore_eos = true
concurrency = 2

[[experiment]]
name = "seqs"
max_num_seqs = [1, 2]
"#;

fn sweep(file: &Path, results: &Path, engine: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("sweep")
        .arg(file)
        .args(["--device", "cpu", "--results"])
        .arg(results)
        .arg("--engine-bin")
        .arg(engine)
        .args(extra)
        .env("DYNO_ROOT", workspace_root())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_sweep_over_server_settings_is_one_command() {
    let engine = engine_with_features("serve");
    let root = workspace_root();
    let model = xtask::model::resolve("tiny", &engine, &root.join(".models")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("http-knobs.toml");
    std::fs::write(&file, SWEEP).unwrap();
    let results = dir.path().join("results");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");

    // Knobs vary and nothing starts the server: refused before running.
    let (code, text) = sweep(&file, &results, &engine, &["--target", &url]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("varies engine knobs (max_num_seqs)") && text.contains("--launch"),
        "{text}"
    );
    // A launch command that ignores the varied knob is refused too.
    let (code, text) = sweep(
        &file,
        &results,
        &engine,
        &["--target", &url, "--launch", "true"],
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("has no {max_num_seqs}"), "{text}");

    // engine serve takes its knobs from a config file: the launch command
    // writes one per point.
    let config = dir.path().join("engine-{max_num_seqs}.toml");
    let launch = format!(
        "printf 'max_num_seqs = {{max_num_seqs}}\\n' > {config} && exec {engine} serve --model {model} \
         --device cpu --port {port} --config {config}",
        config = config.display(),
        engine = engine.display(),
        model = model.path.display(),
    );
    let (code, text) = sweep(
        &file,
        &results,
        &engine,
        &["--target", &url, "--launch", &launch],
    );
    assert_eq!(code, 0, "{text}");
    // The launched servers were stopped.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());

    // Two points, each a stored run against its own server.
    let sweeps = results.join("sweeps/http-knobs");
    let ledgers: Vec<PathBuf> = std::fs::read_dir(&sweeps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(ledgers.len(), 1, "{ledgers:?}");
    let ledger = &ledgers[0];
    let name = ledger.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(&format!("http-127_0_0_1_{port}-")),
        "an HTTP sweep has a ledger of its own: {name}"
    );
    let store = Store::open(&results).unwrap();
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(ledger).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let record: PointRecord =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(record.status, PointStatus::Done, "{record:?}");
        let (_, run): (_, RunRecord) = store.resolve_run(record.run_id.as_ref().unwrap()).unwrap();
        let target = run.fingerprint.target.as_ref().expect("an HTTP run");
        let seqs = record.engine["max_num_seqs"].as_i64().unwrap();
        assert!(
            target
                .launch
                .as_ref()
                .unwrap()
                .contains(&format!("engine-{seqs}.toml")),
            "point max_num_seqs={seqs}: {:?}",
            target.launch
        );
        let t = &run.workloads[0].trials[0];
        assert_eq!(t.status, TrialStatus::Ok, "{:?}", t.status);
        assert!(t.metrics.contains_key("p50_ttft_ms"));
        seen.push(seqs);
    }
    seen.sort();
    assert_eq!(seen, [1, 2]);
    // Each server ran with its point's value.
    for seqs in [1, 2] {
        let cfg = std::fs::read_to_string(dir.path().join(format!("engine-{seqs}.toml"))).unwrap();
        assert_eq!(cfg.trim(), format!("max_num_seqs = {seqs}"));
    }
}
