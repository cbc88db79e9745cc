//! One request as the engine receives it: a line of `requests.jsonl`.

use serde::{Deserialize, Serialize};

/// Sampling parameters of one request. `temperature == 0.0` means greedy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingParams {
    #[serde(default)]
    pub temperature: f32,
    /// 0 disables top-k.
    #[serde(default)]
    pub top_k: u32,
    /// 1.0 disables top-p.
    #[serde(default = "one")]
    pub top_p: f32,
    /// Per-request seed: the same seed gives the same sampled tokens, whatever
    /// else is in the batch.
    #[serde(default)]
    pub seed: u64,
    pub max_tokens: u32,
    #[serde(default)]
    pub ignore_eos: bool,
    /// Extra token ids that end the request (besides the model's EOS unless
    /// `ignore_eos`).
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
}

fn one() -> f32 {
    1.0
}

impl SamplingParams {
    pub fn greedy(max_tokens: u32) -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            max_tokens,
            ignore_eos: false,
            stop_token_ids: Vec::new(),
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// The first out-of-range parameter, as (field, message): temperature
    /// must be finite and >= 0, top_p in (0, 1].
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Some((
                "temperature",
                format!("must be a finite number >= 0, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Some(("top_p", format!("must be in (0, 1], got {}", self.top_p)));
        }
        None
    }
}

/// Latest arrival a request may have, in seconds (about 11.6 days): far
/// beyond any benchmark, and small enough that every arrival converts to a
/// wait on the clock. The generator and the engine both enforce it.
pub const MAX_ARRIVAL_S: f64 = 1e6;

/// One request of a workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Unique within a requests file.
    pub id: u64,
    /// Open loop: seconds after the start of the measured phase at which the
    /// request arrives. Closed loop ignores it.
    #[serde(default)]
    pub arrival_s: f64,
    /// Warmup requests run first and are kept out of the records.
    #[serde(default)]
    pub warmup: bool,
    pub prompt_token_ids: Vec<u32>,
    pub sampling: SamplingParams,
}
