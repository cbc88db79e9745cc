//! The model a run measures: a Hugging Face checkpoint directory, or a
//! synthetic preset that `engine synth` writes into a cache on first use.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Seed of the synthetic weights: fixed, so every machine measures the same
/// checkpoint (speed does not depend on weight values; hashes do).
pub const SYNTH_SEED: u64 = 0;

#[derive(Debug, Clone)]
pub struct Model {
    /// What the user named: a preset or a directory.
    pub name: String,
    pub dir: PathBuf,
}

/// Resolves `spec` to a checkpoint directory: an existing directory is used
/// as is; anything else is a preset, synthesized into
/// `<cache>/<preset>-seed<k>/` unless already there.
pub fn resolve(spec: &str, engine: &Path, cache: &Path) -> anyhow::Result<Model> {
    let as_dir = Path::new(spec);
    if as_dir.is_dir() {
        if !as_dir.join("config.json").is_file() {
            bail!("model directory {spec} has no config.json");
        }
        return Ok(Model {
            name: spec.to_string(),
            dir: as_dir.to_path_buf(),
        });
    }
    let dir = cache.join(format!("{spec}-seed{SYNTH_SEED}"));
    if !dir.join("config.json").is_file() {
        synthesize(spec, engine, &dir)?;
    }
    Ok(Model {
        name: spec.to_string(),
        dir,
    })
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
/// none of the model's special tokens, read from its `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    pub vocab_size: u32,
    pub special: Vec<u32>,
}

pub fn vocab(model_dir: &Path) -> anyhow::Result<Vocab> {
    let path = model_dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_vocab(&text).with_context(|| format!("in {}", path.display()))
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
