//! CONTRACT between `engine info --json` (writes) and the pipeline (reads):
//! what the engine binary sees of its machine. One type on both sides, so a
//! field renamed in the engine breaks the build rather than a fingerprint.

use serde::{Deserialize, Serialize};

/// `engine info --json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineInfo {
    pub engine_version: String,
    /// Backends this binary can run here: "cpu", and "cuda" when a driver
    /// and a GPU are present.
    pub backends: Vec<String>,
    pub cuda_available: bool,
    pub cpu_threads: usize,
    /// Every visible GPU, in CUDA ordinal order (empty without a driver).
    pub gpus: Vec<GpuProperties>,
    /// Why the GPUs could not be listed, when a driver is present but failed.
    #[serde(default)]
    pub gpu_error: Option<String>,
}

/// Static properties of one GPU, as CUDA reports them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuProperties {
    pub ordinal: usize,
    pub name: String,
    /// `GPU-xxxxxxxx-xxxx-...`, the form NVML and `nvidia-smi -L` use.
    pub uuid: String,
    /// `[major, minor]`.
    pub compute_capability: (i32, i32),
    pub sm_count: i32,
    pub total_memory_bytes: u64,
    /// `cuDriverGetVersion`, e.g. 13000.
    pub cuda_driver_version: i32,
}

/// What `engine inspect --model PATH` prints: what the pipeline needs to
/// know about a checkpoint it cannot read itself (a GGUF file), from the
/// engine's own loader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// "safetensors" (a Hugging Face directory) or "gguf".
    pub format: String,
    /// The HF architecture class, e.g. "LlamaForCausalLM".
    pub architecture: String,
    pub vocab_size: u32,
    /// BOS and EOS ids: workloads draw prompt tokens outside these.
    pub special_token_ids: Vec<u32>,
    pub num_hidden_layers: u32,
    pub hidden_size: u32,
}

impl EngineInfo {
    pub fn has_gpu(&self) -> bool {
        !self.gpus.is_empty()
    }

    /// The SM count of the GPU with this UUID (NVML's UUIDs carry a `GPU-`
    /// prefix that some CUDA versions omit), else of the only GPU.
    pub fn sm_count(&self, uuid: &str) -> Option<u32> {
        self.gpus
            .iter()
            .find(|g| same_uuid(&g.uuid, uuid))
            .or(if self.gpus.len() == 1 {
                self.gpus.first()
            } else {
                None
            })
            .and_then(|g| u32::try_from(g.sm_count).ok())
    }
}

/// Two spellings of one GPU UUID: with or without `GPU-`, any case.
pub fn same_uuid(a: &str, b: &str) -> bool {
    let bare = |u: &str| u.trim_start_matches("GPU-").to_ascii_lowercase();
    bare(a) == bare(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(uuid: &str, sm: i32) -> GpuProperties {
        GpuProperties {
            ordinal: 0,
            name: "H200".into(),
            uuid: uuid.into(),
            compute_capability: (9, 0),
            sm_count: sm,
            total_memory_bytes: 1,
            cuda_driver_version: 13000,
        }
    }

    #[test]
    fn round_trips_through_json() {
        let info = EngineInfo {
            engine_version: "0.1.0".into(),
            backends: vec!["cpu".into(), "cuda".into()],
            cuda_available: true,
            cpu_threads: 16,
            gpus: vec![gpu("GPU-abc", 132)],
            gpu_error: None,
        };
        let text = serde_json::to_string(&info).unwrap();
        assert_eq!(serde_json::from_str::<EngineInfo>(&text).unwrap(), info);
    }

    #[test]
    fn sm_count_by_uuid_in_either_spelling() {
        let mut info = EngineInfo {
            gpus: vec![gpu("GPU-abc", 132), gpu("def", 7)],
            ..EngineInfo::default()
        };
        assert_eq!(info.sm_count("ABC"), Some(132));
        assert_eq!(info.sm_count("GPU-DEF"), Some(7));
        assert_eq!(info.sm_count("zzz"), None);
        info.gpus.truncate(1);
        assert_eq!(info.sm_count("zzz"), Some(132), "the only GPU");
    }

    #[test]
    fn a_missing_required_field_is_an_error() {
        assert!(serde_json::from_str::<EngineInfo>(r#"{"gpus":[]}"#).is_err());
    }
}
