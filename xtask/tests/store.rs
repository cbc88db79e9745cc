//! The results store, driven through its public API as bench and compare use it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use xtask::cli::StoreCmd;
use xtask::commands::store as cli;
use xtask::run_record::{
    Fingerprint, HostFingerprint, ObjectId, RunRecord, SourceFingerprint, TrialStatus,
    TrialSummary, WorkloadRun, RUN_SCHEMA_VERSION,
};
use xtask::store::{Store, StoreError};

fn run_record(created_at: &str, suite: &str, trials: Vec<TrialSummary>) -> RunRecord {
    RunRecord {
        schema: RUN_SCHEMA_VERSION,
        created_at: created_at.to_string(),
        suite: Some(suite.to_string()),
        fingerprint: Fingerprint {
            source: SourceFingerprint {
                git_commit: Some("0123456789abcdef0123456789abcdef01234567".to_string()),
                git_dirty: false,
                git_diff_hash: None,
                rustc_version: "rustc 1.95.0".to_string(),
                cargo_version: "cargo 1.95.0".to_string(),
                build_profile: "release".to_string(),
                features: vec![],
                engine_binary_hash: "ab".repeat(32),
                cargo_lock_hash: Some("cd".repeat(32)),
            },
            host: HostFingerprint {
                cpu_model: "Test CPU".to_string(),
                cores: 2,
                memory_bytes: 8 << 30,
                os: "linux".to_string(),
                kernel: "6.0".to_string(),
            },
            gpus: vec![],
            device: "cpu".to_string(),
            model: "tiny".to_string(),
            model_hash: "ef".repeat(32),
            target: None,
            engine_env: BTreeMap::new(),
        },
        workloads: vec![WorkloadRun {
            name: "offline".to_string(),
            workload_hash: "12".repeat(32),
            spec: json!({"requests": 8}),
            engine_config: json!({"max_batch": 4}),
            trials,
        }],
        interleaved: None,
    }
}

fn trial(
    index: u32,
    throughput: f64,
    records: Option<ObjectId>,
    steps: Option<ObjectId>,
) -> TrialSummary {
    TrialSummary {
        index,
        status: TrialStatus::Ok,
        metrics: BTreeMap::from([
            ("output_throughput".to_string(), throughput),
            ("mean_ttft_ms".to_string(), 12.5),
        ]),
        output_hash: Some("34".repeat(32)),
        records_object: records,
        step_log_object: steps,
        gpu_before: None,
        gpu_after: None,
        wall_s: 1.25,
        block: None,
    }
}

/// A run whose trials reference stored record and step-log objects.
fn add_full_run(store: &Store, created_at: &str, seed: u64) -> (ObjectId, RunRecord) {
    let mut trials = Vec::new();
    for i in 0..2u32 {
        let records =
            json!([{"id": i, "seed": seed, "output_len": 16, "token_times_s": [0.1, 0.2]}]);
        let steps = json!([{"step": 0, "batch_size": 1, "seed": seed, "trial": i}]);
        let rid = store.put(&records).unwrap();
        let sid = store.put(&steps).unwrap();
        trials.push(trial(i, 100.0 + seed as f64, Some(rid), Some(sid)));
    }
    let run = run_record(created_at, "smoke", trials);
    let id = store.add_run(&run).unwrap();
    (id, run)
}

fn object_path(root: &Path, id: &str) -> PathBuf {
    root.join("objects").join(&id[..2]).join(&id[2..])
}

fn object_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for shard in fs::read_dir(root.join("objects")).unwrap() {
        for file in fs::read_dir(shard.unwrap().path()).unwrap() {
            files.push(file.unwrap().path());
        }
    }
    files.sort();
    files
}

#[test]
fn put_get_round_trip_names_objects_by_canonical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let value: Value =
        serde_json::from_str(r#"{ "b": [1, 2.5, "x"], "a": {"d": null, "c": true} }"#).unwrap();
    let id = store.put(&value).unwrap();

    let bytes = fs::read(object_path(dir.path(), &id)).unwrap();
    assert_eq!(bytes, br#"{"a":{"c":true,"d":null},"b":[1,2.5,"x"]}"#);
    assert_eq!(id, blake3::hash(&bytes).to_hex().to_string());

    let back: Value = store.get(&id).unwrap();
    assert_eq!(back, value);
    let reordered: Value =
        serde_json::from_str(r#"{"a":{"c":true,"d":null},"b":[1,2.5,"x"]}"#).unwrap();
    assert_eq!(store.put(&reordered).unwrap(), id, "same value, same name");

    let (run_id, run) = add_full_run(&store, "2026-01-01T00:00:00Z", 1);
    let stored: RunRecord = store.get(&run_id).unwrap();
    assert_eq!(stored, run);
    // Nothing is left behind in tmp/ by completed writes.
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn get_of_missing_or_malformed_id_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let missing = "0".repeat(64);
    assert!(matches!(
        store.get::<Value>(&missing),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.get::<Value>("../../etc/passwd"),
        Err(StoreError::InvalidId { .. })
    ));
    let id = store.put(&json!({"not": "a run"})).unwrap();
    let err = store.get::<RunRecord>(&id).unwrap_err();
    assert!(matches!(err, StoreError::Decode { .. }), "{err}");
}

#[test]
fn corrupt_object_is_reported_by_verify_and_refused_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (run_id, run) = add_full_run(&store, "2026-01-01T00:00:00Z", 1);
    assert!(store.verify().unwrap().is_clean());
    assert_eq!(cli::run(StoreCmd::Verify, dir.path()).unwrap(), 0);

    let records_id = run.workloads[0].trials[0].records_object.clone().unwrap();
    let path = object_path(dir.path(), &records_id);
    let mut bytes = fs::read(&path).unwrap();
    let pos = bytes.iter().position(|b| *b == b'6').unwrap(); // "output_len":16
    bytes[pos] = b'7';
    fs::write(&path, &bytes).unwrap();

    let report = store.verify().unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].id, records_id);
    assert_eq!(
        report.corrupt[0].actual,
        blake3::hash(&bytes).to_hex().to_string()
    );
    assert_eq!(cli::run(StoreCmd::Verify, dir.path()).unwrap(), 1);

    let err = store.get::<Value>(&records_id).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }));
    assert!(err.to_string().contains(&records_id), "{err}");

    // A removed object is reported as missing, naming who needs it.
    fs::remove_file(object_path(dir.path(), &run_id)).unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.missing.len(), 1);
    assert_eq!(report.missing[0].id, run_id);
    assert_eq!(report.missing[0].referenced_by, "index");
}

#[test]
fn putting_a_corrupted_object_again_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let value = json!({"k": "v"});
    let id = store.put(&value).unwrap();
    fs::write(object_path(dir.path(), &id), b"{\"k\":\"w\"}").unwrap();
    assert!(store.get::<Value>(&id).is_err());
    store.put(&value).unwrap();
    assert_eq!(store.get::<Value>(&id).unwrap(), value);
}

#[test]
fn add_run_refuses_dangling_references_and_non_finite_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let dangling = run_record(
        "2026-01-01T00:00:00Z",
        "smoke",
        vec![trial(0, 1.0, Some("9".repeat(64)), None)],
    );
    let err = store.add_run(&dangling).unwrap_err();
    assert!(err.to_string().contains(&"9".repeat(64)), "{err}");

    let nan = run_record(
        "2026-01-01T00:00:00Z",
        "smoke",
        vec![trial(0, f64::NAN, None, None)],
    );
    let err = store.add_run(&nan).unwrap_err();
    assert!(err.to_string().contains("output_throughput"), "{err}");
    assert!(store.runs().unwrap().is_empty());
}

#[test]
fn adding_the_same_run_twice_lists_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let run = run_record(
        "2026-01-01T00:00:00Z",
        "smoke",
        vec![trial(0, 1.0, None, None)],
    );
    let a = store.add_run(&run).unwrap();
    let b = store.add_run(&run).unwrap();
    assert_eq!(a, b);
    assert_eq!(store.runs().unwrap().len(), 1);
}

fn distinct_run(writer: usize, n: usize) -> RunRecord {
    let created = format!("2026-02-01T00:{:02}:{:02}Z", writer % 60, n % 60);
    run_record(
        &created,
        &format!("w{writer}-n{n}"),
        vec![trial(0, (writer * 1000 + n) as f64, None, None)],
    )
}

fn check_all_runs_present(store: &Store, writers: usize, per_writer: usize) {
    let runs = store.runs().unwrap();
    assert_eq!(runs.len(), writers * per_writer, "an index entry was lost");
    let mut suites: Vec<String> = runs.iter().map(|r| r.suite.clone().unwrap()).collect();
    suites.sort();
    suites.dedup();
    assert_eq!(suites.len(), writers * per_writer);
    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.runs_checked, writers * per_writer);
}

#[test]
fn concurrent_threads_lose_no_index_entry() {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    std::thread::scope(|scope| {
        for writer in 0..WRITERS {
            let root = dir.path();
            scope.spawn(move || {
                // Each thread opens its own handle, as separate processes would.
                let store = Store::open(root).unwrap();
                for n in 0..PER_WRITER {
                    store.add_run(&distinct_run(writer, n)).unwrap();
                }
            });
        }
    });
    check_all_runs_present(&Store::open(dir.path()).unwrap(), WRITERS, PER_WRITER);
}

const CHILD_ROOT_VAR: &str = "STORE_TEST_CHILD_ROOT";
const CHILD_WRITER_VAR: &str = "STORE_TEST_CHILD_WRITER";
const PROC_PER_WRITER: usize = 20;

/// Run only as a child of `concurrent_processes_lose_no_index_entry`.
#[test]
#[ignore = "child process of concurrent_processes_lose_no_index_entry"]
fn child_process_adds_runs() {
    let root = PathBuf::from(std::env::var(CHILD_ROOT_VAR).expect("started by the parent test"));
    let writer: usize = std::env::var(CHILD_WRITER_VAR).unwrap().parse().unwrap();
    let store = Store::open(&root).unwrap();
    for n in 0..PROC_PER_WRITER {
        store.add_run(&distinct_run(writer, n)).unwrap();
    }
}

#[test]
fn concurrent_processes_lose_no_index_entry() {
    const WRITERS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..WRITERS)
        .map(|writer| {
            Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "child_process_adds_runs",
                    "--test-threads=1",
                ])
                .env(CHILD_ROOT_VAR, dir.path())
                .env(CHILD_WRITER_VAR, writer.to_string())
                .output_spawn()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
    }
    check_all_runs_present(&Store::open(dir.path()).unwrap(), WRITERS, PROC_PER_WRITER);
}

trait SpawnPiped {
    fn output_spawn(&mut self) -> std::process::Child;
}

impl SpawnPiped for Command {
    fn output_spawn(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

#[test]
fn gc_keeps_referenced_objects_and_drops_unreferenced_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (run_id, run) = add_full_run(&store, "2026-01-01T00:00:00Z", 1);
    let orphan = store.put(&json!({"orphan": true})).unwrap();
    let before = object_files(dir.path());
    assert_eq!(before.len(), 6); // run + 2 trials x (records, steps) + orphan

    // A fresh orphan may belong to a bench still running: the default grace keeps it.
    let report = store.gc(false).unwrap();
    assert_eq!(report.spared_recent, vec![orphan.clone()]);
    assert!(report.removed.is_empty());

    let report = store.gc_with_grace(true, Duration::ZERO).unwrap();
    assert_eq!(report.removed, vec![orphan.clone()]);
    assert_eq!(object_files(dir.path()), before, "dry run removes nothing");

    let report = store.gc_with_grace(false, Duration::ZERO).unwrap();
    assert_eq!(report.removed, vec![orphan.clone()]);
    assert_eq!(report.kept, 5);
    assert!(!store.contains(&orphan).unwrap());
    assert!(store.contains(&run_id).unwrap());
    for t in &run.workloads[0].trials {
        assert!(store.contains(t.records_object.as_ref().unwrap()).unwrap());
        assert!(store.contains(t.step_log_object.as_ref().unwrap()).unwrap());
    }
    assert!(store.verify().unwrap().is_clean());
}

#[test]
fn gc_refuses_when_an_indexed_run_is_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (run_id, _) = add_full_run(&store, "2026-01-01T00:00:00Z", 1);
    fs::write(object_path(dir.path(), &run_id), b"{}").unwrap();
    let before = object_files(dir.path());
    let err = store.gc_with_grace(false, Duration::ZERO).unwrap_err();
    assert!(matches!(err, StoreError::GcBlocked { .. }), "{err}");
    assert_eq!(object_files(dir.path()), before);
}

#[test]
fn export_import_round_trip_into_a_fresh_store() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path()).unwrap();
    let (run_id, run) = add_full_run(&src, "2026-01-01T00:00:00Z", 7);
    add_full_run(&src, "2026-01-02T00:00:00Z", 8); // not exported
    let out = src_dir.path().join("export.json");
    assert_eq!(src.export_run(&run_id[..10], &out).unwrap(), run_id);

    let dst_dir = tempfile::tempdir().unwrap();
    let dst = Store::open(dst_dir.path()).unwrap();
    assert_eq!(dst.import(&out).unwrap(), run_id);
    let (id, imported) = dst.resolve_run("latest").unwrap();
    assert_eq!((id, &imported), (run_id.clone(), &run));
    for t in &run.workloads[0].trials {
        let id = t.records_object.as_ref().unwrap();
        assert_eq!(dst.get::<Value>(id).unwrap(), src.get::<Value>(id).unwrap());
    }
    assert_eq!(object_files(dst_dir.path()).len(), 5);
    assert!(dst.verify().unwrap().is_clean());

    // Importing again changes nothing.
    assert_eq!(dst.import(&out).unwrap(), run_id);
    assert_eq!(dst.runs().unwrap().len(), 1);
    assert_eq!(object_files(dst_dir.path()).len(), 5);
}

fn assert_import_refused(export: &Value, expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tampered.json");
    fs::write(&file, serde_json::to_vec(export).unwrap()).unwrap();
    let root = dir.path().join("results");
    let store = Store::open(&root).unwrap();
    let err = store.import(&file).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("tampered.json"),
        "error must name the file: {msg}"
    );
    assert!(msg.contains(expect), "expected '{expect}' in: {msg}");
    assert!(store.runs().unwrap().is_empty(), "index must be unchanged");
    assert!(
        object_files(&root).is_empty(),
        "no object may be written: {msg}"
    );
}

#[test]
fn tampered_or_incomplete_import_is_refused_and_leaves_the_store_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (run_id, run) = add_full_run(&store, "2026-01-01T00:00:00Z", 3);
    let out = dir.path().join("export.json");
    store.export_run("latest", &out).unwrap();
    let export: Value = serde_json::from_slice(&fs::read(&out).unwrap()).unwrap();

    // A metric edited inside the run object.
    let mut edited = export.clone();
    edited["objects"][&run_id]["workloads"][0]["trials"][0]["metrics"]["output_throughput"] =
        json!(1e9);
    assert_import_refused(&edited, "does not match its content");

    // A record edited inside a records object.
    let records_id = run.workloads[0].trials[1].records_object.clone().unwrap();
    let mut edited = export.clone();
    edited["objects"][&records_id][0]["output_len"] = json!(17);
    assert_import_refused(&edited, &records_id);

    // A referenced object left out.
    let mut partial = export.clone();
    partial["objects"]
        .as_object_mut()
        .unwrap()
        .remove(&records_id);
    assert_import_refused(&partial, "does not hold");

    let mut wrong_version = export.clone();
    wrong_version["version"] = json!(99);
    assert_import_refused(&wrong_version, "version 99");

    assert_import_refused(&json!({"hello": "world"}), "not a run export");
}

#[test]
fn import_of_a_file_that_is_not_json_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("garbage.json");
    fs::write(&file, b"{ not json").unwrap();
    let store = Store::open(&dir.path().join("results")).unwrap();
    let msg = store.import(&file).unwrap_err().to_string();
    assert!(
        msg.contains("garbage.json") && msg.contains("line 1"),
        "{msg}"
    );
    let msg = store
        .import(&dir.path().join("absent.json"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("absent.json"), "{msg}");
}

#[test]
fn resolve_run_by_full_id_unique_prefix_or_latest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(matches!(
        store.resolve_run("latest"),
        Err(StoreError::NoRuns)
    ));

    // Added newest first: "latest" goes by created_at, not by insertion order.
    let newest = run_record(
        "2026-03-01T10:00:00+02:00",
        "smoke",
        vec![trial(0, 1.0, None, None)],
    );
    let newest_id = store.add_run(&newest).unwrap();
    let mut ids = vec![newest_id.clone()];
    // Add runs until two share a first digit, so a one-digit prefix is ambiguous.
    let mut n = 0;
    let shared = loop {
        let run = run_record(
            "2026-03-01T07:00:00Z",
            &format!("s{n}"),
            vec![trial(0, 1.0, None, None)],
        );
        let id = store.add_run(&run).unwrap();
        n += 1;
        if let Some(other) = ids.iter().find(|o| o[..1] == id[..1]) {
            break (other.clone(), id);
        }
        ids.push(id);
    };

    let (id, run) = store.resolve_run("latest").unwrap();
    assert_eq!((id, run), (newest_id.clone(), newest));

    assert_eq!(store.resolve_run(&shared.0).unwrap().0, shared.0);
    let unique = (1..=64)
        .map(|len| &shared.1[..len])
        .find(|p| !shared.0.starts_with(p))
        .unwrap();
    assert_eq!(store.resolve_run(unique).unwrap().0, shared.1);

    let err = store.resolve_run(&shared.0[..1]).unwrap_err();
    match &err {
        StoreError::AmbiguousRun { candidates, .. } => {
            assert!(candidates.contains(&shared.0) && candidates.contains(&shared.1));
        }
        other => panic!("expected ambiguity, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&shared.0) && msg.contains(&shared.1), "{msg}");

    assert!(matches!(
        store.resolve_run("zz"),
        Err(StoreError::UnknownRun { .. })
    ));
    assert!(matches!(
        store.resolve_run(""),
        Err(StoreError::UnknownRun { .. })
    ));
}

#[test]
fn cli_commands_run_against_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let (run_id, _) = add_full_run(&Store::open(dir.path()).unwrap(), "2026-01-01T00:00:00Z", 1);
    let out = dir.path().join("run-export.json");
    let cmds = [
        StoreCmd::Ls,
        StoreCmd::Show {
            run: "latest".into(),
            json: false,
        },
        StoreCmd::Show {
            run: run_id[..8].into(),
            json: true,
        },
        StoreCmd::Export {
            run: run_id.clone(),
            out: out.clone(),
        },
        StoreCmd::Import { file: out.clone() },
        StoreCmd::Gc {
            dry_run: true,
            grace_secs: Some(0),
        },
        StoreCmd::Verify,
    ];
    for cmd in cmds {
        let name = format!("{cmd:?}");
        assert_eq!(cli::run(cmd, dir.path()).unwrap(), 0, "{name}");
    }
    assert!(cli::run(
        StoreCmd::Show {
            run: "ffff".repeat(16),
            json: false
        },
        dir.path()
    )
    .is_err());
}

#[test]
fn concurrent_imports_of_one_export_list_the_run_once() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path()).unwrap();
    let (run_id, _) = add_full_run(&src, "2026-01-01T00:00:00Z", 5);
    let out = src_dir.path().join("export.json");
    src.export_run("latest", &out).unwrap();

    let dst_dir = tempfile::tempdir().unwrap();
    std::thread::scope(|scope| {
        for _ in 0..6 {
            let (root, out, run_id) = (dst_dir.path(), &out, &run_id);
            scope.spawn(move || {
                let store = Store::open(root).unwrap();
                assert_eq!(&store.import(out).unwrap(), run_id);
            });
        }
    });
    let dst = Store::open(dst_dir.path()).unwrap();
    assert_eq!(dst.runs().unwrap().len(), 1);
    assert!(dst.verify().unwrap().is_clean());
    assert_eq!(fs::read_dir(dst_dir.path().join("tmp")).unwrap().count(), 0);
}

// ---- fail early, repair with the tools (issue 10) ----

#[test]
fn preflight_refuses_an_unreadable_index_or_a_lock_that_is_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.preflight(Duration::from_secs(1)).unwrap();
    add_full_run(&store, "2026-01-01T00:00:00Z", 1);
    fs::write(dir.path().join("index.json"), b"").unwrap();
    let err = store.preflight(Duration::from_secs(1)).unwrap_err();
    assert!(matches!(err, StoreError::Index { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    fs::create_dir(dir.path().join("index.lock")).unwrap();
    let err = store.preflight(Duration::from_secs(1)).unwrap_err();
    assert!(err.to_string().contains("index.lock"), "{err}");
}

#[test]
fn a_held_lock_times_out_with_a_message_naming_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let lock_path = dir.path().join("index.lock");
    let holder = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&lock_path)
        .unwrap();
    holder.lock().unwrap();
    fs::write(&lock_path, "pid 4242 (cargo xtask store gc)").unwrap();
    let started = std::time::Instant::now();
    let err = store.preflight(Duration::from_millis(300)).unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains("pid 4242 (cargo xtask store gc)"),
        "{err}"
    );
    drop(holder);
    store.preflight(Duration::from_millis(300)).unwrap();
    // The lock file now names this process while it holds the lock.
    let text = fs::read_to_string(&lock_path).unwrap();
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
}

#[test]
fn a_run_whose_index_write_fails_is_kept_and_reindex_lists_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (first, _) = add_full_run(&store, "2026-01-01T00:00:00Z", 1);
    // The index breaks while the run is measured.
    fs::write(dir.path().join("index.json"), b"{ truncated").unwrap();
    let records = store.put(&vec![json!({"id": 9})]).unwrap();
    let run = run_record(
        "2026-01-02T00:00:00Z",
        "smoke",
        vec![trial(0, 99.0, Some(records), None)],
    );
    let err = store.add_run(&run).unwrap_err();
    let text = err.to_string();
    let StoreError::NotIndexed { id, .. } = &err else {
        panic!("{text}")
    };
    assert!(
        text.contains(&format!(
            "cargo xtask store reindex --results {}",
            dir.path().display()
        )),
        "{text}"
    );
    let report = store.reindex().unwrap();
    assert!(report.old_index_error.is_some());
    assert_eq!(report.indexed.len(), 2, "{report:?}");
    let ids: Vec<String> = store.runs().unwrap().into_iter().map(|r| r.id).collect();
    assert!(ids.contains(id) && ids.contains(&first), "{ids:?}");
    assert_eq!(store.resolve_run("latest").unwrap().1, run);
    assert!(store.verify().unwrap().is_clean());
}

#[test]
fn latest_skips_a_broken_newest_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (old, _) = add_full_run(&store, "2026-01-01T00:00:00Z", 1);
    let (new, _) = add_full_run(&store, "2026-01-02T00:00:00Z", 2);
    assert_eq!(store.resolve_run("latest").unwrap().0, new);
    fs::write(object_path(dir.path(), &new), b"corrupted").unwrap();
    assert_eq!(store.resolve_run("latest").unwrap().0, old);
    fs::remove_file(object_path(dir.path(), &new)).unwrap();
    assert_eq!(store.resolve_run("latest").unwrap().0, old);
    fs::remove_file(object_path(dir.path(), &old)).unwrap();
    let err = store.resolve_run("latest").unwrap_err().to_string();
    assert!(err.contains("no indexed run is readable"), "{err}");
}

#[test]
fn rm_unblocks_gc_after_a_run_is_corrupted_or_deleted() {
    for delete in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (keep, _) = add_full_run(&store, "2026-01-01T00:00:00Z", 1);
        let (broken, broken_run) = add_full_run(&store, "2026-01-02T00:00:00Z", 2);
        let its_records = xtask::store::run_references(&broken_run).len();
        if delete {
            fs::remove_file(object_path(dir.path(), &broken)).unwrap();
        } else {
            fs::write(object_path(dir.path(), &broken), b"{}").unwrap();
        }
        let err = store.gc_with_grace(false, Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("store rm"), "{err}");
        assert_eq!(store.remove_run(&broken[..10]).unwrap(), broken);
        assert!(!object_path(dir.path(), &broken).exists());
        let report = store.gc_with_grace(false, Duration::ZERO).unwrap();
        assert_eq!(report.removed.len(), its_records, "{report:?}");
        let ids: Vec<String> = store.runs().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![keep]);
        assert!(store.verify().unwrap().is_clean());
    }
}

#[test]
fn fsck_reports_then_repairs_what_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (good, _) = add_full_run(&store, "2026-01-01T00:00:00Z", 1);
    let (corrupt, _) = add_full_run(&store, "2026-01-02T00:00:00Z", 2);
    fs::write(object_path(dir.path(), &corrupt), b"garbage").unwrap();
    // A run object stored but never indexed (its bench's index write failed).
    let unlisted_run = run_record(
        "2026-01-03T00:00:00Z",
        "smoke",
        vec![trial(0, 5.0, None, None)],
    );
    let unlisted = store.put(&unlisted_run).unwrap();

    let report = store.fsck(false).unwrap();
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.broken_entries.len(), 1);
    assert_eq!(report.unindexed_runs, vec![unlisted.clone()]);
    assert!(!report.repaired);
    assert_eq!(
        cli::run(StoreCmd::Fsck { repair: false }, dir.path()).unwrap(),
        1
    );

    assert_eq!(
        cli::run(StoreCmd::Fsck { repair: true }, dir.path()).unwrap(),
        0
    );
    assert!(dir.path().join("quarantine").join(&corrupt).is_file());
    let ids: Vec<String> = store.runs().unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![good, unlisted]);
    let again = store.fsck(false).unwrap();
    assert_eq!(again.repairable() + again.manual(), 0, "{again:?}");
    assert!(store.verify().unwrap().is_clean());
    store.gc_with_grace(false, Duration::ZERO).unwrap();
}

#[test]
fn every_store_command_takes_results_dir() {
    use clap::Parser;
    use xtask::cli::{Cli, Command as XCommand};
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("elsewhere");
    add_full_run(&Store::open(&results).unwrap(), "2026-01-01T00:00:00Z", 1);
    let results = results.to_str().unwrap();
    for argv in [
        vec!["ls", "--results", results],
        vec!["--results", results, "show", "latest"],
        vec!["verify", "--results", results],
        vec!["fsck", "--results", results],
        vec!["reindex", "--results", results],
        vec!["gc", "--dry-run", "--results", results],
        vec!["rm", "latest", "--results", results],
    ] {
        let mut full = vec!["xtask", "store"];
        full.extend(&argv);
        let XCommand::Store(args) = Cli::try_parse_from(&full).unwrap().command else {
            panic!("{argv:?}")
        };
        // The workspace root would be `dir`: the store must be `results`.
        assert_eq!(cli::run_cli(args, dir.path()).unwrap(), 0, "{argv:?}");
    }
    assert!(!dir.path().join("results").exists());
    assert!(Store::open(std::path::Path::new(results))
        .unwrap()
        .runs()
        .unwrap()
        .is_empty());
}
