//! The engine loop: requests in, timed tokens and per-request records out.
//!
//! Each [`Engine::step`] asks the scheduler for a batch, runs it on the
//! backend, stamps every token it produced with one monotonic time taken when
//! the forward pass returned, and finishes sequences (length, EOS, stop
//! token), freeing their KV blocks. Pipelined (`async_scheduling`, the
//! default where the backend offers it), a step is launched before the
//! previous one's tokens are collected (see [`Engine::step`]). With
//! speculative decoding on, decoding sequences get n-gram drafts before
//! scheduling and a step may emit several tokens per sequence
//! (`spec_decode`).

use std::time::Instant;

use workloads::record::hash_tokens;
use workloads::{FinishReason, RecordStatus, Request, RequestRecord, StepLogEntry};

use crate::backend::{
    pending_row, Backend, BackendError, SampleSpec, SeqStep, NONFINITE_LOGITS, PENDING_TOKEN,
};
use crate::block_manager::BlockManager;
use crate::config::ModelConfig;
use crate::engine_config::EngineConfig;
use crate::scheduler::{ScheduledSeq, Scheduler, SchedulerConfig, SchedulerOutput};
use crate::sequence::Sequence;
use crate::spec_decode::{self, NgramConfig};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine config: {0}")]
    Config(String),
    /// The memory budget holds no KV block: the pool does not fit.
    #[error("out of memory: {0}")]
    KvCacheTooSmall(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// One generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    pub request_id: u64,
    pub token: u32,
    /// Seconds since the engine's clock origin.
    pub time_s: f64,
}

#[derive(Debug, Clone, Default)]
pub struct StepOutcome {
    pub tokens: Vec<TokenEvent>,
    /// Requests that finished in this step, and requests rejected since the
    /// previous step.
    pub finished: Vec<RequestRecord>,
    /// `None` when nothing ran (no forward pass).
    pub log: Option<StepLogEntry>,
}

pub struct Engine {
    backend: Box<dyn Backend>,
    scheduler: Scheduler,
    eos_token_ids: Vec<u32>,
    vocab_size: usize,
    clock_origin: Instant,
    next_seq_id: u64,
    next_step: u64,
    rejected: Vec<RequestRecord>,
    /// Speculative decoding's proposer, when it is on.
    ngram: Option<NgramConfig>,
    /// Pipelined stepping (`async_scheduling` on a backend that offers
    /// it, without speculative decoding): see [`Engine::step`].
    pipelined: bool,
    /// The launched step whose sampled tokens the host has not seen yet.
    in_flight: Option<InFlight>,
}

/// What a step ran, for its log entry.
#[derive(Debug, Clone, Copy)]
struct StepSizes {
    seqs: usize,
    tokens: usize,
    decode: usize,
    drafts: usize,
    accepted: usize,
}

impl StepSizes {
    fn of(batch: &SchedulerOutput, accepted: usize) -> StepSizes {
        StepSizes {
            seqs: batch.seqs.len(),
            tokens: batch.num_tokens(),
            decode: batch.seqs.iter().filter(|e| e.is_decode).count(),
            drafts: batch.seqs.iter().map(|e| e.num_draft).sum(),
            accepted,
        }
    }
}

/// A launched step not yet collected: the sequence of each sampled row.
/// Each such sequence ends in a `PENDING_TOKEN | row` placeholder until the
/// row is collected.
struct InFlight {
    rows: Vec<u64>,
}

impl Engine {
    /// Sizes the KV cache (`num_kv_blocks`, or the backend's memory budget
    /// divided by the bytes of one block) and allocates it on the backend.
    pub fn new(
        mut backend: Box<dyn Backend>,
        model: &ModelConfig,
        cfg: &EngineConfig,
    ) -> Result<Engine, EngineError> {
        cfg.validate().map_err(EngineError::Config)?;
        let ngram = NgramConfig::from_engine_config(cfg);
        if ngram.is_some() && !backend.supports_draft_verification() {
            return Err(EngineError::Config(format!(
                "speculative_method: the {} backend cannot verify draft tokens; set \
                 speculative_method = \"off\"",
                backend.info().kind
            )));
        }
        let max_model_len = match cfg.max_model_len {
            0 => model.max_position_embeddings,
            n if n > model.max_position_embeddings => {
                return Err(EngineError::Config(format!(
                    "max_model_len: {n} exceeds the model's max_position_embeddings ({})",
                    model.max_position_embeddings
                )))
            }
            n => n,
        };
        let num_blocks = if cfg.num_kv_blocks > 0 {
            cfg.num_kv_blocks
        } else {
            let budget = backend.kv_memory_budget(cfg)?;
            let per_block = backend.kv_block_bytes(cfg.block_size).max(1) as u64;
            (budget / per_block) as usize
        };
        if num_blocks > crate::engine_config::MAX_KV_BLOCKS {
            return Err(EngineError::Config(format!(
                "the KV budget makes {num_blocks} blocks, more than {}; lower \
                 cpu_kv_cache_bytes / gpu_memory_utilization or set num_kv_blocks",
                crate::engine_config::MAX_KV_BLOCKS
            )));
        }
        if num_blocks == 0 {
            return Err(EngineError::KvCacheTooSmall(format!(
                "the KV budget holds no block of {} tokens ({} bytes each); raise \
                 cpu_kv_cache_bytes / gpu_memory_utilization or set num_kv_blocks",
                cfg.block_size,
                backend.kv_block_bytes(cfg.block_size)
            )));
        }
        backend.allocate_kv_cache(num_blocks, cfg.block_size)?;
        let backend_pipelines = backend.supports_pipelining();
        let scheduler = Scheduler::new(
            SchedulerConfig {
                max_num_seqs: cfg.effective_max_num_seqs(backend.auto_max_num_seqs()),
                max_num_batched_tokens: cfg.max_num_batched_tokens,
                enable_chunked_prefill: cfg.enable_chunked_prefill,
                max_model_len,
            },
            BlockManager::new(num_blocks, cfg.block_size)
                .with_prefix_caching(cfg.enable_prefix_caching),
        );
        Ok(Engine {
            backend,
            scheduler,
            eos_token_ids: model.eos_token_ids.clone(),
            vocab_size: model.vocab_size,
            clock_origin: Instant::now(),
            next_seq_id: 0,
            next_step: 0,
            rejected: Vec::new(),
            pipelined: cfg.async_scheduling && backend_pipelines && ngram.is_none(),
            ngram,
            in_flight: None,
        })
    }

    /// Times are reported in seconds since `origin` (the bench's start of
    /// the measured phase).
    pub fn set_clock_origin(&mut self, origin: Instant) {
        self.clock_origin = origin;
    }

    pub fn now_s(&self) -> f64 {
        self.clock_origin.elapsed().as_secs_f64()
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn num_kv_blocks(&self) -> usize {
        self.scheduler.block_manager().num_blocks()
    }

    pub fn kv_blocks_in_use(&self) -> usize {
        self.scheduler.block_manager().blocks_in_use()
    }

    pub fn block_size(&self) -> usize {
        self.scheduler.block_manager().block_size()
    }

    pub fn max_model_len(&self) -> usize {
        self.scheduler.config().max_model_len
    }

    /// Most sequences in one step (`max_num_seqs`, derived when the config
    /// left it at 0).
    pub fn max_num_seqs(&self) -> usize {
        self.scheduler.config().max_num_seqs
    }

    /// Queues a request arriving now. One that can never run here is
    /// rejected: its record (with the reason) comes out of the next `step`.
    pub fn add_request(&mut self, request: Request) {
        let now = self.now_s();
        self.add_request_arrived_at(request, now);
    }

    /// Queues a request that arrived at `arrival_s` on the engine's clock
    /// (open-loop replay: the request existed before the engine got to it).
    pub fn add_request_arrived_at(&mut self, request: Request, arrival_s: f64) {
        if let Err(reason) = self.admissibility(&request) {
            self.rejected
                .push(rejected_record(&request, arrival_s, reason));
            return;
        }
        let seq = Sequence::new(self.next_seq_id, request, arrival_s);
        self.next_seq_id += 1;
        self.scheduler.add(seq);
    }

    /// Queues a request that arrived at `arrival_s`, or says why it can
    /// never run here (no record is produced for a refused request: the
    /// caller answers it). `min_tokens` holds off EOS and stop tokens until
    /// that many tokens were generated. For servers, which answer bad
    /// requests themselves.
    pub fn try_add_request(
        &mut self,
        request: Request,
        arrival_s: f64,
        min_tokens: u32,
    ) -> Result<(), String> {
        self.admissibility(&request)?;
        let mut seq = Sequence::new(self.next_seq_id, request, arrival_s);
        seq.min_tokens = min_tokens;
        self.next_seq_id += 1;
        self.scheduler.add(seq);
        Ok(())
    }

    /// Ends a queued or running request now (its client went away) and
    /// frees its KV blocks. Returns whether the request was live.
    pub fn abort_request(&mut self, request_id: u64) -> bool {
        let Some(seq_id) = self.scheduler.seq_id_of(request_id) else {
            return false;
        };
        let now = self.now_s();
        self.scheduler.finish(seq_id, now).is_some()
    }

    pub fn num_running(&self) -> usize {
        self.scheduler.num_running()
    }

    pub fn num_waiting(&self) -> usize {
        self.scheduler.num_waiting()
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn admissibility(&self, request: &Request) -> Result<(), String> {
        if let Some((field, message)) = request.sampling.problem() {
            return Err(format!("sampling.{field} {message}"));
        }
        if let Some(&bad) = request
            .prompt_token_ids
            .iter()
            .find(|&&t| t as usize >= self.vocab_size)
        {
            return Err(format!(
                "prompt token id {bad} is outside the vocabulary ({} tokens)",
                self.vocab_size
            ));
        }
        self.scheduler
            .admissibility(request.prompt_token_ids.len(), request.sampling.max_tokens)
    }

    /// Whether any request is queued, running, or has a record not yet
    /// handed out, or a launched step is still to be collected (its rows
    /// may all belong to requests that have ended).
    pub fn has_unfinished(&self) -> bool {
        self.scheduler.has_unfinished() || !self.rejected.is_empty() || self.in_flight.is_some()
    }

    /// Whether steps are pipelined (see [`Engine::step`]).
    pub fn is_pipelined(&self) -> bool {
        self.pipelined
    }

    /// Runs one step. Pipelined (`async_scheduling`), a call schedules and
    /// launches step N, then waits for step N-1 (launched by the previous
    /// call) and hands out its tokens, so the GPU runs N while the host
    /// finishes N-1 and, on the next call, schedules N+1. Step N's decode
    /// tokens are N-1's samples, read on the GPU (`PENDING_TOKEN`). A
    /// sequence that N-1 ends by EOS or a stop token has a row in N that
    /// is dropped; one that N-1 ends by length is not scheduled in N.
    /// Waiting requests are admitted only with every token known (their
    /// prefix-cache lookups hash tokens), so a step that may admit one
    /// waits for N-1 first.
    pub fn step(&mut self) -> Result<StepOutcome, EngineError> {
        if self.pipelined {
            return self.step_pipelined();
        }
        let mut outcome = StepOutcome {
            finished: std::mem::take(&mut self.rejected),
            ..StepOutcome::default()
        };
        let start_s = self.now_s();
        if let Some(ngram) = self.ngram {
            self.propose_drafts(&ngram);
        }
        let batch = self.scheduler.schedule(start_s);
        if batch.is_empty() {
            return Ok(outcome);
        }

        // A verify chunk (the last token, then its drafts) is not a slice of
        // the sequence's tokens: it is assembled here.
        let verify_chunks: Vec<Vec<u32>> = batch
            .seqs
            .iter()
            .map(|e| {
                if e.num_draft == 0 {
                    return Vec::new();
                }
                let seq = self
                    .scheduler
                    .seq(e.seq_id)
                    .expect("scheduled ids are live");
                let mut chunk = seq.tokens[e.start_pos..].to_vec();
                chunk.extend_from_slice(&seq.draft[..e.num_draft]);
                chunk
            })
            .collect();
        let steps: Vec<SeqStep<'_>> = batch
            .seqs
            .iter()
            .zip(&verify_chunks)
            .map(|(e, chunk)| {
                let seq = self
                    .scheduler
                    .seq(e.seq_id)
                    .expect("scheduled ids are live");
                let tokens = if e.num_draft > 0 {
                    &chunk[..]
                } else {
                    &seq.tokens[e.start_pos..e.start_pos + e.num_tokens]
                };
                seq_step(seq, e, tokens)
            })
            .collect();
        let sampled = self.backend.forward(&steps)?;
        let t = self.now_s();
        drop(steps);

        // Each sampling entry's rows: its draft length + 1.
        let to_sample: Vec<(u64, usize)> = batch
            .seqs
            .iter()
            .filter(|e| e.sample)
            .map(|e| (e.seq_id, e.num_draft))
            .collect();
        let rows: usize = to_sample.iter().map(|&(_, d)| d + 1).sum();
        if sampled.len() != rows {
            return Err(BackendError::InvalidBatch(format!(
                "backend returned {} tokens for {} sampling sequences ({rows} rows)",
                sampled.len(),
                to_sample.len()
            ))
            .into());
        }
        self.scheduler.commit(&batch);
        let mut accepted_in_step = 0usize;
        let mut next_row = 0usize;
        for (seq_id, num_draft) in to_sample {
            let seq_rows = &sampled[next_row..next_row + num_draft + 1];
            next_row += num_draft + 1;
            let seq = self
                .scheduler
                .seq_mut(seq_id)
                .expect("scheduled ids are live");
            let draft = std::mem::take(&mut seq.draft);
            let accepted = spec_decode::accepted_prefix(&draft[..num_draft], seq_rows);
            // Emit the sampled tokens of the accepted drafts and the one
            // after them, stopping where plain decoding would have stopped.
            let mut stop = None;
            let mut emitted = 0usize;
            for (i, &token) in seq_rows[..=accepted].iter().enumerate() {
                if token == NONFINITE_LOGITS {
                    stop = Some(None);
                    break;
                }
                if i > 0 {
                    // The token emitted before this one was draft i-1, whose
                    // K/V this step computed.
                    seq.num_computed += 1;
                }
                seq.push_token(token, t);
                emitted += 1;
                outcome.tokens.push(TokenEvent {
                    request_id: seq.request_id,
                    token,
                    time_s: t,
                });
                if let Some(reason) = seq.stop_reason(&self.eos_token_ids) {
                    stop = Some(Some(reason));
                    break;
                }
            }
            let accepted_emitted = emitted.min(accepted);
            if num_draft > 0 {
                seq.spec.add(num_draft, accepted_emitted);
                accepted_in_step += accepted_emitted;
            }
            match stop {
                Some(reason) => {
                    if let Some(done) = self.scheduler.finish(seq_id, t) {
                        outcome.finished.push(stopped_record(&done, reason));
                    }
                }
                None if num_draft > 0 => self.scheduler.release_blocks_past_computed(seq_id),
                None => {}
            }
        }

        let sizes = StepSizes::of(&batch, accepted_in_step);
        outcome.log = Some(self.log_step(start_s, t, &batch, sizes));
        Ok(outcome)
    }

    fn step_pipelined(&mut self) -> Result<StepOutcome, EngineError> {
        let mut outcome = StepOutcome {
            finished: std::mem::take(&mut self.rejected),
            ..StepOutcome::default()
        };
        let start_s = self.now_s();
        let may_admit = self.scheduler.num_waiting() > 0
            && self.scheduler.num_running() < self.scheduler.config().max_num_seqs;
        if may_admit {
            self.collect_in_flight(&mut outcome)?;
        }
        let mut batch = if self.in_flight.is_some() {
            self.scheduler.schedule_before_tokens_known(start_s)
        } else {
            self.scheduler.schedule(start_s)
        };
        if batch.is_empty() {
            // Nothing runs before the running step's tokens are known.
            self.collect_in_flight(&mut outcome)?;
            return Ok(outcome);
        }
        let steps: Vec<SeqStep<'_>> = batch
            .seqs
            .iter()
            .map(|e| {
                let seq = self
                    .scheduler
                    .seq(e.seq_id)
                    .expect("scheduled ids are live");
                seq_step(seq, e, &seq.tokens[e.start_pos..e.start_pos + e.num_tokens])
            })
            .collect();
        self.backend.launch(&steps)?;
        drop(steps);
        let rows: Vec<u64> = batch
            .seqs
            .iter()
            .filter(|e| e.sample)
            .map(|e| e.seq_id)
            .collect();
        // The previous step's tokens, while this one runs.
        self.collect_in_flight(&mut outcome)?;
        let sizes = StepSizes::of(&batch, 0);
        // Sequences that step ended (EOS, a stop token) ran a row in this
        // one that is dropped: nothing of it is committed.
        batch
            .seqs
            .retain(|e| self.scheduler.seq(e.seq_id).is_some());
        self.scheduler.commit(&batch);
        for (row, &id) in rows.iter().enumerate() {
            if let Some(seq) = self.scheduler.seq_mut(id) {
                seq.tokens.push(PENDING_TOKEN | row as u32);
            }
        }
        self.in_flight = Some(InFlight { rows });
        let end_s = self.now_s();
        outcome.log = Some(self.log_step(start_s, end_s, &batch, sizes));
        Ok(outcome)
    }

    /// The next step's log entry: it ran `batch` (of `sizes`, counted
    /// before any dropped row) from `start_s` to `end_s`.
    fn log_step(
        &mut self,
        start_s: f64,
        end_s: f64,
        batch: &SchedulerOutput,
        sizes: StepSizes,
    ) -> StepLogEntry {
        let blocks = self.scheduler.block_manager();
        let entry = StepLogEntry {
            step: self.next_step,
            start_s,
            duration_s: end_s - start_s,
            batch_size: sizes.seqs as u32,
            prefill_tokens: (sizes.tokens - sizes.decode - sizes.drafts) as u32,
            decode_tokens: sizes.decode as u32,
            num_waiting: self.scheduler.num_waiting() as u32,
            kv_blocks_used: blocks.blocks_in_use() as u32,
            kv_blocks_total: blocks.num_blocks() as u32,
            preempted: batch.preempted.len() as u32,
            prefix_cache_queries: batch.prefix_cache_queries,
            prefix_cache_hits: batch.prefix_cache_hits,
            spec_draft_tokens: sizes.drafts as u32,
            spec_accepted_tokens: sizes.accepted as u32,
        };
        self.next_step += 1;
        entry
    }

    /// Waits for the launched step (if any), puts its sampled tokens in
    /// place of their placeholders, and finishes the sequences they stop.
    fn collect_in_flight(&mut self, outcome: &mut StepOutcome) -> Result<(), EngineError> {
        let Some(flight) = self.in_flight.take() else {
            return Ok(());
        };
        let sampled = self.backend.collect()?;
        let t = self.now_s();
        if sampled.len() != flight.rows.len() {
            return Err(BackendError::InvalidBatch(format!(
                "backend returned {} tokens for {} sampling sequences",
                sampled.len(),
                flight.rows.len()
            ))
            .into());
        }
        for (row, (&seq_id, &token)) in flight.rows.iter().zip(&sampled).enumerate() {
            // Gone: aborted while its row ran.
            let Some(seq) = self.scheduler.seq_mut(seq_id) else {
                continue;
            };
            if seq.tokens.last().copied().and_then(pending_row) != Some(row) {
                return Err(BackendError::InvalidBatch(format!(
                    "sequence {seq_id}: its pending token is not row {row}'s"
                ))
                .into());
            }
            seq.tokens.pop();
            let stop = if token == NONFINITE_LOGITS {
                Some(None)
            } else {
                seq.push_token(token, t);
                outcome.tokens.push(TokenEvent {
                    request_id: seq.request_id,
                    token,
                    time_s: t,
                });
                seq.stop_reason(&self.eos_token_ids).map(Some)
            };
            if let Some(reason) = stop {
                if let Some(done) = self.scheduler.finish(seq_id, t) {
                    outcome.finished.push(stopped_record(&done, reason));
                }
            }
        }
        Ok(())
    }

    /// Gives every decoding sequence its n-gram draft for this step: at
    /// most k tokens, never past `max_tokens` (the bonus token is the
    /// `max_tokens`-th at most), and within the step's token budget after
    /// one token per decoding sequence.
    fn propose_drafts(&mut self, ngram: &NgramConfig) {
        let budget = self.scheduler.config().max_num_batched_tokens;
        let running = self.scheduler.running().to_vec();
        let mut decoding = Vec::new();
        let mut lens = Vec::new();
        for id in running {
            let seq = self.scheduler.seq_mut(id).expect("running ids are live");
            seq.draft.clear();
            if !seq.is_decoding() {
                continue;
            }
            let room = (seq.sampling.max_tokens as usize).saturating_sub(seq.output_len() + 1);
            seq.draft = ngram.propose(&seq.tokens, room);
            lens.push(seq.draft.len());
            decoding.push(id);
        }
        spec_decode::fit_drafts(&mut lens, decoding.len(), budget);
        for (id, len) in decoding.into_iter().zip(lens) {
            if let Some(seq) = self.scheduler.seq_mut(id) {
                seq.draft.truncate(len);
            }
        }
    }
}

/// What the backend runs for `seq`'s entry `e` of a step: `tokens` (its
/// slice of the sequence, or a verify chunk), sampled as the sequence asks.
fn seq_step<'a>(seq: &'a Sequence, e: &ScheduledSeq, tokens: &'a [u32]) -> SeqStep<'a> {
    SeqStep {
        seq_id: e.seq_id,
        tokens,
        start_pos: e.start_pos,
        block_table: &seq.block_table,
        sample: e.sample.then(|| SampleSpec {
            temperature: seq.sampling.temperature,
            top_k: seq.sampling.top_k,
            top_p: seq.sampling.top_p,
            seed: seq.sampling.seed,
            index: seq.output_len() as u32,
            num_drafts: e.num_draft as u32,
        }),
    }
}

/// The record of a sequence that stopped: for `reason`, or (`None`) on a
/// row of non-finite logits.
fn stopped_record(seq: &Sequence, reason: Option<FinishReason>) -> RequestRecord {
    match reason {
        Some(reason) => finished_record(seq, reason),
        None => {
            let mut record = finished_record(seq, FinishReason::Error);
            record.status = RecordStatus::NonfiniteLogits;
            record
        }
    }
}

fn finished_record(seq: &Sequence, reason: FinishReason) -> RequestRecord {
    RequestRecord {
        id: seq.request_id,
        status: RecordStatus::Ok,
        arrival_s: seq.arrival_s,
        scheduled_s: seq.scheduled_s,
        first_token_s: seq.first_token_s(),
        token_times_s: seq.token_times_s.clone(),
        finish_s: seq.finish_s,
        finish_reason: reason,
        prompt_len: seq.prompt_len as u32,
        output_len: seq.output_len() as u32,
        preemptions: seq.preemptions,
        num_cached_tokens: seq.num_cached_tokens,
        output_hash: hash_tokens(seq.output()),
        output_token_ids: seq.output().to_vec(),
        client: None,
        spec_decode: seq.spec.to_record(),
    }
}

fn rejected_record(request: &Request, now: f64, reason: String) -> RequestRecord {
    RequestRecord {
        id: request.id,
        status: RecordStatus::Rejected { reason },
        arrival_s: now,
        scheduled_s: None,
        first_token_s: None,
        token_times_s: Vec::new(),
        finish_s: None,
        finish_reason: FinishReason::Rejected,
        prompt_len: request.prompt_token_ids.len() as u32,
        output_len: 0,
        preemptions: 0,
        num_cached_tokens: None,
        output_hash: hash_tokens(&[]),
        output_token_ids: Vec::new(),
        client: None,
        spec_decode: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{mock_model_config, MockBackend};
    use workloads::SamplingParams;

    fn engine(cfg: EngineConfig, eos: &[u32]) -> Engine {
        let model = mock_model_config(32, 64, eos);
        Engine::new(Box::new(MockBackend::new(32)), &model, &cfg).unwrap()
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

    fn run_all(e: &mut Engine) -> Vec<RequestRecord> {
        let mut records = Vec::new();
        while e.has_unfinished() {
            records.extend(e.step().unwrap().finished);
        }
        records
    }

    #[test]
    fn kv_blocks_derive_from_budget_unless_set() {
        let cfg = EngineConfig {
            cpu_kv_cache_bytes: 64 * 16 * 10 + 5,
            ..EngineConfig::default()
        };
        assert_eq!(engine(cfg.clone(), &[]).num_kv_blocks(), 10);
        let cfg = EngineConfig {
            num_kv_blocks: 3,
            ..cfg
        };
        assert_eq!(engine(cfg, &[]).num_kv_blocks(), 3);
        let cfg = EngineConfig {
            cpu_kv_cache_bytes: 10,
            ..EngineConfig::default()
        };
        let model = mock_model_config(32, 64, &[]);
        let err = Engine::new(Box::new(MockBackend::new(32)), &model, &cfg).err();
        assert!(err.unwrap().to_string().contains("no block"));
    }

    #[test]
    fn too_long_and_out_of_vocab_are_rejected_others_run() {
        let mut e = engine(EngineConfig::default(), &[]);
        e.add_request(request(1, vec![1; 60], SamplingParams::greedy(10)));
        e.add_request(request(2, vec![1, 99], SamplingParams::greedy(2)));
        e.add_request(request(3, vec![1, 2, 3], SamplingParams::greedy(5)));
        let mut records = run_all(&mut e);
        records.sort_by_key(|r| r.id);
        let reason = |r: &RequestRecord| match &r.status {
            RecordStatus::Rejected { reason } => reason.clone(),
            _ => String::new(),
        };
        assert!(reason(&records[0]).contains("max_model_len"), "{records:?}");
        assert!(reason(&records[1]).contains("vocabulary"));
        assert_eq!(records[2].status, RecordStatus::Ok);
        assert_eq!(records[2].output_len, 5);
        assert_eq!(records[2].finish_reason, FinishReason::Length);
        assert_eq!(records[2].token_times_s.len(), 5);
        assert_eq!(
            records[2].output_hash,
            hash_tokens(&records[2].output_token_ids)
        );
        assert_eq!(e.kv_blocks_in_use(), 0);
    }

    #[test]
    fn eos_and_stop_tokens_end_requests_unless_ignored() {
        // Find the greedy continuation first, then make its 3rd token EOS.
        let mut e = engine(EngineConfig::default(), &[]);
        e.add_request(request(1, vec![4, 5], SamplingParams::greedy(6)));
        let out = run_all(&mut e).remove(0).output_token_ids;
        let eos = out[2];
        let first = out.iter().position(|&t| t == eos).unwrap();

        let mut e = engine(EngineConfig::default(), &[eos]);
        e.add_request(request(1, vec![4, 5], SamplingParams::greedy(6)));
        let ignoring = SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(6)
        };
        e.add_request(request(2, vec![4, 5], ignoring));
        let stopping = SamplingParams {
            stop_token_ids: vec![out[1]],
            ignore_eos: true,
            ..SamplingParams::greedy(6)
        };
        e.add_request(request(3, vec![4, 5], stopping));
        let mut records = run_all(&mut e);
        records.sort_by_key(|r| r.id);
        assert_eq!(records[0].finish_reason, FinishReason::Eos);
        assert_eq!(records[0].output_len as usize, first + 1);
        assert_eq!(records[1].finish_reason, FinishReason::Length);
        assert_eq!(records[1].output_token_ids, out);
        assert_eq!(records[2].finish_reason, FinishReason::StopToken);
    }

    #[test]
    fn pipelined_steps_read_pending_tokens_and_match_sequential_ones() {
        let mut e = engine(EngineConfig::default(), &[]);
        e.add_request(request(1, vec![4, 5], SamplingParams::greedy(8)));
        let out = run_all(&mut e).remove(0).output_token_ids;
        let eos = out[2];
        let run = |async_scheduling: bool| {
            let model = mock_model_config(32, 64, &[eos]);
            let backend = MockBackend::new(32);
            let pending = backend.pending_tokens_read.clone();
            let cfg = EngineConfig {
                async_scheduling,
                ..EngineConfig::default()
            };
            let mut e = Engine::new(Box::new(backend), &model, &cfg).unwrap();
            assert_eq!(e.is_pipelined(), async_scheduling);
            // Ends on EOS while the others run on (its next row is dropped),
            // runs to its length, samples with a seed, arrives mid-run.
            e.add_request(request(1, vec![4, 5], SamplingParams::greedy(8)));
            let ignoring = SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(8)
            };
            e.add_request(request(2, vec![4, 5], ignoring));
            let sampled = SamplingParams {
                temperature: 0.8,
                top_k: 5,
                seed: 7,
                ignore_eos: true,
                ..SamplingParams::greedy(6)
            };
            e.add_request(request(3, vec![9, 1, 2], sampled.clone()));
            let mut records = Vec::new();
            for _ in 0..3 {
                records.extend(e.step().unwrap().finished);
            }
            e.add_request(request(4, vec![3, 3, 3, 3], sampled));
            records.extend(run_all(&mut e));
            assert_eq!(e.kv_blocks_in_use(), 0);
            records.sort_by_key(|r| r.id);
            let got: Vec<_> = records
                .iter()
                .map(|r| {
                    assert_eq!(r.token_times_s.len(), r.output_len as usize);
                    (r.id, r.output_token_ids.clone(), r.finish_reason)
                })
                .collect();
            (got, pending.get())
        };
        let (pipelined, pending) = run(true);
        let (sequential, none) = run(false);
        assert_eq!(pipelined, sequential);
        assert_eq!(pipelined[0].2, FinishReason::Eos);
        let first = out.iter().position(|&t| t == eos).unwrap();
        assert_eq!(pipelined[0].1, &out[..=first]);
        assert_eq!(pipelined[1].1, out);
        assert!(
            pending > 10,
            "decode tokens came from the last step's rows: {pending}"
        );
        assert_eq!(none, 0);
    }

    #[test]
    fn an_aborted_request_in_a_launched_step_leaves_nothing_running_once_collected() {
        let mut e = engine(EngineConfig::default(), &[]);
        e.add_request(request(1, vec![1, 2, 3], SamplingParams::greedy(8)));
        e.step().unwrap();
        e.step().unwrap();
        assert!(e.abort_request(1));
        // Its last step is still to be collected.
        assert!(e.has_unfinished());
        let outcome = e.step().unwrap();
        assert!(outcome.tokens.is_empty() && outcome.log.is_none());
        assert!(!e.has_unfinished());
        assert_eq!(e.kv_blocks_in_use(), 0);
        // The engine goes on.
        e.add_request(request(2, vec![1, 2, 3], SamplingParams::greedy(3)));
        assert_eq!(run_all(&mut e)[0].output_len, 3);
    }

    #[test]
    fn nonfinite_logits_stop_that_request_with_its_status_others_run() {
        let model = mock_model_config(32, 64, &[]);
        let mut backend = MockBackend::new(32);
        backend.nan_seqs.insert(1); // the second request added
        let mut e = Engine::new(Box::new(backend), &model, &EngineConfig::default()).unwrap();
        e.add_request(request(10, vec![1, 2, 3], SamplingParams::greedy(4)));
        e.add_request(request(11, vec![1, 2, 3], SamplingParams::greedy(4)));
        let mut records = run_all(&mut e);
        records.sort_by_key(|r| r.id);
        assert_eq!(records[0].status, RecordStatus::Ok);
        assert_eq!(records[0].output_len, 4);
        assert_eq!(records[1].status, RecordStatus::NonfiniteLogits);
        assert_eq!(records[1].finish_reason, FinishReason::Error);
        assert_eq!(records[1].output_len, 0, "no token is made up from NaN");
        assert_eq!(e.kv_blocks_in_use(), 0, "its KV blocks are freed");
    }

    #[test]
    fn out_of_range_sampling_parameters_are_rejected_naming_the_field() {
        let mut e = engine(EngineConfig::default(), &[]);
        let bad = [
            (f32::NAN, 1.0, "temperature"),
            (-1.0, 1.0, "temperature"),
            (f32::INFINITY, 1.0, "temperature"),
            (0.5, 5.0, "top_p"),
            (0.5, f32::NAN, "top_p"),
        ];
        for (i, (temperature, top_p, _)) in bad.iter().enumerate() {
            let sampling = SamplingParams {
                temperature: *temperature,
                top_p: *top_p,
                ..SamplingParams::greedy(3)
            };
            e.add_request(request(i as u64, vec![1, 2], sampling));
        }
        let mut records = run_all(&mut e);
        records.sort_by_key(|r| r.id);
        for (record, (_, _, field)) in records.iter().zip(bad) {
            match &record.status {
                RecordStatus::Rejected { reason } => {
                    assert!(reason.contains(&format!("sampling.{field}")), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn abort_frees_blocks_and_refusals_name_the_reason() {
        let mut e = engine(EngineConfig::default(), &[]);
        let err = e
            .try_add_request(request(1, vec![1, 99], SamplingParams::greedy(2)), 0.0, 0)
            .unwrap_err();
        assert!(err.contains("vocabulary"), "{err}");
        e.try_add_request(
            request(2, vec![1, 2, 3], SamplingParams::greedy(20)),
            0.0,
            0,
        )
        .unwrap();
        e.try_add_request(request(3, vec![1, 2, 3], SamplingParams::greedy(3)), 0.0, 0)
            .unwrap();
        e.step().unwrap();
        assert!(e.kv_blocks_in_use() > 0);
        assert_eq!(e.num_running(), 2);
        assert!(e.abort_request(2));
        assert!(!e.abort_request(2), "already gone");
        let records = run_all(&mut e);
        assert_eq!(records.len(), 1, "an aborted request leaves no record");
        assert_eq!(records[0].id, 3);
        assert_eq!(e.kv_blocks_in_use(), 0);
    }

    /// A backend that does not verify drafts (the trait's default).
    struct NoDrafts(MockBackend);

    impl Backend for NoDrafts {
        fn info(&self) -> crate::backend::BackendInfo {
            self.0.info()
        }
        fn kv_block_bytes(&self, block_size: usize) -> usize {
            self.0.kv_block_bytes(block_size)
        }
        fn kv_memory_budget(&self, cfg: &EngineConfig) -> Result<u64, BackendError> {
            self.0.kv_memory_budget(cfg)
        }
        fn allocate_kv_cache(&mut self, blocks: usize, size: usize) -> Result<(), BackendError> {
            self.0.allocate_kv_cache(blocks, size)
        }
        fn forward(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<u32>, BackendError> {
            self.0.forward(batch)
        }
        fn forward_logits(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Vec<f32>>, BackendError> {
            self.0.forward_logits(batch)
        }
    }

    fn ngram(k: usize) -> EngineConfig {
        EngineConfig {
            speculative_method: crate::engine_config::SpeculativeMethod::Ngram,
            num_speculative_tokens: k,
            prompt_lookup_min: 1,
            prompt_lookup_max: 2,
            ..EngineConfig::default()
        }
    }

    #[test]
    fn speculation_on_a_backend_that_cannot_verify_is_refused_by_name() {
        let model = mock_model_config(32, 64, &[]);
        let backend = Box::new(NoDrafts(MockBackend::new(32)));
        let err = Engine::new(backend, &model, &ngram(3)).err().unwrap();
        assert!(err.to_string().contains("speculative_method"), "{err}");
        let backend = Box::new(NoDrafts(MockBackend::new(32)));
        assert!(Engine::new(backend, &model, &EngineConfig::default()).is_ok());
    }

    #[test]
    fn spec_steps_log_drafts_and_outputs_match_plain_decoding() {
        // A prompt that repeats invites drafts from the first decode on.
        let prompt: Vec<u32> = [3, 9, 4, 3, 9, 4, 3, 9].to_vec();
        let sampling = SamplingParams::greedy(20);
        let mut plain = engine(EngineConfig::default(), &[]);
        plain.add_request(request(1, prompt.clone(), sampling.clone()));
        let want = run_all(&mut plain).remove(0).output_token_ids;

        let model = mock_model_config(32, 64, &[]);
        let mut e = Engine::new(Box::new(MockBackend::new(32)), &model, &ngram(3)).unwrap();
        e.add_request(request(1, prompt, sampling));
        let mut drafted = 0;
        let mut records = Vec::new();
        while e.has_unfinished() {
            let out = e.step().unwrap();
            if let Some(log) = out.log {
                drafted += log.spec_draft_tokens;
                assert!(log.spec_accepted_tokens <= log.spec_draft_tokens);
                assert!(log.decode_tokens + log.prefill_tokens + log.spec_draft_tokens > 0);
            }
            records.extend(out.finished);
        }
        assert!(drafted > 0);
        assert_eq!(records[0].output_token_ids, want);
        let stats = records[0].spec_decode.as_ref().unwrap();
        assert_eq!(stats.num_draft_tokens, drafted);
        assert_eq!(e.kv_blocks_in_use(), 0);
    }

    #[test]
    fn aborting_a_sharer_keeps_the_shared_blocks_right() {
        let cfg = EngineConfig {
            num_kv_blocks: 16,
            ..EngineConfig::default()
        };
        let prompt: Vec<u32> = (0..40).map(|t| t % 32).collect();
        let solo = {
            let mut e = engine(cfg.clone(), &[]);
            e.add_request(request(9, prompt.clone(), SamplingParams::greedy(6)));
            run_all(&mut e).remove(0).output_token_ids
        };
        let mut e = engine(cfg, &[]);
        e.add_request(request(1, prompt.clone(), SamplingParams::greedy(20)));
        e.step().unwrap();
        e.add_request(request(2, prompt.clone(), SamplingParams::greedy(6)));
        let log = e.step().unwrap().log.unwrap();
        assert_eq!((log.prefix_cache_queries, log.prefix_cache_hits), (40, 32));
        // 3 blocks for request 1, 2 shared + 1 own for request 2.
        assert_eq!(e.kv_blocks_in_use(), 4);
        assert!(e.abort_request(1));
        assert_eq!(e.kv_blocks_in_use(), 3, "the shared blocks stay with 2");
        let records = run_all(&mut e);
        assert_eq!(records[0].output_token_ids, solo);
        assert_eq!(records[0].num_cached_tokens, Some(32));
        assert_eq!(e.kv_blocks_in_use(), 0);
        // Freed, still cached: a third request finds the prefix again.
        e.add_request(request(3, prompt, SamplingParams::greedy(6)));
        let records = run_all(&mut e);
        assert_eq!(records[0].num_cached_tokens, Some(32));
        assert_eq!(records[0].output_token_ids, solo);
    }

    #[test]
    fn step_log_counts_prefill_and_decode_tokens() {
        let mut e = engine(EngineConfig::default(), &[]);
        e.add_request(request(1, vec![1, 2, 3], SamplingParams::greedy(3)));
        let first = e.step().unwrap().log.unwrap();
        assert_eq!((first.prefill_tokens, first.decode_tokens), (3, 0));
        let second = e.step().unwrap().log.unwrap();
        assert_eq!((second.prefill_tokens, second.decode_tokens), (0, 1));
        assert_eq!(second.step, 1);
        assert!(second.start_s >= first.start_s + first.duration_s);
    }
}
