//! A comparison as a terminal table, JSON, and the GitHub job summary; the
//! Markdown for a PR comment is in `markdown.rs`. Numbers are formatted by
//! `crate::format`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, ContentArrangement, Table};

pub use super::markdown::markdown;
use super::verdict::{MetricResult, OutputVerdict, Verdict};
use super::{Comparison, Summary, WorkloadComparison};
use crate::side::Side;

/// Shown in the terminal even when unchanged: what a reader looks for first.
const HEADLINE: [&str; 4] = [
    "output_throughput",
    "p50_ttft_ms",
    "p50_tpot_ms",
    "p99_e2el_ms",
];

use crate::format::{magnitude, signed};
pub(super) use crate::format::{opt_value as value, p_value as p, pct};

pub(super) fn ci(m: &MetricResult) -> String {
    match (m.ci_low, m.ci_high) {
        (Some(lo), Some(hi)) => format!("[{}, {}]", signed(lo), signed(hi)),
        _ => "–".into(),
    }
}

pub(super) fn unit(m: &MetricResult) -> String {
    format!(
        "{} ({}{})",
        m.metric,
        if m.higher_is_better { "↑ " } else { "↓ " },
        m.unit
    )
}

/// Short, for the terminal: the verdict and, when inconclusive, the
/// smallest change the trials could have detected.
fn verdict_text(m: &MetricResult) -> String {
    match (m.verdict, m.mde) {
        (Verdict::Inconclusive, Some(mde)) => {
            format!("INCONCLUSIVE (MDE {})", magnitude(mde))
        }
        (Verdict::Inconclusive, None) => "INCONCLUSIVE (no test)".into(),
        (v, _) => v.to_string(),
    }
}

pub fn summary_line(s: &Summary) -> String {
    let mut parts = vec![
        format!("{} regressed", s.regressed),
        format!("{} improved", s.improved),
        format!("{} unchanged", s.unchanged),
        format!("{} inconclusive", s.inconclusive),
    ];
    if s.output_changed > 0 {
        parts.push(format!(
            "output changed in {} workload(s)",
            s.output_changed
        ));
    }
    if s.more_failed_trials > 0 {
        parts.push(format!(
            "more failed trials in {} workload(s)",
            s.more_failed_trials
        ));
    }
    if s.no_verdict > 0 {
        parts.push(format!(
            "{} of {} workload(s) without verdict",
            s.no_verdict, s.workloads
        ));
    }
    parts.join(" · ")
}

fn trials_text(side: &Option<Side>) -> String {
    match side {
        Some(s) => format!(
            "{} ({}/{} trials ok)",
            s.label,
            s.ok_count(),
            s.trials.len()
        ),
        None => "–".into(),
    }
}

pub(super) fn output_text(w: &WorkloadComparison) -> Option<String> {
    let o = w.output.as_ref()?;
    let head = match o.verdict {
        OutputVerdict::Same => "outputs identical".to_string(),
        OutputVerdict::Unknown => "outputs not checked".to_string(),
        OutputVerdict::Nondeterministic => {
            "outputs not judged: the baseline's own trials disagree".to_string()
        }
        OutputVerdict::Changed if o.greedy => {
            "OUTPUT-CHANGED (greedy: fails the check)".to_string()
        }
        OutputVerdict::Changed => "OUTPUT-CHANGED".to_string(),
    };
    Some(match &o.note {
        Some(n) => format!("{head} — {n}"),
        None => head,
    })
}

/// The comparison as terminal text.
pub fn terminal(c: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", c.title);
    let _ = writeln!(out, "test: {}", c.design.describe());
    let _ = writeln!(out, "{}", summary_line(&c.summary()));
    for w in &c.workloads {
        let _ = writeln!(
            out,
            "\n{}: candidate {}; baseline {}",
            w.name,
            trials_text(&w.candidate),
            trials_text(&w.baseline)
        );
        if let Some(why) = &w.no_verdict {
            let _ = writeln!(out, "  no verdict: {why}");
            continue;
        }
        for d in &w.class_differences {
            let _ = writeln!(out, "  compared across {d}");
        }
        if let Some(t) = output_text(w) {
            let _ = writeln!(out, "  {t}");
        }
        if let Some(t) = &w.trials {
            for f in &t.candidate_failures {
                let _ = writeln!(out, "  failed: {f}");
            }
        }
        let mut table = Table::new();
        table
            .load_preset(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header([
                "metric",
                "baseline",
                "candidate",
                "change",
                "95% CI",
                "p (Holm)",
                "± thr",
                "verdict",
            ]);
        let mut hidden = std::collections::BTreeMap::new();
        for m in &w.metrics {
            let flagged = matches!(m.verdict, Verdict::Regressed | Verdict::Improved);
            if !flagged && !HEADLINE.contains(&m.metric.as_str()) {
                *hidden.entry(m.verdict.to_string()).or_insert(0) += 1;
                continue;
            }
            table.add_row([
                Cell::new(unit(m)),
                Cell::new(value(m.baseline_mean)),
                Cell::new(value(m.candidate_mean)),
                Cell::new(pct(m.change)),
                Cell::new(ci(m)),
                Cell::new(p(m.p_adjusted)),
                Cell::new(format!("{:.0}%", m.threshold * 100.0)),
                Cell::new(verdict_text(m)),
            ]);
        }
        let _ = writeln!(out, "{table}");
        if !hidden.is_empty() {
            let counts: Vec<String> = hidden.iter().map(|(v, n)| format!("{n} {v}")).collect();
            let _ = writeln!(
                out,
                "  not shown: {} (all metrics: --format markdown or json)",
                counts.join(", ")
            );
        }
        for m in &w.metrics {
            if m.mde.is_none() {
                if let Some(note) = &m.note {
                    let _ = writeln!(out, "  {}: {note}", m.metric);
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "\nWelch's t-test on log trial values; weighted Holm over {} tests at α = {} family-wise;\nUNCHANGED = TOST within ± threshold; MDE = smallest change these trials could detect (power 0.8).",
        c.family_size, c.policy.alpha
    );
    out
}

/// The comparison as JSON, with its summary and exit code.
pub fn json(c: &Comparison) -> String {
    let value = serde_json::json!({
        "summary": c.summary(),
        "exit_code": c.exit_code(),
        "comparison": c,
    });
    serde_json::to_string_pretty(&value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Appends the Markdown to `$GITHUB_STEP_SUMMARY` when it is set.
pub fn append_step_summary(c: &Comparison) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    append_markdown(Path::new(&path), c)
}

/// Appends the comparison's Markdown to `path` (creating it).
pub fn append_markdown(path: &Path, c: &Comparison) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(markdown(c).as_bytes())?;
    f.write_all(b"\n")
}

/// Prints to stdout; a closed pipe (`| head`) is not an error.
pub fn print_out(text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}
