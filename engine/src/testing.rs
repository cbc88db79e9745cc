//! Test support: a deterministic mock [`Backend`] that checks how the
//! scheduler uses the paged KV cache.
//!
//! The mock stores, for every KV slot, the token written there, its
//! position, and the hash of the whole token chain up to it as the writer
//! saw it (what a real K/V depends on). A sequence may read a slot another
//! sequence wrote (a prefix-cache hit) only when that chain is the reader's
//! own chain up to that position. A sampled token is a function of the
//! tokens *read back through the block table*, so any paging bug (a block
//! written while another sequence holds it, a stale or evicted block, a
//! missing recompute, a cache hit on the wrong content) changes the output
//! or fails the step with `InvalidBatch`.

use std::collections::VecDeque;

use crate::backend::{pending_row, Backend, BackendError, BackendInfo, SeqStep, NONFINITE_LOGITS};
use crate::config::{Architecture, DType, ModelConfig};
use crate::engine_config::EngineConfig;
use crate::sampler;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    pos: usize,
    token: u32,
    /// Hash of the writer's tokens `0..=pos`.
    chain: u64,
}

fn chain_step(prev: u64, token: u32) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&prev.to_le_bytes());
    h.update(&token.to_le_bytes());
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"))
}

pub struct MockBackend {
    vocab_size: usize,
    bytes_per_token: usize,
    block_size: usize,
    num_slots: usize,
    /// Written KV slots (sparse: the pool may be large).
    kv: std::collections::HashMap<usize, Slot>,
    /// Number of `forward` calls so far.
    pub forward_calls: u64,
    /// Sequences whose logits hold a NaN (a broken model, for tests of
    /// what the engine does with it).
    pub nan_seqs: std::collections::HashSet<u64>,
    /// Whether `launch`/`collect` are offered (pipelined stepping).
    pub pipelining: bool,
    /// `PENDING_TOKEN`s read so far (tokens the host had not seen).
    pub pending_tokens_read: std::rc::Rc<std::cell::Cell<u64>>,
    /// Launched steps' sampled tokens, oldest first, not yet collected.
    launched: VecDeque<Vec<u32>>,
    /// The rows the last step sampled: what a `PENDING_TOKEN` refers to.
    last_sampled: Vec<u32>,
}

impl MockBackend {
    pub fn new(vocab_size: usize) -> Self {
        MockBackend {
            vocab_size,
            bytes_per_token: 64,
            block_size: 0,
            num_slots: 0,
            kv: std::collections::HashMap::new(),
            forward_calls: 0,
            nan_seqs: std::collections::HashSet::new(),
            pipelining: true,
            pending_tokens_read: Default::default(),
            launched: VecDeque::new(),
            last_sampled: Vec::new(),
        }
    }

    /// Logits for the next token after `prefix`: a hash of the whole prefix.
    pub fn logits(&self, prefix: &[u32]) -> Vec<f32> {
        let mut h = blake3::Hasher::new();
        for t in prefix {
            h.update(&t.to_le_bytes());
        }
        let mut out = vec![0.0f32; self.vocab_size];
        let mut reader = h.finalize_xof();
        let mut buf = [0u8; 2];
        for v in &mut out {
            reader.fill(&mut buf);
            *v = f32::from(u16::from_le_bytes(buf)) / 4096.0;
        }
        out
    }

    fn run(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Vec<u32>>, BackendError> {
        let invalid = |m: String| Err(BackendError::InvalidBatch(m));
        if self.block_size == 0 {
            return invalid("KV cache not allocated".into());
        }
        let block_size = self.block_size;
        // Blocks each sequence writes in this step: no two sequences write
        // the same block. Another sequence may hold it (a prefix-cache hit
        // on a block completed in this step) if it comes later in the batch:
        // slots are written and read in batch order, so it reads them only
        // after they are written, as a real backend's per-layer K/V write
        // precedes every attention of the layer.
        let mut writer = std::collections::HashMap::new();
        for s in batch {
            let end = s.start_pos + s.tokens.len();
            if s.tokens.is_empty() || s.block_table.len() < end.div_ceil(block_size) {
                return invalid(format!("seq {}: block table too short", s.seq_id));
            }
            for &b in s.block_table {
                if (b as usize + 1) * block_size > self.num_slots {
                    return invalid(format!("seq {}: block {b} out of range", s.seq_id));
                }
            }
            for pos in s.start_pos..end {
                let b = s.block_table[pos / block_size];
                if let Some(other) = writer.insert(b, s.seq_id) {
                    if other != s.seq_id {
                        return invalid(format!(
                            "block {b} written by seqs {other} and {}",
                            s.seq_id
                        ));
                    }
                }
            }
        }
        let slot_of = |table: &[u32], pos: usize| {
            table[pos / block_size] as usize * block_size + pos % block_size
        };
        let mut prefixes = Vec::new();
        for s in batch {
            let end = s.start_pos + s.tokens.len();
            let mut prefix = Vec::with_capacity(end);
            let mut chain = 0u64;
            for pos in 0..s.start_pos {
                match self.kv.get(&slot_of(s.block_table, pos)).copied() {
                    Some(k) if k.pos == pos && k.chain == chain_step(chain, k.token) => {
                        chain = k.chain;
                        prefix.push(k.token);
                    }
                    _ => {
                        return invalid(format!(
                            "seq {}: position {pos} reads KV of another context or none",
                            s.seq_id
                        ))
                    }
                }
            }
            for (i, &token) in s.tokens.iter().enumerate() {
                let pos = s.start_pos + i;
                chain = chain_step(chain, token);
                self.kv
                    .insert(slot_of(s.block_table, pos), Slot { pos, token, chain });
                prefix.push(token);
            }
            prefixes.push(prefix);
        }
        self.forward_calls += 1;
        Ok(prefixes)
    }
}

impl Backend for MockBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: "mock".into(),
            device_name: "mock".into(),
            dtype: "f32".into(),
        }
    }
    fn kv_block_bytes(&self, block_size: usize) -> usize {
        self.bytes_per_token * block_size
    }
    fn kv_memory_budget(&self, cfg: &EngineConfig) -> Result<u64, BackendError> {
        Ok(cfg.cpu_kv_cache_bytes)
    }
    fn allocate_kv_cache(
        &mut self,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<(), BackendError> {
        self.block_size = block_size;
        self.num_slots = num_blocks * block_size;
        self.kv.clear();
        Ok(())
    }
    fn forward(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<u32>, BackendError> {
        if !self.launched.is_empty() {
            return Err(BackendError::InvalidBatch(
                "forward while launched steps are uncollected".into(),
            ));
        }
        self.launch(batch)?;
        self.collect()
    }
    fn supports_pipelining(&self) -> bool {
        self.pipelining
    }
    fn launch(&mut self, batch: &[SeqStep<'_>]) -> Result<(), BackendError> {
        if self.launched.len() >= 2 {
            return Err(BackendError::InvalidBatch(
                "a third step launched before the first was collected".into(),
            ));
        }
        // Pending tokens read the last step's rows, as the GPU does.
        let resolved = batch
            .iter()
            .map(|s| {
                s.tokens
                    .iter()
                    .map(|&t| self.resolve_token(s.seq_id, t))
                    .collect::<Result<Vec<u32>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let steps: Vec<SeqStep<'_>> = batch
            .iter()
            .zip(&resolved)
            .map(|(s, tokens)| SeqStep {
                tokens,
                ..s.clone()
            })
            .collect();
        let out = self.sample(&steps)?;
        self.last_sampled = out.clone();
        self.launched.push_back(out);
        Ok(())
    }
    fn collect(&mut self) -> Result<Vec<u32>, BackendError> {
        self.launched
            .pop_front()
            .ok_or_else(|| BackendError::InvalidBatch("nothing launched to collect".into()))
    }
    fn supports_draft_verification(&self) -> bool {
        true
    }
    fn forward_logits(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Vec<f32>>, BackendError> {
        self.last_sampled.clear();
        let prefixes = self.run(batch)?;
        let mut out = Vec::new();
        for (s, prefix) in batch.iter().zip(prefixes) {
            for i in 0..s.tokens.len() {
                out.push(self.logits(&prefix[..s.start_pos + i + 1]));
            }
        }
        Ok(out)
    }
}

impl MockBackend {
    /// `t`, or for a `PENDING_TOKEN` the token the last step sampled in
    /// its row (a non-finite row reads as 0, as on the GPU).
    fn resolve_token(&self, seq_id: u64, t: u32) -> Result<u32, BackendError> {
        let Some(r) = pending_row(t) else {
            return Ok(t);
        };
        let &v = self.last_sampled.get(r).ok_or_else(|| {
            BackendError::InvalidBatch(format!(
                "seq {seq_id}: pending token of row {r}, the last step sampled {}",
                self.last_sampled.len()
            ))
        })?;
        self.pending_tokens_read
            .set(self.pending_tokens_read.get() + 1);
        Ok(if v == NONFINITE_LOGITS { 0 } else { v })
    }

    /// Runs `batch` (no pending tokens) and samples its rows.
    fn sample(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<u32>, BackendError> {
        let prefixes = self.run(batch)?;
        let mut out = Vec::new();
        for (s, prefix) in batch.iter().zip(prefixes) {
            let Some(spec) = &s.sample else { continue };
            if spec.num_rows() > s.tokens.len() {
                return Err(BackendError::InvalidBatch(format!(
                    "seq {}: {} drafts in a chunk of {}",
                    s.seq_id,
                    spec.num_drafts,
                    s.tokens.len()
                )));
            }
            // Row j samples after the token at position end - rows + j.
            let first = prefix.len() + 1 - spec.num_rows();
            for j in 0..spec.num_rows() {
                let mut logits = self.logits(&prefix[..first + j]);
                if self.nan_seqs.contains(&s.seq_id) {
                    logits[0] = f32::NAN;
                }
                out.push(sampler::sample_checked(&logits, &spec.row(j)));
            }
        }
        Ok(out)
    }
}

/// A model config for the mock: only vocab, context and EOS matter.
pub fn mock_model_config(
    vocab_size: usize,
    max_position_embeddings: usize,
    eos: &[u32],
) -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size,
        hidden_size: 8,
        intermediate_size: 16,
        num_hidden_layers: 1,
        num_attention_heads: 1,
        num_key_value_heads: 1,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings,
        tie_word_embeddings: true,
        attention_bias: false,
        qk_norm: false,
        bos_token_id: None,
        eos_token_ids: eos.to_vec(),
        torch_dtype: DType::F32,
        initializer_range: 0.02,
    }
}
