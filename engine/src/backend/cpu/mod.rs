//! CPU backend: f32 compute for Llama, Qwen2 and Qwen3 checkpoints over a
//! paged KV cache.
//!
//! A step flattens every sequence's tokens into one `[tokens, hidden]`
//! matrix, so each projection is one multithreaded GEMM ([`linear`]); RoPE,
//! norms and attention ([`attention`]) work per token. Every op computes a
//! token's row independently of the others (see [`linear`] for the GEMM), so
//! a sequence's logits are bit-identical alone, in any batch, and under any
//! prefill chunking. So the `batch_invariant` knob, which the CUDA backend
//! needs for that, changes nothing here (tests/batch_invariance.rs runs
//! the CPU backend with it off and on).

mod attention;
mod layer;
mod linear;
mod mlp;
mod rmsnorm;

use super::*;
use crate::backend::rope::Rope;
use crate::config::ModelConfig;
use attention::{KvCache, TokenPlace};
use layer::{DecoderLayer, StepContext};
use linear::Linear;

pub struct CpuBackend {
    config: ModelConfig,
    /// `[vocab, hidden]`; when tied, `lm_head` keeps its own transposed copy.
    embed: Vec<f32>,
    layers: Vec<DecoderLayer>,
    final_norm: Vec<f32>,
    lm_head: Linear,
    rope: Rope,
    cache: Option<KvCache>,
    pool: rayon::ThreadPool,
}

impl CpuBackend {
    pub fn new(checkpoint: &Checkpoint, cfg: &EngineConfig) -> Result<Self, BackendError> {
        let config = checkpoint.config.clone();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.num_threads)
            .build()
            .map_err(|e| {
                BackendError::OutOfMemory(format!(
                    "cannot start {} CPU threads: {e}",
                    cfg.num_threads
                ))
            })?;
        let embed = checkpoint.tensor("model.embed_tokens.weight")?.to_f32();
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        let lm_head = if config.tie_word_embeddings {
            Linear::new(&embed, None, vocab, hidden)
        } else {
            Linear::new(
                &checkpoint.tensor("lm_head.weight")?.to_f32(),
                None,
                vocab,
                hidden,
            )
        };
        let layers = (0..config.num_hidden_layers)
            .map(|l| DecoderLayer::load(checkpoint, l))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CpuBackend {
            rope: Rope::new(&config),
            final_norm: checkpoint.tensor("model.norm.weight")?.to_f32(),
            lm_head,
            embed,
            layers,
            config,
            cache: None,
            pool,
        })
    }

    /// Logits of the tokens the step asks for: every token when
    /// `all_tokens`, else the last `num_drafts + 1` tokens of each entry
    /// that samples. A verified draft token's row is bit-identical to the
    /// row plain decoding computes for it one step at a time: every op
    /// computes a row independently of the others (module docs).
    fn run(
        &mut self,
        batch: &[SeqStep<'_>],
        all_tokens: bool,
    ) -> Result<Vec<Vec<f32>>, BackendError> {
        let cache = self
            .cache
            .as_mut()
            .ok_or_else(|| BackendError::InvalidBatch("allocate_kv_cache was not called".into()))?;
        validate(batch, &self.config, cache)?;
        let hidden = self.config.hidden_size;
        let mut places = Vec::new();
        let mut x = Vec::new();
        let mut wanted = Vec::new();
        for step in batch {
            let sampled_from = step.sample.as_ref().map_or(usize::MAX, |spec| {
                step.tokens.len().saturating_sub(spec.num_rows())
            });
            for (i, &token) in step.tokens.iter().enumerate() {
                if all_tokens || i >= sampled_from {
                    wanted.push(places.len());
                }
                places.push(TokenPlace {
                    position: step.start_pos + i,
                    block_table: step.block_table,
                });
                let t = token as usize;
                x.extend_from_slice(&self.embed[t * hidden..(t + 1) * hidden]);
            }
        }
        let (layers, rope, final_norm, lm_head) =
            (&self.layers, &self.rope, &self.final_norm, &self.lm_head);
        let eps = self.config.rms_norm_eps as f32;
        let vocab = self.config.vocab_size;
        let logits = self.pool.install(|| {
            let angles: Vec<_> = places.iter().map(|p| rope.angles(p.position)).collect();
            let step = StepContext {
                places: &places,
                angles: &angles,
                rope,
            };
            for layer in layers {
                layer.forward(&mut x, &step, cache);
            }
            let mut selected = Vec::with_capacity(wanted.len() * hidden);
            for &t in &wanted {
                selected.extend_from_slice(&x[t * hidden..(t + 1) * hidden]);
            }
            rmsnorm::rms_norm_rows(&mut selected, final_norm, eps);
            lm_head.forward(&selected, wanted.len())
        });
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }
}

/// Rejects batches that would index outside the vocabulary, the context or
/// the KV pool, naming the sequence.
fn validate(batch: &[SeqStep<'_>], cfg: &ModelConfig, cache: &KvCache) -> Result<(), BackendError> {
    for step in batch {
        let bad =
            |msg: String| BackendError::InvalidBatch(format!("sequence {}: {msg}", step.seq_id));
        if step.tokens.is_empty() {
            return Err(bad("no tokens".into()));
        }
        if let Some(spec) = &step.sample {
            if spec.num_rows() > step.tokens.len() {
                return Err(bad(format!(
                    "{} draft tokens to verify in a chunk of {}",
                    spec.num_drafts,
                    step.tokens.len()
                )));
            }
        }
        if let Some(&t) = step.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(bad(format!(
                "token {t} is not below vocab_size {}",
                cfg.vocab_size
            )));
        }
        let end = step.start_pos + step.tokens.len();
        if end > cfg.max_position_embeddings {
            return Err(bad(format!(
                "positions up to {end} exceed max_position_embeddings {}",
                cfg.max_position_embeddings
            )));
        }
        let needed = end.div_ceil(cache.block_size);
        if step.block_table.len() < needed {
            return Err(bad(format!(
                "block_table has {} blocks, positions 0..{end} need {needed}",
                step.block_table.len()
            )));
        }
        if let Some(&b) = step.block_table[..needed]
            .iter()
            .find(|&&b| b as usize >= cache.num_blocks)
        {
            return Err(bad(format!(
                "block {b} is not below num_blocks {}",
                cache.num_blocks
            )));
        }
    }
    Ok(())
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

impl Backend for CpuBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: "cpu".into(),
            device_name: cpu_name(),
            dtype: "f32".into(),
        }
    }

    fn kv_block_bytes(&self, block_size: usize) -> usize {
        let c = &self.config;
        c.num_hidden_layers * 2 * block_size * c.num_key_value_heads * c.head_dim * 4
    }

    fn kv_memory_budget(&self, cfg: &EngineConfig) -> Result<u64, BackendError> {
        Ok(cfg.cpu_kv_cache_bytes)
    }

    fn allocate_kv_cache(
        &mut self,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<(), BackendError> {
        if num_blocks == 0 || block_size == 0 {
            return Err(BackendError::InvalidBatch(format!(
                "KV cache needs blocks: num_blocks {num_blocks}, block_size {block_size}"
            )));
        }
        let c = &self.config;
        self.cache = None; // free the old pool before taking a new one
        self.cache = Some(KvCache::new(
            c.num_hidden_layers,
            num_blocks,
            block_size,
            c.num_key_value_heads * c.head_dim,
        )?);
        Ok(())
    }

    fn forward(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<u32>, BackendError> {
        let logits = self.run(batch, false)?;
        let specs = batch
            .iter()
            .filter_map(|s| s.sample.as_ref())
            .flat_map(|spec| (0..spec.num_rows()).map(|j| spec.row(j)));
        Ok(logits
            .iter()
            .zip(specs)
            .map(|(row, spec)| crate::sampler::sample_checked(row, &spec))
            .collect())
    }

    fn supports_draft_verification(&self) -> bool {
        true
    }

    fn forward_logits(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Vec<f32>>, BackendError> {
        self.run(batch, true)
    }
}
