//! SVG plots of a sweep (plotters, SVG backend only): latency p50/p99 and
//! throughput against concurrency and against request rate, goodput against
//! rate with the SLO capacity marked, step time against batch size with the
//! B_sat fit and its interval, and the Pareto front of output tok/s per GPU
//! against tok/s per user (vLLM's `plot_pareto` axes). Error bars are ± one
//! stdev across trials.

use std::collections::BTreeMap;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::store::Store;
use crate::sweep::results::PointResult;
use crate::sweep::SweepOutcome;

/// One rendered plot.
#[derive(Debug, Clone)]
pub struct Plot {
    /// File stem (`<name>.svg`) and HTML anchor.
    pub name: String,
    pub title: String,
    pub svg: String,
}

const SIZE: (u32, u32) = (760, 440);

/// A series: a name and (x, y, y stdev) points, sorted by x.
struct Series {
    name: String,
    points: Vec<(f64, f64, f64)>,
    dashed: bool,
    /// Palette index: series of one group (its p50 and p99) share a colour.
    color: usize,
}

struct Chart<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    log_x: bool,
    series: Vec<Series>,
    /// Vertical markers: (x, label).
    markers: Vec<(f64, String)>,
    /// A shaded x interval: (from, to, label).
    band: Option<(f64, f64, String)>,
    /// Extra curve drawn as a line without points (a fit).
    curve: Option<Series>,
}

/// Every plot the outcome has data for.
pub fn render_all(outcome: &SweepOutcome, store: &Store) -> anyhow::Result<Vec<Plot>> {
    let _ = store;
    let mut plots = Vec::new();
    for (load, x_label, log_x) in [
        ("concurrency", "concurrency (requests in flight)", true),
        ("rate", "request rate (req/s)", false),
    ] {
        let groups = groups_by_load(outcome, load);
        if groups.is_empty() {
            continue;
        }
        for (metric, label) in [("ttft", "TTFT"), ("tpot", "TPOT"), ("e2el", "E2E latency")] {
            let mut series = Vec::new();
            for (group, points) in &groups {
                for (q, dashed) in [("p50", false), ("p99", true)] {
                    series.push(series_of(
                        &format!("{q} {group}"),
                        points,
                        load,
                        &format!("{q}_{metric}_ms"),
                        dashed,
                    ));
                }
            }
            let title = format!("{label} p50/p99 vs {load}");
            plots.push(plot(
                &format!("latency-{metric}-vs-{load}"),
                &Chart {
                    title: &title,
                    x_label,
                    y_label: &format!("{label} (ms)"),
                    log_x,
                    series,
                    markers: vec![],
                    band: None,
                    curve: None,
                },
            )?);
        }
        let series = groups
            .iter()
            .enumerate()
            .map(|(g, (group, points))| {
                let mut s = series_of(group, points, load, "output_throughput", false);
                s.color = g;
                s
            })
            .collect();
        let title = format!("output throughput vs {load}");
        plots.push(plot(
            &format!("throughput-vs-{load}"),
            &Chart {
                title: &title,
                x_label,
                y_label: "output tok/s",
                log_x,
                series,
                markers: vec![],
                band: None,
                curve: None,
            },
        )?);
    }
    for e in &outcome.experiments {
        for (i, cap) in e.capacity.iter().enumerate() {
            let mut points: Vec<(f64, f64, f64)> = cap
                .probes
                .iter()
                .filter_map(|p| {
                    p.goodput
                        .map(|g| (p.load, g, stdev_of(outcome, &p.point_id, "request_goodput")))
                })
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut offered: Vec<(f64, f64, f64)> = cap
                .probes
                .iter()
                .filter_map(|p| {
                    p.request_throughput.map(|t| {
                        (
                            p.load,
                            t,
                            stdev_of(outcome, &p.point_id, "request_throughput"),
                        )
                    })
                })
                .collect();
            offered.sort_by(|a, b| a.0.total_cmp(&b.0));
            let markers = cap
                .best
                .iter()
                .map(|b| (b.load, format!("capacity {:.3}", b.load)))
                .collect();
            let (axis, x_label) = match cap.search {
                workloads::sweep::SearchAxis::Rate => ("rate", "offered request rate (req/s)"),
                workloads::sweep::SearchAxis::Concurrency => ("concurrency", "concurrency"),
            };
            let title = format!(
                "goodput vs {axis} ({}, SLO attainment {:.0}%)",
                e.name,
                cap.target * 100.0
            );
            plots.push(plot(
                &format!("goodput-{}-{}", e.name, i + 1),
                &Chart {
                    title: &title,
                    x_label,
                    y_label: "req/s",
                    log_x: false,
                    series: vec![
                        Series {
                            name: "goodput (requests meeting every SLO)".into(),
                            points,
                            dashed: false,
                            color: 0,
                        },
                        Series {
                            name: "request throughput".into(),
                            points: offered,
                            dashed: true,
                            color: 1,
                        },
                    ],
                    markers,
                    band: None,
                    curve: None,
                },
            )?);
        }
        if let Some(Ok(fit)) = &e.bsat {
            let measured = Series {
                name: "median decode step".into(),
                points: fit
                    .points
                    .iter()
                    .map(|p| (f64::from(p.batch_size), p.median_step_ms, 0.0))
                    .collect(),
                dashed: false,
                color: 0,
            };
            let lo = fit
                .points
                .first()
                .map(|p| f64::from(p.batch_size))
                .unwrap_or(1.0);
            let hi = fit
                .points
                .last()
                .map(|p| f64::from(p.batch_size))
                .unwrap_or(lo);
            let curve = Series {
                name: "hinge fit".into(),
                points: (0..=100)
                    .map(|i| {
                        let b = lo * (hi / lo).powf(f64::from(i) / 100.0);
                        (b, fit.step_ms(b), 0.0)
                    })
                    .collect(),
                dashed: true,
                color: 1,
            };
            let title = format!("decode step time vs batch size ({})", e.name);
            plots.push(plot(
                &format!("bsat-{}", e.name),
                &Chart {
                    title: &title,
                    x_label: "batch size (sequences)",
                    y_label: "step time (ms)",
                    log_x: true,
                    series: vec![measured],
                    markers: vec![
                        (fit.b_sat, format!("B_sat {:.0}", fit.b_sat)),
                        (f64::from(fit.b_opt), format!("B_opt {}", fit.b_opt)),
                    ],
                    band: Some((fit.b_sat_ci.0, fit.b_sat_ci.1, "B_sat 95% CI".into())),
                    curve: Some(curve),
                },
            )?);
        }
    }
    if let Some(p) = pareto(outcome)? {
        plots.push(p);
    }
    Ok(plots)
}

fn stdev_of(outcome: &SweepOutcome, point: &str, metric: &str) -> f64 {
    outcome
        .point(point)
        .and_then(|p| p.metrics.get(metric))
        .map(|s| s.stdev)
        .unwrap_or(0.0)
}

/// Done points that have `load` among their axes, grouped by experiment
/// and the rest of their label.
fn groups_by_load<'a>(
    outcome: &'a SweepOutcome,
    load: &str,
) -> BTreeMap<String, Vec<&'a PointResult>> {
    let mut groups: BTreeMap<String, Vec<&PointResult>> = BTreeMap::new();
    for p in outcome.points.iter().filter(|p| p.record.is_done()) {
        if !p.record.axes.contains_key(load) {
            continue;
        }
        let rest: Vec<&str> = p
            .record
            .label
            .split('.')
            .filter(|part| !part.starts_with(&format!("{load}-")) && *part != "throughput")
            .collect();
        let key = if rest.is_empty() {
            p.record.experiment.clone()
        } else {
            format!("{} {}", p.record.experiment, rest.join(" "))
        };
        groups.entry(key).or_default().push(p);
    }
    groups.retain(|_, v| v.len() >= 2);
    groups
}

fn series_of(
    name: &str,
    points: &[&PointResult],
    load: &str,
    metric: &str,
    dashed: bool,
) -> Series {
    let mut out: Vec<(f64, f64, f64)> = points
        .iter()
        .filter_map(|p| {
            let x = p.record.axes.get(load)?.as_f64()?;
            let s = p.metrics.get(metric)?;
            Some((x, s.mean, s.stdev))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Series {
        name: name.to_string(),
        points: out,
        dashed,
        color: 0,
    }
}

/// Output tok/s per GPU against output tok/s per user (1000 / mean TPOT),
/// every done point, with the front (no point better on both) joined.
fn pareto(outcome: &SweepOutcome) -> anyhow::Result<Option<Plot>> {
    let mut all: Vec<(f64, f64, f64)> = outcome
        .points
        .iter()
        .filter(|p| p.record.is_done())
        .filter_map(|p| {
            let tpot = p.mean("mean_tpot_ms").filter(|t| *t > 0.0)?;
            let tps = p.metrics.get("output_tps_per_gpu")?;
            Some((1000.0 / tpot, tps.mean, tps.stdev))
        })
        .collect();
    if all.len() < 2 {
        return Ok(None);
    }
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    // Walking from the fastest per user down, a point is on the front when
    // its per-GPU throughput beats every point faster per user.
    let mut front = Vec::new();
    let mut best = f64::NEG_INFINITY;
    for p in &all {
        if p.1 > best {
            front.push(*p);
            best = p.1;
        }
    }
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(Some(plot(
        "pareto",
        &Chart {
            title: "Pareto front: output tok/s per GPU vs tok/s per user",
            x_label: "output tok/s per user (1000 / mean TPOT ms)",
            y_label: "output tok/s per GPU",
            log_x: false,
            series: vec![Series {
                name: "points".into(),
                points: all,
                dashed: false,
                color: 0,
            }],
            markers: vec![],
            band: None,
            curve: Some(Series {
                name: "Pareto front".into(),
                points: front,
                dashed: false,
                color: 0,
            }),
        },
    )?))
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn plot(name: &str, chart: &Chart) -> anyhow::Result<Plot> {
    let mut svg = String::new();
    draw(&mut svg, chart).map_err(|e| anyhow::anyhow!("drawing plot {name}: {e}"))?;
    Ok(Plot {
        name: name.to_string(),
        title: chart.title.to_string(),
        svg,
    })
}

fn draw(svg: &mut String, c: &Chart) -> Result<(), Box<dyn std::error::Error>> {
    let all: Vec<(f64, f64, f64)> = c
        .series
        .iter()
        .chain(c.curve.iter())
        .flat_map(|s| s.points.iter().copied())
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    let mut xs: Vec<f64> = all
        .iter()
        .map(|p| p.0)
        .chain(c.markers.iter().map(|m| m.0))
        .collect();
    if let Some((a, b, _)) = &c.band {
        xs.extend([*a, *b]);
    }
    let (mut x0, mut x1) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let y1 = all.iter().map(|p| p.1 + p.2).fold(0.0f64, f64::max);
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(c.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64);
    let style = |i: usize| PALETTE[i % PALETTE.len()];
    macro_rules! body {
        ($chart:ident) => {{
            $chart
                .configure_mesh()
                .x_desc(c.x_label)
                .y_desc(c.y_label)
                .light_line_style(RGBColor(235, 235, 235))
                .draw()?;
            if let Some((a, b, label)) = &c.band {
                $chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(*a, 0.0), (*b, y1)],
                        RGBColor(255, 200, 120).mix(0.3).filled(),
                    )))?
                    .label(label.clone())
                    .legend(|(x, y)| {
                        Rectangle::new(
                            [(x, y - 5), (x + 12, y + 5)],
                            RGBColor(255, 200, 120).filled(),
                        )
                    });
            }
            for s in &c.series {
                let color = style(s.color);
                let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0, p.1)).collect();
                let line_style = if s.dashed {
                    color.mix(0.6).stroke_width(1)
                } else {
                    color.stroke_width(2)
                };
                $chart
                    .draw_series(LineSeries::new(pts.clone(), line_style))?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
                $chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
                $chart.draw_series(s.points.iter().filter(|p| p.2 > 0.0).map(|p| {
                    PathElement::new(
                        vec![(p.0, (p.1 - p.2).max(0.0)), (p.0, p.1 + p.2)],
                        color.stroke_width(1),
                    )
                }))?;
            }
            if let Some(curve) = &c.curve {
                let pts: Vec<(f64, f64)> = curve.points.iter().map(|p| (p.0, p.1)).collect();
                $chart
                    .draw_series(LineSeries::new(pts, BLACK.stroke_width(1)))?
                    .label(curve.name.clone())
                    .legend(|(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(1))
                    });
            }
            for (i, (x, label)) in c.markers.iter().enumerate() {
                $chart.draw_series(std::iter::once(PathElement::new(
                    vec![(*x, 0.0), (*x, y1)],
                    RED.stroke_width(1),
                )))?;
                $chart.draw_series(std::iter::once(Text::new(
                    label.clone(),
                    // Right-aligned, left of its line: a marker at the
                    // right edge keeps its label inside the plot; markers
                    // step down so two close ones do not overlap.
                    (*x, y1 * (0.95 - 0.07 * i as f64)),
                    ("sans-serif", 12)
                        .into_font()
                        .color(&RED)
                        .pos(Pos::new(HPos::Right, VPos::Top)),
                )))?;
            }
            $chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()?;
        }};
    }
    if c.log_x && x0 > 0.0 {
        let mut chart = builder.build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), 0.0..y1)?;
        body!(chart);
    } else {
        let pad = (x1 - x0) * 0.05;
        let mut chart = builder.build_cartesian_2d((x0 - pad).max(0.0)..x1 + pad, 0.0..y1)?;
        body!(chart);
    }
    root.present()?;
    Ok(())
}
