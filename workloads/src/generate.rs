//! Seeded request generator: spec + seed + token space → byte-identical
//! requests.jsonl.
//!
//! The file holds the warmup requests first (ids 0..warmup), then the
//! measured ones. Each part of a request draws from its own seeded stream
//! (lengths, tokens, prefixes, arrivals, sampling seeds; warmup on streams
//! of its own), so changing the arrival rate does not change the prompts
//! and adding warmup requests does not change the measured ones. Warmup
//! requests arrive at 0 and get prefix groups of their own, so the prefix
//! cache they fill is not reused by measured requests.

use std::path::Path;

use crate::jsonl::{self, JsonlError};
use crate::request::MAX_ARRIVAL_S;
use crate::rng::{Purpose, Stream};
use crate::spec::WorkloadSpec;
use crate::{Request, SamplingParams};

/// The token ids prompts may use: `0..vocab_size` minus `excluded` (EOS and
/// other special ids, which the pipeline reads from the model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpace {
    pub vocab_size: u32,
    pub excluded: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("token space is empty: vocab_size {vocab_size} with {excluded} ids excluded")]
    EmptyTokenSpace { vocab_size: u32, excluded: usize },
    #[error(
        "request {id} would arrive at {arrival_s:.3e} s, past the limit of {max:.0} s; \
         raise the arrival rate (or burstiness)",
        max = MAX_ARRIVAL_S
    )]
    ArrivalTooLate { id: u64, arrival_s: f64 },
    #[error(transparent)]
    Write(#[from] JsonlError),
}

impl TokenSpace {
    /// The excluded ids that lie inside the vocabulary, sorted, deduplicated.
    fn excluded_in_vocab(&self) -> Vec<u32> {
        let mut ex: Vec<u32> = self
            .excluded
            .iter()
            .copied()
            .filter(|&t| t < self.vocab_size)
            .collect();
        ex.sort_unstable();
        ex.dedup();
        ex
    }
}

/// Draws uniformly among the allowed ids.
struct TokenDrawer {
    allowed: u64,
    excluded: Vec<u32>,
}

impl TokenDrawer {
    fn new(space: &TokenSpace) -> Result<Self, GenerateError> {
        let excluded = space.excluded_in_vocab();
        let allowed = u64::from(space.vocab_size) - excluded.len() as u64;
        if allowed == 0 {
            return Err(GenerateError::EmptyTokenSpace {
                vocab_size: space.vocab_size,
                excluded: excluded.len(),
            });
        }
        Ok(TokenDrawer { allowed, excluded })
    }

    /// The k-th allowed id: step past every excluded id at or below it.
    fn draw(&self, rng: &mut Stream) -> u32 {
        let mut id = rng.below(self.allowed) as u32;
        for &ex in &self.excluded {
            if ex <= id {
                id += 1;
            } else {
                break;
            }
        }
        id
    }

    fn draw_n(&self, n: usize, rng: &mut Stream) -> Vec<u32> {
        (0..n).map(|_| self.draw(rng)).collect()
    }
}

impl WorkloadSpec {
    /// Resolves the spec into its requests: warmup first, then measured.
    pub fn generate(&self, space: &TokenSpace) -> Result<Vec<Request>, GenerateError> {
        let drawer = TokenDrawer::new(space)?;
        let mut out = Vec::with_capacity((self.warmup_requests + self.requests) as usize);
        for (warmup, count) in [(true, self.warmup_requests), (false, self.requests)] {
            self.generate_phase(&drawer, warmup, count as usize, &mut out);
        }
        // Validation bounds the expected span; a heavy-tailed draw (gamma of
        // tiny burstiness) can still land past the limit.
        if let Some(late) = out
            .iter()
            .find(|r| !(r.arrival_s.is_finite() && r.arrival_s <= MAX_ARRIVAL_S))
        {
            return Err(GenerateError::ArrivalTooLate {
                id: late.id,
                arrival_s: late.arrival_s,
            });
        }
        Ok(out)
    }

    fn generate_phase(&self, drawer: &TokenDrawer, warmup: bool, n: usize, out: &mut Vec<Request>) {
        let stream = |purpose| Stream::new(self.seed, purpose, warmup);
        let (mut prompt_len, mut output_len) =
            (stream(Purpose::PromptLen), stream(Purpose::OutputLen));
        let (mut tokens, mut seeds) =
            (stream(Purpose::PromptTokens), stream(Purpose::SamplingSeed));
        let arrivals = if warmup {
            vec![0.0; n]
        } else {
            self.arrival.times(n, &mut stream(Purpose::Arrival))
        };
        let mut prefix_rng = stream(Purpose::PrefixTokens);
        let prefixes: Vec<Vec<u32>> = match &self.prefix {
            Some(p) => (0..p.groups)
                .map(|_| drawer.draw_n(p.length as usize, &mut prefix_rng))
                .collect(),
            None => Vec::new(),
        };
        for (i, arrival_s) in arrivals.into_iter().enumerate() {
            let len = self.prompt_len.sample(i, &mut prompt_len) as usize;
            let mut prompt = match prefixes.len() {
                0 => Vec::with_capacity(len),
                g => prefixes[i % g].clone(),
            };
            // Validation keeps every prompt longer than its prefix.
            let unique = len.saturating_sub(prompt.len());
            prompt.extend(drawer.draw_n(unique, &mut tokens));
            out.push(Request {
                id: out.len() as u64,
                arrival_s,
                warmup,
                prompt_token_ids: prompt,
                sampling: SamplingParams {
                    temperature: self.sampling.temperature,
                    top_k: self.sampling.top_k,
                    top_p: self.sampling.top_p,
                    seed: seeds.next_u64(),
                    max_tokens: self.output_len.sample(i, &mut output_len),
                    ignore_eos: self.sampling.ignore_eos,
                    stop_token_ids: Vec::new(),
                },
            });
        }
    }

    /// blake3 (hex) of the requests file this spec resolves to: the
    /// workload's identity in fingerprints.
    pub fn resolved_hash(&self, space: &TokenSpace) -> Result<String, GenerateError> {
        Ok(requests_hash(&self.generate(space)?))
    }

    /// Generates and writes the requests file atomically; returns its hash.
    pub fn write_requests(&self, space: &TokenSpace, path: &Path) -> Result<String, GenerateError> {
        let requests = self.generate(space)?;
        jsonl::write_atomic(path, &requests)?;
        Ok(requests_hash(&requests))
    }
}

/// The bytes `jsonl::write_atomic` writes for `requests`.
pub fn requests_bytes(requests: &[Request]) -> Vec<u8> {
    let mut buf = Vec::new();
    for r in requests {
        // A Request is plain data: serializing it to memory cannot fail.
        if serde_json::to_writer(&mut buf, r).is_ok() {
            buf.push(b'\n');
        }
    }
    buf
}

/// blake3 (hex) of [`requests_bytes`].
pub fn requests_hash(requests: &[Request]) -> String {
    blake3::hash(&requests_bytes(requests)).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Purpose;

    #[test]
    fn excluded_ids_are_never_drawn() {
        let space = TokenSpace {
            vocab_size: 10,
            excluded: vec![0, 9, 4, 4, 5, 100],
        };
        let drawer = TokenDrawer::new(&space).unwrap();
        let mut rng = Stream::new(1, Purpose::PromptTokens, false);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[drawer.draw(&mut rng) as usize] += 1;
        }
        for (id, &count) in seen.iter().enumerate() {
            if [0, 4, 5, 9].contains(&id) {
                assert_eq!(count, 0, "excluded id {id} drawn");
            } else {
                assert!(count > 1_500, "id {id} drawn {count} times of ~1667");
            }
        }
    }

    #[test]
    fn an_arrival_past_the_limit_is_an_error() {
        // Expected span exactly at the limit: validation passes, and about
        // half the seeds draw a last arrival past it.
        let space = TokenSpace {
            vocab_size: 100,
            excluded: vec![],
        };
        let mut refused = 0;
        for seed in 0..20 {
            let spec = WorkloadSpec::parse(
                &format!(
                    r#"
name = "g"
description = "d"
seed = {seed}
requests = 1001
warmup_requests = 0
prompt_len = {{ fixed = 4 }}
output_len = {{ fixed = 2 }}
arrival = {{ poisson = {{ rate = 0.001 }} }}
"#
                ),
                Path::new("g.toml"),
            )
            .unwrap();
            match spec.generate(&space) {
                Err(GenerateError::ArrivalTooLate { arrival_s, .. }) => {
                    assert!(arrival_s > MAX_ARRIVAL_S);
                    refused += 1;
                }
                Ok(requests) => assert!(requests.iter().all(|r| r.arrival_s <= MAX_ARRIVAL_S)),
                Err(other) => panic!("{other}"),
            }
        }
        assert!((1..20).contains(&refused), "{refused} of 20 refused");
    }

    #[test]
    fn an_empty_token_space_is_an_error() {
        let space = TokenSpace {
            vocab_size: 2,
            excluded: vec![1, 0],
        };
        assert!(matches!(
            TokenDrawer::new(&space),
            Err(GenerateError::EmptyTokenSpace { .. })
        ));
    }
}
