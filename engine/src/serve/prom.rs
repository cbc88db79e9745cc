//! `/metrics` in the Prometheus text format, with vLLM's metric names so
//! dashboards and scrapers built for vLLM read `engine serve` unchanged.
//! Times are seconds on the engine's clock, measured inside the server
//! (from the request's arrival at the HTTP handler), as vLLM does.
//!
//! The exposition format is a few lines per metric; writing it here keeps
//! the `serve` feature to tokio + axum.

use std::fmt::Write as _;
use std::sync::Mutex;

use workloads::{FinishReason, RecordStatus, RequestRecord, StepLogEntry};

use crate::engine::Engine;

/// vLLM's TTFT buckets, with finer ones below 1 ms for fast engines.
const TTFT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
    0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's inter-token buckets, with finer ones below 10 ms.
const ITL_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];
/// vLLM's request-latency buckets, with finer ones below 0.3 s.
const E2E_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Clone)]
struct Inner {
    running: usize,
    waiting: usize,
    kv_usage: f64,
    kv_blocks_used: usize,
    prompt_tokens: u64,
    generation_tokens: u64,
    preemptions: u64,
    /// Prefix caching: tokens looked up at admission, and found.
    prefix_cache_queries: u64,
    prefix_cache_hits: u64,
    /// Speculative decoding: draft tokens verified and accepted.
    spec_draft_tokens: u64,
    spec_accepted_tokens: u64,
    /// By OpenAI finish reason: stop, length, abort.
    success: [(&'static str, u64); 3],
    ttft: Histogram,
    itl: Histogram,
    tpot: Histogram,
    e2e: Histogram,
    queue: Histogram,
}

/// The server's metrics, shared by the engine thread (writes) and the
/// `/metrics` handler (reads).
#[derive(Debug)]
pub(crate) struct ServerMetrics {
    labels: String,
    inner: Mutex<Inner>,
}

impl ServerMetrics {
    pub fn new(model_name: &str) -> ServerMetrics {
        let escaped = model_name.replace('\\', "\\\\").replace('"', "\\\"");
        ServerMetrics {
            labels: format!("model_name=\"{escaped}\",engine=\"0\""),
            inner: Mutex::new(Inner {
                running: 0,
                waiting: 0,
                kv_usage: 0.0,
                kv_blocks_used: 0,
                prompt_tokens: 0,
                generation_tokens: 0,
                preemptions: 0,
                prefix_cache_queries: 0,
                prefix_cache_hits: 0,
                spec_draft_tokens: 0,
                spec_accepted_tokens: 0,
                success: [("stop", 0), ("length", 0), ("abort", 0)],
                ttft: Histogram::new(TTFT_BUCKETS),
                itl: Histogram::new(ITL_BUCKETS),
                tpot: Histogram::new(ITL_BUCKETS),
                e2e: Histogram::new(E2E_BUCKETS),
                queue: Histogram::new(E2E_BUCKETS),
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A panic while holding the lock leaves counters that are still
        // worth reporting.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn set_engine_state(&self, engine: &Engine) {
        let total = engine.num_kv_blocks().max(1);
        let used = engine.kv_blocks_in_use();
        self.with(|m| {
            m.running = engine.num_running();
            m.waiting = engine.num_waiting();
            m.kv_blocks_used = used;
            m.kv_usage = used as f64 / total as f64;
        });
    }

    pub fn observe_step(&self, step: &StepLogEntry) {
        self.with(|m| {
            m.prompt_tokens += u64::from(step.prefill_tokens);
            m.preemptions += u64::from(step.preempted);
            m.prefix_cache_queries += step.prefix_cache_queries;
            m.prefix_cache_hits += step.prefix_cache_hits;
            m.spec_draft_tokens += u64::from(step.spec_draft_tokens);
            m.spec_accepted_tokens += u64::from(step.spec_accepted_tokens);
        });
    }

    pub fn observe_finished(&self, r: &RequestRecord) {
        if r.status != RecordStatus::Ok {
            return;
        }
        self.with(|m| {
            m.generation_tokens += u64::from(r.output_len);
            let reason = match r.finish_reason {
                FinishReason::Length => 1,
                _ => 0,
            };
            m.success[reason].1 += 1;
            if let (Some(first), Some(finish)) = (r.first_token_s, r.finish_s) {
                m.ttft.observe(first - r.arrival_s);
                m.e2e.observe(finish - r.arrival_s);
                if r.output_len > 1 {
                    m.tpot
                        .observe((finish - first) / f64::from(r.output_len - 1));
                }
            }
            if let Some(s) = r.scheduled_s {
                m.queue.observe(s - r.arrival_s);
            }
            for w in r.token_times_s.windows(2) {
                m.itl.observe(w[1] - w[0]);
            }
        });
    }

    pub fn observe_abort(&self) {
        self.with(|m| m.success[2].1 += 1);
    }

    pub fn render(&self) -> String {
        let m = self.with(|m| m.clone());
        let l = &self.labels;
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{l}}} {v}"
            );
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{l}}} {v}"
            );
        };
        gauge(
            &mut out,
            "vllm:num_requests_running",
            "Requests in the running batch.",
            m.running as f64,
        );
        gauge(
            &mut out,
            "vllm:num_requests_waiting",
            "Requests waiting to be scheduled.",
            m.waiting as f64,
        );
        gauge(
            &mut out,
            "vllm:kv_cache_usage_perc",
            "Fraction of KV-cache blocks in use (1 = full).",
            m.kv_usage,
        );
        gauge(
            &mut out,
            "vllm:gpu_cache_usage_perc",
            "Same as vllm:kv_cache_usage_perc (older vLLM name).",
            m.kv_usage,
        );
        gauge(
            &mut out,
            "dyno:kv_cache_blocks_used",
            "KV-cache blocks in use.",
            m.kv_blocks_used as f64,
        );
        counter(
            &mut out,
            "vllm:prompt_tokens_total",
            "Prefill tokens computed (recomputation after preemption included).",
            m.prompt_tokens,
        );
        counter(
            &mut out,
            "vllm:generation_tokens_total",
            "Tokens generated by finished requests.",
            m.generation_tokens,
        );
        counter(
            &mut out,
            "vllm:num_preemptions_total",
            "Preemptions (by recompute).",
            m.preemptions,
        );
        counter(
            &mut out,
            "vllm:prefix_cache_queries_total",
            "Prefix cache: tokens of the requests looked up at admission.",
            m.prefix_cache_queries,
        );
        counter(
            &mut out,
            "vllm:prefix_cache_hits_total",
            "Prefix cache: of those, tokens found cached.",
            m.prefix_cache_hits,
        );
        counter(
            &mut out,
            "vllm:spec_decode_num_draft_tokens_total",
            "Speculative decoding: draft tokens verified.",
            m.spec_draft_tokens,
        );
        counter(
            &mut out,
            "vllm:spec_decode_num_accepted_tokens_total",
            "Speculative decoding: draft tokens accepted.",
            m.spec_accepted_tokens,
        );
        let name = "vllm:request_success_total";
        let _ = writeln!(out, "# HELP {name} Finished requests by finish reason (abort: the client went away).\n# TYPE {name} counter");
        for (reason, n) in m.success {
            let _ = writeln!(out, "{name}{{{l},finished_reason=\"{reason}\"}} {n}");
        }
        m.ttft.render(
            &mut out,
            "vllm:time_to_first_token_seconds",
            "Time to first token, from arrival.",
            l,
        );
        m.itl.render(
            &mut out,
            "vllm:inter_token_latency_seconds",
            "Gap between consecutive tokens of a request.",
            l,
        );
        m.tpot.render(
            &mut out,
            "vllm:time_per_output_token_seconds",
            "Per request: (last token - first token) / (output tokens - 1).",
            l,
        );
        m.e2e.render(
            &mut out,
            "vllm:e2e_request_latency_seconds",
            "Arrival to last token.",
            l,
        );
        m.queue.render(
            &mut out,
            "vllm:request_queue_time_seconds",
            "Arrival to first scheduled.",
            l,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_named() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 2.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 4\n"), "{out}");
    }

    #[test]
    fn steps_feed_the_prefix_cache_counters() {
        let m = ServerMetrics::new("tiny");
        let step = StepLogEntry {
            step: 0,
            start_s: 0.0,
            duration_s: 0.01,
            batch_size: 2,
            prefill_tokens: 40,
            decode_tokens: 0,
            num_waiting: 0,
            kv_blocks_used: 4,
            kv_blocks_total: 8,
            preempted: 0,
            prefix_cache_queries: 72,
            prefix_cache_hits: 32,
            spec_draft_tokens: 0,
            spec_accepted_tokens: 0,
        };
        m.observe_step(&step);
        m.observe_step(&step);
        let text = m.render();
        assert!(
            text.contains("vllm:prefix_cache_queries_total{model_name=\"tiny\",engine=\"0\"} 144"),
            "{text}"
        );
        assert!(text.contains("vllm:prefix_cache_hits_total{model_name=\"tiny\",engine=\"0\"} 64"));
    }

    #[test]
    fn finished_requests_feed_counters_and_histograms() {
        let m = ServerMetrics::new("tiny");
        m.observe_finished(&RequestRecord {
            id: 1,
            status: RecordStatus::Ok,
            arrival_s: 0.0,
            scheduled_s: Some(0.001),
            first_token_s: Some(0.01),
            token_times_s: vec![0.01, 0.02, 0.03],
            finish_s: Some(0.03),
            finish_reason: FinishReason::Length,
            prompt_len: 4,
            output_len: 3,
            preemptions: 0,
            num_cached_tokens: None,
            output_hash: String::new(),
            output_token_ids: vec![1, 2, 3],
            client: None,
            spec_decode: None,
        });
        m.observe_abort();
        let text = m.render();
        assert!(
            text.contains("vllm:generation_tokens_total{model_name=\"tiny\",engine=\"0\"} 3"),
            "{text}"
        );
        assert!(text.contains("finished_reason=\"length\"} 1"));
        assert!(text.contains("finished_reason=\"abort\"} 1"));
        assert!(text.contains(
            "vllm:inter_token_latency_seconds_count{model_name=\"tiny\",engine=\"0\"} 2"
        ));
        assert!(text.contains("vllm:time_to_first_token_seconds_sum"));
    }
}
