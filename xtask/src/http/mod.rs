//! The HTTP driver: `cargo xtask bench --target URL` (any OpenAI-compatible
//! server, optionally started by `--launch`) and `--serve` (`engine serve`,
//! started per trial). It is a second driver beside the `engine bench`
//! process and produces the same `RequestRecord`s, with client-side times
//! (see [`client`] for the timing semantics and docs/SERVING.md).

pub mod client;
pub mod driver;
pub mod server;
pub mod text_prompt;

use workloads::RequestRecord;

use crate::metrics::percentiles_ms;
use crate::run_record::names;
use crate::warnings::Warning;

/// When the load generator's p99 send lag reaches this share of the
/// workload's pace (the mean gap between arrivals in an open loop, the
/// median E2E in a closed loop, where a late send delays the next request)
/// and at least [`LAG_FLOOR_MS`], it warns that it, not the workload, set
/// the load.
pub const LAG_SHARE_OF_PACE: f64 = 0.05;
pub const LAG_FLOOR_MS: f64 = 1.0;
/// Client CPU (percent of one core) above which it warns: a generator near
/// a full core delays its own reads and sends.
pub const CPU_WARN_PERCENT: f64 = 70.0;

/// The generator's own numbers for a trial's metrics: p99 and max send
/// lag, client CPU.
pub fn generator_metrics(trial: &driver::HttpTrial) -> Vec<(&'static str, f64)> {
    let lags = trial.send_lags_s();
    let mut out = Vec::new();
    if !lags.is_empty() {
        out.push((names::P99_SEND_LAG_MS, percentiles_ms(&lags, &[99.0])[0]));
        out.push((
            names::MAX_SEND_LAG_MS,
            lags.iter().copied().fold(0.0, f64::max) * 1e3,
        ));
    }
    if let Some(cpu) = trial.cpu_percent() {
        out.push((names::CLIENT_CPU_PERCENT, cpu));
    }
    out.extend(server_timing_metrics(&trial.records));
    out
}

/// Where a streamed request's TTFT went, for servers that report their own
/// timing: medians of the engine's TTFT, of the server's time to the first
/// chunk, and of the transport (client TTFT minus the latter). Nothing when
/// the server reported nothing.
fn server_timing_metrics(records: &[RequestRecord]) -> Vec<(&'static str, f64)> {
    let ok = || {
        records
            .iter()
            .filter(|r| r.status == workloads::RecordStatus::Ok)
            .filter_map(|r| r.client.as_ref().map(|c| (r, c)))
    };
    let engine: Vec<f64> = ok().filter_map(|(_, c)| c.server_engine_ttft_s).collect();
    let first_chunk: Vec<f64> = ok().filter_map(|(_, c)| c.server_first_chunk_s).collect();
    let transport: Vec<f64> = ok()
        .filter_map(|(r, c)| Some(r.first_token_s? - r.arrival_s - c.server_first_chunk_s?))
        .collect();
    let mut out = Vec::new();
    for (name, values) in [
        (names::P50_SERVER_ENGINE_TTFT_MS, engine),
        (names::P50_SERVER_FIRST_CHUNK_MS, first_chunk),
        (names::P50_TTFT_TRANSPORT_MS, transport),
    ] {
        if !values.is_empty() {
            out.push((name, percentiles_ms(&values, &[50.0])[0]));
        }
    }
    out
}

/// The workload's pace in ms: the mean gap between intended arrivals (open
/// loop), else `p50_e2el_ms` (closed loop: all are due at once).
fn pace_ms(records: &[RequestRecord], p50_e2el_ms: Option<f64>) -> Option<f64> {
    let intended: Vec<f64> = records
        .iter()
        .filter_map(|r| r.client.as_ref().map(|c| c.intended_s))
        .collect();
    let first = intended.iter().copied().fold(f64::INFINITY, f64::min);
    let last = intended.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if intended.len() > 1 && last > first {
        Some((last - first) * 1e3 / (intended.len() - 1) as f64)
    } else {
        p50_e2el_ms
    }
}

/// Warnings about the generator distorting a trial.
pub fn generator_warnings(
    workload: &str,
    trial: &driver::HttpTrial,
    p50_e2el_ms: Option<f64>,
) -> Vec<Warning> {
    let mut out = Vec::new();
    let lags = trial.send_lags_s();
    if !lags.is_empty() {
        let p99_ms = percentiles_ms(&lags, &[99.0])[0];
        let limit_ms = pace_ms(&trial.records, p50_e2el_ms)
            .map_or(LAG_FLOOR_MS, |p| (p * LAG_SHARE_OF_PACE).max(LAG_FLOOR_MS));
        if p99_ms > limit_ms {
            out.push(Warning::GeneratorLate {
                workload: workload.to_string(),
                p99_ms,
                limit_ms,
            });
        }
    }
    if let Some(cpu_percent) = trial.cpu_percent().filter(|&c| c > CPU_WARN_PERCENT) {
        out.push(Warning::GeneratorBusy {
            workload: workload.to_string(),
            cpu_percent,
        });
    }
    if let Some((intended, counted)) = trial.prompt_len_example {
        out.push(Warning::PromptLengthDiffers {
            workload: workload.to_string(),
            requests: trial.prompt_len_mismatches,
            of_requests: trial.records.len(),
            intended,
            counted,
            text_prompts: trial.text_prompts,
        });
    }
    out
}

/// Completed requests per ITL basis, for the trial line.
pub fn itl_basis_summary(records: &[RequestRecord]) -> String {
    let mut token = 0;
    let mut chunk = 0;
    let mut none = 0;
    for c in records.iter().filter_map(|r| r.client.as_ref()) {
        match c.itl_basis {
            workloads::ItlBasis::Token => token += 1,
            workloads::ItlBasis::Chunk => chunk += 1,
            workloads::ItlBasis::None => none += 1,
        }
    }
    match (token, chunk, none) {
        (_, 0, 0) => "ITL per token".into(),
        (0, _, 0) => "ITL per chunk (the server did not count tokens per chunk)".into(),
        (0, 0, _) => "not streamed: no TTFT/ITL (TTFT = E2E)".into(),
        _ => format!("ITL per token for {token}, per chunk for {chunk}, not streamed {none}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use workloads::{ClientTiming, FinishReason, ItlBasis, RecordStatus};

    fn rec(id: u64, intended_s: f64, send_lag_s: f64) -> RequestRecord {
        RequestRecord {
            id,
            status: RecordStatus::Ok,
            arrival_s: intended_s + send_lag_s,
            scheduled_s: None,
            first_token_s: Some(intended_s + 0.01),
            token_times_s: vec![intended_s + 0.01],
            finish_s: Some(intended_s + 0.01),
            finish_reason: FinishReason::Length,
            prompt_len: 1,
            output_len: 1,
            preemptions: 0,
            num_cached_tokens: None,
            output_hash: String::new(),
            output_token_ids: vec![],
            client: Some(ClientTiming {
                intended_s,
                slot_wait_s: 0.0,
                send_lag_s,
                itl_basis: ItlBasis::Token,
                chunks: 1,
                intended_prompt_len: None,
                server_engine_ttft_s: None,
                server_first_chunk_s: None,
            }),
            spec_decode: None,
        }
    }

    #[test]
    fn lag_is_judged_against_the_workload_pace() {
        // Arrivals 100 ms apart: 2 ms late is fine, 20 ms is not.
        let ok = driver::HttpTrial {
            records: (0..10).map(|i| rec(i, i as f64 * 0.1, 0.002)).collect(),
            wall_s: 1.0,
            cpu_s: Some(0.1),
            prompt_len_mismatches: 0,
            prompt_len_example: None,
            text_prompts: false,
        };
        assert!(generator_warnings("w", &ok, None).is_empty());
        let late = driver::HttpTrial {
            records: (0..10).map(|i| rec(i, i as f64 * 0.1, 0.02)).collect(),
            cpu_s: Some(0.9),
            ..ok.clone()
        };
        let warnings = generator_warnings("w", &late, None);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(matches!(warnings[0], Warning::GeneratorLate { .. }));
        assert!(warnings[1].to_string().contains("90%"));
        let m: Vec<&str> = generator_metrics(&late).iter().map(|(n, _)| *n).collect();
        assert_eq!(
            m,
            ["p99_send_lag_ms", "max_send_lag_ms", "client_cpu_percent"]
        );
    }

    #[test]
    fn server_timing_splits_the_ttft() {
        // Client TTFT 10 ms (first_token_s − arrival_s = 0.01); the server
        // says its engine took 6 + i ms and its first chunk left at 7 + i ms:
        // transport 3 − i ms. Medians over i = 0..=2: 7, 8 and 2 ms.
        let records: Vec<RequestRecord> = (0..3)
            .map(|i| {
                let mut r = rec(i, 0.0, 0.0);
                let c = r.client.as_mut().unwrap();
                c.server_engine_ttft_s = Some((6.0 + i as f64) / 1e3);
                c.server_first_chunk_s = Some((7.0 + i as f64) / 1e3);
                r
            })
            .collect();
        let m = server_timing_metrics(&records);
        let get = |n: &str| m.iter().find(|(k, _)| *k == n).map(|(_, v)| *v).unwrap();
        assert!(
            (get("p50_server_engine_ttft_ms") - 7.0).abs() < 1e-9,
            "{m:?}"
        );
        assert!(
            (get("p50_server_first_chunk_ms") - 8.0).abs() < 1e-9,
            "{m:?}"
        );
        assert!((get("p50_ttft_transport_ms") - 2.0).abs() < 1e-9, "{m:?}");
        // A server that reports nothing adds no metric.
        assert!(server_timing_metrics(&[rec(0, 0.0, 0.0)]).is_empty());
    }
}
