//! One request's state inside the engine.

use workloads::{FinishReason, Request, SamplingParams};

use crate::backend::pending_row;
use crate::prefix_cache::{self, BlockHash};
use crate::spec_decode::SpecCounts;

#[derive(Debug, Clone)]
pub struct Sequence {
    /// Engine-internal id (unique for the engine's lifetime).
    pub seq_id: u64,
    /// The request's own id, reported in its record.
    pub request_id: u64,
    pub sampling: SamplingParams,
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose K/V are in the cache: positions `0..num_computed`.
    pub num_computed: usize,
    /// KV block ids covering positions `0..num_computed` (and the chunk being
    /// run while scheduled).
    pub block_table: Vec<u32>,
    pub arrival_s: f64,
    pub scheduled_s: Option<f64>,
    pub token_times_s: Vec<f64>,
    pub finish_s: Option<f64>,
    pub preemptions: u32,
    /// EOS and stop tokens do not end the sequence before it has this many
    /// output tokens (the OpenAI API's `min_tokens`; 0 for bench requests).
    pub min_tokens: u32,
    /// Prefix caching: chain hashes of the first full blocks of `tokens`
    /// (extended as needed; tokens never change, so they survive preemption).
    pub block_hashes: Vec<BlockHash>,
    /// Prefix caching: leading blocks of `block_table` already registered in
    /// the cache (found there, or computed and registered since).
    pub num_registered_blocks: usize,
    /// Prompt tokens found in the prefix cache when the sequence was first
    /// scheduled (vLLM's `num_cached_tokens`); None before that.
    pub num_cached_tokens: Option<u32>,
    /// Speculative decoding: draft tokens proposed for the next step (they
    /// would follow `tokens`); empty when not speculating.
    pub draft: Vec<u32>,
    /// Speculative decoding counters for the record.
    pub spec: SpecCounts,
}

impl Sequence {
    pub fn new(seq_id: u64, request: Request, arrival_s: f64) -> Self {
        let prompt_len = request.prompt_token_ids.len();
        Sequence {
            seq_id,
            request_id: request.id,
            sampling: request.sampling,
            tokens: request.prompt_token_ids,
            prompt_len,
            num_computed: 0,
            block_table: Vec::new(),
            arrival_s,
            scheduled_s: None,
            token_times_s: Vec::new(),
            finish_s: None,
            preemptions: 0,
            min_tokens: 0,
            block_hashes: Vec::new(),
            num_registered_blocks: 0,
            num_cached_tokens: None,
            draft: Vec::new(),
            spec: SpecCounts::default(),
        }
    }

    /// The chain hashes of the first `blocks` full blocks of `tokens`.
    pub fn block_hashes(&mut self, block_size: usize, blocks: usize) -> &[BlockHash] {
        prefix_cache::extend_chain(&mut self.block_hashes, &self.tokens, block_size, blocks);
        &self.block_hashes[..blocks]
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn prompt(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }

    pub fn output(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    pub fn output_len(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens still to run before the next token can be sampled.
    pub fn num_uncomputed(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    /// Running only the last generated token (as opposed to a prompt chunk or
    /// a recompute after preemption).
    pub fn is_decoding(&self) -> bool {
        self.output_len() > 0 && self.num_uncomputed() == 1
    }

    pub fn first_token_s(&self) -> Option<f64> {
        self.token_times_s.first().copied()
    }

    /// Pipelined stepping: its last token is still pending (a
    /// `PENDING_TOKEN` placeholder) and is its last by length, so there is
    /// nothing more to schedule for it.
    pub fn awaits_final_token(&self) -> bool {
        self.tokens
            .last()
            .is_some_and(|&t| pending_row(t).is_some())
            && self.output_len() >= self.sampling.max_tokens as usize
    }

    /// Appends a sampled token at time `t`.
    pub fn push_token(&mut self, token: u32, t: f64) {
        self.tokens.push(token);
        self.token_times_s.push(t);
    }

    /// Forgets the cached K/V (the caller frees the blocks): the prompt and
    /// the output so far are recomputed when the sequence runs again.
    pub fn reset_for_recompute(&mut self) {
        debug_assert!(self.block_table.is_empty(), "free blocks first");
        self.num_computed = 0;
        self.num_registered_blocks = 0;
        self.draft.clear();
        self.preemptions += 1;
    }

    /// Why the sequence should stop after its last token, if it should.
    /// EOS and stop tokens take precedence over the length limit.
    pub fn stop_reason(&self, eos_token_ids: &[u32]) -> Option<FinishReason> {
        let last = *self.output().last()?;
        let may_stop = self.output_len() >= self.min_tokens as usize;
        if may_stop && self.sampling.stop_token_ids.contains(&last) {
            return Some(FinishReason::StopToken);
        }
        if may_stop && !self.sampling.ignore_eos && eos_token_ids.contains(&last) {
            return Some(FinishReason::Eos);
        }
        if self.output_len() >= self.sampling.max_tokens as usize {
            return Some(FinishReason::Length);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(max_tokens: u32) -> Sequence {
        let req = Request {
            id: 9,
            arrival_s: 0.0,
            warmup: false,
            prompt_token_ids: vec![5, 6, 7],
            sampling: SamplingParams {
                stop_token_ids: vec![42],
                ..SamplingParams::greedy(max_tokens)
            },
        };
        Sequence::new(1, req, 0.0)
    }

    #[test]
    fn decode_state_and_stop_reasons() {
        let mut s = seq(3);
        assert!(!s.is_decoding());
        assert_eq!(s.stop_reason(&[2]), None);
        s.num_computed = 3;
        s.push_token(10, 0.1);
        assert!(s.is_decoding());
        assert_eq!(s.output(), &[10]);
        assert_eq!(s.stop_reason(&[2]), None);
        s.push_token(2, 0.2);
        assert_eq!(s.stop_reason(&[2]), Some(FinishReason::Eos));
        s.sampling.ignore_eos = true;
        assert_eq!(s.stop_reason(&[2]), None);
        s.push_token(42, 0.3);
        assert_eq!(s.stop_reason(&[2]), Some(FinishReason::StopToken));
        s.tokens.pop();
        s.push_token(11, 0.3);
        assert_eq!(s.stop_reason(&[2]), Some(FinishReason::Length));
    }

    #[test]
    fn min_tokens_holds_off_eos_and_stop_tokens() {
        let mut s = seq(5);
        s.min_tokens = 2;
        s.push_token(2, 0.1);
        assert_eq!(s.stop_reason(&[2]), None, "EOS before min_tokens");
        s.push_token(42, 0.2);
        assert_eq!(s.stop_reason(&[2]), Some(FinishReason::StopToken));
    }

    #[test]
    fn recompute_keeps_output_and_counts() {
        let mut s = seq(4);
        s.num_computed = 3;
        s.push_token(10, 0.1);
        s.reset_for_recompute();
        assert_eq!(s.num_uncomputed(), 4);
        assert_eq!(s.output(), &[10]);
        assert_eq!(s.preemptions, 1);
        assert!(!s.is_decoding());
    }
}
