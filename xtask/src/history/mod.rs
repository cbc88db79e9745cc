//! `cargo xtask history`: each headline metric of a fingerprint class over
//! the stored runs (oldest first), its change points, the commit where each
//! shift began with its size and confidence, and SVG trend plots.
//!
//! series (store → one value per run) → edivisive (change points) → shift
//! (size and interval) → report (terminal, Markdown, JSON) and plot (SVG);
//! `commands::history` wires it to the flags.

pub mod edivisive;
pub mod plot;
pub mod report;
pub mod series;
pub mod shift;

use serde::{Deserialize, Serialize};

use edivisive::{detect, DetectConfig};
use series::Point;
use shift::Shift;

/// Whether a shift is good or bad news for the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Regression,
    Improvement,
    /// An info metric, or a metric without a better direction.
    Change,
}

/// A change point with what it means: where, how much, how sure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeReport {
    /// Index of the first point at the new level.
    pub index: usize,
    /// The first run at the new level and its commit: the shift began in a
    /// commit after `previous_commit`, up to and including this one.
    pub run_id: String,
    pub commit: Option<String>,
    pub created_at: String,
    /// The last run at the old level.
    pub previous_commit: Option<String>,
    pub previous_created_at: String,
    pub shift: Shift,
    /// Permutation p-value of the split.
    pub p_value: f64,
    /// The e-divisive statistic of the split.
    pub q: f64,
    pub direction: Direction,
}

/// One metric of one class over its runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub workload: String,
    pub class_hash: String,
    pub model: String,
    pub metric: String,
    pub unit: String,
    pub higher_is_better: Option<bool>,
    pub points: Vec<Point>,
    pub change_points: Vec<ChangeReport>,
    /// Why change points were not searched for, when they were not.
    pub not_searched: Option<String>,
}

/// Everything `history` found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub config: DetectConfig,
    /// How points are ordered.
    pub order: String,
    pub series: Vec<Series>,
    /// What was left out, and why.
    pub notes: Vec<String>,
}

impl History {
    pub fn change_point_count(&self) -> usize {
        self.series.iter().map(|s| s.change_points.len()).sum()
    }
}

/// What a series is before analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesInput {
    pub workload: String,
    pub class_hash: String,
    pub model: String,
    pub metric: String,
    pub points: Vec<Point>,
}

/// Finds the change points of a series and sizes each shift.
pub fn analyze(input: SeriesInput, config: &DetectConfig) -> Series {
    let def = crate::run_record::metric_def(&input.metric);
    let higher_is_better = def
        .filter(|d| d.kind != crate::run_record::MetricKind::Info)
        .map(|d| d.higher_is_better);
    let values: Vec<f64> = input.points.iter().map(|p| p.value).collect();
    let min_points = edivisive::min_runs(config);
    let not_searched = (values.len() < min_points).then(|| {
        format!(
            "{} runs; a change point at α = {} needs at least {min_points}",
            values.len(),
            config.alpha
        )
    });
    let found = if not_searched.is_some() {
        Vec::new()
    } else {
        detect(&values, config)
    };
    let mut bounds: Vec<usize> = vec![0];
    bounds.extend(found.iter().map(|c| c.index));
    bounds.push(values.len());
    let change_points = found
        .iter()
        .enumerate()
        .map(|(k, cp)| {
            // Segment k is [bounds[k], bounds[k+1]); this change point ends it.
            let before = &values[bounds[k]..cp.index];
            let after = &values[cp.index..bounds[k + 2]];
            let shift = shift::shift(before, after);
            let first = &input.points[cp.index];
            let previous = &input.points[cp.index - 1];
            let direction = match (higher_is_better, shift.mean_after > shift.mean_before) {
                (None, _) => Direction::Change,
                (Some(up_good), went_up) if up_good == went_up => Direction::Improvement,
                _ => Direction::Regression,
            };
            ChangeReport {
                index: cp.index,
                run_id: first.run_id.clone(),
                commit: first.commit.clone(),
                created_at: first.created_at.clone(),
                previous_commit: previous.commit.clone(),
                previous_created_at: previous.created_at.clone(),
                shift,
                p_value: cp.p_value,
                q: cp.q,
                direction,
            }
        })
        .collect();
    Series {
        workload: input.workload,
        class_hash: input.class_hash,
        model: input.model,
        unit: def.map_or("", |d| d.unit).to_string(),
        metric: input.metric,
        higher_is_better,
        points: input.points,
        change_points,
        not_searched,
    }
}
