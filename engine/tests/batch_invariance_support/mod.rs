//! The scheduler-level batch-invariance check shared by the CPU test
//! (`batch_invariance.rs`) and the GPU test (`cuda_batch_invariance.rs`):
//! 64 requests of mixed prompt lengths, each run alone, then all together
//! in one batch, with chunked prefill in small steps, without chunked
//! prefill, and in a KV pool so small that sequences are preempted and
//! recomputed. Every request's greedy output must be identical in all of
//! them.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

use engine::engine::Engine;
use engine::engine_config::EngineConfig;
use engine::weights::Checkpoint;
use workloads::{RecordStatus, Request, SamplingParams};

pub const REQUESTS: u64 = 64;
pub const MAX_TOKENS: u32 = 16;

/// `n` greedy requests with prompts of 1 to 61 tokens in a scrambled order,
/// tokens spread over the vocabulary (each request's first token differs).
pub fn requests(n: u64, vocab: usize) -> Vec<Request> {
    (0..n)
        .map(|i| {
            let len = 1 + ((i * 37) % 61) as usize;
            let prompt = (0..len)
                .map(|p| ((i as usize * 7919 + p * 104_729 + 1) % vocab) as u32)
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

/// What one run produced.
pub struct Outcome {
    pub outputs: HashMap<u64, Vec<u32>>,
    pub preemptions: u32,
    /// Most sequences in one step.
    pub max_batch: u32,
    /// Most prefill tokens in one step.
    pub max_prefill: u32,
}

fn engine(ckpt: &Checkpoint, cfg: &EngineConfig) -> Engine {
    let backend = engine::backend::create(cfg.device, ckpt, cfg).expect("backend");
    Engine::new(backend, &ckpt.config, cfg).expect("engine")
}

fn drain(e: &mut Engine, out: &mut Outcome) {
    while e.has_unfinished() {
        let step = e.step().expect("step");
        if let Some(log) = step.log {
            out.max_batch = out.max_batch.max(log.batch_size);
            out.max_prefill = out.max_prefill.max(log.prefill_tokens);
        }
        for rec in step.finished {
            assert_eq!(rec.status, RecordStatus::Ok, "request {}", rec.id);
            assert_eq!(rec.output_len, MAX_TOKENS, "request {}", rec.id);
            out.preemptions += rec.preemptions;
            assert!(
                out.outputs.insert(rec.id, rec.output_token_ids).is_none(),
                "request {} finished twice",
                rec.id
            );
        }
    }
    assert_eq!(e.kv_blocks_in_use(), 0);
}

fn empty() -> Outcome {
    Outcome {
        outputs: HashMap::new(),
        preemptions: 0,
        max_batch: 0,
        max_prefill: 0,
    }
}

/// Every request added at once.
pub fn run_together(ckpt: &Checkpoint, cfg: &EngineConfig, reqs: &[Request]) -> Outcome {
    let mut e = engine(ckpt, cfg);
    for r in reqs {
        e.add_request(r.clone());
    }
    let mut out = empty();
    drain(&mut e, &mut out);
    out
}

/// One engine, one request at a time: each runs alone.
pub fn run_alone(ckpt: &Checkpoint, cfg: &EngineConfig, reqs: &[Request]) -> Outcome {
    let mut e = engine(ckpt, cfg);
    let mut out = empty();
    for r in reqs {
        e.add_request(r.clone());
        drain(&mut e, &mut out);
    }
    assert_eq!(out.max_batch, 1);
    out
}

/// Runs the scenarios under `base` (device, `batch_invariant`, graphs...
/// already set) and asserts every request's output equals its output
/// alone. Returns the alone outputs.
pub fn check_scheduling_invariance(
    name: &str,
    ckpt: &Checkpoint,
    base: &EngineConfig,
) -> HashMap<u64, Vec<u32>> {
    let reqs = requests(REQUESTS, ckpt.config.vocab_size);
    // Room for all 64 at once: up to ceil((61 + 15) / 16) = 5 blocks each.
    let roomy = EngineConfig {
        block_size: 16,
        num_kv_blocks: 400,
        max_num_seqs: REQUESTS as usize,
        max_num_batched_tokens: 4096,
        ..base.clone()
    };
    let alone = run_alone(ckpt, &roomy, &reqs).outputs;
    assert_eq!(alone.len(), reqs.len());
    // The outputs must differ between requests, or mixing them up would
    // go unnoticed.
    let distinct: HashSet<_> = alone.values().collect();
    assert!(
        distinct.len() > REQUESTS as usize / 2,
        "{name}: only {} distinct outputs",
        distinct.len()
    );

    let chunked = EngineConfig {
        max_num_batched_tokens: REQUESTS as usize,
        enable_chunked_prefill: true,
        ..roomy.clone()
    };
    let unchunked = EngineConfig {
        max_num_batched_tokens: 256,
        enable_chunked_prefill: false,
        ..roomy.clone()
    };
    // A few sequences' worth of blocks: growing decodes must preempt.
    let tight = EngineConfig {
        num_kv_blocks: 12,
        ..roomy.clone()
    };
    // Pipelined stepping off (on by default): the same outputs, one step
    // at a time.
    let sequential = EngineConfig {
        async_scheduling: false,
        ..roomy.clone()
    };
    for (scenario, cfg) in [
        ("batch of 64", &roomy),
        ("steps one at a time", &sequential),
        ("chunked prefill", &chunked),
        ("no chunked prefill", &unchunked),
        ("tight KV", &tight),
    ] {
        let out = run_together(ckpt, cfg, &reqs);
        let same = reqs
            .iter()
            .filter(|r| out.outputs.get(&r.id) == alone.get(&r.id))
            .count();
        println!(
            "{name} / {scenario}: {same}/{} outputs identical to alone; most sequences in a step \
             {}, most prefill tokens {}, {} preemptions",
            reqs.len(),
            out.max_batch,
            out.max_prefill,
            out.preemptions
        );
        for r in &reqs {
            assert_eq!(
                out.outputs.get(&r.id),
                alone.get(&r.id),
                "{name} / {scenario}: request {} (prompt of {} tokens)",
                r.id,
                r.prompt_token_ids.len()
            );
        }
        match scenario {
            "batch of 64" => assert!(out.max_batch >= 32, "{scenario}: {}", out.max_batch),
            "chunked prefill" => {
                assert!(out.max_prefill <= cfg.max_num_batched_tokens as u32)
            }
            "tight KV" => assert!(out.preemptions > 0, "tight KV did not preempt"),
            _ => {}
        }
    }
    alone
}
