//! One self-contained HTML report: the tables and the SVG plots inline, no
//! script or style from outside, so it opens offline from the run folder.
//! A small inline script counts what the browser actually laid out
//! (`data-rendered` on `<body>`), which the headless-browser test reads.

use std::fmt::Write as _;

use super::plots::Plot;
use super::{analysis_lines, table_cells, OptimizationRow, ResultRow, TABLE_COLUMNS};
use crate::sweep::{PointStatus, SweepOutcome};

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The ids of the tables the report always has.
pub const TABLE_IDS: [&str; 3] = ["points", "optimization", "results"];

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0;font-size:13px}\
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
td:nth-child(-n+4),th{text-align:left}\
th{background:#f3f3f3}.failed{background:#fde8e8}\
figure{display:inline-block;margin:1em}figcaption{font-weight:600}\
.scroll{overflow-x:auto}";

const SCRIPT: &str = "document.addEventListener('DOMContentLoaded',function(){\
var f=document.querySelectorAll('figure.plot');var ok=0;\
f.forEach(function(x){var s=x.querySelector('svg');if(s&&s.getBBox().width>0)ok++;});\
var t=document.querySelectorAll('table.data');var rows=0;\
t.forEach(function(x){rows+=x.querySelectorAll('tbody tr').length;});\
document.body.setAttribute('data-rendered','plots='+ok+'/'+f.length+' tables='+t.length+' rows='+rows);});";

fn table(id: &str, header: &[String], rows: &[(Vec<String>, bool)]) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<div class=\"scroll\"><table class=\"data\" id=\"{id}\"><thead><tr>"
    );
    for c in header {
        let _ = write!(h, "<th>{}</th>", escape(c));
    }
    h.push_str("</tr></thead><tbody>");
    for (row, failed) in rows {
        h.push_str(if *failed {
            "<tr class=\"failed\">"
        } else {
            "<tr>"
        });
        for c in row {
            let _ = write!(h, "<td>{}</td>", escape(c));
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></div>");
    h
}

pub fn render(
    outcome: &SweepOutcome,
    rows: &[ResultRow],
    opt: &[OptimizationRow],
    plots: &[Plot],
) -> String {
    let mut h = String::new();
    let title = format!("Sweep {} on {}", outcome.file.name, outcome.device);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style><script>{SCRIPT}</script></head><body>",
        escape(&title)
    );
    let _ = write!(
        h,
        "<h1>{}</h1><p>{}</p><p>{} points, {} trial(s) each; mean ± stdev across trials. File: <code>{}</code>.</p>",
        escape(&title),
        escape(&outcome.file.description),
        outcome.points.len(),
        outcome.trials,
        escape(&outcome.file.path.display().to_string())
    );

    h.push_str("<h2>Points</h2>");
    let header: Vec<String> = TABLE_COLUMNS.iter().map(|s| s.to_string()).collect();
    let cells: Vec<(Vec<String>, bool)> = table_cells(outcome)
        .into_iter()
        .zip(&outcome.points)
        .map(|(r, p)| (r, !p.record.is_done()))
        .collect();
    h.push_str(&table(TABLE_IDS[0], &header, &cells));

    h.push_str("<h2>Default vs best config</h2>");
    let opt_header: Vec<String> = [
        "model",
        "workload",
        "default tok/s/GPU",
        "best tok/s/GPU",
        "speedup",
        "best parameters",
        "points",
    ]
    .map(String::from)
    .to_vec();
    let opt_rows: Vec<(Vec<String>, bool)> = opt
        .iter()
        .map(|r| {
            (
                vec![
                    r.model.clone(),
                    r.workload.clone(),
                    match (r.base_tps_per_gpu, r.base_tps_per_gpu_stdev) {
                        (Some(b), Some(s)) => format!("{b:.0} ± {s:.0}"),
                        _ => "no default-config point".into(),
                    },
                    format!(
                        "{:.0} ± {:.0}",
                        r.best_tps_per_gpu, r.best_tps_per_gpu_stdev
                    ),
                    r.speedup
                        .map(|s| format!("{s:.2}x"))
                        .unwrap_or_else(|| "-".into()),
                    r.best_parameters.clone(),
                    r.points.to_string(),
                ],
                false,
            )
        })
        .collect();
    h.push_str(&table(TABLE_IDS[1], &opt_header, &opt_rows));

    let lines = analysis_lines(outcome);
    if !lines.is_empty() {
        h.push_str("<h2>Analysis</h2><ul>");
        for l in lines {
            let _ = write!(h, "<li>{}</li>", escape(&l));
        }
        h.push_str("</ul>");
    }
    let failed: Vec<_> = outcome
        .points
        .iter()
        .filter(|p| !p.record.is_done())
        .collect();
    if !failed.is_empty() {
        h.push_str("<h2>Failed points</h2><ul>");
        for p in failed {
            if let PointStatus::Failed { class, message } = &p.record.status {
                let _ = write!(
                    h,
                    "<li><code>{}</code> {} — <b>{}</b>: {}</li>",
                    escape(&p.record.point_id),
                    escape(&p.record.label),
                    escape(class.name()),
                    escape(message)
                );
            }
        }
        h.push_str("</ul>");
    }

    h.push_str("<h2>Plots</h2>");
    if plots.is_empty() {
        h.push_str("<p>No plot: too few finished points.</p>");
    }
    for p in plots {
        let _ = write!(
            h,
            "<figure class=\"plot\" id=\"plot-{}\"><figcaption>{}</figcaption>{}</figure>",
            escape(&p.name),
            escape(&p.title),
            strip_xml_declaration(&p.svg)
        );
    }

    h.push_str("<h2>benchmarking_results.csv</h2>");
    let res_header: Vec<String> = rows
        .first()
        .map(|r| r.columns.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let res_rows: Vec<(Vec<String>, bool)> = rows
        .iter()
        .map(|r| (r.columns.iter().map(|(_, v)| v.clone()).collect(), false))
        .collect();
    h.push_str(&table(TABLE_IDS[2], &res_header, &res_rows));
    h.push_str("</body></html>\n");
    h
}

/// An SVG file's text without its `<?xml ...?>` line, for inlining.
fn strip_xml_declaration(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
