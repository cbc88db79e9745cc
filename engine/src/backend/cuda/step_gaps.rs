//! Where the wall time of replayed decode steps goes: from one step's
//! result (collected on the host) to the next's, the GPU is busy for the
//! span between the events the backend records around the step's work on
//! the stream, and idle for the rest, waiting for the host (finishing a
//! step, scheduling the next, packing and uploading its metadata). With
//! pipelined stepping (`async_scheduling`) the host does that while the
//! previous step runs, and the idle share is what it still fails to hide.
//! One line per graph bucket on stderr when the backend is dropped (a
//! trial's `engine.log`), since the host's work grows with the batch.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Spans of one replayed decode step.
#[derive(Debug, Clone, Copy)]
struct StepSpans {
    /// Host: the step's packing and upload, up to its graph launch.
    pack: Duration,
    /// Host clock: the previous step's result collected → this one's.
    wall: Duration,
    /// GPU clock: the step's events (upload to download).
    busy: Duration,
}

#[derive(Debug, Default)]
pub struct StepGaps {
    /// When the last step's result was collected (any kind of step).
    last_collected: Option<Instant>,
    /// When the most recently enqueued step began packing.
    begun: Option<Instant>,
    /// Replayed steps by graph bucket: the latest `KEPT` of each (a
    /// ring, so that a long-lived server's memory stays bounded), and how
    /// many there were.
    by_bucket: BTreeMap<usize, (Vec<StepSpans>, u64)>,
}

/// Steps kept per bucket for the summary (48 bytes each).
const KEPT: usize = 1 << 16;

impl StepGaps {
    /// A step begins packing.
    pub fn step_begins(&mut self) {
        self.begun = Some(Instant::now());
    }

    /// The step that began last replays the graph of `bucket` now: its
    /// bucket and packing span, for `step_collected`.
    pub fn graph_launching(&mut self, bucket: usize) -> Option<(usize, Duration)> {
        self.begun.take().map(|b| (bucket, b.elapsed()))
    }

    /// A step's result is on the host. `replay`: what `graph_launching`
    /// said for it (None: an eager step, not counted); `busy_ms`: the GPU
    /// time between its events. Counted: replayed steps right after
    /// another step.
    pub fn step_collected(&mut self, replay: Option<(usize, Duration)>, busy_ms: Option<f32>) {
        let now = Instant::now();
        if let (Some(prev), Some((bucket, pack)), Some(busy)) =
            (self.last_collected, replay, busy_ms)
        {
            let spans = StepSpans {
                pack,
                wall: now.saturating_duration_since(prev),
                busy: Duration::from_secs_f64(f64::from(busy.max(0.0)) * 1e-3),
            };
            let (kept, seen) = self.by_bucket.entry(bucket).or_default();
            if kept.len() < KEPT {
                kept.push(spans);
            } else {
                kept[(*seen % KEPT as u64) as usize] = spans;
            }
            *seen += 1;
        }
        self.last_collected = Some(now);
    }

    /// One line per bucket with counted steps, smallest bucket first.
    pub fn summary(&self) -> Vec<String> {
        self.by_bucket
            .iter()
            .map(|(bucket, (steps, seen))| {
                let idle = Spans::of(steps.iter().map(|s| s.wall.saturating_sub(s.busy)));
                let wall = Spans::of(steps.iter().map(|s| s.wall));
                let busy = Spans::of(steps.iter().map(|s| s.busy));
                let pack = Spans::of(steps.iter().map(|s| s.pack));
                format!(
                    "decode graph bucket {bucket}: {seen} steps{}; GPU idle {idle} a step ({:.1} % \
                     of {wall} from one step's result to the next; busy {busy} by the GPU's \
                     events); the host's packing and upload {pack} (mean, p50 … p99)",
                    if *seen > steps.len() as u64 {
                        format!(" (the last {} of them below)", steps.len())
                    } else {
                        String::new()
                    },
                    100.0 * idle.mean_us / wall.mean_us.max(1e-9),
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

    /// A replayed step of `bucket` whose GPU time is `busy_ms`.
    fn replay(g: &mut StepGaps, bucket: usize, busy_ms: f32) {
        g.step_begins();
        let r = g.graph_launching(bucket);
        g.step_collected(r, Some(busy_ms));
    }

    #[test]
    fn only_replayed_steps_after_another_step_are_counted_per_bucket() {
        let mut g = StepGaps::default();
        // First step: no previous result, not counted.
        replay(&mut g, 8, 0.1);
        // An eager step (no graph launch): not counted.
        g.step_begins();
        g.step_collected(None, Some(0.1));
        assert!(g.summary().is_empty());
        for bucket in [8, 1024, 8] {
            replay(&mut g, bucket, 0.0);
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
    fn idle_is_the_wall_time_the_gpu_was_not_busy() {
        let mut g = StepGaps::default();
        replay(&mut g, 4, 0.0);
        std::thread::sleep(Duration::from_millis(20));
        // Busy longer than the wall (a pipelined step that began before
        // the previous result was collected): no idle, not negative.
        replay(&mut g, 4, 1e6);
        let (kept, _) = &g.by_bucket[&4];
        assert!(kept[0].wall >= Duration::from_millis(20));
        assert!(
            g.summary()[0].contains("GPU idle 0 µs (0 … 0)"),
            "{:?}",
            g.summary()
        );
        let mut g = StepGaps::default();
        replay(&mut g, 4, 0.0);
        std::thread::sleep(Duration::from_millis(20));
        replay(&mut g, 4, 0.0);
        let (kept, _) = &g.by_bucket[&4];
        assert_eq!(kept[0].busy, Duration::ZERO);
        assert!(g.summary()[0].contains("(100.0 % of"), "{:?}", g.summary());
    }

    #[test]
    fn a_bucket_keeps_its_latest_steps_and_counts_them_all() {
        let mut g = StepGaps::default();
        for _ in 0..=KEPT {
            replay(&mut g, 4, 0.0);
        }
        // The first step is not counted (no previous result).
        let (kept, seen) = &g.by_bucket[&4];
        assert_eq!((kept.len(), *seen), (KEPT, KEPT as u64));
        replay(&mut g, 4, 0.0);
        let lines = g.summary();
        let want = format!(
            "decode graph bucket 4: {} steps (the last {KEPT} of them below);",
            KEPT + 1
        );
        assert!(lines[0].starts_with(&want), "{lines:?}");
    }
}
