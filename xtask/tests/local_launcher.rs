//! The local launcher's parallel runner end to end on a CPU: a sweep's
//! points as `xtask sweep FILE --point ID` workers over two pretend GPU
//! slots, against a fake engine that records which `CUDA_VISIBLE_DEVICES`
//! each trial saw and when it ran. Checks one point per slot at a time,
//! that points did overlap, and that every point is in the ledger.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use xtask::bench::{BenchContext, EngineChoice};
use xtask::cli::DeviceArg;
use xtask::launcher::parallel::ParallelRunner;
use xtask::launcher::slurm_script::PointCommand;
use xtask::sweep::{RetryPolicy, Sweep};

/// `engine info` / `engine bench` stand-in: each bench writes a few
/// plausible records after 0.4 s, and a trace line `start end devices`.
const FAKE_ENGINE: &str = r#"#!/bin/sh
here=$(dirname "$0")
case "$1" in
  info) echo '{"engine_version":"0.0.0","backends":["cpu"],"cuda_available":false,"cpu_threads":2,"gpus":[]}'; exit 0 ;;
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
start=$(date +%s.%N)
sleep 0.4
awk '
  /"warmup":true/ { next }
  {
    match($0, /"id":[0-9]+/); id = substr($0, RSTART + 5, RLENGTH - 5) + 0
    a = id * 0.01; t1 = a + 0.010; t2 = t1 + 0.005; t3 = t2 + 0.005
    printf "{\"id\":%d,\"status\":{\"kind\":\"ok\"},\"arrival_s\":%.6f,\"scheduled_s\":%.6f,", id, a, a
    printf "\"first_token_s\":%.6f,\"token_times_s\":[%.6f,%.6f,%.6f],\"finish_s\":%.6f,", t1, t1, t2, t3, t3
    printf "\"finish_reason\":\"length\",\"prompt_len\":8,\"output_len\":3,\"output_hash\":\"out-%d\"}\n", id
  }' "$req" > "$out"
echo '{"step":0,"start_s":0.0,"duration_s":0.005,"batch_size":2,"prefill_tokens":16,"decode_tokens":0,"num_waiting":0,"kv_blocks_used":1,"kv_blocks_total":8,"preempted":0}' > "$steps"
echo '{"backend_kind":"cpu","device_name":"fake","dtype":"f32","num_kv_blocks":8,"block_size":16,"peak_rss_bytes":1048576,"peak_device_memory_bytes":null,"peak_memory_bytes":1048576,"launches_per_decode_step":null,"measured_duration_s":0.1,"num_requests":4,"num_rejected":0,"output_tokens":12,"num_steps":1,"engine_config":{},"model_content_hash":"x"}' > "$summary"
end=$(date +%s.%N)
echo "$start $end ${CUDA_VISIBLE_DEVICES:-none}" >> "$here/trace"
"#;

#[test]
fn points_run_side_by_side_one_per_slot() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
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
    let sweep_file = p.join("sweep.toml");
    std::fs::write(
        &sweep_file,
        format!(
            r#"name = "local-parallel"
description = "four points over two slots"
trials = 1
device = "cpu"

[fixed]
model = "{}"
seed = 1
requests = 4
warmup_requests = 0
prompt_len = 8
output_len = 3

[[experiment]]
name = "seqs"
max_num_seqs = [2, 4, 8, 16]
"#,
            p.join("model").display()
        ),
    )
    .unwrap();
    let results = p.join("results");
    // Workers find the workspace through DYNO_ROOT; so does this process.
    std::env::set_var("DYNO_ROOT", p);
    let choice = EngineChoice {
        engine_bin: Some(engine.clone()),
        engine_profile: None,
        device: DeviceArg::Cpu,
        results: Some(results.clone()),
        timeout_s: 60.0,
        features: Vec::new(),
    };
    let ctx = BenchContext::prepare(p, &choice).unwrap();
    let mut sweep =
        Sweep::open(&sweep_file, &results, "cpu", None, RetryPolicy::default()).unwrap();
    sweep.parallel = Some(Box::new(ParallelRunner {
        slots: vec!["GPU-slot-a".into(), "GPU-slot-b".into()],
        command: PointCommand {
            xtask: env!("CARGO_BIN_EXE_xtask").into(),
            root: p.to_path_buf(),
            sweep_file: sweep_file.clone(),
            args: [
                "--results",
                results.to_str().unwrap(),
                "--engine-bin",
                engine.to_str().unwrap(),
                "--device",
                "cpu",
                "--trials",
                "1",
            ]
            .map(String::from)
            .to_vec(),
        },
        gpus_per_point: None,
    }));
    let outcome = sweep.run(&ctx).unwrap();
    assert_eq!(outcome.points.len(), 4);
    assert!(
        outcome.points.iter().all(|r| r.record.is_done()),
        "{:?}",
        outcome
            .points
            .iter()
            .map(|r| &r.record.status)
            .collect::<Vec<_>>()
    );

    let trace = std::fs::read_to_string(p.join("fake/trace")).unwrap();
    let rows: Vec<(f64, f64, String)> = trace
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].to_string(),
            )
        })
        .collect();
    assert_eq!(rows.len(), 4, "{trace}");
    for r in &rows {
        assert!(r.2 == "GPU-slot-a" || r.2 == "GPU-slot-b", "{trace}");
    }
    let mut overlapped = false;
    for (i, a) in rows.iter().enumerate() {
        for b in &rows[i + 1..] {
            let overlap = a.0 < b.1 && b.0 < a.1;
            assert!(!(overlap && a.2 == b.2), "two points on one slot: {trace}");
            overlapped |= overlap;
        }
    }
    assert!(overlapped, "no two points ran at once: {trace}");
    // A worker's log sits next to its point.
    for r in &outcome.points {
        let log = results
            .join("sweeps/local-parallel/cpu/jobs")
            .join(&r.record.point_id)
            .join("local.log");
        assert!(log.is_file(), "{}", log.display());
    }
    assert!(Path::new(&results).join("index.json").is_file());
}
