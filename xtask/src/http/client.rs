//! One OpenAI-compatible server as the load generator sees it, and one
//! completion request timed the way its users feel it: sent, then every
//! streamed event stamped the moment its line arrives (before it is
//! parsed).
//!
//! Semantics follow vLLM's benchmark client: TTFT is the first chunk that
//! carries output, E2E ends at the last such chunk, and output token counts
//! come from the server's `usage` (per chunk when the server offers
//! `continuous_usage_stats`, else the final totals), so a chunk that holds
//! several tokens is not counted as one.

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use workloads::record::hash_tokens;
use workloads::{FinishReason, ItlBasis, Request};

use crate::run_record::TargetFingerprint;

/// A server under test.
#[derive(Clone)]
pub struct Target {
    /// `http://host:port` (no credentials, no trailing slash).
    pub base: String,
    /// The `model` sent with every request.
    pub model: String,
    pub stream: bool,
    /// Text prompts by request id (`--prompt-format text`); token ids
    /// otherwise.
    pub text_prompts: Option<std::sync::Arc<std::collections::BTreeMap<u64, String>>>,
    api_key: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("base", &self.base)
            .field("model", &self.model)
            .field("stream", &self.stream)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// `url` without user:password@ and without a trailing slash or path.
/// Returns the cleaned base and whether credentials were removed.
pub fn clean_url(url: &str) -> anyhow::Result<(String, bool)> {
    let Some(rest) = url.strip_prefix("http://") else {
        if url.starts_with("https://") {
            bail!(
                "--target {url}: https is not supported by the load generator (it is built \
                 without TLS to stay light); use http:// or a TLS-terminating proxy"
            );
        }
        bail!("--target {url}: expected http://HOST:PORT");
    };
    let authority = rest.split('/').next().unwrap_or("");
    let (host, had_credentials) = match authority.rsplit_once('@') {
        Some((_, host)) => (host, true),
        None => (authority, false),
    };
    if host.is_empty() {
        bail!("--target {url}: no host");
    }
    Ok((format!("http://{host}"), had_credentials))
}

impl Target {
    /// A target at `url`; the API key (if any) is read from the
    /// environment variable `api_key_env` and never stored. A request that
    /// takes longer than `request_timeout` fails.
    pub fn new(
        url: &str,
        api_key_env: &str,
        stream: bool,
        request_timeout: Duration,
    ) -> anyhow::Result<Target> {
        Ok(Self::new_checked(url, api_key_env, stream, request_timeout)?.0)
    }

    /// [`Target::new`], also saying whether the URL carried credentials
    /// (dropped: neither sent nor stored).
    pub fn new_checked(
        url: &str,
        api_key_env: &str,
        stream: bool,
        request_timeout: Duration,
    ) -> anyhow::Result<(Target, bool)> {
        let (base, had_credentials) = clean_url(url)?;
        let api_key = std::env::var(api_key_env).ok().filter(|k| !k.is_empty());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(request_timeout))
            .max_idle_connections(4096)
            .max_idle_connections_per_host(4096)
            .build()
            .into();
        let target = Target {
            base,
            model: String::new(),
            stream,
            text_prompts: None,
            api_key,
            agent,
        };
        Ok((target, had_credentials))
    }

    fn get(&self, path: &str) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let mut req = self
            .agent
            .get(format!("{}{path}", self.base))
            .config()
            .timeout_global(Some(Duration::from_secs(10)))
            .build();
        if let Some(key) = &self.api_key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        req.call()
    }

    /// Whether `/health` answers 200.
    pub fn healthy(&self) -> bool {
        matches!(self.get("/health"), Ok(r) if r.status() == 200)
    }

    /// Reads `/v1/models` and the server's headers; picks the model to send
    /// (`model`, else the first one listed).
    pub fn describe(&mut self, model: Option<&str>) -> anyhow::Result<TargetFingerprint> {
        let resp = self
            .get("/v1/models")
            .with_context(|| format!("GET {}/v1/models", self.base))?;
        let status = resp.status();
        let server = resp
            .headers()
            .get("server")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .read_to_string()
            .with_context(|| format!("reading {}/v1/models", self.base))?;
        if status != 200 {
            bail!("GET {}/v1/models: HTTP {status}: {body}", self.base);
        }
        let models: Value = serde_json::from_str(&body)
            .with_context(|| format!("{}/v1/models is not JSON: {body}", self.base))?;
        let listed: Vec<String> = models["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        self.model = match model {
            Some(m) => m.to_string(),
            None => listed.first().cloned().with_context(|| {
                format!(
                    "{}/v1/models lists no model; pass --served-model",
                    self.base
                )
            })?,
        };
        let owned_by = models["data"][0]["owned_by"].as_str().map(str::to_string);
        Ok(TargetFingerprint {
            url: self.base.clone(),
            model: self.model.clone(),
            models,
            server_header: server.clone(),
            server_kind: server_kind(owned_by.as_deref(), server.as_deref()),
            stream: self.stream,
            launch: None,
            text_prompts: None,
        })
    }

    /// Whether prompts go as text.
    pub fn sends_text(&self) -> bool {
        self.text_prompts.is_some()
    }

    /// The request body for `r`: token-id prompt (or its exact-length text),
    /// the workload's sampling, usage in every streamed chunk where the
    /// server offers it.
    pub fn body(&self, r: &Request) -> Value {
        let s = &r.sampling;
        let prompt = match self.text_prompts.as_ref().and_then(|t| t.get(&r.id)) {
            Some(text) => json!(text),
            None => json!(r.prompt_token_ids),
        };
        let mut body = json!({
            "model": self.model,
            "prompt": prompt,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "stream": self.stream,
        });
        if s.top_p < 1.0 {
            body["top_p"] = json!(s.top_p);
        }
        if s.top_k > 0 {
            body["top_k"] = json!(s.top_k);
        }
        if !s.is_greedy() {
            body["seed"] = json!(s.seed);
        }
        if s.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        if !s.stop_token_ids.is_empty() {
            body["stop_token_ids"] = json!(s.stop_token_ids);
        }
        if self.stream {
            body["stream_options"] = json!({"include_usage": true, "continuous_usage_stats": true});
        }
        body
    }

    /// Sends one completion and times it. Never panics on what the server
    /// sends: a bad answer is the outcome's error.
    pub fn complete(&self, r: &Request) -> Completion {
        let body = self.body(r).to_string();
        let mut req = self
            .agent
            .post(format!("{}/v1/completions", self.base))
            .header("Content-Type", "application/json");
        if let Some(key) = &self.api_key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        let sent = Instant::now();
        let mut out = Completion::new(sent, self.stream);
        let resp = match req.send(body.as_bytes()) {
            Ok(r) => r,
            Err(e) => {
                out.error = Some(format!("transport: {e}"));
                return out;
            }
        };
        let status = resp.status();
        let reader = resp.into_body().into_reader();
        if status != 200 {
            let mut text = String::new();
            let _ = reader.take(64 * 1024).read_to_string(&mut text);
            out.error = Some(format!("HTTP {status}: {}", error_message(&text)));
            return out;
        }
        if self.stream {
            out.read_stream(BufReader::with_capacity(64 * 1024, reader));
        } else {
            out.read_whole(reader);
        }
        out
    }
}

/// What kind of server this is, for the fingerprint class: the model
/// list's `owned_by` (vLLM says "vllm", llama.cpp "llamacpp", dyno
/// "dyno") and the `Server` header.
fn server_kind(owned_by: Option<&str>, server: Option<&str>) -> String {
    match (owned_by, server) {
        (Some(o), Some(s)) => format!("{o} ({s})"),
        (Some(o), None) => o.to_string(),
        (None, Some(s)) => s.to_string(),
        (None, None) => "unknown".to_string(),
    }
}

/// OpenAI's `error.message` when the body has one, else the body.
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().chars().take(500).collect())
}

/// One timed completion.
#[derive(Debug, Clone)]
pub struct Completion {
    pub sent: Instant,
    /// One per output token when every chunk's token count was known
    /// (basis Token), else one per chunk with text (basis Chunk).
    pub token_times: Vec<Instant>,
    pub itl_basis: ItlBasis,
    pub first_output: Option<Instant>,
    pub last_output: Option<Instant>,
    pub chunks: u32,
    /// Output tokens as the server counted them (usage), else as seen.
    pub output_len: Option<u64>,
    pub prompt_tokens: Option<u64>,
    /// Prompt tokens the server found in its prefix cache, when its usage
    /// says (`usage.prompt_tokens_details.cached_tokens`).
    pub cached_tokens: Option<u64>,
    /// The server's own timing of this request (`server_timing`, in s):
    /// engine TTFT and time to its first chunk, when it reports them.
    pub server_engine_ttft_s: Option<f64>,
    pub server_first_chunk_s: Option<f64>,
    pub output_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: Option<FinishReason>,
    pub error: Option<String>,
}

impl Completion {
    /// A request that failed before any answer.
    pub fn failed(sent: Instant, error: String) -> Completion {
        Completion {
            error: Some(error),
            ..Completion::new(sent, false)
        }
    }

    fn new(sent: Instant, stream: bool) -> Completion {
        Completion {
            sent,
            token_times: Vec::new(),
            itl_basis: if stream {
                ItlBasis::Token
            } else {
                ItlBasis::None
            },
            first_output: None,
            last_output: None,
            chunks: 0,
            output_len: None,
            prompt_tokens: None,
            cached_tokens: None,
            server_engine_ttft_s: None,
            server_first_chunk_s: None,
            output_ids: Vec::new(),
            text: String::new(),
            finish_reason: None,
            error: None,
        }
    }

    /// Reads SSE lines until `[DONE]` or the end of the body.
    fn read_stream(&mut self, mut reader: impl BufRead) {
        let mut line = String::new();
        let mut chunk_times = Vec::new();
        let mut spread_times = Vec::new();
        let mut counted: u64 = 0;
        let mut last_usage: Option<u64> = None;
        let mut all_counts_known = true;
        let mut continuous_usage: Option<bool> = None;
        let mut done = false;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    self.error = Some(format!("reading the stream: {e}"));
                    return;
                }
            }
            // The event's arrival: stamped before anything is parsed.
            let t = Instant::now();
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue; // blank separators, comments, `event:` lines
            };
            let data = data.trim_start();
            if data == "[DONE]" {
                done = true;
                // Read the body to its end (the chunked encoding's last,
                // empty chunk): only a body read to the end gives the
                // connection back to the pool. Left unread, every request
                // opened a new connection, and the connect counted in its
                // TTFT.
                let mut rest = [0u8; 1024];
                let mut left: usize = 64 * 1024;
                while left > 0 {
                    match reader.read(&mut rest) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
                break;
            }
            let v: Value = match serde_json::from_str(data) {
                Ok(v) => v,
                Err(e) => {
                    self.error = Some(format!("a streamed event is not JSON ({e}): {data}"));
                    return;
                }
            };
            if !v["error"].is_null() {
                self.error = Some(format!("the server reported: {}", v["error"]));
                return;
            }
            let usage_total = v["usage"]["completion_tokens"].as_u64();
            if let Some(p) = v["usage"]["prompt_tokens"].as_u64() {
                self.prompt_tokens = Some(p);
            }
            if let Some(c) = v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64() {
                self.cached_tokens = Some(c);
            }
            self.read_server_timing(&v);
            let choice = v["choices"].get(0);
            let Some(choice) = choice else {
                // A usage-only chunk: the final totals.
                if let Some(total) = usage_total {
                    self.output_len = Some(total);
                }
                continue;
            };
            let text = choice["text"].as_str().unwrap_or("");
            let ids: Option<Vec<u32>> = choice["token_ids"].as_array().map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64().map(|x| x as u32))
                    .collect()
            });
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.finish_reason = Some(map_finish(reason));
            }
            // Per-chunk usage only when the server sends it from the first
            // chunk on (continuous_usage_stats); usage that shows up later
            // (llama.cpp puts it in the last chunk) is the final total.
            let continuous = *continuous_usage.get_or_insert(usage_total.is_some());
            if !continuous {
                if let Some(total) = usage_total {
                    self.output_len = Some(total);
                }
            }
            // How many tokens this chunk carries, if the server says.
            let new_tokens = match (usage_total.filter(|_| continuous), &ids) {
                (Some(total), _) => {
                    let k = total.saturating_sub(last_usage.unwrap_or(0));
                    last_usage = Some(total);
                    self.output_len = Some(total);
                    Some(k)
                }
                (None, Some(ids)) => Some(ids.len() as u64),
                (None, None) => None,
            };
            let carries_output = match new_tokens {
                Some(k) => k > 0,
                None => !text.is_empty(),
            };
            if let Some(ids) = ids {
                self.output_ids.extend(ids);
            }
            self.text.push_str(text);
            if !carries_output {
                continue;
            }
            self.chunks += 1;
            chunk_times.push(t);
            match new_tokens {
                Some(k) => {
                    counted += k;
                    // A chunk of k tokens after the previous one: its gap
                    // spreads evenly over its tokens. The first chunk's
                    // tokens all arrive at the first token time.
                    match self.last_output {
                        Some(prev) => {
                            let gap = t.saturating_duration_since(prev);
                            for i in 1..=k {
                                spread_times.push(prev + gap.mul_f64(i as f64 / k as f64));
                            }
                        }
                        None => spread_times.push(t),
                    }
                }
                None => all_counts_known = false,
            }
            if self.first_output.is_none() {
                self.first_output = Some(t);
            }
            self.last_output = Some(t);
        }
        if all_counts_known {
            self.token_times = spread_times;
            self.itl_basis = ItlBasis::Token;
            self.output_len = self.output_len.or(Some(counted));
        } else {
            self.token_times = chunk_times;
            self.itl_basis = ItlBasis::Chunk;
            self.output_len = self
                .output_len
                .or(Some(u64::from(self.chunks)).filter(|_| self.output_ids.is_empty()))
                .or(Some(self.output_ids.len() as u64));
        }
        if self.first_output.is_none() {
            self.error = Some("the stream carried no output".into());
        } else if !done && self.finish_reason.is_none() {
            self.error = Some("the stream ended before [DONE] or a finish reason".into());
        }
    }

    fn read_whole(&mut self, reader: impl Read) {
        let mut text = String::new();
        let read = reader.take(256 << 20).read_to_string(&mut text);
        let t = Instant::now();
        if let Err(e) = read {
            self.error = Some(format!("reading the response: {e}"));
            return;
        }
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                self.error = Some(format!("the response is not JSON ({e})"));
                return;
            }
        };
        let choice = &v["choices"][0];
        self.text = choice["text"].as_str().unwrap_or("").to_string();
        if let Some(ids) = choice["token_ids"].as_array() {
            self.output_ids = ids
                .iter()
                .filter_map(|x| x.as_u64().map(|x| x as u32))
                .collect();
        }
        self.finish_reason = choice["finish_reason"].as_str().map(map_finish);
        self.output_len = v["usage"]["completion_tokens"].as_u64();
        self.prompt_tokens = v["usage"]["prompt_tokens"].as_u64();
        self.cached_tokens = v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
        self.read_server_timing(&v);
        if self.output_len.is_none() {
            self.error = Some("the response has no usage.completion_tokens".into());
            return;
        }
        self.first_output = Some(t);
        self.last_output = Some(t);
    }

    /// `server_timing` (a dyno `engine serve` extension; other servers send
    /// none): this request's values, in ms, as the first of each list. A
    /// value that is not a finite, non-negative number is ignored.
    fn read_server_timing(&mut self, v: &Value) {
        let at = |key: &str| {
            v["server_timing"][key][0]
                .as_f64()
                .filter(|ms| ms.is_finite() && *ms >= 0.0)
                .map(|ms| ms / 1e3)
        };
        if let Some(s) = at("engine_ttft_ms") {
            self.server_engine_ttft_s = Some(s);
        }
        if let Some(s) = at("first_chunk_ms") {
            self.server_first_chunk_s = Some(s);
        }
    }

    /// The output's hash: of the token ids when the server sent them, else
    /// of the text.
    pub fn output_hash(&self) -> String {
        if self.output_ids.is_empty() && !self.text.is_empty() {
            blake3::hash(self.text.as_bytes()).to_hex().to_string()
        } else {
            hash_tokens(&self.output_ids)
        }
    }
}

fn map_finish(reason: &str) -> FinishReason {
    match reason {
        "length" => FinishReason::Length,
        // OpenAI's "stop" covers EOS and stop tokens alike.
        _ => FinishReason::Eos,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(lines: &str) -> Completion {
        let mut c = Completion::new(Instant::now(), true);
        c.read_stream(lines.as_bytes());
        c
    }

    #[test]
    fn urls_lose_credentials_and_paths() {
        assert_eq!(
            clean_url("http://u:p@127.0.0.1:8000/v1").unwrap(),
            ("http://127.0.0.1:8000".to_string(), true)
        );
        assert_eq!(
            clean_url("http://localhost:1").unwrap(),
            ("http://localhost:1".to_string(), false)
        );
        assert!(clean_url("https://x")
            .unwrap_err()
            .to_string()
            .contains("TLS"));
        assert!(clean_url("ftp://x").is_err());
    }

    #[test]
    fn continuous_usage_counts_multi_token_chunks() {
        let c = stream(concat!(
            "data: {\"choices\":[{\"text\":\"a\",\"finish_reason\":null}],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1}}\n\n",
            "data: {\"choices\":[{\"text\":\"bcd\",\"finish_reason\":null}],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":4}}\n\n",
            "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":4}}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":4}}\n\n",
            "data: [DONE]\n\n",
        ));
        assert_eq!(c.error, None);
        assert_eq!(c.output_len, Some(4));
        assert_eq!(c.chunks, 2, "the finish-only chunk carries no output");
        assert_eq!(c.itl_basis, ItlBasis::Token);
        // First chunk: one time; second chunk of 3 tokens: three times.
        assert_eq!(c.token_times.len(), 4);
        assert_eq!(c.finish_reason, Some(FinishReason::Length));
        assert_eq!(c.prompt_tokens, Some(4));
    }

    #[test]
    fn without_counts_itl_is_per_chunk_and_totals_come_from_final_usage() {
        let c = stream(concat!(
            "data: {\"choices\":[{\"text\":\"ab\"}]}\n\n",
            "data: {\"choices\":[{\"text\":\"c\"}]}\n\n",
            "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"stop\"}],\"usage\":{\"completion_tokens\":5,\"prompt_tokens\":2}}\n\n",
            "data: [DONE]\n\n",
        ));
        assert_eq!(c.error, None);
        assert_eq!(c.itl_basis, ItlBasis::Chunk);
        assert_eq!(c.token_times.len(), 2);
        assert_eq!(c.output_len, Some(5));
        assert_eq!(c.cached_tokens, None, "not reported");
    }

    #[test]
    fn cached_prompt_tokens_come_from_the_final_usage() {
        let c = stream(concat!(
            "data: {\"choices\":[{\"text\":\"a\",\"finish_reason\":\"length\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"completion_tokens\":1,\"prompt_tokens\":40,\"prompt_tokens_details\":{\"cached_tokens\":32}}}\n\n",
            "data: [DONE]\n\n",
        ));
        assert_eq!(c.error, None);
        assert_eq!((c.prompt_tokens, c.cached_tokens), (Some(40), Some(32)));
    }

    #[test]
    fn broken_streams_are_errors_not_panics() {
        assert!(stream("data: {not json\n\n")
            .error
            .unwrap()
            .contains("JSON"));
        assert!(stream("data: {\"error\":{\"message\":\"boom\"}}\n\n")
            .error
            .unwrap()
            .contains("boom"));
        assert!(stream("").error.unwrap().contains("no output"));
        let cut = stream("data: {\"choices\":[{\"text\":\"a\",\"token_ids\":[5]}]}\n\n");
        assert!(cut.error.unwrap().contains("ended"));
    }

    #[test]
    fn error_bodies_show_openai_messages() {
        assert_eq!(
            error_message(r#"{"error":{"message":"too long","type":"x"}}"#),
            "too long"
        );
        assert_eq!(error_message("plain"), "plain");
    }
}
