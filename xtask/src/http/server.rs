//! Servers the pipeline starts itself: `--launch "CMD"` (any server, one
//! for the whole run) and `--serve` (`engine serve`, a fresh one per trial,
//! like `engine bench`'s fresh process per trial). Each runs in its own
//! process group with its output in a log file, is waited for on
//! `/health`, and is stopped with SIGTERM (then SIGKILL) afterwards.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::client::Target;

/// A started server process.
pub struct Server {
    child: Child,
    pub log: PathBuf,
}

/// Why a server did not come up: a trial or run fails as `server-fail`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("server-fail: {0}")]
pub struct ServerFail(pub String);

/// `--launch` commands as stored in the fingerprint: `--api-key` values
/// (the next word or after `=`) are redacted.
pub fn redact(cmd: &str) -> String {
    let mut out = Vec::new();
    let mut hide_next = false;
    for word in cmd.split_whitespace() {
        if hide_next {
            out.push("<redacted>".to_string());
            hide_next = false;
        } else if let Some((flag, _)) = word.split_once('=').filter(|(f, _)| is_key_flag(f)) {
            out.push(format!("{flag}=<redacted>"));
        } else {
            hide_next = is_key_flag(word);
            out.push(word.to_string());
        }
    }
    out.join(" ")
}

fn is_key_flag(word: &str) -> bool {
    matches!(word, "--api-key" | "--api_key" | "-api-key")
}

impl Server {
    /// Starts `program args` (with `env` added to its environment) with
    /// stdout and stderr into `log`.
    pub fn start(
        program: &Path,
        args: &[String],
        env: &std::collections::BTreeMap<String, String>,
        log: &Path,
    ) -> Result<Server, ServerFail> {
        let mut cmd = Command::new(program);
        cmd.args(args).envs(env);
        Self::spawn(cmd, log)
    }

    /// Starts a shell command line.
    pub fn start_shell(command: &str, log: &Path) -> Result<Server, ServerFail> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(command);
        Self::spawn(cmd, log)
    }

    fn spawn(mut cmd: Command, log: &Path) -> Result<Server, ServerFail> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ServerFail(format!("cannot create {}: {e}", dir.display())))?;
        }
        let out = std::fs::File::create(log)
            .map_err(|e| ServerFail(format!("cannot create {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| ServerFail(format!("{}: {e}", log.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            // Its own group, so stopping it stops what it started too.
            cmd.process_group(0);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| ServerFail(format!("cannot start the server: {e}")))?;
        Ok(Server {
            child,
            log: log.to_path_buf(),
        })
    }

    /// Waits for the `http://...` address the server prints after
    /// `marker` (`engine serve: listening on `) in its log.
    pub fn wait_for_address(
        &mut self,
        marker: &str,
        timeout: Duration,
    ) -> Result<String, ServerFail> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(rest) = text
                .lines()
                .find_map(|l| l.split_once(marker).map(|(_, r)| r))
            {
                return Ok(rest.trim().to_string());
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Err(self.fail(format!("no `{marker}` line within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `/health` answers 200.
    pub fn wait_healthy(&mut self, target: &Target, timeout: Duration) -> Result<(), ServerFail> {
        let deadline = Instant::now() + timeout;
        loop {
            if target.healthy() {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Err(self.fail(format!(
                    "{}/health did not answer 200 within {timeout:?}",
                    target.base
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn check_alive(&mut self) -> Result<(), ServerFail> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(self.fail(format!("the server exited ({status})"))),
            Ok(None) => Ok(()),
            Err(e) => Err(self.fail(format!("cannot watch the server: {e}"))),
        }
    }

    fn fail(&self, what: String) -> ServerFail {
        ServerFail(format!(
            "{what}; log {}{}",
            self.log.display(),
            log_tail(&self.log)
        ))
    }

    /// SIGTERM to the server's process group (so a server started through
    /// `sh -c` drains too), then SIGKILL to whatever of the group is left
    /// after `grace`. Returns once the whole group is gone (or after a
    /// last 5 s), and whether SIGTERM alone ended it.
    pub fn stop(mut self, grace: Duration) -> bool {
        let pid = self.child.id();
        signal_group(pid, "TERM");
        let deadline = Instant::now() + grace;
        loop {
            // Reap our own child, so a zombie does not count as alive.
            let _ = self.child.try_wait();
            if !group_alive(pid) {
                let _ = self.child.wait();
                return true;
            }
            if Instant::now() >= deadline {
                signal_group(pid, "KILL");
                let _ = self.child.kill();
                return self.stop_after_kill(pid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most 5 s) for the kernel to take a killed group down.
    fn stop_after_kill(mut self, pid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let _ = self.child.try_wait();
            if !group_alive(pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
        false
    }
}

/// Whether any process of the group led by `pid` still exists.
fn group_alive(pid: u32) -> bool {
    Command::new("kill")
        .arg("-0")
        .arg("--")
        .arg(format!("-{pid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Signals the process group led by `pid` (through `kill(1)`: xtask has no
/// libc binding, and the group is ours).
fn signal_group(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

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

    #[test]
    fn api_keys_are_redacted_from_launch_commands() {
        assert_eq!(
            redact("vllm serve m --api-key s3cret --port 1"),
            "vllm serve m --api-key <redacted> --port 1"
        );
        assert_eq!(redact("x --api-key=abc"), "x --api-key=<redacted>");
    }

    #[test]
    fn a_server_that_exits_is_a_server_fail_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let mut s = Server::start_shell("echo cannot bind; exit 3", &log).unwrap();
        let err = s
            .wait_for_address("listening on ", Duration::from_secs(10))
            .unwrap_err();
        assert!(err.to_string().contains("server-fail"), "{err}");
        assert!(err.to_string().contains("cannot bind"), "{err}");
    }

    #[test]
    fn stop_ends_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let mut s =
            Server::start_shell("echo 'listening on http://x'; sleep 30 & wait", &log).unwrap();
        assert_eq!(
            s.wait_for_address("listening on ", Duration::from_secs(10))
                .unwrap(),
            "http://x"
        );
        let started = Instant::now();
        s.stop(Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
