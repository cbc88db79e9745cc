//! A point's numbers: every stored metric and seed 004's derived numbers,
//! each as mean ± stdev across the point's trials, and the choice of a best
//! point by a named objective.

use std::collections::BTreeMap;

use workloads::sweep::Objective;
use workloads::RequestRecord;

use super::ledger::PointRecord;
use crate::report::derived;
use crate::run_record::{metric_def, RunRecord, TrialStatus, WorkloadRun};
use crate::stats::{spread, Spread};
use crate::store::Store;

/// GPUs one point runs on: the engine runs a model on one device. (A
/// multi-GPU launcher that runs data-parallel replicas scales this.)
pub const GPUS_PER_POINT: f64 = 1.0;

/// Seed 004's derived columns, computed per trial from output tok/s.
pub const DERIVED: [&str; 3] = [
    "output_tps_per_gpu",
    "gpu_days_to_process_1b_tokens",
    "gpus_for_1b_tokens_per_hour",
];

/// A metric an objective or a report may name.
pub fn is_known_metric(name: &str) -> bool {
    metric_def(name).is_some() || DERIVED.contains(&name)
}

/// One point with its numbers (empty when it failed or its run is missing).
#[derive(Debug, Clone)]
pub struct PointResult {
    pub record: PointRecord,
    pub metrics: BTreeMap<String, Spread>,
    /// Raw per-trial values, by metric (for reports that want them).
    pub trial_values: BTreeMap<String, Vec<f64>>,
}

impl PointResult {
    pub fn mean(&self, metric: &str) -> Option<f64> {
        self.metrics.get(metric).map(|s| s.mean)
    }

    /// Loads the point's run from the store and summarises its trials.
    pub fn load(store: &Store, record: PointRecord) -> anyhow::Result<PointResult> {
        let mut trial_values = BTreeMap::new();
        if let (true, Some(run_id)) = (record.is_done(), &record.run_id) {
            let run: RunRecord = store.get(run_id)?;
            if let Some(w) = run.workloads.iter().find(|w| w.name == record.workload) {
                trial_values = per_trial(w);
            }
        }
        let metrics = trial_values
            .iter()
            .filter_map(|(k, v)| spread(v).map(|s| (k.clone(), s)))
            .collect();
        Ok(PointResult {
            record,
            metrics,
            trial_values,
        })
    }

    /// The per-request records of every Ok trial, pooled.
    pub fn requests(&self, store: &Store) -> anyhow::Result<Vec<RequestRecord>> {
        let mut out = Vec::new();
        let Some(run_id) = &self.record.run_id else {
            return Ok(out);
        };
        let run: RunRecord = store.get(run_id)?;
        for w in run
            .workloads
            .iter()
            .filter(|w| w.name == self.record.workload)
        {
            for t in w.trials.iter().filter(|t| t.status == TrialStatus::Ok) {
                if let Some(id) = &t.records_object {
                    out.extend(store.get::<Vec<RequestRecord>>(id)?);
                }
            }
        }
        Ok(out)
    }

    /// The step logs of every Ok trial, pooled.
    pub fn steps(&self, store: &Store) -> anyhow::Result<Vec<workloads::StepLogEntry>> {
        let mut out = Vec::new();
        let Some(run_id) = &self.record.run_id else {
            return Ok(out);
        };
        let run: RunRecord = store.get(run_id)?;
        for w in run
            .workloads
            .iter()
            .filter(|w| w.name == self.record.workload)
        {
            for t in w.trials.iter().filter(|t| t.status == TrialStatus::Ok) {
                if let Some(id) = &t.step_log_object {
                    out.extend(store.get::<Vec<workloads::StepLogEntry>>(id)?);
                }
            }
        }
        Ok(out)
    }
}

/// Every metric's value per Ok trial, with the derived ones added.
fn per_trial(w: &WorkloadRun) -> BTreeMap<String, Vec<f64>> {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for t in w.trials.iter().filter(|t| t.status == TrialStatus::Ok) {
        for (k, v) in &t.metrics {
            out.entry(k.clone()).or_default().push(*v);
        }
        if let Some(tps) = t.metrics.get("output_throughput") {
            let d = derived(*tps / GPUS_PER_POINT);
            for (k, v) in DERIVED.iter().zip([
                d.output_tps_per_gpu,
                d.gpu_days_to_process_1b_tokens,
                d.gpus_for_1b_tokens_per_hour,
            ]) {
                out.entry(k.to_string()).or_default().push(v);
            }
        }
    }
    out
}

/// Whether a point meets the objective's constraints (mean of each named
/// metric at most its bound; a missing metric fails).
pub fn feasible(p: &PointResult, objective: &Objective) -> bool {
    p.record.is_done()
        && objective
            .subject_to
            .iter()
            .all(|(m, bound)| p.mean(m).is_some_and(|v| v <= *bound))
}

/// The best done point by the objective among feasible points; ties go to
/// the first.
pub fn best<'a>(points: &'a [PointResult], objective: &Objective) -> Option<&'a PointResult> {
    let mut best: Option<(&PointResult, f64)> = None;
    for p in points.iter().filter(|p| feasible(p, objective)) {
        let Some(v) = p.mean(&objective.metric) else {
            continue;
        };
        let better = match best {
            None => true,
            Some((_, b)) if objective.maximize => v > b,
            Some((_, b)) => v < b,
        };
        if better {
            best = Some((p, v));
        }
    }
    best.map(|(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::ledger::PointStatus;

    fn point(id: &str, tps: f64, p99: f64) -> PointResult {
        let mut metrics = BTreeMap::new();
        for (k, v) in [("output_tps_per_gpu", tps), ("p99_ttft_ms", p99)] {
            metrics.insert(k.to_string(), spread(&[v]).unwrap());
        }
        PointResult {
            record: PointRecord {
                point_id: id.into(),
                sweep: "s".into(),
                experiment: "e".into(),
                tier: 0,
                label: id.into(),
                device: "cpu".into(),
                status: PointStatus::Done,
                run_id: None,
                workload: "w".into(),
                model: None,
                engine: serde_json::json!({}),
                workload_key: "k".into(),
                axes: BTreeMap::new(),
                trials: 1,
                attempts: 1,
                wall_s: 1.0,
                updated_at: String::new(),
            },
            metrics,
            trial_values: BTreeMap::new(),
        }
    }

    #[test]
    fn best_respects_constraints_and_direction() {
        let points = vec![
            point("a", 100.0, 50.0),
            point("b", 300.0, 500.0),
            point("c", 200.0, 90.0),
        ];
        let mut o = Objective {
            name: "o".into(),
            metric: "output_tps_per_gpu".into(),
            maximize: true,
            subject_to: BTreeMap::new(),
        };
        assert_eq!(best(&points, &o).unwrap().record.point_id, "b");
        o.subject_to.insert("p99_ttft_ms".into(), 100.0);
        assert_eq!(best(&points, &o).unwrap().record.point_id, "c");
        o.maximize = false;
        assert_eq!(best(&points, &o).unwrap().record.point_id, "a");
        o.subject_to.insert("p99_ttft_ms".into(), 1.0);
        assert!(best(&points, &o).is_none());
    }

    #[test]
    fn derived_numbers_come_per_trial() {
        let mut w = crate::fixtures::workload(
            "w",
            vec![
                crate::fixtures::ok_trial(0, &[("output_throughput", 1000.0)], "h"),
                crate::fixtures::ok_trial(1, &[("output_throughput", 2000.0)], "h"),
            ],
        );
        w.name = "w".into();
        let v = per_trial(&w);
        assert_eq!(v["output_tps_per_gpu"], vec![1000.0, 2000.0]);
        let days = &v["gpu_days_to_process_1b_tokens"];
        assert!((days[0] - 1e9 / 1000.0 / 86_400.0).abs() < 1e-9);
        assert!(is_known_metric("gpus_for_1b_tokens_per_hour") && is_known_metric("p99_ttft_ms"));
        assert!(!is_known_metric("tokens_per_banana"));
    }
}
