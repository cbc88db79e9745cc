//! `cargo xtask sweep --launcher slurm` against fake SLURM commands: shell
//! scripts standing in for sbatch / squeue / sacct / scancel, keeping the
//! "cluster" in a state file the tests edit (a job times out, runs, is
//! cancelled). Needs no SLURM and no engine run; `slurm_cluster.rs` runs
//! the same flow on a real one-node cluster.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SWEEP: &str = r#"name = "fake-slurm"
description = "three points for the SLURM launcher tests"
trials = 1
device = "cpu"

[fixed]
model = "tiny"
seed = 1
requests = 4
warmup_requests = 0
prompt_len = 8
output_len = 4

[[experiment]]
name = "seqs"
max_num_seqs = [2, 4, 8]

[slurm]
partition = "ci"
time = "5"
"#;

/// sbatch: refuses a script that mentions $FAKE_REJECT, else queues it.
const SBATCH: &str = r#"#!/bin/sh
state="$FAKE_SLURM/state"
for script; do :; done
if [ -n "${FAKE_REJECT:-}" ] && grep -q "$FAKE_REJECT" "$script"; then
  echo "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified" >&2
  exit 1
fi
n=$(cat "$FAKE_SLURM/next" 2>/dev/null || echo 100); echo $((n + 1)) > "$FAKE_SLURM/next"
name=$(sed -n 's/^#SBATCH --job-name=//p' "$script")
echo "$n|$name|PENDING|Priority" >> "$state"
echo "$n"
"#;

const SQUEUE: &str = r#"#!/bin/sh
cat "$FAKE_SLURM/state" 2>/dev/null
exit 0
"#;

const SACCT: &str = r#"#!/bin/sh
echo "Slurm accounting storage is disabled" >&2
exit 1
"#;

const SCANCEL: &str = r#"#!/bin/sh
for id; do
  sed -i "s/^$id|\([^|]*\)|[A-Z_]*|.*/$id|\1|CANCELLED|None/" "$FAKE_SLURM/state"
  echo "$id" >> "$FAKE_SLURM/cancelled"
done
"#;

struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for (name, text) in [
            ("sbatch", SBATCH),
            ("squeue", SQUEUE),
            ("sacct", SACCT),
            ("scancel", SCANCEL),
        ] {
            let path = bin.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(dir.path().join("sweep.toml"), SWEEP).unwrap();
        // Any file will do: submitting runs no engine.
        std::fs::write(dir.path().join("engine"), "").unwrap();
        Fake { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn results(&self) -> PathBuf {
        self.path("results")
    }

    fn jobs_dir(&self) -> PathBuf {
        self.results().join("sweeps/fake-slurm/cpu/jobs")
    }

    fn xtask(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.arg("sweep")
            .arg(self.path("sweep.toml"))
            .args(["--launcher", "slurm", "--device", "cpu"])
            .arg("--results")
            .arg(self.results())
            .arg("--engine-bin")
            .arg(self.path("engine"))
            .args(args)
            .env("DYNO_ROOT", root)
            .env("FAKE_SLURM", self.dir.path())
            .env("PATH", path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    fn state(&self) -> String {
        std::fs::read_to_string(self.path("state")).unwrap_or_default()
    }

    fn set_state(&self, job: &str, state: &str, reason: &str) {
        let text: Vec<String> = self
            .state()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                if f[0] == job {
                    format!("{}|{}|{state}|{reason}", f[0], f[1])
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(self.path("state"), text.join("\n") + "\n").unwrap();
    }

    /// job id → point id, from the submission records.
    fn jobs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.jobs_dir()).unwrap() {
            let dir = entry.unwrap().path();
            let point = dir.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(dir.join("submission.json")).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            out.push((v["job_id"].as_str().unwrap().to_string(), point));
        }
        out.sort();
        out
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn submits_each_point_once_follows_the_jobs_and_resubmits_only_what_is_left() {
    let fake = Fake::new();

    // --dry-run prints the scripts and submits nothing.
    let dry = fake.xtask(&["--dry-run"], &[]);
    assert!(dry.status.success(), "{}", text(&dry));
    let dry_text = text(&dry);
    assert_eq!(dry_text.matches("#!/bin/bash").count(), 3, "{dry_text}");
    assert!(dry_text.contains("#SBATCH --partition=ci"), "{dry_text}");
    assert!(dry_text.contains("#SBATCH --time=5"), "{dry_text}");
    assert!(
        dry_text.contains("#SBATCH --job-name=dyno.fake-slurm."),
        "{dry_text}"
    );
    assert!(
        !dry_text.contains("--gres"),
        "a CPU sweep asks for no GPU: {dry_text}"
    );
    assert!(fake.state().is_empty());

    let first = fake.xtask(&[], &[]);
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(fake.state().lines().count(), 3, "{}", text(&first));
    let jobs = fake.jobs();
    assert_eq!(jobs.len(), 3);
    for (_, point) in &jobs {
        let dir = fake.jobs_dir().join(point);
        let script = std::fs::read_to_string(dir.join("job.sh")).unwrap();
        assert!(script.contains(&format!("--point {point}")), "{script}");
        assert!(script.contains(&format!("#SBATCH --output={}/slurm-%j.out", dir.display())));
    }

    // A re-run while they are queued submits nothing.
    let again = fake.xtask(&[], &[]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(fake.state().lines().count(), 3, "{}", text(&again));
    assert_eq!(text(&again).matches("already queued as job").count(), 3);

    // One job hits its time limit, one runs, one is cancelled.
    let (timed_out, running, cancelled) = (&jobs[0], &jobs[1], &jobs[2]);
    fake.set_state(&timed_out.0, "TIMEOUT", "TimeLimit");
    fake.set_state(&running.0, "RUNNING", "None");
    fake.set_state(&cancelled.0, "CANCELLED", "None");
    let status = fake.xtask(&["--status"], &[]);
    assert!(status.status.success(), "{}", text(&status));
    let s = text(&status);
    assert!(s.contains("timeout"), "{s}");
    assert!(
        s.contains(&format!("SLURM ended job {} with TIMEOUT", timed_out.0)),
        "{s}"
    );
    assert!(s.contains("running"), "{s}");
    assert!(s.contains("pending"), "{s}");
    // The timeout is in the ledger now, as the point's failure.
    let ledger = fake
        .results()
        .join(format!("sweeps/fake-slurm/cpu/{}.json", timed_out.1));
    let entry = std::fs::read_to_string(&ledger).unwrap();
    assert!(entry.contains("\"timeout\""), "{entry}");

    // A re-run submits only the cancelled point: the timeout is excluded
    // (a failure is a result), the running one is running.
    let third = fake.xtask(&[], &[]);
    assert!(third.status.success(), "{}", text(&third));
    let t = text(&third);
    assert!(
        t.contains(&format!("submitted point {}", cancelled.1)),
        "{t}"
    );
    assert_eq!(t.matches("submitted point").count(), 1, "{t}");
    assert!(
        t.contains(&format!("skipped point {}: already running", running.1)),
        "{t}"
    );

    // --retry timeout submits the timed-out point again.
    let retry = fake.xtask(&["--retry", "timeout"], &[]);
    let r = text(&retry);
    assert!(
        r.contains(&format!("submitted point {}", timed_out.1)),
        "{r}"
    );

    // --cancel cancels what is queued or running, nothing else.
    let cancel = fake.xtask(&["--cancel"], &[]);
    assert!(cancel.status.success(), "{}", text(&cancel));
    let cancelled_ids = std::fs::read_to_string(fake.path("cancelled")).unwrap();
    assert_eq!(cancelled_ids.lines().count(), 3, "{cancelled_ids}");
    assert!(!cancelled_ids.contains(&timed_out.0));
}

#[test]
fn report_only_and_point_are_not_submissions() {
    let fake = Fake::new();
    let report = fake.xtask(&["--report-only"], &[]);
    assert!(report.status.success(), "{}", text(&report));
    assert!(text(&report).contains("reports in"), "{}", text(&report));
    assert!(fake.state().is_empty(), "--report-only submitted jobs");
    let point = fake.xtask(&["--point", "abc"], &[]);
    assert_eq!(point.status.code(), Some(2));
    assert!(
        text(&point).contains("--point runs one point here"),
        "{}",
        text(&point)
    );
    assert!(fake.state().is_empty());
}

#[test]
fn a_rejected_job_names_its_point_and_the_others_go_ahead() {
    let fake = Fake::new();
    let listing = fake.xtask(&["--dry-run"], &[]);
    let first_point = text(&listing)
        .lines()
        .find_map(|l| l.strip_prefix("# ---- point "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let out = fake.xtask(&[], &[("FAKE_REJECT", &first_point)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "error: point {first_point}: SLURM rejected the job"
        )),
        "{t}"
    );
    assert!(t.contains("Invalid account"), "{t}");
    assert_eq!(fake.state().lines().count(), 2, "{t}");
    // Nothing recorded for the rejected point: the next run submits it.
    let next = fake.xtask(&[], &[]);
    assert!(text(&next).contains(&format!("submitted point {first_point}")));
}

#[test]
fn no_sbatch_on_the_path_submits_nothing_and_says_so() {
    let fake = Fake::new();
    let empty = fake.path("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    let out = cmd
        .arg("sweep")
        .arg(fake.path("sweep.toml"))
        .args(["--launcher", "slurm", "--device", "cpu"])
        .arg("--results")
        .arg(fake.results())
        .arg("--engine-bin")
        .arg(fake.path("engine"))
        .env("PATH", &empty)
        .env(
            "DYNO_ROOT",
            Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap(),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("no `sbatch` on PATH"), "{t}");
    assert!(t.contains("nothing was submitted"), "{t}");
    assert!(!fake.jobs_dir().exists());
}

#[test]
fn a_slurm_sweep_must_name_its_device_and_slurm_flags_need_the_slurm_launcher() {
    let fake = Fake::new();
    let sweep = fake.path("auto.toml");
    std::fs::write(&sweep, SWEEP.replace("device = \"cpu\"\n", "")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("sweep")
        .arg(&sweep)
        .args(["--launcher", "slurm", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("say --device cuda or --device cpu"),
        "{}",
        text(&out)
    );

    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("sweep")
        .arg(fake.path("sweep.toml"))
        .args(["--partition", "gpu", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("--partition is a SLURM setting"),
        "{}",
        text(&out)
    );

    let bad = fake.path("bad.toml");
    std::fs::write(&bad, SWEEP.replace("time = \"5\"", "time = \"soon\"")).unwrap();
    let out = fake.xtask(&["--dry-run"], &[]);
    assert!(out.status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("sweep")
        .arg(&bad)
        .args(["--launcher", "slurm", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    assert!(t.contains("bad.toml") && t.contains("slurm.time"), "{t}");
}
