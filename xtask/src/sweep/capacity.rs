//! SLO capacity: the highest load (request rate or concurrency) at which
//! the target fraction of requests meets every SLO.
//!
//! A probe passes when the Wilson 95 % interval of its attainment (requests
//! meeting every SLO / completed requests, all trials pooled) lies wholly at
//! or above the target — a lucky small sample cannot pass. An open-loop
//! probe whose queue grows without bound (oversaturated: the server serves
//! fewer requests than arrive) fails whatever its attainment. The search
//! probes exponentially from `start` (doubling while probes pass, halving
//! while they fail) and then bisects the bracket until it is narrower than
//! `precision` of its lower end (or 1 for concurrency), in at most
//! `max_probes` probes. The result is deterministic given the measurements,
//! so a resumed sweep walks the same probes and finds them in the ledger.

use serde::Serialize;
use workloads::spec::Slo;
use workloads::sweep::{CapacitySearch, SearchAxis};
use workloads::{RecordStatus, RequestRecord};

/// z for a two-sided 95 % interval.
const Z95: f64 = 1.959_963_984_540_054;

/// Queue delay growing by more than this many seconds per second of
/// arrivals means the server keeps up with less than 90 % of the offered
/// load: the queue grows without bound.
pub const OVERSATURATION_SLOPE: f64 = 0.1;

/// Wilson score interval of `good` successes in `n` trials.
pub fn wilson(good: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = good as f64 / n;
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// How one probe's requests did against the SLOs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attainment {
    pub good: usize,
    /// Completed requests (rejected ones count as not good).
    pub total: usize,
    pub fraction: f64,
    pub wilson: (f64, f64),
    /// Least-squares slope of queue delay against arrival time (s/s).
    pub queue_slope: f64,
}

/// Attainment of `records` under `slo` (vLLM's goodput definitions: TTFT,
/// TPOT over requests with more than one output token, E2E).
pub fn attainment(records: &[RequestRecord], slo: &Slo) -> Attainment {
    let mut good = 0;
    let mut total = 0;
    let mut queue: Vec<(f64, f64)> = Vec::new();
    for r in records {
        total += 1;
        if r.status != RecordStatus::Ok {
            continue;
        }
        let (Some(first), Some(finish)) = (r.first_token_s, r.finish_s) else {
            continue;
        };
        let ttft = (first - r.arrival_s) * 1e3;
        let e2e = (finish - r.arrival_s) * 1e3;
        let tpot = (r.output_len > 1).then(|| (e2e - ttft) / f64::from(r.output_len - 1));
        let ok = slo.ttft_ms.is_none_or(|l| ttft <= l)
            && slo.e2el_ms.is_none_or(|l| e2e <= l)
            && match (slo.tpot_ms, tpot) {
                (Some(l), Some(t)) => t <= l,
                _ => true,
            };
        if ok {
            good += 1;
        }
        if let Some(s) = r.scheduled_s {
            queue.push((r.arrival_s, s - r.arrival_s));
        }
    }
    Attainment {
        good,
        total,
        fraction: if total > 0 {
            good as f64 / total as f64
        } else {
            0.0
        },
        wilson: wilson(good, total),
        queue_slope: slope(&queue),
    }
}

fn slope(xy: &[(f64, f64)]) -> f64 {
    if xy.len() < 2 {
        return 0.0;
    }
    let n = xy.len() as f64;
    let mx = xy.iter().map(|p| p.0).sum::<f64>() / n;
    let my = xy.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = xy.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    let sxy: f64 = xy.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

/// One probe of the search.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Probe {
    /// Offered rate (req/s) or concurrency.
    pub load: f64,
    pub point_id: String,
    pub passed: bool,
    /// Why it failed, when it did.
    pub reason: Option<String>,
    pub attainment: Option<Attainment>,
    pub oversaturated: bool,
    /// Measured at the probe (means over trials), when it ran.
    pub request_throughput: Option<f64>,
    pub output_throughput: Option<f64>,
    pub goodput: Option<f64>,
}

/// What a probe function reports back.
pub enum ProbeResult {
    Measured(Probe),
    /// The probe has not run and may not run here (dry run, report only):
    /// the search stops.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capacity {
    pub search: SearchAxis,
    pub target: f64,
    /// The highest passing probe, if any passed.
    pub best: Option<Probe>,
    /// The lowest failing probe above it, if any.
    pub first_failing: Option<f64>,
    /// Every probe in the order run.
    pub probes: Vec<Probe>,
    /// The search stopped before converging (a probe unknown, or
    /// `max_probes` reached).
    pub complete: bool,
}

/// Applies the pass rule to a measured probe.
pub fn judge(mut probe: Probe, target: f64, open_loop: bool) -> Probe {
    if let Some(a) = &probe.attainment {
        probe.oversaturated = open_loop && a.queue_slope > OVERSATURATION_SLOPE;
        probe.passed = !probe.oversaturated && a.wilson.0 >= target;
        if probe.oversaturated {
            probe.reason = Some(format!(
                "oversaturated: queue delay grows {:.2} s per s",
                a.queue_slope
            ));
        } else if !probe.passed {
            probe.reason = Some(format!(
                "attainment {:.1}% (95% CI {:.1}–{:.1}%) does not clear {:.1}%",
                a.fraction * 100.0,
                a.wilson.0 * 100.0,
                a.wilson.1 * 100.0,
                target * 100.0
            ));
        }
    } else {
        probe.passed = false;
    }
    probe
}

/// Runs the search; `probe(load)` measures (or looks up) one load.
pub fn search(
    spec: &CapacitySearch,
    mut probe: impl FnMut(f64) -> anyhow::Result<ProbeResult>,
) -> anyhow::Result<Capacity> {
    let integer = spec.search == SearchAxis::Concurrency;
    let norm = |x: f64| if integer { x.round().max(1.0) } else { x };
    let mut out = Capacity {
        search: spec.search,
        target: spec.attainment,
        best: None,
        first_failing: None,
        probes: Vec::new(),
        complete: false,
    };
    let mut lo: Option<Probe> = None;
    let mut hi: Option<f64> = None;
    let mut x = norm(spec.start);
    let mut run = |x: f64, out: &mut Capacity| -> anyhow::Result<Option<Probe>> {
        if out.probes.len() >= spec.max_probes as usize {
            return Ok(None);
        }
        match probe(x)? {
            ProbeResult::Measured(p) => {
                out.probes.push(p.clone());
                Ok(Some(p))
            }
            ProbeResult::Unknown => Ok(None),
        }
    };
    // Exponential phase: find a bracket [pass, fail].
    loop {
        let Some(p) = run(x, &mut out)? else {
            out.best = lo;
            out.first_failing = hi;
            return Ok(out);
        };
        if p.passed {
            lo = Some(p);
            if hi.is_some() {
                break;
            }
            x = norm(x * 2.0);
        } else {
            hi = Some(x);
            if lo.is_some() {
                break;
            }
            let down = norm(x / 2.0);
            if down >= x || (integer && x <= 1.0) {
                // Even the lowest load fails: no capacity.
                out.first_failing = hi;
                out.complete = true;
                return Ok(out);
            }
            x = down;
        }
    }
    // Bisection.
    loop {
        let (l, h) = (
            lo.as_ref().map(|p| p.load).unwrap_or(0.0),
            hi.unwrap_or(f64::INFINITY),
        );
        let narrow = if integer {
            h - l <= 1.0
        } else {
            (h - l) / l <= spec.precision
        };
        if narrow {
            out.complete = true;
            break;
        }
        let mid = norm((l + h) / 2.0);
        if mid <= l || mid >= h {
            out.complete = true;
            break;
        }
        let Some(p) = run(mid, &mut out)? else {
            break;
        };
        if p.passed {
            lo = Some(p);
        } else {
            hi = Some(mid);
        }
    }
    out.best = lo;
    out.first_failing = hi;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_known_values() {
        // Reference values from the closed form (e.g. statsmodels' proportion_confint(…, method="wilson")).
        let (lo, hi) = wilson(95, 100);
        assert!(
            (lo - 0.8882).abs() < 1e-3 && (hi - 0.9785).abs() < 1e-3,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(0, 10);
        assert!(lo == 0.0 && (hi - 0.2775).abs() < 1e-3, "{hi}");
        // All 100 good does not clear 99 %: the sample is too small.
        assert!(wilson(100, 100).0 < 0.99);
        assert!(wilson(1000, 1000).0 > 0.99);
    }

    fn measured(load: f64, passed: bool) -> ProbeResult {
        ProbeResult::Measured(Probe {
            load,
            point_id: format!("p{load}"),
            passed,
            reason: None,
            attainment: None,
            oversaturated: false,
            request_throughput: Some(load),
            output_throughput: None,
            goodput: None,
        })
    }

    fn spec(search: SearchAxis, start: f64) -> CapacitySearch {
        CapacitySearch {
            search,
            attainment: 0.99,
            start,
            precision: 0.05,
            max_probes: 20,
        }
    }

    #[test]
    fn converges_on_a_threshold_from_below_and_above() {
        for (start, truth) in [(1.0, 37.0), (100.0, 3.3), (1.0, 0.4)] {
            let cap = search(&spec(SearchAxis::Rate, start), |x| {
                Ok(measured(x, x <= truth))
            })
            .unwrap();
            let best = cap.best.as_ref().unwrap().load;
            assert!(
                best <= truth && best >= truth * 0.94,
                "start {start} truth {truth}: {best}"
            );
            assert!(cap.complete);
            assert!(cap.first_failing.unwrap() > truth);
        }
        let cap = search(&spec(SearchAxis::Concurrency, 1.0), |x| {
            Ok(measured(x, x <= 23.0))
        })
        .unwrap();
        assert_eq!(cap.best.unwrap().load, 23.0);
        assert_eq!(cap.first_failing, Some(24.0));
    }

    #[test]
    fn no_capacity_and_unknown_probes_stop_the_search() {
        let cap = search(&spec(SearchAxis::Concurrency, 4.0), |x| {
            Ok(measured(x, false))
        })
        .unwrap();
        assert!(cap.best.is_none() && cap.complete);
        assert_eq!(
            cap.probes.iter().map(|p| p.load).collect::<Vec<_>>(),
            vec![4.0, 2.0, 1.0]
        );
        let mut n = 0;
        let cap = search(&spec(SearchAxis::Rate, 1.0), |x| {
            n += 1;
            Ok(if n > 2 {
                ProbeResult::Unknown
            } else {
                measured(x, true)
            })
        })
        .unwrap();
        assert!(!cap.complete && cap.probes.len() == 2 && cap.best.unwrap().load == 2.0);
    }

    #[test]
    fn oversaturation_and_small_samples_fail() {
        let mk = |good, total, slope| Probe {
            load: 1.0,
            point_id: "p".into(),
            passed: false,
            reason: None,
            attainment: Some(Attainment {
                good,
                total,
                fraction: good as f64 / total as f64,
                wilson: wilson(good, total),
                queue_slope: slope,
            }),
            oversaturated: false,
            request_throughput: None,
            output_throughput: None,
            goodput: None,
        };
        assert!(judge(mk(1000, 1000, 0.0), 0.99, true).passed);
        assert!(!judge(mk(100, 100, 0.0), 0.99, true).passed);
        let p = judge(mk(1000, 1000, 0.5), 0.99, true);
        assert!(!p.passed && p.oversaturated, "{p:?}");
        assert!(
            judge(mk(1000, 1000, 0.5), 0.99, false).passed,
            "closed loop never oversaturates"
        );
    }
}
