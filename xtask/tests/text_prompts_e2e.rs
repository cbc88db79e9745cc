//! Text prompts of exact token lengths against `engine serve` (features
//! `serve` and `text`) on `tiny` with a tokenizer.json added to it (a small
//! byte-level BPE built here): the pipeline sends strings, the server
//! tokenizes them with the same tokenizer, and its `usage.prompt_tokens`
//! matches every workload prompt length. Needs xtask's `text` feature (the
//! CI's `--all-features` has it).
#![cfg(feature = "text")]

mod engine_build;

use engine_build::{engine_with_features, free_port, workspace_root};

use std::path::Path;

use clap::Parser;
use workloads::RecordStatus;
use xtask::cli::{BenchArgs, Cli};
use xtask::run_record::{RunRecord, TrialStatus};
use xtask::store::Store;

/// A byte-level BPE (256 bytes and a few merges), saved as tokenizer.json.
fn write_tokenizer(file: &Path) {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let mut vocab: tokenizers::models::bpe::Vocab = ByteLevel::alphabet()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "a")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    for (a, b) in &merges {
        let n = vocab.len() as u32;
        vocab.insert(format!("{a}{b}"), n);
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::default()));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.save(file, false).unwrap();
}

#[test]
fn text_prompts_reach_engine_serve_at_their_exact_lengths() {
    let engine = engine_with_features("serve,text");
    let root = workspace_root();
    let tiny = xtask::model::resolve("tiny", &engine, &root.join(".models")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // tiny's checkpoint with a tokenizer.
    let model = dir.path().join("tiny-text");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(&tiny.path).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
        }
    }
    write_tokenizer(&model.join("tokenizer.json"));

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let launch = format!(
        "exec {} serve --model {} --device cpu --port {port}",
        engine.display(),
        model.display()
    );
    let results = dir.path().join("results");
    let json = dir.path().join("run.json");
    let argv: Vec<String> = [
        "xtask",
        "bench",
        "--device",
        "cpu",
        "--engine-bin",
        engine.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--target",
        &url,
        "--launch",
        &launch,
        "--prompt-format",
        "text",
        "--tokenizer",
        model.to_str().unwrap(),
        "--workload",
        "smoke-closed-loop",
        "--trials",
        "1",
        "--results",
        results.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let args: BenchArgs = match Cli::parse_from(argv).command {
        xtask::cli::Command::Bench(a) => *a,
        _ => unreachable!(),
    };
    let code = xtask::bench::run(&args, &root).unwrap();
    assert!(code <= 1, "bench failed to run");
    let run: RunRecord = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let target = run.fingerprint.target.as_ref().unwrap();
    assert!(
        target
            .text_prompts
            .as_deref()
            .is_some_and(|t| t.starts_with("tokenizer.json (blake3 ")),
        "{:?}",
        target.text_prompts
    );
    let t = &run.workloads[0].trials[0];
    assert_eq!(t.status, TrialStatus::Ok, "{:?}", t.status);
    let store = Store::open(&results).unwrap();
    let records: Vec<workloads::RequestRecord> =
        store.get(t.records_object.as_ref().unwrap()).unwrap();
    assert_eq!(records.len(), 48);
    for r in &records {
        // engine serve without a tokenizer refuses string prompts (400):
        // an Ok record is a text prompt the server tokenized.
        assert_eq!(r.status, RecordStatus::Ok, "{r:?}");
        let c = r.client.as_ref().unwrap();
        assert_eq!(
            c.intended_prompt_len, None,
            "request {}: the server counted {} tokens, not the intended length",
            r.id, r.prompt_len
        );
        // smoke-closed-loop's prompts are 16 to 48 tokens.
        assert!((16..=48).contains(&r.prompt_len), "{}", r.prompt_len);
    }
    // The launched server was stopped.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}
