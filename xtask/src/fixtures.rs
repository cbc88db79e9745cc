//! Hand-made fingerprints, workloads and trials for tests and for the
//! simulations that validate the statistics. Not used by the pipeline.

use std::collections::BTreeMap;

use crate::run_record::{
    Fingerprint, GpuFingerprint, HostFingerprint, RunRecord, SourceFingerprint, TrialStatus,
    TrialSummary, WorkloadRun, RUN_SCHEMA_VERSION,
};

pub fn cpu_fingerprint() -> Fingerprint {
    Fingerprint {
        source: SourceFingerprint {
            git_commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            git_dirty: false,
            git_diff_hash: None,
            rustc_version: "rustc 1.90.0".into(),
            cargo_version: "cargo 1.90.0".into(),
            build_profile: "release".into(),
            features: vec![],
            engine_binary_hash: "b1".into(),
            cargo_lock_hash: None,
        },
        host: HostFingerprint {
            cpu_model: "Test CPU @ 3.0GHz".into(),
            cores: 2,
            memory_bytes: 8 << 30,
            os: "linux".into(),
            kernel: "6.1".into(),
        },
        gpus: vec![],
        device: "cpu".into(),
        model: "tiny".into(),
        model_hash: "m1".into(),
        target: None,
        engine_env: BTreeMap::new(),
    }
}

pub fn gpu_fingerprint() -> Fingerprint {
    let mut f = cpu_fingerprint();
    f.device = "cuda".into();
    f.gpus = vec![GpuFingerprint {
        name: "NVIDIA H100 80GB HBM3".into(),
        uuid: "GPU-1".into(),
        compute_capability: "9.0".into(),
        sm_count: Some(132),
        memory_bytes: 80 << 30,
        driver_version: "570.86.15".into(),
        cuda_driver_version: "12.8".into(),
        power_limit_w: Some(700.0),
    }];
    f
}

/// An ok trial with the given metrics and output hash.
pub fn ok_trial(index: u32, metrics: &[(&str, f64)], output_hash: &str) -> TrialSummary {
    TrialSummary {
        index,
        status: TrialStatus::Ok,
        metrics: metrics
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect::<BTreeMap<_, _>>(),
        output_hash: Some(output_hash.to_string()),
        records_object: None,
        step_log_object: None,
        gpu_before: None,
        gpu_after: None,
        wall_s: 1.0,
        block: None,
    }
}

pub fn failed_trial(index: u32, reason: &str) -> TrialSummary {
    TrialSummary {
        index,
        status: TrialStatus::Failed {
            reason: reason.to_string(),
            class: None,
        },
        metrics: BTreeMap::new(),
        output_hash: None,
        records_object: None,
        step_log_object: None,
        gpu_before: None,
        gpu_after: None,
        wall_s: 1.0,
        block: None,
    }
}

pub fn workload(name: &str, trials: Vec<TrialSummary>) -> WorkloadRun {
    WorkloadRun {
        name: name.to_string(),
        workload_hash: format!("wh-{name}"),
        spec: serde_json::json!({ "name": name }),
        engine_config: serde_json::json!({ "max_num_seqs": 64 }),
        trials,
    }
}

pub fn run(fingerprint: Fingerprint, workloads: Vec<WorkloadRun>) -> RunRecord {
    RunRecord {
        schema: RUN_SCHEMA_VERSION,
        created_at: "2026-11-24T06:00:00Z".into(),
        suite: Some("test".into()),
        fingerprint,
        workloads,
        interleaved: None,
    }
}

/// `git ARGS` run in `dir` with a fixed identity and author/committer time
/// `unix_time`; its trimmed stdout. Panics when git fails (tests only).
pub fn git(dir: &std::path::Path, args: &[&str], unix_time: i64) -> String {
    let date = format!("@{unix_time} +0000");
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
