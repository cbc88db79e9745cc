//! N-gram speculative decoding on the real CPU backend with synthesized
//! random-weight checkpoints (`tiny`, a Llama; `tiny-qwen3`): outputs with
//! speculation on are token-for-token those of plain decoding — greedy and
//! seeded sampling, alone and in batches, at every `max_tokens` boundary,
//! with EOS and stop tokens inside accepted drafts, and under preemption —
//! and drafts are actually accepted (the comparison is not vacuous).

use std::collections::HashMap;
use std::path::Path;

use engine::engine::Engine;
use engine::engine_config::{DeviceKind, EngineConfig, SpeculativeMethod};
use engine::weights::Checkpoint;
use workloads::{FinishReason, RecordStatus, Request, RequestRecord, SamplingParams};

fn checkpoint(preset: &str, dir: &Path) -> Checkpoint {
    engine::synth::write_preset(preset, 11, dir).expect("synth");
    Checkpoint::open(dir).expect("open")
}

fn base_config() -> EngineConfig {
    EngineConfig {
        device: DeviceKind::Cpu,
        block_size: 8,
        num_kv_blocks: 512,
        num_threads: 2,
        ..EngineConfig::default()
    }
}

fn spec_config(k: usize, min_n: usize, max_n: usize) -> EngineConfig {
    EngineConfig {
        speculative_method: SpeculativeMethod::Ngram,
        num_speculative_tokens: k,
        prompt_lookup_min: min_n,
        prompt_lookup_max: max_n,
        ..base_config()
    }
}

/// Prompts that invite copying: a random span repeated, with a few random
/// tokens around it, so the model's continuation often recurs.
fn prompts(vocab: usize, n: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|i| {
            let span: Vec<u32> = (0..(6 + i % 5))
                .map(|p| ((i * 7919 + p * 104_729 + 13) % vocab) as u32)
                .collect();
            let mut prompt = vec![((i * 31 + 5) % vocab) as u32];
            for _ in 0..3 {
                prompt.extend_from_slice(&span);
            }
            prompt.push(((i * 17 + 3) % vocab) as u32);
            prompt
        })
        .collect()
}

fn request(id: u64, prompt: Vec<u32>, sampling: SamplingParams) -> Request {
    Request {
        id,
        arrival_s: 0.0,
        warmup: false,
        prompt_token_ids: prompt,
        sampling,
    }
}

/// Runs `reqs` together; returns records by id and, per request, the
/// number of tokens each step emitted for it.
fn run(
    ckpt: &Checkpoint,
    model: &engine::config::ModelConfig,
    cfg: &EngineConfig,
    reqs: &[Request],
) -> (HashMap<u64, RequestRecord>, HashMap<u64, Vec<usize>>) {
    run_min_tokens(ckpt, model, cfg, reqs, &HashMap::new())
}

/// [`run`] with a `min_tokens` per request id (0 when absent).
fn run_min_tokens(
    ckpt: &Checkpoint,
    model: &engine::config::ModelConfig,
    cfg: &EngineConfig,
    reqs: &[Request],
    min_tokens: &HashMap<u64, u32>,
) -> (HashMap<u64, RequestRecord>, HashMap<u64, Vec<usize>>) {
    let backend = engine::backend::create(DeviceKind::Cpu, ckpt, cfg).expect("cpu backend");
    let mut e = Engine::new(backend, model, cfg).expect("engine");
    for r in reqs {
        let min = min_tokens.get(&r.id).copied().unwrap_or(0);
        e.try_add_request(r.clone(), 0.0, min).expect("admissible");
    }
    let mut records = HashMap::new();
    let mut per_step: HashMap<u64, Vec<usize>> = HashMap::new();
    while e.has_unfinished() {
        let out = e.step().expect("step");
        let mut counts: HashMap<u64, usize> = HashMap::new();
        for t in &out.tokens {
            *counts.entry(t.request_id).or_default() += 1;
        }
        for (id, n) in counts {
            per_step.entry(id).or_default().push(n);
        }
        if let Some(log) = &out.log {
            assert!(log.spec_accepted_tokens <= log.spec_draft_tokens);
        }
        for rec in out.finished {
            assert_eq!(rec.status, RecordStatus::Ok, "request {}", rec.id);
            assert!(rec.output_len <= 64);
            records.insert(rec.id, rec);
        }
    }
    assert_eq!(e.kv_blocks_in_use(), 0, "every block is returned");
    (records, per_step)
}

fn outputs(records: &HashMap<u64, RequestRecord>) -> HashMap<u64, Vec<u32>> {
    records
        .iter()
        .map(|(&id, r)| (id, r.output_token_ids.clone()))
        .collect()
}

fn accepted(records: &HashMap<u64, RequestRecord>) -> u32 {
    records
        .values()
        .filter_map(|r| r.spec_decode.as_ref())
        .map(|s| s.num_accepted_tokens)
        .sum()
}

fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(max_tokens)
    }
}

#[test]
fn greedy_outputs_equal_plain_decoding_alone_and_batched() {
    for preset in ["tiny", "tiny-qwen3"] {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = checkpoint(preset, dir.path());
        let reqs: Vec<Request> = prompts(ckpt.config.vocab_size, 12)
            .into_iter()
            .enumerate()
            .map(|(i, p)| request(i as u64, p, greedy(48)))
            .collect();
        let (plain, _) = run(&ckpt, &ckpt.config, &base_config(), &reqs);
        for cfg in [spec_config(4, 2, 4), spec_config(8, 1, 3)] {
            let (spec, per_step) = run(&ckpt, &ckpt.config, &cfg, &reqs);
            assert_eq!(outputs(&spec), outputs(&plain), "{preset}: batched");
            assert!(accepted(&spec) > 0, "{preset}: no draft was accepted");
            assert!(
                per_step.values().flatten().any(|&n| n > 1),
                "{preset}: no step emitted several tokens"
            );
            for r in spec.values() {
                assert_eq!(r.output_len, 48);
                if let Some(s) = &r.spec_decode {
                    assert!(s.num_accepted_tokens <= s.num_draft_tokens);
                    assert!(s.num_draft_tokens <= s.num_drafts * cfg.num_speculative_tokens as u32);
                }
            }
            // One request alone gives the same tokens as in the batch.
            let (alone, _) = run(&ckpt, &ckpt.config, &cfg, &reqs[3..4]);
            assert_eq!(alone[&3].output_token_ids, plain[&3].output_token_ids);
        }
    }
}

#[test]
fn max_tokens_is_never_exceeded_and_every_boundary_matches() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint("tiny", dir.path());
    let prompt = prompts(ckpt.config.vocab_size, 1).remove(0);
    let reqs: Vec<Request> = (1..=24u32)
        .map(|m| request(u64::from(m), prompt.clone(), greedy(m)))
        .collect();
    let (plain, _) = run(&ckpt, &ckpt.config, &base_config(), &reqs);
    let (spec, _) = run(&ckpt, &ckpt.config, &spec_config(6, 1, 4), &reqs);
    assert_eq!(outputs(&spec), outputs(&plain));
    for (id, r) in &spec {
        assert_eq!(u64::from(r.output_len), *id, "exactly max_tokens");
        assert_eq!(r.finish_reason, FinishReason::Length);
    }
    assert!(accepted(&spec) > 0);
}

#[test]
fn eos_and_stop_tokens_inside_accepted_drafts_stop_where_plain_decoding_does() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint("tiny", dir.path());
    let cfg = spec_config(6, 1, 4);
    let reqs: Vec<Request> = prompts(ckpt.config.vocab_size, 12)
        .into_iter()
        .enumerate()
        .map(|(i, p)| request(i as u64, p, greedy(48)))
        .collect();
    let (free, per_step) = run(&ckpt, &ckpt.config, &cfg, &reqs);
    // For each request, an output position that an accepted draft filled
    // (a token of a multi-token step other than its last). Its token
    // becomes the stop token / EOS, and `min_tokens` holds off its earlier
    // occurrences, so plain decoding stops exactly there.
    let mut stops = HashMap::new();
    for r in &reqs {
        let out = &free[&r.id].output_token_ids;
        let mut pos = 0;
        for &n in &per_step[&r.id] {
            if n > 1 && !stops.contains_key(&r.id) {
                stops.insert(r.id, (out[pos], pos));
            }
            pos += n;
        }
    }
    assert!(stops.len() >= 3, "too few accepted drafts to stop inside");
    let min_tokens: HashMap<u64, u32> = stops
        .iter()
        .map(|(&id, &(_, at))| (id, at as u32 + 1))
        .collect();

    // As stop tokens, per request.
    let with_stops: Vec<Request> = reqs
        .iter()
        .filter_map(|r| {
            let &(token, _) = stops.get(&r.id)?;
            let mut r = r.clone();
            r.sampling.stop_token_ids = vec![token];
            Some(r)
        })
        .collect();
    let (plain, _) = run_min_tokens(
        &ckpt,
        &ckpt.config,
        &base_config(),
        &with_stops,
        &min_tokens,
    );
    let (spec, _) = run_min_tokens(&ckpt, &ckpt.config, &cfg, &with_stops, &min_tokens);
    assert_eq!(outputs(&spec), outputs(&plain));
    for (id, r) in &spec {
        assert_eq!(r.finish_reason, FinishReason::StopToken);
        assert_eq!(r.output_len as usize, stops[id].1 + 1);
    }

    // As the model's EOS, for one request.
    let (&id, &(eos, at)) = stops.iter().min_by_key(|(id, _)| **id).unwrap();
    let mut model = ckpt.config.clone();
    model.eos_token_ids = vec![eos];
    let mut r = reqs[id as usize].clone();
    r.sampling.ignore_eos = false;
    let one = std::slice::from_ref(&r);
    let (plain, _) = run_min_tokens(&ckpt, &model, &base_config(), one, &min_tokens);
    let (spec, _) = run_min_tokens(&ckpt, &model, &cfg, one, &min_tokens);
    assert_eq!(outputs(&spec), outputs(&plain));
    assert_eq!(spec[&id].finish_reason, FinishReason::Eos);
    assert_eq!(spec[&id].output_len as usize, at + 1);
}

#[test]
fn preemption_under_a_tight_kv_cache_keeps_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint("tiny", dir.path());
    let reqs: Vec<Request> = prompts(ckpt.config.vocab_size, 8)
        .into_iter()
        .enumerate()
        .map(|(i, p)| request(i as u64, p, greedy(40)))
        .collect();
    let (plain, _) = run(&ckpt, &ckpt.config, &base_config(), &reqs);
    let tight = EngineConfig {
        num_kv_blocks: 24,
        ..spec_config(4, 1, 3)
    };
    let (spec, _) = run(&ckpt, &ckpt.config, &tight, &reqs);
    assert_eq!(outputs(&spec), outputs(&plain));
    let preemptions: u32 = spec.values().map(|r| r.preemptions).sum();
    assert!(preemptions > 0, "the cache was not tight enough to preempt");
    assert!(accepted(&spec) > 0);
}

#[test]
fn seeded_sampling_outputs_equal_plain_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint("tiny", dir.path());
    let reqs: Vec<Request> = prompts(ckpt.config.vocab_size, 8)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let sampling = SamplingParams {
                temperature: 0.3 + 0.1 * (i % 4) as f32,
                top_k: if i % 2 == 0 { 0 } else { 20 },
                top_p: if i % 3 == 0 { 1.0 } else { 0.9 },
                seed: 1000 + i as u64,
                ..greedy(40)
            };
            request(i as u64, p, sampling)
        })
        .collect();
    let (plain, _) = run(&ckpt, &ckpt.config, &base_config(), &reqs);
    let (spec, _) = run(&ckpt, &ckpt.config, &spec_config(4, 1, 3), &reqs);
    assert_eq!(outputs(&spec), outputs(&plain));
    assert!(accepted(&spec) > 0);
}
