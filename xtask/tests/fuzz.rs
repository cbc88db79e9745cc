//! Property tests that feed what xtask reads back from disk damaged and
//! random input: committed baseline files and store objects (run objects,
//! the index, export files). Each must give a value or an error, never a
//! panic. CI runs 300 cases per target (each case writes files);
//! `DYNO_FUZZ_CASES=1000000 cargo test --release -p xtask --test fuzz`
//! runs a million.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use xtask::baseline::{self, class::FingerprintClass, file};
use xtask::compare::verdict::Policy;
use xtask::fixtures::{cpu_fingerprint, failed_trial, ok_trial, run, workload};
use xtask::run_record::RunRecord;
use xtask::store::{hash_hex, Store};

fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("DYNO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// `base` with up to 8 byte edits (replace, insert, delete) at random
/// places, drawn mostly from characters that change JSON's meaning.
fn mutated(base: String) -> impl Strategy<Value = Vec<u8>> {
    let edits = prop::collection::vec((any::<usize>(), 0u8..3, any::<u8>()), 0..8);
    edits.prop_map(move |edits| {
        const ODD: &[u8] = b"0123456789.-+eE\"[]{},:\n \\nulltrfase";
        let mut bytes = base.as_bytes().to_vec();
        for (pos, op, b) in edits {
            let b = if b < 128 {
                ODD[b as usize % ODD.len()]
            } else {
                b
            };
            let at = if bytes.is_empty() {
                0
            } else {
                pos % bytes.len()
            };
            match op {
                0 if !bytes.is_empty() => bytes[at] = b,
                1 => bytes.insert(at, b),
                _ if !bytes.is_empty() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        bytes
    })
}

fn sample_run() -> RunRecord {
    let trials = vec![
        ok_trial(0, &[("output_throughput", 10.0), ("p99_ttft_ms", 5.0)], "h"),
        ok_trial(1, &[("output_throughput", 11.0), ("p99_ttft_ms", 5.5)], "h"),
        failed_trial(2, "oom"),
    ];
    run(cpu_fingerprint(), vec![workload("w", trials)])
}

/// A repo root with the baseline of `sample_run`, and that folder.
fn promoted() -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let r = sample_run();
    let report = baseline::promote(root.path(), "run1", &r).unwrap();
    let dir = report.promoted[0].dir.clone();
    (root, dir)
}

/// The promoted folder's name and its two files, made once.
fn promoted_files() -> &'static (String, String, String) {
    static FILES: OnceLock<(String, String, String)> = OnceLock::new();
    FILES.get_or_init(|| {
        let (_root, dir) = promoted();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        (name, read(file::CLASS_FILE), read(file::BASELINE_FILE))
    })
}

/// A repo root holding the sample baseline with `class` and `baseline` as
/// its two files.
fn baselines_with(class: &[u8], baseline: &[u8]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let dir = baseline::baselines_dir(root.path()).join(&promoted_files().0);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(file::CLASS_FILE), class).unwrap();
    std::fs::write(dir.join(file::BASELINE_FILE), baseline).unwrap();
    root
}

fn baseline_text() -> String {
    promoted_files().2.clone()
}

fn class_text() -> String {
    promoted_files().1.clone()
}

fn check_baselines(root: &Path) {
    let r = sample_run();
    let class = FingerprintClass::of(&r.fingerprint, &r.workloads[0]);
    let _ = baseline::lookup(root, &class);
    let _ = xtask::compare::compare_with_baselines(root, "cand", &r, &Policy::default());
}

fn run_text() -> String {
    String::from_utf8(xtask::store::to_canonical_bytes(&sample_run()).unwrap()).unwrap()
}

/// A store whose only run object holds `bytes`, filed under their own hash
/// (so it passes the hash check and reaches the JSON parser) and indexed.
fn check_run_object(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = hash_hex(bytes);
    let shard = dir.path().join("objects").join(&id[..2]);
    std::fs::create_dir_all(&shard).unwrap();
    std::fs::write(shard.join(&id[2..]), bytes).unwrap();
    let index = serde_json::json!({"version": 1, "runs": [{
        "id": id, "created_at": "2026-01-01T00:00:00Z", "suite": null,
        "device": "cpu", "model": "tiny", "workloads": ["w"], "git_commit": null
    }]});
    std::fs::write(dir.path().join("index.json"), index.to_string()).unwrap();
    let _ = store.resolve_run("latest");
    let _ = store.verify();
    let _ = store.fsck(false);
    let _ = store.gc_with_grace(true, Duration::ZERO);
}

fn check_index(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    std::fs::write(dir.path().join("index.json"), bytes).unwrap();
    let _ = store.runs();
    let _ = store.resolve_run("latest");
    let _ = store.fsck(false);
}

fn export_text() -> String {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(make_export).clone()
}

fn make_export() -> String {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let records = store.put(&vec![serde_json::json!({"id": 1})]).unwrap();
    let mut r = sample_run();
    r.workloads[0].trials[0].records_object = Some(records);
    store.add_run(&r).unwrap();
    let out = dir.path().join("export.json");
    store.export_run("latest", &out).unwrap();
    std::fs::read_to_string(out).unwrap()
}

fn check_import(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let file = dir.path().join("in.json");
    std::fs::write(&file, bytes).unwrap();
    if store.import(&file).is_ok() {
        // Whatever import accepts reads back and verifies.
        store.resolve_run("latest").unwrap();
        assert!(store.verify().unwrap().is_clean());
    }
}

proptest! {
    // Each case writes a small store or baseline folder: fewer cases by
    // default than the in-memory targets of the other crates.
    #![proptest_config(config(300))]

    #[test]
    fn baseline_json_survives_damage(bytes in mutated(baseline_text())) {
        let root = baselines_with(class_text().as_bytes(), &bytes);
        check_baselines(root.path());
    }

    #[test]
    fn class_json_survives_damage(bytes in mutated(class_text())) {
        let root = baselines_with(&bytes, baseline_text().as_bytes());
        check_baselines(root.path());
    }

    #[test]
    fn run_objects_survive_damage(bytes in mutated(run_text())) {
        check_run_object(&bytes);
    }

    #[test]
    fn the_index_survives_damage(bytes in mutated(
        r#"{"version":1,"runs":[{"id":"aaaa","created_at":"2026-01-01T00:00:00Z","suite":null,"device":"cpu","model":"m","workloads":["w"],"git_commit":null,"git_dirty":false}]}"#.to_string()
    )) {
        check_index(&bytes);
    }

    #[test]
    fn export_files_survive_damage(bytes in mutated(export_text())) {
        check_import(&bytes);
    }
}

#[test]
fn the_fuzzed_inputs_are_valid_before_damage() {
    let (root, _) = promoted();
    check_baselines(root.path());
    let r = sample_run();
    let class = FingerprintClass::of(&r.fingerprint, &r.workloads[0]);
    assert!(matches!(
        baseline::lookup(root.path(), &class).unwrap(),
        baseline::Lookup::Found { .. }
    ));
    check_run_object(run_text().as_bytes());
    check_import(export_text().as_bytes());
}
