//! The load generator: replays a workload's requests against a [`Target`]
//! and turns what the client saw into the same `RequestRecord`s that
//! `engine bench` writes, so metrics, store and compare need nothing new.
//!
//! Warmup requests run first, all at once, and are kept out of the
//! records. Then each measured request gets its own thread at its
//! `arrival_s` (open loop), or as soon as one of `max_concurrency` slots is
//! free (closed loop: every request is ready at the start, and the wait for
//! a slot is the request's `slot_wait_s`). The generator stamps how late it
//! sent each request (`send_lag_s`) and measures its own CPU time, so it
//! can tell when it, not the server, set the pace.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use workloads::{ClientTiming, FinishReason, RecordStatus, Request, RequestRecord};

use super::client::{Completion, Target};

/// Small stacks: a thread per in-flight request, thousands at once.
const WORKER_STACK: usize = 256 * 1024;

/// One trial over HTTP.
#[derive(Debug, Clone, Default)]
pub struct HttpTrial {
    /// One per measured request, in id order.
    pub records: Vec<RequestRecord>,
    /// Start of the measured phase to the last answer.
    pub wall_s: f64,
    /// CPU time (user + system) the whole client process used during the
    /// measured phase.
    pub cpu_s: Option<f64>,
    /// Requests whose `usage.prompt_tokens` differed from the prompt sent
    /// (a server that adds BOS, or one that re-tokenized).
    pub prompt_len_mismatches: usize,
    /// The first such request's (intended, counted) lengths.
    pub prompt_len_example: Option<(u32, u32)>,
    /// The prompts went as text (`--prompt-format text`).
    pub text_prompts: bool,
}

impl HttpTrial {
    pub fn send_lags_s(&self) -> Vec<f64> {
        self.records
            .iter()
            .filter_map(|r| r.client.as_ref().map(|c| c.send_lag_s))
            .collect()
    }

    /// Client CPU as a percentage of one core over the measured phase.
    pub fn cpu_percent(&self) -> Option<f64> {
        self.cpu_s
            .filter(|_| self.wall_s > 0.0)
            .map(|c| 100.0 * c / self.wall_s)
    }
}

/// Runs `requests` (warmup first) against `target`.
pub fn run(target: &Target, requests: &[Request], max_concurrency: Option<u32>) -> HttpTrial {
    let (warmup, mut measured): (Vec<&Request>, Vec<&Request>) =
        requests.iter().partition(|r| r.warmup);
    std::thread::scope(|s| {
        let handles: Vec<_> = warmup
            .iter()
            .map(|r| s.spawn(move || target.complete(r)))
            .collect();
        for h in handles {
            let _ = h.join();
        }
    });

    let closed = max_concurrency.map(|n| n.max(1) as usize);
    if closed.is_none() {
        measured.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    }
    let results: Mutex<Vec<RequestRecord>> = Mutex::new(Vec::with_capacity(measured.len()));
    let push = |record: RequestRecord| {
        results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record)
    };
    let cpu_before = process_cpu_s();
    let origin = Instant::now();
    match closed {
        Some(slots) => closed_loop(target, &measured, slots, origin, &push),
        None => open_loop(target, &measured, origin, &push),
    }
    let wall_s = origin.elapsed().as_secs_f64();
    let cpu_s = match (cpu_before, process_cpu_s()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let mut records = results.into_inner().unwrap_or_else(|p| p.into_inner());
    records.sort_by_key(|r| r.id);
    let mismatches: Vec<(u32, u32)> = records
        .iter()
        .filter(|r| r.status == RecordStatus::Ok)
        .filter_map(|r| {
            let intended = r.client.as_ref()?.intended_prompt_len?;
            Some((intended, r.prompt_len))
        })
        .collect();
    HttpTrial {
        records,
        wall_s,
        cpu_s,
        prompt_len_mismatches: mismatches.len(),
        prompt_len_example: mismatches.first().copied(),
        text_prompts: target.sends_text(),
    }
}

/// Closed loop: `slots` long-lived workers, each taking the next request
/// as soon as its previous one is answered. Every request is due at the
/// start; the time until a worker takes it is its wait for a slot.
fn closed_loop(
    target: &Target,
    measured: &[&Request],
    slots: usize,
    origin: Instant,
    push: &(dyn Fn(RequestRecord) + Sync),
) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..slots.min(measured.len()) {
            let spawned = std::thread::Builder::new()
                .stack_size(WORKER_STACK)
                .spawn_scoped(s, || loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(r) = measured.get(i) else { break };
                    let released = Instant::now();
                    let timing = Dispatch {
                        origin,
                        intended_s: 0.0,
                        late_s: 0.0,
                        slot_wait_s: released.saturating_duration_since(origin).as_secs_f64(),
                        released,
                    };
                    let c = target.complete(r);
                    push(to_record(r, &c, &timing));
                });
            if let Err(e) = spawned {
                eprintln!("warning: the load generator could not start a worker thread: {e}");
            }
        }
    });
    // Requests no worker took (every spawn failed) still get a record.
    let taken = next.load(Ordering::SeqCst);
    for r in measured.iter().skip(taken) {
        let now = Instant::now();
        let timing = Dispatch {
            origin,
            intended_s: 0.0,
            late_s: 0.0,
            slot_wait_s: 0.0,
            released: now,
        };
        let c = Completion::failed(now, "the load generator started no worker".into());
        push(to_record(r, &c, &timing));
    }
}

/// Open loop: each request on its own thread at its arrival time, however
/// many are in flight. The dispatcher's lateness is the send lag.
fn open_loop(
    target: &Target,
    measured: &[&Request],
    origin: Instant,
    push: &(dyn Fn(RequestRecord) + Sync),
) {
    std::thread::scope(|s| {
        for r in measured {
            let due = origin + Duration::from_secs_f64(r.arrival_s.max(0.0));
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let released = Instant::now();
            let timing = Dispatch {
                origin,
                intended_s: r.arrival_s,
                late_s: released.saturating_duration_since(due).as_secs_f64(),
                slot_wait_s: 0.0,
                released,
            };
            let spawned = std::thread::Builder::new()
                .stack_size(WORKER_STACK)
                .spawn_scoped(s, move || {
                    let c = target.complete(r);
                    push(to_record(r, &c, &timing));
                });
            if let Err(e) = spawned {
                let c = Completion::failed(
                    Instant::now(),
                    format!("the load generator could not start a thread: {e}"),
                );
                push(to_record(r, &c, &timing));
            }
        }
    });
}

#[derive(Debug, Clone, Copy)]
struct Dispatch {
    origin: Instant,
    intended_s: f64,
    /// The dispatcher woke this late after the intended time (open loop).
    late_s: f64,
    slot_wait_s: f64,
    /// When the request was free to go (slot held).
    released: Instant,
}

/// The record of one request: client times on the trial's clock.
fn to_record(r: &Request, c: &Completion, d: &Dispatch) -> RequestRecord {
    let at = |t: Instant| t.saturating_duration_since(d.origin).as_secs_f64();
    let client = ClientTiming {
        intended_s: d.intended_s,
        slot_wait_s: d.slot_wait_s,
        send_lag_s: d.late_s + c.sent.saturating_duration_since(d.released).as_secs_f64(),
        itl_basis: c.itl_basis,
        chunks: c.chunks,
        intended_prompt_len: None,
        server_engine_ttft_s: c.server_engine_ttft_s,
        server_first_chunk_s: c.server_first_chunk_s,
    };
    let sent_len = r.prompt_token_ids.len() as u32;
    let counted_len = c.prompt_tokens.map_or(sent_len, |p| p as u32);
    let client = ClientTiming {
        intended_prompt_len: Some(sent_len).filter(|&s| s != counted_len),
        ..client
    };
    let base = RequestRecord {
        id: r.id,
        status: RecordStatus::Ok,
        arrival_s: at(c.sent),
        scheduled_s: None,
        first_token_s: c.first_output.map(at),
        token_times_s: c.token_times.iter().map(|&t| at(t)).collect(),
        finish_s: c.last_output.map(at),
        finish_reason: c.finish_reason.unwrap_or(FinishReason::Length),
        prompt_len: counted_len,
        output_len: c.output_len.unwrap_or(0) as u32,
        preemptions: 0,
        num_cached_tokens: c.cached_tokens.map(|n| n as u32),
        output_hash: c.output_hash(),
        output_token_ids: c.output_ids.clone(),
        client: Some(client),
        spec_decode: None,
    };
    match &c.error {
        None => base,
        Some(reason) => RequestRecord {
            status: RecordStatus::Rejected {
                reason: reason.clone(),
            },
            first_token_s: None,
            token_times_s: Vec::new(),
            finish_s: None,
            finish_reason: FinishReason::Rejected,
            prompt_len: sent_len,
            output_len: 0,
            ..base
        },
    }
}

/// User + system CPU seconds of this process (Linux `/proc/self/stat`,
/// in clock ticks of 1/100 s).
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let start = process_cpu_s().unwrap();
            let mut x = 0u64;
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(50) {
                x = x.wrapping_add(std::hint::black_box(1));
            }
            assert!(x > 0);
            assert!(process_cpu_s().unwrap() >= start);
        }
    }

    #[test]
    fn failed_requests_become_rejected_records_with_client_timing() {
        let r = Request {
            id: 3,
            arrival_s: 0.5,
            warmup: false,
            prompt_token_ids: vec![1, 2],
            sampling: workloads::SamplingParams::greedy(4),
        };
        let origin = Instant::now();
        let d = Dispatch {
            origin,
            intended_s: 0.5,
            late_s: 0.001,
            slot_wait_s: 0.0,
            released: origin,
        };
        let c = Completion::failed(origin, "HTTP 400: too long".into());
        let rec = to_record(&r, &c, &d);
        assert!(
            matches!(rec.status, RecordStatus::Rejected { ref reason } if reason.contains("400"))
        );
        assert_eq!(rec.prompt_len, 2);
        assert_eq!(rec.client.unwrap().intended_s, 0.5);
    }
}
