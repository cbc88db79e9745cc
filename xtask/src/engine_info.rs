//! `engine info --json`: what the engine binary sees (its backend and the
//! GPU through CUDA). Read leniently: fields the engine does not report are
//! simply absent, since NVML already gives most GPU properties.

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

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
    fn garbage_is_an_error() {
        assert!(parse(b"not json").is_err());
    }
}
