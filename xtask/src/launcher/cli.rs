//! The launcher's flags, flattened into `cargo xtask sweep`'s.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::slurm_script::SlurmOptions;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LauncherKind {
    /// This machine: one point per GPU at a time over every visible GPU
    /// (`CUDA_VISIBLE_DEVICES` restricts them); one point at a time on a
    /// CPU or a single GPU.
    #[default]
    Local,
    /// A SLURM cluster: one `sbatch` job per point not done and not
    /// excluded; re-run to submit what is left (later tiers, retries).
    Slurm,
}

#[derive(Debug, Clone, Default, Args)]
pub struct LaunchArgs {
    /// Where the points run.
    #[arg(long, value_enum, default_value_t = LauncherKind::Local)]
    pub launcher: LauncherKind,

    /// Show each point's state (pending / queued / running / done / failed
    /// with its class); with `--launcher slurm`, from squeue, sacct and the
    /// job logs as well as the ledger. Runs and submits nothing.
    #[arg(long, conflicts_with_all = ["cancel", "dry_run", "point", "report_only"])]
    pub status: bool,

    /// With `--launcher slurm`: cancel every queued or running job of the
    /// sweep (`scancel`). Nothing stored is touched.
    #[arg(long, conflicts_with_all = ["dry_run", "point", "report_only"])]
    pub cancel: bool,

    /// SLURM partition (overrides the sweep file's `[slurm] partition`).
    #[arg(long, value_name = "NAME")]
    pub partition: Option<String>,

    /// SLURM account.
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,

    /// SLURM quality of service.
    #[arg(long, value_name = "NAME")]
    pub qos: Option<String>,

    /// Time limit per point, in sbatch's syntax (e.g. `30`, `1:00:00`,
    /// `1-0`). A job killed at it is recorded as `timeout`.
    #[arg(long, value_name = "LIMIT")]
    pub time: Option<String>,

    /// GPUs per point (`--gres=gpu:N`; default 1 on cuda, none on cpu).
    #[arg(long, value_name = "N")]
    pub gpus_per_point: Option<u32>,

    /// CPUs per job (`--cpus-per-task`).
    #[arg(long, value_name = "N")]
    pub cpus_per_task: Option<u32>,

    /// Memory per job (`--mem`, e.g. `64G`).
    #[arg(long, value_name = "SIZE")]
    pub mem: Option<String>,

    /// An extra `#SBATCH` option for every job (repeatable), e.g.
    /// `--sbatch=--constraint=h200`.
    #[arg(long = "sbatch", value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch: Vec<String>,

    /// The xtask binary the jobs run (default: this one). It and the engine
    /// binary must be on a path every node sees.
    #[arg(long, value_name = "PATH")]
    pub xtask_bin: Option<PathBuf>,
}

impl LaunchArgs {
    pub fn is_slurm(&self) -> bool {
        self.launcher == LauncherKind::Slurm
    }

    /// Whether the sweep needs no engine on this host: status, cancel and
    /// SLURM submissions only look things up (the jobs run the engine).
    pub fn looks_up_only(&self) -> bool {
        self.status || self.cancel || self.is_slurm()
    }

    /// The SLURM settings given as flags.
    pub fn slurm_flags(&self) -> SlurmOptions {
        SlurmOptions {
            partition: self.partition.clone(),
            account: self.account.clone(),
            qos: self.qos.clone(),
            time: self.time.clone(),
            gpus_per_point: self.gpus_per_point,
            cpus_per_task: self.cpus_per_task,
            mem: self.mem.clone(),
            sbatch: self.sbatch.clone(),
            setup: Vec::new(),
        }
    }
}
