//! `cargo xtask bench`'s whole flow against a fake engine: a shell script
//! that answers `info --json` and, for `bench`, writes plausible records, or
//! crashes, hangs or writes garbage, as its plan file says for each trial.
//! No real engine, model or GPU is needed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::Parser;
use workloads::RequestRecord;
use xtask::cli::{BenchArgs, Cli, Command};
use xtask::run_record::{RunRecord, TrialStatus};
use xtask::store::Store;

const FAKE_ENGINE: &str = r#"#!/bin/sh
# Stand-in for `engine`. Trial k (counted in ./count) does line k of ./plan:
# ok | crash | hang | garbage | block (ok, then make the next workload's
# folder unwritable: a failure of the pipeline itself, not of a trial).
here=$(dirname "$0")
case "$1" in
  info) echo '{"engine_version":"0.0.0","backends":["cpu"],"cuda_available":false,"cpu_threads":2,"gpus":[]}'; exit 0 ;;
  inspect) echo '{"format":"gguf","architecture":"LlamaForCausalLM","vocab_size":64,"special_token_ids":[2],"num_hidden_layers":2,"hidden_size":8}'; exit 0 ;;
  check-config)
    if grep -q bogus "$3"; then echo "error: $3: line 1: unknown field \`bogus\`" >&2; exit 1; fi
    echo "$3: ok"; exit 0 ;;
  bench) shift ;;
  *) echo "fake engine: unknown command $1" >&2; exit 2 ;;
esac
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) req=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --step-log) steps=$2; shift 2 ;;
    --summary) summary=$2; shift 2 ;;
    *) shift ;;
  esac
done
n=$(cat "$here/count" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$here/count"
# What an engine switch reached this trial (the environment test reads it).
echo "${DYNO_CUDA_ATTN_MMA-unset}" >> "$here/attn_mma"
mode=$(sed -n "${n}p" "$here/plan")
bad=""
case "$mode" in
  crash) echo "fake engine: CUDA error: out of memory" >&2; exit 101 ;;
  hang) echo $$ > "$here/engine.pid"; exec sleep 60 ;;
  breakindex) echo broken > "$(cat "$here/index_path")" ;;
  reject) bad=rejected ;;
  nonfinite) bad=nonfinite ;;
  garbage) echo "not json" > "$out"; exit 0 ;;
  block) run_dir=$(dirname "$(dirname "$(dirname "$out")")"); touch "$run_dir/fake2" ;;
esac
# Each trial a little slower than the last, so trials spread.
awk -v k="$n" -v bad="$bad" '
  /"warmup":true/ { next }
  {
    match($0, /"id":[0-9]+/); id = substr($0, RSTART + 5, RLENGTH - 5) + 0
    f = 1 + 0.01 * k; a = id * 0.01; s = a + 0.001 * f
    if (bad != "" && !done) {
      done = 1
      st = bad == "rejected" ? "{\"kind\":\"rejected\",\"reason\":\"prompt past max_model_len\"}" : "{\"kind\":\"nonfinite_logits\"}"
      fr = bad == "rejected" ? "rejected" : "error"
      printf "{\"id\":%d,\"status\":%s,\"arrival_s\":%.6f,\"scheduled_s\":null,\"first_token_s\":null,", id, st, a
      printf "\"token_times_s\":[],\"finish_s\":null,\"finish_reason\":\"%s\",\"prompt_len\":8,\"output_len\":0,\"output_hash\":\"none\"}\n", fr
      next
    }
    t1 = s + 0.010 * f; t2 = t1 + 0.005 * f; t3 = t2 + 0.005 * f
    printf "{\"id\":%d,\"status\":{\"kind\":\"ok\"},\"arrival_s\":%.6f,\"scheduled_s\":%.6f,", id, a, s
    printf "\"first_token_s\":%.6f,\"token_times_s\":[%.6f,%.6f,%.6f],\"finish_s\":%.6f,", t1, t1, t2, t3, t3
    printf "\"finish_reason\":\"length\",\"prompt_len\":8,\"output_len\":3,\"output_hash\":\"out-%d\"}\n", id
  }' "$req" > "$out"
echo '{"step":0,"start_s":0.0,"duration_s":0.005,"batch_size":2,"prefill_tokens":16,"decode_tokens":0,"num_waiting":0,"kv_blocks_used":1,"kv_blocks_total":8,"preempted":0}' > "$steps"
echo '{"backend_kind":"cpu","device_name":"fake","dtype":"f32","num_kv_blocks":8,"block_size":16,"peak_rss_bytes":1048576,"peak_device_memory_bytes":null,"peak_memory_bytes":1048576,"launches_per_decode_step":null,"measured_duration_s":0.1,"num_requests":6,"num_rejected":0,"output_tokens":18,"num_steps":1,"engine_config":{},"model_content_hash":"x"}' > "$summary"
"#;

const SPEC: &str = r#"name = "fake"
description = "end-to-end test workload"
model = "unused-preset"
seed = 1
requests = 6
warmup_requests = 2
prompt_len = { fixed = 8 }
output_len = { fixed = 3 }
arrival = "offline"

[slo]
ttft_ms = 1000.0
"#;

const SUITES: &str = r#"[quick]
description = "one fake workload"
workloads = ["fake"]

[two]
description = "two fake workloads"
workloads = ["fake", "fake2"]
"#;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A workspace-like folder with a catalogue, a model directory and a
    /// fake engine whose trials follow `plan`.
    fn new(plan: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("catalogue/specs")).unwrap();
        std::fs::write(p.join("catalogue/specs/fake.toml"), SPEC).unwrap();
        std::fs::write(
            p.join("catalogue/specs/fake2.toml"),
            SPEC.replace("\"fake\"", "\"fake2\""),
        )
        .unwrap();
        std::fs::write(p.join("catalogue/suites.toml"), SUITES).unwrap();
        std::fs::create_dir_all(p.join("model")).unwrap();
        std::fs::write(
            p.join("model/config.json"),
            r#"{"vocab_size": 64, "eos_token_id": 2}"#,
        )
        .unwrap();
        std::fs::create_dir_all(p.join("fake")).unwrap();
        let engine = p.join("fake/engine");
        std::fs::write(&engine, FAKE_ENGINE).unwrap();
        std::fs::set_permissions(&engine, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(p.join("fake/plan"), plan.join("\n") + "\n").unwrap();
        Fixture { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn args(&self, extra: &[&str]) -> BenchArgs {
        let p = |rel: &str| self.path(rel).to_string_lossy().into_owned();
        let mut argv: Vec<String> = vec!["xtask".into(), "bench".into()];
        for (flag, value) in [
            ("--engine-bin", p("fake/engine")),
            ("--catalogue", p("catalogue")),
            ("--model", p("model")),
            ("--results", p("results")),
            ("--device", "cpu".into()),
        ] {
            argv.push(flag.into());
            argv.push(value);
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        match Cli::parse_from(argv).command {
            Command::Bench(args) => *args,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
}

#[test]
fn crash_and_timeout_are_recorded_and_good_trials_stored() {
    let fx = Fixture::new(&["ok", "crash", "hang", "ok"]);
    let json = fx.path("run.json");
    let export = fx.path("vllm");
    let args = fx.args(&[
        "--suite",
        "quick",
        "--trials",
        "4",
        "--timeout-s",
        "2",
        "--json",
        json.to_str().unwrap(),
        "--export-vllm",
        export.to_str().unwrap(),
    ]);
    let code = xtask::bench::run(&args, fx.root()).unwrap();
    assert_eq!(code, 1, "a failed trial makes the exit code 1");

    let store = Store::open(&fx.path("results")).unwrap();
    let (_, run) = store.resolve_run("latest").unwrap();
    assert_eq!(run.suite.as_deref(), Some("quick"));
    assert_eq!(run.fingerprint.device, "cpu");
    assert_eq!(run.workloads.len(), 1);
    let trials = &run.workloads[0].trials;
    assert_eq!(trials.len(), 4, "no trial is dropped");
    assert_eq!(trials[0].status, TrialStatus::Ok);
    match &trials[1].status {
        TrialStatus::Failed { reason, .. } => assert!(reason.contains("out of memory"), "{reason}"),
        other => panic!("trial 1: {other:?}"),
    }
    match &trials[2].status {
        TrialStatus::TimedOut { after_s } => assert!(*after_s >= 2.0 && *after_s < 30.0),
        other => panic!("trial 2: {other:?}"),
    }
    assert_eq!(trials[3].status, TrialStatus::Ok);

    for t in [&trials[0], &trials[3]] {
        let id = t.records_object.as_ref().expect("ok trial stores records");
        let records: Vec<RequestRecord> = store.get(id).unwrap();
        assert_eq!(records.len(), 6, "warmup requests are not records");
        assert!(t.step_log_object.is_some());
        assert_eq!(t.metrics["peak_memory_bytes"], 1048576.0);
        assert!(t.metrics["output_throughput"] > 0.0);
        assert!(t.metrics.contains_key("request_goodput"));
        assert!(t.metrics.contains_key("p99_itl_ms"));
    }
    // Same outputs, different speed: the hashes agree, the latencies do not.
    assert_eq!(trials[0].output_hash, trials[3].output_hash);
    assert!(trials[3].metrics["mean_ttft_ms"] > trials[0].metrics["mean_ttft_ms"]);
    for t in [&trials[1], &trials[2]] {
        assert!(t.metrics.is_empty() && t.records_object.is_none());
    }

    let written: RunRecord = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(written, run);

    let vllm: serde_json::Value =
        serde_json::from_slice(&std::fs::read(export.join("fake.json")).unwrap()).unwrap();
    assert_eq!(vllm["completed"], 6);
    assert_eq!(vllm["total_output_tokens"], 18);
    assert_eq!(vllm["ttfts"].as_array().unwrap().len(), 6);
    assert_eq!(vllm["itls"][0].as_array().unwrap().len(), 2);
    for key in [
        "duration",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "mean_ttft_ms",
        "median_ttft_ms",
        "std_ttft_ms",
        "p99_ttft_ms",
        "mean_tpot_ms",
        "median_itl_ms",
        "p99_e2el_ms",
    ] {
        assert!(vllm[key].is_number(), "{key}: {}", vllm[key]);
    }
}

#[test]
fn a_gguf_file_is_a_model_the_engine_describes() {
    // xtask cannot read GGUF: the vocabulary comes from `engine inspect`,
    // the fingerprint's hash from the file, and the engine gets the file.
    let fx = Fixture::new(&["ok", "ok"]);
    let gguf = fx.path("model.gguf");
    std::fs::write(&gguf, b"GGUF stand-in").unwrap();
    let mut args = fx.args(&["--workload", "fake", "--trials", "2"]);
    args.model = Some(gguf.to_string_lossy().into_owned());
    assert_eq!(xtask::bench::run(&args, fx.root()).unwrap(), 0);
    let store = Store::open(&fx.path("results")).unwrap();
    let (_, run) = store.resolve_run("latest").unwrap();
    assert_eq!(run.fingerprint.model, gguf.to_string_lossy());
    assert_eq!(
        run.fingerprint.model_hash,
        xtask::fingerprint::hash_file(&gguf).unwrap()
    );

    // Any other file is refused with what to give instead.
    let other = fx.path("model.bin");
    std::fs::write(&other, b"x").unwrap();
    args.model = Some(other.to_string_lossy().into_owned());
    let err = xtask::bench::run(&args, fx.root()).unwrap_err();
    assert!(format!("{err:#}").contains("not a .gguf"), "{err:#}");
}

#[test]
fn an_engine_that_fails_twice_at_startup_is_not_run_again() {
    // The first two trials fail the same way before writing a record: the
    // other three would too, so they are not run (and not stored).
    let fx = Fixture::new(&["crash", "crash", "ok", "ok", "ok"]);
    let args = fx.args(&["--workload", "fake", "--trials", "5"]);
    let code = xtask::bench::run(&args, fx.root()).unwrap();
    assert_eq!(code, 1);
    let store = Store::open(&fx.path("results")).unwrap();
    let (_, run) = store.resolve_run("latest").unwrap();
    let trials = &run.workloads[0].trials;
    assert_eq!(trials.len(), 2, "{trials:?}");
    assert!(trials
        .iter()
        .all(|t| matches!(t.status, TrialStatus::Failed { .. })));
    let count = std::fs::read_to_string(count_file(&fx)).unwrap();
    assert_eq!(count.trim(), "2", "the engine ran only twice");

    // A failure after a success does not stop the workload.
    let fx = Fixture::new(&["ok", "crash", "crash", "ok"]);
    let args = fx.args(&["--workload", "fake", "--trials", "4"]);
    xtask::bench::run(&args, fx.root()).unwrap();
    let store = Store::open(&fx.path("results")).unwrap();
    let (_, run) = store.resolve_run("latest").unwrap();
    assert_eq!(run.workloads[0].trials.len(), 4);
}

#[test]
fn unreadable_records_fail_the_trial_with_file_and_line() {
    let fx = Fixture::new(&["garbage", "ok"]);
    let args = fx.args(&["--workload", "fake", "--trials", "2"]);
    assert_eq!(xtask::bench::run(&args, fx.root()).unwrap(), 1);
    let store = Store::open(&fx.path("results")).unwrap();
    let (_, run) = store.resolve_run("latest").unwrap();
    let trials = &run.workloads[0].trials;
    match &trials[0].status {
        TrialStatus::Failed { reason, .. } => {
            assert!(reason.contains("records.jsonl:1:"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(trials[1].status, TrialStatus::Ok);
}

#[test]
fn all_good_trials_exit_zero() {
    let fx = Fixture::new(&["ok", "ok"]);
    let args = fx.args(&[
        "--workload",
        "fake",
        "--trials",
        "2",
        "--engine-profile",
        "release",
    ]);
    assert_eq!(xtask::bench::run(&args, fx.root()).unwrap(), 0);
    let store = Store::open(&fx.path("results")).unwrap();
    let (_, run) = store.resolve_run("latest").unwrap();
    let source = &run.fingerprint.source;
    assert_eq!(source.build_profile, "release");
    assert_eq!(source.engine_binary_hash.len(), 64);
    assert!(!run.fingerprint.model_hash.is_empty());
    assert!(run.fingerprint.gpus.is_empty());
}

#[test]
fn unknown_names_list_the_known_ones() {
    let fx = Fixture::new(&[]);
    let err = xtask::bench::run(&fx.args(&["--workload", "nope"]), fx.root()).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("nope") && text.contains("fake"), "{text}");
    let err = xtask::bench::run(&fx.args(&["--suite", "nope"]), fx.root()).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("nope") && text.contains("quick"), "{text}");
}

#[test]
fn invalid_spec_names_file_line_and_field() {
    let fx = Fixture::new(&[]);
    std::fs::write(
        fx.path("catalogue/specs/fake.toml"),
        SPEC.replace("requests = 6", "requests = 0"),
    )
    .unwrap();
    let err = xtask::bench::run(&fx.args(&["--workload", "fake"]), fx.root()).unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("fake.toml:5") && text.contains("requests"),
        "{text}"
    );
}

#[test]
fn a_pipeline_failure_midway_stores_the_trials_finished_so_far() {
    let fx = Fixture::new(&["ok", "block"]);
    let args = fx.args(&["--suite", "two", "--trials", "2"]);
    let err = xtask::bench::run(&args, fx.root()).unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("2 finished trials are stored as run"),
        "{text}"
    );
    let store = Store::open(&fx.path("results")).unwrap();
    let (_, run) = store.resolve_run("latest").unwrap();
    // The second workload never started: only the first is in the run.
    assert_eq!(run.workloads.len(), 1);
    assert_eq!(run.workloads[0].trials.len(), 2);
    assert!(run.workloads[0]
        .trials
        .iter()
        .all(|t| t.status == TrialStatus::Ok && t.records_object.is_some()));
}

// ---- fail early, never lose a run, flag what is wrong (issue 10) ----

fn count_file(fx: &Fixture) -> PathBuf {
    fx.path("fake/count")
}

#[test]
fn an_unreadable_index_fails_before_any_trial() {
    let fx = Fixture::new(&["ok", "ok"]);
    std::fs::create_dir_all(fx.path("results")).unwrap();
    std::fs::write(fx.path("results/index.json"), b"").unwrap();
    let args = fx.args(&["--workload", "fake", "--trials", "2"]);
    let text = format!("{:#}", xtask::bench::run(&args, fx.root()).unwrap_err());
    assert!(
        text.contains("index.json") && text.contains("nothing was measured"),
        "{text}"
    );
    assert!(!count_file(&fx).exists(), "no trial ran");
}

#[test]
fn a_lock_that_is_a_directory_fails_before_any_trial() {
    let fx = Fixture::new(&["ok", "ok"]);
    std::fs::create_dir_all(fx.path("results/index.lock")).unwrap();
    let args = fx.args(&["--workload", "fake", "--trials", "2"]);
    let text = format!("{:#}", xtask::bench::run(&args, fx.root()).unwrap_err());
    assert!(text.contains("index.lock"), "{text}");
    assert!(!count_file(&fx).exists(), "no trial ran");
}

#[test]
fn a_run_whose_index_breaks_meanwhile_is_kept_and_reindex_lists_it() {
    let fx = Fixture::new(&["ok", "breakindex"]);
    std::fs::write(
        fx.path("fake/index_path"),
        fx.path("results/index.json").to_str().unwrap(),
    )
    .unwrap();
    let args = fx.args(&["--workload", "fake", "--trials", "2"]);
    let text = format!("{:#}", xtask::bench::run(&args, fx.root()).unwrap_err());
    let command = format!(
        "cargo xtask store reindex --results {}",
        fx.path("results").display()
    );
    assert!(text.contains(&command), "{text}");
    let store = Store::open(&fx.path("results")).unwrap();
    store.reindex().unwrap();
    let (_, run) = store.resolve_run("latest").unwrap();
    assert_eq!(run.workloads[0].trials.len(), 2);
    assert!(run.workloads[0]
        .trials
        .iter()
        .all(|t| t.status == TrialStatus::Ok));
}

#[test]
fn an_unknown_threshold_metric_fails_at_load_with_file_and_line() {
    let fx = Fixture::new(&["ok"]);
    std::fs::write(
        fx.path("catalogue/specs/fake.toml"),
        format!("{SPEC}[thresholds]\nno_such_metric = 0.05\n"),
    )
    .unwrap();
    for args in [
        fx.args(&["--workload", "fake", "--trials", "1"]),
        fx.args(&["--suite", "quick", "--trials", "1"]),
    ] {
        let text = format!("{:#}", xtask::bench::run(&args, fx.root()).unwrap_err());
        assert!(
            text.contains("fake.toml:14") && text.contains("thresholds.no_such_metric"),
            "{text}"
        );
    }
    assert!(!count_file(&fx).exists(), "no trial ran");
}

#[test]
fn bad_engine_overrides_fail_at_load_naming_the_key() {
    let fx = Fixture::new(&["ok"]);
    std::fs::write(
        fx.path("catalogue/specs/fake.toml"),
        format!("{SPEC}[engine]\nmax_num_seqs = 4\nbogus = 1\n"),
    )
    .unwrap();
    let args = fx.args(&["--workload", "fake", "--trials", "1"]);
    let text = format!("{:#}", xtask::bench::run(&args, fx.root()).unwrap_err());
    assert!(
        text.contains("fake.toml:15") && text.contains("engine.bogus"),
        "{text}"
    );
    assert!(!count_file(&fx).exists(), "no trial ran");
    // Valid overrides pass the check and reach the trials.
    std::fs::write(
        fx.path("catalogue/specs/fake.toml"),
        format!("{SPEC}[engine]\nmax_num_seqs = 4\n"),
    )
    .unwrap();
    assert_eq!(xtask::bench::run(&args, fx.root()).unwrap(), 0);
}

#[test]
fn rejected_requests_are_stored_and_flagged_unless_expected() {
    let fx = Fixture::new(&["reject", "reject", "reject", "reject"]);
    let args = fx.args(&["--workload", "fake", "--trials", "2"]);
    assert_eq!(
        xtask::bench::run(&args, fx.root()).unwrap(),
        1,
        "unexpected rejections fail the bench"
    );
    let store = Store::open(&fx.path("results")).unwrap();
    let (_, run) = store.resolve_run("latest").unwrap();
    for t in &run.workloads[0].trials {
        assert_eq!(t.status, TrialStatus::Ok);
        assert_eq!(t.metrics["rejected_requests"], 1.0);
    }
    assert_eq!(
        xtask::report::unexpected_rejections(&run.workloads[0]).len(),
        2
    );

    std::fs::write(
        fx.path("catalogue/specs/fake.toml"),
        SPEC.replace(
            "arrival = \"offline\"",
            "arrival = \"offline\"\nexpect_rejections = true",
        ),
    )
    .unwrap();
    assert_eq!(xtask::bench::run(&args, fx.root()).unwrap(), 0);
}

#[test]
fn nonfinite_logits_fail_the_trial() {
    let fx = Fixture::new(&["nonfinite", "ok"]);
    let args = fx.args(&["--workload", "fake", "--trials", "2"]);
    assert_eq!(xtask::bench::run(&args, fx.root()).unwrap(), 1);
    let store = Store::open(&fx.path("results")).unwrap();
    let (_, run) = store.resolve_run("latest").unwrap();
    let trials = &run.workloads[0].trials;
    match &trials[0].status {
        TrialStatus::Failed { reason, .. } => {
            assert!(reason.contains("nonfinite_logits"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(trials[1].status, TrialStatus::Ok);
}

/// `cargo xtask bench` as a separate process, for signals.
fn spawn_xtask(fx: &Fixture, extra: &[&str]) -> std::process::Child {
    spawn_xtask_with_env(fx, extra, &[])
}

fn spawn_xtask_with_env(fx: &Fixture, extra: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    let p = |rel: &str| fx.path(rel).to_string_lossy().into_owned();
    let mut argv: Vec<String> = vec!["bench".into()];
    for (flag, value) in [
        ("--engine-bin", p("fake/engine")),
        ("--catalogue", p("catalogue")),
        ("--model", p("model")),
        ("--results", p("results")),
        ("--device", "cpu".into()),
    ] {
        argv.push(flag.into());
        argv.push(value);
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(&argv)
        .current_dir(fx.root())
        .env("DYNO_ROOT", fx.root())
        .env_remove("CARGO_TARGET_DIR")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The pid of the fake engine once its hanging trial has started.
fn wait_for_engine(fx: &Fixture) -> i32 {
    let path = fx.path("fake/engine.pid");
    for _ in 0..600 {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the engine's hanging trial never started");
}

/// Whether `pid` is gone (or a zombie nobody reaped yet).
fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pid: i32) -> bool {
    (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        is_gone(pid)
    })
}

#[test]
fn killing_xtask_kills_its_engine() {
    let fx = Fixture::new(&["hang"]);
    let mut xtask = spawn_xtask(&fx, &["--workload", "fake", "--trials", "1"]);
    let engine = wait_for_engine(&fx);
    assert!(!is_gone(engine));
    xtask.kill().unwrap(); // SIGKILL: no handler runs
    xtask.wait().unwrap();
    assert!(wait_gone(engine), "engine {engine} outlived its parent");
}

#[test]
fn ctrl_c_stops_the_run_and_keeps_the_finished_trials() {
    let fx = Fixture::new(&["ok", "hang", "ok"]);
    let xtask = spawn_xtask(&fx, &["--workload", "fake", "--trials", "3"]);
    let engine = wait_for_engine(&fx);
    // SAFETY: signalling a child we spawned.
    assert_eq!(unsafe { libc::kill(xtask.id() as i32, libc::SIGINT) }, 0);
    let out = xtask.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("interrupted") && stderr.contains("1 finished trials are stored"),
        "{stderr}"
    );
    assert!(
        wait_gone(engine),
        "the interrupted trial's engine still runs"
    );
    let store = Store::open(&fx.path("results")).unwrap();
    let (_, run) = store.resolve_run("latest").unwrap();
    assert_eq!(run.workloads[0].trials.len(), 1);
    assert_eq!(run.workloads[0].trials[0].status, TrialStatus::Ok);
}

#[test]
fn engine_switches_in_the_environment_are_recorded_warned_and_split_the_class() {
    let fx = Fixture::new(&["ok", "ok", "ok", "ok"]);
    let bench = |env: &[(&str, &str)]| {
        let out = spawn_xtask_with_env(&fx, &["--workload", "fake", "--trials", "2"], env)
            .wait_with_output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let store = Store::open(&fx.path("results")).unwrap();
        let (id, run) = store.resolve_run("latest").unwrap();
        (id, run, stdout, stderr)
    };
    let (switched_id, switched, stdout, stderr) = bench(&[
        ("DYNO_CUDA_ATTN_MMA", "0"),
        ("DYNO_API_KEY", "do-not-record-me"),
    ]);
    assert!(
        stderr.contains("warning: engine switches set in this environment: DYNO_CUDA_ATTN_MMA=0"),
        "{stderr}"
    );
    assert!(
        stdout.contains("engine switches: DYNO_CUDA_ATTN_MMA=0"),
        "{stdout}"
    );
    assert_eq!(
        switched.fingerprint.engine_env,
        [("DYNO_CUDA_ATTN_MMA".to_string(), "0".to_string())].into()
    );
    let stored = serde_json::to_string(&switched).unwrap();
    assert!(!stored.contains("do-not-record-me"), "{stored}");

    let (plain_id, plain, _, stderr) = bench(&[]);
    assert!(!stderr.contains("engine switches"), "{stderr}");
    assert!(plain.fingerprint.engine_env.is_empty());
    // Every trial's engine got the switch of its run.
    let seen = std::fs::read_to_string(fx.path("fake/attn_mma")).unwrap();
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        ["0", "0", "unset", "unset"]
    );

    // Not judged against each other unless asked to.
    let policy = xtask::compare::verdict::Policy::default();
    let c =
        xtask::compare::compare_runs((&plain_id, &plain), (&switched_id, &switched), &[], &policy)
            .unwrap();
    let w = &c.workloads[0];
    assert!(w.no_verdict.is_some(), "{w:?}");
    let fields: Vec<&str> = w
        .class_differences
        .iter()
        .map(|d| d.field.as_str())
        .collect();
    assert_eq!(fields, ["engine_env"]);
    let c = xtask::compare::compare_runs(
        (&plain_id, &plain),
        (&switched_id, &switched),
        &["engine_env".to_string()],
        &policy,
    )
    .unwrap();
    assert!(c.workloads[0].no_verdict.is_none(), "{:?}", c.workloads[0]);
}
