//! The model a run measures: a Hugging Face checkpoint directory, a GGUF
//! file, or a synthetic preset that `engine synth` writes into a cache on
//! first use.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Seed of the synthetic weights: fixed, so every machine measures the same
/// checkpoint (speed does not depend on weight values; hashes do).
pub const SYNTH_SEED: u64 = 0;

#[derive(Debug, Clone)]
pub struct Model {
    /// What the user named: a preset, a directory or a GGUF file.
    pub name: String,
    /// The checkpoint directory or GGUF file the engine loads.
    pub path: PathBuf,
}

/// Resolves `spec` to a checkpoint: an existing directory or `.gguf` file
/// is used as is; anything else is a preset, synthesized into
/// `<cache>/<preset>-seed<k>/` unless already there.
pub fn resolve(spec: &str, engine: &Path, cache: &Path) -> anyhow::Result<Model> {
    let as_path = Path::new(spec);
    if as_path.is_dir() {
        if !as_path.join("config.json").is_file() {
            bail!("model directory {spec} has no config.json");
        }
        return Ok(Model {
            name: spec.to_string(),
            path: as_path.to_path_buf(),
        });
    }
    if as_path.is_file() {
        if !is_gguf(as_path) {
            bail!(
                "model {spec} is a file but not a .gguf: give a checkpoint directory \
                 (config.json + safetensors), a GGUF file or a preset name"
            );
        }
        return Ok(Model {
            name: spec.to_string(),
            path: as_path.to_path_buf(),
        });
    }
    let dir = cache.join(format!("{spec}-seed{SYNTH_SEED}"));
    if !dir.join("config.json").is_file() {
        synthesize(spec, engine, &dir)?;
    }
    Ok(Model {
        name: spec.to_string(),
        path: dir,
    })
}

fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Writes the preset into a temporary sibling and renames it into place,
/// so an interrupted synthesis never leaves a half-written cache entry.
fn synthesize(preset: &str, engine: &Path, dir: &Path) -> anyhow::Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(".synth-{preset}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!(
        "synthesizing model preset `{preset}` into {}",
        dir.display()
    );
    let out = duct::cmd(
        engine,
        [
            "synth".as_ref(),
            "--preset".as_ref(),
            preset.as_ref(),
            "--seed".as_ref(),
            SYNTH_SEED.to_string().as_ref(),
            "--out".as_ref(),
            tmp.as_os_str(),
        ],
    )
    .stderr_to_stdout()
    .stdout_capture()
    .unchecked()
    .run()
    .with_context(|| format!("cannot run {} synth", engine.display()))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!(
            "`engine synth --preset {preset}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        // Another bench run synthesized it meanwhile: theirs is as good.
        Err(_) if dir.join("config.json").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("moving the model into {}", dir.display())),
    }
}

/// The token ids a generated prompt may use: below the vocabulary size and
/// none of the model's special tokens, read from its `config.json` (or, for
/// a GGUF file, from `engine inspect`).
#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    pub vocab_size: u32,
    pub special: Vec<u32>,
}

pub fn vocab(model: &Model, engine: &Path) -> anyhow::Result<Vocab> {
    if model.path.is_file() {
        return inspected_vocab(&model.path, engine);
    }
    let path = model.path.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_vocab(&text).with_context(|| format!("in {}", path.display()))
}

/// The vocabulary of a GGUF file, as the engine's own loader reads it.
fn inspected_vocab(file: &Path, engine: &Path) -> anyhow::Result<Vocab> {
    let out = duct::cmd(
        engine,
        ["inspect".as_ref(), "--model".as_ref(), file.as_os_str()],
    )
    .stderr_capture()
    .stdout_capture()
    .unchecked()
    .run()
    .with_context(|| format!("cannot run {} inspect", engine.display()))?;
    if !out.status.success() {
        bail!(
            "`engine inspect --model {}` failed ({}): {}",
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let info: workloads::ModelInfo = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "`engine inspect --model {}` printed no model info",
            file.display()
        )
    })?;
    Ok(Vocab {
        vocab_size: info.vocab_size,
        special: info.special_token_ids,
    })
}

/// The model's content hash for the fingerprint: every file of a
/// directory, or the GGUF file.
pub fn content_hash(model: &Model) -> anyhow::Result<String> {
    let hashed = if model.path.is_file() {
        crate::fingerprint::hash_file(&model.path)
    } else {
        crate::fingerprint::hash_dir(&model.path)
    };
    hashed.with_context(|| format!("hashing the model {}", model.path.display()))
}

fn parse_vocab(config_json: &str) -> anyhow::Result<Vocab> {
    let v: serde_json::Value = serde_json::from_str(config_json)?;
    let vocab_size = v["vocab_size"]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .context("field `vocab_size` is missing or not a u32")?;
    let mut special = Vec::new();
    for field in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        match &v[field] {
            serde_json::Value::Number(n) => special.extend(n.as_u64().map(|x| x as u32)),
            serde_json::Value::Array(ids) => {
                special.extend(ids.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
            }
            _ => {}
        }
    }
    special.sort_unstable();
    special.dedup();
    Ok(Vocab {
        vocab_size,
        special,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vocab_and_special_tokens() {
        let v = parse_vocab(r#"{"vocab_size": 512, "bos_token_id": 1, "eos_token_id": [2, 1]}"#)
            .unwrap();
        assert_eq!(
            v,
            Vocab {
                vocab_size: 512,
                special: vec![1, 2]
            }
        );
        let err = parse_vocab(r#"{"hidden_size": 8}"#).unwrap_err();
        assert!(err.to_string().contains("vocab_size"), "{err}");
    }

    #[test]
    fn existing_directory_without_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(
            dir.path().to_str().unwrap(),
            Path::new("engine"),
            dir.path(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
    }
}
