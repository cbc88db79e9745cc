//! The persistent decode kernel (`kernels/persistent.cu`): every layer of a
//! step of at most `GEMV_MAX_T` tokens in one launch of `decode_layers`,
//! whose blocks run the five small-batch bodies as phases between grid
//! barriers. Same bodies, same grids, same sums, so the same bits as the
//! five kernels per layer; what it saves is the ~150 kernel boundaries of
//! a batch-1 step.
//!
//! Measured on the H200 it does not pay yet: a batch-1 smollm2-135m step
//! takes 0.67 ms against the five kernels' 0.62 ms, outputs identical
//! (docs/BENCHMARKS.md, "batch-1 decode — a persistent kernel"). A grid barrier costs
//! about what a kernel boundary under programmatic dependent launch costs
//! (~1.5 us), and a phase's own chain of dependent memory accesses about
//! 2.5 us, so it stays off by default.
//!
//! `DYNO_CUDA_PERSISTENT`: `1` uses it wherever it applies (an error where
//! it cannot be built), `0` never; unset is [`DEFAULT_ON`].
//! `DYNO_CUDA_PERSISTENT_BLOCKS_PER_SM` (1 to 16): the grid's blocks per
//! SM, at most what the kernel's registers and shared memory allow.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};

use super::super::BackendError;
use super::arena::Dims;
use super::buffer::DeviceBuffer;
use super::nvrtc::{self, KernelShape};
use super::weights::{DeviceWeights, LayerWeights};

/// Whether small decode steps take `decode_layers` when
/// `DYNO_CUDA_PERSISTENT` is unset: no, it measured slower (above).
pub const DEFAULT_ON: bool = false;
/// Blocks per SM when `DYNO_CUDA_PERSISTENT_BLOCKS_PER_SM` is unset
/// (fewer where the kernel's occupancy is lower). On the H200 at
/// smollm2-135m's shape, 3 (396 blocks: the gate-up phase's 384 virtual
/// blocks in one round) measured 3-4 % faster per batch-1 step than 2, and
/// 2 than 1; the kernel's registers allow 3 (165 at that shape).
pub const DEFAULT_BLOCKS_PER_SM: usize = 3;
/// The grid barrier's count: one 64-bit count, alone on its 128-byte line.
pub const BARRIER_BYTES: usize = 128;
/// Most blocks per SM the variable may ask for (16 blocks of 128 threads
/// fill an SM's 2,048).
pub const MAX_BLOCKS_PER_SM: usize = 16;

/// The settings from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistentSettings {
    /// `Some(true)`: asked for (failing to build it is an error);
    /// `Some(false)`: refused; `None`: [`DEFAULT_ON`], skipped where the
    /// model cannot take it, and with a warning where it fails to build.
    pub enabled: Option<bool>,
    pub blocks_per_sm: usize,
}

impl PersistentSettings {
    pub fn from_env() -> Result<Self, BackendError> {
        Self::parse(
            std::env::var("DYNO_CUDA_PERSISTENT").ok().as_deref(),
            std::env::var("DYNO_CUDA_PERSISTENT_BLOCKS_PER_SM")
                .ok()
                .as_deref(),
        )
    }

    fn parse(enabled: Option<&str>, blocks: Option<&str>) -> Result<Self, BackendError> {
        let enabled = match enabled.map(str::trim) {
            None => None,
            Some("0") => Some(false),
            Some("1") => Some(true),
            Some(other) => {
                return Err(BackendError::Cuda(format!(
                    "DYNO_CUDA_PERSISTENT={other}: expected 0 or 1"
                )))
            }
        };
        let blocks_per_sm = match blocks {
            None => DEFAULT_BLOCKS_PER_SM,
            Some(text) => match text.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_BLOCKS_PER_SM).contains(&n) => n,
                _ => {
                    return Err(BackendError::Cuda(format!(
                        "DYNO_CUDA_PERSISTENT_BLOCKS_PER_SM={text}: expected 1 to \
                         {MAX_BLOCKS_PER_SM}"
                    )))
                }
            },
        };
        Ok(PersistentSettings {
            enabled,
            blocks_per_sm,
        })
    }

    pub fn wanted(&self) -> bool {
        self.enabled.unwrap_or(DEFAULT_ON)
    }
}

/// Why a model cannot take `decode_layers`, or `None` when it can: the
/// fused QKV body has no per-head q/k norm (Qwen3), and the small-batch
/// kernels must apply; `batch_invariant` keeps its own attention splits.
pub fn unsupported(
    dims: &Dims,
    weights: &DeviceWeights,
    batch_invariant: bool,
) -> Option<&'static str> {
    if batch_invariant {
        Some("batch_invariant is on")
    } else if !dims.small_batch_kernels() {
        Some("the model has no small-batch kernels")
    } else if weights
        .layers
        .iter()
        .any(|l| l.q_norm.is_some() || l.k_norm.is_some())
    {
        Some("the model has q/k norms (the fused QKV body has none)")
    } else {
        None
    }
}

/// Blocks of the persistent grid: every block must be resident at once (they
/// wait for each other), so at most `occupancy` per SM.
pub fn grid_blocks(sm_count: usize, occupancy: usize, blocks_per_sm: usize) -> usize {
    sm_count * occupancy.min(blocks_per_sm)
}

/// What the runner needs to launch `decode_layers`.
pub struct PersistentDecode {
    /// `LAYER_POINTERS.len()` device pointers per layer.
    pub layer_table: DeviceBuffer,
    /// The grid barrier's count ([`BARRIER_BYTES`], zeroed; it only grows,
    /// by the same amount every launch).
    pub barrier: DeviceBuffer,
    pub blocks: u32,
    /// Dynamic shared memory per block: [`dynamic_shared_bytes`].
    pub shared: u32,
}

/// `decode_layers`' dynamic shared memory: the normalized input of
/// `GEMV_MAX_T` tokens, in bf16.
pub fn dynamic_shared_bytes(hidden: usize) -> u32 {
    (super::kernels::GEMV_MAX_T * hidden * 2) as u32
}

impl PersistentDecode {
    /// Builds the persistent program and the layer table. Returns the
    /// module (for `Kernels::new`) and the launch state; an error where the
    /// kernel does not build or fit an SM.
    pub fn build(
        ctx: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
        shape: KernelShape,
        weights: &DeviceWeights,
        sm_count: usize,
        blocks_per_sm: usize,
    ) -> Result<(Arc<cudarc::driver::CudaModule>, PersistentDecode), BackendError> {
        let cuda =
            |what: &str, e: cudarc::driver::DriverError| BackendError::Cuda(format!("{what}: {e}"));
        let module = nvrtc::load(ctx, shape, &defines())?;
        let shared = dynamic_shared_bytes(shape.hidden);
        let occupancy = module
            .load_function(super::kernels::PERSISTENT_KERNEL)
            .and_then(|f| {
                super::kernels::allow_dynamic_shared(&f, shared)?;
                f.occupancy_max_active_blocks_per_multiprocessor(
                    (super::kernels::GEMV_WARPS * 32) as u32,
                    shared as usize,
                    None,
                )
            })
            .map_err(|e| cuda("decode_layers occupancy", e))? as usize;
        if occupancy == 0 {
            return Err(BackendError::Cuda(
                "decode_layers does not fit an SM (registers or shared memory)".into(),
            ));
        }
        let table = layer_table(weights);
        let layer_table = DeviceBuffer::upload(stream, &table, "decode_layers layer table")?;
        let barrier = DeviceBuffer::zeroed(stream, BARRIER_BYTES, "decode_layers barrier")?;
        let blocks = grid_blocks(sm_count, occupancy, blocks_per_sm) as u32;
        Ok((
            module,
            PersistentDecode {
                layer_table,
                barrier,
                blocks,
                shared,
            },
        ))
    }
}

/// Where a layer-table entry comes from.
pub type LayerPointer = fn(&LayerWeights) -> u64;

/// `decode_layers`' layer table: these device pointers per layer, in this
/// order (the kernel's `LAYER_PTR_<name>` indices, compiled in by
/// nvrtc.rs). A null pointer is a missing tensor (no QKV bias).
pub const LAYER_POINTERS: [(&str, LayerPointer); 7] = [
    ("INPUT_NORM", |l| l.input_norm.ptr),
    ("QKV", |l| l.qkv.ptr),
    ("QKV_BIAS", |l| l.qkv_bias.as_ref().map_or(0, |b| b.ptr)),
    ("O_PROJ", |l| l.o_proj.ptr),
    ("POST_NORM", |l| l.post_attention_norm.ptr),
    ("GATE_UP", |l| l.gate_up.ptr),
    ("DOWN", |l| l.down.ptr),
];

/// The persistent program's `-D` options: `DYNO_PERSISTENT` (activations not
/// `__restrict__`, no early start of the next kernel: common.cuh) and the
/// layer table's layout.
pub fn defines() -> Vec<String> {
    let mut d = vec![
        "-DDYNO_PERSISTENT=1".to_string(),
        format!("-DPERSIST_MIN_BLOCKS={DEFAULT_BLOCKS_PER_SM}"),
        format!("-DLAYER_PTRS={}", LAYER_POINTERS.len()),
    ];
    for (i, (name, _)) in LAYER_POINTERS.iter().enumerate() {
        d.push(format!("-DLAYER_PTR_{name}={i}"));
    }
    d
}

/// The layer table's pointers, layer after layer.
fn layer_table(weights: &DeviceWeights) -> Vec<u64> {
    weights
        .layers
        .iter()
        .flat_map(|l| LAYER_POINTERS.iter().map(move |(_, ptr)| ptr(l)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_environment_and_bad_values_are_named() {
        let d = PersistentSettings::parse(None, None).unwrap();
        assert_eq!(d.enabled, None);
        assert_eq!(d.wanted(), DEFAULT_ON);
        assert_eq!(d.blocks_per_sm, DEFAULT_BLOCKS_PER_SM);
        let s = PersistentSettings::parse(Some(" 1"), Some("3 ")).unwrap();
        assert_eq!((s.enabled, s.blocks_per_sm), (Some(true), 3));
        assert!(s.wanted());
        assert!(!PersistentSettings::parse(Some("0"), None).unwrap().wanted());
        for (on, blocks, var) in [
            (Some("yes"), None, "DYNO_CUDA_PERSISTENT=yes"),
            (None, Some("0"), "DYNO_CUDA_PERSISTENT_BLOCKS_PER_SM=0"),
            (None, Some("17"), "DYNO_CUDA_PERSISTENT_BLOCKS_PER_SM=17"),
            (None, Some("two"), "DYNO_CUDA_PERSISTENT_BLOCKS_PER_SM=two"),
        ] {
            let e = PersistentSettings::parse(on, blocks)
                .unwrap_err()
                .to_string();
            assert!(e.contains(var), "{e}");
        }
    }

    #[test]
    fn the_grid_never_asks_for_more_blocks_than_the_sms_hold() {
        assert_eq!(grid_blocks(132, 3, DEFAULT_BLOCKS_PER_SM), 396);
        assert_eq!(grid_blocks(132, 4, 2), 264);
        assert_eq!(grid_blocks(132, 1, 2), 132);
        assert_eq!(grid_blocks(132, 3, 16), 396);
    }
}
