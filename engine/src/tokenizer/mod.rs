//! Text in and out: a tokenizer (the `tokenizers` crate) built from a GGUF
//! file's metadata ([`gguf_bpe`]) or a HF directory's `tokenizer.json`, and
//! the model's chat template rendered with `minijinja` ([`chat_template`]).

pub mod chat_template;
mod gguf_bpe;

use std::path::Path;

pub use chat_template::ChatMessage;

use crate::weights::Checkpoint;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The checkpoint carries no tokenizer (synthetic presets, a GGUF with
    /// no `tokenizer.ggml.*` keys).
    #[error("{path}: no tokenizer: {reason}")]
    Missing { path: String, reason: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("tokenizer: {0}")]
    Run(String),
    #[error("chat template: {0}")]
    Template(String),
}

/// A model's tokenizer, its BOS handling and chat template.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// Prepended to every encoded text (GGUF `tokenizer.ggml.add_bos_token`).
    add_bos: Option<u32>,
    chat_template: Option<String>,
    bos_text: String,
    eos_text: String,
}

impl TextTokenizer {
    /// The tokenizer of `checkpoint`: from the GGUF metadata, or the
    /// directory's `tokenizer.json` (+ `tokenizer_config.json`'s template).
    pub fn from_checkpoint(checkpoint: &Checkpoint) -> Result<TextTokenizer, TokenizerError> {
        let path = checkpoint.source_path();
        match checkpoint.gguf_metadata() {
            Some(meta) => gguf_bpe::from_metadata(meta).map_err(|e| match e {
                gguf_bpe::BuildError::Missing(reason) => TokenizerError::Missing {
                    path: path.display().to_string(),
                    reason,
                },
                gguf_bpe::BuildError::Invalid(message) => TokenizerError::Invalid {
                    path: path.display().to_string(),
                    message,
                },
            }),
            None => from_hf_dir(path, checkpoint),
        }
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`)
    /// become their ids, as llama.cpp does with `parse_special`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Run(e.to_string()))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        ids.extend(self.add_bos);
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// The text of `ids`; special tokens are left out when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Run(e.to_string()))
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// `messages` rendered with the model's chat template and the
    /// generation prompt (the assistant turn's header) appended.
    pub fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String, TokenizerError> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            TokenizerError::Template(
                "the model has no chat template (tokenizer.chat_template)".into(),
            )
        })?;
        chat_template::render(template, messages, &self.bos_text, &self.eos_text)
    }
}

fn from_hf_dir(dir: &Path, checkpoint: &Checkpoint) -> Result<TextTokenizer, TokenizerError> {
    let file = dir.join("tokenizer.json");
    if !file.is_file() {
        return Err(TokenizerError::Missing {
            path: dir.display().to_string(),
            reason: "no tokenizer.json (synthetic checkpoints have none; use --prompt-ids)".into(),
        });
    }
    let inner = tokenizers::Tokenizer::from_file(&file).map_err(|e| TokenizerError::Invalid {
        path: file.display().to_string(),
        message: e.to_string(),
    })?;
    // tokenizer_config.json: the chat template and whether BOS is added.
    let config_path = dir.join("tokenizer_config.json");
    let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| TokenizerError::Invalid {
            path: config_path.display().to_string(),
            message: format!("not JSON: {e}"),
        })?,
        Err(_) => serde_json::Value::Null,
    };
    let text_of = |id: Option<u32>| id.and_then(|i| inner.id_to_token(i)).unwrap_or_default();
    let eos = checkpoint.config.eos_token_ids.first().copied();
    let bos = checkpoint.config.bos_token_id;
    let add_bos = config
        .get("add_bos_token")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    Ok(TextTokenizer {
        add_bos: if add_bos { bos } else { None },
        chat_template: config
            .get("chat_template")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string),
        bos_text: text_of(bos),
        eos_text: text_of(eos),
        inner,
    })
}
