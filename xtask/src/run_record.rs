//! CONTRACT between `bench` (writes), `store` (keeps) and `compare`/`baseline`
//! (reads): the run object and its parts. Field names are part of the stored
//! format: add fields with `#[serde(default)]`, never rename.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const RUN_SCHEMA_VERSION: u32 = 1;

/// A hex blake3 of an object's canonical JSON bytes.
pub type ObjectId = String;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuFingerprint {
    pub name: String,
    pub uuid: String,
    pub compute_capability: String,
    pub sm_count: Option<u32>,
    pub memory_bytes: u64,
    pub driver_version: String,
    /// CUDA version the driver supports, e.g. "13.0".
    pub cuda_driver_version: String,
    pub power_limit_w: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostFingerprint {
    pub cpu_model: String,
    pub cores: u32,
    pub memory_bytes: u64,
    pub os: String,
    pub kernel: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceFingerprint {
    pub git_commit: Option<String>,
    pub git_dirty: bool,
    /// blake3 of `git diff HEAD` when dirty.
    pub git_diff_hash: Option<String>,
    pub rustc_version: String,
    pub cargo_version: String,
    /// "release", ...
    pub build_profile: String,
    pub features: Vec<String>,
    pub engine_binary_hash: String,
    pub cargo_lock_hash: Option<String>,
}

/// Captured once per run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub source: SourceFingerprint,
    pub host: HostFingerprint,
    /// Empty for CPU runs.
    pub gpus: Vec<GpuFingerprint>,
    /// "cpu" or "cuda": what the engine actually ran on.
    pub device: String,
    /// Model preset or directory, and blake3 of its files.
    pub model: String,
    pub model_hash: String,
    /// The server under test when an HTTP client drove the run
    /// (`--target` / `--serve`); absent for in-process `engine bench` runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetFingerprint>,
    /// The engine's environment switches (`workloads::engine_knobs::
    /// ENV_SWITCHES`, e.g. `DYNO_CUDA_ATTN_MMA=0`) its processes ran with:
    /// inherited from the shell or set for an A/B side. Absent when none
    /// was set, and for a server the pipeline did not start.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub engine_env: BTreeMap<String, String>,
}

/// An OpenAI-compatible server as the client saw it. No credentials: the
/// URL is stripped of them and the API key is never recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetFingerprint {
    /// `http://host:port`.
    pub url: String,
    /// The `model` the client sent.
    pub model: String,
    /// `GET /v1/models` as the server answered it.
    pub models: serde_json::Value,
    /// The `Server` response header, if any.
    pub server_header: Option<String>,
    /// `owned_by` of the first model and the `Server` header: which kind of
    /// server this is (part of the fingerprint class).
    pub server_kind: String,
    /// Requests were streamed (SSE) rather than answered whole.
    pub stream: bool,
    /// The `--launch` command (with `--api-key` values redacted), or
    /// `engine serve ...` for `--serve`.
    pub launch: Option<String>,
    /// Prompts went as text built with this tokenizer (`--prompt-format
    /// text`: the file's name and blake3); absent: token ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_prompts: Option<String>,
}

/// GPU state sampled before and after each trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    pub sm_clock_mhz: Option<u32>,
    pub mem_clock_mhz: Option<u32>,
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
    /// Names of active throttle reasons (empty = none).
    pub throttle_reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrialStatus {
    Ok,
    Failed {
        reason: String,
        /// What kind of failure (absent in runs stored before classes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        class: Option<FailureClass>,
    },
    TimedOut {
        after_s: f64,
    },
}

impl TrialStatus {
    /// A failure with its class.
    pub fn failed(reason: impl Into<String>, class: FailureClass) -> TrialStatus {
        TrialStatus::Failed {
            reason: reason.into(),
            class: Some(class),
        }
    }

    /// The failure class: `None` for Ok; a timeout is `Timeout`; a failure
    /// stored without a class is a `Crash`.
    pub fn failure_class(&self) -> Option<FailureClass> {
        match self {
            TrialStatus::Ok => None,
            TrialStatus::Failed { class, .. } => Some(class.unwrap_or(FailureClass::Crash)),
            TrialStatus::TimedOut { .. } => Some(FailureClass::Timeout),
        }
    }
}

/// Why a trial (and so a sweep point) failed; the names are seed 004's
/// `--skip-failure-reasons` vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureClass {
    /// The weights or the KV pool do not fit; a device allocation failed.
    Oom,
    /// Killed at the deadline.
    Timeout,
    /// Died by a signal, or exited with an error that is none of the others
    /// (including unreadable outputs).
    Crash,
    /// The engine rejected its configuration.
    InvalidConfig,
    /// An HTTP target failed to start or answer.
    ServerFail,
}

impl FailureClass {
    pub const ALL: [FailureClass; 5] = [
        FailureClass::Oom,
        FailureClass::Timeout,
        FailureClass::Crash,
        FailureClass::InvalidConfig,
        FailureClass::ServerFail,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FailureClass::Oom => "oom",
            FailureClass::Timeout => "timeout",
            FailureClass::Crash => "crash",
            FailureClass::InvalidConfig => "invalid-config",
            FailureClass::ServerFail => "server-fail",
        }
    }

    /// Parses a class name, case-insensitively, accepting `_` for `-`
    /// (seed 004 writes `OOM`, `server_fail`).
    pub fn parse(name: &str) -> Option<FailureClass> {
        let n = name.trim().to_ascii_lowercase().replace('_', "-");
        FailureClass::ALL.into_iter().find(|c| c.name() == n)
    }
}

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One trial: a fresh engine process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialSummary {
    pub index: u32,
    pub status: TrialStatus,
    /// Metric name (see `metrics::METRICS`) → value. Empty when not Ok.
    pub metrics: BTreeMap<String, f64>,
    /// blake3 over all requests' output hashes in request-id order.
    pub output_hash: Option<String>,
    pub records_object: Option<ObjectId>,
    pub step_log_object: Option<ObjectId>,
    pub gpu_before: Option<GpuSample>,
    pub gpu_after: Option<GpuSample>,
    pub wall_s: f64,
    /// In an interleaved A/B session: the block this trial belongs to (the
    /// other side's trial of the same block is its pair).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<u32>,
}

/// One workload inside a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadRun {
    pub name: String,
    /// blake3 of the resolved requests file.
    pub workload_hash: String,
    /// The resolved spec, as JSON.
    pub spec: serde_json::Value,
    /// The engine config used, as JSON.
    pub engine_config: serde_json::Value,
    pub trials: Vec<TrialSummary>,
}

/// The run object: stored under the blake3 of its canonical JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub schema: u32,
    /// RFC 3339.
    pub created_at: String,
    pub suite: Option<String>,
    pub fingerprint: Fingerprint,
    pub workloads: Vec<WorkloadRun>,
    /// Set when the run is one side of an interleaved A/B session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interleaved: Option<Interleaved>,
}

/// Which side of an interleaved A/B session a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbSide {
    /// The reference (the base revision of a pull request).
    A,
    /// The candidate.
    B,
}

/// One side of an interleaved A/B session: both sides' trials ran
/// alternately on one machine in one sitting, in randomized balanced blocks
/// (one trial of each side per block, in AB or BA order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interleaved {
    /// Shared by the two runs of one session.
    pub session: String,
    pub side: AbSide,
    /// What this side is, for people: "base 1a2b3c4 (origin/main)", a
    /// binary's path, "head".
    pub label: String,
    /// Seed of the block orders.
    pub seed: u64,
    /// Environment variables set for this side's engine only.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Engine config keys set for this side only (`--a-set`/`--b-set`).
    #[serde(default)]
    pub engine_overrides: BTreeMap<String, String>,
}

/// How a metric is judged by `compare` (default practical thresholds:
/// throughput 2%, central latencies 3%, tail latencies 10%).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    Throughput,
    /// mean and p50 latencies.
    LatencyCentral,
    /// p90, p95, p99 latencies.
    LatencyTail,
    /// Reported, never judged (e.g. batch size, memory).
    Info,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricDef {
    pub name: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub kind: MetricKind,
}

/// Metric names: the keys of `TrialSummary::metrics` and of baseline
/// files. Use these constants, never the string literals.
pub mod names {
    pub const REQUEST_THROUGHPUT: &str = "request_throughput";
    pub const OUTPUT_THROUGHPUT: &str = "output_throughput";
    pub const TOTAL_TOKEN_THROUGHPUT: &str = "total_token_throughput";
    pub const REQUEST_GOODPUT: &str = "request_goodput";
    pub const DURATION_S: &str = "duration_s";
    pub const MEAN_STEP_MS: &str = "mean_step_ms";
    pub const P99_STEP_MS: &str = "p99_step_ms";
    pub const MEAN_BATCH_SIZE: &str = "mean_batch_size";
    pub const MAX_BATCH_SIZE: &str = "max_batch_size";
    pub const DECODE_THROUGHPUT: &str = "decode_throughput";
    pub const PEAK_MEMORY_BYTES: &str = "peak_memory_bytes";
    /// Prompt tokens served from the engine's prefix cache, % of all prompt
    /// tokens (records that carry `num_cached_tokens`: the engine's, and an
    /// HTTP server's that reports `usage.prompt_tokens_details`).
    pub const PREFIX_CACHE_HIT_RATE: &str = "prefix_cache_hit_rate";
    /// Requests the engine refused (e.g. longer than the context).
    pub const REJECTED_REQUESTS: &str = "rejected_requests";
    pub const MEAN_TTFT_MS: &str = "mean_ttft_ms";
    pub const P50_TTFT_MS: &str = "p50_ttft_ms";
    pub const P90_TTFT_MS: &str = "p90_ttft_ms";
    pub const P95_TTFT_MS: &str = "p95_ttft_ms";
    pub const P99_TTFT_MS: &str = "p99_ttft_ms";
    pub const MEAN_TPOT_MS: &str = "mean_tpot_ms";
    pub const P50_TPOT_MS: &str = "p50_tpot_ms";
    pub const P90_TPOT_MS: &str = "p90_tpot_ms";
    pub const P95_TPOT_MS: &str = "p95_tpot_ms";
    pub const P99_TPOT_MS: &str = "p99_tpot_ms";
    pub const MEAN_ITL_MS: &str = "mean_itl_ms";
    pub const P50_ITL_MS: &str = "p50_itl_ms";
    pub const P90_ITL_MS: &str = "p90_itl_ms";
    pub const P95_ITL_MS: &str = "p95_itl_ms";
    pub const P99_ITL_MS: &str = "p99_itl_ms";
    pub const MEAN_E2EL_MS: &str = "mean_e2el_ms";
    pub const P50_E2EL_MS: &str = "p50_e2el_ms";
    pub const P90_E2EL_MS: &str = "p90_e2el_ms";
    pub const P95_E2EL_MS: &str = "p95_e2el_ms";
    pub const P99_E2EL_MS: &str = "p99_e2el_ms";
    pub const MEAN_QUEUE_MS: &str = "mean_queue_ms";
    pub const P50_QUEUE_MS: &str = "p50_queue_ms";
    pub const P90_QUEUE_MS: &str = "p90_queue_ms";
    pub const P95_QUEUE_MS: &str = "p95_queue_ms";
    pub const P99_QUEUE_MS: &str = "p99_queue_ms";
    // HTTP runs (docs/SERVING.md): the closed loop's wait for a slot, E2E
    // with it, and the load generator's own health.
    pub const MEAN_CLIENT_QUEUE_MS: &str = "mean_client_queue_ms";
    pub const P50_CLIENT_QUEUE_MS: &str = "p50_client_queue_ms";
    pub const P90_CLIENT_QUEUE_MS: &str = "p90_client_queue_ms";
    pub const P95_CLIENT_QUEUE_MS: &str = "p95_client_queue_ms";
    pub const P99_CLIENT_QUEUE_MS: &str = "p99_client_queue_ms";
    pub const MEAN_E2EL_INCLUDING_CLIENT_QUEUE_MS: &str = "mean_e2el_including_client_queue_ms";
    pub const P50_E2EL_INCLUDING_CLIENT_QUEUE_MS: &str = "p50_e2el_including_client_queue_ms";
    pub const P90_E2EL_INCLUDING_CLIENT_QUEUE_MS: &str = "p90_e2el_including_client_queue_ms";
    pub const P95_E2EL_INCLUDING_CLIENT_QUEUE_MS: &str = "p95_e2el_including_client_queue_ms";
    pub const P99_E2EL_INCLUDING_CLIENT_QUEUE_MS: &str = "p99_e2el_including_client_queue_ms";
    pub const P99_SEND_LAG_MS: &str = "p99_send_lag_ms";
    pub const MAX_SEND_LAG_MS: &str = "max_send_lag_ms";
    pub const CLIENT_CPU_PERCENT: &str = "client_cpu_percent";
    // A server that reports its own timing (`engine serve`'s
    // `server_timing`): medians over the trial's requests of the engine's
    // TTFT, of the server's time to the first chunk, and of the client's
    // TTFT minus the latter (the transport: request out, chunk back).
    pub const P50_SERVER_ENGINE_TTFT_MS: &str = "p50_server_engine_ttft_ms";
    pub const P50_SERVER_FIRST_CHUNK_MS: &str = "p50_server_first_chunk_ms";
    pub const P50_TTFT_TRANSPORT_MS: &str = "p50_ttft_transport_ms";
    // Speculative decoding (vLLM's definitions), over the trial's completed
    // requests: accepted / verified draft tokens, and tokens emitted per
    // verify step (1 + accepted / drafts).
    pub const SPEC_ACCEPTANCE_RATE: &str = "spec_acceptance_rate";
    pub const SPEC_MEAN_ACCEPTED_LENGTH: &str = "spec_mean_accepted_length";

    /// The latency distributions, by base name (`ttft` → `mean_ttft_ms`, ...).
    pub const LATENCY_BASES: [&str; 7] = [
        "ttft",
        "tpot",
        "itl",
        "e2el",
        "queue",
        "client_queue",
        "e2el_including_client_queue",
    ];
    /// The statistics of each latency distribution, with the percentile
    /// each stands for (None for the mean).
    pub const LATENCY_STATS: [(&str, Option<f64>); 5] = [
        ("mean", None),
        ("p50", Some(50.0)),
        ("p90", Some(90.0)),
        ("p95", Some(95.0)),
        ("p99", Some(99.0)),
    ];

    /// `<stat>_<base>_ms`, e.g. `latency("p99", "ttft")` = `p99_ttft_ms`.
    pub fn latency(stat: &str, base: &str) -> String {
        format!("{stat}_{base}_ms")
    }
}

const fn m(
    name: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    kind: MetricKind,
) -> MetricDef {
    MetricDef {
        name,
        unit,
        higher_is_better,
        kind,
    }
}

/// One latency distribution's five metrics: mean and p50 are central, the
/// upper percentiles tail.
const fn latency_group(names: [&'static str; 5]) -> [MetricDef; 5] {
    [
        m(names[0], "ms", false, MetricKind::LatencyCentral),
        m(names[1], "ms", false, MetricKind::LatencyCentral),
        m(names[2], "ms", false, MetricKind::LatencyTail),
        m(names[3], "ms", false, MetricKind::LatencyTail),
        m(names[4], "ms", false, MetricKind::LatencyTail),
    ]
}

const LAT_TTFT: [MetricDef; 5] = latency_group([
    names::MEAN_TTFT_MS,
    names::P50_TTFT_MS,
    names::P90_TTFT_MS,
    names::P95_TTFT_MS,
    names::P99_TTFT_MS,
]);
const LAT_TPOT: [MetricDef; 5] = latency_group([
    names::MEAN_TPOT_MS,
    names::P50_TPOT_MS,
    names::P90_TPOT_MS,
    names::P95_TPOT_MS,
    names::P99_TPOT_MS,
]);
const LAT_ITL: [MetricDef; 5] = latency_group([
    names::MEAN_ITL_MS,
    names::P50_ITL_MS,
    names::P90_ITL_MS,
    names::P95_ITL_MS,
    names::P99_ITL_MS,
]);
const LAT_E2EL: [MetricDef; 5] = latency_group([
    names::MEAN_E2EL_MS,
    names::P50_E2EL_MS,
    names::P90_E2EL_MS,
    names::P95_E2EL_MS,
    names::P99_E2EL_MS,
]);
const LAT_QUEUE: [MetricDef; 5] = latency_group([
    names::MEAN_QUEUE_MS,
    names::P50_QUEUE_MS,
    names::P90_QUEUE_MS,
    names::P95_QUEUE_MS,
    names::P99_QUEUE_MS,
]);

const LAT_CLIENT_QUEUE: [MetricDef; 5] = latency_group([
    names::MEAN_CLIENT_QUEUE_MS,
    names::P50_CLIENT_QUEUE_MS,
    names::P90_CLIENT_QUEUE_MS,
    names::P95_CLIENT_QUEUE_MS,
    names::P99_CLIENT_QUEUE_MS,
]);
const LAT_E2EL_CLIENT: [MetricDef; 5] = latency_group([
    names::MEAN_E2EL_INCLUDING_CLIENT_QUEUE_MS,
    names::P50_E2EL_INCLUDING_CLIENT_QUEUE_MS,
    names::P90_E2EL_INCLUDING_CLIENT_QUEUE_MS,
    names::P95_E2EL_INCLUDING_CLIENT_QUEUE_MS,
    names::P99_E2EL_INCLUDING_CLIENT_QUEUE_MS,
]);

const OTHER: [MetricDef; 21] = [
    m(
        names::REQUEST_THROUGHPUT,
        "req/s",
        true,
        MetricKind::Throughput,
    ),
    m(
        names::OUTPUT_THROUGHPUT,
        "tok/s",
        true,
        MetricKind::Throughput,
    ),
    m(
        names::TOTAL_TOKEN_THROUGHPUT,
        "tok/s",
        true,
        MetricKind::Throughput,
    ),
    m(
        names::REQUEST_GOODPUT,
        "req/s",
        true,
        MetricKind::Throughput,
    ),
    m(names::DURATION_S, "s", false, MetricKind::Info),
    m(names::MEAN_STEP_MS, "ms", false, MetricKind::Info),
    m(names::P99_STEP_MS, "ms", false, MetricKind::Info),
    m(names::MEAN_BATCH_SIZE, "seqs", true, MetricKind::Info),
    m(names::MAX_BATCH_SIZE, "seqs", true, MetricKind::Info),
    m(names::DECODE_THROUGHPUT, "tok/s", true, MetricKind::Info),
    m(names::PEAK_MEMORY_BYTES, "B", false, MetricKind::Info),
    m(names::REJECTED_REQUESTS, "req", false, MetricKind::Info),
    m(names::P99_SEND_LAG_MS, "ms", false, MetricKind::Info),
    m(names::MAX_SEND_LAG_MS, "ms", false, MetricKind::Info),
    m(names::CLIENT_CPU_PERCENT, "%", false, MetricKind::Info),
    m(
        names::P50_SERVER_ENGINE_TTFT_MS,
        "ms",
        false,
        MetricKind::Info,
    ),
    m(
        names::P50_SERVER_FIRST_CHUNK_MS,
        "ms",
        false,
        MetricKind::Info,
    ),
    m(names::P50_TTFT_TRANSPORT_MS, "ms", false, MetricKind::Info),
    m(names::PREFIX_CACHE_HIT_RATE, "%", true, MetricKind::Info),
    m(names::SPEC_ACCEPTANCE_RATE, "ratio", true, MetricKind::Info),
    m(
        names::SPEC_MEAN_ACCEPTED_LENGTH,
        "tok",
        true,
        MetricKind::Info,
    ),
];

/// Every metric a trial may carry, by name. A trial's `metrics` map uses
/// these names (it may omit ones that do not apply, e.g. goodput without SLOs).
pub fn metric_catalog() -> Vec<MetricDef> {
    let mut v = Vec::new();
    v.extend_from_slice(&OTHER[..4]);
    for group in [
        LAT_TTFT,
        LAT_TPOT,
        LAT_ITL,
        LAT_E2EL,
        LAT_QUEUE,
        LAT_CLIENT_QUEUE,
        LAT_E2EL_CLIENT,
    ] {
        v.extend_from_slice(&group);
    }
    v.extend_from_slice(&OTHER[4..]);
    v
}

pub fn metric_def(name: &str) -> Option<MetricDef> {
    metric_catalog().into_iter().find(|d| d.name == name)
}
