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
    Bench(Box<BenchArgs>),
    /// Look at, check and move what is in the results store.
    Store(StoreArgs),
    /// Judge a run against the committed baselines, or two runs against
    /// each other: regression verdicts per metric and workload.
    Compare(CompareArgs),
    /// Manage the committed baselines (baselines/<class>/).
    #[command(subcommand)]
    Baseline(BaselineCmd),
    /// Each headline metric of a fingerprint class over the stored runs,
    /// its change points and where each shift began; SVG trend plots.
    History(HistoryArgs),
    /// Run a sweep file: many workloads × engine configs, each point a
    /// stored run, resumable; B_sat, SLO capacity, tiers, reports. Exit
    /// code: 0 every point done, 1 a point failed (recorded), 2 the sweep
    /// itself could not run.
    Sweep(Box<SweepArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// CUDA when `engine info` reports a GPU, else CPU.
    Auto,
    Cpu,
    Cuda,
}

/// The engine that runs the trials and the store they go to: flags of
/// `bench` and `sweep` alike.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,

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
}

/// How an OpenAI-compatible server is driven over HTTP (`--target`, and
/// `bench --serve`): flags of `bench` and `sweep` alike.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Seconds to wait for a started server's `/health` before the run
    /// (`--launch`) or the trial (`--serve`) fails as `server-fail`.
    #[arg(
        long,
        default_value_t = 300.0,
        value_name = "S",
        help_heading = "Serving over HTTP"
    )]
    pub launch_timeout_s: f64,

    /// Environment variable that holds the API key for the server (sent as
    /// `Authorization: Bearer`, never stored).
    #[arg(
        long,
        default_value = "OPENAI_API_KEY",
        value_name = "VAR",
        help_heading = "Serving over HTTP"
    )]
    pub api_key_env: String,

    /// The `model` to send (default: the first one `/v1/models` lists).
    #[arg(long, value_name = "NAME", help_heading = "Serving over HTTP")]
    pub served_model: Option<String>,

    /// HTTP runs: ask for whole answers instead of streams (then TTFT is
    /// the whole answer's time and there is no ITL).
    #[arg(long, help_heading = "Serving over HTTP")]
    pub no_stream: bool,
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
    /// use), a directory with a Hugging Face checkpoint, or a GGUF file
    /// (its vocabulary read by `engine inspect`). Default: the workloads'
    /// preset, else `tiny`.
    #[arg(long, value_name = "PRESET|DIR|FILE.gguf")]
    pub model: Option<String>,

    #[command(flatten)]
    pub engine: EngineArgs,

    /// Trials per workload, each a fresh engine process (default: 5 on a
    /// GPU, 3 on a CPU).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub trials: Option<u32>,

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

    /// Interleaved A/B: build REV (a git worktree under target/ab/) as side
    /// A and run its trials alternately with this tree's (side B) on this
    /// machine; the verdict pairs them by block. What pull requests use.
    #[arg(
        long,
        value_name = "REV",
        help_heading = "Interleaved A/B",
        conflicts_with = "a_engine_bin"
    )]
    pub against: Option<String>,
    /// Interleaved A/B with this prebuilt engine as side A (side B is the
    /// bench's engine: built, or `--engine-bin`).
    #[arg(long, value_name = "PATH", help_heading = "Interleaved A/B")]
    pub a_engine_bin: Option<PathBuf>,
    /// Build profile of the `--a-engine-bin` binary, for its fingerprint
    /// (default: `--engine-profile` where given, else inferred from a cargo
    /// `target/<profile>/` path, else "unknown"; sides of different
    /// profiles get no verdict).
    #[arg(
        long,
        value_name = "NAME",
        requires = "a_engine_bin",
        help_heading = "Interleaved A/B"
    )]
    pub a_engine_profile: Option<String>,
    /// Interleaved A/B of the same engine on both sides (an A/A check, or
    /// with --a-env/--b-env/--a-set/--b-set to measure a setting).
    #[arg(long, help_heading = "Interleaved A/B")]
    pub ab: bool,
    /// KEY=VALUE in side A's engine environment (repeatable).
    #[arg(long, value_name = "KEY=VALUE", help_heading = "Interleaved A/B")]
    pub a_env: Vec<String>,
    /// KEY=VALUE in side B's engine environment (repeatable), e.g.
    /// DYNO_CUDA_PDL=0.
    #[arg(long, value_name = "KEY=VALUE", help_heading = "Interleaved A/B")]
    pub b_env: Vec<String>,
    /// engine.toml KEY=VALUE for side A only (repeatable).
    #[arg(long, value_name = "KEY=VALUE", help_heading = "Interleaved A/B")]
    pub a_set: Vec<String>,
    /// engine.toml KEY=VALUE for side B only (repeatable), e.g.
    /// max_num_seqs=64.
    #[arg(long, value_name = "KEY=VALUE", help_heading = "Interleaved A/B")]
    pub b_set: Vec<String>,
    /// Name side A in reports (default: the revision or binary).
    #[arg(long, value_name = "TEXT", help_heading = "Interleaved A/B")]
    pub a_label: Option<String>,
    /// Name side B in reports (default: "head").
    #[arg(long, value_name = "TEXT", help_heading = "Interleaved A/B")]
    pub b_label: Option<String>,
    /// Seed of the block orders (default: from the clock; recorded).
    #[arg(long, value_name = "N", help_heading = "Interleaved A/B")]
    pub ab_seed: Option<u64>,
    /// Unrecorded warm-up trials per side before the first block.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        help_heading = "Interleaved A/B"
    )]
    pub ab_warmup: u32,

    /// Benchmark the OpenAI-compatible server at this URL
    /// (`http://HOST:PORT`) over HTTP, with client-side timing, instead of
    /// running the engine in process. See docs/SERVING.md.
    #[arg(
        long,
        value_name = "URL",
        help_heading = "Serving over HTTP",
        conflicts_with_all = ["serve", "against", "a_engine_bin", "ab"]
    )]
    pub target: Option<String>,

    /// Start the server under test with this shell command, wait for its
    /// `/health`, and stop it (SIGTERM) after the run.
    #[arg(
        long,
        value_name = "CMD",
        requires = "target",
        help_heading = "Serving over HTTP"
    )]
    pub launch: Option<String>,

    #[command(flatten)]
    pub http: HttpArgs,

    /// Build the engine with `engine serve` and benchmark it over HTTP: a
    /// fresh server per trial, driven like any `--target`.
    #[arg(
        long,
        help_heading = "Serving over HTTP",
        conflicts_with_all = ["against", "a_engine_bin", "ab"]
    )]
    pub serve: bool,

    /// HTTP runs: send prompts as token ids (exact lengths; vLLM,
    /// llama.cpp, SGLang and `engine serve` take them) or as text built to
    /// the exact token length under `--tokenizer` (needs xtask's `text`
    /// feature).
    #[arg(
        long,
        value_enum,
        default_value_t = PromptFormat::Ids,
        help_heading = "Serving over HTTP"
    )]
    pub prompt_format: PromptFormat,

    /// The tokenizer text prompts are built with: a tokenizer.json, or a
    /// model directory holding one (the server's model's).
    #[arg(long, value_name = "PATH", help_heading = "Serving over HTTP")]
    pub tokenizer: Option<PathBuf>,
}

/// How prompts go to an HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PromptFormat {
    /// Token-id lists.
    Ids,
    /// Text of the exact token length under `--tokenizer`.
    Text,
}

impl BenchArgs {
    /// Whether this run drives a server over HTTP.
    pub fn over_http(&self) -> bool {
        self.target.is_some() || self.serve
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Markdown,
    Json,
}

/// Compare two stored runs, or one run against the committed baselines.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// With one run: the run to check against baselines/. With two: the
    /// baseline run (id, unique prefix, or "latest").
    pub run: String,
    /// The candidate run, compared against the first.
    pub candidate: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write the report to this file instead of stdout.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// The content-addressed store (default: `results/` in the workspace).
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
    /// Do not append the Markdown to `$GITHUB_STEP_SUMMARY` (when the job
    /// summary already has it, e.g. from `cargo xtask bench`).
    #[arg(long)]
    pub no_step_summary: bool,
    /// Compare two runs although this class field differs (repeatable; e.g.
    /// `engine_config` to measure a config change, `engine_env` an engine
    /// environment switch). Never for baselines.
    #[arg(long, value_name = "FIELD", requires = "candidate")]
    pub across: Vec<String>,
}

/// How the runs of a history are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Order {
    /// By when each run was made (`created_at`).
    Run,
    /// By the committer time of each run's commit, from this git repository
    /// (runs of one commit by run time).
    Commit,
}

/// Each headline metric of a fingerprint class over the stored runs, its
/// change points (e-divisive means), and SVG trend plots.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Fingerprint class hash or a unique prefix of one (as `baseline ls`
    /// and `compare` show it). Default: every class of the newest run and
    /// of the other runs of its commit (one run per model of a suite).
    #[arg(long, value_name = "HASH")]
    pub class: Option<String>,
    /// Only this workload (repeatable).
    #[arg(long = "workload", value_name = "NAME")]
    pub workloads: Vec<String>,
    /// Metric to follow (repeatable; names as in `store show`). Default:
    /// output_throughput, p50_ttft_ms, p50_tpot_ms, p99_e2el_ms.
    #[arg(long = "metric", value_name = "NAME")]
    pub metrics: Vec<String>,
    /// Order of the runs: when they were made, or when their commits were.
    #[arg(long, value_enum, default_value_t = Order::Run)]
    pub order: Order,
    /// Write one SVG trend plot per workload and metric into this directory.
    #[arg(long, value_name = "DIR")]
    pub svg: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Same as `--format json`.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Write the report to this file instead of stdout.
    #[arg(long, short, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// The content-addressed store (default: `results/` in the workspace).
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
    /// Also use runs made from a work tree with uncommitted changes (they
    /// have no commit to name).
    #[arg(long)]
    pub include_dirty: bool,
    /// Significance level of a change point (its permutation p-value).
    #[arg(long, default_value_t = crate::history::edivisive::DetectConfig::default().alpha, value_name = "P")]
    pub alpha: f64,
    /// Permutations per significance test.
    #[arg(long, default_value_t = crate::history::edivisive::DetectConfig::default().permutations, value_name = "N")]
    pub permutations: u32,
    /// Fewest runs on each side of a change point (at least 2).
    #[arg(long, default_value_t = crate::history::edivisive::DetectConfig::default().min_segment, value_name = "N")]
    pub min_segment: usize,
    /// Do not append the Markdown report to `$GITHUB_STEP_SUMMARY` (when
    /// the variable is set, e.g. in a GitHub Actions job).
    #[arg(long)]
    pub no_step_summary: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BaselineCmd {
    /// Make a stored run the committed baseline of each of its workloads'
    /// classes (overwrites baselines/<class>/); review and commit the diff.
    Promote {
        /// Run id, unique id prefix, or "latest".
        #[arg(default_value = "latest")]
        run: String,
        /// The content-addressed store (default: `results/` in the workspace).
        #[arg(long, value_name = "DIR")]
        results: Option<PathBuf>,
        /// Runs each baseline keeps in its history, this one included (the
        /// run-to-run spread needs at least 3).
        #[arg(long, default_value_t = crate::baseline::file::DEFAULT_HISTORY_RUNS,
              value_parser = parse_keep)]
        keep: usize,
    },
    /// List the committed baselines.
    Ls,
}

/// `cargo xtask store [--results DIR] COMMAND`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The content-addressed store (default: `results/` in the workspace),
    /// as given to `cargo xtask bench --results`.
    #[arg(long, value_name = "DIR", global = true)]
    pub results: Option<PathBuf>,
    #[command(subcommand)]
    pub command: StoreCmd,
}

#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// List the runs in the store.
    Ls,
    /// Show one run: its fingerprint and every trial's key metrics.
    Show {
        /// Run id, unique id prefix, or "latest".
        run: String,
        /// Print the stored run object as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every object and check the index; exits 1 on any problem.
    Verify,
    /// Check everything `verify` does, plus run objects missing from the
    /// index; with `--repair`, move corrupt objects to `quarantine/` and
    /// rebuild the index. Exits 1 while a problem remains.
    Fsck {
        #[arg(long)]
        repair: bool,
    },
    /// Rebuild `index.json` from the objects, verifying each: lists every
    /// intact run (e.g. one whose bench could not write the index) and
    /// drops entries whose run object is missing or corrupt.
    Reindex,
    /// Remove a run from the index and delete its run object (its records
    /// are left for `gc`). Works on runs that no longer read.
    Rm {
        /// Run id, unique id prefix, or "latest".
        run: String,
    },
    /// Remove objects that no indexed run references.
    Gc {
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Keep unreferenced objects younger than this many seconds: they
        /// may belong to a bench run still in progress. Default: one day.
        #[arg(long, value_name = "SECS")]
        grace_secs: Option<u64>,
    },
    /// Write one run and every object it references to a single file.
    Export {
        /// Run id, unique id prefix, or "latest".
        run: String,
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Add a run from a file written by `export`, after checking every object.
    Import { file: PathBuf },
}

/// `--keep`: a history of at least one run.
fn parse_keep(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{text}`: a whole number of runs, at least 1")),
    }
}

/// `cargo xtask sweep`'s flags.
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

    #[command(flatten)]
    pub engine: EngineArgs,

    /// Where the points run (`--launcher local|slurm`) and the SLURM
    /// settings; see docs/CLUSTER.md.
    #[command(flatten)]
    pub launch: LaunchArgs,

    /// Run every point against the OpenAI-compatible server at this URL
    /// (`http://HOST:PORT`) over HTTP. Its ledger is its own
    /// (`sweeps/<sweep>/http-HOST_PORT[-<launch hash>]/`).
    #[arg(
        long,
        value_name = "URL",
        help_heading = "Serving over HTTP",
        conflicts_with_all = ["point"]
    )]
    pub target: Option<String>,

    /// Start the server under test with this shell command and wait for its
    /// `/health`. `{knob}` (an engine knob name, e.g. `{max_num_seqs}`) is
    /// replaced by each point's value, and then every point gets a server
    /// of its own; without placeholders one server serves the whole sweep.
    #[arg(
        long = "launch",
        value_name = "CMD",
        requires = "target",
        help_heading = "Serving over HTTP"
    )]
    pub launch_cmd: Option<String>,

    #[command(flatten)]
    pub http: HttpArgs,
}

/// Where a sweep's points run (docs/CLUSTER.md).
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
    pub fn slurm_flags(&self) -> crate::launcher::slurm_script::SlurmOptions {
        crate::launcher::slurm_script::SlurmOptions {
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
        assert!(Cli::try_parse_from(["x", "bench", "--serve", "--target", "http://h:1"]).is_err());
        assert!(
            Cli::try_parse_from(["x", "bench", "--target", "http://h:1", "--launch", "s"]).is_ok()
        );
    }

    /// The shared flags of a parsed `bench` or `sweep` command line.
    fn shared_flags(argv: &[&str]) -> (EngineArgs, HttpArgs) {
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Bench(b) => (b.engine, b.http),
            Command::Sweep(s) => (s.engine, s.http),
            _ => unreachable!("not bench or sweep"),
        }
    }

    #[test]
    fn bench_and_sweep_read_the_shared_flags_alike() {
        let shared = [
            "--device",
            "cuda",
            "--engine-bin",
            "/opt/engine",
            "--engine-profile",
            "release",
            "--timeout-s",
            "42.5",
            "--results",
            "/tmp/r",
            "--target",
            "http://h:1",
            "--launch-timeout-s",
            "7",
            "--api-key-env",
            "KEY",
            "--served-model",
            "m",
            "--no-stream",
        ];
        for head in [&["x", "bench"][..], &["x", "sweep", "s.toml"]] {
            let argv: Vec<&str> = head.iter().chain(&shared).copied().collect();
            let (engine, http) = shared_flags(&argv);
            assert_eq!(engine.device, DeviceArg::Cuda);
            assert_eq!(engine.engine_bin, Some(PathBuf::from("/opt/engine")));
            assert_eq!(engine.engine_profile.as_deref(), Some("release"));
            assert_eq!(engine.timeout_s, 42.5);
            assert_eq!(engine.results, Some(PathBuf::from("/tmp/r")));
            assert_eq!(http.launch_timeout_s, 7.0);
            assert_eq!(http.api_key_env, "KEY");
            assert_eq!(http.served_model.as_deref(), Some("m"));
            assert!(http.no_stream);

            // Defaults, and --engine-profile needs --engine-bin.
            let (engine, http) = shared_flags(head);
            assert_eq!(engine.device, DeviceArg::Auto);
            assert_eq!((engine.timeout_s, http.launch_timeout_s), (600.0, 300.0));
            assert_eq!(http.api_key_env, "OPENAI_API_KEY");
            assert!(!http.no_stream);
            let argv: Vec<&str> = head
                .iter()
                .chain(&["--engine-profile", "r"])
                .copied()
                .collect();
            assert!(Cli::try_parse_from(argv).is_err(), "{head:?}");
        }
    }

    #[test]
    fn zero_trials_is_refused() {
        assert!(Cli::try_parse_from(["x", "bench", "--trials", "0"]).is_err());
    }
}
