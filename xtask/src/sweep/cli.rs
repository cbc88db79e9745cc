//! `cargo xtask sweep`'s flags.

use std::path::PathBuf;

use clap::Args;

use crate::cli::DeviceArg;

#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    /// The sweep file (TOML; see docs/SWEEPS.md).
    pub file: PathBuf,

    /// Print the points, their count, their state in the ledger and an
    /// estimated time; run nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// With --dry-run: print the points as JSON (one object per point, with
    /// `id`, `experiment`, `tier`, `label`, `state`) instead of a table.
    #[arg(long, requires = "dry_run")]
    pub json: bool,

    /// Run exactly this point (by id, or a unique prefix of one) and record
    /// it; what a SLURM job or a per-GPU worker runs. The same resume rules
    /// apply: a done point is not run again.
    #[arg(long, value_name = "ID", conflicts_with = "experiments")]
    pub point: Option<String>,

    /// Run only these experiments (repeatable); lower tiers must be in the
    /// ledger already for a tier above 0.
    #[arg(long = "experiment", value_name = "NAME")]
    pub experiments: Vec<String>,

    /// Re-run points that failed with these classes (comma-separated: oom,
    /// timeout, crash, invalid-config, server-fail, or `all`). By default a
    /// failed point is a result and is not run again.
    #[arg(
        long,
        value_name = "CLASSES",
        value_delimiter = ',',
        conflicts_with = "skip_failure_reasons"
    )]
    pub retry: Vec<String>,

    /// Seed 004's form: re-run every failed point except these classes
    /// (`none` re-runs all failures).
    #[arg(long, value_name = "CLASSES", value_delimiter = ',')]
    pub skip_failure_reasons: Vec<String>,

    /// Make the reports from the ledger and the store without running
    /// anything (after SLURM jobs or workers ran the points).
    #[arg(long, conflicts_with_all = ["dry_run", "point"])]
    pub report_only: bool,

    /// Where the reports go (default: `<results>/sweeps/<sweep>/<device>/report/`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Trials per point (default: the file's `trials`, else 5 on a GPU and
    /// 3 on a CPU). Part of each point's id.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub trials: Option<u32>,

    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,

    /// Use this engine binary instead of building one.
    #[arg(long, value_name = "PATH")]
    pub engine_bin: Option<PathBuf>,

    /// Build profile of the `--engine-bin` binary, for the fingerprint.
    #[arg(long, value_name = "NAME", requires = "engine_bin")]
    pub engine_profile: Option<String>,

    /// Seconds before a trial's engine process is killed (the point is
    /// recorded as `timeout`).
    #[arg(long, default_value_t = 600.0, value_name = "S")]
    pub timeout_s: f64,

    /// The content-addressed store (default: `results/` in the workspace).
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
}
