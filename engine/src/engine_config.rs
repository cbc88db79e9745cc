//! Engine knobs (`engine.toml`). Every field has a default so an empty file
//! is valid; unknown fields are an error naming the field.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// CUDA when a driver and a GPU are present, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// Speculative decoding method (vLLM's `speculative_config.method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SpeculativeMethod {
    /// Plain decoding: one token per sequence per step.
    #[default]
    Off,
    /// Prompt lookup: drafts copied from an earlier occurrence of the
    /// sequence's last n-gram (see `spec_decode`).
    Ngram,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    pub device: DeviceKind,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Most sequences in one batch; 0 = derive from the device as vLLM
    /// does (see [`auto_max_num_seqs`]).
    pub max_num_seqs: usize,
    /// Most tokens (prefill + decode) in one step.
    pub max_num_batched_tokens: usize,
    /// Split long prompts across steps so decodes are not starved.
    pub enable_chunked_prefill: bool,
    /// Context limit; 0 = the model's max_position_embeddings.
    pub max_model_len: usize,
    /// CUDA: fraction of free GPU memory the engine may take (weights are
    /// already resident; the KV pool gets what is left of this share).
    pub gpu_memory_utilization: f64,
    /// CPU: bytes for the KV cache.
    pub cpu_kv_cache_bytes: u64,
    /// Override the derived KV block count (0 = derive from memory budget).
    pub num_kv_blocks: usize,
    /// CUDA: disable CUDA graphs.
    pub enforce_eager: bool,
    /// CPU: worker threads (0 = all cores).
    pub num_threads: usize,
    /// Automatic prefix caching: reuse the K/V of full blocks whose token
    /// chain an earlier request computed. On by default, as in vLLM V1:
    /// outputs are the same either way; off only to measure what it saves.
    pub enable_prefix_caching: bool,
    /// Speculative decoding: "off" or "ngram" (prompt lookup).
    pub speculative_method: SpeculativeMethod,
    /// Most draft tokens verified per sequence per step (k; 0 with "off").
    pub num_speculative_tokens: usize,
    /// Shortest n-gram matched to find a draft (vLLM's default: 5).
    pub prompt_lookup_min: usize,
    /// Longest n-gram matched; longer matches are tried first.
    pub prompt_lookup_max: usize,
    /// Greedy outputs bit-identical whatever other requests share a step
    /// (batch size, chunked prefill, preemption). CUDA: every product
    /// through one cuBLASLt algorithm pinned per weight shape and checked at
    /// load, no small-batch kernels, attention split by context length
    /// only (docs/ARCHITECTURE.md, "Batch invariance"). Off by default: it
    /// costs batch-1 latency (smollm2-135m on an H200: ~0.55 → 0.92 ms per
    /// token) and ~2 % offline throughput. The CPU backend is
    /// batch-invariant either way, so there the knob changes nothing.
    pub batch_invariant: bool,
    /// Pipelined stepping (vLLM's `async_scheduling`): while a decode step
    /// runs on the GPU the engine schedules and launches the next one, its
    /// input tokens read on the GPU from the running step's samples, so the
    /// host's per-step work (finishing the last step, scheduling, packing)
    /// no longer leaves the GPU idle. The outputs are the same either way;
    /// a sequence that stops on EOS or a stop token costs one wasted row.
    /// Backends without it (CPU) and speculative decoding step one at a
    /// time regardless.
    pub async_scheduling: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            device: DeviceKind::Auto,
            block_size: 16,
            max_num_seqs: 0,
            max_num_batched_tokens: 8192,
            enable_chunked_prefill: true,
            max_model_len: 0,
            gpu_memory_utilization: 0.9,
            cpu_kv_cache_bytes: 1 << 30,
            num_kv_blocks: 0,
            enforce_eager: false,
            num_threads: 0,
            enable_prefix_caching: true,
            speculative_method: SpeculativeMethod::Off,
            num_speculative_tokens: 0,
            prompt_lookup_min: 5,
            prompt_lookup_max: 5,
            batch_invariant: false,
            async_scheduling: true,
        }
    }
}

/// `max_num_seqs` when the config leaves it at 0, as vLLM derives its
/// default: 1,024 on a GPU with at least 70 GiB that is not an A100 (vLLM:
/// "for GPUs like H100 and MI300x"), else 256 (smaller GPUs and the CPU,
/// `gpu` = None). Measured on the H200 (docs/BENCHMARKS.md): smollm2-135m
/// offline 1,000 × (256 → 1,024) gives 107k output tok/s at 1,024 against
/// 74k at 256.
pub fn auto_max_num_seqs(gpu: Option<(&str, u64)>) -> usize {
    const LARGE_GPU_BYTES: u64 = 70 << 30;
    match gpu {
        Some((name, memory))
            if memory >= LARGE_GPU_BYTES && !name.to_lowercase().contains("a100") =>
        {
            1024
        }
        _ => 256,
    }
}

/// Upper bounds far past any real setting, so that a typo is an error at
/// load rather than an allocation failure or a stall later.
pub const MAX_BLOCK_SIZE: usize = 1024;
pub const MAX_NUM_SEQS: usize = 1 << 16;
pub const MAX_BATCHED_TOKENS: usize = 1 << 24;
pub const MAX_KV_BLOCKS: usize = 1 << 24;
/// Most draft tokens per step and longest n-gram: far past any useful
/// setting (vLLM's own examples stay below 64).
pub const MAX_SPECULATIVE_TOKENS: usize = 128;
pub const MAX_PROMPT_LOOKUP: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum EngineConfigError {
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl EngineConfig {
    /// The batch limit this config runs with: `max_num_seqs`, or when it is
    /// 0 the device's `auto` value ([`auto_max_num_seqs`]), at most
    /// `max_num_batched_tokens` (a step holds a token of every sequence).
    pub fn effective_max_num_seqs(&self, auto: usize) -> usize {
        if self.max_num_seqs > 0 {
            self.max_num_seqs
        } else {
            auto.clamp(1, self.max_num_batched_tokens.max(1))
        }
    }

    pub fn load(path: &std::path::Path) -> Result<EngineConfig, EngineConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| EngineConfigError::Io {
            path: path.display().to_string(),
            cause: source,
        })?;
        Self::parse(&text).map_err(|message| EngineConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses and validates engine.toml text; the error names the line
    /// and the field.
    pub fn parse(text: &str) -> Result<EngineConfig, String> {
        let cfg: EngineConfig = toml::from_str(text).map_err(|e| {
            let message = e.message().trim();
            let Some(span) = e.span() else {
                return message.to_string();
            };
            let start = span.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            // A value of the wrong type: the message says what was expected
            // but not for which knob, so name the key of that line.
            let line_text = text.lines().nth(line - 1).unwrap_or("");
            match line_text.split_once('=').map(|(k, _)| k.trim()) {
                Some(key) if !key.is_empty() && !message.contains(key) => {
                    format!("line {line}: {key}: {message}")
                }
                _ => format!("line {line}: {message}"),
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.block_size == 0 || !self.block_size.is_power_of_two() {
            return Err(format!(
                "block_size: must be a power of two, got {}",
                self.block_size
            ));
        }
        if self.block_size > MAX_BLOCK_SIZE {
            return Err(format!(
                "block_size: must be at most {MAX_BLOCK_SIZE}, got {}",
                self.block_size
            ));
        }
        if self.max_num_seqs > MAX_NUM_SEQS {
            return Err(format!(
                "max_num_seqs: must be at most {MAX_NUM_SEQS} (0 = derive from the device), got {}",
                self.max_num_seqs
            ));
        }
        if self.max_num_batched_tokens > MAX_BATCHED_TOKENS {
            return Err(format!(
                "max_num_batched_tokens: must be at most {MAX_BATCHED_TOKENS}, got {}",
                self.max_num_batched_tokens
            ));
        }
        if self.num_kv_blocks > MAX_KV_BLOCKS {
            return Err(format!(
                "num_kv_blocks: must be at most {MAX_KV_BLOCKS} (0 = derive), got {}",
                self.num_kv_blocks
            ));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if self.num_threads > cores {
            return Err(format!(
                "num_threads: must be at most the {cores} cores of this machine (0 = all), got {}",
                self.num_threads
            ));
        }
        if self.max_num_batched_tokens == 0 {
            return Err("max_num_batched_tokens: must be at least 1, got 0".into());
        }
        if self.max_num_batched_tokens < self.max_num_seqs {
            return Err(format!(
                "max_num_batched_tokens: must be >= max_num_seqs ({}), got {}",
                self.max_num_seqs, self.max_num_batched_tokens
            ));
        }
        if !(self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0) {
            return Err(format!(
                "gpu_memory_utilization: must be in (0, 1], got {}",
                self.gpu_memory_utilization
            ));
        }
        self.validate_speculative()
    }

    fn validate_speculative(&self) -> Result<(), String> {
        let k = self.num_speculative_tokens;
        let (min, max) = (self.prompt_lookup_min, self.prompt_lookup_max);
        match self.speculative_method {
            SpeculativeMethod::Off => {
                if k != 0 {
                    return Err(format!(
                        "num_speculative_tokens: must be 0 when speculative_method is \"off\" \
                         (set speculative_method = \"ngram\" to speculate), got {k}"
                    ));
                }
            }
            SpeculativeMethod::Ngram => {
                if !(1..=MAX_SPECULATIVE_TOKENS).contains(&k) {
                    return Err(format!(
                        "num_speculative_tokens: must be in 1..={MAX_SPECULATIVE_TOKENS} when \
                         speculative_method is \"ngram\", got {k}"
                    ));
                }
                if k >= self.max_num_batched_tokens {
                    return Err(format!(
                        "num_speculative_tokens: must be below max_num_batched_tokens ({}) so \
                         that a draft fits in a step, got {k}",
                        self.max_num_batched_tokens
                    ));
                }
            }
        }
        if !(1..=MAX_PROMPT_LOOKUP).contains(&min) {
            return Err(format!(
                "prompt_lookup_min: must be in 1..={MAX_PROMPT_LOOKUP}, got {min}"
            ));
        }
        if !(1..=MAX_PROMPT_LOOKUP).contains(&max) {
            return Err(format!(
                "prompt_lookup_max: must be in 1..={MAX_PROMPT_LOOKUP}, got {max}"
            ));
        }
        if min > max {
            return Err(format!(
                "prompt_lookup_min: must be at most prompt_lookup_max ({max}), got {min}"
            ));
        }
        Ok(())
    }

    /// Whether steps may verify draft tokens.
    pub fn speculates(&self) -> bool {
        self.speculative_method != SpeculativeMethod::Off && self.num_speculative_tokens > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_defaults_and_unknown_field_is_named() {
        let cfg: EngineConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, EngineConfig::default());
        let err = toml::from_str::<EngineConfig>("max_num_seq = 3").unwrap_err();
        assert!(err.to_string().contains("max_num_seq"), "{err}");
    }

    #[test]
    fn the_knob_contract_lists_every_knob() {
        let table = toml::Table::try_from(EngineConfig::default()).unwrap();
        let mut fields: Vec<&str> = table
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "device")
            .collect();
        fields.sort_unstable();
        let mut knobs = workloads::engine_knobs::KNOBS.to_vec();
        knobs.sort_unstable();
        assert_eq!(fields, knobs, "update workloads::engine_knobs::KNOBS");
        let mut defaults = table.clone();
        defaults.remove("device");
        assert_eq!(
            defaults,
            workloads::engine_knobs::defaults(),
            "update workloads::engine_knobs::DEFAULTS_TOML"
        );
    }

    /// Every `"DYNO_..."` name in the engine's sources (the variables it
    /// reads; the kernels' `-D` options are spelled `-DDYNO_...`) is in the
    /// contract, as a switch or as one of the listed non-switches, and
    /// every listed name is still read somewhere.
    #[test]
    fn the_env_switch_contract_lists_every_variable_the_engine_reads() {
        fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    rust_files(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let mut files = Vec::new();
        rust_files(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut read = std::collections::BTreeSet::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            // Spelled in two pieces so that this line is not a match.
            for (at, _) in text.match_indices(concat!("\"DYNO", "_")) {
                let name: String = text[at + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if text[at + 1 + name.len()..].starts_with('"') {
                    read.insert(name);
                }
            }
        }
        use workloads::engine_knobs::{ENV_NOT_SWITCHES, ENV_SWITCHES};
        let listed: std::collections::BTreeSet<String> = ENV_SWITCHES
            .iter()
            .chain(ENV_NOT_SWITCHES)
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            read, listed,
            "update workloads::engine_knobs::ENV_SWITCHES (or ENV_NOT_SWITCHES)"
        );
        assert!(ENV_SWITCHES.iter().all(|s| !ENV_NOT_SWITCHES.contains(s)));
    }

    #[test]
    fn validate_rejects_bad_values() {
        let cfg = EngineConfig {
            block_size: 12,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().contains("block_size"));
        for (text, field) in [
            ("num_threads = 10000", "num_threads"),
            ("num_speculative_tokens = 3", "num_speculative_tokens"),
            ("speculative_method = \"ngram\"", "num_speculative_tokens"),
            (
                "speculative_method = \"ngram\"\nnum_speculative_tokens = 1000",
                "num_speculative_tokens",
            ),
            (
                "speculative_method = \"ngram\"\nnum_speculative_tokens = 4\n\
                 prompt_lookup_min = 4\nprompt_lookup_max = 2",
                "prompt_lookup_min",
            ),
            ("prompt_lookup_max = 0", "prompt_lookup_max"),
            ("prompt_lookup_min = 0", "prompt_lookup_min"),
            ("block_size = 1099511627776", "block_size"),
            ("max_num_seqs = 100000000", "max_num_seqs"),
            ("max_num_batched_tokens = 0", "max_num_batched_tokens"),
            ("num_kv_blocks = 1000000000000", "num_kv_blocks"),
            ("gpu_memory_utilization = nan", "gpu_memory_utilization"),
            (
                "max_num_batched_tokens = 100000000000",
                "max_num_batched_tokens",
            ),
        ] {
            let err = EngineConfig::parse(text).unwrap_err();
            assert!(err.starts_with(field), "{text}: {err}");
        }
    }

    #[test]
    fn max_num_seqs_zero_derives_from_the_device_like_vllm() {
        let gib = 1u64 << 30;
        assert_eq!(auto_max_num_seqs(Some(("NVIDIA H200", 141 * gib))), 1024);
        assert_eq!(
            auto_max_num_seqs(Some(("NVIDIA H100 80GB HBM3", 80 * gib))),
            1024
        );
        assert_eq!(
            auto_max_num_seqs(Some(("NVIDIA A100-SXM4-80GB", 80 * gib))),
            256
        );
        assert_eq!(auto_max_num_seqs(Some(("NVIDIA L4", 24 * gib))), 256);
        assert_eq!(auto_max_num_seqs(None), 256);
        let cfg = EngineConfig::parse("").unwrap();
        assert_eq!(cfg.max_num_seqs, 0);
        assert_eq!(cfg.effective_max_num_seqs(1024), 1024);
        // A step holds one token of every sequence: the derived value never
        // exceeds the token budget; a set value is kept as it is.
        let small = EngineConfig::parse("max_num_batched_tokens = 512\n").unwrap();
        assert_eq!(small.effective_max_num_seqs(1024), 512);
        let set = EngineConfig::parse("max_num_seqs = 64\n").unwrap();
        assert_eq!(set.effective_max_num_seqs(1024), 64);
    }

    #[test]
    fn an_unknown_speculative_method_is_named() {
        let err = EngineConfig::parse("speculative_method = \"eagle\"\n").unwrap_err();
        assert!(
            err.contains("speculative_method") || err.contains("eagle"),
            "{err}"
        );
        assert!(err.starts_with("line 1:"), "{err}");
        let ok = EngineConfig::parse(
            "speculative_method = \"ngram\"\nnum_speculative_tokens = 6\nprompt_lookup_min = 2\n",
        )
        .unwrap();
        assert!(ok.speculates());
        assert!(!EngineConfig::default().speculates());
    }

    #[test]
    fn parse_errors_name_the_line() {
        let err = EngineConfig::parse("block_size = 16\nmax_num_seq = 3\n").unwrap_err();
        assert!(
            err.starts_with("line 2:") && err.contains("max_num_seq"),
            "{err}"
        );
        let err = EngineConfig::parse("block_size = \"x\"\n").unwrap_err();
        assert!(err.starts_with("line 1: block_size:"), "{err}");
        for bad in ["1", "\"yes\"", "\"on\""] {
            let text = format!("max_num_seqs = 4\nenable_prefix_caching = {bad}\n");
            let err = EngineConfig::parse(&text).unwrap_err();
            assert!(
                err.starts_with("line 2: enable_prefix_caching:") && err.contains("boolean"),
                "{err}"
            );
        }
    }
}
