//! With the real CPU backend on a synthesized `tiny` checkpoint, a request's
//! greedy output does not depend on how it was scheduled: alone, in a batch of
//! 32 mixed-length requests, with chunked prefill on or off, and after being
//! preempted and recomputed.

use std::collections::HashMap;
use std::path::Path;

use engine::engine::Engine;
use engine::engine_config::{DeviceKind, EngineConfig};
use engine::weights::Checkpoint;
use workloads::{RecordStatus, Request, SamplingParams};

const MAX_TOKENS: u32 = 16;

fn requests(vocab: usize) -> Vec<Request> {
    (0..32u64)
        .map(|i| {
            // Lengths 1..=61 in a scrambled order, tokens spread over the vocab.
            let len = 1 + ((i * 37) % 31) as usize * 2;
            let prompt = (0..len)
                .map(|p| ((i as usize * 7919 + p * 104_729) % vocab) as u32)
                .collect();
            Request {
                id: i,
                arrival_s: 0.0,
                warmup: false,
                prompt_token_ids: prompt,
                sampling: SamplingParams {
                    ignore_eos: true,
                    ..SamplingParams::greedy(MAX_TOKENS)
                },
            }
        })
        .collect()
}

/// Runs `reqs` together under `cfg`; returns outputs by id and the total
/// number of preemptions.
fn run(ckpt: &Checkpoint, cfg: &EngineConfig, reqs: &[Request]) -> (HashMap<u64, Vec<u32>>, u32) {
    let backend = engine::backend::create(DeviceKind::Cpu, ckpt, cfg).expect("cpu backend");
    let mut e = Engine::new(backend, &ckpt.config, cfg).expect("engine");
    for r in reqs {
        e.add_request(r.clone());
    }
    let mut out = HashMap::new();
    let mut preemptions = 0;
    while e.has_unfinished() {
        for rec in e.step().expect("step").finished {
            assert_eq!(rec.status, RecordStatus::Ok, "request {}", rec.id);
            assert_eq!(rec.output_len, MAX_TOKENS);
            preemptions += rec.preemptions;
            out.insert(rec.id, rec.output_token_ids);
        }
    }
    assert_eq!(e.kv_blocks_in_use(), 0);
    (out, preemptions)
}

fn tiny(dir: &Path) -> Checkpoint {
    engine::synth::write_preset("tiny", 7, dir).expect("synth tiny");
    Checkpoint::open(dir).expect("open tiny")
}

#[test]
fn greedy_output_is_independent_of_batching_chunking_and_preemption() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = tiny(dir.path());
    let reqs = requests(ckpt.config.vocab_size);
    let base = EngineConfig {
        device: DeviceKind::Cpu,
        block_size: 16,
        // Room for all 32 at once (5 blocks each) without zeroing the
        // default 1 GiB pool for every engine.
        num_kv_blocks: 256,
        ..EngineConfig::default()
    };

    let mut alone = HashMap::new();
    for r in &reqs {
        let (out, _) = run(&ckpt, &base, std::slice::from_ref(r));
        alone.insert(r.id, out[&r.id].clone());
    }
    // The outputs must not be trivially constant, or the test proves nothing.
    let distinct: std::collections::HashSet<_> = alone.values().collect();
    assert!(
        distinct.len() > 16,
        "only {} distinct outputs",
        distinct.len()
    );

    let batched = EngineConfig {
        max_num_seqs: 32,
        max_num_batched_tokens: 4096,
        ..base.clone()
    };
    let chunked = EngineConfig {
        max_num_batched_tokens: 32,
        enable_chunked_prefill: true,
        ..batched.clone()
    };
    let unchunked = EngineConfig {
        max_num_batched_tokens: 256,
        enable_chunked_prefill: false,
        ..batched.clone()
    };
    // Each request needs up to ceil((61 + 15) / 16) = 5 blocks; 12 blocks
    // hold a few at once, so growing decodes must preempt.
    let tight = EngineConfig {
        num_kv_blocks: 12,
        ..batched.clone()
    };
    for (name, cfg) in [
        ("batch of 32", &batched),
        ("chunked prefill", &chunked),
        ("no chunked prefill", &unchunked),
        ("tight KV", &tight),
    ] {
        let (out, preemptions) = run(&ckpt, cfg, &reqs);
        for r in &reqs {
            assert_eq!(out[&r.id], alone[&r.id], "{name}: request {}", r.id);
        }
        if name == "tight KV" {
            assert!(preemptions > 0, "tight KV did not preempt");
        }
    }
}
