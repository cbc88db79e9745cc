//! Typed launchers for the NVRTC kernels. Every launch goes through
//! [`Kernels::launch`], which counts it (eager steps report launches per
//! decode step from this count; graphs report their node count).

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{sys, CudaModule, CudaStream};

use super::super::BackendError;

/// Every kernel the backend launches, by its `extern "C"` name. The
/// attention and RoPE kernels are compiled for the model's head dim and GQA
/// group size (see `nvrtc::compile`).
pub const KERNEL_NAMES: [&str; 12] = [
    "embed_rmsnorm",
    "add_rmsnorm",
    "final_rmsnorm_rows",
    "silu_mul",
    "qkv_rope_cache",
    "attention",
    "sample_rows",
    "norm_qkv",
    "norm_qkv_rope_cache",
    "norm_gate_up_silu",
    "o_proj_residual",
    "down_proj_residual",
];

/// Most tokens the small-batch kernels (`gemv.cu`) take in one step.
pub const GEMV_MAX_T: usize = 8;
/// Warps per block and output rows per warp of the small-batch kernels.
pub const GEMV_WARPS: usize = 4;
pub const GEMV_ROWS: usize = 2;
/// Widest hidden size the small-batch kernels' shared memory holds (8 rows
/// of bf16 in 48 KiB).
pub const GEMV_MAX_HIDDEN: usize = 3072;
/// Most context splits of one attention grid.
pub const ATTN_MAX_SPLITS: usize = 32;

/// Widest head dim the kernels support (any multiple of 8 up to it: 64,
/// 80, 96, 128, 256 ...): the attention kernel gives a key at most one warp.
pub const MAX_HEAD_DIM: usize = 256;
/// Most query heads one attention block handles (its shared memory holds
/// their partials); larger GQA groups are cut into chunks.
pub const ATTN_MAX_GROUP_TILE: usize = 8;
/// Threads of a `qkv_rope_cache` block: its warps loop over the heads.
pub const ROPE_CACHE_THREADS: u32 = 512;

/// Chunks a GQA group of `group` query heads is cut into for the attention
/// grid (its y dimension is kv heads × chunks); the kernel is compiled with
/// the same value (`-DDYNO_GROUP_CHUNKS`).
pub fn attention_group_chunks(group: usize) -> usize {
    group.div_ceil(ATTN_MAX_GROUP_TILE).max(1)
}

/// One kernel argument, passed by value.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    /// A device pointer (0 = null).
    Ptr(u64),
    I32(i32),
    F32(f32),
}

pub struct Kernels {
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, sys::CUfunction>,
    _module: Arc<CudaModule>,
    launches: Cell<u64>,
    /// Launch with programmatic stream serialization (sm_90+): a kernel may
    /// start while the previous one finishes; the kernels wait for it with
    /// `pdl_wait` before touching its data (see common.cuh).
    pdl: bool,
}

impl Kernels {
    pub fn new(
        module: Arc<CudaModule>,
        stream: Arc<CudaStream>,
        pdl: bool,
    ) -> Result<Self, BackendError> {
        let mut functions = HashMap::new();
        for name in KERNEL_NAMES {
            let f = module
                .load_function(name)
                .map_err(|e| BackendError::Cuda(format!("kernel {name}: {e}")))?;
            functions.insert(name, f.cu_function());
        }
        Ok(Kernels {
            stream,
            functions,
            _module: module,
            launches: Cell::new(0),
            pdl,
        })
    }

    /// Launches counted since the last `take_launch_count`.
    pub fn take_launch_count(&self) -> u64 {
        self.launches.replace(0)
    }

    pub fn count_external_launch(&self) {
        self.launches.set(self.launches.get() + 1);
    }

    /// Launches `name` on the backend's stream.
    pub fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        args: &[Arg],
    ) -> Result<(), BackendError> {
        let f = *self
            .functions
            .get(name)
            .ok_or_else(|| BackendError::Cuda(format!("unknown kernel {name}")))?;
        // Values live in `storage`; the driver reads them through `params`
        // during cuLaunchKernel only.
        let mut storage: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(p) => p,
                Arg::I32(v) => u64::from(v as u32),
                Arg::F32(v) => u64::from(v.to_bits()),
            })
            .collect();
        let mut params: Vec<*mut c_void> = storage
            .iter_mut()
            .map(|v| v as *mut u64 as *mut c_void)
            .collect();
        // SAFETY: each parameter points at 8 bytes whose low bytes hold the
        // value (little-endian), matching the kernel's parameter types; the
        // kernel names and argument lists are kept in sync with kernels/*.cu.
        // Without PDL the launch carries no attribute, which is a plain
        // cuLaunchKernel.
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue {
                programmaticStreamSerializationAllowed: 1,
            },
        };
        let config = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: 0,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: u32::from(self.pdl),
        };
        // SAFETY: as above; `config` and `attr` outlive the call.
        let launched = unsafe {
            sys::cuLaunchKernelEx(&config, f, params.as_mut_ptr(), std::ptr::null_mut()).result()
        };
        launched.map_err(|e| BackendError::Cuda(format!("launching {name}: {e}")))?;
        self.launches.set(self.launches.get() + 1);
        Ok(())
    }
}
