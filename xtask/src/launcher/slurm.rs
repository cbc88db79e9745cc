//! `--launcher slurm`: one batch job per point, submitted with `sbatch`,
//! followed with `squeue` / `sacct` / the job logs, cancelled with `scancel`.
//!
//! Per point, in the shared store:
//!
//! ```text
//! <store>/sweeps/<sweep>/<device>/jobs/<point id>/
//!   job.sh            the batch script last submitted (what --dry-run prints)
//!   submission.json   job id, time, host of the last submission
//!   slurm-<job>.out   each job's log (stdout and stderr)
//! ```
//!
//! The point's outcome itself is written by the job (`sweep --point`) into
//! the sweep's ledger beside `jobs/`, like any point. What only SLURM knows
//! (a job killed at its time limit, by SLURM's memory limit, with its node)
//! is read back here and written into the ledger by the submit host as the
//! point's failure (`timeout`, `oom`, `crash`), so resume and `--retry` treat
//! it like any other failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::slurm_script::{job_name, job_name_prefix, JobScript, PointCommand, SlurmOptions};
use super::slurm_state::{
    error_from_log, parse_sacct, parse_sbatch, parse_squeue, state_from_log, JobInfo, SlurmState,
    SACCT_FIELDS, SQUEUE_FORMAT,
};
use crate::run_record::FailureClass;

/// The SLURM client commands (names looked up on PATH, or paths).
#[derive(Debug, Clone)]
pub struct SlurmTools {
    pub sbatch: PathBuf,
    pub squeue: PathBuf,
    pub sacct: PathBuf,
    pub scancel: PathBuf,
}

impl Default for SlurmTools {
    fn default() -> Self {
        SlurmTools {
            sbatch: "sbatch".into(),
            squeue: "squeue".into(),
            sacct: "sacct".into(),
            scancel: "scancel".into(),
        }
    }
}

/// `name` found on PATH (or as given, when it has a `/`).
pub fn find_on_path(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The record of a point's last submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub job_id: String,
    pub job_name: String,
    /// RFC 3339.
    pub submitted_at: String,
    pub submit_host: String,
}

/// A point the launcher is asked about, with what the ledger says of it.
#[derive(Debug, Clone, PartialEq)]
pub struct PointJob {
    pub point_id: String,
    pub label: String,
    /// `--gres=gpu:N`; 0 for a CPU point.
    pub gpus: u32,
    pub ledger: LedgerState,
}

/// The point's ledger entry, reduced to what the launcher needs.
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerState {
    None,
    Done {
        updated_at: String,
    },
    Failed {
        class: FailureClass,
        message: String,
        updated_at: String,
    },
}

impl LedgerState {
    fn updated_at(&self) -> Option<&str> {
        match self {
            LedgerState::None => None,
            LedgerState::Done { updated_at } | LedgerState::Failed { updated_at, .. } => {
                Some(updated_at)
            }
        }
    }
}

/// A point's state as `--status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum PointView {
    /// Never submitted, or its last job was cancelled or preempted, or it
    /// ended without recording anything: a re-run submits it.
    Pending {
        note: String,
    },
    Queued {
        job_id: String,
        reason: String,
    },
    Running {
        job_id: String,
    },
    Done,
    Failed {
        class: Option<FailureClass>,
        cause: String,
        job_id: Option<String>,
    },
}

impl PointView {
    pub fn name(&self) -> &'static str {
        match self {
            PointView::Pending { .. } => "pending",
            PointView::Queued { .. } => "queued",
            PointView::Running { .. } => "running",
            PointView::Done => "done",
            PointView::Failed { .. } => "failed",
        }
    }
}

/// What SLURM knows about one job, from the best source available.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEnd {
    pub state: SlurmState,
    /// Where the state came from: "squeue", "sacct" or "log".
    pub source: &'static str,
    pub detail: String,
}

/// A failure SLURM decided (time limit, memory limit, node failure), to be
/// written into the ledger by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct SlurmFailure {
    pub point_id: String,
    pub class: FailureClass,
    pub message: String,
}

/// Everything about one sweep's jobs on one device.
pub struct SlurmLauncher {
    pub sweep: String,
    pub store_root: PathBuf,
    /// `<store>/sweeps/<sweep>/<device>/jobs`.
    pub jobs_dir: PathBuf,
    pub options: SlurmOptions,
    pub command: PointCommand,
    pub tools: SlurmTools,
}

/// The outcome of a submission pass.
#[derive(Debug, Default)]
pub struct SubmitReport {
    /// (point, job id).
    pub submitted: Vec<(String, String)>,
    /// (point, why not: already queued as job N, ...).
    pub skipped: Vec<(String, String)>,
    /// (point, error naming the cause); the other points went ahead.
    pub rejected: Vec<(String, String)>,
}

impl SlurmLauncher {
    pub fn point_dir(&self, point_id: &str) -> PathBuf {
        self.jobs_dir.join(point_id)
    }

    pub fn script(&self, job: &PointJob) -> String {
        JobScript {
            sweep: &self.sweep,
            point_id: &job.point_id,
            label: &job.label,
            gpus: job.gpus,
            options: &self.options,
            command: &self.command,
            store_root: &self.store_root,
            job_dir: &self.point_dir(&job.point_id),
        }
        .render()
    }

    pub fn submission(&self, point_id: &str) -> anyhow::Result<Option<Submission>> {
        let path = self.point_dir(point_id).join("submission.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{}: not a submission record", path.display()))
    }

    /// This user's jobs of this sweep as squeue lists them (finished ones
    /// too, while the controller still remembers them), by job id.
    pub fn queue(&self) -> anyhow::Result<BTreeMap<String, JobInfo>> {
        let out = Command::new(&self.tools.squeue)
            .args(["-h", "--me", "--states=all", "-o", SQUEUE_FORMAT])
            .output()
            .with_context(|| format!("cannot run {}", self.tools.squeue.display()))?;
        if !out.status.success() {
            anyhow::bail!(
                "`squeue` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let prefix = job_name_prefix(&self.sweep);
        Ok(parse_squeue(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .filter(|j| j.name.starts_with(&prefix))
            .map(|j| (j.job_id.clone(), j))
            .collect())
    }

    /// Finished jobs from accounting; empty where the cluster keeps none
    /// (`sacct` missing or "accounting storage is disabled").
    fn accounting(&self, job_ids: &[&str]) -> BTreeMap<String, JobInfo> {
        if job_ids.is_empty() || find_on_path(&self.tools.sacct).is_none() {
            return BTreeMap::new();
        }
        let out = Command::new(&self.tools.sacct)
            .args([
                "-n",
                "-P",
                "-X",
                "-o",
                SACCT_FIELDS,
                "-j",
                &job_ids.join(","),
            ])
            .output();
        match out {
            Ok(out) if out.status.success() => parse_sacct(&String::from_utf8_lossy(&out.stdout))
                .into_iter()
                .map(|j| (j.job_id.clone(), j))
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    /// How each submitted job stands: squeue first (queued, running, or
    /// recently finished), then sacct, then the job's log.
    pub fn job_states(
        &self,
        jobs: &[PointJob],
        queue: &BTreeMap<String, JobInfo>,
    ) -> anyhow::Result<BTreeMap<String, JobEnd>> {
        let mut submissions = Vec::new();
        for job in jobs {
            if let Some(s) = self.submission(&job.point_id)? {
                submissions.push((job.point_id.clone(), s));
            }
        }
        let missing: Vec<&str> = submissions
            .iter()
            .map(|(_, s)| s.job_id.as_str())
            .filter(|id| !queue.contains_key(*id))
            .collect();
        let accounting = self.accounting(&missing);
        let mut states = BTreeMap::new();
        for (point, s) in &submissions {
            let end = if let Some(j) = queue.get(&s.job_id) {
                Some(JobEnd {
                    state: j.state.clone(),
                    source: "squeue",
                    detail: j.detail.clone(),
                })
            } else if let Some(j) = accounting.get(&s.job_id) {
                Some(JobEnd {
                    state: j.state.clone(),
                    source: "sacct",
                    detail: j.detail.clone(),
                })
            } else {
                let log = self
                    .point_dir(point)
                    .join(format!("slurm-{}.out", s.job_id));
                std::fs::read_to_string(&log).ok().map(|text| JobEnd {
                    // A log without a SLURM ending: the script ended by
                    // itself; the ledger (or the log's error) says how.
                    state: state_from_log(&text).unwrap_or(SlurmState::Completed),
                    source: "log",
                    detail: String::new(),
                })
            };
            if let Some(end) = end {
                states.insert(s.job_id.clone(), end);
            }
        }
        // Jobs of this sweep that squeue lists but no submission record
        // names (a record lost, another store): still not to be duplicated.
        for (id, j) in queue {
            states.entry(id.clone()).or_insert(JobEnd {
                state: j.state.clone(),
                source: "squeue",
                detail: j.detail.clone(),
            });
        }
        Ok(states)
    }

    /// The state of each point, from the ledger, its last submission and
    /// SLURM; plus the failures SLURM decided that the ledger does not
    /// have yet (the caller writes them).
    pub fn status(&self, jobs: &[PointJob]) -> anyhow::Result<(Vec<PointView>, Vec<SlurmFailure>)> {
        let queue = self.queue()?;
        let states = self.job_states(jobs, &queue)?;
        let mut views = Vec::new();
        let mut failures = Vec::new();
        for job in jobs {
            let submission = self.submission(&job.point_id)?;
            let log = submission.as_ref().and_then(|s| {
                std::fs::read_to_string(
                    self.point_dir(&job.point_id)
                        .join(format!("slurm-{}.out", s.job_id)),
                )
                .ok()
            });
            let end = submission.as_ref().and_then(|s| states.get(&s.job_id));
            let (view, failure) = resolve(job, submission.as_ref(), end, log.as_deref());
            if let Some(f) = failure {
                failures.push(f);
            }
            views.push(view);
        }
        Ok((views, failures))
    }

    /// Submits every point in `jobs` that has no queued or running job,
    /// one `sbatch` each. A rejected submission (bad partition, ...) is
    /// reported with its point and cause and the rest go ahead.
    pub fn submit(&self, jobs: &[PointJob]) -> anyhow::Result<SubmitReport> {
        let mut report = SubmitReport::default();
        if jobs.is_empty() {
            return Ok(report);
        }
        let Some(sbatch) = find_on_path(&self.tools.sbatch) else {
            anyhow::bail!(
                "no `{}` on PATH: --launcher slurm submits with SLURM's client commands \
                 (run it on the cluster's login node, or install them); nothing was submitted \
                 (points {})",
                self.tools.sbatch.display(),
                jobs.iter()
                    .map(|j| j.point_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        let queue = self.queue()?;
        let states = self.job_states(jobs, &queue)?;
        let host = hostname();
        for job in jobs {
            let name = job_name(&self.sweep, &job.point_id);
            let recorded = self
                .submission(&job.point_id)?
                .and_then(|s| states.get(&s.job_id).map(|end| (s.job_id.clone(), end)))
                .filter(|(_, end)| end.state.is_active());
            if let Some((id, end)) = recorded {
                report.skipped.push((
                    job.point_id.clone(),
                    format!("already {} as job {id}", view_word(&end.state)),
                ));
                continue;
            }
            // A job of this point that squeue knows without our record
            // (a lost record, a submission from another copy of the store).
            if let Some(j) = queue
                .values()
                .find(|j| j.name == name && j.state.is_active())
            {
                report.skipped.push((
                    job.point_id.clone(),
                    format!(
                        "already {} as job {} (found by its name {name})",
                        view_word(&j.state),
                        j.job_id
                    ),
                ));
                continue;
            }
            match self.submit_one(&sbatch, job, &name, &host) {
                Ok(id) => report.submitted.push((job.point_id.clone(), id)),
                Err(e) => report
                    .rejected
                    .push((job.point_id.clone(), format!("{e:#}"))),
            }
        }
        Ok(report)
    }

    fn submit_one(
        &self,
        sbatch: &Path,
        job: &PointJob,
        name: &str,
        host: &str,
    ) -> anyhow::Result<String> {
        let dir = self.point_dir(&job.point_id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let script_path = dir.join("job.sh");
        workloads::jsonl::write_bytes_atomic(&script_path, self.script(job).as_bytes())
            .with_context(|| format!("writing {}", script_path.display()))?;
        let out = Command::new(sbatch)
            .arg("--parsable")
            .arg(&script_path)
            .output()
            .with_context(|| format!("cannot run {}", sbatch.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            anyhow::bail!(
                "SLURM rejected the job ({}): {}",
                out.status,
                stderr
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        let Some(job_id) = parse_sbatch(&stdout) else {
            anyhow::bail!("sbatch printed no job id: {}", stdout.trim());
        };
        let record = Submission {
            job_id: job_id.clone(),
            job_name: name.to_string(),
            submitted_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            submit_host: host.to_string(),
        };
        let path = dir.join("submission.json");
        workloads::jsonl::write_bytes_atomic(&path, &serde_json::to_vec_pretty(&record)?)
            .with_context(|| {
                format!(
                    "job {job_id} was submitted, but its record {} could not be written",
                    path.display()
                )
            })?;
        Ok(job_id)
    }

    /// Cancels every queued or running job of the sweep; returns their ids.
    pub fn cancel(&self) -> anyhow::Result<Vec<String>> {
        let ids: Vec<String> = self
            .queue()?
            .into_values()
            .filter(|j| j.state.is_active())
            .map(|j| j.job_id)
            .collect();
        if ids.is_empty() {
            return Ok(ids);
        }
        let out = Command::new(&self.tools.scancel)
            .args(&ids)
            .output()
            .with_context(|| format!("cannot run {}", self.tools.scancel.display()))?;
        if !out.status.success() {
            anyhow::bail!(
                "`scancel {}` failed ({}): {}",
                ids.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(ids)
    }
}

/// One point's view from its ledger entry, last submission, the job's
/// state and its log; and a failure to record when SLURM ended the job in
/// a way the job itself could not record (time limit, memory, node).
pub fn resolve(
    job: &PointJob,
    submission: Option<&Submission>,
    end: Option<&JobEnd>,
    log: Option<&str>,
) -> (PointView, Option<SlurmFailure>) {
    // The ledger entry answers for the last submission when it was written
    // after it (RFC 3339 UTC strings of one format order as times).
    let ledger_is_newer = match (job.ledger.updated_at(), submission) {
        (Some(at), Some(s)) => at >= s.submitted_at.as_str(),
        (Some(_), None) => true,
        (None, _) => false,
    };
    let from_ledger = || match &job.ledger {
        LedgerState::Done { .. } => PointView::Done,
        LedgerState::Failed { class, message, .. } => PointView::Failed {
            class: Some(*class),
            cause: message.clone(),
            job_id: submission.map(|s| s.job_id.clone()),
        },
        LedgerState::None => PointView::Pending {
            note: String::new(),
        },
    };
    let Some(s) = submission else {
        return (from_ledger(), None);
    };
    // A job of this point still queued or running wins over an older
    // ledger entry (a retry of a failed point).
    if let Some(end) = end {
        match end.state {
            SlurmState::Pending => {
                return (
                    PointView::Queued {
                        job_id: s.job_id.clone(),
                        reason: end.detail.clone(),
                    },
                    None,
                )
            }
            SlurmState::Running => {
                return (
                    PointView::Running {
                        job_id: s.job_id.clone(),
                    },
                    None,
                )
            }
            _ => {}
        }
    }
    if ledger_is_newer {
        return (from_ledger(), None);
    }
    let Some(end) = end else {
        return (
            PointView::Pending {
                note: format!(
                    "job {} is unknown to squeue and sacct and left no log",
                    s.job_id
                ),
            },
            None,
        );
    };
    let cause_in_log = log.and_then(error_from_log);
    if let Some(class) = end.state.failure_class() {
        let message = format!(
            "SLURM ended job {} with {}{}",
            s.job_id,
            end.state.name(),
            if end.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", end.detail)
            }
        );
        return (
            PointView::Failed {
                class: Some(class),
                cause: message.clone(),
                job_id: Some(s.job_id.clone()),
            },
            Some(SlurmFailure {
                point_id: job.point_id.clone(),
                class,
                message,
            }),
        );
    }
    let view = match end.state {
        SlurmState::Cancelled | SlurmState::Preempted => PointView::Pending {
            note: format!("job {} was {}", s.job_id, end.state.name().to_lowercase()),
        },
        // The job ended without recording the point: the script or xtask
        // failed before the point ran (a store the node cannot write, a
        // missing binary, ...). Not a property of the point: a re-run
        // submits it again once the cause is fixed.
        _ => PointView::Failed {
            class: None,
            cause: cause_in_log.unwrap_or_else(|| {
                format!(
                    "job {} ended ({}) without recording the point; see its log",
                    s.job_id,
                    end.state.name()
                )
            }),
            job_id: Some(s.job_id.clone()),
        },
    };
    (view, None)
}

fn view_word(state: &SlurmState) -> &'static str {
    match state {
        SlurmState::Running => "running",
        _ => "queued",
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(ledger: LedgerState) -> PointJob {
        PointJob {
            point_id: "p1".into(),
            label: "l".into(),
            gpus: 0,
            ledger,
        }
    }

    fn submission(at: &str) -> Submission {
        Submission {
            job_id: "42".into(),
            job_name: "dyno.s.p1".into(),
            submitted_at: at.into(),
            submit_host: "h".into(),
        }
    }

    fn end(state: SlurmState, source: &'static str) -> JobEnd {
        JobEnd {
            state,
            source,
            detail: String::new(),
        }
    }

    const T0: &str = "2026-11-30T09:00:00.000Z";
    const T1: &str = "2026-11-30T09:05:00.000Z";

    #[test]
    fn never_submitted_points_follow_the_ledger() {
        let (v, f) = resolve(&job(LedgerState::None), None, None, None);
        assert_eq!(v.name(), "pending");
        assert!(f.is_none());
        let done = LedgerState::Done {
            updated_at: T0.into(),
        };
        assert_eq!(resolve(&job(done), None, None, None).0, PointView::Done);
    }

    #[test]
    fn queued_and_running_jobs_show_as_such_even_over_an_old_failure() {
        let old_failure = LedgerState::Failed {
            class: FailureClass::Timeout,
            message: "m".into(),
            updated_at: T0.into(),
        };
        let s = submission(T1);
        let (v, _) = resolve(
            &job(old_failure.clone()),
            Some(&s),
            Some(&JobEnd {
                state: SlurmState::Pending,
                source: "squeue",
                detail: "Priority".into(),
            }),
            None,
        );
        assert_eq!(
            v,
            PointView::Queued {
                job_id: "42".into(),
                reason: "Priority".into()
            }
        );
        let (v, _) = resolve(
            &job(old_failure),
            Some(&s),
            Some(&end(SlurmState::Running, "squeue")),
            None,
        );
        assert_eq!(v.name(), "running");
    }

    #[test]
    fn a_time_limit_becomes_a_timeout_failure_to_record() {
        let s = submission(T1);
        let (v, f) = resolve(
            &job(LedgerState::None),
            Some(&s),
            Some(&end(SlurmState::Timeout, "log")),
            None,
        );
        let f = f.expect("a failure to record");
        assert_eq!(f.class, FailureClass::Timeout);
        assert!(f.message.contains("job 42") && f.message.contains("TIMEOUT"));
        assert!(matches!(
            v,
            PointView::Failed {
                class: Some(FailureClass::Timeout),
                ..
            }
        ));
        // Out of memory and node failures likewise.
        let (_, f) = resolve(
            &job(LedgerState::None),
            Some(&s),
            Some(&end(SlurmState::OutOfMemory, "sacct")),
            None,
        );
        assert_eq!(f.unwrap().class, FailureClass::Oom);
        let (_, f) = resolve(
            &job(LedgerState::None),
            Some(&s),
            Some(&end(SlurmState::NodeFail, "sacct")),
            None,
        );
        assert_eq!(f.unwrap().class, FailureClass::Crash);
    }

    #[test]
    fn a_ledger_entry_newer_than_the_submission_is_the_answer() {
        let s = submission(T0);
        let done = LedgerState::Done {
            updated_at: T1.into(),
        };
        let (v, f) = resolve(
            &job(done),
            Some(&s),
            Some(&end(SlurmState::Completed, "squeue")),
            None,
        );
        assert_eq!(v, PointView::Done);
        assert!(f.is_none());
        // Already recorded: not recorded twice.
        let recorded = LedgerState::Failed {
            class: FailureClass::Timeout,
            message: "SLURM ended job 42 with TIMEOUT".into(),
            updated_at: T1.into(),
        };
        let (_, f) = resolve(
            &job(recorded),
            Some(&s),
            Some(&end(SlurmState::Timeout, "squeue")),
            None,
        );
        assert!(f.is_none());
    }

    #[test]
    fn a_job_that_recorded_nothing_shows_the_cause_from_its_log_and_is_resubmittable() {
        let s = submission(T1);
        let log = "dyno: job 42 on n1\ndyno: error: point p1: the store /s is not writable from node n1\n";
        let (v, f) = resolve(
            &job(LedgerState::None),
            Some(&s),
            Some(&end(SlurmState::Failed, "squeue")),
            Some(log),
        );
        assert!(f.is_none());
        match v {
            PointView::Failed { class, cause, .. } => {
                assert_eq!(class, None);
                assert!(cause.contains("not writable"), "{cause}");
            }
            other => panic!("{other:?}"),
        }
        let (v, _) = resolve(
            &job(LedgerState::None),
            Some(&s),
            Some(&end(SlurmState::Cancelled, "squeue")),
            None,
        );
        assert_eq!(v.name(), "pending");
    }
}
