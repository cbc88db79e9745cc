//! Committed baselines: `baselines/<class-hash>/{class.json,baseline.json}`,
//! one folder per fingerprint class (one workload on one kind of machine,
//! model, engine config and build profile).

pub mod class;
pub mod file;

use std::path::{Path, PathBuf};

use class::{FieldDifference, FingerprintClass};
use file::{BaselineError, BaselineFile, ClassFile};

use crate::run_record::RunRecord;
use crate::side::Side;

pub fn baselines_dir(repo_root: &Path) -> PathBuf {
    repo_root.join("baselines")
}

/// What `lookup` found for one workload's class.
#[derive(Debug)]
pub enum Lookup {
    Found {
        class: Box<ClassFile>,
        baseline: Box<BaselineFile>,
    },
    Missing {
        explanation: String,
        nearest: Vec<FieldDifference>,
    },
}

/// The committed baseline of `class`, or why there is none: the nearest
/// baseline of the same workload and the class fields that differ from it.
pub fn lookup(repo_root: &Path, class: &FingerprintClass) -> Result<Lookup, BaselineError> {
    let hash = class.hash();
    let dir = baselines_dir(repo_root).join(&hash);
    if dir.join(file::BASELINE_FILE).is_file() {
        let class_file = file::read_class(&dir)?;
        if &class_file.class != class {
            let fields: Vec<String> = class
                .differences(&class_file.class)
                .iter()
                .map(|d| d.field.clone())
                .collect();
            return Err(BaselineError::Invalid {
                path: dir.join(file::CLASS_FILE),
                message: format!(
                    "does not describe class {hash} (fields {} differ); was it edited by hand? re-promote instead",
                    fields.join(", ")
                ),
            });
        }
        let baseline = file::read_baseline(&dir)?;
        return Ok(Lookup::Found {
            class: Box::new(class_file),
            baseline: Box::new(baseline),
        });
    }
    let mut nearest: Option<(String, Vec<FieldDifference>)> = None;
    for other in same_workload_classes(repo_root, &class.workload)? {
        let diff = class.differences(&other.class);
        if nearest.as_ref().is_none_or(|(_, d)| diff.len() < d.len()) {
            nearest = Some((other.class_hash.clone(), diff));
        }
    }
    Ok(match nearest {
        None => Lookup::Missing {
            explanation: format!(
                "no baseline for workload `{}` in {} (class {hash}); make one with `cargo xtask baseline promote`",
                class.workload,
                baselines_dir(repo_root).display()
            ),
            nearest: vec![],
        },
        Some((other, diff)) => Lookup::Missing {
            explanation: format!(
                "no baseline of class {hash}; the nearest baseline of `{}` is class {other}, which differs in {}",
                class.workload,
                diff.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            nearest: diff,
        },
    })
}

/// Every readable class.json of `workload` under baselines/.
fn same_workload_classes(
    repo_root: &Path,
    workload: &str,
) -> Result<Vec<ClassFile>, BaselineError> {
    let root = baselines_dir(repo_root);
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => return Err(BaselineError::Io { path: root, source }),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| BaselineError::Io {
            path: root.clone(),
            source,
        })?;
        let dir = entry.path();
        if dir.join(file::CLASS_FILE).is_file() {
            let class = file::read_class(&dir)?;
            if class.class.workload == workload {
                out.push(class);
            }
        }
    }
    out.sort_by(|a, b| a.class_hash.cmp(&b.class_hash));
    Ok(out)
}

/// One folder written by `promote`.
#[derive(Debug, Clone, PartialEq)]
pub struct Promoted {
    pub workload: String,
    pub class_hash: String,
    pub dir: PathBuf,
    pub ok_trials: usize,
    pub replaced: bool,
    /// Runs in the class's history after this promotion.
    pub history_runs: usize,
}

/// What `promote` did.
#[derive(Debug, Clone, PartialEq)]
pub struct PromoteReport {
    pub promoted: Vec<Promoted>,
    /// Workloads left alone, with why (their old baseline, if any, stays).
    pub skipped: Vec<String>,
}

/// Writes (or overwrites) the baseline folder of every workload of `run`
/// that has at least 2 ok trials; a baseline with fewer could never support
/// a verdict, so those workloads are skipped and listed. Fails when no
/// workload qualifies.
pub fn promote(
    repo_root: &Path,
    run_id: &str,
    run: &RunRecord,
) -> Result<PromoteReport, BaselineError> {
    promote_keeping(repo_root, run_id, run, file::DEFAULT_HISTORY_RUNS)
}

/// `promote`, keeping the newest `keep` runs of each baseline's history
/// (this one included): the run becomes the newest, the one it replaces
/// moves into `earlier_runs`, the oldest beyond `keep` are dropped. A run
/// already in a history is not added twice.
pub fn promote_keeping(
    repo_root: &Path,
    run_id: &str,
    run: &RunRecord,
    keep: usize,
) -> Result<PromoteReport, BaselineError> {
    let keep = keep.max(1);
    let sides: Vec<Side> = run
        .workloads
        .iter()
        .map(|w| Side::from_run(run_id, run, w))
        .collect();
    let (good, thin): (Vec<&Side>, Vec<&Side>) = sides.iter().partition(|s| s.ok_count() >= 2);
    let skipped: Vec<String> = thin
        .iter()
        .map(|s| {
            format!(
                "`{}`: {} of {} trials ok; a baseline needs at least 2",
                s.class.workload,
                s.ok_count(),
                s.trials.len()
            )
        })
        .collect();
    if good.is_empty() {
        return Err(BaselineError::Invalid {
            path: baselines_dir(repo_root),
            message: format!(
                "nothing to promote from run {run_id}{}{}",
                if skipped.is_empty() {
                    " (no workloads)"
                } else {
                    ": "
                },
                skipped.join("; ")
            ),
        });
    }
    let mut promoted = Vec::new();
    let mut skipped = skipped;
    for side in good {
        let hash = side.class.hash();
        let dir = baselines_dir(repo_root).join(&hash);
        let previous = if dir.join(file::BASELINE_FILE).exists() {
            Some(file::read_baseline(&dir)?)
        } else {
            None
        };
        if previous
            .as_ref()
            .is_some_and(|p| p.run_ids().contains(&run_id))
        {
            skipped.push(format!(
                "`{}`: run {run_id} is already in the history of class {hash}",
                side.class.workload
            ));
            continue;
        }
        let replaced = previous.is_some();
        let class_file = ClassFile {
            class_hash: hash.clone(),
            model: run.fingerprint.model.clone(),
            class: side.class.clone(),
        };
        file::write_json(&dir.join(file::CLASS_FILE), &class_file)?;
        let mut baseline = BaselineFile::from_side(side, &hash, run.suite.clone());
        if let Some(prev) = previous {
            baseline.earlier_runs = std::iter::once(prev.as_earlier_run())
                .chain(prev.earlier_runs)
                .take(keep - 1)
                .collect();
        }
        let history_runs = 1 + baseline.earlier_runs.len();
        file::write_json(&dir.join(file::BASELINE_FILE), &baseline)?;
        promoted.push(Promoted {
            workload: side.class.workload.clone(),
            class_hash: hash,
            dir,
            ok_trials: side.ok_count(),
            replaced,
            history_runs,
        });
    }
    Ok(PromoteReport { promoted, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{cpu_fingerprint, failed_trial, ok_trial, run, workload};

    fn two_ok(name: &str) -> crate::run_record::WorkloadRun {
        workload(
            name,
            vec![
                ok_trial(0, &[("output_throughput", 10.0)], "h"),
                ok_trial(1, &[("output_throughput", 11.0)], "h"),
            ],
        )
    }

    #[test]
    fn promote_then_lookup_finds_the_same_trials() {
        let root = tempfile::tempdir().unwrap();
        let r = run(cpu_fingerprint(), vec![two_ok("a"), two_ok("b")]);
        let promoted = promote(root.path(), "run1", &r).unwrap().promoted;
        assert_eq!(promoted.len(), 2);
        assert!(!promoted[0].replaced);
        let class = FingerprintClass::of(&r.fingerprint, &r.workloads[0]);
        match lookup(root.path(), &class).unwrap() {
            Lookup::Found { class: c, baseline } => {
                assert_eq!(c.class, class);
                assert_eq!(c.model, "tiny");
                assert_eq!(baseline.source_run, "run1");
                assert_eq!(
                    baseline.metrics["output_throughput"],
                    vec![Some(10.0), Some(11.0)]
                );
            }
            other => panic!("{other:?}"),
        }
        let again = promote(root.path(), "run1", &r).unwrap();
        assert!(again.promoted.is_empty(), "a run is not added twice");
        assert!(again.skipped[0].contains("already in the history"));
    }

    #[test]
    fn promotions_build_a_history_of_at_most_keep_runs() {
        let root = tempfile::tempdir().unwrap();
        let r = run(cpu_fingerprint(), vec![two_ok("a")]);
        for (i, id) in ["r1", "r2", "r3", "r4"].iter().enumerate() {
            let p = promote_keeping(root.path(), id, &r, 3).unwrap().promoted;
            assert_eq!(p[0].replaced, i > 0);
            assert_eq!(p[0].history_runs, (i + 1).min(3));
        }
        let class = FingerprintClass::of(&r.fingerprint, &r.workloads[0]);
        let Lookup::Found { baseline, .. } = lookup(root.path(), &class).unwrap() else {
            panic!("no baseline");
        };
        assert_eq!(baseline.run_ids(), vec!["r4", "r3", "r2"]);
        let side = baseline.to_side(&class);
        assert_eq!(side.earlier_runs.len(), 2);
        assert_eq!(
            side.values_by_run("output_throughput"),
            vec![vec![10.0, 11.0]; 3]
        );
    }

    #[test]
    fn missing_baseline_names_the_differing_fields() {
        let root = tempfile::tempdir().unwrap();
        let r = run(cpu_fingerprint(), vec![two_ok("a")]);
        promote(root.path(), "run1", &r).unwrap();
        let mut other = r.workloads[0].clone();
        other.engine_config = serde_json::json!({"max_num_seqs": 1});
        let class = FingerprintClass::of(&r.fingerprint, &other);
        match lookup(root.path(), &class).unwrap() {
            Lookup::Missing {
                explanation,
                nearest,
            } => {
                assert_eq!(nearest.len(), 1);
                assert!(explanation.contains("engine_config"), "{explanation}");
            }
            other => panic!("{other:?}"),
        }
        let none = FingerprintClass::of(&r.fingerprint, &two_ok("zzz"));
        match lookup(root.path(), &none).unwrap() {
            Lookup::Missing { explanation, .. } => {
                assert!(
                    explanation.contains("no baseline for workload `zzz`"),
                    "{explanation}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn skips_workloads_without_two_ok_trials() {
        let root = tempfile::tempdir().unwrap();
        let thin = workload(
            "thin",
            vec![
                ok_trial(0, &[("output_throughput", 10.0)], "h"),
                failed_trial(1, "oom"),
            ],
        );
        let r = run(cpu_fingerprint(), vec![two_ok("a"), thin.clone()]);
        let report = promote(root.path(), "run1", &r).unwrap();
        assert_eq!(report.promoted.len(), 1);
        assert_eq!(
            report.skipped,
            vec!["`thin`: 1 of 2 trials ok; a baseline needs at least 2".to_string()]
        );
        let only_thin = run(cpu_fingerprint(), vec![thin]);
        let err = promote(root.path(), "run2", &only_thin)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nothing to promote from run run2: `thin`"),
            "{err}"
        );
    }
}
