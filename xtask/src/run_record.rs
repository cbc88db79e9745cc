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
    Failed { reason: String },
    TimedOut { after_s: f64 },
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

macro_rules! latency {
    ($base:literal) => {
        [
            m(
                concat!("mean_", $base, "_ms"),
                "ms",
                false,
                MetricKind::LatencyCentral,
            ),
            m(
                concat!("p50_", $base, "_ms"),
                "ms",
                false,
                MetricKind::LatencyCentral,
            ),
            m(
                concat!("p90_", $base, "_ms"),
                "ms",
                false,
                MetricKind::LatencyTail,
            ),
            m(
                concat!("p95_", $base, "_ms"),
                "ms",
                false,
                MetricKind::LatencyTail,
            ),
            m(
                concat!("p99_", $base, "_ms"),
                "ms",
                false,
                MetricKind::LatencyTail,
            ),
        ]
    };
}

const LAT_TTFT: [MetricDef; 5] = latency!("ttft");
const LAT_TPOT: [MetricDef; 5] = latency!("tpot");
const LAT_ITL: [MetricDef; 5] = latency!("itl");
const LAT_E2EL: [MetricDef; 5] = latency!("e2el");
const LAT_QUEUE: [MetricDef; 5] = latency!("queue");
const LAT_CLIENT_QUEUE: [MetricDef; 5] = latency!("client_queue");
const LAT_E2EL_CLIENT: [MetricDef; 5] = latency!("e2el_including_client_queue");

const OTHER: [MetricDef; 14] = [
    m("request_throughput", "req/s", true, MetricKind::Throughput),
    m("output_throughput", "tok/s", true, MetricKind::Throughput),
    m(
        "total_token_throughput",
        "tok/s",
        true,
        MetricKind::Throughput,
    ),
    m("request_goodput", "req/s", true, MetricKind::Throughput),
    m("duration_s", "s", false, MetricKind::Info),
    m("mean_step_ms", "ms", false, MetricKind::Info),
    m("p99_step_ms", "ms", false, MetricKind::Info),
    m("mean_batch_size", "seqs", true, MetricKind::Info),
    m("max_batch_size", "seqs", true, MetricKind::Info),
    m("decode_throughput", "tok/s", true, MetricKind::Info),
    m("peak_memory_bytes", "B", false, MetricKind::Info),
    // The HTTP load generator's own health (see docs/SERVING.md).
    m("p99_send_lag_ms", "ms", false, MetricKind::Info),
    m("max_send_lag_ms", "ms", false, MetricKind::Info),
    m("client_cpu_percent", "%", false, MetricKind::Info),
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
