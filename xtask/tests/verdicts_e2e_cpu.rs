//! End to end on the CPU with the real engine and the `tiny` preset: a
//! deliberately slower engine config (max_num_seqs = 1, one sequence at a
//! time) is flagged REGRESSED against runs made with the default config, and
//! the default config checked against its own committed baseline through
//! `cargo xtask bench` is not flagged.
//!
//! The engine is built in release through cargo (as `cargo xtask bench`
//! does) unless `DYNO_ENGINE_BIN` names a binary. About a minute on 2 cores
//! once the engine is built.

use std::path::{Path, PathBuf};

use clap::Parser;
use xtask::cli::{BenchArgs, Cli, Command};
use xtask::compare::verdict::{OutputVerdict, Policy, Verdict};
use xtask::compare::{compare_runs, compare_with_baselines};
use xtask::run_record::RunRecord;
use xtask::store::Store;

const TRIALS: &str = "5";

/// Small enough that the one-at-a-time config takes about a second a trial.
const SPEC: &str = r#"name = "e2e-offline"
description = "verdicts end-to-end: an offline batch on the tiny preset"
model = "tiny"
seed = 7
requests = 16
warmup_requests = 2
prompt_len = { fixed = 16 }
output_len = { fixed = 16 }
arrival = "offline"

[sampling]
ignore_eos = true
"#;

const SUITES: &str = r#"[e2e]
description = "verdicts end-to-end"
device = "cpu"
workloads = ["e2e-offline"]
"#;

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

fn catalogue(dir: &Path, engine_table: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("specs")).unwrap();
    std::fs::write(
        dir.join("specs/e2e-offline.toml"),
        format!("{SPEC}{engine_table}"),
    )
    .unwrap();
    std::fs::write(dir.join("suites.toml"), SUITES).unwrap();
    dir.to_path_buf()
}

/// `cargo xtask bench` in `root` (its baselines/ and .models/), returning the
/// exit code and the stored run.
fn bench(root: &Path, engine: &Path, catalogue: &Path) -> (i32, String, RunRecord) {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let argv = [
        "xtask".into(),
        "bench".into(),
        "--suite".into(),
        "e2e".into(),
        "--device".into(),
        "cpu".into(),
        "--trials".into(),
        TRIALS.into(),
        "--engine-bin".into(),
        s(engine),
        "--catalogue".into(),
        s(catalogue),
        "--results".into(),
        s(&root.join("results")),
    ];
    let args: BenchArgs = match Cli::parse_from(argv).command {
        Command::Bench(args) => *args,
        other => panic!("parsed as {other:?}"),
    };
    let code = xtask::bench::run(&args, root).expect("bench runs");
    let (id, run) = Store::open(&root.join("results"))
        .unwrap()
        .resolve_run("latest")
        .unwrap();
    (code, id, run)
}

#[test]
fn slower_config_is_regressed_and_the_default_is_not() {
    let engine = engine_binary();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let default = catalogue(&root.join("default"), "");
    let slow = catalogue(&root.join("slow"), "\n[engine]\nmax_num_seqs = 1\n");

    // 1. a default run becomes the committed baseline of its class
    let (code, base_id, base) = bench(root, &engine, &default);
    assert_eq!(code, 0, "no baseline yet: no verdict, and every trial ok");
    let promoted = xtask::baseline::promote(root, &base_id, &base).unwrap();
    assert_eq!(promoted.promoted.len(), 1);

    // 2. the slower config: a different class, so never judged against the
    //    baseline by accident...
    let (_, slow_id, slow_run) = bench(root, &engine, &slow);
    let refused = compare_with_baselines(root, &slow_id, &slow_run, &Policy::default()).unwrap();
    assert!(!refused.has_verdicts());
    let why = refused.workloads[0].no_verdict.as_deref().unwrap();
    assert!(why.contains("engine_config"), "{why}");
    //    ...but flagged when compared across the config on purpose
    let across = ["engine_config".to_string()];
    let c = compare_runs(
        (&base_id, &base),
        (&slow_id, &slow_run),
        &across,
        &Policy::default(),
    )
    .unwrap();
    let w = &c.workloads[0];
    let tput = w
        .metrics
        .iter()
        .find(|m| m.metric == "output_throughput")
        .unwrap();
    println!("{}", xtask::compare::report::terminal(&c));
    assert_eq!(tput.verdict, Verdict::Regressed, "{tput:?}");
    assert_eq!(c.exit_code(), 1);
    // greedy decoding: batching must not change the tokens
    assert_eq!(w.output.as_ref().unwrap().verdict, OutputVerdict::Same);

    // 3. the default config again, through the bench flow: judged against
    //    the committed baseline and not flagged
    let (code, again_id, again) = bench(root, &engine, &default);
    let c = compare_with_baselines(root, &again_id, &again, &Policy::default()).unwrap();
    println!("{}", xtask::compare::report::terminal(&c));
    assert!(c.has_verdicts());
    let s = c.summary();
    assert_eq!(
        (s.regressed, s.output_changed, s.more_failed_trials),
        (0, 0, 0),
        "{s:?}"
    );
    assert_eq!(code, 0, "bench's own verdict against the baseline");
}
