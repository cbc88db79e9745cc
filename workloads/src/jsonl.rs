//! JSON-lines files: read with line numbers in errors, write atomically so a
//! failed run never leaves a half-written file behind.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Reads every non-empty line of `path` as a `T`. The first bad line is an
/// error naming the file and its 1-based line number.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, JsonlError> {
    let io = |source| JsonlError::Io {
        path: path.to_path_buf(),
        cause: source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str(&line).map_err(|e| JsonlError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push(value);
    }
    Ok(out)
}

/// Serializes `items` one per line into `path`, through a temporary file in
/// the same directory that is renamed into place only when complete.
pub fn write_atomic<T: Serialize>(path: &Path, items: &[T]) -> Result<(), JsonlError> {
    let mut buf = Vec::new();
    for item in items {
        serde_json::to_writer(&mut buf, item).map_err(|e| JsonlError::Parse {
            path: path.to_path_buf(),
            line: 0,
            message: format!("cannot serialize: {e}"),
        })?;
        buf.push(b'\n');
    }
    write_bytes_atomic(path, &buf).map_err(|source| JsonlError::Io {
        path: path.to_path_buf(),
        cause: source,
    })
}

/// Writes `bytes` to `path` atomically (temp file in the same directory,
/// fsync, rename).
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Request;

    #[test]
    fn bad_line_names_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.jsonl");
        std::fs::write(
            &p,
            "{\"id\":1,\"prompt_token_ids\":[1],\"sampling\":{\"max_tokens\":2}}\n\nnot json\n",
        )
        .unwrap();
        let err = read::<Request>(&p).unwrap_err().to_string();
        assert!(err.contains("r.jsonl:3:"), "{err}");
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/r.jsonl");
        let reqs = vec![Request {
            id: 7,
            arrival_s: 0.5,
            warmup: false,
            prompt_token_ids: vec![1, 2, 3],
            sampling: crate::SamplingParams::greedy(4),
        }];
        write_atomic(&p, &reqs).unwrap();
        assert_eq!(read::<Request>(&p).unwrap(), reqs);
        let leftovers: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
