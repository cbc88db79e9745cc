//! The SLURM side of a sweep file and of the flags (`[slurm]`: partition,
//! account, qos, time limit, GPUs, extra `#SBATCH` lines, setup lines), and
//! the batch script of one point.
//!
//! ```toml
//! [slurm]
//! partition = "gpu"
//! account = "inference"
//! qos = "high"                   # seed 004's fixed_args.qos
//! time = "1:00:00"               # per point; seed 004's fixed_args.time
//! gpus_per_point = 1             # --gres=gpu:N (default: 1 on cuda, none on cpu)
//! cpus_per_task = 8
//! mem = "64G"
//! sbatch = ["--constraint=h100", "--exclusive"]   # extra #SBATCH lines
//! setup = ["module load cuda/13.0"]               # shell lines before the point runs
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// SLURM settings for the jobs of one sweep.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmOptions {
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub qos: Option<String>,
    /// Time limit per point, in SLURM's syntax (`MM`, `MM:SS`, `HH:MM:SS`,
    /// `D-HH`, `D-HH:MM`, `D-HH:MM:SS`).
    #[serde(default)]
    pub time: Option<String>,
    /// `--gres=gpu:N` per point; `None` = 1 for cuda sweeps, none for cpu.
    #[serde(default)]
    pub gpus_per_point: Option<u32>,
    #[serde(default)]
    pub cpus_per_task: Option<u32>,
    #[serde(default)]
    pub mem: Option<String>,
    /// Extra `#SBATCH` options, with or without the `#SBATCH` prefix.
    #[serde(default)]
    pub sbatch: Vec<String>,
    /// Shell lines run on the node before the point (module loads, ...).
    #[serde(default)]
    pub setup: Vec<String>,
}

impl SlurmOptions {
    /// Reads the sweep file's `[slurm]` table; `file` names it in errors.
    pub fn from_table(table: &toml::Table, file: &Path) -> anyhow::Result<SlurmOptions> {
        let options: SlurmOptions = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e| anyhow::anyhow!("{}: [slurm]: {e}", file.display()))?;
        options
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: [slurm].{e}", file.display()))?;
        Ok(options)
    }

    /// `self` with every field `flags` sets replaced; extra lines add up.
    pub fn overlaid(mut self, flags: &SlurmOptions) -> SlurmOptions {
        macro_rules! take {
            ($($f:ident),*) => {$(if flags.$f.is_some() { self.$f = flags.$f.clone(); })*};
        }
        take!(
            partition,
            account,
            qos,
            time,
            gpus_per_point,
            cpus_per_task,
            mem
        );
        self.sbatch.extend(flags.sbatch.iter().cloned());
        self.setup.extend(flags.setup.iter().cloned());
        self
    }

    /// Checks values that would otherwise reach sbatch garbled. The error
    /// starts with the field's name.
    pub fn validate(&self) -> Result<(), String> {
        let single = [
            ("partition", &self.partition),
            ("account", &self.account),
            ("qos", &self.qos),
            ("mem", &self.mem),
        ];
        for (field, value) in single {
            if let Some(v) = value {
                if v.trim().is_empty() || v.chars().any(|c| c.is_whitespace() || c == '\'') {
                    return Err(format!(
                        "{field}: '{v}' is not a SLURM name (no spaces or quotes)"
                    ));
                }
            }
        }
        if let Some(t) = &self.time {
            parse_time_limit(t).map_err(|e| format!("time: {e}"))?;
        }
        if self.cpus_per_task == Some(0) {
            return Err("cpus_per_task: must be at least 1".into());
        }
        for line in &self.sbatch {
            sbatch_line(line).map_err(|e| format!("sbatch: {e}"))?;
        }
        if let Some(line) = self.setup.iter().find(|l| l.contains('\n')) {
            return Err(format!(
                "setup: '{line}' spans several lines; give one line each"
            ));
        }
        Ok(())
    }
}

/// A SLURM time limit in seconds. Accepted: `M`, `M:S`, `H:M:S`, `D-H`,
/// `D-H:M`, `D-H:M:S` (sbatch's own forms).
pub fn parse_time_limit(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "'{text}' is not a SLURM time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)"
        )
    };
    let number = |s: &str| -> Result<u64, String> {
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u64>().map_err(|_| bad())
    };
    let text = text.trim();
    let (days, rest) = match text.split_once('-') {
        Some((d, rest)) => (Some(number(d)?), rest),
        None => (None, text),
    };
    let parts: Vec<u64> = rest.split(':').map(number).collect::<Result<_, _>>()?;
    let seconds = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) => d * 86400 + h * 3600,
        (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86400 + h * 3600 + m * 60 + s,
        _ => return Err(bad()),
    };
    if seconds == 0 {
        return Err(format!("'{text}' is a zero time limit"));
    }
    Ok(seconds)
}

/// One extra option as an `#SBATCH` line: `--x=y` or `#SBATCH --x=y`.
fn sbatch_line(line: &str) -> Result<String, String> {
    let option = line.trim().trim_start_matches("#SBATCH").trim();
    if !option.starts_with('-') || option.contains('\n') {
        return Err(format!(
            "'{line}' is not an sbatch option (write it as '--name=value')"
        ));
    }
    Ok(format!("#SBATCH {option}"))
}

/// What one job runs: the xtask binary itself re-running one point (no
/// cargo on compute nodes), with the flags that decide what it measures.
#[derive(Debug, Clone, PartialEq)]
pub struct PointCommand {
    /// The xtask binary (`std::env::current_exe()` on the submit host; it
    /// must be on a path the nodes see).
    pub xtask: PathBuf,
    /// The workspace root on the nodes (`DYNO_ROOT`): workloads, `.models`.
    pub root: PathBuf,
    /// The sweep file, absolute.
    pub sweep_file: PathBuf,
    /// Arguments after `sweep FILE --point ID` (`--results`, `--engine-bin`,
    /// `--device`, `--trials`, ...).
    pub args: Vec<String>,
}

/// The job name: `dyno.<sweep>.<point id>`, which is how `squeue` finds a
/// sweep's jobs even without the submission record.
pub fn job_name(sweep: &str, point_id: &str) -> String {
    format!("{}{point_id}", job_name_prefix(sweep))
}

pub fn job_name_prefix(sweep: &str) -> String {
    format!("dyno.{sweep}.")
}

/// The batch script of one point.
pub struct JobScript<'a> {
    pub sweep: &'a str,
    pub point_id: &'a str,
    pub label: &'a str,
    /// GPUs for `--gres=gpu:N`; 0 asks for none.
    pub gpus: u32,
    pub options: &'a SlurmOptions,
    pub command: &'a PointCommand,
    pub store_root: &'a Path,
    /// The point's folder for `job.sh` and the job logs.
    pub job_dir: &'a Path,
}

impl JobScript<'_> {
    pub fn render(&self) -> String {
        let dir = self.job_dir;
        let o = self.options;
        let mut s = String::from("#!/bin/bash\n");
        let mut directive = |line: String| {
            s.push_str("#SBATCH ");
            s.push_str(&line);
            s.push('\n');
        };
        directive(format!(
            "--job-name={}",
            job_name(self.sweep, self.point_id)
        ));
        // One log per job, next to the point; stderr goes to the same file.
        directive(format!(
            "--output={}",
            sbatch_path(&dir.join("slurm-%j.out"))
        ));
        directive("--nodes=1".into());
        directive("--ntasks=1".into());
        let fields: BTreeMap<&str, &Option<String>> = [
            ("partition", &o.partition),
            ("account", &o.account),
            ("qos", &o.qos),
            ("time", &o.time),
            ("mem", &o.mem),
        ]
        .into_iter()
        .collect();
        for (name, value) in fields {
            if let Some(v) = value {
                directive(format!("--{name}={v}"));
            }
        }
        if let Some(n) = o.cpus_per_task {
            directive(format!("--cpus-per-task={n}"));
        }
        if self.gpus > 0 {
            directive(format!("--gres=gpu:{}", self.gpus));
        }
        for line in &o.sbatch {
            // Validated when the options were read.
            if let Ok(line) = sbatch_line(line) {
                s.push_str(&line);
                s.push('\n');
            }
        }
        let q = |p: &Path| shell_quote(&p.to_string_lossy());
        let point = self.point_id;
        s.push_str(&format!(
            "# dyno sweep '{}', point {point}: {}\n\
             # Written by `cargo xtask sweep --launcher slurm`; a re-run of the\n\
             # launcher submits this point again only if it is neither done nor queued.\n\
             set -uo pipefail\n\
             echo \"dyno: job ${{SLURM_JOB_ID:-?}} on $(hostname): sweep {} point {point}\"\n",
            self.sweep.replace('\n', " "),
            self.label.replace('\n', " "),
            shell_quote(self.sweep),
        ));
        for line in &o.setup {
            s.push_str(line);
            s.push('\n');
        }
        let c = self.command;
        s.push_str(&format!(
            "store={store}\n\
             xtask={xtask}\n\
             if [ ! -x \"$xtask\" ]; then\n\
             \x20   echo \"dyno: error: point {point}: the xtask binary $xtask is not on node $(hostname)\" >&2\n\
             \x20   exit 3\n\
             fi\n\
             probe=\"$store/tmp/.probe-${{SLURM_JOB_ID:-0}}-$$\"\n\
             if ! {{ mkdir -p \"$store/tmp\" && : >\"$probe\"; }} 2>/dev/null; then\n\
             \x20   echo \"dyno: error: point {point}: the store $store is not writable from node $(hostname)\" >&2\n\
             \x20   exit 3\n\
             fi\n\
             rm -f \"$probe\"\n\
             export DYNO_ROOT={root}\n\
             cd \"$DYNO_ROOT\" || {{ echo \"dyno: error: point {point}: no $DYNO_ROOT on node $(hostname)\" >&2; exit 3; }}\n\
             exec \"$xtask\" sweep {file} --point {point}",
            store = q(self.store_root),
            xtask = q(&c.xtask),
            root = q(&c.root),
            file = q(&c.sweep_file),
        ));
        for arg in &c.args {
            s.push(' ');
            s.push_str(&shell_quote(arg));
        }
        s.push('\n');
        s
    }
}

/// A path for an `#SBATCH` line: sbatch reads these lines itself (no
/// shell), so a path with spaces cannot be quoted there.
fn sbatch_path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// `text` as one shell word: bare when it is plainly safe, else in single
/// quotes with embedded quotes escaped.
pub fn shell_quote(text: &str) -> String {
    let safe = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if safe {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> PointCommand {
        PointCommand {
            xtask: "/shared/bin/xtask".into(),
            root: "/shared/dyno".into(),
            sweep_file: "/shared/dyno/workloads/sweeps/s.toml".into(),
            args: vec![
                "--results".into(),
                "/shared/results".into(),
                "--engine-bin".into(),
                "/shared/bin/engine".into(),
            ],
        }
    }

    #[test]
    fn time_limits_in_every_sbatch_form() {
        assert_eq!(parse_time_limit("5"), Ok(300));
        assert_eq!(parse_time_limit("5:30"), Ok(330));
        assert_eq!(parse_time_limit("1:00:00"), Ok(3600));
        assert_eq!(parse_time_limit("2-0"), Ok(172800));
        assert_eq!(parse_time_limit("1-2:03"), Ok(86400 + 7200 + 180));
        assert_eq!(parse_time_limit("1-0:0:1"), Ok(86401));
        for bad in ["", "x", "1:2:3:4", "-1", "1-", "0", "1h", "1-2:3:4:5"] {
            assert!(parse_time_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_validate_with_the_field_named() {
        let bad_time = SlurmOptions {
            time: Some("an hour".into()),
            ..Default::default()
        };
        assert!(bad_time.validate().unwrap_err().starts_with("time:"));
        let bad_partition = SlurmOptions {
            partition: Some("gpu nodes".into()),
            ..Default::default()
        };
        assert!(bad_partition
            .validate()
            .unwrap_err()
            .starts_with("partition:"));
        let bad_line = SlurmOptions {
            sbatch: vec!["exclusive".into()],
            ..Default::default()
        };
        assert!(bad_line.validate().unwrap_err().starts_with("sbatch:"));
    }

    #[test]
    fn the_sweep_files_table_is_read_and_flags_win() {
        let table: toml::Table = toml::from_str(
            "partition = \"gpu\"\nqos = \"high\"\ntime = \"1:00:00\"\nsbatch = [\"--exclusive\"]\n",
        )
        .unwrap();
        let file = SlurmOptions::from_table(&table, Path::new("s.toml")).unwrap();
        let flags = SlurmOptions {
            qos: Some("low".into()),
            sbatch: vec!["#SBATCH --constraint=h200".into()],
            ..Default::default()
        };
        let merged = file.overlaid(&flags);
        assert_eq!(merged.partition.as_deref(), Some("gpu"));
        assert_eq!(merged.qos.as_deref(), Some("low"));
        assert_eq!(merged.sbatch.len(), 2);

        let unknown: toml::Table = toml::from_str("partiton = \"gpu\"\n").unwrap();
        let err = SlurmOptions::from_table(&unknown, Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("s.toml") && err.contains("partiton"), "{err}");
        let bad: toml::Table = toml::from_str("time = \"soon\"\n").unwrap();
        let err = SlurmOptions::from_table(&bad, Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[slurm].time"), "{err}");
    }

    #[test]
    fn the_script_names_the_job_logs_next_to_the_point_and_runs_the_point() {
        let options = SlurmOptions {
            partition: Some("gpu".into()),
            account: Some("acct".into()),
            qos: Some("high".into()),
            time: Some("0:30:00".into()),
            sbatch: vec!["--exclusive".into()],
            setup: vec!["module load cuda".into()],
            ..Default::default()
        };
        let cmd = command();
        let script = JobScript {
            sweep: "tier0",
            point_id: "0123456789abcdef",
            label: "max_num_seqs-256",
            gpus: 1,
            options: &options,
            command: &cmd,
            store_root: Path::new("/shared/results"),
            job_dir: Path::new("/shared/results/sweeps/tier0/cuda/jobs/0123456789abcdef"),
        }
        .render();
        for line in [
            "#!/bin/bash\n",
            "#SBATCH --job-name=dyno.tier0.0123456789abcdef\n",
            "#SBATCH --output=/shared/results/sweeps/tier0/cuda/jobs/0123456789abcdef/slurm-%j.out\n",
            "#SBATCH --partition=gpu\n",
            "#SBATCH --account=acct\n",
            "#SBATCH --qos=high\n",
            "#SBATCH --time=0:30:00\n",
            "#SBATCH --gres=gpu:1\n",
            "#SBATCH --exclusive\n",
            "module load cuda\n",
            "exec \"$xtask\" sweep /shared/dyno/workloads/sweeps/s.toml --point 0123456789abcdef --results /shared/results --engine-bin /shared/bin/engine\n",
        ] {
            assert!(script.contains(line), "missing {line:?} in\n{script}");
        }
        // Every #SBATCH line comes before the first command (sbatch stops
        // reading directives there).
        let first_command = script
            .lines()
            .position(|l| !l.starts_with('#') && !l.is_empty())
            .unwrap();
        assert!(script
            .lines()
            .skip(first_command)
            .all(|l| !l.starts_with("#SBATCH")));
        // No cargo on compute nodes: no command line runs it.
        assert!(!script
            .lines()
            .any(|l| !l.starts_with('#') && l.contains("cargo")));
    }

    #[test]
    fn cpu_points_ask_for_no_gpu() {
        let options = SlurmOptions::default();
        let cmd = command();
        let script = JobScript {
            sweep: "s",
            point_id: "p",
            label: "",
            gpus: 0,
            options: &options,
            command: &cmd,
            store_root: Path::new("/r"),
            job_dir: Path::new("/r/sweeps/s/cpu/jobs/p"),
        }
        .render();
        assert!(!script.contains("--gres"));
        assert!(!script.contains("--partition"));
    }

    /// Runs a rendered script with bash (as the node would, minus SLURM):
    /// a store the node cannot write, a missing binary, and the happy path.
    #[test]
    fn the_script_checks_the_node_before_running_the_point() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let xtask = dir.path().join("xtask");
        std::fs::write(&xtask, "#!/bin/sh\necho \"ran $*\"\n").unwrap();
        std::fs::set_permissions(&xtask, std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store).unwrap();
        let run = |command: &PointCommand, store: &Path| {
            let options = SlurmOptions::default();
            let script = JobScript {
                sweep: "s",
                point_id: "p1",
                label: "l",
                gpus: 0,
                options: &options,
                command,
                store_root: store,
                job_dir: &store.join("jobs"),
            }
            .render();
            let path = dir.path().join("job.sh");
            std::fs::write(&path, script).unwrap();
            std::process::Command::new("bash")
                .arg(&path)
                .env("SLURM_JOB_ID", "7")
                .output()
                .unwrap()
        };
        let mut command = PointCommand {
            xtask: xtask.clone(),
            root: dir.path().to_path_buf(),
            sweep_file: dir.path().join("s.toml"),
            args: vec!["--results".into(), store.display().to_string()],
        };
        let ok = run(&command, &store);
        assert!(ok.status.success());
        let stdout = String::from_utf8_lossy(&ok.stdout);
        assert!(stdout.contains("ran sweep"), "{stdout}");
        assert!(stdout.contains("--point p1"), "{stdout}");

        // A store whose tmp/ cannot be created (a file is in the way; the
        // tests may run as root, for whom permissions block nothing).
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(&blocked).unwrap();
        std::fs::write(blocked.join("tmp"), "").unwrap();
        let out = run(&command, &blocked);
        assert_eq!(out.status.code(), Some(3));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("dyno: error: point p1: the store") && stderr.contains("not writable"),
            "{stderr}"
        );

        command.xtask = dir.path().join("no-such-xtask");
        let out = run(&command, &store);
        assert_eq!(out.status.code(), Some(3));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("point p1: the xtask binary"), "{stderr}");
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/a/b-c_d.e"), "/a/b-c_d.e");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }
}
