//! CONTRACT between the engine (its `engine.toml`) and the pipeline (sweep
//! files, workload `[engine]` tables): the names of the engine knobs a user
//! may set, and the exit codes `engine bench` uses for failures the
//! pipeline classifies. The engine's tests check that [`KNOBS`] is exactly
//! its config's field set (less `device`, which the pipeline sets itself).

/// Every engine knob, as spelled in `engine.toml`.
pub const KNOBS: &[&str] = &[
    "block_size",
    "max_num_seqs",
    "max_num_batched_tokens",
    "enable_chunked_prefill",
    "max_model_len",
    "gpu_memory_utilization",
    "cpu_kv_cache_bytes",
    "num_kv_blocks",
    "enforce_eager",
    "num_threads",
    "enable_prefix_caching",
    "speculative_method",
    "num_speculative_tokens",
    "prompt_lookup_min",
    "prompt_lookup_max",
    "batch_invariant",
    "async_scheduling",
];

pub fn is_knob(name: &str) -> bool {
    KNOBS.contains(&name)
}

/// The engine's default value of every knob, as `engine.toml` would spell
/// them (the engine's tests check them against its defaults). Reports use
/// them to fill a point's effective config and to find the default-config
/// point of a sweep. `max_num_seqs = 0` means "derived from the device"
/// (1,024 on a GPU of at least 70 GiB that is not an A100, else 256).
pub const DEFAULTS_TOML: &str = r#"
block_size = 16
max_num_seqs = 0
max_num_batched_tokens = 8192
enable_chunked_prefill = true
max_model_len = 0
gpu_memory_utilization = 0.9
cpu_kv_cache_bytes = 1073741824
num_kv_blocks = 0
enforce_eager = false
num_threads = 0
enable_prefix_caching = true
speculative_method = "off"
num_speculative_tokens = 0
prompt_lookup_min = 5
prompt_lookup_max = 5
batch_invariant = false
async_scheduling = true
"#;

/// [`DEFAULTS_TOML`] as a table.
pub fn defaults() -> toml::Table {
    toml::from_str(DEFAULTS_TOML).unwrap_or_default()
}

/// `knobs` over the defaults: the config a point actually ran with.
pub fn effective(knobs: &toml::Table) -> toml::Table {
    let mut t = defaults();
    for (k, v) in knobs {
        t.insert(k.clone(), v.clone());
    }
    t
}

/// Whether `knobs` set nothing that differs from the defaults.
pub fn is_default(knobs: &toml::Table) -> bool {
    effective(knobs) == defaults()
}

/// The engine's environment switches: variables it reads when it starts
/// that change which kernels run, or how (docs/CUDA.md describes each).
/// They are engine settings outside `engine.toml`, so the pipeline records
/// the ones an engine process gets (the run fingerprint's `engine_env`),
/// and a run made with one is judged only against runs made with the same.
/// The engine's tests check this list against every `DYNO_` variable its
/// sources name, less [`ENV_NOT_SWITCHES`].
pub const ENV_SWITCHES: &[&str] = &[
    "DYNO_CUDA_ATTN_KEYS",
    "DYNO_CUDA_ATTN_MIN_BLOCKS",
    "DYNO_CUDA_ATTN_MMA",
    "DYNO_CUDA_ATTN_MMA_T",
    "DYNO_CUDA_ATTN_PIPELINE",
    "DYNO_CUDA_ATTN_PREFILL",
    "DYNO_CUDA_ATTN_STAGED",
    "DYNO_CUDA_GEMV_SPLIT_K",
    "DYNO_CUDA_INVARIANT_ONE_BLOCK",
    "DYNO_CUDA_KV_LAYOUT",
    "DYNO_CUDA_PDL",
    "DYNO_CUDA_PERSISTENT",
    "DYNO_CUDA_PERSISTENT_BLOCKS_PER_SM",
    "DYNO_CUDA_PIN_TIMING",
    "DYNO_CUDA_QK_NORM_FUSED",
    "DYNO_CUDA_SPLIT_KEYS",
    "DYNO_INVARIANT_PRODUCTS",
    "DYNO_PROFILE_DECODE_STEPS",
    "DYNO_PROFILE_PREFILL_STEPS",
];

/// `DYNO_` variables the engine reads that are not switches: the server's
/// API key (a secret, never recorded) and the tests' demand for NVRTC.
pub const ENV_NOT_SWITCHES: &[&str] = &["DYNO_API_KEY", "DYNO_REQUIRE_NVRTC"];

/// Exit code of `engine bench` when the engine config is rejected (a knob
/// out of range, a value of the wrong type, an unknown knob).
pub const EXIT_INVALID_CONFIG: i32 = 3;

/// Exit code of `engine bench` when memory runs out: the weights or the KV
/// pool do not fit, or a device allocation fails.
pub const EXIT_OUT_OF_MEMORY: i32 = 4;
