//! How many streamed events per second the HTTP load generator can take in
//! (issue 12: at least 30,000 on 2 cores), measured against a minimal SSE
//! server that sends pre-built completion chunks and runs no model.
//!
//! The server runs in a child process (this test binary started again with
//! `DYNO_FAKE_SSE_SERVER` set), so the CPU time the trial reports is the
//! client's alone. Env-gated (it saturates the machine for a few seconds):
//!
//! ```sh
//! DYNO_LOADGEN_CAPACITY=1 cargo test -p xtask --test loadgen_capacity -- --nocapture
//! ```
//!
//! Knobs: `DYNO_LOADGEN_STREAMS` (concurrent streams, default 128),
//! `DYNO_LOADGEN_TOKENS` (events per stream, default 1000),
//! `DYNO_LOADGEN_REQUESTS` (default 2 × streams), `DYNO_LOADGEN_GAP_US`
//! (the server's gap between two events of a stream, default 3500: 36,571
//! events/s offered by 128 streams), `DYNO_LOADGEN_MIN_EVENTS_S` (the
//! sustained rate the test requires, default 30000). The numbers go to
//! stderr. On a larger machine, `taskset -c 0,1 cargo test ...` puts the
//! client and the fake server (a child, inheriting the mask) on 2 cores as
//! on the CI machine.
//! A smaller version of the same run (`loadgen_reads_every_event_of_a_fast_server`)
//! always runs, to keep the harness honest.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use workloads::{RecordStatus, Request, SamplingParams};
use xtask::http::client::Target;
use xtask::http::driver::{self, HttpTrial};

const SERVER_ENV: &str = "DYNO_FAKE_SSE_SERVER";
/// Microseconds the fake server waits between two events of a stream
/// (0: as fast as it can write).
const GAP_ENV: &str = "DYNO_FAKE_SSE_GAP_US";

/// One streamed event as `engine serve` sends it with
/// `continuous_usage_stats`, framed as one HTTP chunk.
fn event_chunk(k: u32, of: u32) -> Vec<u8> {
    let finish = if k == of { "\"length\"" } else { "null" };
    let token = 1000 + k % 1000;
    let data = format!(
        "data: {{\"id\":\"cmpl-0\",\"object\":\"text_completion\",\"created\":1796029847,\
         \"model\":\"fake\",\"choices\":[{{\"index\":0,\"text\":\" {token}\",\"token_ids\":[{token}],\
         \"logprobs\":null,\"finish_reason\":{finish}}}],\"usage\":{{\"prompt_tokens\":4,\
         \"completion_tokens\":{k},\"total_tokens\":{}}}}}\n\n",
        k + 4
    );
    chunk(data.as_bytes())
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The fake server: answers every POST with `tokens` pre-built events, each
/// written on its own (one `write` per event, as a server streaming token
/// by token does) `gap` apart, then the usage chunk and `[DONE]`. Keeps
/// connections alive. Never returns.
fn serve(listener: TcpListener, tokens: u32, gap: Duration) {
    let events: Vec<Vec<u8>> = (1..=tokens).map(|k| event_chunk(k, tokens)).collect();
    let tail = [
        chunk(
            format!(
                "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":4,\"completion_tokens\":{tokens},\"total_tokens\":{}}}}}\n\n",
                tokens + 4
            )
            .as_bytes(),
        ),
        chunk(b"data: [DONE]\n\n"),
        b"0\r\n\r\n".to_vec(),
    ]
    .concat();
    let events = std::sync::Arc::new((events, tail));
    for stream in listener.incoming().flatten() {
        // One line per connection, for the parent to count.
        println!("accepted a connection");
        let _ = std::io::stdout().flush();
        let events = events.clone();
        std::thread::spawn(move || {
            let _ = connection(stream, &events.0, &events.1, gap);
        });
    }
}

fn connection(
    stream: TcpStream,
    events: &[Vec<u8>],
    tail: &[u8],
    gap: Duration,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        // Request line and headers; the body (its Content-Length) is read
        // and ignored.
        let mut length = 0usize;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if first && line.trim().is_empty() {
                continue;
            }
            first = false;
            if line == "\r\n" || line == "\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        out.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
              transfer-encoding: chunked\r\n\r\n",
        )?;
        // Paced against a schedule (not sleep after sleep), so oversleeping
        // does not add up.
        let start = std::time::Instant::now();
        for (i, e) in events.iter().enumerate() {
            if !gap.is_zero() {
                let due = start + gap * i as u32;
                let now = std::time::Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            out.write_all(e)?;
        }
        out.write_all(tail)?;
    }
}

type ServerOut = BufReader<std::process::ChildStdout>;

/// Starts the fake server as a child process; returns it, its output and
/// its URL. `measure` kills and waits for it; a panic here leaves it to
/// the test process's end.
#[allow(clippy::zombie_processes)]
fn start_server(tokens: u32, gap_us: u64) -> (Child, ServerOut, String) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "fake_sse_server",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SERVER_ENV, tokens.to_string())
        .env(GAP_ENV, gap_us.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            let status = child.wait();
            panic!("the fake server exited: {status:?}");
        }
        // The harness prints `test fake_sse_server ... ` before it.
        if let Some((_, url)) = line.trim().split_once("fake sse server on ") {
            return (child, out, url.to_string());
        }
    }
}

/// The server's entry point in the child process (a no-op otherwise).
#[test]
fn fake_sse_server() {
    let Ok(tokens) = std::env::var(SERVER_ENV) else {
        return;
    };
    let tokens: u32 = tokens.parse().unwrap();
    let gap = Duration::from_micros(env_or(GAP_ENV, 0));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    println!(
        "fake sse server on http://{}",
        listener.local_addr().unwrap()
    );
    std::io::stdout().flush().unwrap();
    serve(listener, tokens, gap);
}

struct Measured {
    trial: HttpTrial,
    events: u64,
    /// TCP connections the client opened.
    connections: usize,
}

impl Measured {
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.trial.wall_s
    }
}

/// `requests` streams of `tokens` events `gap_us` apart, `streams` at a time.
fn measure(streams: u32, tokens: u32, requests: u64, gap_us: u64) -> Measured {
    let (mut server, mut out, url) = start_server(tokens, gap_us);
    let mut target = Target::new(&url, "DYNO_NO_SUCH_KEY", true, Duration::from_secs(120)).unwrap();
    target.model = "fake".into();
    let make = |id: u64, warmup: bool| Request {
        id,
        arrival_s: 0.0,
        warmup,
        prompt_token_ids: vec![1, 2, 3, 4],
        sampling: SamplingParams::greedy(tokens),
    };
    // Warmup: one request per stream, so connections are open.
    let reqs: Vec<Request> = (0..u64::from(streams))
        .map(|i| make(1_000_000 + i, true))
        .chain((0..requests).map(|i| make(i, false)))
        .collect();
    let trial = driver::run(&target, &reqs, Some(streams));
    let _ = server.kill();
    let _ = server.wait();
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    let connections = rest.matches("accepted a connection").count();
    let events = trial
        .records
        .iter()
        .filter_map(|r| r.client.as_ref())
        .map(|c| u64::from(c.chunks))
        .sum();
    Measured {
        trial,
        events,
        connections,
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn loadgen_reads_every_event_of_a_fast_server() {
    let m = measure(4, 200, 8, 0);
    assert_eq!(m.trial.records.len(), 8);
    for r in &m.trial.records {
        assert_eq!(r.status, RecordStatus::Ok, "{:?}", r.status);
        assert_eq!(r.output_len, 200);
        assert_eq!(r.token_times_s.len(), 200);
    }
    assert_eq!(m.events, 8 * 200);
    // A stream read to its end gives its connection back: at most one
    // connection per slot (4) for 12 requests (warmups included); a new
    // connection per request would be 12.
    assert!(
        (1..=4).contains(&m.connections),
        "{} connections for 12 requests: connections are not reused",
        m.connections
    );
    assert!(m.trial.cpu_s.is_some());
}

/// One line of numbers for a measurement.
fn describe(what: &str, m: &Measured, streams: u32, tokens: u32) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{what}: {:.0} streamed events/s ({} events: {} streams of {tokens} events, {streams} at once) \
         in {:.2} s; client CPU {:.0}% of one core ({:.2} µs per event); p99 send lag {:.2} ms; \
         {cores} cores visible",
        m.events_per_s(),
        m.events,
        m.trial.records.len(),
        m.trial.wall_s,
        m.trial.cpu_percent().unwrap_or(f64::NAN),
        m.trial.cpu_s.map_or(f64::NAN, |c| c * 1e6 / m.events as f64),
        xtask::http::generator_metrics(&m.trial)
            .iter()
            .find(|(n, _)| *n == "p99_send_lag_ms")
            .map_or(f64::NAN, |(_, v)| *v),
    )
}

/// Two runs: paced (every stream sends an event every
/// `DYNO_LOADGEN_GAP_US`, so each event arrives on its own and costs the
/// client a wake-up and a read: the sustained case, offered at
/// streams / gap events/s), then unpaced (the server writes as fast as it
/// can: the ceiling, with several events per read).
#[test]
fn loadgen_sustains_30k_streamed_events_per_s() {
    if std::env::var_os("DYNO_LOADGEN_CAPACITY").is_none() {
        eprintln!("skipped: set DYNO_LOADGEN_CAPACITY=1 to measure (saturates the machine)");
        return;
    }
    let streams: u32 = env_or("DYNO_LOADGEN_STREAMS", 128);
    let tokens: u32 = env_or("DYNO_LOADGEN_TOKENS", 1000);
    let requests: u64 = env_or("DYNO_LOADGEN_REQUESTS", 2 * u64::from(streams));
    let gap_us: u64 = env_or("DYNO_LOADGEN_GAP_US", 3500);
    let min: f64 = env_or("DYNO_LOADGEN_MIN_EVENTS_S", 30_000.0);
    let offered = f64::from(streams) * 1e6 / gap_us as f64;
    let paced = measure(streams, tokens, requests, gap_us);
    eprintln!(
        "{}",
        describe(
            &format!("paced ({gap_us} µs between events, {offered:.0} events/s offered)"),
            &paced,
            streams,
            tokens
        )
    );
    let unpaced = measure(streams, tokens, requests, 0);
    eprintln!("{}", describe("unpaced", &unpaced, streams, tokens));
    for m in [&paced, &unpaced] {
        let ok = m
            .trial
            .records
            .iter()
            .filter(|r| r.status == RecordStatus::Ok)
            .count();
        assert_eq!(ok as u64, requests, "every stream completes");
        assert_eq!(m.events, requests * u64::from(tokens));
    }
    assert!(
        paced.events_per_s() >= min,
        "{:.0} streamed events/s sustained, under {min:.0}",
        paced.events_per_s()
    );
}

/// The transport's share of TTFT: one request at a time against the fake
/// server, which answers at once, so the time to the first event is the
/// client's send, the connection and the server's reply. Env-gated with
/// the capacity measurement; prints p50/p90 over `DYNO_LOADGEN_SEQUENTIAL`
/// requests (default 2000) and the connections opened.
#[test]
fn loadgen_first_event_latency() {
    if std::env::var_os("DYNO_LOADGEN_CAPACITY").is_none() {
        eprintln!("skipped: set DYNO_LOADGEN_CAPACITY=1 to measure");
        return;
    }
    let requests: u64 = env_or("DYNO_LOADGEN_SEQUENTIAL", 2000);
    let m = measure(1, 4, requests, 0);
    let ttft: Vec<f64> = m
        .trial
        .records
        .iter()
        .filter_map(|r| Some(r.first_token_s? - r.arrival_s))
        .collect();
    assert_eq!(ttft.len() as u64, requests);
    let p = xtask::metrics::percentiles_ms(&ttft, &[50.0, 90.0]);
    eprintln!(
        "first event, one request at a time: p50 {:.3} ms, p90 {:.3} ms over {requests} requests; {} connections",
        p[0], p[1], m.connections
    );
}
