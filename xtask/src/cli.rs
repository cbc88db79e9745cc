//! Every flag of `cargo xtask`, declared in one place.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the engine, run workloads as repeated trials, store the run and
    /// print a summary. Exit code: 0 all trials ok and no regression, 1 a
    /// trial failed or timed out or the baseline comparison flagged a
    /// regression, 2 the bench itself could not run.
    Bench(BenchArgs),
    /// Look at, check and move what is in the results store.
    #[command(subcommand)]
    Store(crate::store::cli::StoreCmd),
    /// Judge a run against the committed baselines, or two runs against
    /// each other: regression verdicts per metric and workload.
    Compare(crate::compare::CompareArgs),
    /// Manage the committed baselines (baselines/<class>/).
    #[command(subcommand)]
    Baseline(crate::baseline::BaselineCmd),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// CUDA when `engine info` reports a GPU, else CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Suite of workloads to run (default: `smoke` on a CPU, `pr` on a GPU).
    #[arg(long, conflicts_with = "workloads")]
    pub suite: Option<String>,

    /// Workload to run (repeatable), instead of a suite.
    #[arg(long = "workload", value_name = "NAME")]
    pub workloads: Vec<String>,

    /// Model: a synthetic preset name (synthesized into `.models/` on first
    /// use) or a directory with a Hugging Face checkpoint. Default: the
    /// workloads' preset, else `tiny`.
    #[arg(long, value_name = "PRESET|DIR")]
    pub model: Option<String>,

    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,

    /// Trials per workload, each a fresh engine process (default: 5 on a
    /// GPU, 3 on a CPU).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub trials: Option<u32>,

    /// Use this engine binary instead of building one (for machines
    /// without cargo).
    #[arg(long, value_name = "PATH")]
    pub engine_bin: Option<PathBuf>,

    /// Build profile of the `--engine-bin` binary, for the fingerprint
    /// (default: inferred from a cargo `target/<profile>/` path, else
    /// "unknown").
    #[arg(long, value_name = "NAME", requires = "engine_bin")]
    pub engine_profile: Option<String>,

    /// Seconds before a trial's engine process is killed and the trial
    /// recorded as timed out.
    #[arg(long, default_value_t = 600.0, value_name = "S")]
    pub timeout_s: f64,

    /// The content-addressed store (default: `results/` in the workspace).
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,

    /// Directory of workload specs (default: the workloads crate's catalogue).
    #[arg(long, value_name = "DIR")]
    pub catalogue: Option<PathBuf>,

    /// Write the run record as JSON to this file (a list of run records
    /// when the workloads span several models: one run per model).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Write one vLLM `--save-result`-style JSON per workload into this
    /// directory (`<workload>.json`).
    #[arg(long, value_name = "DIR")]
    pub export_vllm: Option<PathBuf>,

    /// Benchmark the OpenAI-compatible server at this URL
    /// (`http://HOST:PORT`) over HTTP, with client-side timing, instead of
    /// running the engine in process. See docs/SERVING.md.
    #[arg(long, value_name = "URL", conflicts_with = "serve")]
    pub target: Option<String>,

    /// Start the server under test with this shell command, wait for its
    /// `/health`, and stop it (SIGTERM) after the run.
    #[arg(long, value_name = "CMD", requires = "target")]
    pub launch: Option<String>,

    /// Seconds to wait for a started server's `/health` before the run
    /// (`--launch`) or the trial (`--serve`) fails as `server-fail`.
    #[arg(long, default_value_t = 300.0, value_name = "S")]
    pub launch_timeout_s: f64,

    /// Build the engine with `engine serve` and benchmark it over HTTP: a
    /// fresh server per trial, driven like any `--target`.
    #[arg(long)]
    pub serve: bool,

    /// Environment variable that holds the API key for the server (sent as
    /// `Authorization: Bearer`, never stored).
    #[arg(long, default_value = "OPENAI_API_KEY", value_name = "VAR")]
    pub api_key_env: String,

    /// The `model` to send (default: the first one `/v1/models` lists).
    #[arg(long, value_name = "NAME")]
    pub served_model: Option<String>,

    /// HTTP runs: ask for whole answers instead of streams (then TTFT is
    /// the whole answer's time and there is no ITL).
    #[arg(long)]
    pub no_stream: bool,
}

impl BenchArgs {
    /// Whether this run drives a server over HTTP.
    pub fn over_http(&self) -> bool {
        self.target.is_some() || self.serve
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn suite_and_workload_conflict() {
        let err = Cli::try_parse_from(["x", "bench", "--suite", "a", "--workload", "b"]);
        assert!(err.is_err());
    }

    #[test]
    fn launch_needs_a_target_and_serve_excludes_one() {
        assert!(Cli::try_parse_from(["x", "bench", "--launch", "srv"]).is_err());
        assert!(
            Cli::try_parse_from(["x", "bench", "--serve", "--target", "http://h:1"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["x", "bench", "--target", "http://h:1", "--launch", "s"]).is_ok()
        );
    }

    #[test]
    fn zero_trials_is_refused() {
        assert!(Cli::try_parse_from(["x", "bench", "--trials", "0"]).is_err());
    }
}
