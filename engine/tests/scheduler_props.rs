//! Scheduler and block-manager invariants under randomized workloads, run
//! through the real `Engine` on the paging-checking mock backend.

use std::collections::HashMap;

use engine::engine::Engine;
use engine::engine_config::{EngineConfig, SpeculativeMethod};
use engine::testing::{mock_model_config, MockBackend};
use proptest::prelude::*;
use workloads::{FinishReason, RecordStatus, Request, RequestRecord, SamplingParams};

const VOCAB: usize = 50;
const MAX_POS: usize = 64;

#[derive(Debug, Clone)]
struct Workload {
    cfg: EngineConfig,
    /// (step at which it arrives, request)
    requests: Vec<(usize, Request)>,
}

fn sampling() -> impl Strategy<Value = SamplingParams> {
    (
        1u32..12,
        prop::bool::ANY,
        0u64..1000,
        prop::option::of(0u32..VOCAB as u32),
    )
        .prop_map(|(max_tokens, sampled, seed, stop)| SamplingParams {
            temperature: if sampled { 0.9 } else { 0.0 },
            top_k: if sampled { 10 } else { 0 },
            top_p: if sampled { 0.9 } else { 1.0 },
            seed,
            max_tokens,
            ignore_eos: false,
            stop_token_ids: stop.into_iter().collect(),
        })
}

fn workload() -> impl Strategy<Value = Workload> {
    // Speculative decoding (k = 0: off) with small n-grams, so that drafts
    // are proposed often, mostly rejected and sometimes accepted.
    let spec = (0usize..6, 1usize..3, 0usize..2);
    let cfg = (
        0u32..5,
        1usize..8,
        0usize..40,
        prop::bool::ANY,
        1usize..60,
        spec,
        prop::bool::ANY,
        prop::bool::ANY,
    )
        .prop_map(
            |(
                bs_pow,
                max_num_seqs,
                extra,
                chunked,
                num_kv_blocks,
                (k, min_n, more_n),
                prefix_caching,
                async_scheduling,
            )| {
                EngineConfig {
                    block_size: 1 << bs_pow,
                    max_num_seqs,
                    max_num_batched_tokens: (max_num_seqs + extra).max(k + 1),
                    enable_chunked_prefill: chunked,
                    num_kv_blocks,
                    enable_prefix_caching: prefix_caching,
                    speculative_method: if k > 0 {
                        SpeculativeMethod::Ngram
                    } else {
                        SpeculativeMethod::Off
                    },
                    num_speculative_tokens: k,
                    prompt_lookup_min: min_n,
                    prompt_lookup_max: min_n + more_n,
                    async_scheduling,
                    ..EngineConfig::default()
                }
            },
        );
    // Some prompts start with one shared prefix (of any length, so cache
    // hits end mid-prompt, at the prompt's end, or inside the output).
    let request = (
        0usize..12,
        prop::bool::ANY,
        prop::collection::vec(0u32..VOCAB as u32, 0..40),
        sampling(),
    );
    let shared = prop::collection::vec(0u32..VOCAB as u32, 0..30);
    (cfg, shared, prop::collection::vec(request, 1..16)).prop_map(|(cfg, shared, reqs)| Workload {
        cfg,
        requests: reqs
            .into_iter()
            .enumerate()
            .map(|(i, (at, with_shared, suffix, sampling))| {
                let mut prompt = if with_shared {
                    shared.clone()
                } else {
                    Vec::new()
                };
                prompt.extend(suffix);
                if prompt.is_empty() {
                    prompt.push(i as u32 % VOCAB as u32);
                }
                (
                    at,
                    Request {
                        id: i as u64,
                        arrival_s: 0.0,
                        warmup: false,
                        prompt_token_ids: prompt,
                        sampling,
                    },
                )
            })
            .collect(),
    })
}

fn new_engine(cfg: &EngineConfig) -> Engine {
    let model = mock_model_config(VOCAB, MAX_POS, &[]);
    Engine::new(Box::new(MockBackend::new(VOCAB)), &model, cfg).expect("engine")
}

/// The request's output when it runs alone with plenty of room (and no
/// prefix cache).
fn alone(request: &Request) -> Vec<u32> {
    let mut e = new_engine(&EngineConfig {
        enable_prefix_caching: false,
        ..EngineConfig::default()
    });
    e.add_request(request.clone());
    let mut records = Vec::new();
    while e.has_unfinished() {
        records.extend(e.step().expect("step").finished);
    }
    records.remove(0).output_token_ids
}

/// What the scheduler must reject: a request that cannot run even alone.
fn must_reject(cfg: &EngineConfig, r: &Request) -> bool {
    let prompt = r.prompt_token_ids.len();
    let longest_run = prompt + r.sampling.max_tokens as usize - 1;
    prompt + r.sampling.max_tokens as usize > MAX_POS
        || longest_run.div_ceil(cfg.block_size) > cfg.num_kv_blocks
        || (!cfg.enable_chunked_prefill && longest_run > cfg.max_num_batched_tokens)
}

fn run(w: &Workload) -> Result<(Vec<RequestRecord>, u32), TestCaseError> {
    let mut e = new_engine(&w.cfg);
    let mut records = Vec::new();
    let mut preempted = 0;
    let mut step = 0usize;
    loop {
        for (_, r) in w.requests.iter().filter(|(at, _)| *at == step) {
            e.add_request(r.clone());
        }
        let last_arrival = w.requests.iter().map(|(at, _)| *at).max().unwrap_or(0);
        if step > last_arrival && !e.has_unfinished() {
            break;
        }
        let outcome = e
            .step()
            .map_err(|err| TestCaseError::fail(err.to_string()))?;
        records.extend(outcome.finished);
        if let Some(log) = outcome.log {
            prop_assert!(log.batch_size as usize <= w.cfg.max_num_seqs);
            prop_assert!(
                (log.prefill_tokens + log.decode_tokens + log.spec_draft_tokens) as usize
                    <= w.cfg.max_num_batched_tokens
            );
            prop_assert!(log.spec_accepted_tokens <= log.spec_draft_tokens);
            prop_assert!(log.batch_size >= 1);
            prop_assert!(log.kv_blocks_used <= log.kv_blocks_total);
            prop_assert!(log.prefix_cache_hits <= log.prefix_cache_queries);
            if !w.cfg.enable_prefix_caching {
                prop_assert_eq!(log.prefix_cache_queries, 0);
            }
            preempted += log.preempted;
        }
        step += 1;
        prop_assert!(step < 20_000, "no progress after {step} steps");
    }
    prop_assert_eq!(e.kv_blocks_in_use(), 0, "leaked KV blocks");
    Ok((records, preempted))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_request_finishes_within_limits_and_matches_its_solo_run(w in workload()) {
        let (records, _) = run(&w)?;
        prop_assert_eq!(records.len(), w.requests.len(), "one record per request");
        let by_id: HashMap<u64, &RequestRecord> = records.iter().map(|r| (r.id, r)).collect();
        for (_, req) in &w.requests {
            let rec = by_id[&req.id];
            if must_reject(&w.cfg, req) {
                prop_assert!(matches!(rec.status, RecordStatus::Rejected { .. }), "{:?}", rec);
                continue;
            }
            prop_assert_eq!(&rec.status, &RecordStatus::Ok);
            let max = req.sampling.max_tokens;
            prop_assert!(rec.output_len >= 1 && rec.output_len <= max);
            prop_assert_eq!(rec.token_times_s.len() as u32, rec.output_len);
            match rec.finish_reason {
                FinishReason::Length => prop_assert_eq!(rec.output_len, max),
                FinishReason::StopToken => prop_assert!(req
                    .sampling
                    .stop_token_ids
                    .contains(rec.output_token_ids.last().unwrap())),
                other => prop_assert!(false, "unexpected finish {:?}", other),
            }
            prop_assert_eq!(&rec.output_token_ids, &alone(req), "request {}", req.id);
            // Cached tokens are whole blocks of the prompt, never all of it.
            let cached = rec.num_cached_tokens.expect("engine records say") as usize;
            prop_assert!(cached < req.prompt_token_ids.len());
            prop_assert_eq!(cached % w.cfg.block_size, 0);
            if !w.cfg.enable_prefix_caching {
                prop_assert_eq!(cached, 0);
            }
            let first = rec.first_token_s.unwrap();
            prop_assert!(rec.scheduled_s.unwrap() <= first);
            prop_assert!(rec.token_times_s.windows(2).all(|w| w[0] <= w[1]));
        }
    }
}

/// What must not depend on pipelining: each request's status, outputs
/// and why it finished.
fn outcomes(records: &[RequestRecord]) -> Vec<(u64, String, Vec<u32>, FinishReason)> {
    let mut v: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.id,
                format!("{:?}", r.status),
                r.output_token_ids.clone(),
                r.finish_reason,
            )
        })
        .collect();
    v.sort_by_key(|o| o.0);
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    // Pipelined stepping (the next step launched before the host has the
    // last one's tokens) changes when things happen, never what comes out:
    // EOS-free stop tokens end requests mid-pipeline, tight KV preempts
    // sequences whose last token is still pending, requests arrive while a
    // step is in flight.
    #[test]
    fn pipelined_and_sequential_steps_give_the_same_outputs(w in workload()) {
        // Speculative decoding steps one at a time: off here.
        let plain = EngineConfig {
            speculative_method: SpeculativeMethod::Off,
            num_speculative_tokens: 0,
            ..w.cfg.clone()
        };
        let on = Workload { cfg: EngineConfig { async_scheduling: true, ..plain.clone() }, ..w.clone() };
        let off = Workload { cfg: EngineConfig { async_scheduling: false, ..plain }, ..w };
        let (a, _) = run(&on)?;
        let (b, _) = run(&off)?;
        prop_assert_eq!(outcomes(&a), outcomes(&b));
    }
}

#[test]
fn tight_kv_forces_preemption_and_everything_still_completes() {
    // 8 requests that each need 5 blocks of 4 tokens over their life, in a
    // cache of 12 blocks: several are admitted, then growth forces preemption.
    let cfg = EngineConfig {
        block_size: 4,
        max_num_seqs: 8,
        max_num_batched_tokens: 64,
        num_kv_blocks: 12,
        ..EngineConfig::default()
    };
    let requests: Vec<(usize, Request)> = (0..8u64)
        .map(|i| {
            let prompt = (0..6)
                .map(|t| ((t + i * 7) % VOCAB as u64) as u32)
                .collect();
            let r = Request {
                id: i,
                arrival_s: 0.0,
                warmup: false,
                prompt_token_ids: prompt,
                sampling: SamplingParams::greedy(14),
            };
            (0, r)
        })
        .collect();
    let w = Workload { cfg, requests };
    let (records, preempted) = run(&w).unwrap();
    assert!(preempted > 0, "expected preemption");
    assert!(records.iter().any(|r| r.preemptions > 0));
    for (_, req) in &w.requests {
        let rec = records.iter().find(|r| r.id == req.id).unwrap();
        assert_eq!(rec.status, RecordStatus::Ok);
        assert_eq!(rec.output_len, 14);
        assert_eq!(rec.output_token_ids, alone(req));
    }
}

#[test]
fn shared_prefixes_hit_the_cache_under_preemption_with_the_same_outputs() {
    // 12 requests share a 16-token prefix (4 blocks of 4), each with its own
    // 5-token tail; 14 blocks cannot hold them all, so growth preempts, and a
    // recomputed request finds its own earlier blocks too.
    let shared: Vec<u32> = (0..16).map(|t| (t * 3 + 1) % VOCAB as u32).collect();
    let requests: Vec<(usize, Request)> = (0..12u64)
        .map(|i| {
            let mut prompt = shared.clone();
            prompt.extend((0..5).map(|t| ((t + i * 7) % VOCAB as u64) as u32));
            let r = Request {
                id: i,
                arrival_s: 0.0,
                warmup: false,
                prompt_token_ids: prompt,
                sampling: SamplingParams::greedy(12),
            };
            // The first arrives alone, so its prefix is cached for the rest.
            (if i == 0 { 0 } else { 2 }, r)
        })
        .collect();
    let cfg = |prefix_caching: bool| EngineConfig {
        block_size: 4,
        max_num_seqs: 8,
        max_num_batched_tokens: 24,
        num_kv_blocks: 14,
        enable_prefix_caching: prefix_caching,
        ..EngineConfig::default()
    };
    let on = Workload {
        cfg: cfg(true),
        requests: requests.clone(),
    };
    let off = Workload {
        cfg: cfg(false),
        requests,
    };
    let (with_cache, preempted) = run(&on).unwrap();
    let (without, _) = run(&off).unwrap();
    assert!(preempted > 0, "expected preemption");
    let by_id = |rs: &[RequestRecord]| -> HashMap<u64, RequestRecord> {
        rs.iter().map(|r| (r.id, r.clone())).collect()
    };
    let (a, b) = (by_id(&with_cache), by_id(&without));
    for (_, req) in &on.requests {
        assert_eq!(a[&req.id].status, RecordStatus::Ok);
        assert_eq!(a[&req.id].output_token_ids, b[&req.id].output_token_ids);
        assert_eq!(a[&req.id].output_token_ids, alone(req));
        assert_eq!(b[&req.id].num_cached_tokens, Some(0));
    }
    assert_eq!(a[&0].num_cached_tokens, Some(0), "the first finds nothing");
    let hits = (1..12)
        .filter(|id| a[id].num_cached_tokens == Some(16))
        .count();
    assert!(hits >= 8, "only {hits} of 11 found the shared prefix");
}
