//! `cargo xtask compare` and the bench flow's hook: stored runs in, a
//! report and an exit code out (0 clean, 1 regression, 2 usage or
//! infrastructure error).

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::verdict::Policy;
use super::{compare_runs, compare_with_baselines, report, Comparison};
use crate::run_record::RunRecord;
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Markdown,
    Json,
}

/// Compare two stored runs, or one run against the committed baselines.
#[derive(Debug, Clone, clap::Args)]
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
    /// `engine_config` to measure a config change). Never for baselines.
    #[arg(long, value_name = "FIELD", requires = "candidate")]
    pub across: Vec<String>,
}

/// Runs `cargo xtask compare`. Errors are printed here and give exit code
/// 2 (usage or infrastructure), apart from 1 (regression).
pub fn run_cli(args: CompareArgs, repo_root: &Path) -> anyhow::Result<i32> {
    let results = args
        .results
        .clone()
        .unwrap_or_else(|| repo_root.join("results"));
    Ok(match compare(&args, &results, repo_root) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    })
}

fn compare(args: &CompareArgs, results_root: &Path, repo_root: &Path) -> anyhow::Result<i32> {
    let store = Store::open(results_root)
        .with_context(|| format!("opening store {}", results_root.display()))?;
    let policy = Policy::default();
    let (a_id, a_run) = store.resolve_run(&args.run)?;
    let comparison = match &args.candidate {
        None => compare_with_baselines(repo_root, &a_id, &a_run, &policy)?,
        Some(b) => {
            let (b_id, b_run) = store.resolve_run(b)?;
            compare_runs((&a_id, &a_run), (&b_id, &b_run), &args.across, &policy)?
        }
    };
    emit(&comparison, args.format, args.out.as_deref())?;
    if !args.no_step_summary {
        report::append_step_summary(&comparison).context("appending to $GITHUB_STEP_SUMMARY")?;
    }
    Ok(comparison.exit_code())
}

fn emit(c: &Comparison, format: Format, out: Option<&Path>) -> anyhow::Result<()> {
    let text = match format {
        Format::Table => report::terminal(c),
        Format::Markdown => report::markdown(c),
        Format::Json => report::json(c),
    };
    match out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
        }
        None => print_out(&text),
    }
}

/// Prints to stdout; a closed pipe (`| head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

/// For `cargo xtask bench`: checks a just-stored run against the committed
/// baselines, prints the table (and the GitHub job summary when set), and
/// returns the exit code, or None when no workload has a baseline of its
/// class (the printed table says why for each).
///
/// `_store` is unused today: baselines live in the repo, not the store. It
/// is in the signature so that the bench flow's call does not change if
/// baselines ever reference stored runs.
pub fn against_baseline(
    _store: &Store,
    run_id: &str,
    run: &RunRecord,
    repo_root: &Path,
) -> anyhow::Result<Option<i32>> {
    let comparison = compare_with_baselines(repo_root, run_id, run, &Policy::default())
        .context("comparing against committed baselines")?;
    print_out(&report::terminal(&comparison))?;
    report::append_step_summary(&comparison).context("appending to $GITHUB_STEP_SUMMARY")?;
    Ok(comparison.has_verdicts().then(|| comparison.exit_code()))
}
