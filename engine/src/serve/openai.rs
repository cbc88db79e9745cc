//! The OpenAI completions API as `engine serve` speaks it: the request body
//! (checked strictly: an unknown field or an unsupported option is a 400
//! naming it), the response and stream-chunk shapes, and OpenAI's error
//! shape.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use workloads::SamplingParams;

use super::text::TextCodec;

/// OpenAI's default when `max_tokens` is absent.
pub(crate) const DEFAULT_MAX_TOKENS: u32 = 16;

/// `prompt`: a string, a list of strings, a list of token ids, or a list of
/// such lists.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
    #[serde(default)]
    pub continuous_usage_stats: bool,
}

/// `POST /v1/completions`. Fields OpenAI defines that the engine cannot
/// honour are accepted only at their neutral value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub min_tokens: u32,
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    /// vLLM's convention: -1 (or 0) disables top-k.
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    // Neutral-only OpenAI fields.
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub best_of: Option<u32>,
    #[serde(default)]
    pub echo: bool,
    #[serde(default)]
    pub logprobs: Option<Value>,
    #[serde(default)]
    pub stop: Option<Value>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub suffix: Option<String>,
    /// Accepted and ignored (OpenAI's end-user id).
    #[serde(default)]
    #[allow(dead_code)]
    pub user: Option<String>,
}

/// A request the engine can run: one entry per prompt.
#[derive(Debug, Clone)]
pub(crate) struct Validated {
    pub prompts: Vec<Vec<u32>>,
    pub sampling: SamplingParams,
    pub min_tokens: u32,
    pub stream: bool,
    pub include_usage: bool,
    pub continuous_usage: bool,
}

/// A 4xx answer in OpenAI's error shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param,
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.status,
        }})
    }
}

/// Parses and checks a completions body. `seed_for_unseeded` gives the
/// seed of a sampled request that names none.
pub(crate) fn parse_completion(
    body: &[u8],
    codec: Option<&dyn TextCodec>,
    served_model: &str,
    seed_for_unseeded: impl FnOnce() -> u64,
) -> Result<Validated, ApiError> {
    let req: CompletionRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("invalid request body: {e}")))?;
    if let Some(model) = &req.model {
        if model != served_model {
            return Err(ApiError {
                status: 404,
                message: format!(
                    "the model `{model}` does not exist; this server serves `{served_model}`"
                ),
                kind: "NotFoundError",
                param: Some("model"),
            });
        }
    }
    let neutral: [(&'static str, bool); 9] = [
        ("n", req.n.is_some_and(|n| n != 1)),
        ("best_of", req.best_of.is_some_and(|n| n != 1)),
        ("echo", req.echo),
        (
            "logprobs",
            req.logprobs.as_ref().is_some_and(|v| !v.is_null()),
        ),
        ("stop", req.stop.as_ref().is_some_and(|v| !is_empty_stop(v))),
        (
            "presence_penalty",
            req.presence_penalty.is_some_and(|p| p != 0.0),
        ),
        (
            "frequency_penalty",
            req.frequency_penalty.is_some_and(|p| p != 0.0),
        ),
        (
            "logit_bias",
            req.logit_bias.as_ref().is_some_and(|m| !m.is_empty()),
        ),
        ("suffix", req.suffix.as_ref().is_some_and(|s| !s.is_empty())),
    ];
    if let Some((name, _)) = neutral.iter().find(|(_, set)| *set) {
        let hint = if *name == "stop" {
            " (stop strings need a tokenizer; use stop_token_ids)"
        } else {
            ""
        };
        return Err(ApiError::invalid(
            Some(name),
            format!("`{name}` is not supported by this server{hint}"),
        ));
    }

    let prompts = match req.prompt {
        Prompt::Ids(ids) => vec![ids],
        Prompt::IdLists(lists) => lists,
        Prompt::Text(text) => vec![encode(codec, &text)?],
        Prompt::Texts(texts) => texts
            .iter()
            .map(|t| encode(codec, t))
            .collect::<Result<_, _>>()?,
    };
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(ApiError::invalid(Some("prompt"), "the prompt is empty"));
    }

    let max_tokens = req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    if max_tokens == 0 {
        return Err(ApiError::invalid(
            Some("max_tokens"),
            "max_tokens must be at least 1",
        ));
    }
    if req.min_tokens > max_tokens {
        return Err(ApiError::invalid(
            Some("min_tokens"),
            format!(
                "min_tokens ({}) exceeds max_tokens ({max_tokens})",
                req.min_tokens
            ),
        ));
    }
    let temperature = req.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            Some("temperature"),
            format!("temperature must be in [0, 2], got {temperature}"),
        ));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            Some("top_p"),
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let top_k = match req.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 && k <= i64::from(u32::MAX) => k as u32,
        Some(k) => {
            return Err(ApiError::invalid(
                Some("top_k"),
                format!("top_k must be -1 (off) or a positive count, got {k}"),
            ))
        }
    };
    let options = req.stream_options.clone();
    if options.is_some() && !req.stream {
        return Err(ApiError::invalid(
            Some("stream_options"),
            "stream_options may only be set when stream is true",
        ));
    }
    let options = options.unwrap_or_default();
    let seed = match req.seed {
        Some(s) => s,
        None if temperature > 0.0 => seed_for_unseeded(),
        None => 0,
    };
    Ok(Validated {
        prompts,
        sampling: SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
            max_tokens,
            ignore_eos: req.ignore_eos,
            stop_token_ids: req.stop_token_ids,
        },
        min_tokens: req.min_tokens,
        stream: req.stream,
        include_usage: options.include_usage,
        continuous_usage: options.continuous_usage_stats,
    })
}

/// `POST /v1/chat/completions`: `messages` rendered with the model's chat
/// template and tokenized, `max_completion_tokens` as `max_tokens`; every
/// other field is validated as `/v1/completions` validates it.
pub(crate) fn parse_chat(
    body: &[u8],
    codec: Option<&dyn TextCodec>,
    served_model: &str,
    seed_for_unseeded: impl FnOnce() -> u64,
) -> Result<Validated, ApiError> {
    let mut req: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("invalid request body: {e}")))?;
    let obj = req
        .as_object_mut()
        .ok_or_else(|| ApiError::invalid(None, "the request body must be a JSON object"))?;
    if obj.contains_key("prompt") {
        return Err(ApiError::invalid(
            Some("prompt"),
            "chat completions take `messages`, not `prompt` (that is /v1/completions)",
        ));
    }
    let messages = obj
        .remove("messages")
        .ok_or_else(|| ApiError::invalid(Some("messages"), "`messages` is required"))?;
    if let Some(max) = obj.remove("max_completion_tokens") {
        if obj.contains_key("max_tokens") {
            return Err(ApiError::invalid(
                Some("max_completion_tokens"),
                "give `max_completion_tokens` or `max_tokens`, not both",
            ));
        }
        obj.insert("max_tokens".into(), max);
    }
    // Chat's `logprobs` is a boolean; false is the neutral value.
    if obj.get("logprobs") == Some(&Value::Bool(false)) {
        obj.remove("logprobs");
    }
    let codec = codec.ok_or_else(|| {
        ApiError::invalid(
            Some("messages"),
            "this model has no tokenizer or chat template, so /v1/chat/completions cannot \
             build a prompt; use /v1/completions with token-id prompts",
        )
    })?;
    let text = codec
        .apply_chat_template(&messages)
        .map_err(|e| ApiError::invalid(Some("messages"), e))?;
    obj.insert("prompt".into(), Value::String(text));
    let body = serde_json::to_vec(&req)
        .map_err(|e| ApiError::invalid(None, format!("invalid request body: {e}")))?;
    parse_completion(&body, Some(codec), served_model, seed_for_unseeded)
}

fn is_empty_stop(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn encode(codec: Option<&dyn TextCodec>, text: &str) -> Result<Vec<u32>, ApiError> {
    match codec {
        Some(c) => c.encode(text).map_err(|e| {
            ApiError::invalid(Some("prompt"), format!("cannot tokenize the prompt: {e}"))
        }),
        None => Err(ApiError::invalid(
            Some("prompt"),
            "this model has no tokenizer: send the prompt as a list of token ids \
             (or a list of such lists)",
        )),
    }
}

/// The text of generated tokens: decoded when the model has a tokenizer,
/// else each id written as ` <id>` (so clients that only read `text` still
/// see one piece per token); `token_ids` always carries the ids.
pub(crate) fn render_text(codec: Option<&dyn TextCodec>, ids: &[u32]) -> String {
    match codec {
        Some(c) => c.decode(ids),
        None => ids.iter().map(|t| format!(" {t}")).collect(),
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub(crate) struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// OpenAI's (and vLLM's, with `--enable-prompt-tokens-details`): how
    /// many prompt tokens came from the prefix cache. Only on usage sent
    /// after the requests finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub(crate) struct PromptTokensDetails {
    pub cached_tokens: u64,
}

impl Usage {
    pub fn new(prompt: u64, completion: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: None,
        }
    }

    /// With the prompt tokens found in the prefix cache.
    pub fn with_cached(self, cached_tokens: u64) -> Usage {
        Usage {
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens }),
            ..self
        }
    }
}

/// OpenAI's finish reasons: `stop` for EOS and stop tokens, `length` for
/// max_tokens.
pub(crate) fn finish_reason(reason: workloads::FinishReason) -> &'static str {
    match reason {
        workloads::FinishReason::Length => "length",
        workloads::FinishReason::Eos | workloads::FinishReason::StopToken => "stop",
        workloads::FinishReason::Rejected => "abort",
        // Non-finite logits ended the request: no more tokens can be trusted.
        workloads::FinishReason::Error => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Validated, ApiError> {
        parse_completion(body.as_bytes(), None, "m", || 7)
    }

    /// Bytes as token ids; the chat template joins `role: content` lines.
    struct ByteCodec;

    impl TextCodec for ByteCodec {
        fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
            Ok(text.bytes().map(u32::from).collect())
        }
        fn decode(&self, ids: &[u32]) -> String {
            ids.iter().map(|&i| i as u8 as char).collect()
        }
        fn apply_chat_template(&self, messages: &Value) -> Result<String, String> {
            let list = messages.as_array().ok_or("`messages` must be a list")?;
            Ok(list
                .iter()
                .map(|m| {
                    format!(
                        "{}: {}\n",
                        m["role"].as_str().unwrap_or("?"),
                        m["content"].as_str().unwrap_or("")
                    )
                })
                .collect())
        }
    }

    fn chat(body: &str) -> Result<Validated, ApiError> {
        parse_chat(body.as_bytes(), Some(&ByteCodec), "m", || 7)
    }

    #[test]
    fn chat_messages_become_the_templated_prompt() {
        let v = chat(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":5,"logprobs":false,"stream":true}"#,
        )
        .unwrap();
        assert_eq!(
            v.prompts,
            vec![b"user: hi\n"
                .iter()
                .map(|&b| u32::from(b))
                .collect::<Vec<_>>()]
        );
        assert_eq!(v.sampling.max_tokens, 5);
        assert!(v.stream);
    }

    #[test]
    fn bad_chat_requests_name_the_field() {
        let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
        for (body, needle) in [
            (r#"{"model":"m"}"#.to_string(), "messages"),
            (format!(r#"{{{msgs},"prompt":[1]}}"#), "not `prompt`"),
            (
                format!(r#"{{{msgs},"max_tokens":3,"max_completion_tokens":3}}"#),
                "not both",
            ),
            (format!(r#"{{{msgs},"tools":[]}}"#), "tools"),
            (r#"{"messages":"hi"}"#.to_string(), "list"),
            ("[1]".to_string(), "JSON object"),
        ] {
            let err = chat(&body).unwrap_err();
            assert_eq!(err.status, 400, "{body}");
            assert!(err.message.contains(needle), "{body}: {}", err.message);
        }
        let err = parse_chat(format!("{{{msgs}}}").as_bytes(), None, "m", || 7).unwrap_err();
        assert!(
            err.message.contains("no tokenizer or chat template"),
            "{}",
            err.message
        );
    }

    #[test]
    fn token_id_prompts_and_defaults() {
        let v = parse(r#"{"model":"m","prompt":[1,2,3]}"#).unwrap();
        assert_eq!(v.prompts, vec![vec![1, 2, 3]]);
        assert_eq!(v.sampling.max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(v.sampling.temperature, 1.0);
        assert_eq!(v.sampling.seed, 7, "unseeded sampling gets a seed");
        let v = parse(r#"{"prompt":[[1],[2,3]],"temperature":0,"top_k":-1}"#).unwrap();
        assert_eq!(v.prompts.len(), 2);
        assert_eq!((v.sampling.seed, v.sampling.top_k), (0, 0));
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases = [
            (r#"{"prompt":[1],"max_tokenz":3}"#, "max_tokenz"),
            (r#"{"prompt":[1],"#, "EOF"),
            (r#"{"prompt":"hello"}"#, "tokenizer"),
            (r#"{"prompt":[]}"#, "empty"),
            (r#"{"prompt":[1],"n":2}"#, "`n`"),
            (r#"{"prompt":[1],"stop":["x"]}"#, "stop_token_ids"),
            (r#"{"prompt":[1],"temperature":3}"#, "temperature"),
            (
                r#"{"prompt":[1],"max_tokens":2,"min_tokens":3}"#,
                "min_tokens",
            ),
            (
                r#"{"prompt":[1],"stream_options":{"include_usage":true}}"#,
                "stream",
            ),
            (r#"{"prompt":[1],"top_k":-5}"#, "top_k"),
        ];
        for (body, needle) in cases {
            let err = parse(body).unwrap_err();
            assert_eq!(err.status, 400, "{body}");
            assert!(err.message.contains(needle), "{body}: {}", err.message);
            assert_eq!(err.body()["error"]["type"], "invalid_request_error");
        }
        let err = parse(r#"{"model":"other","prompt":[1]}"#).unwrap_err();
        assert_eq!(err.status, 404);
    }

    #[test]
    fn text_without_tokenizer_shows_ids() {
        assert_eq!(render_text(None, &[5, 17]), " 5 17");
    }
}
