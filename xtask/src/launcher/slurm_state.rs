//! What SLURM says about a job: `squeue`, `sacct` and the job's log, parsed
//! and mapped onto dyno's point states and failure classes.
//!
//! `squeue` knows queued and running jobs (and, for `MinJobAge` seconds,
//! finished ones); `sacct` knows finished ones where the cluster keeps
//! accounting; the job's log keeps slurmstepd's `*** JOB n ... CANCELLED
//! ... DUE TO TIME LIMIT ***` line forever, which is the last resort on a
//! cluster without accounting.

use crate::run_record::FailureClass;

/// A SLURM job state (`squeue %T`, `sacct State`), as far as dyno cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlurmState {
    /// Waiting for resources, held, requeued, suspended.
    Pending,
    /// Allocated: configuring, running, completing, staging out.
    Running,
    Completed,
    /// The batch script exited non-zero.
    Failed,
    Timeout,
    OutOfMemory,
    NodeFail,
    BootFail,
    Deadline,
    Cancelled,
    Preempted,
    /// A state this code does not know, kept verbatim for the message.
    Other(String),
}

impl SlurmState {
    /// Parses a state as squeue or sacct print it: `RUNNING`, `CANCELLED by
    /// 1000`, `CANCELLED+`, short codes (`PD`, `R`, `CG`, `TO`, `OOM`, `NF`).
    pub fn parse(text: &str) -> SlurmState {
        let word = text
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_end_matches('+')
            .to_ascii_uppercase();
        match word.as_str() {
            "PENDING" | "PD" | "REQUEUED" | "RQ" | "REQUEUE_HOLD" | "RH" | "REQUEUE_FED" | "RF"
            | "SUSPENDED" | "S" | "RESV_DEL_HOLD" | "RD" | "STOPPED" | "ST" | "SPECIAL_EXIT"
            | "SE" => SlurmState::Pending,
            "RUNNING" | "R" | "CONFIGURING" | "CF" | "COMPLETING" | "CG" | "SIGNALING" | "SI"
            | "STAGE_OUT" | "SO" | "RESIZING" | "RS" => SlurmState::Running,
            "COMPLETED" | "CD" => SlurmState::Completed,
            "FAILED" | "F" => SlurmState::Failed,
            "TIMEOUT" | "TO" => SlurmState::Timeout,
            "OUT_OF_MEMORY" | "OOM" => SlurmState::OutOfMemory,
            "NODE_FAIL" | "NF" => SlurmState::NodeFail,
            "BOOT_FAIL" | "BF" => SlurmState::BootFail,
            "DEADLINE" | "DL" => SlurmState::Deadline,
            "CANCELLED" | "CA" => SlurmState::Cancelled,
            "PREEMPTED" | "PR" => SlurmState::Preempted,
            _ => SlurmState::Other(word),
        }
    }

    /// Queued or running: submitting the point again would duplicate it.
    pub fn is_active(&self) -> bool {
        matches!(self, SlurmState::Pending | SlurmState::Running)
    }

    /// The dyno failure class of a job SLURM ended: the time limit is a
    /// `timeout`, SLURM's memory limit an `oom`, a node or boot failure a
    /// `crash` (the point died with its node). `None` for states that say
    /// nothing about the point: active, completed (the store has the
    /// outcome), failed (the script's own exit: the store or the log says
    /// why), cancelled and preempted (the point never finished and is
    /// pending again).
    pub fn failure_class(&self) -> Option<FailureClass> {
        match self {
            SlurmState::Timeout | SlurmState::Deadline => Some(FailureClass::Timeout),
            SlurmState::OutOfMemory => Some(FailureClass::Oom),
            SlurmState::NodeFail | SlurmState::BootFail => Some(FailureClass::Crash),
            _ => None,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            SlurmState::Pending => "PENDING",
            SlurmState::Running => "RUNNING",
            SlurmState::Completed => "COMPLETED",
            SlurmState::Failed => "FAILED",
            SlurmState::Timeout => "TIMEOUT",
            SlurmState::OutOfMemory => "OUT_OF_MEMORY",
            SlurmState::NodeFail => "NODE_FAIL",
            SlurmState::BootFail => "BOOT_FAIL",
            SlurmState::Deadline => "DEADLINE",
            SlurmState::Cancelled => "CANCELLED",
            SlurmState::Preempted => "PREEMPTED",
            SlurmState::Other(s) => s,
        }
    }
}

/// One job as `squeue` or `sacct` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    pub job_id: String,
    pub name: String,
    pub state: SlurmState,
    /// squeue's reason (`Priority`, `Resources`, `TimeLimit`, ...) or
    /// sacct's exit code; empty when there is none.
    pub detail: String,
}

/// The `squeue` format these parsers read: id, name, state, reason.
pub const SQUEUE_FORMAT: &str = "%i|%j|%T|%r";

/// The `sacct` fields these parsers read (with `-P -n -X`).
pub const SACCT_FIELDS: &str = "JobID,JobName,State,ExitCode";

/// Parses `squeue -h -o '%i|%j|%T|%r'`. A job name may contain `|`, so the
/// id is the first field, state and reason the last two, and the name what
/// is between. Lines that do not have the shape are skipped (squeue prints
/// nothing else with `-h`).
pub fn parse_squeue(text: &str) -> Vec<JobInfo> {
    text.lines().filter_map(parse_pipe_line).collect()
}

/// Parses `sacct -P -n -X -o JobID,JobName,State,ExitCode`. Job steps
/// (`123.batch`) are skipped in case `-X` was not honoured.
pub fn parse_sacct(text: &str) -> Vec<JobInfo> {
    text.lines()
        .filter_map(parse_pipe_line)
        .filter(|j| !j.job_id.contains('.'))
        .collect()
}

fn parse_pipe_line(line: &str) -> Option<JobInfo> {
    let line = line.trim();
    let (job_id, rest) = line.split_once('|')?;
    let (rest, detail) = rest.rsplit_once('|')?;
    let (name, state) = rest.rsplit_once('|')?;
    let job_id = job_id.trim();
    if job_id.is_empty() || !job_id.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        return None;
    }
    let detail = detail.trim();
    Some(JobInfo {
        job_id: job_id.to_string(),
        name: name.to_string(),
        state: SlurmState::parse(state),
        detail: if detail == "None" || detail == "(null)" {
            String::new()
        } else {
            detail.to_string()
        },
    })
}

/// `sbatch --parsable` prints `jobid` or `jobid;cluster`.
pub fn parse_sbatch(stdout: &str) -> Option<String> {
    let first = stdout.lines().map(str::trim).find(|l| !l.is_empty())?;
    let id = first.split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c == '_')).then(|| id.to_string())
}

/// What a job's log says about how SLURM ended it: slurmstepd writes
/// `*** JOB <id> ON <node> CANCELLED AT <time> DUE TO TIME LIMIT ***` (or
/// `NODE FAILURE`, `PREEMPTION`, nothing after the time for scancel), and
/// the kernel's OOM killer shows up as `oom-kill` / `oom_kill` events.
/// `None` when the log has none of these (the job ended by itself).
pub fn state_from_log(log: &str) -> Option<SlurmState> {
    let mut found = None;
    for line in log.lines() {
        if line.contains("*** JOB") || line.contains("*** STEP") {
            if line.contains("DUE TO TIME LIMIT") {
                found = Some(SlurmState::Timeout);
            } else if line.contains("DUE TO NODE FAIL") {
                found = Some(SlurmState::NodeFail);
            } else if line.contains("DUE TO PREEMPTION") {
                found = Some(SlurmState::Preempted);
            } else if line.contains("CANCELLED AT") {
                found = Some(SlurmState::Cancelled);
            }
        } else if line.contains("oom-kill") || line.contains("oom_kill") {
            found = Some(SlurmState::OutOfMemory);
        }
    }
    found
}

/// The dyno error line a job script or `sweep --point` wrote last
/// (`dyno: error: ...` from the script, `error: ...` from xtask), for a
/// failed job's cause.
pub fn error_from_log(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with("dyno: error:") || l.starts_with("error:"))
        .map(|l| {
            l.trim_start_matches("dyno: error:")
                .trim_start_matches("error:")
                .trim()
                .to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_long_and_short_forms() {
        assert_eq!(SlurmState::parse("PENDING"), SlurmState::Pending);
        assert_eq!(SlurmState::parse("PD"), SlurmState::Pending);
        assert_eq!(SlurmState::parse("R"), SlurmState::Running);
        assert_eq!(SlurmState::parse("COMPLETING"), SlurmState::Running);
        assert_eq!(
            SlurmState::parse("CANCELLED by 1000"),
            SlurmState::Cancelled
        );
        assert_eq!(SlurmState::parse("CANCELLED+"), SlurmState::Cancelled);
        assert_eq!(SlurmState::parse("TIMEOUT"), SlurmState::Timeout);
        assert_eq!(SlurmState::parse("OUT_OF_MEMORY"), SlurmState::OutOfMemory);
        assert_eq!(SlurmState::parse("NODE_FAIL"), SlurmState::NodeFail);
        assert_eq!(
            SlurmState::parse("WEIRD"),
            SlurmState::Other("WEIRD".into())
        );
    }

    #[test]
    fn slurm_endings_map_onto_dyno_failure_classes() {
        assert_eq!(
            SlurmState::Timeout.failure_class(),
            Some(FailureClass::Timeout)
        );
        assert_eq!(
            SlurmState::Deadline.failure_class(),
            Some(FailureClass::Timeout)
        );
        assert_eq!(
            SlurmState::OutOfMemory.failure_class(),
            Some(FailureClass::Oom)
        );
        assert_eq!(
            SlurmState::NodeFail.failure_class(),
            Some(FailureClass::Crash)
        );
        for state in [
            SlurmState::Pending,
            SlurmState::Running,
            SlurmState::Completed,
            SlurmState::Failed,
            SlurmState::Cancelled,
            SlurmState::Preempted,
        ] {
            assert_eq!(state.failure_class(), None, "{state:?}");
        }
        assert!(SlurmState::Pending.is_active());
        assert!(SlurmState::Running.is_active());
        assert!(!SlurmState::Timeout.is_active());
        assert!(!SlurmState::Cancelled.is_active());
    }

    #[test]
    fn squeue_lines_parse_with_pipes_in_names() {
        let out = "12|dyno.s.abc|PENDING|Priority\n13|odd|name|RUNNING|None\n\ngarbage\n14|x|TIMEOUT|TimeLimit\n";
        let jobs = parse_squeue(out);
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[0].job_id, "12");
        assert_eq!(jobs[0].name, "dyno.s.abc");
        assert_eq!(jobs[0].state, SlurmState::Pending);
        assert_eq!(jobs[0].detail, "Priority");
        assert_eq!(jobs[1].name, "odd|name");
        assert_eq!(jobs[1].state, SlurmState::Running);
        assert_eq!(jobs[1].detail, "");
        assert_eq!(jobs[2].state, SlurmState::Timeout);
    }

    #[test]
    fn sacct_skips_steps() {
        let out = "20|dyno.s.a|COMPLETED|0:0\n20.batch|batch|COMPLETED|0:0\n21|dyno.s.b|OUT_OF_MEMORY|0:125\n22|dyno.s.c|CANCELLED by 0|0:0\n";
        let jobs = parse_sacct(out);
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[1].state, SlurmState::OutOfMemory);
        assert_eq!(jobs[1].detail, "0:125");
        assert_eq!(jobs[2].state, SlurmState::Cancelled);
    }

    #[test]
    fn sbatch_parsable_output() {
        assert_eq!(parse_sbatch("123\n").as_deref(), Some("123"));
        assert_eq!(parse_sbatch("456;cluster\n").as_deref(), Some("456"));
        assert_eq!(parse_sbatch(""), None);
        assert_eq!(parse_sbatch("Submitted batch job 7"), None);
    }

    #[test]
    fn logs_tell_how_slurm_ended_a_job() {
        let timeout = "dyno: job 1\nslurmstepd-vm: error: *** JOB 1 ON vm CANCELLED AT 2026-11-30T08:52:44 DUE TO TIME LIMIT ***\n";
        assert_eq!(state_from_log(timeout), Some(SlurmState::Timeout));
        let cancel = "slurmstepd: error: *** JOB 2 ON n1 CANCELLED AT 2026-11-30T08:52:44 ***\n";
        assert_eq!(state_from_log(cancel), Some(SlurmState::Cancelled));
        let node = "slurmstepd: error: *** JOB 3 ON n1 CANCELLED AT 2026-11-30T08:52:44 DUE TO NODE FAILURE ***\n";
        assert_eq!(state_from_log(node), Some(SlurmState::NodeFail));
        let oom = "slurmstepd: error: Detected 1 oom-kill event(s) in StepId=4.batch.\n";
        assert_eq!(state_from_log(oom), Some(SlurmState::OutOfMemory));
        assert_eq!(state_from_log("all fine\n"), None);
    }

    #[test]
    fn the_last_error_line_is_the_cause() {
        let log = "dyno: job 5\nerror: first\nmore\ndyno: error: point abc: the store /s is not writable from node n1\n";
        assert_eq!(
            error_from_log(log).as_deref(),
            Some("point abc: the store /s is not writable from node n1")
        );
        assert_eq!(error_from_log("nothing\n"), None);
    }
}
