//! The pipeline driving `engine serve` over HTTP on the `tiny` preset:
//! `--serve` (a fresh server per trial, streamed) and `--target` with
//! `--launch` (one server for the run, whole answers). The engine binary is
//! built with `--features serve` in the test profile (already built when
//! the suite runs with `--all-features`).

mod engine_build;

use engine_build::{engine_with_features, free_port, workspace_root};

use std::path::Path;

use clap::Parser;
use workloads::{ItlBasis, RecordStatus, RequestRecord};
use xtask::cli::{BenchArgs, Cli, Command};
use xtask::run_record::{RunRecord, TrialStatus};
use xtask::store::Store;

fn args(extra: &[&str]) -> BenchArgs {
    let mut argv: Vec<String> = ["xtask", "bench", "--device", "cpu", "--model", "tiny"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.extend(extra.iter().map(|s| s.to_string()));
    match Cli::parse_from(argv).command {
        Command::Bench(a) => *a,
        _ => unreachable!(),
    }
}

fn records(store: &Store, object: &str) -> Vec<RequestRecord> {
    store.get(object).unwrap()
}

#[test]
fn the_pipeline_benchmarks_engine_serve_over_http() {
    let engine = engine_with_features("serve");
    let engine = engine.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    let results = results.to_str().unwrap();
    let root = workspace_root();

    // --serve, streamed: closed loop and Poisson open loop.
    let json = dir.path().join("serve.json");
    let a = args(&[
        "--serve",
        "--engine-bin",
        engine,
        "--workload",
        "smoke-closed-loop",
        "--workload",
        "smoke-poisson",
        "--trials",
        "1",
        "--results",
        results,
        "--json",
        json.to_str().unwrap(),
    ]);
    let code = xtask::bench::run(&a, &root).unwrap();
    assert!(code <= 1, "bench failed to run");
    let run: RunRecord = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let target = run
        .fingerprint
        .target
        .as_ref()
        .expect("an HTTP run has a target");
    assert!(target.stream);
    assert_eq!(target.server_kind, "dyno");
    let store = Store::open(Path::new(results)).unwrap();
    for w in &run.workloads {
        let t = &w.trials[0];
        assert_eq!(t.status, TrialStatus::Ok, "{}: {:?}", w.name, t.status);
        for metric in [
            "p50_ttft_ms",
            "p50_itl_ms",
            "output_throughput",
            "client_cpu_percent",
        ] {
            assert!(t.metrics.contains_key(metric), "{}: no {metric}", w.name);
        }
        assert!(
            !t.metrics.contains_key("p50_queue_ms"),
            "a client cannot see server queueing"
        );
        let recs = records(&store, t.records_object.as_ref().unwrap());
        assert!(!recs.is_empty());
        for r in &recs {
            assert_eq!(r.status, RecordStatus::Ok, "{r:?}");
            let c = r.client.as_ref().unwrap();
            assert_eq!(c.itl_basis, ItlBasis::Token);
            // ignore_eos: every request runs to its max_tokens, counted
            // by the server's usage, one time per token.
            assert_eq!(r.token_times_s.len() as u32, r.output_len);
            assert_eq!(r.output_token_ids.len() as u32, r.output_len);
            assert!(r.first_token_s.unwrap() >= r.arrival_s);
        }
        if w.name == "smoke-closed-loop" {
            assert!(
                t.metrics["p99_client_queue_ms"] > 0.0,
                "later requests wait for a slot"
            );
            assert!(t.metrics["mean_e2el_including_client_queue_ms"] > t.metrics["mean_e2el_ms"]);
        }
    }

    // --target + --launch, whole answers: one server for the run.
    let port = free_port();
    let model_dir = root.join(".models/tiny-seed0");
    let launch = format!(
        "{engine} serve --model {} --device cpu --port {port} --api-key s3cret",
        model_dir.display()
    );
    std::env::set_var("DYNO_TEST_KEY", "s3cret");
    let json = dir.path().join("target.json");
    let url = format!("http://127.0.0.1:{port}");
    let a = args(&[
        "--target",
        &url,
        "--launch",
        &launch,
        "--api-key-env",
        "DYNO_TEST_KEY",
        "--no-stream",
        "--engine-bin",
        engine,
        "--workload",
        "smoke-offline",
        "--trials",
        "1",
        "--results",
        results,
        "--json",
        json.to_str().unwrap(),
    ]);
    let code = xtask::bench::run(&a, &root).unwrap();
    assert!(code <= 1);
    let text = std::fs::read_to_string(&json).unwrap();
    assert!(!text.contains("s3cret"), "the API key must never be stored");
    let run: RunRecord = serde_json::from_str(&text).unwrap();
    let target = run.fingerprint.target.unwrap();
    assert!(!target.stream);
    assert!(target.launch.unwrap().contains("--api-key <redacted>"));
    assert_eq!(target.models["data"][0]["owned_by"], "dyno");
    let t = &run.workloads[0].trials[0];
    assert_eq!(t.status, TrialStatus::Ok, "{:?}", t.status);
    let recs = records(&store, t.records_object.as_ref().unwrap());
    assert!(recs
        .iter()
        .all(|r| r.client.as_ref().unwrap().itl_basis == ItlBasis::None && r.output_len == 64));
    // The launched server was stopped.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}
