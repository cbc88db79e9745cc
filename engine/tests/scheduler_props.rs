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
    )
        .prop_map(
            |(bs_pow, max_num_seqs, extra, chunked, num_kv_blocks, (k, min_n, more_n))| {
                EngineConfig {
                    block_size: 1 << bs_pow,
                    max_num_seqs,
                    max_num_batched_tokens: (max_num_seqs + extra).max(k + 1),
                    enable_chunked_prefill: chunked,
                    num_kv_blocks,
                    speculative_method: if k > 0 {
                        SpeculativeMethod::Ngram
                    } else {
                        SpeculativeMethod::Off
                    },
                    num_speculative_tokens: k,
                    prompt_lookup_min: min_n,
                    prompt_lookup_max: min_n + more_n,
                    ..EngineConfig::default()
                }
            },
        );
    let request = (
        0usize..12,
        prop::collection::vec(0u32..VOCAB as u32, 1..40),
        sampling(),
    );
    (cfg, prop::collection::vec(request, 1..16)).prop_map(|(cfg, reqs)| Workload {
        cfg,
        requests: reqs
            .into_iter()
            .enumerate()
            .map(|(i, (at, prompt, sampling))| {
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

/// The request's output when it runs alone with plenty of room.
fn alone(request: &Request) -> Vec<u32> {
    let mut e = new_engine(&EngineConfig::default());
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
            let first = rec.first_token_s.unwrap();
            prop_assert!(rec.scheduled_s.unwrap() <= first);
            prop_assert!(rec.token_times_s.windows(2).all(|w| w[0] <= w[1]));
        }
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
