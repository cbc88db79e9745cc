//! The `engine` binary end to end: bad input is a clear error with nothing
//! written; a request that cannot fit is rejected in its record while the
//! others run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use workloads::{RecordStatus, RequestRecord};

fn engine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .output()
        .expect("run the engine binary")
}

fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("tiny");
    let out = engine(&[
        "synth",
        "--preset",
        "tiny",
        "--seed",
        "1",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    model
}

fn line(id: u64, prompt_len: usize, max_tokens: u32) -> String {
    let prompt: Vec<String> = (0..prompt_len).map(|i| (i % 100 + 1).to_string()).collect();
    format!(
        "{{\"id\":{id},\"prompt_token_ids\":[{}],\"sampling\":{{\"max_tokens\":{max_tokens}}}}}\n",
        prompt.join(",")
    )
}

#[test]
fn malformed_line_is_an_error_naming_it_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let requests = dir.path().join("requests.jsonl");
    std::fs::write(
        &requests,
        format!("{}{}not json\n", line(1, 3, 2), line(2, 3, 2)),
    )
    .unwrap();
    let out = dir.path().join("records.jsonl");
    let res = engine(&[
        "bench",
        "--model",
        dir.path().join("no-model").to_str().unwrap(),
        "--requests",
        requests.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!res.status.success());
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("requests.jsonl:3:"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["requests.jsonl".to_string()], "{left:?}");
}

#[test]
fn missing_model_and_bad_config_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let requests = dir.path().join("requests.jsonl");
    std::fs::write(&requests, line(1, 3, 2)).unwrap();
    let config = dir.path().join("engine.toml");
    std::fs::write(&config, "max_num_seq = 4\n").unwrap();
    let out = dir.path().join("records.jsonl");
    let res = engine(&[
        "bench",
        "--model",
        dir.path().join("no-model").to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--requests",
        requests.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(stderr.contains("max_num_seq"), "{stderr}");
    assert!(!out.exists());

    let res = engine(&[
        "generate",
        "--model",
        "/nonexistent/model",
        "--prompt-ids",
        "1,2",
    ]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(stderr.contains("/nonexistent/model"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn too_long_prompt_is_rejected_in_its_record_and_the_others_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let config = dir.path().join("engine.toml");
    std::fs::write(&config, "device = \"cpu\"\nmax_model_len = 64\n").unwrap();
    let requests = dir.path().join("requests.jsonl");
    let warmup =
        "{\"id\":100,\"warmup\":true,\"prompt_token_ids\":[5,6],\"sampling\":{\"max_tokens\":2}}\n";
    std::fs::write(
        &requests,
        format!(
            "{warmup}{}{}{}",
            line(1, 8, 4),
            line(2, 80, 4),
            line(3, 5, 3)
        ),
    )
    .unwrap();
    let out = dir.path().join("records.jsonl");
    let summary = dir.path().join("summary.json");
    let res = engine(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--requests",
        requests.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--summary",
        summary.to_str().unwrap(),
        "--max-concurrency",
        "2",
    ]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let mut records: Vec<RequestRecord> = workloads::jsonl::read(&out).unwrap();
    records.sort_by_key(|r| r.id);
    assert_eq!(
        records.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    match &records[1].status {
        RecordStatus::Rejected { reason } => assert!(reason.contains("max_model_len"), "{reason}"),
        other => panic!("request 2 should be rejected, got {other:?}"),
    }
    for r in [&records[0], &records[2]] {
        assert_eq!(r.status, RecordStatus::Ok);
        assert!(r.output_len >= 1);
        assert_eq!(r.token_times_s.len() as u32, r.output_len);
    }
    let steps: Vec<workloads::StepLogEntry> =
        workloads::jsonl::read(&dir.path().join("records.steps.jsonl")).unwrap();
    assert!(!steps.is_empty());
    let summary: workloads::BenchSummary =
        serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(summary.backend_kind, "cpu");
    assert_eq!(summary.num_rejected, 1);
    assert!(summary.peak_memory_bytes.unwrap() > 0);
}

#[test]
fn a_huge_arrival_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let requests = dir.path().join("requests.jsonl");
    std::fs::write(
        &requests,
        "{\"id\":1,\"arrival_s\":1e300,\"prompt_token_ids\":[1,2],\"sampling\":{\"max_tokens\":2}}\n",
    )
    .unwrap();
    let out = dir.path().join("records.jsonl");
    let res = engine(&[
        "bench",
        "--model",
        dir.path().join("no-model").to_str().unwrap(),
        "--requests",
        requests.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("request 1: arrival_s"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn generate_refuses_out_of_range_sampling_flags() {
    for (flag, value) in [
        ("--temperature", "NaN"),
        ("--temperature", "-1"),
        ("--temperature", "inf"),
        ("--top-p", "5"),
    ] {
        let res = engine(&[
            "generate",
            "--model",
            "/nonexistent",
            "--prompt-ids",
            "1,2",
            &format!("{flag}={value}"),
        ]);
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert_eq!(res.status.code(), Some(1), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}

#[test]
fn check_config_names_the_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("engine.toml");
    std::fs::write(&config, "max_num_seqs = 4\nnum_threads = 10000\n").unwrap();
    let res = engine(&["check-config", "--config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(
        res.status.code(),
        Some(workloads::engine_knobs::EXIT_INVALID_CONFIG),
        "{stderr}"
    );
    assert!(stderr.contains("num_threads"), "{stderr}");
    // Printed once: the cause is not repeated by the error chain.
    assert_eq!(stderr.matches("num_threads").count(), 1, "{stderr}");

    std::fs::write(
        &config,
        "max_num_seqs = 4\nenable_prefix_caching = \"off\"\n",
    )
    .unwrap();
    let res = engine(&["check-config", "--config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(
        res.status.code(),
        Some(workloads::engine_knobs::EXIT_INVALID_CONFIG),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 2: enable_prefix_caching:") && stderr.contains("boolean"),
        "{stderr}"
    );

    std::fs::write(&config, "max_num_seqs = 4\nenable_prefix_caching = false\n").unwrap();
    let res = engine(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );

    let missing = dir.path().join("missing.toml");
    let res = engine(&["check-config", "--config", missing.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    // "No such file or directory" once, not once per level of the chain.
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
}

#[test]
fn text_prompt_to_a_model_without_tokenizer_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let out = engine(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--prompt",
        "hello",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tokenizer") && !err.contains("panicked"),
        "{err}"
    );
}
