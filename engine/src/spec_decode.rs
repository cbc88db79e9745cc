//! N-gram speculative decoding (vLLM's `ngram` method, "prompt lookup").
//!
//! Drafting: for a decoding sequence, the last `n` tokens of prompt + output
//! (n from `prompt_lookup_max` down to `prompt_lookup_min`) are looked up in
//! the tokens before them; at the most recent earlier occurrence, the up to
//! `k` tokens that followed it are the draft. No model runs to draft.
//!
//! Verification runs in the step's one forward pass: the sequence's last
//! token and its `d ≤ k` drafts go through the model as one chunk at
//! positions `L-1 .. L-1+d` (K/V written to the paged cache like a prefill
//! chunk), and the backend samples a token after *each* of those positions,
//! the j-th with the request's draw index `output_len + j`. Draft `j+1` is
//! accepted while it equals the token sampled after draft `j`; the first
//! mismatch (or the end of the draft) contributes its sampled token as the
//! bonus. Every emitted token is therefore exactly the token plain decoding
//! would have sampled from the same prefix with the same draw: greedy
//! outputs are identical, and so are seeded sampled outputs (the sampler's
//! draw is a pure function of (seed, index), see `sampler`). For a
//! deterministic draft this exact-match rule accepts draft `x` with
//! probability `p(x)`, the same as vLLM's rejection sampler with a one-hot
//! draft distribution, and the output distribution is the target's.
//!
//! Rollback: the K/V of rejected drafts stays in slots past the sequence's
//! `num_computed`, which no later query reads before it is overwritten;
//! blocks that only rejected drafts reached are returned to the pool.

use crate::engine_config::{EngineConfig, SpeculativeMethod};

/// The n-gram proposer's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgramConfig {
    /// Most draft tokens per step (k).
    pub num_speculative_tokens: usize,
    pub min_n: usize,
    pub max_n: usize,
}

impl NgramConfig {
    /// The proposer `cfg` asks for, or None when speculation is off.
    pub fn from_engine_config(cfg: &EngineConfig) -> Option<NgramConfig> {
        match cfg.speculative_method {
            SpeculativeMethod::Off => None,
            SpeculativeMethod::Ngram if cfg.num_speculative_tokens == 0 => None,
            SpeculativeMethod::Ngram => Some(NgramConfig {
                num_speculative_tokens: cfg.num_speculative_tokens,
                min_n: cfg.prompt_lookup_min,
                max_n: cfg.prompt_lookup_max,
            }),
        }
    }

    /// Up to `max_len` tokens that followed the most recent earlier
    /// occurrence of the longest suffix n-gram of `tokens` (n from `max_n`
    /// down to `min_n`); empty when no such n-gram recurs.
    pub fn propose(&self, tokens: &[u32], max_len: usize) -> Vec<u32> {
        let k = self.num_speculative_tokens.min(max_len);
        if k == 0 {
            return Vec::new();
        }
        let len = tokens.len();
        for n in (self.min_n..=self.max_n).rev() {
            if n == 0 || n >= len {
                continue;
            }
            let suffix = &tokens[len - n..];
            // Candidate starts from the most recent backwards; the suffix
            // itself (start len - n) is not an earlier occurrence.
            for start in (0..len - n).rev() {
                if &tokens[start..start + n] == suffix {
                    let from = start + n;
                    let to = (from + k).min(len);
                    return tokens[from..to].to_vec();
                }
            }
        }
        Vec::new()
    }
}

/// Speculation counters of one request (or one step): vLLM's
/// `num_drafts`, `num_draft_tokens` and `num_accepted_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecCounts {
    /// Verify steps that carried at least one draft token.
    pub drafts: u32,
    /// Draft tokens verified.
    pub draft_tokens: u32,
    /// Draft tokens accepted (emitted as output).
    pub accepted_tokens: u32,
}

impl SpecCounts {
    pub fn add(&mut self, draft_tokens: usize, accepted_tokens: usize) {
        if draft_tokens > 0 {
            self.drafts += 1;
        }
        self.draft_tokens += draft_tokens as u32;
        self.accepted_tokens += accepted_tokens as u32;
    }

    /// The request record's view (None when no draft was ever verified).
    pub fn to_record(self) -> Option<workloads::record::SpecDecodeStats> {
        (self.drafts > 0).then(|| {
            workloads::record::SpecDecodeStats::new(
                self.drafts,
                self.draft_tokens,
                self.accepted_tokens,
            )
        })
    }
}

/// How many drafts the target model confirmed: the length of the longest
/// prefix of `draft` equal to `sampled` (the token sampled after the last
/// real token, then after each draft). `sampled` has `draft.len() + 1`
/// entries; the emitted tokens are `sampled[..=accepted]`.
pub fn accepted_prefix(draft: &[u32], sampled: &[u32]) -> usize {
    draft
        .iter()
        .zip(sampled)
        .take_while(|(d, s)| d == s)
        .count()
}

/// Trims per-sequence draft lengths (in batch order) so that every decoding
/// sequence keeps its one real token in a step of `budget` tokens: drafts
/// get what is left after `num_decoding` tokens, first come first served.
pub fn fit_drafts(draft_lens: &mut [usize], num_decoding: usize, budget: usize) {
    let mut left = budget.saturating_sub(num_decoding);
    for len in draft_lens {
        *len = (*len).min(left);
        left -= *len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ngram(k: usize, min_n: usize, max_n: usize) -> NgramConfig {
        NgramConfig {
            num_speculative_tokens: k,
            min_n,
            max_n,
        }
    }

    #[test]
    fn proposes_what_followed_the_most_recent_match() {
        let p = ngram(3, 2, 2);
        // "1 2" occurs at 0 (followed by 3 4 5) and at 5 (followed by 9 9);
        // the most recent earlier occurrence wins.
        let tokens = [1, 2, 3, 4, 5, 1, 2, 9, 9, 7, 1, 2];
        assert_eq!(p.propose(&tokens, 10), vec![9, 9, 7]);
        assert_eq!(p.propose(&tokens, 2), vec![9, 9], "capped by max_len");
        assert_eq!(p.propose(&tokens, 0), Vec::<u32>::new());
    }

    #[test]
    fn longer_ngrams_are_tried_first() {
        // The 1-gram "5" most recently precedes 8, the 2-gram "4 5" precedes 6.
        let tokens = [4, 5, 6, 6, 5, 8, 4, 5];
        assert_eq!(ngram(2, 1, 2).propose(&tokens, 9), vec![6, 6]);
        assert_eq!(ngram(2, 1, 1).propose(&tokens, 9), vec![8, 4]);
    }

    #[test]
    fn no_match_or_too_short_gives_nothing() {
        assert!(ngram(4, 2, 3).propose(&[1, 2, 3, 4, 5], 9).is_empty());
        assert!(ngram(4, 3, 3).propose(&[1, 2, 3], 9).is_empty());
        assert!(ngram(4, 1, 1).propose(&[7], 9).is_empty());
    }

    #[test]
    fn a_match_near_the_end_proposes_fewer_tokens() {
        // "3 3": the match at 1 is followed by 3 then the end overlaps the
        // suffix itself, which is fine: those tokens are known.
        assert_eq!(ngram(5, 2, 2).propose(&[3, 3, 3], 9), vec![3]);
        assert_eq!(ngram(5, 1, 1).propose(&[1, 2, 1], 9), vec![2, 1]);
    }

    #[test]
    fn acceptance_is_the_matching_prefix() {
        assert_eq!(accepted_prefix(&[1, 2, 3], &[1, 2, 3, 4]), 3);
        assert_eq!(accepted_prefix(&[1, 2, 3], &[1, 5, 3, 4]), 1);
        assert_eq!(accepted_prefix(&[1, 2, 3], &[0, 2, 3, 4]), 0);
        assert_eq!(accepted_prefix(&[], &[7]), 0);
    }

    #[test]
    fn drafts_leave_every_decode_its_token() {
        let mut lens = [4, 4, 4];
        fit_drafts(&mut lens, 3, 10);
        assert_eq!(lens, [4, 3, 0]);
        let mut lens = [2, 2];
        fit_drafts(&mut lens, 2, 100);
        assert_eq!(lens, [2, 2]);
    }

    #[test]
    fn counts_and_record_view() {
        let mut c = SpecCounts::default();
        assert_eq!(c.to_record(), None);
        c.add(4, 2);
        c.add(0, 0);
        c.add(4, 4);
        assert_eq!(c.drafts, 2);
        let r = c.to_record().unwrap();
        assert_eq!((r.num_draft_tokens, r.num_accepted_tokens), (8, 6));
        assert_eq!(r.acceptance_rate, 0.75);
        assert_eq!(r.mean_accepted_length, 4.0);
    }
}
