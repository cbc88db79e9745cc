//! `cargo xtask compare A B` on bad input: runs of different fingerprint
//! classes are refused with exit code 2 (nothing judged must not read as
//! "no regression"), and the store is left as it was.

use xtask::cli::{CompareArgs, Format};
use xtask::fixtures::{cpu_fingerprint, gpu_fingerprint, ok_trial, run, workload};
use xtask::store::Store;

fn args(root: &std::path::Path, a: &str, b: &str) -> CompareArgs {
    CompareArgs {
        run: a.into(),
        candidate: Some(b.into()),
        format: Format::Json,
        out: Some(root.join("out.json")),
        results: Some(root.join("results")),
        no_step_summary: true,
        across: vec![],
    }
}

#[test]
fn different_classes_exit_two_and_same_class_compares() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("results")).unwrap();
    let trials = |v: f64| {
        (0..3)
            .map(|i| ok_trial(i, &[("output_throughput", v + i as f64)], "h"))
            .collect()
    };
    let cpu = store
        .add_run(&run(cpu_fingerprint(), vec![workload("w", trials(100.0))]))
        .unwrap();
    let mut later = run(cpu_fingerprint(), vec![workload("w", trials(101.0))]);
    later.created_at = "2026-11-24T07:00:00Z".into();
    let cpu2 = store.add_run(&later).unwrap();
    let mut gpu_run = run(gpu_fingerprint(), vec![workload("w", trials(100.0))]);
    gpu_run.created_at = "2026-11-24T08:00:00Z".into();
    let gpu = store.add_run(&gpu_run).unwrap();
    let before = std::fs::read(tmp.path().join("results/index.json")).unwrap();

    let code = xtask::commands::compare::run_cli(args(tmp.path(), &cpu, &gpu), tmp.path()).unwrap();
    assert_eq!(code, 2, "different classes are refused");
    let code =
        xtask::commands::compare::run_cli(args(tmp.path(), &cpu, &cpu2), tmp.path()).unwrap();
    assert!(code == 0 || code == 1, "same class is judged: {code}");
    assert_eq!(
        std::fs::read(tmp.path().join("results/index.json")).unwrap(),
        before,
        "nothing stored changed"
    );
}
