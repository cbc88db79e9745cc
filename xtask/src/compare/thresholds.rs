//! Practical thresholds: the smallest relative change worth a verdict.
//! Defaults per metric kind; a workload spec may override them with
//! `thresholds = { output_throughput = 0.05, latency_tail = 0.2 }` (keys are
//! metric names or kind names, values fractions).

use std::collections::BTreeMap;

use thiserror::Error;

use crate::run_record::{metric_def, MetricDef, MetricKind};

pub const THROUGHPUT: f64 = 0.02;
pub const LATENCY_CENTRAL: f64 = 0.03;
pub const LATENCY_TAIL: f64 = 0.10;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum ThresholdError {
    #[error(
        "workload `{workload}`: `thresholds` must be a table of metric or kind names to fractions"
    )]
    NotATable { workload: String },
    #[error("workload `{workload}`: thresholds.{key}: unknown metric or kind (kinds: throughput, latency_central, latency_tail)")]
    UnknownKey { workload: String, key: String },
    #[error("workload `{workload}`: thresholds.{key} = {value}: must be a fraction in (0, 1), e.g. 0.05 for 5%")]
    OutOfRange {
        workload: String,
        key: String,
        value: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds {
    by_metric: BTreeMap<String, f64>,
    by_kind: BTreeMap<String, f64>,
}

fn kind_name(kind: MetricKind) -> &'static str {
    match kind {
        MetricKind::Throughput => "throughput",
        MetricKind::LatencyCentral => "latency_central",
        MetricKind::LatencyTail => "latency_tail",
        MetricKind::Info => "info",
    }
}

pub fn default_for(kind: MetricKind) -> Option<f64> {
    match kind {
        MetricKind::Throughput => Some(THROUGHPUT),
        MetricKind::LatencyCentral => Some(LATENCY_CENTRAL),
        MetricKind::LatencyTail => Some(LATENCY_TAIL),
        MetricKind::Info => None,
    }
}

impl Thresholds {
    /// Reads the `thresholds` field of a resolved workload spec (absent = defaults).
    pub fn from_spec(workload: &str, spec: &serde_json::Value) -> Result<Self, ThresholdError> {
        let mut out = Thresholds::default();
        let Some(table) = spec.get("thresholds") else {
            return Ok(out);
        };
        if table.is_null() {
            return Ok(out);
        }
        let map = table.as_object().ok_or_else(|| ThresholdError::NotATable {
            workload: workload.to_string(),
        })?;
        for (key, value) in map {
            let fraction = value
                .as_f64()
                .filter(|v| *v > 0.0 && *v < 1.0)
                .ok_or_else(|| ThresholdError::OutOfRange {
                    workload: workload.to_string(),
                    key: key.clone(),
                    value: value.to_string(),
                })?;
            let is_kind = ["throughput", "latency_central", "latency_tail"].contains(&key.as_str());
            let judged_metric = metric_def(key).is_some_and(|d| d.kind != MetricKind::Info);
            if is_kind {
                out.by_kind.insert(key.clone(), fraction);
            } else if judged_metric {
                out.by_metric.insert(key.clone(), fraction);
            } else {
                return Err(ThresholdError::UnknownKey {
                    workload: workload.to_string(),
                    key: key.clone(),
                });
            }
        }
        Ok(out)
    }

    /// The threshold for a metric, or None for metrics that are not judged.
    pub fn for_metric(&self, def: &MetricDef) -> Option<f64> {
        let default = default_for(def.kind)?;
        Some(
            self.by_metric
                .get(def.name)
                .or_else(|| self.by_kind.get(kind_name(def.kind)))
                .copied()
                .unwrap_or(default),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str) -> MetricDef {
        metric_def(name).unwrap()
    }

    #[test]
    fn defaults_by_kind() {
        let t = Thresholds::default();
        assert_eq!(t.for_metric(&def("output_throughput")), Some(0.02));
        assert_eq!(t.for_metric(&def("p50_ttft_ms")), Some(0.03));
        assert_eq!(t.for_metric(&def("p99_itl_ms")), Some(0.10));
        assert_eq!(t.for_metric(&def("peak_memory_bytes")), None);
    }

    #[test]
    fn metric_overrides_beat_kind_overrides() {
        let spec = serde_json::json!({"thresholds": {"latency_tail": 0.2, "p99_ttft_ms": 0.3}});
        let t = Thresholds::from_spec("w", &spec).unwrap();
        assert_eq!(t.for_metric(&def("p99_ttft_ms")), Some(0.3));
        assert_eq!(t.for_metric(&def("p95_ttft_ms")), Some(0.2));
        assert_eq!(t.for_metric(&def("output_throughput")), Some(0.02));
    }

    #[test]
    fn bad_overrides_name_the_field() {
        let e = Thresholds::from_spec("w", &serde_json::json!({"thresholds": {"p99_foo": 0.1}}))
            .unwrap_err();
        assert!(e.to_string().contains("thresholds.p99_foo"), "{e}");
        let e = Thresholds::from_spec("w", &serde_json::json!({"thresholds": {"p99_ttft_ms": 5}}))
            .unwrap_err();
        assert!(e.to_string().contains("thresholds.p99_ttft_ms = 5"), "{e}");
        let e = Thresholds::from_spec(
            "w",
            &serde_json::json!({"thresholds": {"mean_batch_size": 0.1}}),
        )
        .unwrap_err();
        assert!(matches!(e, ThresholdError::UnknownKey { .. }));
        assert!(Thresholds::from_spec("w", &serde_json::json!({"thresholds": 3})).is_err());
    }
}
