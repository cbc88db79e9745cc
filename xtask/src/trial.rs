//! One trial: a fresh `engine bench` process with a deadline. A fresh
//! process makes trials independent samples, and a crash or OOM cannot take
//! the orchestrator down. Its stdout and stderr go to the trial's log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    Exited { wall_s: f64 },
    Failed { reason: String, wall_s: f64 },
    TimedOut { after_s: f64 },
}

/// Runs one trial's engine process to completion or to `timeout`.
pub fn run_engine(bench: &EngineBench, files: &TrialFiles, timeout: Duration) -> ProcessOutcome {
    let started = Instant::now();
    let elapsed = || started.elapsed().as_secs_f64();
    if let Err(e) = std::fs::create_dir_all(&files.dir) {
        return ProcessOutcome::Failed {
            reason: format!("cannot create {}: {e}", files.dir.display()),
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
        .start()
    {
        Ok(h) => h,
        Err(e) => {
            return ProcessOutcome::Failed {
                reason: format!("cannot start {}: {e}", bench.engine.display()),
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
                        wall_s,
                    }
                };
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
                    wall_s: elapsed(),
                };
            }
        }
    }
}

/// The last lines of the log, to make a failure readable in the table.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
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

        let crash = sh("echo boom >&2; exit 3", dir.path());
        match run_engine(&crash, &files, Duration::from_secs(10)) {
            ProcessOutcome::Failed { reason, .. } => {
                assert!(reason.contains("boom"), "{reason}");
                assert!(reason.contains('3'), "{reason}");
            }
            other => panic!("{other:?}"),
        }

        let slow = sh("exec sleep 30", dir.path());
        let started = Instant::now();
        let outcome = run_engine(&slow, &files, Duration::from_millis(300));
        assert!(matches!(outcome, ProcessOutcome::TimedOut { .. }));
        assert!(started.elapsed() < Duration::from_secs(10));
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
