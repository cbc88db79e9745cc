//! SVG trend plots: one per workload and metric, the runs oldest first, each
//! trial as a grey dot, each run's mean on a line, the mean of each segment
//! between change points as a flat green line, and each change point as a
//! red line labelled with the commit where it began and its size.
//!
//! plotters is built with only its SVG backend and line series (see
//! Cargo.toml): no font or bitmap crates, so it adds little to xtask's build.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;

use super::report::short_commit;
use super::{History, Series};
use crate::format::signed;

const SIZE: (u32, u32) = (1000, 480);
const GREY: RGBColor = RGBColor(160, 160, 160);
const MEAN_BLUE: RGBColor = RGBColor(31, 119, 180);
const SEGMENT_GREEN: RGBColor = RGBColor(44, 160, 44);
const CHANGE_RED: RGBColor = RGBColor(214, 39, 40);

/// Writes every series of `h` as `DIR/<workload>-<class>-<metric>.svg`;
/// returns the paths.
pub fn write_all(h: &History, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for s in &h.series {
        let path = dir.join(file_name(s));
        let svg = render(s).with_context(|| format!("plotting {}", path.display()))?;
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// A file name from the workload's name (anything but letters, digits, `-`,
/// `_` and `.` becomes `_`), the class and the metric.
pub fn file_name(s: &Series) -> String {
    let safe: String = s
        .workload
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}-{}-{}.svg", s.class_hash, s.metric)
}

/// Each segment between change points: [start, end) and its mean.
fn segment_means(s: &Series) -> Vec<(usize, usize, f64)> {
    let n = s.points.len();
    let cps = &s.change_points;
    if cps.is_empty() {
        let values: Vec<f64> = s.points.iter().map(|p| p.value).collect();
        let mean = crate::stats::mean(&values);
        return vec![(0, n, mean)];
    }
    let mut out = Vec::new();
    let mut start = 0;
    for c in cps {
        out.push((start, c.index, c.shift.mean_before));
        start = c.index;
    }
    if let Some(last) = cps.last() {
        out.push((start, n, last.shift.mean_after));
    }
    out
}

fn draw_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the SVG: {e:?}")
}

/// The plot of one series as SVG text.
pub fn render(s: &Series) -> anyhow::Result<String> {
    let n = s.points.len();
    let values = s
        .points
        .iter()
        .flat_map(|p| p.trials.iter().chain([&p.value]));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    });
    let pad = if hi > lo {
        (hi - lo) * 0.12
    } else {
        hi.abs().max(1.0) * 0.05
    };
    let (y0, y1) = (lo - pad, hi + pad);
    let labels: Vec<String> = s
        .points
        .iter()
        .map(|p| short_commit(p.commit.as_deref()).chars().take(7).collect())
        .collect();

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let direction = match s.higher_is_better {
            Some(true) => ", higher is better",
            Some(false) => ", lower is better",
            None => "",
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{} · {} ({}{direction}) · class {}",
                    s.workload, s.metric, s.unit, s.class_hash
                ),
                ("sans-serif", 18),
            )
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), y0..y1)
            .map_err(draw_error)?;
        let label_at = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                labels[i as usize].clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_labels(n.min(16))
            .x_label_formatter(&label_at)
            .x_desc("commit of each run, oldest first")
            .y_desc(s.unit.as_str())
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(draw_error)?;

        chart
            .draw_series(s.points.iter().enumerate().flat_map(|(i, p)| {
                p.trials
                    .iter()
                    .map(move |&v| Circle::new((i as f64, v), 2, GREY.filled()))
            }))
            .map_err(draw_error)?;
        chart
            .draw_series(LineSeries::new(
                s.points
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (i as f64, p.value)),
                MEAN_BLUE.stroke_width(2),
            ))
            .map_err(draw_error)?;
        chart
            .draw_series(
                s.points
                    .iter()
                    .enumerate()
                    .map(|(i, p)| Circle::new((i as f64, p.value), 3, MEAN_BLUE.filled())),
            )
            .map_err(draw_error)?;
        for (start, end, mean) in segment_means(s) {
            chart
                .draw_series(LineSeries::new(
                    [(start as f64 - 0.4, mean), (end as f64 - 0.6, mean)],
                    SEGMENT_GREEN.stroke_width(2),
                ))
                .map_err(draw_error)?;
        }
        for c in &s.change_points {
            let x = c.index as f64 - 0.5;
            chart
                .draw_series(LineSeries::new(
                    [(x, y0), (x, y1)],
                    CHANGE_RED.stroke_width(2),
                ))
                .map_err(draw_error)?;
            let size = c
                .shift
                .relative_change
                .map_or_else(String::new, |r| format!(" {}", signed(r)));
            let label = format!(
                "{}{size} (p {:.3})",
                short_commit(c.commit.as_deref()),
                c.p_value
            );
            chart
                .draw_series(std::iter::once(Text::new(
                    label,
                    (x, y1 - (y1 - y0) * 0.03),
                    ("sans-serif", 13).into_font().color(&CHANGE_RED),
                )))
                .map_err(draw_error)?;
        }
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}
