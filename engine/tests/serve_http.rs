//! `engine serve` over real HTTP on the `tiny` preset: completions streamed
//! and whole, bad requests answered 400 while others complete, a client
//! that disconnects frees its KV blocks (seen in /metrics), a full queue
//! answers 503 with Retry-After, SIGTERM drains, and the official `openai`
//! Python client streams a completion.
#![cfg(feature = "serve")]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("tiny");
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["synth", "--preset", "tiny", "--seed", "1", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    model
}

/// A running `engine serve`; killed on drop if a test failed midway.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(dir: &Path, config: &str, extra: &[&str]) -> Server {
        Server::start_model(&tiny_model(dir), dir, config, extra)
    }

    fn start_model(model: &Path, dir: &Path, config: &str, extra: &[&str]) -> Server {
        let cfg = dir.join("engine.toml");
        std::fs::write(&cfg, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(["serve", "--device", "cpu", "--port", "0", "--model"])
            .arg(model)
            .arg("--config")
            .arg(&cfg)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines.next().expect("engine serve exited").unwrap();
            if let Some(url) = line.strip_prefix("engine serve: listening on ") {
                break url.to_string();
            }
        };
        Server { child, url }
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into()
    }

    fn post(&self, body: &Value) -> (u16, Value) {
        self.post_at("/v1/completions", body)
    }

    fn post_at(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = Self::agent()
            .post(format!("{}{path}", self.url))
            .send(body.to_string().as_bytes())
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The `data:` payloads of a streamed completion.
    fn stream(&self, body: &Value) -> Vec<String> {
        self.stream_at("/v1/completions", body)
    }

    fn stream_at(&self, path: &str, body: &Value) -> Vec<String> {
        let resp = Self::agent()
            .post(format!("{}{path}", self.url))
            .send(body.to_string().as_bytes())
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut text = String::new();
        resp.into_body()
            .into_reader()
            .read_to_string(&mut text)
            .unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
            .collect()
    }

    fn metric(&self, name: &str) -> f64 {
        let text = Self::agent()
            .get(format!("{}/metrics", self.url))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CONFIG: &str = "num_kv_blocks = 256\nmax_num_seqs = 8\n";

#[test]
fn completions_stream_and_whole_bad_requests_get_400_disconnects_free_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), CONFIG, &["--served-model-name", "tiny"]);

    let models: Value = serde_json::from_str(
        &Server::agent()
            .get(format!("{}/v1/models", server.url))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(models["data"][0]["id"], "tiny");

    // A long streamed request runs while bad requests are refused.
    let long = std::thread::scope(|s| {
        let long = s.spawn(|| {
            server.stream(&json!({
                "model": "tiny", "prompt": [1, 2, 3], "max_tokens": 200, "ignore_eos": true,
                "temperature": 0, "stream": true,
                "stream_options": {"include_usage": true, "continuous_usage_stats": true},
            }))
        });
        for (body, needle) in [
            (json!({"prompt": [1], "max_tokenz": 3}), "max_tokenz"),
            (
                json!({"prompt": [1, 999_999], "max_tokens": 3}),
                "vocabulary",
            ),
            (
                json!({"prompt": vec![1; 2040], "max_tokens": 16}),
                "max_model_len",
            ),
            (json!({"prompt": "text", "max_tokens": 3}), "tokenizer"),
        ] {
            let (status, v) = server.post(&body);
            assert_eq!(status, 400, "{body}: {v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(needle),
                "{v}"
            );
            assert_eq!(v["error"]["type"], "invalid_request_error");
        }
        let raw = Server::agent()
            .post(format!("{}/v1/completions", server.url))
            .send("{not json")
            .unwrap();
        assert_eq!(raw.status(), 400);
        long.join().unwrap()
    });
    assert_eq!(long.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = long[..long.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let tokens: Vec<&Value> = chunks
        .iter()
        .filter(|c| !c["choices"][0].is_null())
        .collect();
    assert_eq!(tokens.len(), 200, "one chunk per token");
    assert_eq!(
        tokens[5]["usage"]["completion_tokens"], 6,
        "continuous usage"
    );
    assert_eq!(tokens[199]["choices"][0]["finish_reason"], "length");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(
        (
            usage["prompt_tokens"].as_u64(),
            usage["completion_tokens"].as_u64()
        ),
        (Some(3), Some(200))
    );
    // The server's own timing of the request, next to usage: the engine's
    // TTFT comes before the first chunk left the server.
    let timing = &chunks.last().unwrap()["server_timing"];
    let engine_ttft = timing["engine_ttft_ms"][0]
        .as_f64()
        .expect("engine_ttft_ms");
    let first_chunk = timing["first_chunk_ms"][0]
        .as_f64()
        .expect("first_chunk_ms");
    assert!(0.0 < engine_ttft && engine_ttft <= first_chunk, "{timing}");

    // Whole answers, one and several prompts; greedy is deterministic.
    let body = json!({"prompt": [[4, 5, 6], [7, 8]], "max_tokens": 5, "temperature": 0});
    let (status, v) = server.post(&body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 10);
    let ttft = &v["server_timing"]["engine_ttft_ms"];
    assert!(
        ttft[0].as_f64().unwrap() > 0.0 && ttft[1].as_f64().unwrap() > 0.0,
        "{v}"
    );
    let (_, again) = server.post(&body);
    assert_eq!(
        v["choices"][0]["token_ids"],
        again["choices"][0]["token_ids"]
    );
    // The engine thread updates the gauge after it has sent the last token,
    // so a loaded machine can answer /metrics before that: wait for it.
    server.wait_for("finished requests' blocks to be freed", || {
        server.metric("dyno:kv_cache_blocks_used") == 0.0
    });

    // Prefix caching (on by default): the same 40-token prompt again finds
    // its first two blocks of 16, and usage says so.
    let prompt: Vec<u32> = (100..140).collect();
    let body = json!({"prompt": prompt, "max_tokens": 2, "temperature": 0});
    let (_, first) = server.post(&body);
    let (_, second) = server.post(&body);
    assert_eq!(
        first["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{first}"
    );
    assert_eq!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"], 32,
        "{second}"
    );
    assert_eq!(
        first["choices"][0]["token_ids"],
        second["choices"][0]["token_ids"]
    );
    assert!(server.metric("vllm:prefix_cache_hits_total") >= 32.0);

    // A client that goes away mid-stream: its blocks come back.
    let resp = Server::agent()
        .post(format!("{}/v1/completions", server.url))
        .send(
            json!({"prompt": [1, 2, 3], "max_tokens": 1500, "ignore_eos": true,
                   "temperature": 0, "stream": true})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
    let mut reader = BufReader::new(resp.into_body().into_reader());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.starts_with("data: "), "{first}");
    server.wait_for("blocks in use", || {
        server.metric("dyno:kv_cache_blocks_used") > 0.0
    });
    drop(reader);
    server.wait_for("the aborted request's blocks to be freed", || {
        server.metric("dyno:kv_cache_blocks_used") == 0.0
            && server.metric("vllm:num_requests_running") == 0.0
    });
    assert_eq!(
        server.metric("vllm:request_success_total{model_name=\"tiny\",engine=\"0\",finished_reason=\"abort\"}"),
        1.0
    );
    assert!(server.metric("vllm:generation_tokens_total") >= 210.0);
}

#[test]
fn a_full_queue_answers_503_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        dir.path(),
        "num_kv_blocks = 256\nmax_num_seqs = 1\n",
        &["--max-waiting", "0"],
    );
    let busy = json!({"prompt": [1, 2], "max_tokens": 300, "ignore_eos": true, "temperature": 0});
    std::thread::scope(|s| {
        let first = s.spawn(|| server.post(&busy));
        server.wait_for("the first request to run", || {
            server.metric("vllm:num_requests_running") == 1.0
        });
        let resp = Server::agent()
            .post(format!("{}/v1/completions", server.url))
            .send(
                json!({"prompt": [1], "max_tokens": 2})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers().get("retry-after").unwrap(), "1");
        // SIGTERM while the first request runs: it still completes.
        let pid = server.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let (status, v) = first.join().unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 300);
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "engine serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

/// `--idle-spin-us` (the GPU default, off on the CPU): with the engine
/// thread and one HTTP worker polling between requests, back-to-back
/// streamed requests get the same tokens as with polling off, and SIGTERM
/// during the poll (2 s here) still ends the server promptly: neither the
/// polling engine thread nor the polling task holds it up.
#[test]
fn polling_between_requests_serves_the_same_tokens_and_still_drains() {
    let body = json!({"prompt": [3, 1, 4, 1, 5], "max_tokens": 24, "ignore_eos": true,
        "temperature": 0, "stream": true});
    let tokens_of = |server: &Server| -> Vec<Vec<String>> {
        (0..4)
            .map(|_| {
                let events = server.stream(&body);
                assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
                events
                    .iter()
                    .filter_map(|e| serde_json::from_str::<Value>(e).ok())
                    .filter_map(|v| v["choices"][0]["text"].as_str().map(str::to_string))
                    .collect()
            })
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let plain = Server::start(dir.path(), "", &["--idle-spin-us", "0"]);
    let expected = tokens_of(&plain);
    assert!(expected.iter().all(|t| t.len() == 24), "{expected:?}");
    drop(plain);
    let mut server = Server::start(dir.path(), "", &["--idle-spin-us", "2000000"]);
    assert_eq!(tokens_of(&server), expected);
    let pid = server.child.id().to_string();
    let start = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "engine serve did not exit after SIGTERM while polling"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// The official `openai` Python client (PyPI) streams a completion. Skipped
/// with a message when the module is missing, except under CI (`CI` set),
/// where `.ci/run` installs it and a skip would hide a break.
#[test]
fn the_openai_python_client_streams_a_completion() {
    let has_openai = Command::new("python3")
        .args(["-c", "import openai"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_openai {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test: `.ci/run` installs the openai package (pip install openai)"
        );
        eprintln!("SKIPPED: python3 cannot import openai (pip install openai to run this test)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        CONFIG,
        &["--served-model-name", "tiny", "--api-key", "k1"],
    );
    let script = r#"
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="k1")
assert [m.id for m in client.models.list()] == ["tiny"]
stream = client.completions.create(model="tiny", prompt=[1, 2, 3], max_tokens=12,
    temperature=0, stream=True, stream_options={"include_usage": True})
texts, usage = [], None
for chunk in stream:
    if chunk.choices:
        texts.append(chunk.choices[0].text)
    if chunk.usage:
        usage = chunk.usage
whole = client.completions.create(model="tiny", prompt=[1, 2, 3], max_tokens=12, temperature=0)
assert "".join(texts) == whole.choices[0].text, (texts, whole)
assert usage.completion_tokens == 12 and usage.prompt_tokens == 3, usage
try:
    openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="wrong").models.list()
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError:
    pass
print("ok", len(texts))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &server.url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok"), "{stdout}");
}

/// A byte-level BPE (the 256 bytes and a few merges), saved as
/// tokenizer.json, and a chat template in tokenizer_config.json.
#[cfg(feature = "text")]
fn add_tokenizer_and_chat_template(model: &Path) -> tokenizers::Tokenizer {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let mut vocab: tokenizers::models::bpe::Vocab = ByteLevel::alphabet()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i as u32))
        .collect();
    let merges = vec![("h".to_string(), "i".to_string())];
    vocab.insert("hi".into(), vocab.len() as u32);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::default()));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.save(model.join("tokenizer.json"), false).unwrap();
    let template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>";
    std::fs::write(
        model.join("tokenizer_config.json"),
        json!({"chat_template": template, "add_bos_token": false}).to_string(),
    )
    .unwrap();
    tok
}

/// With a tokenizer and a chat template, /v1/chat/completions renders the
/// messages (usage.prompt_tokens is the rendered prompt's length), answers
/// whole (`chat.completion`, a `message`) and streamed
/// (`chat.completion.chunk`s with a `delta`, then usage, then [DONE]), and
/// bad chat requests get a 400 naming the field.
#[cfg(feature = "text")]
#[test]
fn chat_completions_render_the_template_whole_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let tok = add_tokenizer_and_chat_template(&model);
    let server = Server::start_model(&model, dir.path(), "", &[]);
    let messages =
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]);
    let rendered = "<system>be brief\n<user>hi\n<assistant>";
    let want_prompt = tok.encode(rendered, true).unwrap().len() as u64;
    let (status, v) = server.post_at(
        "/v1/chat/completions",
        &json!({"messages": messages, "max_completion_tokens": 4, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], want_prompt, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 4);

    let events = server.stream_at(
        "/v1/chat/completions",
        &json!({"messages": messages, "max_tokens": 3, "temperature": 0, "ignore_eos": true,
                "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let deltas = chunks
        .iter()
        .filter(|c| !c["choices"].as_array().unwrap().is_empty());
    assert_eq!(deltas.clone().count(), 3);
    assert!(deltas
        .clone()
        .all(|c| c["choices"][0]["delta"]["content"].is_string()));
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 3);

    for (body, field) in [
        (json!({"max_tokens": 2}), "messages"),
        (json!({"messages": messages, "tools": []}), "tools"),
        (json!({"messages": [{"role": "user"}]}), "content"),
    ] {
        let (status, v) = server.post_at("/v1/chat/completions", &body);
        assert_eq!(status, 400, "{body} -> {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{v}"
        );
    }
}
