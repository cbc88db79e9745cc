//! Prefix caching on the real CPU backend (synthesized `tiny` checkpoint):
//! requests that share prompt prefixes produce exactly the greedy tokens
//! they produce with caching off, while most of their prompts come from the
//! cache — in the step that computes the prefix, in a later batch, with
//! chunked prefill, and under preemption (a
//! pool too small for the batch), where a recomputed request also finds its
//! own earlier blocks.

use std::collections::HashMap;
use std::path::Path;

use engine::engine::Engine;
use engine::engine_config::{DeviceKind, EngineConfig};
use engine::weights::Checkpoint;
use workloads::{RecordStatus, Request, RequestRecord, SamplingParams};

const MAX_TOKENS: u32 = 12;
const GROUPS: u64 = 3;
/// Shared prefix: 2 full blocks of 16 and 5 tokens of a third.
const PREFIX: usize = 37;

/// Three groups of eight requests; request `g` (the group's first) runs
/// ahead so the others can find its blocks.
fn requests(vocab: usize) -> Vec<Request> {
    (0..GROUPS * 8)
        .map(|i| {
            let g = (i % GROUPS) as usize;
            let mut prompt: Vec<u32> = (0..PREFIX)
                .map(|p| ((g * 7919 + p * 104_729 + 11) % vocab) as u32)
                .collect();
            // Own tails of 1..=24 tokens; request 3 and 6 have none beyond a
            // token so the cache covers all but their last block.
            let tail = 1 + ((i * 13) % 24) as usize;
            prompt.extend((0..tail).map(|p| ((i as usize * 31 + p * 57 + 3) % vocab) as u32));
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

struct Outcome {
    records: HashMap<u64, RequestRecord>,
    preemptions: u32,
    queries: u64,
    hits: u64,
}

/// Runs the group leaders for `lead_steps` steps, then adds the rest.
fn run(ckpt: &Checkpoint, cfg: &EngineConfig, reqs: &[Request], lead_steps: usize) -> Outcome {
    let backend = engine::backend::create(DeviceKind::Cpu, ckpt, cfg).expect("cpu backend");
    let mut e = Engine::new(backend, &ckpt.config, cfg).expect("engine");
    let (leaders, rest) = reqs.split_at(GROUPS as usize);
    for r in leaders {
        e.add_request(r.clone());
    }
    let mut out = Outcome {
        records: HashMap::new(),
        preemptions: 0,
        queries: 0,
        hits: 0,
    };
    let mut step = 0;
    let mut pending = Some(rest);
    while e.has_unfinished() || pending.is_some() {
        if step == lead_steps {
            for r in pending.take().unwrap_or_default() {
                e.add_request(r.clone());
            }
        }
        let o = e.step().expect("step");
        if let Some(log) = o.log {
            out.queries += log.prefix_cache_queries;
            out.hits += log.prefix_cache_hits;
        }
        for rec in o.finished {
            assert_eq!(rec.status, RecordStatus::Ok, "request {}", rec.id);
            assert_eq!(rec.output_len, MAX_TOKENS);
            out.preemptions += rec.preemptions;
            out.records.insert(rec.id, rec);
        }
        step += 1;
    }
    assert_eq!(e.kv_blocks_in_use(), 0, "every reference released");
    out
}

fn tiny(dir: &Path) -> Checkpoint {
    engine::synth::write_preset("tiny", 7, dir).expect("synth tiny");
    Checkpoint::open(dir).expect("open tiny")
}

#[test]
fn outputs_are_identical_with_caching_on_and_off() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = tiny(dir.path());
    let reqs = requests(ckpt.config.vocab_size);
    let off = EngineConfig {
        device: DeviceKind::Cpu,
        block_size: 16,
        max_num_seqs: 32,
        max_num_batched_tokens: 4096,
        num_kv_blocks: 256,
        enable_prefix_caching: false,
        ..EngineConfig::default()
    };
    let reference = run(&ckpt, &off, &reqs, 1);
    assert_eq!((reference.queries, reference.hits), (0, 0));
    assert!(reference
        .records
        .values()
        .all(|r| r.num_cached_tokens == Some(0)));
    let distinct: std::collections::HashSet<_> = reference
        .records
        .values()
        .map(|r| &r.output_token_ids)
        .collect();
    assert!(distinct.len() > 12, "outputs too alike to prove anything");

    let on = EngineConfig {
        enable_prefix_caching: true,
        ..off.clone()
    };
    let chunked = EngineConfig {
        max_num_batched_tokens: 40,
        ..on.clone()
    };
    // Each request needs up to ceil((61 + 11) / 16) = 5 blocks; 24 blocks
    // hold a few at once, so growing decodes preempt.
    let tight = EngineConfig {
        num_kv_blocks: 24,
        max_num_batched_tokens: 256,
        ..on.clone()
    };
    let unchunked = EngineConfig {
        enable_chunked_prefill: false,
        ..tight.clone()
    };
    for (name, cfg, lead_steps) in [
        // All at once: the followers, admitted in the leaders' step, reuse
        // the blocks the leaders compute in that very step.
        ("all in one step", &on, 0),
        ("one batch", &on, 1),
        ("chunked prefill", &chunked, 3),
        ("tight KV, preemption", &tight, 1),
        ("tight KV, no chunking", &unchunked, 1),
    ] {
        let got = run(&ckpt, cfg, &reqs, lead_steps);
        for r in &reqs {
            let (a, b) = (&got.records[&r.id], &reference.records[&r.id]);
            assert_eq!(
                a.output_token_ids, b.output_token_ids,
                "{name}: request {}",
                r.id
            );
            let cached = a.num_cached_tokens.unwrap() as usize;
            assert!(cached.is_multiple_of(16) && cached < r.prompt_token_ids.len());
        }
        // Everyone but the leaders shares at least the prefix's 2 blocks.
        let followers_hit = reqs[GROUPS as usize..]
            .iter()
            .filter(|r| got.records[&r.id].num_cached_tokens.unwrap() >= 32)
            .count();
        assert!(
            followers_hit >= reqs.len() - GROUPS as usize - 4,
            "{name}: only {followers_hit} followers hit the cache"
        );
        assert!(got.hits > 0 && got.hits < got.queries, "{name}");
        if name.starts_with("tight") {
            assert!(got.preemptions > 0, "{name}: did not preempt");
        }
    }
}
