//! Text prompts of exact token lengths, for servers that take no token-id
//! prompts (`--prompt-format text --tokenizer PATH`).
//!
//! The workload's prompt is a list of token ids of the intended length. Its
//! text is their decoding, but decoding then encoding again rarely gives
//! the same count (byte-level pieces merge, special tokens vanish, invalid
//! UTF-8 becomes U+FFFD), so the text is repaired until the tokenizer
//! counts exactly the intended length:
//!
//! 1. token phase: decode the ids and count the text's tokens; too many,
//!    drop that many ids from the end; too few, append that many more ids
//!    (the prompt's own ids again, cyclically); repeat (at most
//!    [`TOKEN_ROUNDS`] times);
//! 2. character phase, if that did not settle: cut characters from the end
//!    until the count is at most the intended one, then append the first
//!    of `" a"`, `"a"`, `" ."`, `"."`, `" "` that adds exactly one token,
//!    until it is exact (`" a"` is one token in the byte-level BPEs of
//!    Llama, Qwen and SmolLM).
//!
//! The count is the tokenizer's with its special tokens (BOS, where its
//! post-processor adds one), as a server counts `usage.prompt_tokens`; the
//! server's count is checked against the intended length for every request.
//!
//! The `tokenizers` crate is behind xtask's cargo feature `text` (off by
//! default: about 95 s of CPU to build); without it, asking for text
//! prompts is an error that says how to enable it.

use std::path::{Path, PathBuf};

/// Rounds of the token phase before the character phase takes over.
pub const TOKEN_ROUNDS: usize = 16;

/// What the character phase appends, one token at a time.
const FILLERS: [&str; 5] = [" a", "a", " .", ".", " "];

#[derive(Debug, thiserror::Error)]
pub enum TextPromptError {
    #[error(
        "--prompt-format text needs a tokenizer, and this xtask was built without its `text` \
         feature (the tokenizers crate): run `cargo run --release -p xtask --features text -- \
         bench ...`, or send token ids (--prompt-format ids, the default)"
    )]
    NotBuilt,
    #[error(
        "--prompt-format text needs --tokenizer PATH (a tokenizer.json, or a directory with one)"
    )]
    NoTokenizer,
    #[error("--tokenizer {path}: no such file or directory")]
    Missing { path: PathBuf },
    #[error(
        "--tokenizer {path}: a GGUF file; its tokenizer is not read here: pass the model's \
         tokenizer.json (Hugging Face checkpoints have one)"
    )]
    Gguf { path: PathBuf },
    #[error("--tokenizer {path}: not a tokenizer: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("tokenizer {path}: {message}")]
    Run { path: PathBuf, message: String },
    #[error(
        "tokenizer {path}: could not build a text of exactly {want} tokens from request {id}'s \
         prompt (closest: {got})"
    )]
    NoExactText {
        path: PathBuf,
        id: u64,
        want: usize,
        got: usize,
    },
}

/// The tokenizer file `path` names: the file itself, or `tokenizer.json`
/// in a directory.
pub fn tokenizer_file(path: &Path) -> Result<PathBuf, TextPromptError> {
    if path.is_dir() {
        let file = path.join("tokenizer.json");
        if file.is_file() {
            return Ok(file);
        }
        return Err(TextPromptError::Missing { path: file });
    }
    if !path.is_file() {
        return Err(TextPromptError::Missing {
            path: path.to_path_buf(),
        });
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return Err(TextPromptError::Gguf {
            path: path.to_path_buf(),
        });
    }
    Ok(path.to_path_buf())
}

/// What a tokenizer must do for the repair: decode ids, count a text's
/// tokens as a server would.
pub trait Codec {
    fn decode(&self, ids: &[u32]) -> Result<String, String>;
    fn count(&self, text: &str) -> Result<usize, String>;
}

/// A text of exactly `want` tokens under `codec`, from the prompt `ids`
/// (see the module's comment for the method); `Err(closest count)` when
/// neither phase gets there.
pub fn exact_text(
    codec: &dyn Codec,
    ids: &[u32],
    want: usize,
) -> Result<Result<String, usize>, String> {
    if ids.is_empty() || want == 0 {
        return Ok(Err(0));
    }
    let mut current: Vec<u32> = ids.to_vec();
    let mut text = codec.decode(&current)?;
    let mut n = codec.count(&text)?;
    for _ in 0..TOKEN_ROUNDS {
        if n == want {
            return Ok(Ok(text));
        }
        if n > want {
            let drop = (n - want).min(current.len().saturating_sub(1));
            if drop == 0 {
                break;
            }
            current.truncate(current.len() - drop);
        } else {
            let start = current.len();
            current.extend((0..want - n).map(|i| ids[(start + i) % ids.len()]));
        }
        text = codec.decode(&current)?;
        n = codec.count(&text)?;
    }
    if n == want {
        return Ok(Ok(text));
    }
    // Character phase.
    while n > want && !text.is_empty() {
        text.pop();
        n = codec.count(&text)?;
    }
    while n < want {
        // The first filler that adds exactly one token (after a word
        // " a" does in most BPEs; "a" after a space or a symbol).
        let mut grown = None;
        for filler in FILLERS {
            let candidate = format!("{text}{filler}");
            let m = codec.count(&candidate)?;
            if m == n + 1 {
                grown = Some((candidate, m));
                break;
            }
        }
        let Some((t, m)) = grown else {
            return Ok(Err(n));
        };
        text = t;
        n = m;
    }
    Ok(if n == want { Ok(text) } else { Err(n) })
}

#[cfg(feature = "text")]
mod with_tokenizers {
    use super::*;

    /// A `tokenizers` tokenizer from a tokenizer.json.
    pub struct PromptTokenizer {
        pub path: PathBuf,
        inner: tokenizers::Tokenizer,
    }

    impl PromptTokenizer {
        pub fn load(path: &Path) -> Result<PromptTokenizer, TextPromptError> {
            let file = tokenizer_file(path)?;
            let inner =
                tokenizers::Tokenizer::from_file(&file).map_err(|e| TextPromptError::Invalid {
                    path: file.clone(),
                    message: e.to_string(),
                })?;
            Ok(PromptTokenizer { path: file, inner })
        }

        /// The text of request `id`'s prompt, exactly `ids.len()` tokens long.
        pub fn prompt_text(&self, id: u64, ids: &[u32]) -> Result<String, TextPromptError> {
            let run = |message: String| TextPromptError::Run {
                path: self.path.clone(),
                message,
            };
            match exact_text(self, ids, ids.len()).map_err(run)? {
                Ok(text) => Ok(text),
                Err(got) => Err(TextPromptError::NoExactText {
                    path: self.path.clone(),
                    id,
                    want: ids.len(),
                    got,
                }),
            }
        }
    }

    impl Codec for PromptTokenizer {
        fn decode(&self, ids: &[u32]) -> Result<String, String> {
            self.inner.decode(ids, true).map_err(|e| e.to_string())
        }

        fn count(&self, text: &str) -> Result<usize, String> {
            self.inner
                .encode(text, true)
                .map(|e| e.len())
                .map_err(|e| e.to_string())
        }
    }
}

#[cfg(feature = "text")]
pub use with_tokenizers::PromptTokenizer;

/// The text of every request's prompt (by request id), exactly as long in
/// tokens as its token-id prompt under the tokenizer at `path`.
#[cfg(feature = "text")]
pub fn build_prompts(
    path: &Path,
    requests: &[workloads::Request],
) -> Result<std::collections::BTreeMap<u64, String>, TextPromptError> {
    let tokenizer = PromptTokenizer::load(path)?;
    requests
        .iter()
        .map(|r| Ok((r.id, tokenizer.prompt_text(r.id, &r.prompt_token_ids)?)))
        .collect()
}

/// Without the `text` feature: the path is still checked (a typo is worth
/// knowing first), then the error says how to enable the feature.
#[cfg(not(feature = "text"))]
pub fn build_prompts(
    path: &Path,
    _requests: &[workloads::Request],
) -> Result<std::collections::BTreeMap<u64, String>, TextPromptError> {
    tokenizer_file(path)?;
    Err(TextPromptError::NotBuilt)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy tokenizer: every pair "ab" is one token, any other character
    /// one token; decoding id 1 gives "a", 2 "b", 3 "ab", others "x";
    /// counting adds a BOS.
    struct Toy;

    impl Codec for Toy {
        fn decode(&self, ids: &[u32]) -> Result<String, String> {
            Ok(ids
                .iter()
                .map(|&i| match i {
                    1 => "a",
                    2 => "b",
                    3 => "ab",
                    _ => "x",
                })
                .collect())
        }

        fn count(&self, text: &str) -> Result<usize, String> {
            Ok(1 + text.len() - text.matches("ab").count())
        }
    }

    #[test]
    fn repair_reaches_the_exact_count() {
        // "a" "b" decode to "ab", one token: the text must grow.
        for ids in [
            vec![1, 2, 1, 2, 1, 2],
            vec![3, 3, 3],
            vec![1],
            vec![2, 1, 2, 9, 9, 1, 2],
        ] {
            let text = exact_text(&Toy, &ids, ids.len()).unwrap().unwrap();
            assert_eq!(Toy.count(&text).unwrap(), ids.len(), "{ids:?} -> {text:?}");
        }
    }

    #[test]
    fn impossible_lengths_say_how_close_they_got() {
        // An empty prompt has no text to build.
        assert_eq!(exact_text(&Toy, &[], 0).unwrap(), Err(0));
    }

    #[test]
    fn bad_tokenizer_paths_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = tokenizer_file(&dir.path().join("nope.json")).unwrap_err();
        assert!(e.to_string().contains("nope.json: no such file"), "{e}");
        let e = tokenizer_file(dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("tokenizer.json: no such file"),
            "{e}"
        );
        let gguf = dir.path().join("m.gguf");
        std::fs::write(&gguf, b"GGUF").unwrap();
        let e = tokenizer_file(&gguf).unwrap_err();
        assert!(e.to_string().contains("GGUF"), "{e}");
        let json = dir.path().join("tokenizer.json");
        std::fs::write(&json, b"{}").unwrap();
        assert_eq!(tokenizer_file(dir.path()).unwrap(), json);
    }

    #[cfg(not(feature = "text"))]
    #[test]
    fn without_the_feature_the_error_says_how_to_enable_it() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("tokenizer.json");
        std::fs::write(&json, b"{}").unwrap();
        let e = build_prompts(&json, &[]).unwrap_err().to_string();
        assert!(e.contains("--features text"), "{e}");
    }

    #[cfg(feature = "text")]
    #[test]
    fn a_file_that_is_no_tokenizer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("tokenizer.json");
        std::fs::write(&json, b"{\"not\": \"a tokenizer\"}").unwrap();
        let e = build_prompts(&json, &[]).unwrap_err().to_string();
        assert!(e.contains("not a tokenizer"), "{e}");
    }

    /// A byte-level BPE with merges, as real models have: decoding then
    /// encoding changes counts, and the repair still lands exactly.
    #[cfg(feature = "text")]
    #[test]
    fn byte_level_bpe_prompts_are_exact() {
        use tokenizers::models::bpe::BPE;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        let alphabet = ByteLevel::alphabet();
        let mut vocab: std::collections::HashMap<String, u32> = alphabet
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), i as u32))
            .collect();
        let merges = vec![
            ("h".to_string(), "e".to_string()),
            ("l".to_string(), "l".to_string()),
            ("he".to_string(), "ll".to_string()),
            ("Ġ".to_string(), "w".to_string()),
        ];
        for (a, b) in &merges {
            let n = vocab.len() as u32;
            vocab.insert(format!("{a}{b}"), n);
        }
        let bpe = BPE::builder()
            .vocab_and_merges(
                vocab
                    .into_iter()
                    .collect::<tokenizers::models::bpe::Vocab>(),
                merges,
            )
            .build()
            .unwrap();
        let mut tok = tokenizers::Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(ByteLevel::default()));
        tok.with_decoder(Some(ByteLevel::default()));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokenizer.json");
        tok.save(&file, false).unwrap();
        let tokenizer = PromptTokenizer::load(dir.path()).unwrap();
        let mut rng = 7u64;
        for len in [1usize, 2, 5, 16, 64, 200] {
            // Ids that decode to "h", "e", "l" (which merge) and others,
            // and invalid UTF-8 pieces.
            let ids: Vec<u32> = (0..len)
                .map(|_| {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (rng >> 33) as u32 % 260
                })
                .collect();
            let text = tokenizer.prompt_text(0, &ids).unwrap();
            assert_eq!(tokenizer.count(&text).unwrap(), len, "{ids:?} -> {text:?}");
        }
    }
}
