//! One trial's records and step log → the metrics of `run_record::metric_catalog`.
//!
//! Definitions follow vLLM's benchmark_serving (see DESIGN.md) so numbers
//! are comparable: TTFT = first token − arrival (queueing included),
//! E2E = finish − arrival, TPOT = (E2E − TTFT) / (output tokens − 1) per
//! request with more than one output token, ITL = every gap between
//! consecutive tokens pooled over requests, queue = scheduled − arrival.
//! Throughputs are over the benchmark duration, first arrival → last finish.
//! Percentiles and means come from the raw values, percentiles with numpy's
//! default linear interpolation (`stats::percentiles`), exactly as
//! `vllm bench serve` computes them.

use std::collections::BTreeMap;

use workloads::{RecordStatus, RequestRecord, StepLogEntry};

use crate::run_record::names;
use crate::stats;

/// Service-level objectives for goodput, in milliseconds. A request counts
/// towards goodput when it meets every objective that is set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slos {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
}

impl Slos {
    pub fn is_empty(&self) -> bool {
        self.ttft_ms.is_none() && self.tpot_ms.is_none() && self.e2el_ms.is_none()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    #[error("no request completed ({rejected} rejected, {total} in all)")]
    NothingCompleted { rejected: usize, total: usize },
    #[error("record {id} is ok but has no {field}")]
    MissingTime { id: u64, field: &'static str },
    #[error("record {id}: {message}")]
    Inconsistent { id: u64, message: String },
}

/// What one trial measured.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialMetrics {
    /// Catalogue metric name → value.
    pub values: BTreeMap<String, f64>,
    pub completed: usize,
    /// Rejected requests: counted here (and as `rejected_requests`), kept
    /// out of every latency.
    pub rejected: usize,
    /// Requests the engine stopped because their logits were not finite
    /// (`nonfinite_logits`): failed requests, kept out of every metric.
    pub failed: usize,
    /// blake3 over every record's `output_hash` in id order.
    pub output_hash: String,
}

/// Per-request latencies of the completed requests, in seconds (the vLLM
/// export needs them raw; the metrics summarise them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latencies {
    pub ttft_s: Vec<f64>,
    pub tpot_s: Vec<f64>,
    /// Per request, its gaps between consecutive tokens.
    pub itl_s: Vec<Vec<f64>>,
    pub e2el_s: Vec<f64>,
    /// Server-side queueing; only records that know when they were
    /// scheduled (the engine's, not an HTTP client's).
    pub queue_s: Vec<f64>,
    /// HTTP client records only: time waiting for a concurrency slot, and
    /// E2E with that wait included.
    pub client_queue_s: Vec<f64>,
    pub e2el_including_client_queue_s: Vec<f64>,
}

pub fn latencies(completed: &[&RequestRecord]) -> Result<Latencies, MetricsError> {
    let mut out = Latencies::default();
    for r in completed {
        let first = r.first_token_s.ok_or(MetricsError::MissingTime {
            id: r.id,
            field: "first_token_s",
        })?;
        let finish = r.finish_s.ok_or(MetricsError::MissingTime {
            id: r.id,
            field: "finish_s",
        })?;
        // An HTTP client cannot see when the server scheduled a request.
        let scheduled = match (r.scheduled_s, &r.client) {
            (Some(s), _) => Some(s),
            (None, Some(_)) => None,
            (None, None) => {
                return Err(MetricsError::MissingTime {
                    id: r.id,
                    field: "scheduled_s",
                })
            }
        };
        if finish < r.arrival_s || first < r.arrival_s {
            return Err(MetricsError::Inconsistent {
                id: r.id,
                message: "a token time precedes the arrival".into(),
            });
        }
        let ttft = first - r.arrival_s;
        let e2el = finish - r.arrival_s;
        out.ttft_s.push(ttft);
        out.e2el_s.push(e2el);
        if let Some(s) = scheduled {
            out.queue_s.push(s - r.arrival_s);
        }
        if let Some(c) = &r.client {
            out.client_queue_s.push(c.slot_wait_s);
            out.e2el_including_client_queue_s.push(e2el + c.slot_wait_s);
        }
        if r.output_len > 1 {
            out.tpot_s.push((e2el - ttft) / f64::from(r.output_len - 1));
        }
        out.itl_s
            .push(r.token_times_s.windows(2).map(|w| w[1] - w[0]).collect());
    }
    Ok(out)
}

/// Computes a trial's metrics. `peak_memory_bytes` comes from the engine's
/// summary; goodput is reported only when `slos` sets an objective.
pub fn compute(
    records: &[RequestRecord],
    steps: &[StepLogEntry],
    peak_memory_bytes: Option<u64>,
    slos: &Slos,
) -> Result<TrialMetrics, MetricsError> {
    let completed: Vec<&RequestRecord> = records
        .iter()
        .filter(|r| r.status == RecordStatus::Ok)
        .collect();
    let rejected = records
        .iter()
        .filter(|r| matches!(r.status, RecordStatus::Rejected { .. }))
        .count();
    let failed = records.len() - completed.len() - rejected;
    if completed.is_empty() {
        return Err(MetricsError::NothingCompleted {
            rejected,
            total: records.len(),
        });
    }
    let lat = latencies(&completed)?;
    let mut values = BTreeMap::new();

    let first_arrival = completed
        .iter()
        .map(|r| r.arrival_s)
        .fold(f64::INFINITY, f64::min);
    let last_finish = completed
        .iter()
        .filter_map(|r| r.finish_s)
        .fold(f64::NEG_INFINITY, f64::max);
    let duration = last_finish - first_arrival;
    if duration <= 0.0 {
        return Err(MetricsError::Inconsistent {
            id: completed[0].id,
            message: format!("benchmark duration is {duration} s"),
        });
    }
    let input_tokens: u64 = completed.iter().map(|r| u64::from(r.prompt_len)).sum();
    let output_tokens: u64 = completed.iter().map(|r| u64::from(r.output_len)).sum();
    values.insert(names::DURATION_S.into(), duration);
    values.insert(names::REJECTED_REQUESTS.into(), rejected as f64);
    values.insert(
        names::REQUEST_THROUGHPUT.into(),
        completed.len() as f64 / duration,
    );
    values.insert(
        names::OUTPUT_THROUGHPUT.into(),
        output_tokens as f64 / duration,
    );
    values.insert(
        names::TOTAL_TOKEN_THROUGHPUT.into(),
        (input_tokens + output_tokens) as f64 / duration,
    );

    // The engine says how much of each prompt it found in its prefix cache
    // (when first scheduled); over HTTP only servers that report
    // `usage.prompt_tokens_details.cached_tokens` do.
    let cache_counts: Vec<(u64, u64)> = completed
        .iter()
        .filter_map(|r| Some((u64::from(r.num_cached_tokens?), u64::from(r.prompt_len))))
        .collect();
    if !cache_counts.is_empty() {
        let (cached, prompt) = cache_counts
            .iter()
            .fold((0, 0), |(c, p), &(rc, rp)| (c + rc, p + rp));
        if prompt > 0 {
            values.insert(
                names::PREFIX_CACHE_HIT_RATE.into(),
                100.0 * cached as f64 / prompt as f64,
            );
        }
    }

    if !slos.is_empty() {
        let good = (0..completed.len())
            .filter(|&i| meets_slos(&lat, completed[i], i, slos))
            .count();
        values.insert(names::REQUEST_GOODPUT.into(), good as f64 / duration);
    }

    let itl: Vec<f64> = lat.itl_s.iter().flatten().copied().collect();
    for (base, samples) in names::LATENCY_BASES.into_iter().zip([
        &lat.ttft_s,
        &lat.tpot_s,
        &itl,
        &lat.e2el_s,
        &lat.queue_s,
        &lat.client_queue_s,
        &lat.e2el_including_client_queue_s,
    ]) {
        insert_distribution(&mut values, base, samples);
    }

    let busy: Vec<&StepLogEntry> = steps.iter().filter(|s| s.batch_size > 0).collect();
    if !busy.is_empty() {
        let step_s: Vec<f64> = busy.iter().map(|s| s.duration_s).collect();
        values.insert(names::MEAN_STEP_MS.into(), stats::mean(&step_s) * 1e3);
        values.insert(
            names::P99_STEP_MS.into(),
            percentiles_ms(&step_s, &[99.0])[0],
        );
        let sizes: Vec<f64> = busy.iter().map(|s| f64::from(s.batch_size)).collect();
        values.insert(names::MEAN_BATCH_SIZE.into(), stats::mean(&sizes));
        values.insert(
            names::MAX_BATCH_SIZE.into(),
            sizes.iter().copied().fold(0.0, f64::max),
        );
        // Decode speed alone: tokens of pure decode steps over their time, so
        // prefill steps do not dilute it (the batch-saturation view). With
        // speculative decoding a decode also emits its accepted drafts.
        let (tokens, secs) = busy
            .iter()
            .filter(|s| s.prefill_tokens == 0 && s.decode_tokens > 0)
            .fold((0.0, 0.0), |(t, d), s| {
                let emitted = f64::from(s.decode_tokens) + f64::from(s.spec_accepted_tokens);
                (t + emitted, d + s.duration_s)
            });
        if secs > 0.0 {
            values.insert(names::DECODE_THROUGHPUT.into(), tokens / secs);
        }
    }
    insert_spec_decode(&mut values, &completed);
    if let Some(bytes) = peak_memory_bytes {
        values.insert(names::PEAK_MEMORY_BYTES.into(), bytes as f64);
    }

    Ok(TrialMetrics {
        values,
        completed: completed.len(),
        rejected,
        failed,
        output_hash: output_hash(records),
    })
}

/// Speculative decoding's acceptance over the requests that verified
/// drafts (nothing when none did).
fn insert_spec_decode(values: &mut BTreeMap<String, f64>, completed: &[&RequestRecord]) {
    let (drafts, draft_tokens, accepted) = completed
        .iter()
        .filter_map(|r| r.spec_decode.as_ref())
        .fold((0u64, 0u64, 0u64), |(d, t, a), s| {
            (
                d + u64::from(s.num_drafts),
                t + u64::from(s.num_draft_tokens),
                a + u64::from(s.num_accepted_tokens),
            )
        });
    if drafts == 0 || draft_tokens == 0 {
        return;
    }
    values.insert(
        names::SPEC_ACCEPTANCE_RATE.into(),
        accepted as f64 / draft_tokens as f64,
    );
    values.insert(
        names::SPEC_MEAN_ACCEPTED_LENGTH.into(),
        1.0 + accepted as f64 / drafts as f64,
    );
}

/// blake3 over each record's `output_hash` (hex text) in request-id order:
/// one hash that changes when any request's output changes.
pub fn output_hash(records: &[RequestRecord]) -> String {
    let mut sorted: Vec<&RequestRecord> = records.iter().collect();
    sorted.sort_by_key(|r| r.id);
    let mut h = blake3::Hasher::new();
    for r in sorted {
        h.update(&r.id.to_le_bytes());
        h.update(r.output_hash.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

fn meets_slos(lat: &Latencies, record: &RequestRecord, i: usize, slos: &Slos) -> bool {
    let within = |limit: Option<f64>, value_s: Option<f64>| match (limit, value_s) {
        (Some(ms), Some(v)) => v * 1e3 <= ms,
        _ => true,
    };
    let tpot = if record.output_len > 1 {
        let ttft = lat.ttft_s[i];
        Some((lat.e2el_s[i] - ttft) / f64::from(record.output_len - 1))
    } else {
        None
    };
    within(slos.ttft_ms, Some(lat.ttft_s[i]))
        && within(slos.tpot_ms, tpot)
        && within(slos.e2el_ms, Some(lat.e2el_s[i]))
}

fn insert_distribution(values: &mut BTreeMap<String, f64>, base: &str, samples_s: &[f64]) {
    if samples_s.is_empty() {
        return;
    }
    let mut sorted = samples_s.to_vec();
    sorted.sort_by(f64::total_cmp);
    for (stat, percent) in names::LATENCY_STATS {
        let seconds = match percent {
            None => stats::mean(&sorted),
            Some(p) => stats::percentile_of_sorted(&sorted, p),
        };
        // vLLM takes the percentile of seconds, then scales to ms.
        values.insert(names::latency(stat, base), seconds * 1e3);
    }
}

/// Percentiles (0..=100) of `samples_s` (seconds) in milliseconds, numpy's
/// linear method on the raw values (what `vllm bench serve` reports).
pub fn percentiles_ms(samples_s: &[f64], percents: &[f64]) -> Vec<f64> {
    stats::percentiles(samples_s, percents)
        .into_iter()
        .map(|s| s * 1e3)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use workloads::FinishReason;

    /// A completed request arriving at `arrival`, scheduled at `sched`, with
    /// tokens at `times`.
    fn rec(id: u64, arrival: f64, sched: f64, times: &[f64], prompt_len: u32) -> RequestRecord {
        RequestRecord {
            id,
            status: RecordStatus::Ok,
            arrival_s: arrival,
            scheduled_s: Some(sched),
            first_token_s: times.first().copied(),
            token_times_s: times.to_vec(),
            finish_s: times.last().copied(),
            finish_reason: FinishReason::Length,
            prompt_len,
            output_len: times.len() as u32,
            preemptions: 0,
            num_cached_tokens: None,
            output_hash: format!("h{id}"),
            output_token_ids: vec![],
            client: None,
            spec_decode: None,
        }
    }

    fn rejected(id: u64) -> RequestRecord {
        RequestRecord {
            id,
            status: RecordStatus::Rejected {
                reason: "too long".into(),
            },
            arrival_s: 0.0,
            scheduled_s: None,
            first_token_s: None,
            token_times_s: vec![],
            finish_s: None,
            finish_reason: FinishReason::Rejected,
            prompt_len: 9999,
            output_len: 0,
            preemptions: 0,
            num_cached_tokens: None,
            output_hash: String::new(),
            output_token_ids: vec![],
            client: None,
            spec_decode: None,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 + 1e-3 * b.abs()
    }

    #[test]
    fn two_requests_known_answers() {
        // r0: arrives 0.0, scheduled 0.1, tokens at 0.5, 0.6, 0.8 (3 tokens).
        // r1: arrives 1.0, scheduled 1.0, tokens at 1.2, 1.3 (2 tokens).
        let records = vec![
            rec(0, 0.0, 0.1, &[0.5, 0.6, 0.8], 10),
            rec(1, 1.0, 1.0, &[1.2, 1.3], 20),
        ];
        let m = compute(&records, &[], None, &Slos::default()).unwrap();
        let v = &m.values;
        // Duration: first arrival 0.0 → last finish 1.3.
        assert!(close(v["duration_s"], 1.3));
        assert!(close(v["request_throughput"], 2.0 / 1.3));
        assert!(close(v["output_throughput"], 5.0 / 1.3));
        assert!(close(v["total_token_throughput"], 35.0 / 1.3));
        // TTFT 500 and 200 ms.
        assert!(close(v["mean_ttft_ms"], 350.0));
        // E2E 800 and 300 ms.
        assert!(close(v["mean_e2el_ms"], 550.0));
        // TPOT (800-500)/2 = 150 and (300-200)/1 = 100.
        assert!(close(v["mean_tpot_ms"], 125.0));
        // ITL pooled: 100, 200, 100 ms.
        assert!(close(v["mean_itl_ms"], 400.0 / 3.0));
        assert!(close(v["p50_itl_ms"], 100.0), "{v:?}");
        // numpy linear: [100, 100, 200], h = 2 * 0.99 = 1.98 -> 198
        assert!(close(v["p99_itl_ms"], 198.0));
        // Queue 100 and 0 ms.
        assert!(close(v["mean_queue_ms"], 50.0));
        assert!(close(v["p99_queue_ms"], 99.0));
        assert!(!v.contains_key("request_goodput"));
        assert_eq!(m.completed, 2);
        assert_eq!(m.rejected, 0);
    }

    #[test]
    fn percentiles_of_one_to_hundred_ms() {
        let samples: Vec<f64> = (1..=100).map(|i| i as f64 / 1e3).collect();
        let p = percentiles_ms(&samples, &[50.0, 90.0, 95.0, 99.0]);
        // numpy: h = 99 * q -> 50.5, 90.1, 95.05, 99.01 ms
        for (got, want) in p.iter().zip([50.5, 90.1, 95.05, 99.01]) {
            assert!(close(*got, want), "{got} vs {want}");
        }
    }

    #[test]
    fn rejected_requests_are_counted_and_kept_out_of_latency() {
        let records = vec![rec(0, 0.0, 0.0, &[0.1, 0.2], 4), rejected(1)];
        let m = compute(&records, &[], None, &Slos::default()).unwrap();
        assert_eq!((m.completed, m.rejected), (1, 1));
        assert!(close(m.values["mean_ttft_ms"], 100.0));
        // Rejected prompt tokens do not count towards throughput.
        assert!(close(m.values["total_token_throughput"], 6.0 / 0.2));
    }

    #[test]
    fn all_rejected_is_an_error() {
        let err = compute(&[rejected(0)], &[], None, &Slos::default()).unwrap_err();
        assert_eq!(
            err,
            MetricsError::NothingCompleted {
                rejected: 1,
                total: 1
            }
        );
    }

    #[test]
    fn goodput_counts_requests_meeting_every_slo() {
        let records = vec![
            rec(0, 0.0, 0.0, &[0.5, 0.6, 0.8], 1), // ttft 500, tpot 150
            rec(1, 1.0, 1.0, &[1.2, 1.3], 1),      // ttft 200, tpot 100
        ];
        let slos = Slos {
            ttft_ms: Some(300.0),
            tpot_ms: Some(200.0),
            e2el_ms: None,
        };
        let m = compute(&records, &[], None, &slos).unwrap();
        assert!(close(m.values["request_goodput"], 1.0 / 1.3));
    }

    #[test]
    fn step_stats_skip_idle_steps() {
        let step = |i: u64, dur: f64, bs: u32| StepLogEntry {
            step: i,
            start_s: i as f64,
            duration_s: dur,
            batch_size: bs,
            prefill_tokens: 0,
            decode_tokens: bs,
            num_waiting: 0,
            kv_blocks_used: 0,
            kv_blocks_total: 1,
            preempted: 0,
            prefix_cache_queries: 0,
            prefix_cache_hits: 0,
            spec_draft_tokens: 0,
            spec_accepted_tokens: 0,
        };
        let mut prefill = step(3, 1.0, 1);
        prefill.prefill_tokens = 100;
        prefill.decode_tokens = 0;
        let steps = vec![step(0, 0.010, 2), step(1, 0.020, 4), step(2, 0.5, 0)];
        let records = vec![rec(0, 0.0, 0.0, &[0.1], 1)];
        let mut with_prefill = steps.clone();
        with_prefill.push(prefill);
        let m = compute(&records, &with_prefill, None, &Slos::default()).unwrap();
        // 6 decode tokens in 30 ms; the prefill step is left out.
        assert!(close(m.values["decode_throughput"], 200.0));
        let m = compute(&records, &steps, Some(1234), &Slos::default()).unwrap();
        assert!(close(m.values["mean_step_ms"], 15.0));
        assert!(close(m.values["p99_step_ms"], 19.9));
        assert!(close(m.values["mean_batch_size"], 3.0));
        assert_eq!(m.values["max_batch_size"], 4.0);
        assert_eq!(m.values["peak_memory_bytes"], 1234.0);
        // One output token: no TPOT sample, no ITL gap.
        assert!(!m.values.contains_key("mean_tpot_ms"));
        assert!(!m.values.contains_key("mean_itl_ms"));
    }

    #[test]
    fn spec_decode_acceptance_pools_requests_and_decode_speed_counts_accepted() {
        let mut a = rec(0, 0.0, 0.0, &[0.1, 0.2, 0.3, 0.4], 1);
        a.spec_decode = Some(workloads::record::SpecDecodeStats::new(2, 8, 2));
        let mut b = rec(1, 0.0, 0.0, &[0.1, 0.2], 1);
        b.spec_decode = Some(workloads::record::SpecDecodeStats::new(1, 4, 4));
        let plain = rec(2, 0.0, 0.0, &[0.1, 0.2], 1);
        let decode = StepLogEntry {
            step: 0,
            start_s: 0.0,
            duration_s: 0.5,
            batch_size: 2,
            prefill_tokens: 0,
            decode_tokens: 2,
            num_waiting: 0,
            kv_blocks_used: 1,
            kv_blocks_total: 1,
            preempted: 0,
            prefix_cache_queries: 0,
            prefix_cache_hits: 0,
            spec_draft_tokens: 6,
            spec_accepted_tokens: 3,
        };
        let m = compute(&[a, b, plain.clone()], &[decode], None, &Slos::default()).unwrap();
        assert!(close(m.values[names::SPEC_ACCEPTANCE_RATE], 6.0 / 12.0));
        assert!(close(
            m.values[names::SPEC_MEAN_ACCEPTED_LENGTH],
            1.0 + 6.0 / 3.0
        ));
        assert!(close(m.values[names::DECODE_THROUGHPUT], 5.0 / 0.5));
        let m = compute(&[plain], &[], None, &Slos::default()).unwrap();
        assert!(!m.values.contains_key(names::SPEC_ACCEPTANCE_RATE));
    }

    #[test]
    fn output_hash_ignores_record_order_and_sees_changes() {
        let a = vec![rec(0, 0.0, 0.0, &[0.1], 1), rec(1, 0.0, 0.0, &[0.1], 1)];
        let b = vec![a[1].clone(), a[0].clone()];
        assert_eq!(output_hash(&a), output_hash(&b));
        let mut c = a.clone();
        c[1].output_hash = "other".into();
        assert_ne!(output_hash(&a), output_hash(&c));
    }

    #[test]
    fn prefix_cache_hit_rate_is_cached_over_prompt_tokens_of_engine_records() {
        let mut records = vec![
            rec(0, 0.0, 0.0, &[0.1, 0.2], 48),
            rec(1, 0.0, 0.0, &[0.1, 0.2], 16),
            rejected(2),
        ];
        let m = compute(&records, &[], None, &Slos::default()).unwrap();
        assert!(
            !m.values.contains_key(names::PREFIX_CACHE_HIT_RATE),
            "unknown"
        );
        records[0].num_cached_tokens = Some(32);
        records[1].num_cached_tokens = Some(0);
        let m = compute(&records, &[], None, &Slos::default()).unwrap();
        // 32 of 64 prompt tokens; the rejected request is not counted.
        assert!(close(m.values[names::PREFIX_CACHE_HIT_RATE], 50.0));
    }

    #[test]
    fn every_metric_name_is_in_the_catalogue() {
        let slos = Slos {
            ttft_ms: Some(1.0),
            ..Slos::default()
        };
        let prefill = StepLogEntry {
            step: 0,
            start_s: 0.0,
            duration_s: 0.01,
            batch_size: 1,
            prefill_tokens: 1,
            decode_tokens: 0,
            num_waiting: 0,
            kv_blocks_used: 1,
            kv_blocks_total: 1,
            preempted: 0,
            prefix_cache_queries: 0,
            prefix_cache_hits: 0,
            spec_draft_tokens: 0,
            spec_accepted_tokens: 0,
        };
        let decode = StepLogEntry {
            step: 1,
            prefill_tokens: 0,
            decode_tokens: 1,
            ..prefill.clone()
        };
        let steps = vec![prefill, decode];
        let mut records = vec![rec(0, 0.0, 0.0, &[0.1, 0.2, 0.3], 1)];
        records[0].num_cached_tokens = Some(0);
        records[0].spec_decode = Some(workloads::record::SpecDecodeStats::new(1, 2, 1));
        let m = compute(&records, &steps, Some(1), &slos).unwrap();
        let names: Vec<&str> = crate::run_record::metric_catalog()
            .iter()
            .map(|d| d.name)
            .collect();
        for k in m.values.keys() {
            assert!(names.contains(&k.as_str()), "{k} not in catalogue");
        }
        // Only an HTTP client measures its own queue, lag and CPU, and the
        // split of its TTFT by the server's timing.
        let in_process = names
            .iter()
            .filter(|n| {
                !n.contains("client")
                    && !n.contains("send_lag")
                    && !n.contains("server_")
                    && !n.contains("transport")
            })
            .count();
        assert_eq!(m.values.len(), in_process);
    }

    #[test]
    fn client_records_have_client_queue_and_no_server_queue() {
        let mut r = rec(0, 1.0, 1.0, &[1.1, 1.2], 1);
        r.scheduled_s = None;
        r.client = Some(workloads::ClientTiming {
            intended_s: 0.0,
            slot_wait_s: 1.0,
            send_lag_s: 0.0,
            itl_basis: workloads::ItlBasis::Token,
            chunks: 2,
            intended_prompt_len: None,
            server_engine_ttft_s: None,
            server_first_chunk_s: None,
        });
        let m = compute(&[r], &[], None, &Slos::default()).unwrap();
        assert!(!m.values.contains_key(names::MEAN_QUEUE_MS));
        assert!(close(m.values[names::MEAN_CLIENT_QUEUE_MS], 1000.0));
        assert!(close(m.values[names::MEAN_E2EL_MS], 200.0));
        assert!(close(
            m.values[names::MEAN_E2EL_INCLUDING_CLIENT_QUEUE_MS],
            1200.0
        ));
        // An engine record without a scheduling time is still an error.
        let mut bad = rec(1, 0.0, 0.0, &[0.1], 1);
        bad.scheduled_s = None;
        assert!(compute(&[bad], &[], None, &Slos::default()).is_err());
    }

    #[test]
    fn missing_first_token_is_an_error() {
        let mut r = rec(3, 0.0, 0.0, &[0.1], 1);
        r.first_token_s = None;
        let err = compute(&[r], &[], None, &Slos::default()).unwrap_err();
        assert_eq!(
            err,
            MetricsError::MissingTime {
                id: 3,
                field: "first_token_s"
            }
        );
    }
}
