//! `cargo xtask compare`: stored runs in, a report and an exit code out
//! (0 clean, 1 regression, 2 usage or infrastructure error).

use std::path::Path;

use anyhow::Context;

use crate::cli::{CompareArgs, Format};
use crate::compare::report::{self, print_out};
use crate::compare::verdict::Policy;
use crate::compare::{compare_runs, compare_with_baselines, Comparison};
use crate::store::Store;

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
