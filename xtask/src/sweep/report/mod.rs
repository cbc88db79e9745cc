//! What a sweep says: `benchmarking_results.csv` (one row per point, seed
//! 004's columns first, then ours), `optimization_summary.csv` (per model
//! and workload: the default config against the best, the speedup and the
//! best knobs), `sweep.json` (everything, for tools), `summary.md` (for a PR
//! or a job summary), SVG plots and one self-contained `report.html`, and a
//! table on the terminal. Every derived number carries its trial spread.

pub mod html;
pub mod plots;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use serde::Serialize;
use serde_json::json;

use super::results::PointResult;
use super::{ExperimentOutcome, ListedPoint, PointStatus, Sweep, SweepOutcome};
use crate::store::Store;

/// The metrics reported per point, each as mean and stdev columns.
pub const REPORTED: &[&str] = &[
    "output_tps_per_gpu",
    "gpu_days_to_process_1b_tokens",
    "gpus_for_1b_tokens_per_hour",
    "output_throughput",
    "total_token_throughput",
    "request_throughput",
    "request_goodput",
    "p50_ttft_ms",
    "p99_ttft_ms",
    "p50_tpot_ms",
    "p99_tpot_ms",
    "p50_e2el_ms",
    "p99_e2el_ms",
    "mean_batch_size",
    "decode_throughput",
    "peak_memory_bytes",
];

/// One row of `benchmarking_results.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct ResultRow {
    pub columns: Vec<(String, String)>,
}

fn knob(p: &PointResult, name: &str) -> String {
    let knobs: toml::Table = serde_json::from_value(p.record.engine.clone()).unwrap_or_default();
    let effective = workloads::engine_knobs::effective(&knobs);
    match effective.get(name) {
        Some(toml::Value::String(s)) => s.clone(),
        // The engine derives max_num_seqs from the GPU when it is 0
        // (workloads::engine_knobs::DEFAULTS_TOML).
        Some(toml::Value::Integer(0)) if name == "max_num_seqs" => "auto".into(),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

fn axis(p: &PointResult, name: &str) -> String {
    match p.record.axes.get(name) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

fn number(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.6}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string(),
        _ => String::new(),
    }
}

/// The rows of `benchmarking_results.csv`, one per point in walk order.
pub fn result_rows(outcome: &SweepOutcome) -> Vec<ResultRow> {
    outcome
        .points
        .iter()
        .map(|p| {
            let r = &p.record;
            let (status, class, message) = match &r.status {
                PointStatus::Done => ("done".to_string(), String::new(), String::new()),
                PointStatus::Failed { class, message } => {
                    ("failed".to_string(), class.to_string(), message.clone())
                }
            };
            let mut c: Vec<(String, String)> = vec![
                ("experiment".into(), r.experiment.clone()),
                ("prompt".into(), r.workload.clone()),
                ("model".into(), r.model.clone().unwrap_or_default()),
                ("tp".into(), "1".into()),
                ("pp".into(), "1".into()),
                ("dp".into(), "1".into()),
                ("mns".into(), knob(p, "max_num_seqs")),
                ("mnbt".into(), knob(p, "max_num_batched_tokens")),
                ("gmu".into(), knob(p, "gpu_memory_utilization")),
                ("bs".into(), knob(p, "block_size")),
                ("kvc".into(), "auto".into()),
                ("spec".into(), "none".into()),
                ("quant".into(), "none".into()),
            ];
            for name in &crate::sweep::results::DERIVED {
                c.push((name.to_string(), number(p.mean(name))));
            }
            c.extend([
                ("point_id".into(), r.point_id.clone()),
                ("tier".into(), r.tier.to_string()),
                ("label".into(), r.label.clone()),
                ("status".into(), status),
                ("failure_class".into(), class),
                ("failure_message".into(), message),
                ("device".into(), r.device.clone()),
                ("trials".into(), r.trials.to_string()),
                ("concurrency".into(), axis(p, "concurrency")),
                ("rate".into(), axis(p, "rate")),
                (
                    "enable_chunked_prefill".into(),
                    knob(p, "enable_chunked_prefill"),
                ),
                ("enforce_eager".into(), knob(p, "enforce_eager")),
            ]);
            for name in REPORTED {
                let s = p.metrics.get(*name);
                c.push((format!("{name}_mean"), number(s.map(|s| s.mean))));
                c.push((format!("{name}_stdev"), number(s.map(|s| s.stdev))));
            }
            c.push(("run_id".into(), r.run_id.clone().unwrap_or_default()));
            ResultRow { columns: c }
        })
        .collect()
}

/// One row of `optimization_summary.csv`: a model and workload, its
/// default-config point against its best point by output tok/s per GPU.
#[derive(Debug, Clone, Serialize)]
pub struct OptimizationRow {
    pub model: String,
    pub workload: String,
    pub base_point: Option<String>,
    pub base_tps_per_gpu: Option<f64>,
    pub base_tps_per_gpu_stdev: Option<f64>,
    pub best_point: String,
    pub best_tps_per_gpu: f64,
    pub best_tps_per_gpu_stdev: f64,
    /// best / base, when a default-config point exists.
    pub speedup: Option<f64>,
    /// The best point's knobs that differ from the defaults.
    pub best_parameters: String,
    pub points: usize,
}

pub fn optimization_rows(outcome: &SweepOutcome) -> Vec<OptimizationRow> {
    let mut groups: BTreeMap<(String, String), Vec<&PointResult>> = BTreeMap::new();
    for p in outcome.points.iter().filter(|p| p.record.is_done()) {
        groups
            .entry((
                p.record.model.clone().unwrap_or_default(),
                p.record.workload_key.clone(),
            ))
            .or_default()
            .push(p);
    }
    let mut rows = Vec::new();
    for ((model, _), points) in groups {
        if points.len() < 2 {
            continue;
        }
        let tps = |p: &PointResult| p.mean("output_tps_per_gpu");
        let Some(best) = points
            .iter()
            .filter(|p| tps(p).is_some())
            .max_by(|a, b| tps(a).unwrap_or(0.0).total_cmp(&tps(b).unwrap_or(0.0)))
        else {
            continue;
        };
        let knobs = |p: &PointResult| -> toml::Table {
            serde_json::from_value(p.record.engine.clone()).unwrap_or_default()
        };
        let base = points
            .iter()
            .find(|p| workloads::engine_knobs::is_default(&knobs(p)));
        let defaults = workloads::engine_knobs::defaults();
        let best_knobs = workloads::engine_knobs::effective(&knobs(best));
        let changed: Vec<String> = best_knobs
            .iter()
            .filter(|(k, v)| defaults.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let stdev = |p: &PointResult| p.metrics.get("output_tps_per_gpu").map(|s| s.stdev);
        rows.push(OptimizationRow {
            model,
            workload: workload_label(best),
            base_point: base.map(|p| p.record.point_id.clone()),
            base_tps_per_gpu: base.and_then(|p| tps(p)),
            base_tps_per_gpu_stdev: base.and_then(|p| stdev(p)),
            best_point: best.record.point_id.clone(),
            best_tps_per_gpu: tps(best).unwrap_or(0.0),
            best_tps_per_gpu_stdev: stdev(best).unwrap_or(0.0),
            speedup: base
                .and_then(|p| tps(p))
                .map(|b| tps(best).unwrap_or(0.0) / b),
            best_parameters: if changed.is_empty() {
                "(defaults are best)".into()
            } else {
                changed.join(", ")
            },
            points: points.len(),
        });
    }
    rows
}

/// The experiment and the point's axes that are not engine knobs: what
/// the points of one optimization row have in common.
fn workload_label(p: &PointResult) -> String {
    let mut parts = vec![p.record.experiment.clone()];
    parts.extend(
        p.record
            .label
            .split('.')
            .filter(|part| {
                let key = part.rsplit_once('-').map(|(k, _)| k).unwrap_or(part);
                !workloads::engine_knobs::is_knob(key)
            })
            .map(str::to_string),
    );
    parts.join(" ")
}

/// RFC 4180 quoting: a field with a comma, quote or line break is quoted,
/// its quotes doubled.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv(header: &[String], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let line = |cells: &[String]| {
        cells
            .iter()
            .map(|c| csv_field(c))
            .collect::<Vec<_>>()
            .join(",")
    };
    out.push_str(&line(header));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

pub fn results_csv(rows: &[ResultRow]) -> String {
    let header: Vec<String> = rows
        .first()
        .map(|r| r.columns.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.columns.iter().map(|(_, v)| v.clone()).collect())
        .collect();
    csv(&header, &body)
}

pub fn optimization_csv(rows: &[OptimizationRow]) -> String {
    let header: Vec<String> = [
        "model",
        "workload",
        "base_tps_per_gpu",
        "base_tps_per_gpu_stdev",
        "best_tps_per_gpu",
        "best_tps_per_gpu_stdev",
        "speedup",
        "best_parameters",
        "base_point",
        "best_point",
        "points",
    ]
    .map(String::from)
    .to_vec();
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.model.clone(),
                r.workload.clone(),
                number(r.base_tps_per_gpu),
                number(r.base_tps_per_gpu_stdev),
                number(Some(r.best_tps_per_gpu)),
                number(Some(r.best_tps_per_gpu_stdev)),
                r.speedup.map(|s| format!("{s:.2}x")).unwrap_or_default(),
                r.best_parameters.clone(),
                r.base_point.clone().unwrap_or_default(),
                r.best_point.clone(),
                r.points.to_string(),
            ]
        })
        .collect();
    csv(&header, &body)
}

/// Everything, as one JSON document.
pub fn json(
    outcome: &SweepOutcome,
    rows: &[ResultRow],
    opt: &[OptimizationRow],
) -> serde_json::Value {
    let points: Vec<serde_json::Value> = outcome
        .points
        .iter()
        .map(|p| {
            let metrics: BTreeMap<&str, serde_json::Value> = p
                .metrics
                .iter()
                .map(|(k, s)| {
                    (
                        k.as_str(),
                        json!({"mean": s.mean, "stdev": s.stdev, "cv": s.cv, "n": s.n}),
                    )
                })
                .collect();
            json!({ "record": p.record, "metrics": metrics })
        })
        .collect();
    json!({
        "sweep": outcome.file.name,
        "description": outcome.file.description,
        "file": outcome.file.path,
        "device": outcome.device,
        "trials": outcome.trials,
        "points": points,
        "experiments": outcome.experiments,
        "optimization_summary": opt,
        "benchmarking_results": rows.iter().map(|r| r.columns.iter().cloned().collect::<BTreeMap<_, _>>()).collect::<Vec<_>>(),
    })
}

fn fmt_spread(p: &PointResult, metric: &str) -> String {
    match p.metrics.get(metric) {
        Some(s) if s.n > 1 => format!("{} ± {}", short(s.mean), short(s.stdev)),
        Some(s) => short(s.mean),
        None => "-".into(),
    }
}

fn short(v: f64) -> String {
    crate::format::value(v)
}

/// Columns of the point tables (terminal, Markdown, HTML).
pub const TABLE_COLUMNS: &[&str] = &[
    "point",
    "experiment",
    "label",
    "status",
    "out tok/s/GPU",
    "req/s",
    "goodput req/s",
    "p50/p99 TTFT ms",
    "p50/p99 TPOT ms",
    "p99 E2E ms",
    "peak mem MB",
];

/// The point table's cells, one row per point.
pub fn table_cells(outcome: &SweepOutcome) -> Vec<Vec<String>> {
    outcome
        .points
        .iter()
        .map(|p| {
            let r = &p.record;
            let status = match &r.status {
                PointStatus::Done => "done".to_string(),
                PointStatus::Failed { class, .. } => format!("FAILED {class}"),
            };
            let pair = |a: &str, b: &str| format!("{} / {}", fmt_spread(p, a), fmt_spread(p, b));
            vec![
                r.point_id[..8.min(r.point_id.len())].to_string(),
                r.experiment.clone(),
                r.label.clone(),
                status,
                fmt_spread(p, "output_tps_per_gpu"),
                fmt_spread(p, "request_throughput"),
                fmt_spread(p, "request_goodput"),
                pair("p50_ttft_ms", "p99_ttft_ms"),
                pair("p50_tpot_ms", "p99_tpot_ms"),
                fmt_spread(p, "p99_e2el_ms"),
                p.mean("peak_memory_bytes")
                    .map(|b| format!("{:.0}", b / 1e6))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect()
}

/// Lines about each experiment's analysis (tiers, B_sat, capacity, pending).
pub fn analysis_lines(outcome: &SweepOutcome) -> Vec<String> {
    let mut out = Vec::new();
    for e in &outcome.experiments {
        out.extend(experiment_lines(outcome, e));
    }
    out
}

fn experiment_lines(outcome: &SweepOutcome, e: &ExperimentOutcome) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((objective, point)) = &e.base {
        out.push(format!(
            "{} (tier {}): starts from point {} {}, best by objective `{objective}`",
            e.name,
            e.tier,
            &point[..8.min(point.len())],
            outcome
                .point(point)
                .map(|p| p.record.label.as_str())
                .unwrap_or("")
        ));
    }
    match &e.bsat {
        Some(Ok(f)) => out.push(format!(
            "{}: B_sat = {:.0} (95% CI {:.0}–{:.0}, {} bootstrap resamples); step time {:.3} ms + {:.4} ms/seq below, {:.4} ms/seq above; B_opt = {} ({:.0} decode tok/s, best {:.0})",
            e.name,
            f.b_sat,
            f.b_sat_ci.0,
            f.b_sat_ci.1,
            f.resamples,
            f.intercept_ms,
            f.slope_below_ms,
            f.slope_above_ms,
            f.b_opt,
            f.points.iter().find(|p| p.batch_size == f.b_opt).map(|p| p.decode_tok_s).unwrap_or(0.0),
            f.best_decode_tok_s
        )),
        Some(Err(why)) => out.push(format!("{}: no B_sat fit: {why}", e.name)),
        None => {}
    }
    for (i, c) in e.capacity.iter().enumerate() {
        let unit = match c.search {
            workloads::sweep::SearchAxis::Rate => "req/s offered",
            workloads::sweep::SearchAxis::Concurrency => "concurrent requests",
        };
        match &c.best {
            Some(b) => out.push(format!(
                "{}{}: SLO capacity {} {unit} at {:.0}% attainment: {} req/s, {} output tok/s, {} tok/s per GPU ({} probes{})",
                e.name,
                if e.capacity.len() > 1 { format!(" #{}", i + 1) } else { String::new() },
                short(b.load),
                c.target * 100.0,
                b.request_throughput.map(short).unwrap_or_else(|| "-".into()),
                b.output_throughput.map(short).unwrap_or_else(|| "-".into()),
                b.output_throughput.map(|t| short(t / super::results::GPUS_PER_POINT)).unwrap_or_else(|| "-".into()),
                c.probes.len(),
                match c.first_failing {
                    Some(f) => format!(", fails at {}", short(f)),
                    None => String::new(),
                }
            )),
            None => out.push(format!(
                "{}: no load met the SLOs at {:.0}% attainment ({} probes)",
                e.name,
                c.target * 100.0,
                c.probes.len()
            )),
        }
    }
    for p in &e.pending {
        out.push(format!("{}: pending: {p}", e.name));
    }
    out
}

/// The terminal summary.
pub fn print_summary(outcome: &SweepOutcome) {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(TABLE_COLUMNS.to_vec());
    for row in table_cells(outcome) {
        table.add_row(
            row.into_iter()
                .enumerate()
                .map(|(i, c)| {
                    let cell = Cell::new(c);
                    if i >= 4 {
                        cell.set_alignment(CellAlignment::Right)
                    } else {
                        cell
                    }
                })
                .collect::<Vec<_>>(),
        );
    }
    println!(
        "\nsweep {} on {}: {} points, {} trial(s) each; mean ± stdev across trials",
        outcome.file.name,
        outcome.device,
        outcome.points.len(),
        outcome.trials
    );
    println!("{table}");
    for line in analysis_lines(outcome) {
        println!("{line}");
    }
    for r in optimization_rows(outcome) {
        println!(
            "{} {}: best {:.0} ± {:.0} tok/s per GPU ({}){}",
            r.model,
            r.workload,
            r.best_tps_per_gpu,
            r.best_tps_per_gpu_stdev,
            r.best_parameters,
            match (r.base_tps_per_gpu, r.speedup) {
                (Some(b), Some(s)) => format!(", default {b:.0}: {s:.2}x"),
                _ => ", no default-config point".into(),
            }
        );
    }
}

/// Markdown for a pull request or a job summary.
pub fn markdown(outcome: &SweepOutcome) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Sweep `{}` on {}\n\n{}\n\n{} points, {} trial(s) each; mean ± stdev across trials.\n",
        outcome.file.name,
        outcome.device,
        outcome.file.description,
        outcome.points.len(),
        outcome.trials
    );
    let _ = writeln!(md, "| {} |", TABLE_COLUMNS.join(" | "));
    let _ = writeln!(
        md,
        "|{}|",
        TABLE_COLUMNS
            .iter()
            .map(|_| " --- ")
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in table_cells(outcome) {
        let _ = writeln!(
            md,
            "| {} |",
            row.iter()
                .map(|c| c.replace('|', "\\|"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let opt = optimization_rows(outcome);
    if !opt.is_empty() {
        let _ = writeln!(md, "\n### Default vs best config\n");
        let _ = writeln!(
            md,
            "| model | workload | default tok/s/GPU | best tok/s/GPU | speedup | best parameters |"
        );
        let _ = writeln!(md, "| --- | --- | ---: | ---: | ---: | --- |");
        for r in &opt {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.0} ± {:.0} | {} | {} |",
                r.model,
                r.workload,
                match (r.base_tps_per_gpu, r.base_tps_per_gpu_stdev) {
                    (Some(b), Some(s)) => format!("{b:.0} ± {s:.0}"),
                    _ => "-".into(),
                },
                r.best_tps_per_gpu,
                r.best_tps_per_gpu_stdev,
                r.speedup
                    .map(|s| format!("{s:.2}x"))
                    .unwrap_or_else(|| "-".into()),
                r.best_parameters
            );
        }
    }
    let lines = analysis_lines(outcome);
    if !lines.is_empty() {
        let _ = writeln!(md, "\n### Analysis\n");
        for l in lines {
            let _ = writeln!(md, "- {l}");
        }
    }
    let failed: Vec<&PointResult> = outcome
        .points
        .iter()
        .filter(|p| !p.record.is_done())
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(md, "\n### Failed points\n");
        for p in failed {
            if let PointStatus::Failed { class, message } = &p.record.status {
                let _ = writeln!(
                    md,
                    "- `{}` {} — **{class}**: {}",
                    p.record.point_id,
                    p.record.label,
                    message.replace('\n', " ")
                );
            }
        }
    }
    md
}

/// Writes every report into `dir`; returns the file names written.
pub fn write_all(outcome: &SweepOutcome, store: &Store, dir: &Path) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let rows = result_rows(outcome);
    let opt = optimization_rows(outcome);
    let plots = plots::render_all(outcome, store)?;
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            "benchmarking_results.csv".into(),
            results_csv(&rows).into_bytes(),
        ),
        (
            "optimization_summary.csv".into(),
            optimization_csv(&opt).into_bytes(),
        ),
        (
            "sweep.json".into(),
            serde_json::to_vec_pretty(&json(outcome, &rows, &opt))?,
        ),
        ("summary.md".into(), markdown(outcome).into_bytes()),
        (
            "report.html".into(),
            html::render(outcome, &rows, &opt, &plots).into_bytes(),
        ),
    ];
    for p in &plots {
        files.push((format!("{}.svg", p.name), p.svg.clone().into_bytes()));
    }
    let mut names = Vec::new();
    for (name, bytes) in files {
        let path = dir.join(&name);
        workloads::jsonl::write_bytes_atomic(&path, &bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        names.push(name);
    }
    Ok(names)
}

/// `--dry-run`: the points, their count and state, and an estimate.
pub fn print_dry_run(
    sweep: &Sweep,
    listed: &[ListedPoint],
    outcome: &SweepOutcome,
    timeout_s: f64,
) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "point",
        "tier",
        "experiment",
        "label",
        "state",
        "runs now",
    ]);
    for p in listed {
        table.add_row(vec![
            p.id.clone(),
            p.tier.to_string(),
            p.experiment.clone(),
            p.label.clone(),
            p.state.clone(),
            if p.will_run && sweep.selected(&p.experiment) {
                "yes".into()
            } else {
                "no".into()
            },
        ]);
    }
    println!(
        "sweep {} ({}), device {}, {} trial(s) per point; ledger {}",
        sweep.file.name,
        sweep.file.path.display(),
        sweep.device,
        sweep.trials,
        sweep.ledger.dir().display()
    );
    println!("{table}");
    let to_run = listed
        .iter()
        .filter(|p| p.will_run && sweep.selected(&p.experiment))
        .count();
    let done = listed.iter().filter(|p| p.state == "done").count();
    let failed = listed
        .iter()
        .filter(|p| p.state.starts_with("failed"))
        .count();
    println!(
        "{} points known now: {done} done, {failed} failed, {to_run} to run",
        listed.len()
    );
    for e in &outcome.experiments {
        for p in &e.pending {
            println!("{}: later: {p}", e.name);
        }
    }
    // Seconds per trial measured on this sweep's finished points.
    let per_trial: Vec<f64> = outcome
        .points
        .iter()
        .filter(|p| p.record.attempts > 0 && p.record.trials > 0)
        .map(|p| p.record.wall_s / f64::from(p.record.trials))
        .collect();
    let trials = f64::from(sweep.trials) * to_run as f64;
    match crate::stats::spread(&per_trial) {
        Some(s) => println!(
            "estimated time: {:.0} s ({to_run} points × {} trials × {:.1} s per trial, the mean of {} finished points); at most {:.0} s at the {timeout_s:.0} s timeout",
            trials * s.mean,
            sweep.trials,
            s.mean,
            s.n,
            trials * timeout_s
        ),
        None => println!(
            "estimated time: unknown until a point finishes; at most {:.0} s ({to_run} points × {} trials × the {timeout_s:.0} s timeout)",
            trials * timeout_s,
            sweep.trials
        ),
    }
}
