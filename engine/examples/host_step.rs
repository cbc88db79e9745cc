//! The engine's host work per step, with a backend that does nothing: what
//! the scheduler, the prefix cache and the step's bookkeeping cost at the
//! offline workload's batch (1,000 × (256 → 1,024), `max_num_seqs` 1,024).
//! On the GPU this work runs while the GPU idles (the backend's
//! `decode graph bucket …` line in a trial's `engine.log` measures it
//! there). Run it under a profiler to see where the time goes:
//!   cargo run --release -p engine --example host_step [REQUESTS]
//!   perf record -g target/release/examples/host_step && perf report
//! Prints the mean wall time of the pure decode steps at full batch.

use std::time::Instant;

use anyhow::{bail, Context};
use engine::backend::{Backend, BackendError, BackendInfo, SeqStep};
use engine::engine::Engine;
use engine::engine_config::EngineConfig;
use engine::testing::mock_model_config;
use workloads::{Request, SamplingParams};

/// Samples token 7 for every row; no KV, no logits.
struct NullBackend;

impl Backend for NullBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: "null".into(),
            device_name: "null".into(),
            dtype: "none".into(),
        }
    }
    fn kv_block_bytes(&self, block_size: usize) -> usize {
        block_size
    }
    fn kv_memory_budget(&self, cfg: &EngineConfig) -> Result<u64, BackendError> {
        Ok(cfg.cpu_kv_cache_bytes)
    }
    fn allocate_kv_cache(&mut self, _: usize, _: usize) -> Result<(), BackendError> {
        Ok(())
    }
    fn forward(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<u32>, BackendError> {
        Ok(batch
            .iter()
            .filter_map(|s| s.sample.as_ref())
            .flat_map(|spec| std::iter::repeat_n(7u32, spec.num_rows()))
            .collect())
    }
    fn forward_logits(&mut self, _: &[SeqStep<'_>]) -> Result<Vec<Vec<f32>>, BackendError> {
        Err(BackendError::InvalidBatch(
            "the null backend computes no logits".into(),
        ))
    }
}

fn main() -> anyhow::Result<()> {
    let requests: u64 = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .with_context(|| format!("REQUESTS {a:?} is not a whole number"))?,
        None => 1000,
    };
    if requests == 0 {
        bail!("REQUESTS must be at least 1");
    }
    let (prompt, output) = (256u32, 1024u32);
    let vocab = 49_152u32;
    let model = mock_model_config(vocab as usize, 2048, &[0]);
    let cfg = EngineConfig {
        max_num_seqs: 1024,
        max_model_len: 1536,
        // Room for every sequence at once, as on the H200.
        num_kv_blocks: requests as usize * 96 + 16,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(Box::new(NullBackend), &model, &cfg)?;
    let mut sampling = SamplingParams::greedy(output);
    sampling.ignore_eos = true;
    for id in 0..requests {
        // Distinct prompts: no prefix-cache hits, as in the workload.
        let prompt_token_ids = (0..prompt)
            .map(|i| (i * 7 + id as u32 * 13) % (vocab - 1) + 1)
            .collect();
        engine.add_request(Request {
            id,
            arrival_s: 0.0,
            warmup: false,
            prompt_token_ids,
            sampling: sampling.clone(),
        });
    }
    let full = (requests as usize).min(cfg.max_num_seqs) as u32;
    let (mut decode_s, mut decode_steps, mut steps) = (0.0f64, 0u32, 0u32);
    let start = Instant::now();
    while engine.has_unfinished() {
        let t = Instant::now();
        let outcome = engine.step()?;
        let dt = t.elapsed().as_secs_f64();
        steps += 1;
        if outcome
            .log
            .is_some_and(|l| l.prefill_tokens == 0 && l.batch_size == full)
        {
            decode_s += dt;
            decode_steps += 1;
        }
    }
    println!(
        "{requests} requests × ({prompt} → {output}): {steps} steps in {:.3} s; {decode_steps} \
         pure decode steps at batch {full}: {:.1} µs each (mean)",
        start.elapsed().as_secs_f64(),
        1e6 * decode_s / f64::from(decode_steps.max(1))
    );
    Ok(())
}
