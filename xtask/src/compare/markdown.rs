//! The comparison as Markdown for a pull-request comment (and the GitHub job
//! summary): a status line and the counts first, then the flagged metrics,
//! then everything else collapsed in `<details>`.

use std::fmt::Write as _;

use super::report::{ci, output_text, p, pct, summary_line, unit, value};
use super::verdict::{MetricResult, OutputVerdict, Verdict};
use super::{Comparison, WorkloadComparison};
use crate::run_record::metric_catalog;
use crate::side::{short_id, Side};

/// GitHub refuses comments over 65,536 characters.
const MARKDOWN_LIMIT: usize = 60_000;

fn badge(v: Verdict) -> &'static str {
    match v {
        Verdict::Regressed => "🔴 REGRESSED",
        Verdict::Improved => "🟢 IMPROVED",
        Verdict::Unchanged => "⚪ UNCHANGED",
        Verdict::Inconclusive => "🟡 INCONCLUSIVE",
    }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn md_metric_row(out: &mut String, workload: &str, m: &MetricResult) {
    let _ = writeln!(
        out,
        "| {workload} | {} | {} | {} | {} | {} | {} | ±{:.0}% | {}{} |",
        md_escape(&unit(m)),
        value(m.baseline_mean),
        value(m.candidate_mean),
        pct(m.change),
        ci(m),
        p(m.p_adjusted),
        m.threshold * 100.0,
        badge(m.verdict),
        m.note
            .as_deref()
            .map(|n| format!(" — {}", md_escape(n)))
            .unwrap_or_default()
    );
}

const MD_HEADER: &str = "| workload | metric | baseline | candidate | change | 95% CI | p (Holm) | threshold | verdict |\n|---|---|---:|---:|---:|---|---:|---:|---|\n";

fn md_side(out: &mut String, role: &str, s: &Side) {
    let origin = if s.label.starts_with("run ") {
        String::new()
    } else {
        format!("committed baseline of {}, from ", s.label)
    };
    let _ = writeln!(
        out,
        "- {role}: {origin}run `{}` · commit `{}`{} · {} · {} · {}/{} trials ok{}",
        short_id(&s.run_id),
        s.commit.as_deref().map(short_id).unwrap_or("unknown"),
        if s.git_dirty { " (dirty)" } else { "" },
        md_escape(&s.machine),
        s.created_at,
        s.ok_count(),
        s.trials.len(),
        if s.earlier_runs.is_empty() {
            String::new()
        } else {
            format!(" · {} earlier run(s) in its history", s.earlier_runs.len())
        }
    );
}

fn md_trials(out: &mut String, w: &WorkloadComparison) {
    let (Some(b), Some(c)) = (&w.baseline, &w.candidate) else {
        return;
    };
    let _ = writeln!(
        out,
        "\n| metric | baseline trials | candidate trials |\n|---|---|---|"
    );
    for def in metric_catalog() {
        let col = |s: &Side| -> String {
            s.trials
                .iter()
                .map(|t| value(t.metrics.get(def.name).copied()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if b.trials
            .iter()
            .chain(&c.trials)
            .any(|t| t.metrics.contains_key(def.name))
        {
            let _ = writeln!(
                out,
                "| {} ({}) | {} | {} |",
                def.name,
                def.unit,
                col(b),
                col(c)
            );
        }
    }
}

fn md_workload_details(out: &mut String, w: &WorkloadComparison) {
    let _ = writeln!(out, "\n#### {}\n", w.name);
    if let Some(b) = &w.baseline {
        md_side(out, "baseline", b);
    }
    if let Some(c) = &w.candidate {
        md_side(out, "candidate", c);
    }
    if let Some(why) = &w.no_verdict {
        let _ = writeln!(out, "\n**No verdict:** {}", md_escape(why));
    } else {
        for d in &w.class_differences {
            let _ = writeln!(out, "- compared across {}", md_escape(&d.to_string()));
        }
    }
    if let Some(t) = output_text(w) {
        let _ = writeln!(out, "- {}", md_escape(&t));
    }
    if let Some(t) = &w.trials {
        for f in &t.candidate_failures {
            let _ = writeln!(out, "- candidate {}", md_escape(f));
        }
    }
    if let Some(side) = w.candidate.as_ref().or(w.baseline.as_ref()) {
        let class = serde_json::to_string(&side.class).unwrap_or_default();
        let _ = writeln!(
            out,
            "- fingerprint class `{}`: `{}`",
            side.class.hash(),
            md_escape(&class)
        );
    }
    if !w.metrics.is_empty() {
        let _ = write!(out, "\n{MD_HEADER}");
        for m in &w.metrics {
            md_metric_row(out, &w.name, m);
        }
    }
    md_trials(out, w);
}

/// Markdown for a PR comment: the summary first, then `<details>`.
pub fn markdown(c: &Comparison) -> String {
    let s = c.summary();
    let status = if c.exit_code() != 0 {
        "❌"
    } else if !c.has_verdicts() {
        "⚠️"
    } else {
        "✅"
    };
    let mut out = String::new();
    let _ = writeln!(out, "### {status} dyno bench: {}\n", md_escape(&c.title));
    let _ = writeln!(out, "_{}_\n", md_escape(c.design.describe()));
    let _ = writeln!(out, "**{}**\n", summary_line(&s));
    let flagged: Vec<(&str, &MetricResult)> = c
        .workloads
        .iter()
        .flat_map(|w| w.metrics.iter().map(move |m| (w.name.as_str(), m)))
        .filter(|(_, m)| matches!(m.verdict, Verdict::Regressed | Verdict::Improved))
        .collect();
    if !flagged.is_empty() {
        out.push_str(MD_HEADER);
        for (w, m) in flagged {
            md_metric_row(&mut out, w, m);
        }
        out.push('\n');
    }
    for w in &c.workloads {
        if let Some(o) = &w.output {
            if o.verdict == OutputVerdict::Changed {
                let _ = writeln!(
                    out,
                    "- **{}**: {}",
                    w.name,
                    output_text(w).unwrap_or_default()
                );
            }
        }
        if w.trials.as_ref().is_some_and(|t| t.more_failures) {
            let _ = writeln!(
                out,
                "- **{}**: the candidate failed more trials than the baseline",
                w.name
            );
        }
        if let Some(why) = &w.no_verdict {
            let _ = writeln!(out, "- **{}**: no verdict — {}", w.name, md_escape(why));
        }
    }
    let _ = writeln!(
        out,
        "\n<sub>Welch's t-test on log trial values, weighted Holm over {} tests at α = {} family-wise; UNCHANGED means TOST within ± threshold; INCONCLUSIVE shows the smallest change the trials could detect (power {}).</sub>\n",
        c.family_size, c.policy.alpha, c.policy.power
    );
    let mut details = String::from("<details><summary>Details: fingerprints, run ids, every metric, per-trial values</summary>\n");
    for w in &c.workloads {
        md_workload_details(&mut details, w);
    }
    details.push_str("\n</details>\n");
    if out.len() + details.len() > MARKDOWN_LIMIT {
        let _ = writeln!(out, "_Details omitted: too long for a comment; see the run export artifact or `cargo xtask compare --format json`._");
    } else {
        out.push_str(&details);
    }
    out
}
