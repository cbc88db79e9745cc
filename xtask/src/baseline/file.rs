//! The two files of a baseline folder and their on-disk format.
//!
//! `baseline.json` is laid out column-wise (one line per metric listing the
//! trials' values) so that a refresh reads as a small, reviewable diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::class::FingerprintClass;
use crate::run_record::{ObjectId, TrialStatus};
use crate::side::{RunTrials, Side, TrialData};

/// 2 added `earlier_runs`; schema 1 files (one run) are still read.
pub const BASELINE_SCHEMA: u32 = 2;
/// Runs a baseline keeps by default (the newest and up to 4 earlier): enough
/// to estimate the run-to-run spread, few enough to review.
pub const DEFAULT_HISTORY_RUNS: usize = 5;
pub const CLASS_FILE: &str = "class.json";
pub const BASELINE_FILE: &str = "baseline.json";

#[derive(Debug, Error)]
pub enum BaselineError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: line {line}, column {column}: {source}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// `class.json`: the class's fields, readable, plus its hash and the model's
/// name (a label: the class holds the model's hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassFile {
    pub class_hash: String,
    pub model: String,
    #[serde(flatten)]
    pub class: FingerprintClass,
}

/// `baseline.json`: the trials of one workload from the promoted run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineFile {
    pub schema: u32,
    pub workload: String,
    pub class_hash: String,
    pub source_run: ObjectId,
    pub commit: Option<String>,
    pub git_dirty: bool,
    /// When the source run was made (RFC 3339).
    pub run_created_at: String,
    pub suite: Option<String>,
    pub trials: TrialColumns,
    /// Metric name → value per trial (null where a trial has none).
    pub metrics: BTreeMap<String, Vec<Option<f64>>>,
    /// The runs promoted before this one, newest first: the history the
    /// run-to-run spread is estimated from.
    #[serde(default)]
    pub earlier_runs: Vec<EarlierRun>,
}

/// One earlier run of a baseline's history, in the same column layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlierRun {
    pub source_run: ObjectId,
    pub commit: Option<String>,
    pub git_dirty: bool,
    pub run_created_at: String,
    pub trials: TrialColumns,
    pub metrics: BTreeMap<String, Vec<Option<f64>>>,
}

impl EarlierRun {
    fn trial_data(&self) -> Vec<TrialData> {
        trial_data(&self.trials, &self.metrics)
    }
}

fn trial_data(
    trials: &TrialColumns,
    metrics: &BTreeMap<String, Vec<Option<f64>>>,
) -> Vec<TrialData> {
    (0..trials.index.len())
        .map(|i| TrialData {
            index: trials.index[i],
            status: trials.status[i].clone(),
            output_hash: trials.output_hash[i].clone(),
            metrics: metrics
                .iter()
                .filter_map(|(k, col)| col.get(i).copied().flatten().map(|v| (k.clone(), v)))
                .collect(),
            block: None,
        })
        .collect()
}

/// Checks that every column of one run has one entry per trial.
fn validate_columns(
    trials: &TrialColumns,
    metrics: &BTreeMap<String, Vec<Option<f64>>>,
    what: &str,
) -> Result<(), String> {
    let n = trials.index.len();
    if trials.status.len() != n || trials.output_hash.len() != n {
        return Err(format!(
            "{what}trials.status and trials.output_hash must have {n} entries, like trials.index"
        ));
    }
    for (name, column) in metrics {
        if column.len() != n {
            return Err(format!(
                "{what}metrics.{name} has {} values for {n} trials",
                column.len()
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialColumns {
    pub index: Vec<u32>,
    pub status: Vec<TrialStatus>,
    pub output_hash: Vec<Option<String>>,
}

/// Seven significant digits: far below any noise we measure, and short
/// lines in a diff.
fn round_significant(v: f64) -> f64 {
    format!("{v:.6e}").parse().unwrap_or(v)
}

impl BaselineFile {
    pub fn from_side(side: &Side, class_hash: &str, suite: Option<String>) -> Self {
        let names: std::collections::BTreeSet<&String> =
            side.trials.iter().flat_map(|t| t.metrics.keys()).collect();
        let metrics = names
            .into_iter()
            .map(|name| {
                let column = side
                    .trials
                    .iter()
                    .map(|t| t.metrics.get(name).map(|v| round_significant(*v)))
                    .collect();
                (name.clone(), column)
            })
            .collect();
        BaselineFile {
            schema: BASELINE_SCHEMA,
            workload: side.class.workload.clone(),
            class_hash: class_hash.to_string(),
            source_run: side.run_id.clone(),
            commit: side.commit.clone(),
            git_dirty: side.git_dirty,
            run_created_at: side.created_at.clone(),
            suite,
            trials: TrialColumns {
                index: side.trials.iter().map(|t| t.index).collect(),
                status: side.trials.iter().map(|t| t.status.clone()).collect(),
                output_hash: side.trials.iter().map(|t| t.output_hash.clone()).collect(),
            },
            metrics,
            earlier_runs: Vec::new(),
        }
    }

    /// This file's newest run as an earlier run of a newer baseline.
    pub fn as_earlier_run(&self) -> EarlierRun {
        EarlierRun {
            source_run: self.source_run.clone(),
            commit: self.commit.clone(),
            git_dirty: self.git_dirty,
            run_created_at: self.run_created_at.clone(),
            trials: self.trials.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Every run of the history, newest first.
    pub fn run_ids(&self) -> Vec<&str> {
        std::iter::once(self.source_run.as_str())
            .chain(self.earlier_runs.iter().map(|r| r.source_run.as_str()))
            .collect()
    }

    /// Checks that every column has one entry per trial.
    fn validate(&self, path: &Path) -> Result<(), BaselineError> {
        let invalid = |message: String| BaselineError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if self.schema == 0 || self.schema > BASELINE_SCHEMA {
            return Err(invalid(format!(
                "schema {} (this xtask reads 1 to {BASELINE_SCHEMA}); re-promote the baseline",
                self.schema
            )));
        }
        validate_columns(&self.trials, &self.metrics, "").map_err(&invalid)?;
        for (i, run) in self.earlier_runs.iter().enumerate() {
            validate_columns(&run.trials, &run.metrics, &format!("earlier_runs[{i}]."))
                .map_err(&invalid)?;
        }
        Ok(())
    }

    /// The baseline as a comparison side.
    pub fn to_side(&self, class: &FingerprintClass) -> Side {
        let trials = trial_data(&self.trials, &self.metrics);
        Side {
            label: format!("class {}", self.class_hash),
            run_id: self.source_run.clone(),
            commit: self.commit.clone(),
            git_dirty: self.git_dirty,
            created_at: self.run_created_at.clone(),
            class: class.clone(),
            trials,
            earlier_runs: self
                .earlier_runs
                .iter()
                .map(|r| RunTrials {
                    run_id: r.source_run.clone(),
                    commit: r.commit.clone(),
                    created_at: r.run_created_at.clone(),
                    trials: r.trial_data(),
                })
                .collect(),
            machine: class.machine(),
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, BaselineError> {
    let text = std::fs::read_to_string(path).map_err(|source| BaselineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| BaselineError::Parse {
        path: path.to_path_buf(),
        line: source.line(),
        column: source.column(),
        source,
    })
}

pub fn read_class(dir: &Path) -> Result<ClassFile, BaselineError> {
    read_json(&dir.join(CLASS_FILE))
}

pub fn read_baseline(dir: &Path) -> Result<BaselineFile, BaselineError> {
    let path = dir.join(BASELINE_FILE);
    let file: BaselineFile = read_json(&path)?;
    file.validate(&path)?;
    Ok(file)
}

/// Writes `value` as JSON in the review layout, atomically (temp + rename).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), BaselineError> {
    let io = |source| BaselineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut bytes, ReviewFormatter::default());
    value
        .serialize(&mut ser)
        .map_err(|e| io(std::io::Error::other(e)))?;
    bytes.push(b'\n');
    workloads::jsonl::write_bytes_atomic(path, &bytes).map_err(io)
}

/// Pretty objects, compact arrays: one line per metric column.
#[derive(Default)]
struct ReviewFormatter {
    pretty: serde_json::ser::PrettyFormatter<'static>,
    compact: serde_json::ser::CompactFormatter,
    array_depth: usize,
}

impl serde_json::ser::Formatter for ReviewFormatter {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.array_depth += 1;
        self.compact.begin_array(w)
    }
    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.array_depth -= 1;
        self.compact.end_array(w)
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, _w: &mut W) -> std::io::Result<()> {
        Ok(())
    }
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        if self.array_depth > 0 {
            self.compact.begin_object(w)
        } else {
            self.pretty.begin_object(w)
        }
    }
    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        if self.array_depth > 0 {
            self.compact.end_object(w)
        } else {
            self.pretty.end_object(w)
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if self.array_depth > 0 {
            self.compact.begin_object_key(w, first)
        } else {
            self.pretty.begin_object_key(w, first)
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        if self.array_depth > 0 {
            self.compact.begin_object_value(w)
        } else {
            self.pretty.begin_object_value(w)
        }
    }
    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        if self.array_depth > 0 {
            self.compact.end_object_value(w)
        } else {
            self.pretty.end_object_value(w)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{cpu_fingerprint, failed_trial, ok_trial, run, workload};

    fn side() -> Side {
        let w = workload(
            "chat",
            vec![
                ok_trial(
                    0,
                    &[("output_throughput", 100.5), ("p99_ttft_ms", 12.0)],
                    "h",
                ),
                failed_trial(1, "killed"),
                ok_trial(2, &[("output_throughput", 101.0)], "h"),
            ],
        );
        Side::from_run("r1", &run(cpu_fingerprint(), vec![w.clone()]), &w)
    }

    #[test]
    fn round_trips_and_keeps_one_line_per_metric() {
        let dir = tempfile::tempdir().unwrap();
        let s = side();
        let file = BaselineFile::from_side(&s, "c1", Some("smoke".into()));
        write_json(&dir.path().join(BASELINE_FILE), &file).unwrap();
        let text = std::fs::read_to_string(dir.path().join(BASELINE_FILE)).unwrap();
        assert!(
            text.contains("\"output_throughput\": [100.5, null, 101.0]"),
            "{text}"
        );
        assert!(
            text.contains("\"p99_ttft_ms\": [12.0, null, null]"),
            "{text}"
        );
        assert!(
            text.contains(r#"{"kind":"failed","reason":"killed"}"#),
            "{text}"
        );
        let back = read_baseline(dir.path()).unwrap();
        assert_eq!(back, file);
        let again = back.to_side(&s.class);
        assert_eq!(again.trials, s.trials);
        assert_eq!(again.values("output_throughput"), vec![100.5, 101.0]);
    }

    #[test]
    fn ragged_columns_are_refused_with_the_field_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = BaselineFile::from_side(&side(), "c1", None);
        file.metrics.insert("p50_ttft_ms".into(), vec![Some(1.0)]);
        write_json(&dir.path().join(BASELINE_FILE), &file).unwrap();
        let err = read_baseline(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("metrics.p50_ttft_ms has 1 values for 3 trials"),
            "{err}"
        );
    }

    #[test]
    fn parse_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(BASELINE_FILE),
            "{\n  \"schema\": 1,\n  oops\n}",
        )
        .unwrap();
        let err = read_baseline(dir.path()).unwrap_err().to_string();
        assert!(err.contains("baseline.json: line 3"), "{err}");
    }
}
