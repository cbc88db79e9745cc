//! `cargo xtask compare`: stored runs in, a report and an exit code out
//! (0 clean, 1 regression, 2 usage or infrastructure error).

use std::path::Path;

use anyhow::Context;

use crate::cli::{CompareArgs, Format};
use crate::compare::report::{self, print_out};
use crate::compare::verdict::Policy;
use crate::compare::{compare_runs, compare_with_baselines, varied_by_session, Comparison};
use crate::run_record::{AbSide, RunRecord};
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
        // One side of an interleaved A/B session is judged against the
        // other side, never against baselines of another sitting.
        None if a_run.interleaved.is_some() => {
            let (p_id, p_run) = session_partner(&store, &a_id, &a_run)?;
            let ((b_id, b_run), (c_id, c_run)) = if a_run
                .interleaved
                .as_ref()
                .is_some_and(|i| i.side == AbSide::B)
            {
                ((p_id, p_run), (a_id, a_run))
            } else {
                ((a_id, a_run), (p_id, p_run))
            };
            let mut across = varied_by_session(&b_run, &c_run);
            across.extend(args.across.iter().cloned());
            compare_runs((&b_id, &b_run), (&c_id, &c_run), &across, &policy)?
        }
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
    // Two runs named on purpose that share no class: nothing was judged,
    // and a clean exit would read as "no regression".
    if args.candidate.is_some() && !comparison.has_verdicts() {
        let fields: std::collections::BTreeSet<&str> = comparison
            .workloads
            .iter()
            .flat_map(|w| w.class_differences.iter().map(|d| d.field.as_str()))
            .collect();
        if fields.is_empty() {
            anyhow::bail!("the two runs share no workload: nothing to compare");
        }
        anyhow::bail!(
            "the runs are of different fingerprint classes (they differ in {}): not comparable; `--across FIELD` compares across a field on purpose",
            fields.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(comparison.exit_code())
}

/// The other side of `run`'s interleaved session: both sides share the
/// session id and were stored one after the other with the same
/// `created_at`.
fn session_partner(
    store: &Store,
    id: &str,
    run: &RunRecord,
) -> anyhow::Result<(String, RunRecord)> {
    let Some(mine) = &run.interleaved else {
        anyhow::bail!("run {id} is not part of an interleaved session");
    };
    for entry in store.runs()?.iter().rev() {
        if entry.id == id || entry.created_at != run.created_at {
            continue;
        }
        let (other_id, other) = store.resolve_run(&entry.id)?;
        if other
            .interleaved
            .as_ref()
            .is_some_and(|o| o.session == mine.session && o.side != mine.side)
        {
            return Ok((other_id, other));
        }
    }
    anyhow::bail!(
        "run {id} is side {:?} of interleaved session {}, but the other side is not in this store; compare it with `cargo xtask compare A B`",
        mine.side,
        mine.session
    )
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
