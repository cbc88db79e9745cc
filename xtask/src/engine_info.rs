//! `engine info --json`: what the engine binary sees (its backend and the
//! GPU through CUDA). Read leniently: fields the engine does not report are
//! simply absent, since NVML already gives most GPU properties.

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::run_record::GpuFingerprint;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct EngineInfo {
    #[serde(default)]
    pub gpus: Vec<EngineGpu>,
    /// Some engines report a single GPU object instead of a list.
    #[serde(default)]
    pub gpu: Option<EngineGpu>,
    /// The whole answer, kept for the log.
    #[serde(skip)]
    pub raw: serde_json::Value,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct EngineGpu {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub sm_count: Option<u32>,
    /// `[major, minor]`.
    #[serde(default)]
    pub compute_capability: Option<(u32, u32)>,
    #[serde(default)]
    pub total_memory_bytes: Option<u64>,
    /// As `cuDriverGetVersion` returns it, e.g. 13000.
    #[serde(default)]
    pub cuda_driver_version: Option<u32>,
}

impl EngineGpu {
    /// A fingerprint from what CUDA told the engine, for when NVML is not
    /// there; what only NVML knows is "unknown".
    pub fn fingerprint(&self) -> GpuFingerprint {
        let unknown = || crate::fingerprint::UNKNOWN.to_string();
        GpuFingerprint {
            name: self.name.clone().unwrap_or_else(unknown),
            uuid: self.uuid.clone().unwrap_or_else(unknown),
            compute_capability: self
                .compute_capability
                .map(|(a, b)| format!("{a}.{b}"))
                .unwrap_or_else(unknown),
            sm_count: self.sm_count,
            memory_bytes: self.total_memory_bytes.unwrap_or(0),
            driver_version: unknown(),
            cuda_driver_version: self
                .cuda_driver_version
                .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10))
                .unwrap_or_else(unknown),
            power_limit_w: None,
        }
    }
}

impl EngineInfo {
    pub fn all_gpus(&self) -> Vec<&EngineGpu> {
        self.gpus.iter().chain(self.gpu.iter()).collect()
    }

    pub fn has_gpu(&self) -> bool {
        !self.all_gpus().is_empty()
    }

    /// The SM count of the GPU with this UUID (NVML's UUIDs carry a `GPU-`
    /// prefix that CUDA's do not), else of the only GPU.
    pub fn sm_count(&self, uuid: &str) -> Option<u32> {
        let bare = |u: &str| u.trim_start_matches("GPU-").to_ascii_lowercase();
        let gpus = self.all_gpus();
        gpus.iter()
            .find(|g| g.uuid.as_deref().map(bare) == Some(bare(uuid)))
            .or(if gpus.len() == 1 { gpus.first() } else { None })
            .and_then(|g| g.sm_count)
    }
}

pub fn query(engine: &Path) -> anyhow::Result<EngineInfo> {
    let out = duct::cmd(engine, ["info", "--json"])
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .with_context(|| format!("cannot run {} info --json", engine.display()))?;
    if !out.status.success() {
        bail!(
            "`{} info --json` failed ({}): {}",
            engine.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse(&out.stdout).with_context(|| format!("reading `{} info --json`", engine.display()))
}

fn parse(stdout: &[u8]) -> anyhow::Result<EngineInfo> {
    let raw: serde_json::Value = serde_json::from_slice(stdout)?;
    let mut info: EngineInfo = serde_json::from_value(raw.clone())?;
    info.raw = raw;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_only_engine_has_no_gpu() {
        let info = parse(br#"{"backend":"cpu","gpus":[]}"#).unwrap();
        assert!(!info.has_gpu());
    }

    #[test]
    fn sm_count_by_uuid() {
        let info = parse(
            br#"{"gpus":[{"name":"H100","uuid":"abc","sm_count":132},{"uuid":"def","sm_count":7}]}"#,
        )
        .unwrap();
        assert!(info.has_gpu());
        assert_eq!(info.sm_count("GPU-ABC"), Some(132));
        assert_eq!(info.sm_count("GPU-def"), Some(7));
        assert_eq!(info.sm_count("zzz"), None);
        let single = parse(br#"{"gpu":{"sm_count":132}}"#).unwrap();
        assert_eq!(single.sm_count("GPU-x"), Some(132));
    }

    #[test]
    fn fingerprint_from_cuda_properties() {
        let info = parse(
            br#"{"cuda_available":true,"gpus":[{"ordinal":0,"name":"NVIDIA H100 80GB HBM3","uuid":"GPU-1","compute_capability":[9,0],"sm_count":132,"total_memory_bytes":85000000000,"cuda_driver_version":13000}]}"#,
        )
        .unwrap();
        let f = info.gpus[0].fingerprint();
        assert_eq!(f.compute_capability, "9.0");
        assert_eq!(f.cuda_driver_version, "13.0");
        assert_eq!(f.sm_count, Some(132));
        assert_eq!(f.memory_bytes, 85000000000);
        assert_eq!(f.driver_version, "unknown");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse(b"not json").is_err());
    }
}
