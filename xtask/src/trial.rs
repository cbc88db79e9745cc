//! One trial: a fresh `engine bench` process with a deadline. A fresh
//! process makes trials independent samples, and a crash or OOM cannot take
//! the orchestrator down. Its stdout and stderr go to the trial's log.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use workloads::engine_knobs::{EXIT_INVALID_CONFIG, EXIT_OUT_OF_MEMORY};

use crate::run_record::FailureClass;

/// Where one trial reads and writes.
#[derive(Debug, Clone)]
pub struct TrialFiles {
    pub dir: PathBuf,
    pub records: PathBuf,
    pub step_log: PathBuf,
    pub summary: PathBuf,
    pub log: PathBuf,
}

impl TrialFiles {
    pub fn in_dir(dir: &Path) -> TrialFiles {
        TrialFiles {
            dir: dir.to_path_buf(),
            records: dir.join("records.jsonl"),
            step_log: dir.join("steps.jsonl"),
            summary: dir.join("summary.json"),
            log: dir.join("engine.log"),
        }
    }
}

/// The `engine bench` invocation shared by every trial of a workload.
#[derive(Debug, Clone)]
pub struct EngineBench {
    pub engine: PathBuf,
    pub model: PathBuf,
    pub requests: PathBuf,
    pub config: Option<PathBuf>,
    /// "cpu" or "cuda".
    pub device: String,
    pub max_concurrency: Option<u32>,
    /// Extra environment variables for the engine process.
    pub env: std::collections::BTreeMap<String, String>,
}

impl EngineBench {
    pub fn args(&self, files: &TrialFiles) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec![
            "bench".into(),
            "--model".into(),
            self.model.clone().into(),
            "--requests".into(),
            self.requests.clone().into(),
            "--out".into(),
            files.records.clone().into(),
            "--device".into(),
            self.device.clone().into(),
            "--step-log".into(),
            files.step_log.clone().into(),
            "--summary".into(),
            files.summary.clone().into(),
        ];
        if let Some(config) = &self.config {
            args.push("--config".into());
            args.push(config.clone().into());
        }
        if let Some(n) = self.max_concurrency {
            args.push("--max-concurrency".into());
            args.push(n.to_string().into());
        }
        args
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProcessOutcome {
    Exited {
        wall_s: f64,
    },
    Failed {
        reason: String,
        class: FailureClass,
        wall_s: f64,
    },
    TimedOut {
        after_s: f64,
    },
    /// The user interrupted the bench (Ctrl-C); the engine was stopped.
    Interrupted,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // A second Ctrl-C: stop at once, the default way. Both calls are
        // async-signal-safe.
        // SAFETY: restoring the default disposition and re-raising.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::raise(libc::SIGINT);
        }
    }
}

/// From now on the first Ctrl-C (SIGINT) asks the bench to stop cleanly
/// (the running trial's engine is stopped, finished trials are stored); a
/// second one stops it at once. Engines run in their own process group, so
/// the terminal's SIGINT reaches only xtask.
pub fn catch_interrupts() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler only touches an atomic and async-signal-safe calls.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}

/// Whether Ctrl-C was pressed since [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Makes the child die with xtask (SIGKILL when the thread that spawned it
/// ends, however xtask ends) and puts it in its own process group, so
/// Ctrl-C in the terminal stops xtask cleanly instead of killing the
/// engine mid-trial.
fn tie_to_parent(cmd: &mut std::process::Command) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
            }
            #[cfg(not(target_os = "linux"))]
            let _ = parent;
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Runs one trial's engine process to completion or to `timeout`.
pub fn run_engine(bench: &EngineBench, files: &TrialFiles, timeout: Duration) -> ProcessOutcome {
    let started = Instant::now();
    let elapsed = || started.elapsed().as_secs_f64();
    if let Err(e) = std::fs::create_dir_all(&files.dir) {
        return ProcessOutcome::Failed {
            reason: format!("cannot create {}: {e}", files.dir.display()),
            class: FailureClass::Crash,
            wall_s: 0.0,
        };
    }
    let mut command = duct::cmd(&bench.engine, bench.args(files));
    for (key, value) in &bench.env {
        command = command.env(key, value);
    }
    let handle = match command
        .stderr_to_stdout()
        .stdout_path(&files.log)
        .stdin_null()
        .unchecked()
        .before_spawn(tie_to_parent)
        .start()
    {
        Ok(h) => h,
        Err(e) => {
            return ProcessOutcome::Failed {
                reason: format!("cannot start {}: {e}", bench.engine.display()),
                class: FailureClass::Crash,
                wall_s: elapsed(),
            }
        }
    };
    let deadline = started + timeout;
    loop {
        match handle.wait_timeout(Duration::from_millis(100)) {
            Ok(Some(output)) => {
                let wall_s = elapsed();
                return if output.status.success() {
                    ProcessOutcome::Exited { wall_s }
                } else {
                    ProcessOutcome::Failed {
                        reason: format!(
                            "engine {}; log {}{}",
                            output.status,
                            files.log.display(),
                            log_tail(&files.log)
                        ),
                        class: classify_exit(output.status.code(), &files.log),
                        wall_s,
                    }
                };
            }
            Ok(None) if interrupted() => {
                let _ = handle.kill();
                return ProcessOutcome::Interrupted;
            }
            Ok(None) if Instant::now() >= deadline => {
                // Killing also reaps the child: nothing is left running.
                let _ = handle.kill();
                return ProcessOutcome::TimedOut { after_s: elapsed() };
            }
            Ok(None) => {}
            Err(e) => {
                let _ = handle.kill();
                return ProcessOutcome::Failed {
                    reason: format!("waiting for the engine failed: {e}"),
                    class: FailureClass::Crash,
                    wall_s: elapsed(),
                };
            }
        }
    }
}

/// The class of a failed engine process: the engine's own exit codes for a
/// rejected config and for memory, else an "out of memory" in its log
/// (an allocator or driver message the engine did not classify), else a
/// crash (a signal has no exit code).
fn classify_exit(code: Option<i32>, log: &Path) -> FailureClass {
    match code {
        Some(EXIT_INVALID_CONFIG) => FailureClass::InvalidConfig,
        Some(EXIT_OUT_OF_MEMORY) => FailureClass::Oom,
        _ => {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lower = text.to_ascii_lowercase();
            if lower.contains("out of memory") || lower.contains("out_of_memory") {
                FailureClass::Oom
            } else {
                FailureClass::Crash
            }
        }
    }
}

/// What the log says went wrong, to make a failure readable in the table:
/// a panic's message, else the last `error:` line, else the last lines.
/// (With RUST_BACKTRACE=1 the last lines are stack frames.)
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if let Some(i) = lines.iter().rposition(|l| l.contains("panicked at")) {
        // "thread 'main' panicked at src/x.rs:1:2:" then the message.
        let end = (i + 2).min(lines.len());
        return format!(": {}", lines[i..end].join(" "));
    }
    if let Some(line) = lines.iter().rev().find(|l| l.starts_with("error")) {
        return format!(": {line}");
    }
    let tail = &lines[lines.len().saturating_sub(3)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {}", tail.join(" | "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, dir: &Path) -> EngineBench {
        let path = dir.join("fake.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        EngineBench {
            engine: path,
            model: dir.into(),
            requests: dir.join("r.jsonl"),
            config: None,
            device: "cpu".into(),
            max_concurrency: Some(4),
            env: Default::default(),
        }
    }

    #[test]
    fn exit_codes_and_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let files = TrialFiles::in_dir(&dir.path().join("t"));
        let ok = sh("echo hello", dir.path());
        assert!(matches!(
            run_engine(&ok, &files, Duration::from_secs(10)),
            ProcessOutcome::Exited { .. }
        ));
        assert_eq!(std::fs::read_to_string(&files.log).unwrap(), "hello\n");

        let crash = sh("echo boom >&2; exit 7", dir.path());
        match run_engine(&crash, &files, Duration::from_secs(10)) {
            ProcessOutcome::Failed { reason, class, .. } => {
                assert!(reason.contains("boom"), "{reason}");
                assert!(reason.contains('7'), "{reason}");
                assert_eq!(class, FailureClass::Crash);
            }
            other => panic!("{other:?}"),
        }
        for (script, want) in [
            ("exit 3", FailureClass::InvalidConfig),
            ("exit 4", FailureClass::Oom),
            (
                "echo 'CUDA_ERROR_OUT_OF_MEMORY' >&2; exit 1",
                FailureClass::Oom,
            ),
            ("kill -9 $$", FailureClass::Crash),
        ] {
            match run_engine(&sh(script, dir.path()), &files, Duration::from_secs(10)) {
                ProcessOutcome::Failed { class, .. } => assert_eq!(class, want, "{script}"),
                other => panic!("{script}: {other:?}"),
            }
        }

        let slow = sh("exec sleep 30", dir.path());
        let started = Instant::now();
        let outcome = run_engine(&slow, &files, Duration::from_millis(300));
        assert!(matches!(outcome, ProcessOutcome::TimedOut { .. }));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_panic_with_a_backtrace_reports_the_message_not_the_frames() {
        let dir = tempfile::tempdir().unwrap();
        let files = TrialFiles::in_dir(&dir.path().join("t"));
        let panics = sh(
            "echo \"thread 'main' panicked at engine/src/bench.rs:117:29:\" >&2
echo 'cannot convert float seconds to Duration: value is either too big or NaN' >&2
echo 'stack backtrace:' >&2
for i in 0 1 2 3 4 5; do echo \"   $i: std::rt::lang_start\" >&2; echo '      at /rustc/library/std/src/rt.rs:195:5' >&2; done
exit 101",
            dir.path(),
        );
        match run_engine(&panics, &files, Duration::from_secs(10)) {
            ProcessOutcome::Failed { reason, .. } => {
                assert!(reason.contains("cannot convert float seconds"), "{reason}");
                assert!(reason.contains("bench.rs:117"), "{reason}");
                assert!(!reason.contains("lang_start"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let errors = sh(
            "echo 'error: opening model /m: config.json: No such file' >&2; echo '   0: frame' >&2; exit 1",
            dir.path(),
        );
        match run_engine(&errors, &files, Duration::from_secs(10)) {
            ProcessOutcome::Failed { reason, .. } => {
                assert!(reason.contains("error: opening model"), "{reason}");
                assert!(!reason.contains("frame"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn passes_every_file_to_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let files = TrialFiles::in_dir(dir.path());
        let bench = sh("", dir.path());
        let args: Vec<String> = bench
            .args(&files)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[0], "bench");
        for flag in ["--out", "--step-log", "--summary", "--max-concurrency"] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing");
        }
    }
}
