//! What the engine reports per request (`records.jsonl`) and per step
//! (the step log). All times are seconds on one monotonic clock whose zero is
//! the start of the measured phase of `engine bench`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Reached `max_tokens`.
    Length,
    /// Produced the model's EOS token (not with `ignore_eos`).
    Eos,
    /// Produced one of `stop_token_ids`.
    StopToken,
    /// Never ran: see `RecordStatus::Rejected`.
    Rejected,
    /// Stopped by an error: see `RecordStatus::NonfiniteLogits`.
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RecordStatus {
    Ok,
    /// The request could not run (for example its prompt is longer than the
    /// model's context); `reason` says why. Other requests still run.
    Rejected {
        reason: String,
    },
    /// The model produced a NaN or infinite logit for this request (broken
    /// weights or a numerical bug): the request was stopped there, and its
    /// tokens so far are not to be trusted. The pipeline counts it as a
    /// failed request.
    NonfiniteLogits,
}

/// One finished (or rejected) request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub id: u64,
    pub status: RecordStatus,
    /// When the request was handed to the engine.
    pub arrival_s: f64,
    /// When the scheduler first gave it a slot in a batch (None if rejected).
    pub scheduled_s: Option<f64>,
    pub first_token_s: Option<f64>,
    /// Time of every generated token, in order (the first equals
    /// `first_token_s`).
    pub token_times_s: Vec<f64>,
    pub finish_s: Option<f64>,
    pub finish_reason: FinishReason,
    pub prompt_len: u32,
    pub output_len: u32,
    /// How many times the request was preempted and recomputed.
    #[serde(default)]
    pub preemptions: u32,
    /// Prompt tokens whose K/V came from the prefix cache when the request
    /// was first scheduled (vLLM's `num_cached_tokens`): 0 with caching
    /// off. An HTTP client's records take it from the server's
    /// `usage.prompt_tokens_details.cached_tokens`; absent when unknown
    /// (a server that does not say, older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_cached_tokens: Option<u32>,
    /// blake3 of the output token ids as little-endian u32, hex.
    pub output_hash: String,
    /// The output tokens themselves (for checks and golden comparisons).
    #[serde(default)]
    pub output_token_ids: Vec<u32>,
    /// Client-side timing, when an HTTP client measured the request
    /// (`cargo xtask bench --target`); absent for `engine bench` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientTiming>,
    /// Speculative decoding counters, when the engine verified drafts for
    /// this request (absent otherwise, and in records from before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_decode: Option<SpecDecodeStats>,
}

/// One request's speculative decoding, in vLLM's terms: a *draft* is one
/// verify step's proposal of up to k tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecDecodeStats {
    /// Verify steps that carried at least one draft token.
    pub num_drafts: u32,
    /// Draft tokens verified.
    pub num_draft_tokens: u32,
    /// Draft tokens accepted (emitted without a forward pass of their own).
    pub num_accepted_tokens: u32,
    /// `num_accepted_tokens / num_draft_tokens`.
    pub acceptance_rate: f64,
    /// Tokens emitted per verify step: `1 + num_accepted_tokens / num_drafts`
    /// (vLLM's mean acceptance length, the bonus token included).
    pub mean_accepted_length: f64,
}

impl SpecDecodeStats {
    /// Derives the rates from the counts; `num_drafts` must be positive
    /// (a draft has at least one token).
    pub fn new(num_drafts: u32, num_draft_tokens: u32, num_accepted_tokens: u32) -> Self {
        let drafts = f64::from(num_drafts.max(1));
        let tokens = f64::from(num_draft_tokens.max(1));
        SpecDecodeStats {
            num_drafts,
            num_draft_tokens,
            num_accepted_tokens,
            acceptance_rate: f64::from(num_accepted_tokens) / tokens,
            mean_accepted_length: 1.0 + f64::from(num_accepted_tokens) / drafts,
        }
    }
}

/// How the times in `token_times_s` of an HTTP-measured record map to
/// tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItlBasis {
    /// One time per output token: the server said how many tokens each
    /// streamed chunk held, and a chunk of k tokens spreads its gap since
    /// the previous chunk evenly over its k tokens.
    Token,
    /// One time per streamed chunk with text (the server did not say how
    /// many tokens a chunk held): ITL is per chunk, as vLLM's client does.
    Chunk,
    /// Not streamed: only the time the whole answer arrived.
    None,
}

/// What the HTTP client saw of one request, beyond the shared times (which
/// are then client times: `arrival_s` is when the request was sent,
/// token times when each SSE event arrived, before parsing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientTiming {
    /// When the schedule wanted the request: its arrival offset (open
    /// loop), or the start of the measured phase (closed loop: every
    /// request is ready at once and waits for a slot).
    pub intended_s: f64,
    /// Time spent waiting for a concurrency slot (closed loop), included in
    /// `e2el_including_client_queue`.
    pub slot_wait_s: f64,
    /// How late the load generator sent the request after it could have
    /// (open loop: after `intended_s`; closed loop: after its slot freed).
    pub send_lag_s: f64,
    pub itl_basis: ItlBasis,
    /// Streamed chunks that carried output.
    pub chunks: u32,
    /// The prompt length the workload intended, when the server counted
    /// another (`usage.prompt_tokens`, which `prompt_len` then holds): a
    /// server that adds BOS, or a text prompt its tokenizer counts
    /// differently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intended_prompt_len: Option<u32>,
    /// What the server said of its own timing, when it says (`engine serve`
    /// reports `server_timing` in its final usage chunk): from receiving
    /// the request to the engine step that made the first token, and to
    /// handing that token's chunk to its HTTP stack. TTFT minus the latter
    /// is the transport (request out, chunk back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_engine_ttft_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_first_chunk_s: Option<f64>,
}

/// One engine step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLogEntry {
    pub step: u64,
    /// Start of the step on the bench clock.
    pub start_s: f64,
    pub duration_s: f64,
    /// Sequences in the batch.
    pub batch_size: u32,
    pub prefill_tokens: u32,
    pub decode_tokens: u32,
    /// Sequences waiting (not scheduled) after this step.
    pub num_waiting: u32,
    /// KV blocks in use after this step.
    pub kv_blocks_used: u32,
    pub kv_blocks_total: u32,
    pub preempted: u32,
    /// Prefix caching: tokens of the sequences admitted in this step, and
    /// how many of them were found in the cache (hit rate = hits / queries,
    /// vLLM's definition). 0 with caching off and in older step logs.
    #[serde(default)]
    pub prefix_cache_queries: u64,
    #[serde(default)]
    pub prefix_cache_hits: u64,
    /// Speculative decoding: draft tokens verified in this step (they run
    /// as extra query tokens of decoding sequences, counted in neither
    /// `prefill_tokens` nor `decode_tokens`) and how many were accepted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spec_draft_tokens: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spec_accepted_tokens: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// blake3 over the token ids as little-endian u32, hex encoded.
pub fn hash_tokens(tokens: &[u32]) -> String {
    let mut h = blake3::Hasher::new();
    for t in tokens {
        h.update(&t.to_le_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// What `engine bench --summary` writes: the run's setting and its peaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchSummary {
    /// Backend kind ("cpu", "cuda"), device name and compute dtype.
    pub backend_kind: String,
    pub device_name: String,
    pub dtype: String,
    pub num_kv_blocks: u64,
    pub block_size: u32,
    /// Peak resident set of the engine process (VmHWM), when readable.
    pub peak_rss_bytes: Option<u64>,
    /// Peak device memory as the backend reports it (CUDA), else None.
    pub peak_device_memory_bytes: Option<u64>,
    /// The device peak when there is one, else the RSS peak: the one number
    /// the pipeline reports as "peak memory".
    pub peak_memory_bytes: Option<u64>,
    /// Kernel launches in a decode step, when the backend counts them.
    pub launches_per_decode_step: Option<u64>,
    /// Start of the measured phase to the last record.
    pub measured_duration_s: f64,
    pub num_requests: u64,
    pub num_rejected: u64,
    /// Requests stopped because their logits were not finite.
    #[serde(default)]
    pub num_nonfinite: u64,
    pub output_tokens: u64,
    pub num_steps: u64,
    /// Prefix caching over the measured steps: tokens looked up and tokens
    /// found (the step log's sums; hit rate = hits / queries). 0 with
    /// caching off.
    #[serde(default)]
    pub prefix_cache_queries: u64,
    #[serde(default)]
    pub prefix_cache_hits: u64,
    /// The engine config the run used, as JSON.
    pub engine_config: serde_json::Value,
    /// blake3 of the checkpoint's config and weights.
    pub model_content_hash: String,
}
