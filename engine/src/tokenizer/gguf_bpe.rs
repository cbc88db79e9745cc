//! A byte-level BPE tokenizer from GGUF metadata (`tokenizer.ggml.model` =
//! `gpt2`): the vocabulary (`tokens`), `merges`, `token_type` (control and
//! user-defined tokens are matched in text before BPE), BOS/EOS ids and the
//! pre-tokenizer (`tokenizer.ggml.pre`), which names the regex splitting
//! text into words. The regexes are those of the models' `tokenizer.json`s
//! (and llama.cpp's `llama-vocab.cpp`).

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::TextTokenizer;
use crate::gguf::Metadata;

/// llama.cpp's token types.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(super) enum BuildError {
    Missing(String),
    Invalid(String),
}

pub(super) fn from_metadata(m: &Metadata) -> Result<TextTokenizer, BuildError> {
    let inv = BuildError::Invalid;
    let model = m.str("tokenizer.ggml.model").map_err(inv)?.ok_or_else(|| {
        BuildError::Missing("tokenizer.ggml.model: missing from the GGUF metadata".into())
    })?;
    if model != "gpt2" {
        return Err(BuildError::Invalid(format!(
            "tokenizer.ggml.model: {model:?} is not supported (supported: gpt2, byte-level BPE)"
        )));
    }
    let tokens = m
        .str_array("tokenizer.ggml.tokens")
        .map_err(inv)?
        .ok_or_else(|| BuildError::Missing("tokenizer.ggml.tokens: missing".into()))?;
    let merges = m
        .str_array("tokenizer.ggml.merges")
        .map_err(BuildError::Invalid)?
        .ok_or_else(|| BuildError::Missing("tokenizer.ggml.merges: missing".into()))?;
    let types = m
        .int_array("tokenizer.ggml.token_type")
        .map_err(BuildError::Invalid)?
        .unwrap_or_default();
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(BuildError::Invalid(format!(
            "tokenizer.ggml.token_type: {} entries for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let mut vocab = Vocab::default();
    for (id, &t) in tokens.iter().enumerate() {
        // A repeated string keeps its first id (as llama.cpp's lookup does).
        vocab.entry(t.to_string()).or_insert(id as u32);
    }
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, line)| {
            line.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    BuildError::Invalid(format!(
                        "tokenizer.ggml.merges[{i}]: {line:?} is not two tokens separated by a space"
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| BuildError::Invalid(format!("tokenizer.ggml.merges: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let pre = m
        .str("tokenizer.ggml.pre")
        .map_err(BuildError::Invalid)?
        .unwrap_or("default");
    inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    let (mut special, mut user) = (Vec::new(), Vec::new());
    for (&t, &ty) in tokens.iter().zip(&types) {
        match ty {
            TOKEN_TYPE_CONTROL => special.push(AddedToken::from(t.to_string(), true)),
            TOKEN_TYPE_USER_DEFINED => user.push(AddedToken::from(t.to_string(), false)),
            _ => {}
        }
    }
    inner.add_special_tokens(&special);
    inner.add_tokens(&user);

    let token_id = |key: &str| -> Result<Option<u32>, BuildError> {
        match m.usize(key).map_err(BuildError::Invalid)? {
            None => Ok(None),
            Some(id) if id < tokens.len() => Ok(Some(id as u32)),
            Some(id) => Err(BuildError::Invalid(format!(
                "{key}: {id} is not below the {} tokens",
                tokens.len()
            ))),
        }
    };
    let bos = token_id("tokenizer.ggml.bos_token_id")?;
    let eos = token_id("tokenizer.ggml.eos_token_id")?;
    // llama.cpp's default for BPE vocabularies is to add BOS.
    let add_bos = m
        .bool("tokenizer.ggml.add_bos_token")
        .map_err(BuildError::Invalid)?
        .unwrap_or(true);
    let text = |id: Option<u32>| {
        id.map(|i| tokens[i as usize].to_string())
            .unwrap_or_default()
    };
    Ok(TextTokenizer {
        inner,
        add_bos: if add_bos { bos } else { None },
        chat_template: m
            .str("tokenizer.chat_template")
            .map_err(BuildError::Invalid)?
            .map(str::to_string),
        bos_text: text(bos),
        eos_text: text(eos),
    })
}

fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, BuildError> {
    let split = |pattern: &str| -> Result<PreTokenizerWrapper, BuildError> {
        let split = Split::new(
            SplitPattern::Regex(pattern.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| BuildError::Invalid(format!("tokenizer.ggml.pre {pre:?}: {e}")))?;
        Ok(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into())
    };
    match pre {
        "default" | "gpt2" | "gpt-2" => Ok(ByteLevel::new(false, true, true).into()),
        "smollm" => Ok(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into()),
        "llama-bpe" | "llama3" => split(LLAMA3_SPLIT),
        "qwen2" => split(QWEN2_SPLIT),
        other => Err(BuildError::Invalid(format!(
            "tokenizer.ggml.pre: {other:?} is not supported (supported: default, gpt2, smollm, llama-bpe, qwen2)"
        ))),
    }
}
