//! The sweep ledger: what happened to each point, so that re-running a
//! sweep file resumes it.
//!
//! ```text
//! results/sweeps/<sweep>/<device>/<point id>.json
//! ```
//!
//! One small JSON file per point, written atomically (temporary file +
//! rename) after the point's run is in the store: a sweep killed midway
//! leaves every finished point recorded and the interrupted one absent, so
//! the next run measures it again. Parallel workers (one per GPU, one per
//! SLURM job) write different files and never contend. A point's id is the
//! hash of its definition, so its file is found again from the sweep file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use workloads::sweep::Point;

use crate::run_record::{FailureClass, ObjectId};

/// What happened to a point the last time it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PointStatus {
    /// Every trial succeeded.
    Done,
    /// The first failing trial's class and message.
    Failed {
        class: FailureClass,
        message: String,
    },
}

/// One point's entry in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointRecord {
    pub point_id: String,
    pub sweep: String,
    pub experiment: String,
    pub tier: u32,
    pub label: String,
    /// "cpu" or "cuda".
    pub device: String,
    pub status: PointStatus,
    /// The stored run holding the point's trials (absent when the pipeline
    /// failed before storing anything).
    pub run_id: Option<ObjectId>,
    /// The point's workload name inside that run.
    pub workload: String,
    pub model: Option<String>,
    /// The point's engine knobs (empty: every default).
    pub engine: serde_json::Value,
    /// Hash of the point's workload without its engine knobs: points with
    /// the same key measure the same workload under different configs.
    #[serde(default)]
    pub workload_key: String,
    /// Axis values and load, for reports.
    pub axes: BTreeMap<String, serde_json::Value>,
    /// Trials the point was measured with.
    pub trials: u32,
    /// How many times the point has been run (retries included).
    pub attempts: u32,
    /// Wall time of the last attempt, seconds.
    pub wall_s: f64,
    /// RFC 3339.
    pub updated_at: String,
}

impl PointRecord {
    pub fn new(point: &Point, device: &str, trials: u32) -> PointRecord {
        let mut without_engine = point.spec.clone();
        without_engine.engine = None;
        let workload_key =
            workloads::sweep::point_id(&Point::definition(&without_engine, point.trials));
        PointRecord {
            workload_key,
            point_id: point.id.clone(),
            sweep: point.sweep.clone(),
            experiment: point.experiment.clone(),
            tier: point.tier,
            label: point.label.clone(),
            device: device.to_string(),
            status: PointStatus::Done,
            run_id: None,
            workload: point.spec.name.clone(),
            model: point.spec.model.clone(),
            engine: serde_json::to_value(point.engine()).unwrap_or_default(),
            axes: point.axes.clone(),
            trials,
            attempts: 0,
            wall_s: 0.0,
            updated_at: String::new(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.status == PointStatus::Done
    }

    pub fn failure_class(&self) -> Option<FailureClass> {
        match &self.status {
            PointStatus::Done => None,
            PointStatus::Failed { class, .. } => Some(*class),
        }
    }
}

/// The ledger of one sweep on one device.
#[derive(Debug, Clone)]
pub struct Ledger {
    dir: PathBuf,
}

impl Ledger {
    /// `<store>/sweeps/<sweep>/<device>/`.
    pub fn open(store_root: &Path, sweep: &str, device: &str) -> Ledger {
        Ledger {
            dir: store_root.join("sweeps").join(sweep).join(device),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, point_id: &str) -> PathBuf {
        self.dir.join(format!("{point_id}.json"))
    }

    /// The point's entry, if it ever ran. A file that does not parse is an
    /// error naming it (never silently a re-run that would overwrite it).
    pub fn get(&self, point_id: &str) -> anyhow::Result<Option<PointRecord>> {
        let path = self.path(point_id);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let record = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a sweep point record", path.display()))?;
        Ok(Some(record))
    }

    pub fn put(&self, record: &PointRecord) -> anyhow::Result<()> {
        let path = self.path(&record.point_id);
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let bytes = serde_json::to_vec_pretty(record)?;
        workloads::jsonl::write_bytes_atomic(&path, &bytes)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Every entry, sorted by point id.
    pub fn all(&self) -> anyhow::Result<Vec<PointRecord>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.dir.display())),
        };
        for entry in entries {
            let path = entry
                .with_context(|| format!("reading {}", self.dir.display()))?
                .path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            if let Some(r) = self.get(id)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.point_id.cmp(&b.point_id));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, status: PointStatus) -> PointRecord {
        PointRecord {
            point_id: id.into(),
            sweep: "s".into(),
            experiment: "e".into(),
            tier: 0,
            label: "l".into(),
            device: "cpu".into(),
            status,
            run_id: None,
            workload: "s.e.l".into(),
            model: None,
            engine: serde_json::json!({}),
            workload_key: "k".into(),
            axes: BTreeMap::new(),
            trials: 1,
            attempts: 1,
            wall_s: 1.0,
            updated_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn entries_round_trip_and_a_corrupt_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path(), "s", "cpu");
        assert!(ledger.get("aa").unwrap().is_none());
        assert!(ledger.all().unwrap().is_empty());
        let failed = record(
            "bb",
            PointStatus::Failed {
                class: FailureClass::InvalidConfig,
                message: "max_num_seqs: must be at least 1".into(),
            },
        );
        ledger.put(&record("aa", PointStatus::Done)).unwrap();
        ledger.put(&failed).unwrap();
        assert_eq!(ledger.get("bb").unwrap().unwrap(), failed);
        let text = std::fs::read_to_string(ledger.dir().join("bb.json")).unwrap();
        assert!(text.contains("\"invalid-config\""), "{text}");
        let all = ledger.all().unwrap();
        assert_eq!(all.len(), 2);
        assert!(all[0].is_done());
        assert_eq!(all[1].failure_class(), Some(FailureClass::InvalidConfig));
        std::fs::write(ledger.dir().join("cc.json"), "{").unwrap();
        let e = ledger.get("cc").unwrap_err();
        assert!(format!("{e:#}").contains("cc.json"), "{e:#}");
    }
}
