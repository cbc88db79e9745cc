//! `export` / `import`: one run and every object it references, as a single
//! JSON file that can move between machines and into CI artifacts.
//!
//! ```json
//! {"format": "dyno-run-export", "version": 1, "run": "<run id>",
//!  "objects": {"<id>": <object as JSON>, ...}}
//! ```
//!
//! Each object is embedded as its exact stored bytes (a raw JSON value), so
//! nothing is re-parsed or re-printed on the way out. Import re-hashes every
//! object (its bytes as they stand, else its canonical form, which tolerates a
//! re-indented file) and checks the whole
//! file before writing anything; objects are written before the index entry,
//! so an interrupted import leaves at most unreferenced objects (gc fodder),
//! never an indexed run with missing parts.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::canonical::{hash_hex, is_object_id, to_canonical_bytes, value_to_canonical_bytes};
use super::error::StoreError;
use super::index::RunIndexEntry;
use super::object::write_atomic;
use super::{run_references, Store};
use crate::run_record::{ObjectId, RunRecord};

const FORMAT: &str = "dyno-run-export";
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportFile {
    format: String,
    version: u32,
    run: ObjectId,
    objects: BTreeMap<ObjectId, Box<RawValue>>,
}

impl Store {
    /// Writes run `spec` (see [`Store::resolve_run`]) and the objects it
    /// references to `out`, atomically. Returns the run's id.
    pub fn export_run(&self, spec: &str, out: &Path) -> Result<ObjectId, StoreError> {
        let (run_id, run) = self.resolve_run(spec)?;
        let run_bytes = self.objects.read(&run_id)?;
        self.write_export(&run_id, run_bytes, &run, out)?;
        Ok(run_id)
    }

    /// Writes `run`, which the store could not take, with the objects it
    /// references (already in the store) to the export file `out`, so that
    /// `store import` adds it later. Returns the run's id.
    pub fn export_unstored(&self, run: &RunRecord, out: &Path) -> Result<ObjectId, StoreError> {
        let bytes = to_canonical_bytes(run).map_err(StoreError::Serialize)?;
        let run_id = hash_hex(&bytes);
        self.write_export(&run_id, bytes, run, out)?;
        Ok(run_id)
    }

    fn write_export(
        &self,
        run_id: &str,
        run_bytes: Vec<u8>,
        run: &RunRecord,
        out: &Path,
    ) -> Result<(), StoreError> {
        let export_error = |reason: String| StoreError::Export {
            run: run_id.to_string(),
            reason,
        };
        let to_raw = |id: &str, bytes: Vec<u8>| {
            String::from_utf8(bytes)
                .map_err(|e| e.to_string())
                .and_then(|text| RawValue::from_string(text).map_err(|e| e.to_string()))
                .map_err(|e| export_error(format!("object {id} is not JSON: {e}")))
        };
        let mut objects = BTreeMap::new();
        objects.insert(run_id.to_string(), to_raw(run_id, run_bytes)?);
        for (_, id) in run_references(run) {
            let bytes = self
                .objects
                .read(&id)
                .map_err(|e| export_error(e.to_string()))?;
            let raw = to_raw(&id, bytes)?;
            objects.insert(id, raw);
        }
        let file = ExportFile {
            format: FORMAT.to_string(),
            version: VERSION,
            run: run_id.to_string(),
            objects,
        };
        let mut bytes = serde_json::to_vec(&file).map_err(StoreError::Serialize)?;
        bytes.push(b'\n');
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        write_atomic(&dir, out, &bytes)
    }

    /// Adds the run in export file `file` to this store. Every object is
    /// checked before anything is written; importing the same file twice is
    /// harmless. Returns the run's id.
    pub fn import(&self, file: &Path) -> Result<ObjectId, StoreError> {
        let bytes = fs::read(file).map_err(|e| StoreError::io("reading", file, e))?;
        let bad = |reason: String| StoreError::Import {
            path: file.to_path_buf(),
            reason,
        };
        let export: ExportFile = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("not a run export file: {e}")))?;
        let checked = check_export(&export).map_err(bad)?;

        for (id, canonical) in &checked.objects {
            let written = self.objects.write(canonical)?;
            debug_assert_eq!(&written, id);
        }
        self.index
            .add(RunIndexEntry::new(export.run.clone(), &checked.run))?;
        Ok(export.run)
    }
}

/// An export whose objects all match their names.
struct CheckedExport {
    run: RunRecord,
    /// (id, canonical bytes), referenced objects first and the run last.
    objects: Vec<(ObjectId, Vec<u8>)>,
}

fn check_export(export: &ExportFile) -> Result<CheckedExport, String> {
    if export.format != FORMAT {
        return Err(format!(
            "format is '{}', expected '{FORMAT}'",
            export.format
        ));
    }
    if export.version != VERSION {
        return Err(format!(
            "version {} is not supported (this build reads version {VERSION})",
            export.version
        ));
    }
    let mut canonical = BTreeMap::new();
    for (id, raw) in &export.objects {
        if !is_object_id(id) {
            return Err(format!("'{id}' is not an object id"));
        }
        let mut bytes = raw.get().as_bytes().to_vec();
        if hash_hex(&bytes) != *id {
            // Not byte-identical: accept a re-formatted file whose canonical
            // form still matches.
            let value: Value = serde_json::from_str(raw.get())
                .map_err(|e| format!("object {id} is not JSON: {e}"))?;
            bytes = value_to_canonical_bytes(&value)
                .map_err(|e| format!("object {id} cannot be serialized: {e}"))?;
        }
        let actual = hash_hex(&bytes);
        if &actual != id {
            return Err(format!(
                "object {id} does not match its content (it hashes to {actual}); \
                 the file was altered or damaged"
            ));
        }
        canonical.insert(id.clone(), bytes);
    }

    let run_value = export
        .objects
        .get(&export.run)
        .ok_or_else(|| format!("the run object {} is not in the file", export.run))?;
    let run: RunRecord = serde_json::from_str(run_value.get())
        .map_err(|e| format!("object {} is not a run: {e}", export.run))?;

    let mut needed = BTreeSet::from([export.run.clone()]);
    let mut objects = Vec::new();
    for (reference, id) in run_references(&run) {
        let bytes = canonical.get(&id).ok_or_else(|| {
            format!("{reference} names object {id}, which the file does not hold")
        })?;
        if needed.insert(id.clone()) {
            objects.push((id, bytes.clone()));
        }
    }
    if let Some(extra) = canonical.keys().find(|id| !needed.contains(*id)) {
        return Err(format!(
            "object {extra} is not referenced by run {}",
            export.run
        ));
    }
    if let Some(bytes) = canonical.remove(&export.run) {
        objects.push((export.run.clone(), bytes));
    }
    Ok(CheckedExport { run, objects })
}
