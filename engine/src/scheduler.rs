//! Continuous batching: which sequences run in the next step and how many of
//! their tokens.
//!
//! Rules, in order:
//! - Running sequences that decode go first, then running sequences in the
//!   middle of a chunked prefill, then waiting sequences in FCFS order.
//! - A step holds at most `max_num_seqs` sequences and
//!   `max_num_batched_tokens` tokens. With chunked prefill a prompt is split
//!   across steps to fit the budget; without it a prompt runs whole or waits.
//! - When a running sequence needs a KV block and none is free, the most
//!   recently admitted running sequence is preempted by recompute: its blocks
//!   are freed and it goes back to the front of the waiting queue to rerun its
//!   prompt and output so far. The oldest running sequence is therefore never
//!   preempted by a younger one, so it always progresses (no livelock), and
//!   `admissibility` rejects any request that could not run even alone (no
//!   deadlock).
//! - No new sequence is admitted in a step that preempted one.
//! - With prefix caching, a sequence being admitted (first time or after a
//!   preemption) starts with the longest chain of cached full blocks that
//!   matches its tokens, never all of them (the last token must run to give
//!   logits), and its prefill starts at the first uncached token. Full blocks
//!   are registered in the cache when the step computing them is final, so
//!   a request admitted in that same step can already reuse them.
//! - Speculative decoding: a decoding sequence's draft tokens (see
//!   `spec_decode`) ride along with its token as far as the token budget
//!   and the free KV blocks go; a draft never preempts anything.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::block_manager::BlockManager;
use crate::sequence::Sequence;

#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub enable_chunked_prefill: bool,
    /// Longest prompt + output a sequence may reach.
    pub max_model_len: usize,
}

impl SchedulerConfig {
    /// How many of a sequence's `uncomputed` tokens run within `budget`: all
    /// of them, a chunk (chunked prefill), or none this step (`None`).
    fn chunk_len(&self, uncomputed: usize, budget: usize) -> Option<usize> {
        if uncomputed <= budget {
            Some(uncomputed)
        } else if self.enable_chunked_prefill {
            Some(budget)
        } else {
            None
        }
    }
}

/// One sequence's share of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub seq_id: u64,
    /// Position of the first token to run (tokens before it are cached).
    pub start_pos: usize,
    pub num_tokens: usize,
    /// The chunk reaches the end of the sequence: sample the next token.
    pub sample: bool,
    /// A single-token decode (rather than a prompt chunk or a recompute).
    pub is_decode: bool,
    /// Draft tokens appended to a decode for verification (the sequence's
    /// `draft[..num_draft]`); included in `num_tokens`.
    pub num_draft: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerOutput {
    pub seqs: Vec<ScheduledSeq>,
    /// Sequences preempted (by recompute) while building this step.
    pub preempted: Vec<u64>,
    /// Prefix caching: tokens of the sequences admitted in this step (the
    /// lookups' queries, vLLM's definition) and how many of them were
    /// found cached. Both 0 with caching off.
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
}

impl SchedulerOutput {
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.num_tokens).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    blocks: BlockManager,
    /// Live sequences by id (Fx: ids are the engine's own counter, and a
    /// step looks each running sequence up several times).
    seqs: FxHashMap<u64, Sequence>,
    waiting: VecDeque<u64>,
    /// In admission order: the last is the most recently admitted.
    running: Vec<u64>,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, blocks: BlockManager) -> Self {
        Scheduler {
            cfg,
            blocks,
            seqs: FxHashMap::default(),
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn block_manager(&self) -> &BlockManager {
        &self.blocks
    }

    /// Why a request with this prompt and `max_tokens` can never run here,
    /// or `Ok` when it can.
    pub fn admissibility(&self, prompt_len: usize, max_tokens: u32) -> Result<(), String> {
        let max_tokens = max_tokens as usize;
        if prompt_len == 0 {
            return Err("empty prompt".into());
        }
        if max_tokens == 0 {
            return Err("max_tokens must be at least 1".into());
        }
        let total = prompt_len + max_tokens;
        if total > self.cfg.max_model_len {
            return Err(format!(
                "prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) = {total} exceeds \
                 max_model_len ({})",
                self.cfg.max_model_len
            ));
        }
        // The last sampled token is never run, so its K/V is never stored.
        let longest_run = total - 1;
        let blocks = self.blocks.blocks_for(longest_run);
        if blocks > self.blocks.num_blocks() {
            return Err(format!(
                "needs {blocks} KV blocks for {longest_run} tokens, the cache has only {}",
                self.blocks.num_blocks()
            ));
        }
        if !self.cfg.enable_chunked_prefill && longest_run > self.cfg.max_num_batched_tokens {
            return Err(format!(
                "{longest_run} tokens may have to run in one step (chunked prefill is off) but \
                 max_num_batched_tokens is {}",
                self.cfg.max_num_batched_tokens
            ));
        }
        Ok(())
    }

    /// Queues an admissible sequence (check `admissibility` first).
    pub fn add(&mut self, seq: Sequence) {
        debug_assert!(self
            .admissibility(seq.prompt_len, seq.sampling.max_tokens)
            .is_ok());
        let id = seq.seq_id;
        self.seqs.insert(id, seq);
        self.waiting.push_back(id);
    }

    pub fn seq(&self, seq_id: u64) -> Option<&Sequence> {
        self.seqs.get(&seq_id)
    }

    pub fn seq_mut(&mut self, seq_id: u64) -> Option<&mut Sequence> {
        self.seqs.get_mut(&seq_id)
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn has_unfinished(&self) -> bool {
        !self.seqs.is_empty()
    }

    /// The engine-internal id of the live sequence serving `request_id`.
    pub fn seq_id_of(&self, request_id: u64) -> Option<u64> {
        self.seqs
            .values()
            .find(|s| s.request_id == request_id)
            .map(|s| s.seq_id)
    }

    /// Builds the next step. `now` stamps first scheduling times.
    pub fn schedule(&mut self, now: f64) -> SchedulerOutput {
        self.schedule_inner(now, true)
    }

    /// Builds the next step while the running step's sampled tokens are
    /// still pending (pipelined stepping, `Engine::step`): the running
    /// sequences only. Nothing is admitted and no block is registered in
    /// the prefix cache here, because both hash tokens and the pending
    /// ones are not known yet; `commit` registers the blocks once they are.
    pub fn schedule_before_tokens_known(&mut self, now: f64) -> SchedulerOutput {
        self.schedule_inner(now, false)
    }

    fn schedule_inner(&mut self, now: f64, tokens_known: bool) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.cfg.max_num_batched_tokens;

        let (decoding, prefilling): (Vec<u64>, Vec<u64>) = self
            .running
            .iter()
            .partition(|id| self.seqs[id].is_decoding());
        for id in decoding.into_iter().chain(prefilling) {
            if budget == 0 {
                break;
            }
            // Its pending token ends it (by length): nothing more to run.
            if self.seqs[&id].awaits_final_token() {
                continue;
            }
            // Preempted earlier in this step (preemption takes sequences
            // off `running`; a list of the few this step preempted is
            // cheaper to search than `running` itself, once per sequence).
            if out.preempted.contains(&id) {
                continue;
            }
            let Some(n) = self.cfg.chunk_len(self.seqs[&id].num_uncomputed(), budget) else {
                continue;
            };
            let num_draft = self.draft_that_fits(id, n, budget);
            if self.reserve_or_preempt(id, n + num_draft, &mut out, &mut budget) {
                budget -= n + num_draft;
                out.seqs.push(self.entry(id, n, num_draft));
            }
        }

        if tokens_known && out.preempted.is_empty() {
            // No chunk leaves this step any more: the full blocks its chunks
            // complete can serve sequences admitted below (see `register`).
            for i in 0..out.seqs.len() {
                let e = &out.seqs[i];
                // Draft tokens are not the sequence's yet: never registered.
                self.register(e.seq_id, e.start_pos + e.num_tokens - e.num_draft);
            }
            self.admit_waiting(now, &mut out, &mut budget);
        }
        out
    }

    /// How many of `id`'s draft tokens can follow its `n` real tokens: what
    /// the budget leaves, and only as far as free blocks reach with one to
    /// spare per running sequence (a draft never preempts). Shortens the
    /// draft to that.
    fn draft_that_fits(&mut self, id: u64, n: usize, budget: usize) -> usize {
        let seq = self.seqs.get_mut(&id).expect("running ids are live");
        if seq.draft.is_empty() || !seq.is_decoding() {
            seq.draft.clear();
            return 0;
        }
        // Leave a block for every running sequence's next token, so that
        // drafts do not make a later decode preempt someone.
        let reserve = self.running.len();
        let mut len = seq.draft.len().min(budget.saturating_sub(n));
        while len > 0
            && self
                .blocks
                .extra_blocks(&seq.block_table, seq.num_computed + n + len)
                + reserve
                > self.blocks.num_free()
        {
            len -= 1;
        }
        seq.draft.truncate(len);
        len
    }

    /// Registers the full blocks of `id` up to `num_tokens` in the prefix
    /// cache (no-op without caching). Called once the step that computes
    /// them is final, before it runs: a sequence admitted later in the same
    /// step may then start with these blocks, because a backend writes the
    /// K/V of every token of a step before any token of the step attends
    /// (per layer; the `Backend` contract), and the writer comes first in
    /// the batch. Preemption only happens before registration in a step,
    /// and a preempted sequence's chunk is dropped before it registers.
    fn register(&mut self, id: u64, num_tokens: usize) {
        if !self.blocks.prefix_caching() {
            return;
        }
        let seq = self.seqs.get_mut(&id).expect("scheduled ids are live");
        let bs = self.blocks.block_size();
        let full = num_tokens / bs;
        let first = seq.num_registered_blocks;
        seq.block_hashes(bs, full);
        for i in first..full {
            self.blocks
                .cache_block(seq.block_table[i], seq.block_hashes[i]);
        }
        seq.num_registered_blocks = full.max(first);
    }

    /// Grows `id`'s block table for `n` more tokens, preempting the most
    /// recently admitted sequences while blocks are short. Returns false when
    /// `id` itself had to be preempted.
    fn reserve_or_preempt(
        &mut self,
        id: u64,
        n: usize,
        out: &mut SchedulerOutput,
        budget: &mut usize,
    ) -> bool {
        loop {
            let seq = self.seqs.get_mut(&id).expect("running ids are live");
            let need = seq.num_computed + n;
            if self.blocks.allocate(&mut seq.block_table, need).is_ok() {
                return true;
            }
            let victim = *self.running.last().expect("id is running");
            self.preempt(victim);
            out.preempted.push(victim);
            if victim == id {
                return false;
            }
            if let Some(pos) = out.seqs.iter().position(|s| s.seq_id == victim) {
                *budget += out.seqs.remove(pos).num_tokens;
            }
        }
    }

    fn preempt(&mut self, id: u64) {
        self.running.retain(|&r| r != id);
        let seq = self.seqs.get_mut(&id).expect("running ids are live");
        self.blocks.free(&mut seq.block_table);
        seq.reset_for_recompute();
        self.waiting.push_front(id);
    }

    fn admit_waiting(&mut self, now: f64, out: &mut SchedulerOutput, budget: &mut usize) {
        let bs = self.blocks.block_size();
        while let Some(&id) = self.waiting.front() {
            if self.running.len() >= self.cfg.max_num_seqs || *budget == 0 {
                break;
            }
            let seq = self.seqs.get_mut(&id).expect("waiting ids are live");
            debug_assert!(seq.block_table.is_empty() && seq.num_computed == 0);
            // Never the whole sequence: its last token must run for logits.
            let cached = if self.blocks.prefix_caching() {
                let lookup = (seq.len() - 1) / bs;
                self.blocks.cached_prefix(seq.block_hashes(bs, lookup))
            } else {
                Vec::new()
            };
            let cached_tokens = cached.len() * bs;
            let Some(n) = self.cfg.chunk_len(seq.len() - cached_tokens, *budget) else {
                break;
            };
            seq.draft.clear();
            if self
                .blocks
                .allocate_with_prefix(&mut seq.block_table, &cached, cached_tokens + n)
                .is_err()
            {
                break;
            }
            seq.num_computed = cached_tokens;
            seq.num_registered_blocks = cached.len();
            seq.num_cached_tokens.get_or_insert(cached_tokens as u32);
            if self.blocks.prefix_caching() {
                out.prefix_cache_queries += seq.len() as u64;
                out.prefix_cache_hits += cached_tokens as u64;
            }
            seq.scheduled_s.get_or_insert(now);
            self.waiting.pop_front();
            self.running.push(id);
            *budget -= n;
            out.seqs.push(self.entry(id, n, 0));
            self.register(id, cached_tokens + n);
        }
    }

    /// `n` real tokens of `id` followed by `num_draft` draft tokens.
    fn entry(&self, id: u64, n: usize, num_draft: usize) -> ScheduledSeq {
        let seq = &self.seqs[&id];
        ScheduledSeq {
            seq_id: id,
            start_pos: seq.num_computed,
            num_tokens: n + num_draft,
            sample: seq.num_computed + n == seq.len(),
            is_decode: seq.is_decoding(),
            num_draft,
        }
    }

    /// Marks the chunks of `out` as computed (after the backend ran them).
    /// Draft tokens are not: the engine counts the accepted ones in.
    pub fn commit(&mut self, out: &SchedulerOutput) {
        for s in &out.seqs {
            let seq = self
                .seqs
                .get_mut(&s.seq_id)
                .expect("scheduled ids are live");
            debug_assert_eq!(seq.num_computed, s.start_pos);
            seq.num_computed += s.num_tokens - s.num_draft;
            // Steps that preempted register their blocks only now (accepted
            // drafts' blocks are registered by a later step).
            let computed = seq.num_computed;
            self.register(s.seq_id, computed);
        }
    }

    /// Running sequences in admission order (the order decodes are
    /// scheduled in).
    pub fn running(&self) -> &[u64] {
        &self.running
    }

    /// Returns the blocks of `seq_id` past its computed tokens (reached
    /// only by rejected draft tokens) to the pool.
    pub fn release_blocks_past_computed(&mut self, seq_id: u64) {
        let Some(seq) = self.seqs.get_mut(&seq_id) else {
            return;
        };
        let keep = self.blocks.blocks_for(seq.num_computed);
        if seq.block_table.len() > keep {
            let mut tail = seq.block_table.split_off(keep);
            self.blocks.free(&mut tail);
        }
    }

    /// Removes a finished sequence and frees its blocks.
    pub fn finish(&mut self, seq_id: u64, t: f64) -> Option<Sequence> {
        let mut seq = self.seqs.remove(&seq_id)?;
        self.running.retain(|&r| r != seq_id);
        self.waiting.retain(|&w| w != seq_id);
        self.blocks.free(&mut seq.block_table);
        seq.finish_s = Some(t);
        Some(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use workloads::{Request, SamplingParams};

    fn sched(num_blocks: usize, block_size: usize, seqs: usize, tokens: usize) -> Scheduler {
        Scheduler::new(
            SchedulerConfig {
                max_num_seqs: seqs,
                max_num_batched_tokens: tokens,
                enable_chunked_prefill: true,
                max_model_len: 1024,
            },
            BlockManager::new(num_blocks, block_size),
        )
    }

    fn seq(id: u64, prompt: usize, max_tokens: u32) -> Sequence {
        let req = Request {
            id,
            arrival_s: 0.0,
            warmup: false,
            prompt_token_ids: vec![1; prompt],
            sampling: SamplingParams::greedy(max_tokens),
        };
        Sequence::new(id, req, 0.0)
    }

    /// Runs `out` as if the backend sampled token 7 everywhere.
    fn run(s: &mut Scheduler, out: &SchedulerOutput) {
        s.commit(out);
        for e in out.seqs.iter().filter(|e| e.sample) {
            let seq = s.seq_mut(e.seq_id).unwrap();
            seq.push_token(7, 0.0);
            if seq.output_len() >= seq.sampling.max_tokens as usize {
                s.finish(e.seq_id, 0.0);
            }
        }
    }

    #[test]
    fn chunked_prefill_splits_a_long_prompt_and_decodes_go_first() {
        let mut s = sched(64, 4, 8, 10);
        s.add(seq(1, 3, 4));
        let out = s.schedule(0.0);
        assert_eq!(out.seqs.len(), 1);
        run(&mut s, &out);
        s.add(seq(2, 25, 2));
        let out = s.schedule(0.0);
        assert_eq!(out.seqs[0].seq_id, 1);
        assert!(out.seqs[0].is_decode);
        assert_eq!(out.seqs[1].num_tokens, 9);
        assert!(!out.seqs[1].sample);
        run(&mut s, &out);
        let out = s.schedule(0.0);
        assert_eq!(out.num_tokens(), 10);
    }

    #[test]
    fn without_chunking_a_prompt_waits_for_a_whole_step() {
        let mut s = sched(64, 4, 8, 10);
        s.cfg.enable_chunked_prefill = false;
        s.add(seq(1, 8, 2));
        s.add(seq(2, 5, 2));
        let out = s.schedule(0.0);
        assert_eq!(out.seqs.len(), 1);
        assert_eq!(out.seqs[0].num_tokens, 8);
        run(&mut s, &out);
        let out = s.schedule(0.0);
        assert_eq!(out.seqs.len(), 2);
        assert_eq!(out.num_tokens(), 6);
    }

    #[test]
    fn tight_kv_preempts_the_youngest_and_everything_finishes() {
        let mut s = sched(4, 2, 4, 64);
        s.add(seq(1, 3, 4));
        s.add(seq(2, 3, 4));
        let mut preempted = 0;
        let mut steps = 0;
        while s.has_unfinished() {
            let out = s.schedule(0.0);
            assert!(!out.is_empty() || !out.preempted.is_empty());
            assert!(!out.preempted.contains(&1), "the oldest is never preempted");
            preempted += out.preempted.len();
            run(&mut s, &out);
            steps += 1;
            assert!(steps < 100);
        }
        assert!(preempted > 0);
        assert_eq!(s.block_manager().blocks_in_use(), 0);
    }

    #[test]
    fn inadmissible_requests_name_the_reason() {
        let s = sched(4, 4, 4, 64);
        assert!(s.admissibility(0, 3).unwrap_err().contains("empty"));
        assert!(s.admissibility(3, 0).unwrap_err().contains("max_tokens"));
        assert!(s
            .admissibility(1000, 100)
            .unwrap_err()
            .contains("max_model_len"));
        assert!(s.admissibility(10, 10).unwrap_err().contains("KV blocks"));
        assert!(s.admissibility(10, 7).is_ok());
    }
}
