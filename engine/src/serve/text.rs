//! The hook for text: prompts given as strings, generated text, and chat
//! templates need a tokenizer. Synthetic checkpoints have none, so
//! `engine serve` runs with `None` and asks for token ids; with the `text`
//! feature, a checkpoint with a tokenizer (GGUF or `tokenizer.json`) gives
//! a [`TextCodec`] to [`super::ServeOptions`], and string prompts, decoded
//! `text` and `/v1/chat/completions` (through
//! [`TextCodec::apply_chat_template`]) work.

/// Tokenizer and chat template of a served model.
pub trait TextCodec: Send + Sync {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String>;
    fn decode(&self, ids: &[u32]) -> String;
    /// The prompt for OpenAI chat `messages` (a JSON list), or why not
    /// (for example: the checkpoint has no chat template).
    fn apply_chat_template(&self, messages: &serde_json::Value) -> Result<String, String>;
}
