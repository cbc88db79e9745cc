//! The benchmark driver behind `engine bench`: runs the warmup requests to
//! completion, then replays the measured requests either open loop (each at
//! its `arrival_s` offset on the monotonic clock) or closed loop (at most N
//! in flight, the next admitted when one finishes).

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use workloads::request::MAX_ARRIVAL_S;
use workloads::{BenchSummary, RecordStatus, Request, RequestRecord, StepLogEntry};

use crate::engine::{Engine, EngineError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrivalMode {
    /// Requests arrive at their `arrival_s` offsets, whatever the engine does.
    OpenLoop,
    /// At most this many requests in flight; `arrival_s` is ignored.
    ClosedLoop { max_concurrency: usize },
}

#[derive(Debug, Clone, Default)]
pub struct BenchResult {
    /// One per measured request, in finishing order.
    pub records: Vec<RequestRecord>,
    /// Steps of the measured phase.
    pub steps: Vec<StepLogEntry>,
    /// Start of the measured phase to the last finish, in seconds.
    pub measured_duration_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("request id {0} appears more than once")]
    DuplicateId(u64),
    #[error("request {id}: arrival_s must be a finite number in [0, {max}], got {value}", max = MAX_ARRIVAL_S)]
    BadArrival { id: u64, value: f64 },
    #[error("request {id}: sampling.{field} {message}")]
    BadSampling {
        id: u64,
        field: &'static str,
        message: String,
    },
    #[error("--max-concurrency must be at least 1")]
    ZeroConcurrency,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Checks what the engine cannot: ids are unique and arrivals are sane.
pub fn validate_requests(requests: &[Request]) -> Result<(), BenchError> {
    let mut seen = HashSet::new();
    for r in requests {
        if !seen.insert(r.id) {
            return Err(BenchError::DuplicateId(r.id));
        }
        if !(r.arrival_s.is_finite() && (0.0..=MAX_ARRIVAL_S).contains(&r.arrival_s)) {
            return Err(BenchError::BadArrival {
                id: r.id,
                value: r.arrival_s,
            });
        }
        if let Some((field, message)) = r.sampling.problem() {
            return Err(BenchError::BadSampling {
                id: r.id,
                field,
                message,
            });
        }
    }
    Ok(())
}

/// Warmup, then the measured phase; see the module docs.
pub fn run(
    engine: &mut Engine,
    requests: Vec<Request>,
    mode: ArrivalMode,
) -> Result<BenchResult, BenchError> {
    validate_requests(&requests)?;
    let (warmup, measured): (Vec<Request>, Vec<Request>) =
        requests.into_iter().partition(|r| r.warmup);
    for r in warmup {
        engine.add_request(r);
    }
    while engine.has_unfinished() {
        engine.step()?;
    }

    engine.set_clock_origin(Instant::now());
    let mut result = match mode {
        ArrivalMode::OpenLoop => open_loop(engine, measured)?,
        ArrivalMode::ClosedLoop { max_concurrency } => {
            if max_concurrency == 0 {
                return Err(BenchError::ZeroConcurrency);
            }
            closed_loop(engine, measured, max_concurrency)?
        }
    };
    result.measured_duration_s = engine.now_s();
    Ok(result)
}

fn open_loop(engine: &mut Engine, mut requests: Vec<Request>) -> Result<BenchResult, BenchError> {
    requests.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    let mut pending: VecDeque<Request> = requests.into();
    let mut result = BenchResult::default();
    loop {
        let now = engine.now_s();
        while pending.front().is_some_and(|r| r.arrival_s <= now) {
            let r = pending.pop_front().expect("front exists");
            // The request exists from its nominal arrival on: time spent
            // waiting for the current step to end counts as queueing.
            let arrival = r.arrival_s;
            engine.add_request_arrived_at(r, arrival);
        }
        if engine.has_unfinished() {
            let outcome = engine.step()?;
            result.records.extend(outcome.finished);
            result.steps.extend(outcome.log);
        } else if let Some(next) = pending.front() {
            // Arrivals are validated finite and bounded; a wait that still
            // does not convert is skipped rather than panicking.
            if let Ok(wait) = Duration::try_from_secs_f64(next.arrival_s - engine.now_s()) {
                std::thread::sleep(wait);
            }
        } else {
            return Ok(result);
        }
    }
}

fn closed_loop(
    engine: &mut Engine,
    requests: Vec<Request>,
    max_concurrency: usize,
) -> Result<BenchResult, BenchError> {
    let mut pending: VecDeque<Request> = requests.into();
    let mut in_flight = 0usize;
    let mut result = BenchResult::default();
    loop {
        while in_flight < max_concurrency {
            let Some(r) = pending.pop_front() else { break };
            engine.add_request(r);
            in_flight += 1;
        }
        if !engine.has_unfinished() {
            return Ok(result);
        }
        let outcome = engine.step()?;
        in_flight -= outcome.finished.len();
        result.records.extend(outcome.finished);
        result.steps.extend(outcome.log);
    }
}

/// Peak resident set size of this process (`VmHWM` in /proc/self/status).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The summary of a finished bench run.
pub fn summarize(
    engine: &Engine,
    result: &BenchResult,
    engine_config: serde_json::Value,
    model_content_hash: String,
) -> BenchSummary {
    let info = engine.backend().info();
    let peak_rss = peak_rss_bytes();
    let peak_device = engine.backend().peak_memory_bytes();
    BenchSummary {
        backend_kind: info.kind,
        device_name: info.device_name,
        dtype: info.dtype,
        num_kv_blocks: engine.num_kv_blocks() as u64,
        block_size: engine.block_size() as u32,
        peak_rss_bytes: peak_rss,
        peak_device_memory_bytes: peak_device,
        peak_memory_bytes: peak_device.or(peak_rss),
        launches_per_decode_step: engine.backend().launches_per_decode_step(),
        measured_duration_s: result.measured_duration_s,
        num_requests: result.records.len() as u64,
        num_rejected: result
            .records
            .iter()
            .filter(|r| matches!(r.status, RecordStatus::Rejected { .. }))
            .count() as u64,
        num_nonfinite: result
            .records
            .iter()
            .filter(|r| r.status == RecordStatus::NonfiniteLogits)
            .count() as u64,
        output_tokens: result.records.iter().map(|r| u64::from(r.output_len)).sum(),
        num_steps: result.steps.len() as u64,
        prefix_cache_queries: result.steps.iter().map(|s| s.prefix_cache_queries).sum(),
        prefix_cache_hits: result.steps.iter().map(|s| s.prefix_cache_hits).sum(),
        engine_config,
        model_content_hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine_config::EngineConfig;
    use crate::testing::{mock_model_config, MockBackend};
    use workloads::SamplingParams;

    fn engine() -> Engine {
        let model = mock_model_config(32, 256, &[]);
        Engine::new(
            Box::new(MockBackend::new(32)),
            &model,
            &EngineConfig::default(),
        )
        .unwrap()
    }

    fn request(id: u64, arrival_s: f64, warmup: bool) -> Request {
        Request {
            id,
            arrival_s,
            warmup,
            prompt_token_ids: vec![1, 2, 3],
            sampling: SamplingParams::greedy(4),
        }
    }

    #[test]
    fn open_loop_waits_for_arrivals_and_drops_warmup() {
        let mut e = engine();
        let reqs = vec![
            request(1, 0.0, false),
            request(2, 0.05, false),
            request(9, 0.0, true),
        ];
        let res = run(&mut e, reqs, ArrivalMode::OpenLoop).unwrap();
        let mut ids: Vec<u64> = res.records.iter().map(|r| r.id).collect();
        ids.sort();
        assert_eq!(ids, vec![1, 2]);
        let late = res.records.iter().find(|r| r.id == 2).unwrap();
        assert_eq!(late.arrival_s, 0.05);
        assert!(late.scheduled_s.unwrap() >= 0.05);
        assert!(res.measured_duration_s >= 0.05);
        assert!(res.steps.iter().all(|s| s.start_s >= 0.0));
    }

    #[test]
    fn closed_loop_caps_requests_in_flight() {
        let mut e = engine();
        let reqs = (0..6).map(|i| request(i, 100.0, false)).collect();
        let mode = ArrivalMode::ClosedLoop { max_concurrency: 2 };
        let res = run(&mut e, reqs, mode).unwrap();
        assert_eq!(res.records.len(), 6);
        assert!(res.steps.iter().all(|s| s.batch_size <= 2));
        assert!(res.measured_duration_s < 100.0);
    }

    #[test]
    fn duplicate_ids_and_bad_arrivals_are_errors() {
        let mut e = engine();
        let dup = vec![request(1, 0.0, false), request(1, 0.0, false)];
        let err = run(&mut e, dup, ArrivalMode::OpenLoop).unwrap_err();
        assert!(err.to_string().contains("id 1"));
        let bad = vec![request(1, f64::NAN, false)];
        assert!(run(&mut e, bad, ArrivalMode::OpenLoop).is_err());
    }

    #[test]
    fn huge_arrivals_and_bad_sampling_are_errors_not_panics() {
        let mut e = engine();
        // 1e300 s cannot become a Duration: it must be refused, not slept on.
        for arrival in [1e300, MAX_ARRIVAL_S * 2.0, f64::INFINITY, -1.0] {
            let err = run(
                &mut e,
                vec![request(7, arrival, false)],
                ArrivalMode::OpenLoop,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("request 7: arrival_s"), "{err}");
        }
        let mut r = request(8, 0.0, false);
        r.sampling.temperature = f32::NAN;
        let err = validate_requests(&[r]).unwrap_err().to_string();
        assert!(err.contains("request 8: sampling.temperature"), "{err}");
        let mut r = request(9, 0.0, false);
        r.sampling.top_p = 5.0;
        let err = validate_requests(&[r]).unwrap_err().to_string();
        assert!(err.contains("request 9: sampling.top_p"), "{err}");
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().unwrap() > 0);
        }
    }
}
