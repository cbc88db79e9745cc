//! The CPU backend against transformers: re-synthesises the tiny checkpoints
//! (seed 0, as in engine/fixtures/golden/README.md), compares logits within
//! 1e-3 relative error and 64-token greedy continuations exactly, and checks
//! that results do not depend on batch composition or prefill chunking.

use std::path::Path;

use engine::backend::cpu::CpuBackend;
use engine::backend::{Backend, SampleSpec, SeqStep};
use engine::engine_config::EngineConfig;
use engine::synth::write_preset;
use engine::weights::Checkpoint;
use serde_json::Value;

const SEED: u64 = 0;
const BLOCK_SIZE: usize = 16;
const BLOCKS_PER_SEQ: usize = 8; // 41 prompt + 64 generated tokens < 128
const REL_TOL: f32 = 1e-3;

struct Prompt {
    tokens: Vec<u32>,
    top_ids: Vec<Vec<usize>>,
    top_logits: Vec<Vec<f32>>,
    full: Vec<(usize, Vec<f32>)>,
    greedy: Vec<u32>,
}

fn load_fixture(preset: &str) -> Vec<Prompt> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/golden")
        .join(format!("{preset}.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    let golden: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(golden["seed"].as_u64(), Some(SEED));
    let nums = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    golden["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Prompt {
            tokens: nums(&p["tokens"]).iter().map(|&t| t as u32).collect(),
            top_ids: p["top_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| nums(r).iter().map(|&t| t as usize).collect())
                .collect(),
            top_logits: p["top_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| nums(r).iter().map(|&x| x as f32).collect())
                .collect(),
            full: p["full"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    let hex = f["logits_f32_hex"].as_str().unwrap();
                    (
                        f["position"].as_u64().unwrap() as usize,
                        decode_f32_hex(hex),
                    )
                })
                .collect(),
            greedy: nums(&p["greedy"]).iter().map(|&t| t as u32).collect(),
        })
        .collect()
}

/// Little-endian f32 values, 8 hex digits each.
fn decode_f32_hex(hex: &str) -> Vec<f32> {
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn backend(preset: &str, dir: &Path) -> CpuBackend {
    write_preset(preset, SEED, dir).unwrap();
    let ckpt = Checkpoint::open(dir).unwrap();
    let mut backend = CpuBackend::new(&ckpt, &EngineConfig::default()).unwrap();
    backend
        .allocate_kv_cache(4 * BLOCKS_PER_SEQ, BLOCK_SIZE)
        .unwrap();
    backend
}

/// Blocks of sequence slot `slot`, deliberately not in order.
fn table(slot: usize) -> Vec<u32> {
    (0..BLOCKS_PER_SEQ)
        .rev()
        .map(|b| (slot * BLOCKS_PER_SEQ + b) as u32)
        .collect()
}

fn greedy(index: u32) -> SampleSpec {
    SampleSpec {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
        index,
        num_drafts: 0,
    }
}

/// `max |a − b| / max |b|`.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    diff / b.iter().map(|y| y.abs()).fold(0.0, f32::max)
}

/// Greedy continuation of every prompt, all decoded together in one batch.
fn generate(
    backend: &mut CpuBackend,
    prompts: &[&[u32]],
    slots: &[usize],
    n: usize,
) -> Vec<Vec<u32>> {
    let tables: Vec<Vec<u32>> = slots.iter().map(|&s| table(s)).collect();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    for i in 0..n {
        let inputs: Vec<Vec<u32>> = (0..prompts.len())
            .map(|s| {
                if i == 0 {
                    prompts[s].to_vec()
                } else {
                    vec![out[s][i - 1]]
                }
            })
            .collect();
        let batch: Vec<SeqStep<'_>> = (0..prompts.len())
            .map(|s| SeqStep {
                seq_id: s as u64,
                tokens: &inputs[s],
                start_pos: if i == 0 { 0 } else { prompts[s].len() + i - 1 },
                block_table: &tables[s],
                sample: Some(greedy(i as u32)),
            })
            .collect();
        let next = backend.forward(&batch).unwrap();
        for (s, t) in next.into_iter().enumerate() {
            out[s].push(t);
        }
    }
    out
}

fn check_preset(preset: &str) {
    let prompts = load_fixture(preset);
    let dir = tempfile::tempdir().unwrap();
    let mut backend = backend(preset, dir.path());
    let mut worst_full = 0.0f32;
    let mut worst_top = 0.0f32;
    for (i, p) in prompts.iter().enumerate() {
        let t = table(0);
        let logits = backend
            .forward_logits(&[SeqStep {
                seq_id: i as u64,
                tokens: &p.tokens,
                start_pos: 0,
                block_table: &t,
                sample: None,
            }])
            .unwrap();
        assert_eq!(logits.len(), p.tokens.len());
        for (pos, want) in &p.full {
            let err = rel_err(&logits[*pos], want);
            worst_full = worst_full.max(err);
            assert!(
                err <= REL_TOL,
                "{preset} prompt {i} position {pos}: relative error {err}"
            );
        }
        for (pos, (ids, want)) in p.top_ids.iter().zip(&p.top_logits).enumerate() {
            let got: Vec<f32> = ids.iter().map(|&id| logits[pos][id]).collect();
            let err = rel_err(&got, want);
            worst_top = worst_top.max(err);
            assert!(
                err <= REL_TOL,
                "{preset} prompt {i} position {pos} (top-16): relative error {err}"
            );
        }
    }
    eprintln!(
        "{preset}: worst relative error {worst_full:.2e} (full rows), {worst_top:.2e} (top-16)"
    );

    // Greedy: each prompt alone, then all three in one batch.
    let n = prompts[0].greedy.len();
    for (i, p) in prompts.iter().enumerate() {
        let alone = generate(&mut backend, &[&p.tokens], &[0], n);
        assert_eq!(
            alone[0], p.greedy,
            "{preset} prompt {i}: greedy continuation"
        );
    }
    let all: Vec<&[u32]> = prompts.iter().map(|p| p.tokens.as_slice()).collect();
    let together = generate(&mut backend, &all, &[1, 2, 3], n);
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(
            together[i], p.greedy,
            "{preset} prompt {i}: greedy in a batch of 3"
        );
    }
}

#[test]
fn tiny_llama_matches_transformers() {
    check_preset("tiny");
}

#[test]
fn tiny_qwen2_matches_transformers() {
    check_preset("tiny-qwen2");
}

#[test]
fn tiny_qwen3_matches_transformers() {
    check_preset("tiny-qwen3");
}

/// A sequence's logits are bit-identical alone, next to other sequences, and
/// with its prompt split into chunks across steps.
#[test]
fn logits_do_not_depend_on_batch_or_chunking() {
    let prompts = load_fixture("tiny-qwen3");
    let dir = tempfile::tempdir().unwrap();
    let mut backend = backend("tiny-qwen3", dir.path());
    let target = &prompts[2].tokens;
    let t0 = table(0);
    let alone = backend
        .forward_logits(&[SeqStep {
            seq_id: 0,
            tokens: target,
            start_pos: 0,
            block_table: &t0,
            sample: None,
        }])
        .unwrap();

    // Chunked 5 + 12 + rest, each chunk in a batch with other sequences.
    let (t1, t2) = (table(1), table(2));
    let mut chunked = Vec::new();
    let mut start = 0;
    for (round, end) in [5, 17, target.len()].into_iter().enumerate() {
        let other = &prompts[round % 2].tokens;
        let batch = [
            SeqStep {
                seq_id: 1,
                tokens: other,
                start_pos: 0,
                block_table: &t1,
                sample: None,
            },
            SeqStep {
                seq_id: 0,
                tokens: &target[start..end],
                start_pos: start,
                block_table: &t2,
                sample: None,
            },
        ];
        let logits = backend.forward_logits(&batch).unwrap();
        chunked.extend_from_slice(&logits[other.len()..]);
        start = end;
    }
    assert_eq!(chunked.len(), alone.len());
    for (pos, (a, b)) in alone.iter().zip(&chunked).enumerate() {
        assert!(
            a == b,
            "position {pos} differs between alone and chunked-in-batch"
        );
    }
}

#[test]
fn bad_batches_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = backend("tiny", dir.path());
    let t = table(0);
    let step = |tokens: &'static [u32], start_pos: usize, block_table: &'static [u32]| SeqStep {
        seq_id: 9,
        tokens,
        start_pos,
        block_table,
        sample: None,
    };
    let t: &'static [u32] = Box::leak(t.into_boxed_slice());
    for (batch, needle) in [
        (step(&[5000], 0, t), "vocab_size"),
        (step(&[], 0, t), "no tokens"),
        (step(&[1, 2], 0, &[999]), "num_blocks"),
        (step(&[1, 2], 16, &[0]), "block_table"),
        (step(&[1], 4096, t), "max_position_embeddings"),
    ] {
        let err = backend.forward_logits(&[batch]).unwrap_err().to_string();
        assert!(err.contains(needle) && err.contains("sequence 9"), "{err}");
    }
}

/// Decoding token by token gives the same logits, bit for bit, as
/// recomputing the whole sequence in one prefill (what preemption by
/// recompute does), in other KV blocks.
#[test]
fn decode_matches_recompute() {
    let prompts = load_fixture("tiny-qwen2");
    let dir = tempfile::tempdir().unwrap();
    let mut backend = backend("tiny-qwen2", dir.path());
    let (t0, t1) = (table(0), table(3));
    let prompt = &prompts[1].tokens;
    let mut seq = prompt.clone();
    let mut decoded = vec![backend
        .forward_logits(&[prefill_step(prompt, 0, &t0)])
        .unwrap()
        .pop()
        .unwrap()];
    for _ in 0..10 {
        let last = decoded.last().unwrap();
        let next = (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]).then(b.cmp(&a)))
            .unwrap() as u32;
        seq.push(next);
        let input = [next];
        decoded.push(
            backend
                .forward_logits(&[prefill_step(&input, seq.len() - 1, &t0)])
                .unwrap()
                .pop()
                .unwrap(),
        );
    }
    let recomputed = backend
        .forward_logits(&[prefill_step(&seq, 0, &t1)])
        .unwrap();
    for (i, want) in decoded.iter().enumerate() {
        let pos = prompt.len() - 1 + i;
        assert!(recomputed[pos] == *want, "position {pos}");
    }
}

fn prefill_step<'a>(tokens: &'a [u32], start_pos: usize, block_table: &'a [u32]) -> SeqStep<'a> {
    SeqStep {
        seq_id: 0,
        tokens,
        start_pos,
        block_table,
        sample: None,
    }
}

/// `forward` samples through the shared sampler: with temperature, the token
/// is `sampler::sample` of the same logits `forward_logits` returns.
#[test]
fn forward_samples_with_the_shared_sampler() {
    let prompts = load_fixture("tiny");
    let dir = tempfile::tempdir().unwrap();
    let mut backend = backend("tiny", dir.path());
    let t0 = table(0);
    let tokens = &prompts[0].tokens;
    let logits = backend
        .forward_logits(&[prefill_step(tokens, 0, &t0)])
        .unwrap();
    for index in 0..8 {
        let spec = SampleSpec {
            temperature: 0.8,
            top_k: 50,
            top_p: 0.9,
            seed: 1234,
            index,
            num_drafts: 0,
        };
        let got = backend
            .forward(&[SeqStep {
                sample: Some(spec.clone()),
                ..prefill_step(tokens, 0, &t0)
            }])
            .unwrap();
        let want = engine::sampler::sample(logits.last().unwrap(), &spec);
        assert_eq!(got, vec![want]);
    }
}
