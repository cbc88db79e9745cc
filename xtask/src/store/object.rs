//! The object directory: files named by the blake3 of their bytes, sharded
//! as `objects/ab/cdef...` so that no directory grows too large.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::canonical::{hash_hex, is_object_id};
use super::error::StoreError;
use crate::run_record::ObjectId;

/// Where objects live and where their temporary files are written. Both must
/// be on one file system so that the final rename is atomic.
#[derive(Debug, Clone)]
pub struct ObjectDir {
    objects: PathBuf,
    tmp: PathBuf,
}

/// One file found under `objects/` while walking it.
#[derive(Debug)]
pub enum Entry {
    /// A file whose path has the shape of an object name.
    Object { id: ObjectId, path: PathBuf },
    /// Anything else (a stray file, a directory with a bad name, ...).
    Stray(PathBuf),
}

impl ObjectDir {
    pub fn new(objects: PathBuf, tmp: PathBuf) -> Self {
        ObjectDir { objects, tmp }
    }

    /// The path of object `id`; refuses anything that is not an object id so a
    /// name from an index or import file cannot escape the store.
    pub fn path_of(&self, id: &str) -> Result<PathBuf, StoreError> {
        if !is_object_id(id) {
            return Err(StoreError::InvalidId { id: id.to_string() });
        }
        Ok(self.objects.join(&id[..2]).join(&id[2..]))
    }

    pub fn contains(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.path_of(id)?.is_file())
    }

    /// Store `bytes` under their hash. The file is written in `tmp/`, synced,
    /// then renamed into place, so a reader sees the whole object or nothing.
    /// Writing an object that is already there replaces it with the same
    /// bytes: that refreshes its age for gc and repairs a corrupted copy.
    pub fn write(&self, bytes: &[u8]) -> Result<ObjectId, StoreError> {
        let id = hash_hex(bytes);
        let path = self.path_of(&id)?;
        if let Some(shard) = path.parent() {
            fs::create_dir_all(shard).map_err(|e| StoreError::io("creating", shard, e))?;
        }
        write_atomic(&self.tmp, &path, bytes)?;
        Ok(id)
    }

    /// The bytes of object `id`, after checking that they still hash to `id`.
    pub fn read(&self, id: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(id)?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    id: id.to_string(),
                    path,
                })
            }
            Err(e) => return Err(StoreError::io("reading", path, e)),
        };
        let actual = hash_hex(&bytes);
        if actual != id {
            return Err(StoreError::Corrupt {
                id: id.to_string(),
                actual,
                path,
            });
        }
        Ok(bytes)
    }

    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let path = self.path_of(id)?;
        fs::remove_file(&path).map_err(|e| StoreError::io("removing", path, e))
    }

    /// Every file under `objects/`, sorted by path so reports are stable.
    pub fn walk(&self) -> Result<Vec<Entry>, StoreError> {
        let mut entries = Vec::new();
        for shard in sorted_dir(&self.objects)? {
            let shard_name = file_name(&shard);
            let shard_ok = shard_name.len() == 2 && shard.is_dir();
            if !shard_ok {
                entries.push(Entry::Stray(shard));
                continue;
            }
            for file in sorted_dir(&shard)? {
                let id = format!("{shard_name}{}", file_name(&file));
                if is_object_id(&id) && file.is_file() {
                    entries.push(Entry::Object { id, path: file });
                } else {
                    entries.push(Entry::Stray(file));
                }
            }
        }
        Ok(entries)
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let reader = fs::read_dir(dir).map_err(|e| StoreError::io("listing", dir, e))?;
    let mut paths = Vec::new();
    for entry in reader {
        let entry = entry.map_err(|e| StoreError::io("listing", dir, e))?;
        paths.push(entry.path());
    }
    paths.sort();
    Ok(paths)
}

/// Write `bytes` to `dest` atomically: a fresh file in `tmp_dir` (same file
/// system), synced, then renamed over `dest`.
pub fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let (tmp_path, mut file) = create_temp(tmp_dir)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io("writing", &tmp_path, e));
    drop(file);
    let renamed = written.and_then(|()| {
        fs::rename(&tmp_path, dest).map_err(|e| StoreError::io("renaming into place", dest, e))
    });
    if renamed.is_err() {
        // Best effort: the write already failed, and gc removes old temp files.
        let _ = fs::remove_file(&tmp_path);
    }
    renamed
}

/// A new, uniquely named file in `dir`. The name carries the process id and a
/// per-process counter; `create_new` guards against any collision left.
fn create_temp(dir: &Path) -> Result<(PathBuf, fs::File), StoreError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{n}-{nanos}.tmp", std::process::id()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(StoreError::io("creating temporary file", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, ObjectDir) {
        let root = tempfile::tempdir().unwrap();
        let objects = root.path().join("objects");
        let tmp = root.path().join("tmp");
        fs::create_dir_all(&objects).unwrap();
        fs::create_dir_all(&tmp).unwrap();
        (root, ObjectDir::new(objects, tmp))
    }

    #[test]
    fn objects_are_sharded_by_their_first_two_digits() {
        let (root, objects) = dir();
        let id = objects.write(b"[1,2]").unwrap();
        let expected = root.path().join("objects").join(&id[..2]).join(&id[2..]);
        assert_eq!(objects.path_of(&id).unwrap(), expected);
        assert_eq!(fs::read(expected).unwrap(), b"[1,2]");
        assert_eq!(objects.read(&id).unwrap(), b"[1,2]");
    }

    #[test]
    fn walk_separates_objects_from_stray_files() {
        let (root, objects) = dir();
        let id = objects.write(b"{}").unwrap();
        fs::write(root.path().join("objects").join("notes.txt"), b"x").unwrap();
        fs::write(
            root.path().join("objects").join(&id[..2]).join("short"),
            b"x",
        )
        .unwrap();
        let entries = objects.walk().unwrap();
        let found: Vec<&str> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Object { id, .. } => Some(id.as_str()),
                Entry::Stray(_) => None,
            })
            .collect();
        assert_eq!(found, vec![id.as_str()]);
        assert_eq!(entries.len(), 3);
    }
}
