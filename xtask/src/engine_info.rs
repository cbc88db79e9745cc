//! `engine info --json` (the `workloads::EngineInfo` contract type): what
//! the engine binary sees, and the GPU fingerprint it implies when NVML is
//! not there.

use std::path::Path;

use anyhow::{bail, Context};
use workloads::engine_info::{same_uuid, EngineInfo, GpuProperties};

use crate::run_record::GpuFingerprint;

/// A fingerprint from what CUDA told the engine, for when NVML is not
/// there; what only NVML knows is "unknown".
pub(crate) fn gpu_fingerprint(g: &GpuProperties) -> GpuFingerprint {
    let unknown = || crate::fingerprint::UNKNOWN.to_string();
    let v = g.cuda_driver_version;
    GpuFingerprint {
        name: g.name.clone(),
        uuid: g.uuid.clone(),
        compute_capability: format!("{}.{}", g.compute_capability.0, g.compute_capability.1),
        sm_count: u32::try_from(g.sm_count).ok(),
        memory_bytes: g.total_memory_bytes,
        driver_version: unknown(),
        cuda_driver_version: if v > 0 {
            format!("{}.{}", v / 1000, (v % 1000) / 10)
        } else {
            unknown()
        },
        power_limit_w: None,
    }
}

/// The NVML index of the GPU the engine runs on (its first CUDA device,
/// matched by UUID, which survives `CUDA_VISIBLE_DEVICES` renumbering),
/// else 0.
pub(crate) fn nvml_index_in_use(info: &EngineInfo, nvml_uuids: &[&str]) -> usize {
    info.gpus
        .first()
        .and_then(|g| nvml_uuids.iter().position(|n| same_uuid(n, &g.uuid)))
        .unwrap_or(0)
}

pub(crate) fn query(engine: &Path) -> anyhow::Result<EngineInfo> {
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
    Ok(serde_json::from_slice(stdout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: &[u8] = br#"{"engine_version":"0.1.0","backends":["cpu","cuda"],"cuda_available":true,"cpu_threads":16,"gpus":[{"ordinal":0,"name":"NVIDIA H100 80GB HBM3","uuid":"GPU-bbb","compute_capability":[9,0],"sm_count":132,"total_memory_bytes":85000000000,"cuda_driver_version":13000}]}"#;

    #[test]
    fn cpu_only_engine_has_no_gpu() {
        let info = parse(
            br#"{"engine_version":"0.1.0","backends":["cpu"],"cuda_available":false,"cpu_threads":2,"gpus":[]}"#,
        )
        .unwrap();
        assert!(!info.has_gpu());
    }

    #[test]
    fn finds_the_gpu_in_use_among_nvml_devices() {
        let info = parse(H100).unwrap();
        assert_eq!(nvml_index_in_use(&info, &["GPU-aaa", "GPU-BBB"]), 1);
        assert_eq!(nvml_index_in_use(&info, &["GPU-aaa"]), 0);
    }

    #[test]
    fn fingerprint_from_cuda_properties() {
        let info = parse(H100).unwrap();
        let f = gpu_fingerprint(&info.gpus[0]);
        assert_eq!(f.compute_capability, "9.0");
        assert_eq!(f.cuda_driver_version, "13.0");
        assert_eq!(f.sm_count, Some(132));
        assert_eq!(f.memory_bytes, 85000000000);
        assert_eq!(f.driver_version, "unknown");
    }

    #[test]
    fn garbage_and_foreign_shapes_are_errors() {
        assert!(parse(b"not json").is_err());
        assert!(parse(br#"{"gpu":{"sm_count":132}}"#).is_err());
    }
}
