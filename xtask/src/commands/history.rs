//! `cargo xtask history`: the store in, a report (and SVG plots) out. It only
//! reads the store: nothing stored is ever changed, whatever the input.

use std::path::Path;

use anyhow::{bail, Context};

use crate::cli::{Format, HistoryArgs, Order};
use crate::compare::report::{print_out, HEADLINE};
use crate::history::edivisive::DetectConfig;
use crate::history::series::{catalogue, order_by_commit_time, Catalogue};
use crate::history::{analyze, plot, report, History, SeriesInput};
use crate::run_record::metric_catalog;
use crate::store::Store;
use crate::warnings::{self, Warning};

/// Runs `cargo xtask history`; every error (bad input, unreadable store) is
/// exit code 2 through `main`.
pub fn run_cli(args: HistoryArgs, repo_root: &Path) -> anyhow::Result<i32> {
    let results = args
        .results
        .clone()
        .unwrap_or_else(|| repo_root.join("results"));
    let (history, left_out) = build(&args, &results, repo_root)?;
    for warning in &left_out {
        warnings::emit(warning);
    }
    if let Some(dir) = &args.svg {
        let written = plot::write_all(&history, dir)?;
        eprintln!("wrote {} SVG plot(s) to {}", written.len(), dir.display());
    }
    let format = if args.json { Format::Json } else { args.format };
    let text = match format {
        Format::Table => report::terminal(&history),
        Format::Markdown => report::markdown(&history),
        Format::Json => report::json(&history)?,
    };
    match &args.out {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print_out(&text)?,
    }
    if !args.no_step_summary {
        report::append_step_summary(&history).context("appending to $GITHUB_STEP_SUMMARY")?;
    }
    Ok(0)
}

/// The history the arguments ask for, from the store at `results` (and,
/// for `--order commit`, the git repository at `repo_root`).
/// Also returns what was left out, as warnings (the history's notes too).
pub fn build(
    args: &HistoryArgs,
    results: &Path,
    repo_root: &Path,
) -> anyhow::Result<(History, Vec<Warning>)> {
    let config = detect_config(args)?;
    let metrics = metrics(args)?;
    // Store::open would create a missing store; history never writes one.
    if !results.join("index.json").is_file() {
        bail!(
            "no runs in {}: run `cargo xtask bench`, or add exports with `cargo xtask store import FILE`",
            results.display()
        );
    }
    let store =
        Store::open(results).with_context(|| format!("opening store {}", results.display()))?;
    let mut catalogue = catalogue(&store)?;
    if catalogue.latest.is_empty() {
        bail!("no runs in {}", results.display());
    }
    let targets = targets(args, &catalogue)?;
    if args.order == Order::Commit {
        order_by_commit_time(&mut catalogue, &targets, repo_root)?;
    }
    let explicit = args.class.is_some() || !args.workloads.is_empty();

    let mut warnings = Vec::new();
    let mut series = Vec::new();
    for hash in &targets {
        let class = &catalogue.classes[hash];
        let workload = &class.class.workload;
        let dirty = class.dirty_runs();
        if dirty > 0 && !args.include_dirty {
            warnings.push(Warning::HistoryDirtyRunsLeftOut {
                workload: workload.clone(),
                class: hash.clone(),
                runs: dirty,
            });
        }
        for metric in &metrics {
            let points = class.points(metric, args.include_dirty);
            if points.len() < 2 {
                if explicit {
                    bail!(
                        "`{workload}` (class {hash}) has {} run(s) with {metric}; a history needs at least 2{}",
                        points.len(),
                        dirty_hint(dirty, args.include_dirty)
                    );
                }
                warnings.push(Warning::HistoryTooShort {
                    workload: workload.clone(),
                    class: hash.clone(),
                    metric: metric.clone(),
                    runs: points.len(),
                });
                continue;
            }
            series.push(analyze(
                SeriesInput {
                    workload: workload.clone(),
                    class_hash: hash.clone(),
                    model: class.model.clone(),
                    metric: metric.clone(),
                    points,
                },
                &config,
            ));
        }
    }
    let notes: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    if series.is_empty() {
        bail!(
            "no history to show: {}",
            if notes.is_empty() {
                "no series".to_string()
            } else {
                notes.join("; ")
            }
        );
    }
    let history = History {
        config,
        order: match args.order {
            Order::Run => "run time (created_at)",
            Order::Commit => "commit time (runs of one commit by run time)",
        }
        .to_string(),
        series,
        notes,
    };
    Ok((history, warnings))
}

fn dirty_hint(dirty: usize, include_dirty: bool) -> String {
    if dirty > 0 && !include_dirty {
        format!(" ({dirty} run(s) from a dirty work tree were left out; --include-dirty uses them)")
    } else {
        String::new()
    }
}

fn detect_config(args: &HistoryArgs) -> anyhow::Result<DetectConfig> {
    if !(args.alpha > 0.0 && args.alpha < 1.0) {
        bail!("--alpha {} must lie strictly between 0 and 1", args.alpha);
    }
    if args.min_segment < 2 {
        bail!(
            "--min-segment {} is too small: each side of a change point needs at least 2 runs",
            args.min_segment
        );
    }
    let smallest_p = 1.0 / (f64::from(args.permutations) + 1.0);
    if smallest_p > args.alpha {
        bail!(
            "--permutations {} can never give a p-value at or below --alpha {} (the smallest is {smallest_p:.4}); use at least {}",
            args.permutations,
            args.alpha,
            (1.0 / args.alpha).ceil() as u64
        );
    }
    Ok(DetectConfig {
        alpha: args.alpha,
        permutations: args.permutations,
        min_segment: args.min_segment,
        ..DetectConfig::default()
    })
}

fn metrics(args: &HistoryArgs) -> anyhow::Result<Vec<String>> {
    if args.metrics.is_empty() {
        return Ok(HEADLINE.iter().map(|m| m.to_string()).collect());
    }
    let known: Vec<&str> = metric_catalog().iter().map(|d| d.name).collect();
    let mut out: Vec<String> = Vec::new();
    for m in &args.metrics {
        if !known.contains(&m.as_str()) {
            bail!("unknown metric '{m}'; known metrics: {}", known.join(", "));
        }
        if !out.contains(m) {
            out.push(m.clone());
        }
    }
    Ok(out)
}

/// The class hashes to show, in a stable order.
fn targets(args: &HistoryArgs, catalogue: &Catalogue) -> anyhow::Result<Vec<String>> {
    let mut hashes: Vec<String> = match &args.class {
        Some(spec) => {
            let matching: Vec<&String> = if spec.is_empty() {
                Vec::new()
            } else {
                catalogue
                    .classes
                    .keys()
                    .filter(|h| h.starts_with(spec.as_str()))
                    .collect()
            };
            match matching.as_slice() {
                [one] => vec![(*one).clone()],
                [] => bail!(
                    "no stored run has class '{spec}'; the store's classes: {}",
                    describe_classes(catalogue)
                ),
                many => bail!(
                    "class '{spec}' is ambiguous: {}",
                    many.iter()
                        .map(|h| h.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        None => catalogue.latest.iter().map(|(_, h)| h.clone()).collect(),
    };
    if !args.workloads.is_empty() {
        let available: Vec<&str> = hashes
            .iter()
            .map(|h| catalogue.classes[h].class.workload.as_str())
            .collect();
        for w in &args.workloads {
            if !available.contains(&w.as_str()) {
                bail!(
                    "workload '{w}' is not in {}; it has: {}",
                    if args.class.is_some() {
                        "the selected class"
                    } else {
                        "the newest bench (use --class for an older class)"
                    },
                    available.join(", ")
                );
            }
        }
        hashes.retain(|h| {
            args.workloads
                .contains(&catalogue.classes[h].class.workload)
        });
    }
    hashes.dedup();
    Ok(hashes)
}

fn describe_classes(catalogue: &Catalogue) -> String {
    catalogue
        .classes
        .values()
        .map(|c| {
            format!(
                "{} ({}, {} runs)",
                c.class_hash,
                c.class.workload,
                c.runs.len()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
