//! `engine serve`: the engine behind an OpenAI-compatible HTTP server
//! (tokio + axum; cargo feature `serve`).
//!
//! The engine runs on its own thread ([`engine_loop`]); handlers reach it
//! through a channel and get their request's events on a channel of their
//! own. Routes: `POST /v1/completions` (streaming or not),
//! `POST /v1/chat/completions` (needs a tokenizer and chat template: see
//! [`text`]), `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus
//! text, vLLM's names). A client that goes away aborts its request and
//! frees its KV blocks; a full queue answers 503 with `Retry-After`; bad
//! requests get a 400 in OpenAI's error shape; SIGTERM or SIGINT stop
//! accepting, finish what is in flight, then return.

mod engine_loop;
mod openai;
mod prom;
pub mod text;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use workloads::{Request, RequestRecord};

use crate::engine::Engine;
use engine_loop::{Command, Event};
use openai::{ApiError, Usage, Validated};
use prom::ServerMetrics;
use text::TextCodec;

/// The idle spin on a GPU backend when `--idle-spin-us` is not given:
/// longer than a closed-loop client's turnaround (a loopback round trip
/// and its bookkeeping, well under a millisecond), short enough that an
/// idle server sleeps.
pub const DEFAULT_GPU_IDLE_SPIN: std::time::Duration = std::time::Duration::from_millis(2);

/// How `engine serve` listens and admits.
#[derive(Clone)]
pub struct ServeOptions {
    pub host: String,
    /// 0 picks a free port; the chosen address is printed on stdout as
    /// `engine serve: listening on http://HOST:PORT`.
    pub port: u16,
    /// When set, `/v1/*` needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// The `model` clients name (and `/v1/models` lists).
    pub served_model_name: String,
    /// Requests that may wait beyond the running batch (`max_num_seqs`)
    /// before new ones get 503.
    pub max_waiting: usize,
    /// Tokio worker threads for HTTP (the engine has its own thread).
    pub http_threads: usize,
    /// How long, after the last request left, the engine thread and one
    /// HTTP worker keep polling for the next one before they sleep (0:
    /// sleep at once; None: [`DEFAULT_GPU_IDLE_SPIN`] when the engine runs
    /// on a GPU, 0 on the CPU, whose backend needs every core for its
    /// steps). See `engine_loop::next_command` and
    /// [`keep_one_worker_polling`].
    pub idle_spin: Option<std::time::Duration>,
    /// Tokenizer and chat template, when the checkpoint has them.
    pub codec: Option<Arc<dyn TextCodec>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Server(std::io::Error),
    #[error("{0}")]
    Engine(String),
}

struct AppState {
    commands: Sender<Command>,
    metrics: Arc<ServerMetrics>,
    in_system: Arc<AtomicUsize>,
    capacity: usize,
    next_id: AtomicU64,
    model: String,
    max_model_len: usize,
    api_key: Option<String>,
    codec: Option<Arc<dyn TextCodec>>,
    created: u64,
    engine_alive: Arc<AtomicBool>,
    /// Told of every admitted request (starts [`keep_one_worker_polling`]).
    poller: Arc<tokio::sync::Notify>,
}

/// Serves the engine that `make_engine` builds (on the engine thread: a
/// backend may not move between threads) until SIGTERM/SIGINT (then
/// drains) or an engine failure.
pub fn run<F>(make_engine: F, opts: ServeOptions) -> Result<(), ServeError>
where
    F: FnOnce() -> Result<Engine, String> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.http_threads.max(1))
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(serve(make_engine, opts))
}

async fn serve<F>(make_engine: F, opts: ServeOptions) -> Result<(), ServeError>
where
    F: FnOnce() -> Result<Engine, String> + Send + 'static,
{
    let metrics = Arc::new(ServerMetrics::new(&opts.served_model_name));
    let in_system = Arc::new(AtomicUsize::new(0));
    let engine_alive = Arc::new(AtomicBool::new(true));
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) =
        std::sync::mpsc::channel::<Result<(usize, usize, std::time::Duration), String>>();
    let (failed_tx, mut failed_rx) = tokio::sync::watch::channel(None::<String>);
    let engine_thread = {
        let idle_spin = opts.idle_spin;
        let metrics = metrics.clone();
        let in_system = in_system.clone();
        let alive = engine_alive.clone();
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                let engine = match make_engine() {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                metrics.set_engine_state(&engine);
                let idle_spin = idle_spin.unwrap_or(if engine.backend().info().kind == "cuda" {
                    DEFAULT_GPU_IDLE_SPIN
                } else {
                    std::time::Duration::ZERO
                });
                let _ = ready_tx.send(Ok((
                    engine.max_model_len(),
                    engine.max_num_seqs(),
                    idle_spin,
                )));
                let result = engine_loop::run(engine, rx, metrics, in_system, idle_spin);
                alive.store(false, Ordering::SeqCst);
                if let Err(e) = &result {
                    let _ = failed_tx.send(Some(e.clone()));
                }
                result
            })
            .map_err(ServeError::Runtime)?
    };
    let ready = tokio::task::spawn_blocking(move || ready_rx.recv())
        .await
        .map_err(|e| ServeError::Engine(format!("waiting for the engine: {e}")))?;
    let (max_model_len, max_num_seqs, idle_spin) = match ready {
        Ok(Ok(limits)) => limits,
        Ok(Err(e)) => return Err(ServeError::Engine(e)),
        Err(_) => {
            return Err(ServeError::Engine(
                "the engine thread ended while starting".into(),
            ))
        }
    };

    let addr = format!("{}:{}", opts.host, opts.port);
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(source) => {
            let _ = tx.send(Command::Drain);
            return Err(ServeError::Bind { addr, source });
        }
    };
    let local: SocketAddr = listener.local_addr().map_err(ServeError::Server)?;

    let poller = Arc::new(tokio::sync::Notify::new());
    let state = Arc::new(AppState {
        commands: tx.clone(),
        metrics,
        in_system,
        capacity: max_num_seqs + opts.max_waiting,
        next_id: AtomicU64::new(0),
        model: opts.served_model_name.clone(),
        max_model_len,
        api_key: opts.api_key.clone(),
        codec: opts.codec.clone(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        engine_alive,
        poller: poller.clone(),
    });
    if !idle_spin.is_zero() {
        tokio::spawn(keep_one_worker_polling(
            state.in_system.clone(),
            poller,
            idle_spin,
        ));
    }
    let app = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .with_state(state);

    println!("engine serve: listening on http://{local}");
    let shutdown = async move {
        tokio::select! {
            _ = termination() => {
                eprintln!("engine serve: signal received, draining in-flight requests");
            }
            _ = failed_rx.wait_for(|f| f.is_some()) => {}
        }
    };
    // TCP_NODELAY: an SSE event is a small write after the response head;
    // with Nagle's algorithm on, it may wait for the ACK of the head (or of
    // the previous event) before it leaves, which delays the first token.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    // Every connection is closed: no new work can come.
    let _ = tx.send(Command::Drain);
    drop(tx);
    let engine_result = tokio::task::spawn_blocking(move || engine_thread.join())
        .await
        .map_err(|e| ServeError::Engine(format!("joining the engine thread: {e}")))?;
    served.map_err(ServeError::Server)?;
    match engine_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServeError::Engine(e)),
        Err(_) => Err(ServeError::Engine("the engine thread panicked".into())),
    }
}

/// Keeps one HTTP worker polling (the task yields, so the worker never
/// parks: it polls the sockets and the queue of woken tasks between yields)
/// while requests are in the server and for `window` after the last one
/// left; then it waits for the next admitted request. A parked worker pays
/// the operating system's wake-up for a request's bytes and again for each
/// token the engine thread hands over (on the H200 machine: 0.11 ms from
/// the engine's first token to its SSE write, docs/SERVING.md); a polling
/// one does not. The cost is one busy core while the server has work.
async fn keep_one_worker_polling(
    in_system: Arc<AtomicUsize>,
    admitted: Arc<tokio::sync::Notify>,
    window: std::time::Duration,
) {
    let mut last_busy = std::time::Instant::now();
    loop {
        if in_system.load(Ordering::Relaxed) > 0 {
            last_busy = std::time::Instant::now();
        }
        if last_busy.elapsed() < window {
            tokio::task::yield_now().await;
        } else {
            admitted.notified().await;
            last_busy = std::time::Instant::now();
        }
    }
}

async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(e.body())).into_response()
}

fn server_error(status: StatusCode, kind: &'static str, message: String) -> Response {
    let e = ApiError {
        status: status.as_u16(),
        message,
        kind,
        param: None,
    };
    error_response(&e)
}

/// `Err` holds the 401 to answer (boxed: a response is large).
fn authorized(state: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(Box::new(server_error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing or wrong API key (Authorization: Bearer <key>)".into(),
        )))
    }
}

async fn health(State(state): State<Arc<AppState>>) -> StatusCode {
    if state.engine_alive.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&state, &headers) {
        return *r;
    }
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": state.model,
            "object": "model",
            "created": state.created,
            "owned_by": "dyno",
            "root": state.model,
            "max_model_len": state.max_model_len,
        }],
    }))
    .into_response()
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run_request(state, headers, body, Api::Chat).await
}

/// Aborts the requests it names when dropped armed: a handler future or
/// stream dropped early means the client went away.
struct AbortGuard {
    ids: Vec<u64>,
    commands: Sender<Command>,
    armed: bool,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if self.armed {
            for &request_id in &self.ids {
                let _ = self.commands.send(Command::Abort { request_id });
            }
        }
    }
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run_request(state, headers, body, Api::Completions).await
}

/// Which OpenAI endpoint a request came in on: the same engine path, two
/// request and response shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Completions,
    Chat,
}

async fn run_request(state: Arc<AppState>, headers: HeaderMap, body: Bytes, api: Api) -> Response {
    let arrival = Instant::now();
    if let Err(r) = authorized(&state, &headers) {
        return *r;
    }
    let codec = state.codec.as_deref();
    let seed_source = || {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ state.next_id.load(Ordering::Relaxed).rotate_left(32)
    };
    let parsed = match api {
        Api::Completions => openai::parse_completion(&body, codec, &state.model, seed_source),
        Api::Chat => openai::parse_chat(&body, codec, &state.model, seed_source),
    };
    let v = match parsed {
        Ok(v) => v,
        Err(e) => return error_response(&e),
    };
    let n = v.prompts.len();
    let before = state.in_system.fetch_add(n, Ordering::SeqCst);
    state.poller.notify_one();
    if before + n > state.capacity {
        state.in_system.fetch_sub(n, Ordering::SeqCst);
        let mut r = server_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_overloaded",
            format!(
                "the server's queue is full ({} requests in the system); retry later",
                state.capacity
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }

    let (events_tx, mut events) = unbounded_channel();
    let mut guard = AbortGuard {
        ids: Vec::with_capacity(n),
        commands: state.commands.clone(),
        armed: true,
    };
    let prompt_lens: Vec<u64> = v.prompts.iter().map(|p| p.len() as u64).collect();
    for (index, prompt) in v.prompts.iter().enumerate() {
        let id = state.next_id.fetch_add(1, Ordering::SeqCst);
        let cmd = Command::Add {
            request: Request {
                id,
                arrival_s: 0.0,
                warmup: false,
                prompt_token_ids: prompt.clone(),
                sampling: v.sampling.clone(),
            },
            index,
            arrival,
            min_tokens: v.min_tokens,
            events: events_tx.clone(),
        };
        if state.commands.send(cmd).is_err() {
            // The engine thread is gone; it accounts for nothing more.
            state.in_system.fetch_sub(n - index, Ordering::SeqCst);
            return server_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the engine has stopped".into(),
            );
        }
        guard.ids.push(id);
    }
    drop(events_tx);

    // Every prompt is accepted or refused before a response starts: a
    // refusal is the client's error (400), not a broken stream.
    let mut early = VecDeque::new();
    let mut acks = 0;
    let mut refusal = None;
    while acks < n {
        match events.recv().await {
            Some((_, Event::Accepted)) => acks += 1,
            Some((_, Event::Rejected(reason))) => {
                acks += 1;
                refusal.get_or_insert(reason);
            }
            Some((_, Event::Failed(e))) => {
                return server_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e)
            }
            Some(other) => early.push_back(other),
            None => {
                return server_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "the engine has stopped".into(),
                )
            }
        }
    }
    if let Some(reason) = refusal {
        return error_response(&ApiError::invalid(Some("prompt"), reason));
    }

    let ctx = ResponseCtx {
        api,
        stream: v.stream,
        id: match api {
            Api::Completions => format!("cmpl-{}", guard.ids[0]),
            Api::Chat => format!("chatcmpl-{}", guard.ids[0]),
        },
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: state.model.clone(),
        codec: state.codec.clone(),
        prompt_lens,
    };
    if v.stream {
        let stream = CompletionStream {
            early,
            events,
            guard,
            generated: vec![0; n],
            cached: 0,
            remaining: n,
            include_usage: v.include_usage,
            continuous: v.continuous_usage,
            ctx,
            tail: VecDeque::new(),
            ended: false,
            received: arrival,
            first_chunk_s: vec![None; n],
            engine_ttft_s: vec![None; n],
        };
        return Sse::new(stream).into_response();
    }
    collect_completion(ctx, early, events, guard, &v).await
}

struct ResponseCtx {
    api: Api,
    stream: bool,
    id: String,
    created: u64,
    model: String,
    codec: Option<Arc<dyn TextCodec>>,
    prompt_lens: Vec<u64>,
}

impl ResponseCtx {
    /// One choice: `tokens` generated for prompt `index` (all of them, or
    /// this chunk's when streaming), in the endpoint's shape.
    fn choice(&self, index: usize, tokens: &[u32], finish: Option<&'static str>) -> Value {
        let text = openai::render_text(self.codec.as_deref(), tokens);
        match (self.api, self.stream) {
            (Api::Completions, _) => json!({
                "index": index,
                "text": text,
                "token_ids": tokens,
                "logprobs": null,
                "finish_reason": finish,
            }),
            (Api::Chat, false) => json!({
                "index": index,
                "message": {"role": "assistant", "content": text},
                "token_ids": tokens,
                "logprobs": null,
                "finish_reason": finish,
            }),
            (Api::Chat, true) => json!({
                "index": index,
                "delta": {"role": "assistant", "content": text},
                "token_ids": tokens,
                "logprobs": null,
                "finish_reason": finish,
            }),
        }
    }

    fn chunk(&self, choices: Value, usage: Option<Usage>) -> Value {
        let object = match (self.api, self.stream) {
            (Api::Completions, _) => "text_completion",
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
        };
        let mut v = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = json!(u);
        }
        v
    }
}

async fn collect_completion(
    ctx: ResponseCtx,
    mut early: VecDeque<(usize, Event)>,
    mut events: UnboundedReceiver<(usize, Event)>,
    mut guard: AbortGuard,
    v: &Validated,
) -> Response {
    let n = v.prompts.len();
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut reasons: Vec<Option<&'static str>> = vec![None; n];
    let mut cached = 0u64;
    let mut engine_ttft: Vec<Option<f64>> = vec![None; n];
    let mut remaining = n;
    while remaining > 0 {
        let next = match early.pop_front() {
            Some(e) => Some(e),
            None => events.recv().await,
        };
        match next {
            Some((i, Event::Token { token, finished })) => {
                tokens[i].push(token);
                if let Some(r) = finished {
                    reasons[i] = Some(openai::finish_reason(r.finish_reason));
                    cached += u64::from(r.num_cached_tokens.unwrap_or(0));
                    engine_ttft[i] = engine_ttft_s(&r);
                    remaining -= 1;
                }
            }
            Some((_, Event::Failed(e))) => {
                return server_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e)
            }
            Some(_) => {}
            None => {
                return server_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the engine stopped before the request finished".into(),
                )
            }
        }
    }
    guard.armed = false;
    let choices: Vec<Value> = (0..n)
        .map(|i| ctx.choice(i, &tokens[i], reasons[i]))
        .collect();
    let usage = Usage::new(
        ctx.prompt_lens.iter().sum(),
        tokens.iter().map(|t| t.len() as u64).sum(),
    )
    .with_cached(cached);
    let mut body = ctx.chunk(Value::Array(choices), Some(usage));
    body["server_timing"] = server_timing(&engine_ttft, &[]);
    axum::Json(body).into_response()
}

/// The engine's TTFT for one request: from the handler receiving it (the
/// record's arrival, on the engine's clock) to the step that produced its
/// first token.
fn engine_ttft_s(r: &RequestRecord) -> Option<f64> {
    r.first_token_s.map(|f| (f - r.arrival_s).max(0.0))
}

/// `server_timing`, a dyno extension next to `usage` (OpenAI clients ignore
/// unknown fields): per prompt, in ms, `engine_ttft_ms` (received → the
/// engine step that made the first token) and `first_chunk_ms` (received →
/// the first token's chunk handed to the HTTP stack; streaming only). A
/// client's own TTFT minus `first_chunk_ms` is the transport: sending the
/// request and reading the chunk.
fn server_timing(engine_ttft_s: &[Option<f64>], first_chunk_s: &[Option<f64>]) -> Value {
    let ms =
        |v: &[Option<f64>]| -> Vec<Option<f64>> { v.iter().map(|x| x.map(|s| s * 1e3)).collect() };
    let mut t = json!({ "engine_ttft_ms": ms(engine_ttft_s) });
    if first_chunk_s.iter().any(Option::is_some) {
        t["first_chunk_ms"] = json!(ms(first_chunk_s));
    }
    t
}

/// The SSE body: one chunk per token, then (with `include_usage`) a chunk
/// with the totals and no choices, then `[DONE]`. Dropping it early (the
/// client went away) aborts the requests still running.
struct CompletionStream {
    early: VecDeque<(usize, Event)>,
    events: UnboundedReceiver<(usize, Event)>,
    guard: AbortGuard,
    generated: Vec<u64>,
    /// Prompt tokens the finished requests found in the prefix cache.
    cached: u64,
    remaining: usize,
    include_usage: bool,
    continuous: bool,
    ctx: ResponseCtx,
    /// What is left to send after the last token.
    tail: VecDeque<String>,
    ended: bool,
    /// When the handler received the request, and per prompt when its first
    /// token chunk left this stream and the engine's own TTFT: the final
    /// usage chunk reports them (`server_timing`), so a client can split its
    /// TTFT into engine, hand-off and transport.
    received: Instant,
    first_chunk_s: Vec<Option<f64>>,
    engine_ttft_s: Vec<Option<f64>>,
}

impl CompletionStream {
    fn token_chunk(&mut self, index: usize, token: u32, finish: Option<&'static str>) -> String {
        self.generated[index] += 1;
        let choice = json!([self.ctx.choice(index, &[token], finish)]);
        let usage = self
            .continuous
            .then(|| Usage::new(self.ctx.prompt_lens[index], self.generated[index]));
        self.ctx.chunk(choice, usage).to_string()
    }

    fn finish(&mut self) {
        self.guard.armed = false;
        if self.include_usage {
            let usage = Usage::new(
                self.ctx.prompt_lens.iter().sum(),
                self.generated.iter().sum(),
            )
            .with_cached(self.cached);
            let mut chunk = self.ctx.chunk(json!([]), Some(usage));
            chunk["server_timing"] = server_timing(&self.engine_ttft_s, &self.first_chunk_s);
            self.tail.push_back(chunk.to_string());
        }
        self.tail.push_back("[DONE]".into());
    }
}

impl futures_core::Stream for CompletionStream {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(data) = this.tail.pop_front() {
                return Poll::Ready(Some(Ok(SseEvent::default().data(data))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            let next = match this.early.pop_front() {
                Some(e) => Some(e),
                None => match this.events.poll_recv(cx) {
                    Poll::Ready(e) => e,
                    Poll::Pending => return Poll::Pending,
                },
            };
            match next {
                Some((i, Event::Token { token, finished })) => {
                    if this.first_chunk_s[i].is_none() {
                        this.first_chunk_s[i] = Some(this.received.elapsed().as_secs_f64());
                    }
                    if let Some(r) = &finished {
                        this.cached += u64::from(r.num_cached_tokens.unwrap_or(0));
                        this.engine_ttft_s[i] = engine_ttft_s(r);
                    }
                    let reason = finished.map(|r| openai::finish_reason(r.finish_reason));
                    let data = this.token_chunk(i, token, reason);
                    if reason.is_some() {
                        this.remaining -= 1;
                        if this.remaining == 0 {
                            this.finish();
                            this.ended = true;
                        }
                    }
                    return Poll::Ready(Some(Ok(SseEvent::default().data(data))));
                }
                Some((_, Event::Failed(e))) | Some((_, Event::Rejected(e))) => {
                    let err = ApiError {
                        status: 500,
                        message: e,
                        kind: "server_error",
                        param: None,
                    };
                    this.tail.push_back(err.body().to_string());
                    this.ended = true;
                }
                Some((_, Event::Accepted)) => {}
                None => {
                    let err = ApiError {
                        status: 500,
                        message: "the engine stopped before the request finished".into(),
                        kind: "server_error",
                        param: None,
                    };
                    this.tail.push_back(err.body().to_string());
                    this.ended = true;
                }
            }
        }
    }
}
