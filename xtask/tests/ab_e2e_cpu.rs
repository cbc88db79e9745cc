//! Interleaved A/B end to end on the CPU with the real engine and the
//! `tiny` preset: the same engine against itself is not flagged, and a
//! deliberately slower side B (max_num_seqs = 1) is flagged REGRESSED by
//! the paired test. `DYNO_ENGINE_BIN` skips the release build.

use std::path::{Path, PathBuf};

use clap::Parser;
use xtask::cli::{BenchArgs, Cli, Command};
use xtask::compare::compare_runs;
use xtask::compare::verdict::{Design, OutputVerdict, Policy, Verdict};
use xtask::run_record::{AbSide, RunRecord};
use xtask::store::Store;

const SPEC: &str = r#"name = "ab-offline"
description = "A/B end-to-end: an offline batch on the tiny preset"
model = "tiny"
seed = 11
requests = 16
warmup_requests = 2
prompt_len = { fixed = 16 }
output_len = { fixed = 16 }
arrival = "offline"

[sampling]
ignore_eos = true
"#;

const SUITES: &str = r#"[ab]
description = "A/B end-to-end"
device = "cpu"
workloads = ["ab-offline"]
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

/// `cargo xtask bench --ab ... EXTRA` in `root`; the exit code and the two
/// stored runs (A, B) of the session.
fn ab_bench(
    root: &Path,
    engine: &Path,
    extra: &[&str],
) -> (i32, (String, RunRecord), (String, RunRecord)) {
    let catalogue = root.join("catalogue");
    std::fs::create_dir_all(catalogue.join("specs")).unwrap();
    std::fs::write(catalogue.join("specs/ab-offline.toml"), SPEC).unwrap();
    std::fs::write(catalogue.join("suites.toml"), SUITES).unwrap();
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut argv: Vec<String> = [
        "xtask",
        "bench",
        "--suite",
        "ab",
        "--device",
        "cpu",
        "--trials",
        "5",
        "--ab",
        "--ab-seed",
        "3",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    argv.extend([
        "--engine-bin".into(),
        s(engine),
        "--catalogue".into(),
        s(&catalogue),
        "--results".into(),
        s(&root.join("results")),
    ]);
    argv.extend(extra.iter().map(|x| x.to_string()));
    let args: BenchArgs = match Cli::parse_from(argv).command {
        Command::Bench(args) => *args,
        other => panic!("parsed as {other:?}"),
    };
    let code = xtask::bench::run(&args, root).expect("bench runs");
    let store = Store::open(&root.join("results")).unwrap();
    let mut runs: Vec<(String, RunRecord)> = store
        .runs()
        .unwrap()
        .into_iter()
        .map(|e| store.resolve_run(&e.id).unwrap())
        .filter(|(_, r)| r.interleaved.is_some())
        .collect();
    runs.sort_by_key(|(_, r)| r.interleaved.as_ref().unwrap().side == AbSide::B);
    let b = runs.pop().unwrap();
    let a = runs.pop().unwrap();
    (code, a, b)
}

#[test]
fn same_engine_is_not_flagged_and_a_slower_side_b_is_regressed() {
    let engine = engine_binary();

    // A/A: one engine, both sides
    let tmp = tempfile::tempdir().unwrap();
    let (code, (a_id, a), (b_id, b)) = ab_bench(tmp.path(), &engine, &[]);
    let ia = a.interleaved.as_ref().unwrap();
    let ib = b.interleaved.as_ref().unwrap();
    assert_eq!(ia.session, ib.session);
    assert_eq!((ia.side, ib.side), (AbSide::A, AbSide::B));
    assert!(a.workloads[0].trials.iter().all(|t| t.block.is_some()));
    let c = compare_runs((&a_id, &a), (&b_id, &b), &[], &Policy::default()).unwrap();
    println!("{}", xtask::compare::report::terminal(&c));
    assert_eq!(c.design, Design::Paired);
    let s = c.summary();
    assert_eq!((s.regressed, s.improved), (0, 0), "{s:?}");
    assert_eq!(
        c.workloads[0].output.as_ref().unwrap().verdict,
        OutputVerdict::Same
    );
    assert_eq!(code, 0);
    // `compare latest` finds the session's other side by itself
    let out = tmp.path().join("latest.json");
    let args = xtask::cli::CompareArgs {
        run: "latest".into(),
        candidate: None,
        format: xtask::cli::Format::Json,
        out: Some(out.clone()),
        results: Some(tmp.path().join("results")),
        no_step_summary: true,
        across: vec![],
    };
    assert_eq!(
        xtask::commands::compare::run_cli(args, tmp.path()).unwrap(),
        0
    );
    let json = std::fs::read_to_string(&out).unwrap();
    assert!(json.contains("\"design\": \"paired\""), "{json}");

    // side B one sequence at a time: slower, and flagged
    let tmp = tempfile::tempdir().unwrap();
    let (code, (a_id, a), (b_id, b)) =
        ab_bench(tmp.path(), &engine, &["--b-set", "max_num_seqs=1"]);
    let across = ["engine_config".to_string()];
    let c = compare_runs((&a_id, &a), (&b_id, &b), &across, &Policy::default()).unwrap();
    println!("{}", xtask::compare::report::terminal(&c));
    // One sequence at a time: requests queue behind each other, so queueing
    // and TTFT (and, on a quiet machine, throughput) are far worse.
    let regressed: Vec<&str> = c.workloads[0]
        .metrics
        .iter()
        .filter(|m| m.verdict == Verdict::Regressed)
        .map(|m| m.metric.as_str())
        .collect();
    assert!(
        regressed.iter().any(|m| [
            "output_throughput",
            "mean_ttft_ms",
            "p50_ttft_ms",
            "mean_queue_ms",
            "p50_queue_ms"
        ]
        .contains(m)),
        "{regressed:?}"
    );
    // (TPOT/ITL may well improve: one sequence at a time decodes each token
    // faster; the regression is in queueing, TTFT and throughput.)
    assert_eq!(code, 1, "the bench's own verdict");

    // side B with an engine switch (one the CPU backend does not read, so
    // the engines are the same): recorded in B's fingerprint, set aside by
    // the session's own comparison, and a class difference anywhere else.
    let tmp = tempfile::tempdir().unwrap();
    let (_, (a_id, a), (b_id, b)) = ab_bench(
        tmp.path(),
        &engine,
        &["--b-env", "DYNO_CUDA_PDL=0", "--b-env", "RUST_BACKTRACE=1"],
    );
    assert!(a.fingerprint.engine_env.is_empty(), "{:?}", a.fingerprint);
    assert_eq!(
        b.fingerprint.engine_env,
        [("DYNO_CUDA_PDL".to_string(), "0".to_string())].into(),
        "only the switch, not RUST_BACKTRACE"
    );
    let across = xtask::compare::varied_by_session(&a, &b);
    assert_eq!(across, ["engine_env"]);
    let c = compare_runs((&a_id, &a), (&b_id, &b), &across, &Policy::default()).unwrap();
    assert_eq!(c.design, Design::Paired);
    assert!(c.workloads[0].no_verdict.is_none(), "{:?}", c.workloads[0]);
    assert!(!c.workloads[0].metrics.is_empty());
    let c = compare_runs((&a_id, &a), (&b_id, &b), &[], &Policy::default()).unwrap();
    let w = &c.workloads[0];
    assert!(w.no_verdict.is_some(), "{w:?}");
    let fields: Vec<&str> = w
        .class_differences
        .iter()
        .map(|d| d.field.as_str())
        .collect();
    assert_eq!(fields, ["engine_env"]);
}
