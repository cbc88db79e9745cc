//! Where the wall time of replayed decode steps goes, on the host's clock:
//! the GPU is idle from the moment a step's sync returns until the next
//! step's graph is launched (the engine finishes the step and schedules the
//! next one; the backend packs and uploads its metadata), and busy from the
//! launch until the sync returns. The split says whether the host's share
//! is worth cutting or overlapping before anyone builds it. One line per
//! graph bucket on stderr when the backend is dropped (a trial's
//! `engine.log`), since the host's work grows with the batch.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Host-clock spans of one replayed decode step.
#[derive(Debug, Clone, Copy)]
struct StepSpans {
    /// Previous forward's return → this forward's start (the engine:
    /// finishing the last step, scheduling this one).
    engine: Duration,
    /// Forward's start → graph launch (pack and upload).
    pack: Duration,
    /// Graph launch → sync returned.
    device: Duration,
}

#[derive(Debug, Default)]
pub struct StepGaps {
    /// When the previous forward pass returned (any kind of step).
    last_return: Option<Instant>,
    /// When the running step's forward pass began.
    entered: Option<Instant>,
    /// The running step's graph bucket and when it was launched.
    launched: Option<(usize, Instant)>,
    /// Replayed steps by graph bucket: the latest `KEPT` of each (a
    /// ring, so that a long-lived server's memory stays bounded), and how
    /// many there were.
    by_bucket: BTreeMap<usize, (Vec<StepSpans>, u64)>,
}

/// Steps kept per bucket for the summary (48 bytes each).
const KEPT: usize = 1 << 16;

impl StepGaps {
    pub fn forward_begins(&mut self) {
        self.entered = Some(Instant::now());
        self.launched = None;
    }

    pub fn graph_launching(&mut self, bucket: usize) {
        self.launched = Some((bucket, Instant::now()));
    }

    /// The forward pass synced. Counted: steps that replayed a graph right
    /// after another forward pass.
    pub fn forward_returns(&mut self) {
        let now = Instant::now();
        if let (Some(prev), Some(entered), Some((bucket, launched))) =
            (self.last_return, self.entered, self.launched)
        {
            let spans = StepSpans {
                engine: entered.saturating_duration_since(prev),
                pack: launched.saturating_duration_since(entered),
                device: now.saturating_duration_since(launched),
            };
            let (kept, seen) = self.by_bucket.entry(bucket).or_default();
            if kept.len() < KEPT {
                kept.push(spans);
            } else {
                kept[(*seen % KEPT as u64) as usize] = spans;
            }
            *seen += 1;
        }
        self.last_return = Some(now);
        self.entered = None;
        self.launched = None;
    }

    /// One line per bucket with counted steps, smallest bucket first.
    pub fn summary(&self) -> Vec<String> {
        self.by_bucket
            .iter()
            .map(|(bucket, (steps, seen))| {
                let engine = Spans::of(steps.iter().map(|s| s.engine));
                let pack = Spans::of(steps.iter().map(|s| s.pack));
                let device = Spans::of(steps.iter().map(|s| s.device));
                let idle = engine.mean_us + pack.mean_us;
                let wall = idle + device.mean_us;
                format!(
                    "decode graph bucket {bucket}: {seen} steps{}; GPU idle {idle:.0} µs a step \
                     ({:.1} % of {wall:.0} µs): engine {engine} + pack/upload {pack}; launch to \
                     sync {device} (mean, p50 … p99)",
                    if *seen > steps.len() as u64 {
                        format!(" (the last {} of them below)", steps.len())
                    } else {
                        String::new()
                    },
                    100.0 * idle / wall,
                )
            })
            .collect()
    }
}

/// Mean and nearest-rank percentiles of a set of spans, in µs.
#[derive(Debug, PartialEq)]
struct Spans {
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Spans {
    /// Of a non-empty set.
    fn of(spans: impl Iterator<Item = Duration>) -> Spans {
        let mut us: Vec<f64> = spans.map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p / 100.0) * us.len() as f64).ceil() as usize;
            us[i.clamp(1, us.len()) - 1]
        };
        Spans {
            mean_us: us.iter().sum::<f64>() / us.len() as f64,
            p50_us: rank(50.0),
            p99_us: rank(99.0),
        }
    }
}

impl std::fmt::Display for Spans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} µs ({:.0} … {:.0})",
            self.mean_us, self.p50_us, self.p99_us
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_mean_and_nearest_rank_percentiles() {
        let s = Spans::of((1..=100).map(Duration::from_micros));
        assert!((s.mean_us - 50.5).abs() < 1e-9);
        assert_eq!(s.p50_us, 50.0);
        assert_eq!(s.p99_us, 99.0);
    }

    #[test]
    fn only_replayed_steps_after_another_step_are_counted_per_bucket() {
        let mut g = StepGaps::default();
        // First forward: no previous return, not counted.
        g.forward_begins();
        g.graph_launching(8);
        g.forward_returns();
        // An eager step (no launch): not counted.
        g.forward_begins();
        g.forward_returns();
        assert!(g.summary().is_empty());
        for bucket in [8, 1024, 8] {
            g.forward_begins();
            g.graph_launching(bucket);
            g.forward_returns();
        }
        let lines = g.summary();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("decode graph bucket 8: 2 steps;"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("decode graph bucket 1024: 1 steps;"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_bucket_keeps_its_latest_steps_and_counts_them_all() {
        let mut g = StepGaps::default();
        for _ in 0..=KEPT {
            g.forward_begins();
            g.graph_launching(4);
            g.forward_returns();
        }
        // The first forward is not counted (no previous return).
        let (kept, seen) = &g.by_bucket[&4];
        assert_eq!((kept.len(), *seen), (KEPT, KEPT as u64));
        g.forward_begins();
        g.graph_launching(4);
        g.forward_returns();
        let lines = g.summary();
        let want = format!(
            "decode graph bucket 4: {} steps (the last {KEPT} of them below);",
            KEPT + 1
        );
        assert!(lines[0].starts_with(&want), "{lines:?}");
    }
}
