//! A history as a terminal table, Markdown (the GitHub job summary) and JSON.

use std::fmt::Write as _;
use std::io::Write as _;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};

use super::{ChangeReport, Direction, History, Series};
use crate::format::{opt_value, p_value, signed, value};

/// Rows of the per-run table in the terminal; the JSON has every run.
const MAX_TERMINAL_ROWS: usize = 40;

/// The first 10 characters of a commit (any text: `DYNO_GIT_COMMIT` may
/// name one), "-" for none.
pub(crate) fn short_commit(commit: Option<&str>) -> String {
    commit.map_or_else(|| "-".to_string(), |c| c.chars().take(10).collect())
}

/// "2026-11-24 06:00" from an RFC 3339 time.
pub(crate) fn short_time(rfc3339: &str) -> String {
    rfc3339.get(..16).unwrap_or(rfc3339).replacen('T', " ", 1)
}

fn arrow(s: &Series) -> &'static str {
    match s.higher_is_better {
        Some(true) => " ↑",
        Some(false) => " ↓",
        None => "",
    }
}

fn direction_word(d: Direction) -> &'static str {
    match d {
        Direction::Regression => "regression",
        Direction::Improvement => "improvement",
        Direction::Change => "change",
    }
}

fn change_text(c: &ChangeReport) -> (String, String) {
    let change = match c.shift.relative_change {
        Some(r) => signed(r),
        None => format!(
            "{} → {}",
            value(c.shift.mean_before),
            value(c.shift.mean_after)
        ),
    };
    let ci = match c.shift.ci95 {
        Some((lo, hi)) => format!("[{}, {}]", signed(lo), signed(hi)),
        None => "–".to_string(),
    };
    (change, ci)
}

fn config_line(h: &History) -> String {
    format!(
        "e-divisive means, permutation test at α = {} with {} permutations, at least {} runs on each side; points ordered by {}",
        h.config.alpha, h.config.permutations, h.config.min_segment, h.order
    )
}

/// Series grouped by class, in the order they were built.
fn by_class(h: &History) -> Vec<Vec<&Series>> {
    let mut groups: Vec<Vec<&Series>> = Vec::new();
    for s in &h.series {
        match groups.last_mut() {
            Some(g) if g[0].class_hash == s.class_hash => g.push(s),
            _ => groups.push(vec![s]),
        }
    }
    groups
}

/// The terminal report: per class, the runs with each metric's value, then
/// the change points.
pub fn terminal(h: &History) -> String {
    let mut out = String::new();
    for group in by_class(h) {
        let first = group[0];
        // The runs of the class that any of its series has, in order.
        let mut runs: Vec<(usize, &str, &str, Option<&str>, bool)> = Vec::new();
        for s in &group {
            for p in &s.points {
                if !runs.iter().any(|r| r.1 == p.run_id) {
                    runs.push((
                        p.position,
                        &p.run_id,
                        &p.created_at,
                        p.commit.as_deref(),
                        p.dirty,
                    ));
                }
            }
        }
        // Series of one class may hold different runs (a metric missing in
        // some): their union in the history's order.
        runs.sort_by_key(|r| r.0);
        let _ = writeln!(
            out,
            "\n`{}` (class {}, model {}): {} runs, {} → {}",
            first.workload,
            first.class_hash,
            first.model,
            runs.len(),
            runs.first().map_or(String::new(), |r| short_time(r.2)),
            runs.last().map_or(String::new(), |r| short_time(r.2)),
        );
        let mut header = vec!["run".to_string(), "date".to_string(), "commit".to_string()];
        header.extend(
            group
                .iter()
                .map(|s| format!("{}{} ({})", s.metric, arrow(s), s.unit)),
        );
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
        let skip = runs.len().saturating_sub(MAX_TERMINAL_ROWS);
        for (_, run_id, at, commit, dirty) in runs.iter().skip(skip) {
            let mut row = vec![
                Cell::new(run_id.chars().take(12).collect::<String>()),
                Cell::new(short_time(at)),
                Cell::new(format!(
                    "{}{}",
                    short_commit(*commit),
                    if *dirty { "+dirty" } else { "" }
                )),
            ];
            for s in &group {
                let idx = s.points.iter().position(|p| p.run_id == *run_id);
                let text = match idx {
                    None => "–".to_string(),
                    Some(i) => {
                        let mark = if s.change_points.iter().any(|c| c.index == i) {
                            " ◆"
                        } else {
                            ""
                        };
                        format!("{}{mark}", value(s.points[i].value))
                    }
                };
                row.push(Cell::new(text).set_alignment(CellAlignment::Right));
            }
            table.add_row(row);
        }
        let _ = writeln!(out, "{table}");
        if skip > 0 {
            let _ = writeln!(
                out,
                "({skip} earlier runs not shown; --json or --svg DIR show them all)"
            );
        }
        let changes: Vec<(&Series, &ChangeReport)> = group
            .iter()
            .flat_map(|s| s.change_points.iter().map(move |c| (*s, c)))
            .collect();
        if changes.is_empty() {
            let _ = writeln!(out, "no change points");
        } else {
            let _ = writeln!(
                out,
                "change points (◆ above: the first run at the new level):"
            );
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
                "metric", "began in", "after", "runs", "change", "95% CI", "p", "",
            ]);
            for (s, c) in changes {
                let (change, ci) = change_text(c);
                t.add_row(vec![
                    Cell::new(format!("{}{}", s.metric, arrow(s))),
                    Cell::new(format!(
                        "{} ({})",
                        short_commit(c.commit.as_deref()),
                        short_time(&c.created_at)
                    )),
                    Cell::new(short_commit(c.previous_commit.as_deref())),
                    Cell::new(format!("{} | {}", c.shift.n_before, c.shift.n_after)),
                    Cell::new(change).set_alignment(CellAlignment::Right),
                    Cell::new(ci),
                    Cell::new(p_value(Some(c.p_value))),
                    Cell::new(direction_word(c.direction)),
                ]);
            }
            let _ = writeln!(out, "{t}");
        }
        for s in &group {
            if let Some(why) = &s.not_searched {
                let _ = writeln!(out, "{}: change points not searched: {why}", s.metric);
            }
        }
    }
    // Notes go to stderr as warnings (commands::history), not here.
    let _ = writeln!(out, "\n{}", config_line(h));
    out
}

/// Markdown for the GitHub job summary: the change points first.
pub fn markdown(h: &History) -> String {
    let mut out = String::new();
    let count = h.change_point_count();
    let regressions = h
        .series
        .iter()
        .flat_map(|s| &s.change_points)
        .filter(|c| c.direction == Direction::Regression)
        .count();
    let _ = writeln!(out, "### dyno history: change points\n");
    let _ = writeln!(
        out,
        "**{count} change point(s), {regressions} of them regressions, in {} series** ({} workload(s) × metrics)\n",
        h.series.len(),
        by_class(h).len()
    );
    if count > 0 {
        let _ = writeln!(
            out,
            "| workload | metric | began in | after | change | 95% CI | p | |\n| --- | --- | --- | --- | ---: | --- | ---: | --- |"
        );
        for s in &h.series {
            for c in &s.change_points {
                let (change, ci) = change_text(c);
                let _ = writeln!(
                    out,
                    "| {} | {}{} | `{}` ({}) | `{}` | {} | {} | {} | {} |",
                    s.workload,
                    s.metric,
                    arrow(s),
                    short_commit(c.commit.as_deref()),
                    short_time(&c.created_at),
                    short_commit(c.previous_commit.as_deref()),
                    change,
                    ci,
                    p_value(Some(c.p_value)),
                    direction_word(c.direction)
                );
            }
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "<details><summary>Series</summary>\n\n| workload | class | metric | runs | latest | change points |\n| --- | --- | --- | ---: | ---: | ---: |"
    );
    for s in &h.series {
        let latest = s.points.last().map(|p| p.value);
        let _ = writeln!(
            out,
            "| {} | `{}` | {}{} | {} | {} | {} |",
            s.workload,
            s.class_hash,
            s.metric,
            arrow(s),
            s.points.len(),
            opt_value(latest),
            match &s.not_searched {
                Some(_) => "too few runs".to_string(),
                None => s.change_points.len().to_string(),
            }
        );
    }
    let _ = writeln!(out, "\n{}\n", config_line(h));
    for note in &h.notes {
        let _ = writeln!(out, "- {note}");
    }
    let _ = writeln!(out, "</details>");
    out
}

pub fn json(h: &History) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(h)?;
    text.push('\n');
    Ok(text)
}

/// Appends the Markdown to `$GITHUB_STEP_SUMMARY` when it is set.
pub fn append_step_summary(h: &History) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(markdown(h).as_bytes())?;
    f.write_all(b"\n")
}
