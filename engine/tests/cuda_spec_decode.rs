//! GPU test of n-gram speculative decoding on the CUDA backend (ignored
//! without a GPU): `cargo test --release -p engine --test cuda_spec_decode
//! -- --ignored` (also run by `scripts/gpu_spec_decode.sh`).
//!
//! A seeded random tiny Llama and Qwen3 on the engine, 16 greedy requests
//! with copy-inviting prompts, speculation on (k = 7, so a step samples up
//! to 128 rows: more than the 64-row logits buffer, exercising the chunked
//! path) against plain decoding, eager and with CUDA graphs. On the GPU the
//! verify chunk's rows come from GEMMs of another shape than plain decode's
//! (bf16, cuBLAS picks kernels per shape), so bit-identity is not promised:
//! outputs must agree token for token up to near ties, judged on the f32
//! reference — at the first divergence the two tokens' f32 logits differ by
//! less than `NEAR_TIE` of that row's logit range.

mod cuda_support;

use cuda_support::*;
use engine::backend::cuda::CudaBackend;
use engine::config::Architecture;
use engine::engine::Engine;
use engine::engine_config::{EngineConfig, SpeculativeMethod};
use workloads::{RecordStatus, Request, SamplingParams};

const NEAR_TIE: f32 = 0.01;
const MAX_TOKENS: u32 = 40;

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
            prompt
        })
        .collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn spec_decode_matches_plain_decoding_up_to_near_ties() {
    for arch in [Architecture::Llama, Architecture::Qwen3] {
        let c = tiny_config(arch);
        let t = random_tensors(&c, 7);
        let reqs: Vec<Request> = prompts(c.vocab_size, 16)
            .into_iter()
            .enumerate()
            .map(|(i, p)| Request {
                id: i as u64,
                arrival_s: 0.0,
                warmup: false,
                prompt_token_ids: p,
                sampling: SamplingParams {
                    ignore_eos: true,
                    ..SamplingParams::greedy(MAX_TOKENS)
                },
            })
            .collect();
        for eager in [true, false] {
            let plain_cfg = EngineConfig {
                max_num_seqs: 16,
                max_num_batched_tokens: 512,
                max_model_len: 256,
                enforce_eager: eager,
                ..Default::default()
            };
            let spec_cfg = EngineConfig {
                speculative_method: SpeculativeMethod::Ngram,
                num_speculative_tokens: 7,
                prompt_lookup_min: 1,
                prompt_lookup_max: 3,
                ..plain_cfg.clone()
            };
            let run = |cfg: &EngineConfig| {
                let backend = CudaBackend::with_loader(&c, cfg, &loader(&t)).expect("cuda backend");
                let mut e = Engine::new(Box::new(backend), &c, cfg).expect("engine");
                for r in &reqs {
                    e.add_request(r.clone());
                }
                let mut records = Vec::new();
                while e.has_unfinished() {
                    records.extend(e.step().expect("step").finished);
                }
                records.sort_by_key(|r| r.id);
                records
            };
            let plain = run(&plain_cfg);
            let spec = run(&spec_cfg);
            let tag = format!("{arch:?} eager={eager}");
            let accepted: u32 = spec
                .iter()
                .filter_map(|r| r.spec_decode.as_ref())
                .map(|s| s.num_accepted_tokens)
                .sum();
            assert!(accepted > 0, "{tag}: no draft accepted");
            let mut identical = 0;
            for (p, s) in plain.iter().zip(&spec) {
                assert_eq!(s.status, RecordStatus::Ok, "{tag}");
                assert_eq!(s.output_len, MAX_TOKENS, "{tag}");
                let (a, b) = (&p.output_token_ids, &s.output_token_ids);
                let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) else {
                    identical += 1;
                    continue;
                };
                let mut prefix = reqs[p.id as usize].prompt_token_ids.clone();
                prefix.extend_from_slice(&a[..i]);
                let row = reference_logits(&c, &t, &prefix).pop().unwrap();
                let range = row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                    - row.iter().copied().fold(f32::INFINITY, f32::min);
                let gap = (row[a[i] as usize] - row[b[i] as usize]).abs();
                assert!(
                    gap < NEAR_TIE * range,
                    "{tag}: request {} token {i}: plain {} vs spec {}, f32 gap {gap} of range {range}",
                    p.id,
                    a[i],
                    b[i]
                );
            }
            println!(
                "{tag}: {identical}/{} outputs identical, {accepted} drafts accepted",
                plain.len()
            );
        }
    }
}
