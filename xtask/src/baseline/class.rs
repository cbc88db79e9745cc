//! The fingerprint class: what must match for two measurements of one
//! workload to be comparable at all.
//!
//! It keeps what changes speed by design (GPU model, driver major, CUDA
//! version, host CPU for CPU runs, the model and workload bytes, the engine
//! config and environment switches, the build profile) and leaves out what
//! changes on every run or is the thing under test (commit, binary hash,
//! clocks, GPU UUID).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::run_record::{Fingerprint, WorkloadRun};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FingerprintClass {
    pub workload: String,
    /// "cpu" or "cuda".
    pub device: String,
    pub gpu_model: Option<String>,
    pub driver_major: Option<String>,
    pub cuda_version: Option<String>,
    /// Only for CPU runs: on a GPU run the host CPU is not the bottleneck we
    /// measure, and CI runners of one GPU model differ in CPU.
    pub host_cpu: Option<String>,
    pub model_hash: String,
    pub workload_hash: String,
    pub engine_config: serde_json::Value,
    pub build_profile: String,
    /// HTTP runs: the kind of server and whether it streamed. In-process
    /// runs have none (and so keep their class hashes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The engine's environment switches (absent when none: classes of
    /// runs made without any keep their hashes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub engine_env: BTreeMap<String, String>,
}

impl FingerprintClass {
    pub fn of(fingerprint: &Fingerprint, workload: &WorkloadRun) -> Self {
        let gpu = fingerprint.gpus.first();
        let on_gpu = fingerprint.device != "cpu" && gpu.is_some();
        FingerprintClass {
            workload: workload.name.clone(),
            device: fingerprint.device.clone(),
            gpu_model: gpu.filter(|_| on_gpu).map(|g| g.name.clone()),
            driver_major: gpu.filter(|_| on_gpu).map(|g| {
                let v = g.driver_version.as_str();
                v.split('.').next().unwrap_or(v).to_string()
            }),
            cuda_version: gpu
                .filter(|_| on_gpu)
                .map(|g| g.cuda_driver_version.clone()),
            host_cpu: (!on_gpu).then(|| fingerprint.host.cpu_model.clone()),
            model_hash: fingerprint.model_hash.clone(),
            workload_hash: workload.workload_hash.clone(),
            engine_config: canonical(&workload.engine_config),
            build_profile: fingerprint.source.build_profile.clone(),
            target: fingerprint.target.as_ref().map(|t| {
                let mode = if t.stream { "stream" } else { "whole" };
                // Text prompts add the server's tokenization to TTFT: their
                // own class (token-id classes are unchanged).
                let prompts = if t.text_prompts.is_some() {
                    " text"
                } else {
                    ""
                };
                format!("http {} {mode}{prompts}", t.server_kind)
            }),
            engine_env: fingerprint.engine_env.clone(),
        }
    }

    /// A stable short name: the first 16 hex digits of the blake3 of the
    /// class's canonical JSON (keys sorted at every level).
    /// The machine in a few words, as `side::machine` writes it for a run.
    pub fn machine(&self) -> String {
        match &self.gpu_model {
            Some(gpu) => format!(
                "{gpu}, driver {}, CUDA {}",
                self.driver_major.as_deref().unwrap_or("?"),
                self.cuda_version.as_deref().unwrap_or("?")
            ),
            None => self.host_cpu.clone().unwrap_or_else(|| self.device.clone()),
        }
    }

    pub fn hash(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let bytes = canonical(&value).to_string();
        blake3::hash(bytes.as_bytes()).to_hex()[..16].to_string()
    }

    /// Names of the fields that differ between two classes, with both values.
    pub fn differences(&self, other: &FingerprintClass) -> Vec<FieldDifference> {
        // Over both sides' fields: an optional field is absent from a class
        // that has none (`target`, `engine_env`), and "none" then.
        let (a, b) = (flat(self), flat(other));
        let fields: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let text = |side: &BTreeMap<String, String>, k: &String| {
            side.get(k).cloned().unwrap_or_else(|| "none".to_string())
        };
        fields
            .into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| FieldDifference {
                field: k.clone(),
                left: text(&a, k),
                right: text(&b, k),
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDifference {
    pub field: String,
    pub left: String,
    pub right: String,
}

impl std::fmt::Display for FieldDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} vs {}", self.field, self.left, self.right)
    }
}

/// Each top-level field as display text (engine config as compact JSON).
fn flat(class: &FingerprintClass) -> BTreeMap<String, String> {
    let value = serde_json::to_value(class).unwrap_or(serde_json::Value::Null);
    let mut out = BTreeMap::new();
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => "none".to_string(),
                other => canonical(&other).to_string(),
            };
            out.insert(k, text);
        }
    }
    out
}

/// The same JSON with object keys sorted at every level, whatever map type
/// serde_json was built with.
pub fn canonical(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let sorted: BTreeMap<&String, serde_json::Value> =
                map.iter().map(|(k, v)| (k, canonical(v))).collect();
            let mut out = serde_json::Map::new();
            for (k, v) in sorted {
                out.insert(k.clone(), v);
            }
            serde_json::Value::Object(out)
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(canonical).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{cpu_fingerprint, gpu_fingerprint, workload};

    #[test]
    fn commit_binary_and_clocks_do_not_change_the_class() {
        let mut a = gpu_fingerprint();
        let w = workload("chat", vec![]);
        let mut b = a.clone();
        b.source.git_commit = Some("other".into());
        b.source.engine_binary_hash = "other".into();
        b.gpus[0].uuid = "GPU-other".into();
        b.gpus[0].driver_version = "570.99.1".into();
        assert_eq!(FingerprintClass::of(&a, &w), FingerprintClass::of(&b, &w));
        assert_eq!(
            FingerprintClass::of(&a, &w).hash(),
            FingerprintClass::of(&b, &w).hash()
        );
        a.gpus[0].driver_version = "580.1.2".into();
        let diff = FingerprintClass::of(&a, &w).differences(&FingerprintClass::of(&b, &w));
        assert_eq!(diff.len(), 1);
        assert_eq!(diff[0].field, "driver_major");
        assert_eq!(diff[0].to_string(), "driver_major: 580 vs 570");
    }

    #[test]
    fn host_cpu_counts_only_for_cpu_runs() {
        let w = workload("chat", vec![]);
        let mut gpu_b = gpu_fingerprint();
        gpu_b.host.cpu_model = "another CPU".into();
        assert_eq!(
            FingerprintClass::of(&gpu_fingerprint(), &w),
            FingerprintClass::of(&gpu_b, &w)
        );
        let mut cpu_b = cpu_fingerprint();
        cpu_b.host.cpu_model = "another CPU".into();
        let diff = FingerprintClass::of(&cpu_fingerprint(), &w)
            .differences(&FingerprintClass::of(&cpu_b, &w));
        assert_eq!(diff.len(), 1);
        assert_eq!(diff[0].field, "host_cpu");
    }

    #[test]
    fn engine_config_key_order_does_not_matter() {
        let mut w1 = workload("chat", vec![]);
        let mut w2 = w1.clone();
        w1.engine_config = serde_json::from_str(r#"{"a":1,"b":{"y":2,"x":3}}"#).unwrap();
        w2.engine_config = serde_json::from_str(r#"{"b":{"x":3,"y":2},"a":1}"#).unwrap();
        let f = cpu_fingerprint();
        assert_eq!(
            FingerprintClass::of(&f, &w1).hash(),
            FingerprintClass::of(&f, &w2).hash()
        );
        w2.engine_config = serde_json::from_str(r#"{"b":{"x":3,"y":2},"a":2}"#).unwrap();
        let c1 = FingerprintClass::of(&f, &w1);
        let c2 = FingerprintClass::of(&f, &w2);
        assert_ne!(c1.hash(), c2.hash());
        assert_eq!(c1.differences(&c2)[0].field, "engine_config");
        assert_eq!(c1.hash().len(), 16);
    }

    #[test]
    fn environment_switches_are_part_of_the_class_and_absent_when_none() {
        let w = workload("chat", vec![]);
        let plain = gpu_fingerprint();
        let mut switched = gpu_fingerprint();
        switched
            .engine_env
            .insert("DYNO_CUDA_ATTN_MMA".into(), "0".into());
        let (c_plain, c_switched) = (
            FingerprintClass::of(&plain, &w),
            FingerprintClass::of(&switched, &w),
        );
        // A class without switches serializes as it did before the field
        // existed, so stored baselines keep their class hashes.
        let json = serde_json::to_string(&c_plain).unwrap();
        assert!(!json.contains("engine_env"), "{json}");
        assert_ne!(c_plain.hash(), c_switched.hash());
        // Named whichever side lacks the field.
        for (a, b, left, right) in [
            (
                &c_plain,
                &c_switched,
                "none",
                r#"{"DYNO_CUDA_ATTN_MMA":"0"}"#,
            ),
            (
                &c_switched,
                &c_plain,
                r#"{"DYNO_CUDA_ATTN_MMA":"0"}"#,
                "none",
            ),
        ] {
            let diff = a.differences(b);
            assert_eq!(diff.len(), 1, "{diff:?}");
            assert_eq!(
                (
                    diff[0].field.as_str(),
                    diff[0].left.as_str(),
                    diff[0].right.as_str()
                ),
                ("engine_env", left, right)
            );
        }
    }
}
