//! The engine on its own thread. HTTP handlers send [`Command`]s through a
//! channel; the thread queues them between steps, runs steps while there is
//! work (polling the channel for a short while when there is none, then
//! blocking on it), and sends each request's events back on the request's
//! own channel. A request whose channel is closed (its client went away) is
//! aborted and its KV blocks freed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use workloads::{Request, RequestRecord};

use super::prom::ServerMetrics;
use crate::engine::Engine;

/// Where each live request's events go: its prompt index and channel.
type Streams = HashMap<u64, (usize, UnboundedSender<(usize, Event)>)>;

/// What a handler asks of the engine thread.
pub(crate) enum Command {
    /// Queue one prompt. Its events go to `events`, tagged with `index`
    /// (the prompt's place in the HTTP request).
    Add {
        request: Request,
        index: usize,
        arrival: Instant,
        min_tokens: u32,
        events: UnboundedSender<(usize, Event)>,
    },
    /// The client went away.
    Abort { request_id: u64 },
    /// Finish what is queued and running, then end the thread.
    Drain,
}

/// What the engine thread tells a handler about one prompt.
#[derive(Debug)]
pub(crate) enum Event {
    Accepted,
    /// Never queued: the reason is the client's fault (400).
    Rejected(String),
    /// One token; `finished` is set on the request's last token.
    Token {
        token: u32,
        finished: Option<Box<RequestRecord>>,
    },
    /// The engine failed (500); the server stops.
    Failed(String),
}

/// The next command once the engine is idle: polled for `spin`, then
/// waited for. A thread blocked on a channel pays the operating system's
/// wake-up when work comes (measured on the H200 machine: the first token
/// of a request that found the engine idle came 0.53 ms later than in
/// process, docs/SERVING.md); a request that comes while the engine still
/// spins pays nothing. A closed-loop client's next request follows the
/// last answer within a round trip, so a short spin covers it, and an idle
/// server still sleeps.
fn next_command(
    commands: &Receiver<Command>,
    spin: Duration,
) -> Result<Command, std::sync::mpsc::RecvError> {
    if !spin.is_zero() {
        let until = Instant::now() + spin;
        loop {
            match commands.try_recv() {
                Ok(cmd) => return Ok(cmd),
                Err(TryRecvError::Disconnected) => return Err(std::sync::mpsc::RecvError),
                Err(TryRecvError::Empty) if Instant::now() >= until => break,
                Err(TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
    }
    commands.recv()
}

/// The engine thread's body. Returns when drained or when the engine fails.
pub(crate) fn run(
    mut engine: Engine,
    commands: Receiver<Command>,
    metrics: Arc<ServerMetrics>,
    in_system: Arc<AtomicUsize>,
    idle_spin: Duration,
) -> Result<(), String> {
    let mut streams: Streams = HashMap::new();
    let mut draining = false;
    let origin = Instant::now();
    engine.set_clock_origin(origin);
    loop {
        // Block while idle; otherwise take what arrived during the step.
        if !engine.has_unfinished() {
            if draining {
                return Ok(());
            }
            match next_command(&commands, idle_spin) {
                Ok(cmd) => handle(
                    cmd,
                    &mut engine,
                    &mut streams,
                    &mut draining,
                    origin,
                    &metrics,
                    &in_system,
                ),
                Err(_) => return Ok(()),
            }
        }
        loop {
            match commands.try_recv() {
                Ok(cmd) => handle(
                    cmd,
                    &mut engine,
                    &mut streams,
                    &mut draining,
                    origin,
                    &metrics,
                    &in_system,
                ),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    draining = true;
                    break;
                }
            }
        }
        if !engine.has_unfinished() {
            metrics.set_engine_state(&engine);
            continue;
        }
        let outcome = match engine.step() {
            Ok(o) => o,
            Err(e) => {
                let message = format!("engine step failed: {e}");
                for (_, (index, tx)) in streams.drain() {
                    let _ = tx.send((index, Event::Failed(message.clone())));
                }
                return Err(message);
            }
        };
        if let Some(step) = &outcome.log {
            metrics.observe_step(step);
        }
        let mut finished: HashMap<u64, RequestRecord> =
            outcome.finished.into_iter().map(|r| (r.id, r)).collect();
        // With speculative decoding a step may emit several tokens of one
        // request: its record goes with the last of them.
        let last_of: HashMap<u64, usize> = outcome
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.request_id, i))
            .collect();
        for (i, t) in outcome.tokens.into_iter().enumerate() {
            let record = if last_of.get(&t.request_id) == Some(&i) {
                finished.remove(&t.request_id)
            } else {
                None
            };
            if let Some(r) = &record {
                metrics.observe_finished(r);
                in_system.fetch_sub(1, Ordering::SeqCst);
            }
            let done = record.is_some();
            let Some((index, tx)) = streams.get(&t.request_id) else {
                continue;
            };
            let event = Event::Token {
                token: t.token,
                finished: record.map(Box::new),
            };
            if tx.send((*index, event)).is_err() && !done {
                // The handler is gone: nobody wants the rest.
                if engine.abort_request(t.request_id) {
                    metrics.observe_abort();
                    in_system.fetch_sub(1, Ordering::SeqCst);
                }
                streams.remove(&t.request_id);
            } else if done {
                streams.remove(&t.request_id);
            }
        }
        // try_add_request refuses inadmissible requests, so every finished
        // record came with a token; anything left is a bug worth seeing.
        for (id, _) in finished {
            eprintln!("engine serve: request {id} finished without a final token");
        }
        metrics.set_engine_state(&engine);
    }
}

fn handle(
    cmd: Command,
    engine: &mut Engine,
    streams: &mut Streams,
    draining: &mut bool,
    origin: Instant,
    metrics: &ServerMetrics,
    in_system: &AtomicUsize,
) {
    match cmd {
        Command::Add {
            request,
            index,
            arrival,
            min_tokens,
            events,
        } => {
            let id = request.id;
            let arrival_s = arrival.saturating_duration_since(origin).as_secs_f64();
            match engine.try_add_request(request, arrival_s, min_tokens) {
                Ok(()) => {
                    if events.send((index, Event::Accepted)).is_err() {
                        engine.abort_request(id);
                        in_system.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                    streams.insert(id, (index, events));
                }
                Err(reason) => {
                    in_system.fetch_sub(1, Ordering::SeqCst);
                    let _ = events.send((index, Event::Rejected(reason)));
                }
            }
        }
        Command::Abort { request_id } => {
            if streams.remove(&request_id).is_some() && engine.abort_request(request_id) {
                metrics.observe_abort();
                in_system.fetch_sub(1, Ordering::SeqCst);
            }
        }
        Command::Drain => *draining = true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_sent_while_polling_or_after_is_received_and_a_closed_channel_ends() {
        let (tx, rx) = std::sync::mpsc::channel();
        // Sent during the poll.
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2));
            tx.send(Command::Drain).unwrap();
            // Sent after the poll gave up: the blocking wait takes it.
            std::thread::sleep(Duration::from_millis(60));
            tx.send(Command::Abort { request_id: 7 }).unwrap();
        });
        let spin = Duration::from_millis(20);
        assert!(matches!(next_command(&rx, spin), Ok(Command::Drain)));
        let start = Instant::now();
        assert!(matches!(
            next_command(&rx, spin),
            Ok(Command::Abort { request_id: 7 })
        ));
        assert!(start.elapsed() >= spin);
        sender.join().unwrap();
        // Every sender gone: both the poll and the wait end.
        assert!(next_command(&rx, spin).is_err());
        assert!(next_command(&rx, Duration::ZERO).is_err());
    }
}
