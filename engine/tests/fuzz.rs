//! Property tests that feed what the engine reads from users damaged and
//! random input: engine.toml, config.json, the safetensors header and
//! requests.jsonl. Each must give a value or an error, never a panic.
//! `DYNO_FUZZ_CASES=1000000 cargo test --release -p engine --test fuzz`
//! runs a million cases per target (CI runs a few thousand).

use std::path::Path;

use engine::bench::{self, ArrivalMode};
use engine::config::ModelConfig;
use engine::engine::Engine;
use engine::engine_config::EngineConfig;
use engine::testing::{mock_model_config, MockBackend};
use engine::weights::{expected_tensors, Checkpoint, SINGLE_FILE};
use proptest::prelude::*;
use workloads::Request;

fn config() -> ProptestConfig {
    let cases = std::env::var("DYNO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// `base` with up to 8 byte edits (replace, insert, delete) at random
/// places, drawn mostly from characters that change meaning.
fn mutated_bytes(base: Vec<u8>, window: usize) -> impl Strategy<Value = Vec<u8>> {
    let edits = prop::collection::vec((any::<usize>(), 0u8..3, any::<u8>()), 0..8);
    edits.prop_map(move |edits| {
        const ODD: &[u8] = b"0123456789.-+eE\"'[]{}=,:#\n \t\\_abcnNiIfu";
        let mut bytes = base.clone();
        for (pos, op, b) in edits {
            let b = if b < 128 {
                ODD[b as usize % ODD.len()]
            } else {
                b
            };
            let span = bytes.len().min(window).max(1);
            let at = pos % span;
            match op {
                0 if at < bytes.len() => bytes[at] = b,
                1 => bytes.insert(at.min(bytes.len()), b),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        bytes
    })
}

fn mutated(base: &'static str) -> impl Strategy<Value = String> {
    mutated_bytes(base.as_bytes().to_vec(), usize::MAX)
        .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

const ENGINE_TOML: &str = "device = \"cpu\"\nblock_size = 16\nmax_num_seqs = 8\nmax_num_batched_tokens = 256\nenable_chunked_prefill = true\nmax_model_len = 0\ngpu_memory_utilization = 0.9\ncpu_kv_cache_bytes = 1048576\nnum_kv_blocks = 0\nenforce_eager = false\nnum_threads = 1\n";

fn check_engine_toml(text: &str) {
    let Ok(mut cfg) = EngineConfig::parse(text) else {
        return;
    };
    cfg.validate().expect("parse validates");
    // A valid config starts an engine or refuses with an error. The pool
    // is kept small so a case stays fast.
    cfg.num_kv_blocks = cfg.num_kv_blocks.clamp(1, 64);
    let model = mock_model_config(32, 128, &[1]);
    if let Ok(mut engine) = Engine::new(Box::new(MockBackend::new(32)), &model, &cfg) {
        engine.add_request(request(0, vec![3, 4, 5], 4));
        while engine.has_unfinished() {
            engine.step().expect("a valid config runs");
        }
    }
}

fn request(id: u64, prompt: Vec<u32>, max_tokens: u32) -> Request {
    Request {
        id,
        arrival_s: 0.0,
        warmup: false,
        prompt_token_ids: prompt,
        sampling: workloads::SamplingParams::greedy(max_tokens),
    }
}

const CONFIG_JSON: &str = r#"{"architectures":["Qwen3ForCausalLM"],"vocab_size":64,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,"rms_norm_eps":1e-6,"rope_theta":10000.0,"max_position_embeddings":128,"tie_word_embeddings":true,"attention_bias":false,"bos_token_id":1,"eos_token_id":[2,3],"torch_dtype":"bfloat16","rope_scaling":null}"#;

fn check_config_json(text: &str) {
    if let Ok(cfg) = ModelConfig::parse(text) {
        if cfg.num_hidden_layers <= 64 {
            let _ = expected_tensors(&cfg);
        }
    }
}

/// The safetensors file of a complete, tiny checkpoint for CONFIG_JSON:
/// every expected tensor, zeros.
fn tiny_safetensors() -> Vec<u8> {
    let cfg = ModelConfig::parse(CONFIG_JSON).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = expected_tensors(&cfg)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            (name, shape, vec![0u8; n * 2])
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, shape.clone(), data)
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn check_safetensors(dir: &Path, bytes: &[u8]) {
    std::fs::write(dir.join(SINGLE_FILE), bytes).unwrap();
    if let Ok(ckpt) = Checkpoint::open(dir) {
        for name in ckpt.tensor_names() {
            let t = ckpt.tensor(name).unwrap();
            assert_eq!(t.to_f32().len(), t.len());
        }
    }
}

const REQUESTS: &str = "{\"id\":1,\"arrival_s\":0.0,\"prompt_token_ids\":[1,2,3],\"sampling\":{\"max_tokens\":3}}\n{\"id\":2,\"arrival_s\":0.5,\"warmup\":true,\"prompt_token_ids\":[4,5],\"sampling\":{\"temperature\":0.8,\"top_k\":4,\"top_p\":0.9,\"seed\":7,\"max_tokens\":2,\"stop_token_ids\":[9]}}\n{\"id\":3,\"arrival_s\":1.0,\"prompt_token_ids\":[30,31,6],\"sampling\":{\"max_tokens\":4,\"ignore_eos\":true}}\n";

fn check_requests(text: &str) {
    let mut requests = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Request>(line) {
            Ok(r) => requests.push(r),
            Err(_) => return,
        }
    }
    if bench::validate_requests(&requests).is_err() {
        return;
    }
    // Closed loop ignores arrival times, so no case sleeps.
    let model = mock_model_config(32, 64, &[2]);
    let cfg = EngineConfig {
        num_kv_blocks: 32,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(Box::new(MockBackend::new(32)), &model, &cfg).unwrap();
    let measured = requests.iter().filter(|r| !r.warmup).count();
    let result = bench::run(
        &mut engine,
        requests,
        ArrivalMode::ClosedLoop { max_concurrency: 2 },
    )
    .expect("valid requests run");
    assert_eq!(result.records.len(), measured);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn engine_toml_survives_damage(text in mutated(ENGINE_TOML)) {
        check_engine_toml(&text);
    }

    #[test]
    fn engine_toml_survives_random_text(text in "\\PC{0,200}") {
        check_engine_toml(&text);
    }

    #[test]
    fn config_json_survives_damage(text in mutated(CONFIG_JSON)) {
        check_config_json(&text);
    }

    #[test]
    fn requests_jsonl_survives_damage(text in mutated(REQUESTS)) {
        check_requests(&text);
    }
}

proptest! {
    #![proptest_config(config())]

    /// Edits land in the 8-byte length and the JSON header (the data
    /// section is zeros that mean nothing).
    #[test]
    fn safetensors_header_survives_damage(
        bytes in mutated_bytes(tiny_safetensors(), 2048)
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), CONFIG_JSON).unwrap();
        check_safetensors(dir.path(), &bytes);
    }

    #[test]
    fn safetensors_of_random_bytes_survive(
        len in any::<u64>(),
        header in "\\PC{0,200}",
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), CONFIG_JSON).unwrap();
        let mut bytes = (len % 4096).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        check_safetensors(dir.path(), &bytes);
    }
}

#[test]
fn the_fuzzed_inputs_are_valid_before_damage() {
    EngineConfig::parse(ENGINE_TOML).unwrap();
    ModelConfig::parse(CONFIG_JSON).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), CONFIG_JSON).unwrap();
    std::fs::write(dir.path().join(SINGLE_FILE), tiny_safetensors()).unwrap();
    Checkpoint::open(dir.path()).unwrap();
    check_requests(REQUESTS);
}
