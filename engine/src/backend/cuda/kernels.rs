//! Typed launchers for the NVRTC kernels. Every launch goes through
//! [`Kernels::launch`], which counts it (eager steps report launches per
//! decode step from this count; graphs report their node count).

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{sys, CudaModule, CudaStream};

use super::super::BackendError;

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
/// Keys each attention sub-warp loads per loop iteration (the kernel's
/// `ATTN_KEYS_PER_ITER`): more keys in flight per thread and the softmax
/// rescale amortized over more keys, against more registers.
pub const ATTN_KEYS_PER_ITER: usize = 2;
/// The values `DYNO_CUDA_ATTN_KEYS` may set instead.
pub const ATTN_KEYS_PER_ITER_CHOICES: [usize; 4] = [1, 2, 4, 8];
/// Most blocks per SM `DYNO_CUDA_ATTN_MIN_BLOCKS` may ask the register
/// allocation to allow (16 blocks of 128 threads fill an SM's 2,048).
pub const ATTN_MAX_MIN_BLOCKS: usize = 16;

/// Compile-time choices of the attention kernel that trade registers for
/// work per thread. The defaults are what the engine runs; the environment
/// overrides them to measure the trade-off without a rebuild (on the H200
/// the kernel is bound by occupancy: docs/CUDA.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionTuning {
    /// `DYNO_CUDA_ATTN_KEYS` (one of `ATTN_KEYS_PER_ITER_CHOICES`):
    /// the kernel's `ATTN_KEYS_PER_ITER`.
    pub keys_per_iter: usize,
    /// `DYNO_CUDA_ATTN_MIN_BLOCKS` (1 to `ATTN_MAX_MIN_BLOCKS`): the
    /// kernel's `__launch_bounds__` minimum blocks per SM, i.e. at most
    /// 65,536 / (128 × N) registers per thread (the compiler spills past
    /// that). 1 leaves the register count to the compiler. `None` (unset,
    /// the default): 4 for the staged tensor-core loop, the configuration
    /// the H200 measured, 1 otherwise.
    pub min_blocks: Option<usize>,
    /// `DYNO_CUDA_ATTN_STAGED`: K and V go through shared memory with
    /// `cp.async`, one iteration ahead (the kernel's `ATTN_STAGED`), so the
    /// loads in flight do not cost registers; the same keys in the same
    /// order, so the same bits. `None` (unset, the default): staged in the
    /// tensor-core loop (head dims up to 128) and not in the sub-warp loop,
    /// as each measured faster on the H200; `Some(true)` (1): staged in
    /// either loop; `Some(false)` (0): in neither.
    pub staged: Option<bool>,
    /// `DYNO_CUDA_ATTN_MMA`: scores and value sums on tensor cores
    /// (`mma.sync`, a warp per 16 keys; the kernel's `ATTN_MMA`) where the
    /// head dim is a multiple of 16 and the GPU is sm_80 or newer; other
    /// shapes keep the sub-warp loop. `None` (unset, the default): for head
    /// dims up to 64, where it measured faster; `Some(true)` (1): wherever
    /// it can run; `Some(false)` (0): never. Not bit-identical to the
    /// sub-warp loop (another summation order), within the same tolerances.
    pub mma: Option<bool>,
    /// `DYNO_CUDA_ATTN_PIPELINE`: the unstaged sub-warp loop loads the next
    /// iteration's K and V rows before it folds in the current ones (the
    /// kernel's `ATTN_PIPELINE`): loads overlap the softmax, for twice the
    /// K/V registers. The same keys in the same order, so the same bits.
    /// `true` (unset or 1, the default: qwen3-0.6b offline +1.9 % on the
    /// H200, docs/CUDA.md) or `false` (0).
    pub pipeline: bool,
    /// `DYNO_CUDA_ATTN_MMA_T`: the transposed tensor-core loop (keys as
    /// the products' rows, the query heads as their 8 columns; the
    /// kernel's `ATTN_MMA_T`), for head dims that are a multiple of 16 on
    /// sm_80 or newer, its rows staged in [`mma_t_shared_bytes`] of dynamic
    /// shared memory per block. `None` (unset): the default
    /// [`AttentionTuning::resolve_mma_t`] gives; `Some(true)` (1) asks for
    /// it (an error where it cannot run); `Some(false)` (0): never.
    pub mma_t: Option<bool>,
    /// The `attention_units` kernel's `__launch_bounds__` minimum blocks
    /// per SM (the kernel's `ATTN_UNITS_MIN_BLOCKS`). Not from the
    /// environment: `None` compiles it with `attention`'s bound, and the
    /// backend sets it to `attention`'s occupancy where the loop over units
    /// would otherwise cost a block per SM (`CudaBackend::with_loader`).
    pub units_min_blocks: Option<usize>,
}

impl Default for AttentionTuning {
    fn default() -> Self {
        AttentionTuning {
            keys_per_iter: ATTN_KEYS_PER_ITER,
            min_blocks: None,
            staged: None,
            mma: None,
            mma_t: None,
            pipeline: true,
            units_min_blocks: None,
        }
    }
}

impl AttentionTuning {
    /// The defaults, with the `DYNO_CUDA_ATTN_*` variables where set; a
    /// value out of range is an error naming the variable.
    pub fn from_env() -> Result<Self, BackendError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The defaults, with the values `var` gives for the variables' names.
    fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, BackendError> {
        let mut t = AttentionTuning::default();
        let switch = |name: &str| -> Result<Option<bool>, BackendError> {
            match var(name) {
                None => Ok(None),
                Some(text) => match text.trim() {
                    "0" => Ok(Some(false)),
                    "1" => Ok(Some(true)),
                    _ => Err(BackendError::Cuda(format!(
                        "{name}={text}: expected 0 or 1"
                    ))),
                },
            }
        };
        // A whole number `ok` accepts, or None where the variable is unset.
        let number = |name: &str,
                      ok: &dyn Fn(usize) -> bool,
                      expected: &str|
         -> Result<Option<usize>, BackendError> {
            match var(name) {
                None => Ok(None),
                Some(text) => match text.trim().parse::<usize>() {
                    Ok(n) if ok(n) => Ok(Some(n)),
                    _ => Err(BackendError::Cuda(format!(
                        "{name}={text}: expected {expected}"
                    ))),
                },
            }
        };
        t.staged = switch("DYNO_CUDA_ATTN_STAGED")?;
        t.mma = switch("DYNO_CUDA_ATTN_MMA")?;
        t.mma_t = switch("DYNO_CUDA_ATTN_MMA_T")?;
        if let Some(on) = switch("DYNO_CUDA_ATTN_PIPELINE")? {
            t.pipeline = on;
        }
        if let Some(n) = number(
            "DYNO_CUDA_ATTN_KEYS",
            &|n| ATTN_KEYS_PER_ITER_CHOICES.contains(&n),
            &format!("one of {ATTN_KEYS_PER_ITER_CHOICES:?}"),
        )? {
            t.keys_per_iter = n;
        }
        t.min_blocks = number(
            "DYNO_CUDA_ATTN_MIN_BLOCKS",
            &|n| (1..=ATTN_MAX_MIN_BLOCKS).contains(&n),
            &format!("1 to {ATTN_MAX_MIN_BLOCKS}"),
        )?;
        Ok(t)
    }

    /// `mma_t` settled for a model's head dim on a GPU of compute
    /// capability `major`.x with `shared_per_sm` bytes of shared memory per
    /// SM: `Some(true)` where the transposed loop runs, else `Some(false)`.
    /// Unset, it runs where the head dim is past 64 (the other tensor-core
    /// loop's rows cost registers there), at most 128 and a multiple of 16,
    /// on sm_80+, unless `DYNO_CUDA_ATTN_MMA=0`, and where an SM holds three
    /// of its blocks, the configuration the H200 measured (GPUs with less
    /// shared memory per SM, such as the A100 and the L40S at head dim 128,
    /// keep the sub-warp loop until measured). Asked for where it cannot
    /// run, an error naming the variable.
    pub fn resolve_mma_t(
        self,
        head_dim: usize,
        major: i32,
        shared_per_sm: usize,
    ) -> Result<Self, BackendError> {
        let can = head_dim.is_multiple_of(16) && major >= 8 && self.mma != Some(false);
        let on = match self.mma_t {
            Some(true) if !can => {
                return Err(BackendError::Cuda(format!(
                    "DYNO_CUDA_ATTN_MMA_T=1: the transposed tensor-core loop needs a head dim \
                     that is a multiple of 16 (this model's is {head_dim}), an sm_80 or newer GPU \
                     (this one is sm_{major}x) and DYNO_CUDA_ATTN_MMA not 0"
                )))
            }
            Some(true) if self.staged == Some(true) => {
                return Err(BackendError::Cuda(
                    "DYNO_CUDA_ATTN_MMA_T=1 with DYNO_CUDA_ATTN_STAGED=1: the transposed loop \
                     stages its own rows; unset DYNO_CUDA_ATTN_STAGED"
                        .into(),
                ))
            }
            Some(on) => on,
            None => {
                let block = mma_t_shared_bytes(head_dim) as usize + MMA_T_STATIC_ALLOWANCE;
                can && head_dim > 64
                    && head_dim <= 128
                    && self.staged != Some(true)
                    && 3 * block <= shared_per_sm
            }
        };
        Ok(AttentionTuning {
            mma_t: Some(on),
            ..self
        })
    }

    /// Dynamic shared memory per attention block: [`mma_t_shared_bytes`]
    /// where the transposed loop runs (after [`Self::resolve_mma_t`]), else 0.
    pub fn dynamic_shared_bytes(&self, head_dim: usize) -> u32 {
        if self.mma_t == Some(true) {
            mma_t_shared_bytes(head_dim)
        } else {
            0
        }
    }

    /// The `-D` options the kernel is compiled with.
    pub fn defines(&self) -> Vec<String> {
        vec![
            format!("-DATTN_KEYS_PER_ITER={}", self.keys_per_iter),
            format!("-DATTN_MIN_BLOCKS={}", self.min_blocks.unwrap_or(0)),
            format!("-DATTN_STAGED={}", self.staged.map_or(2, u8::from)),
            format!("-DATTN_MMA={}", self.mma.map_or(2, u8::from)),
            format!("-DATTN_PIPELINE={}", u8::from(self.pipeline)),
            format!(
                "-DATTN_UNITS_MIN_BLOCKS={}",
                self.units_min_blocks.unwrap_or(0)
            ),
            format!("-DATTN_MMA_T={}", u8::from(self.mma_t == Some(true))),
        ]
    }
}

/// Shared memory an attention block of the transposed loop takes besides
/// its staging: its static arrays (4,176 bytes at head dim 128, 5,216 in
/// the units kernels) and the 1 KiB the driver reserves per block.
const MMA_T_STATIC_ALLOWANCE: usize = 6 * 1024;

/// Warps per attention block (`ATTN_WARPS` in attention_config.cuh).
pub const ATTN_WARPS: usize = 4;

/// Bytes of dynamic shared memory an attention block of the transposed
/// tensor-core loop stages its rows in (`MmaTStage<HD>::BLOCK_BYTES` in
/// attention_mma.cu, which checks it against `-DATTN_MMA_T_SHARED`): per
/// warp two buffers of 16 K rows and 16 V rows, each row padded by 16 bytes.
pub fn mma_t_shared_bytes(head_dim: usize) -> u32 {
    (ATTN_WARPS * 2 * 2 * 16 * (head_dim + 8) * 2) as u32
}

/// The attention kernels, which all take the block's dynamic shared memory
/// where the transposed tensor-core loop runs.
pub const ATTENTION_KERNELS: [&str; 4] = [
    "attention",
    "attention_prefill",
    "attention_units",
    "attention_units_prefill",
];

/// How the KV cache lays out one layer's K (or V) rows (`kv_row` in
/// common.cuh): `DYNO_CUDA_KV_LAYOUT=auto` (unset, the default), `slot` or
/// `head`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvLayout {
    /// `[slot][kv head][head dim]`: a slot's heads side by side, so one
    /// head's consecutive keys lie `nkv` rows apart.
    SlotMajor,
    /// `[block][kv head][position][head dim]`: one head's rows of a block
    /// contiguous, so attention reads a head's keys in runs of
    /// `block_size` rows. The block size is compiled in.
    HeadMajor { block_size: usize },
    /// Head-major where a tensor-core attention loop runs (by default head
    /// dims that are a multiple of 16 up to 128: smollm2-135m offline
    /// +2.0 % on the H200), slot-major where the sub-warp loop does (it
    /// measured −1.9 % head-major on qwen3-0.6b). The kernels resolve it with the loop (`KV_HEAD_MAJOR`
    /// 2 in common.cuh), so the rule lives in one place.
    FollowAttention { block_size: usize },
}

impl KvLayout {
    /// The layout `DYNO_CUDA_KV_LAYOUT` names for blocks of `block_size`
    /// tokens; another value is an error naming the variable.
    pub fn from_env(block_size: usize) -> Result<Self, BackendError> {
        Self::parse(
            std::env::var("DYNO_CUDA_KV_LAYOUT").ok().as_deref(),
            block_size,
        )
    }

    /// The default for blocks of `block_size` tokens: follow the attention
    /// loop where the block size can be compiled in (a power of two, which
    /// the KV cache requires anyway), else slot-major.
    pub fn default_for(block_size: usize) -> Self {
        if block_size.is_power_of_two() {
            KvLayout::FollowAttention { block_size }
        } else {
            KvLayout::SlotMajor
        }
    }

    fn parse(text: Option<&str>, block_size: usize) -> Result<Self, BackendError> {
        match text.map(str::trim) {
            None | Some("auto") => Ok(Self::default_for(block_size)),
            Some("slot") => Ok(KvLayout::SlotMajor),
            Some("head") if block_size.is_power_of_two() => Ok(KvLayout::HeadMajor { block_size }),
            Some("head") => Err(BackendError::Cuda(format!(
                "DYNO_CUDA_KV_LAYOUT=head: the block size ({block_size}) must be a power of two"
            ))),
            Some(other) => Err(BackendError::Cuda(format!(
                "DYNO_CUDA_KV_LAYOUT={other}: expected auto, slot or head"
            ))),
        }
    }

    /// Whether a KV cache of blocks of `block_size` tokens can use this
    /// layout's kernels (head-major compiles the block size in).
    pub fn fits_block_size(&self, block_size: usize) -> bool {
        match self {
            KvLayout::SlotMajor => true,
            KvLayout::HeadMajor { block_size: b } | KvLayout::FollowAttention { block_size: b } => {
                *b == block_size
            }
        }
    }

    /// The `-D` options the kernels are compiled with.
    pub fn defines(&self) -> Vec<String> {
        let (mode, block_size) = match self {
            KvLayout::SlotMajor => return vec!["-DKV_HEAD_MAJOR=0".into()],
            KvLayout::HeadMajor { block_size } => (1, block_size),
            KvLayout::FollowAttention { block_size } => (2, block_size),
        };
        vec![
            format!("-DKV_HEAD_MAJOR={mode}"),
            format!("-DKV_BLOCK_SIZE={block_size}"),
        ]
    }
}

/// Widest head dim the kernels support (any multiple of 8 up to it: 64,
/// 80, 96, 128, 256 ...): the attention kernel gives a key at most one warp.
pub const MAX_HEAD_DIM: usize = 256;
/// Most query heads one attention block handles (its shared memory holds
/// their partials); larger GQA groups are cut into chunks.
pub const ATTN_MAX_GROUP_TILE: usize = 8;
/// Tokens (one warp each) of an `add_rmsnorm` block.
pub const ADD_RMSNORM_WARPS: usize = 4;
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
enum Arg {
    /// A device pointer (0 = null).
    Ptr(u64),
    I32(i32),
    F32(f32),
}

/// The kernel of the persistent program (`persistent::defines`);
/// every other kernel comes from the main one.
pub const PERSISTENT_KERNEL: &str = "decode_layers";

pub struct Kernels {
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, sys::CUfunction>,
    _modules: Vec<Arc<CudaModule>>,
    /// Dynamic shared memory per launch of a kernel that takes it.
    dynamic_shared: HashMap<&'static str, u32>,
    launches: Cell<u64>,
    /// Launch with programmatic stream serialization (sm_90+): a kernel may
    /// start while the previous one finishes; the kernels wait for it with
    /// `pdl_wait` before touching its data (see common.cuh).
    pdl: bool,
}

impl Kernels {
    /// The kernels of `module`, and `decode_layers` from `persistent` with
    /// its dynamic shared memory in bytes, where it was built (launching it
    /// without is an error). `attention_shared`: the attention kernels'
    /// dynamic shared memory ([`AttentionTuning::dynamic_shared_bytes`]).
    pub fn new(
        module: Arc<CudaModule>,
        persistent: Option<(Arc<CudaModule>, u32)>,
        attention_shared: u32,
        stream: Arc<CudaStream>,
        pdl: bool,
    ) -> Result<Self, BackendError> {
        let mut functions = HashMap::new();
        let mut dynamic_shared = HashMap::new();
        if attention_shared > 0 {
            for name in ATTENTION_KERNELS {
                dynamic_shared.insert(name, attention_shared);
            }
        }
        for &name in KERNEL_NAMES {
            let from = if name == PERSISTENT_KERNEL {
                match &persistent {
                    Some((p, bytes)) => {
                        dynamic_shared.insert(name, *bytes);
                        p
                    }
                    None => continue,
                }
            } else {
                &module
            };
            let f = from
                .load_function(name)
                .map_err(|e| BackendError::Cuda(format!("kernel {name}: {e}")))?;
            if let Some(&bytes) = dynamic_shared.get(name) {
                allow_dynamic_shared(&f, bytes)
                    .map_err(|e| BackendError::Cuda(format!("kernel {name}: {e}")))?;
            }
            functions.insert(name, f.cu_function());
        }
        Ok(Kernels {
            stream,
            functions,
            _modules: [Some(module), persistent.map(|(p, _)| p)]
                .into_iter()
                .flatten()
                .collect(),
            dynamic_shared,
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

    /// Launches `name` on the backend's stream (through the typed
    /// launchers below).
    fn launch(
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
            sharedMemBytes: self.dynamic_shared.get(name).copied().unwrap_or(0),
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

/// Lets `f` take `bytes` of dynamic shared memory per block (past the
/// default 48 KiB with its static shared memory, up to the GPU's limit).
pub fn allow_dynamic_shared(
    f: &cudarc::driver::CudaFunction,
    bytes: u32,
) -> Result<(), cudarc::driver::DriverError> {
    f.set_attribute(
        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
}

/// How a parameter is passed: a device pointer, an `int` or a `float`
/// (for checking the declarations against the CUDA sources).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Ptr,
    I32,
    F32,
}

/// Declares every kernel's parameters, in the order of its `extern "C"`
/// signature in `engine/kernels/*.cu` and with the same names. Each becomes
/// an argument struct with named, typed fields and a launcher method of the
/// same name on [`Kernels`], so a call site names every argument; the test
/// `signatures_match_the_cuda_sources` checks the lists against the sources.
macro_rules! kernels {
    ($( $(#[$doc:meta])* $kernel:ident => $Args:ident { $($field:ident : $kind:ident),* $(,)? } )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $Args { $(pub $field: kernels!(@ty $kind)),* }

            impl $Args {
                fn args(&self) -> Vec<Arg> {
                    vec![$(kernels!(@arg $kind, self.$field)),*]
                }
            }
        )*

        /// Every kernel the backend launches, by its `extern "C"` name. The
        /// attention and RoPE kernels are compiled for the model's head dim
        /// and GQA group size (see `nvrtc::compile`).
        pub const KERNEL_NAMES: &[&str] = &[$(stringify!($kernel)),*];

        /// Each kernel's parameters (name and kind), in signature order.
        #[cfg(test)]
        pub const KERNEL_SIGNATURES: &[(&str, &[(&str, ParamKind)])] =
            &[$((stringify!($kernel), &[$((stringify!($field), ParamKind::$kind)),*])),*];

        impl Kernels {
            $(
                $(#[$doc])*
                pub fn $kernel(
                    &self,
                    grid: (u32, u32, u32),
                    block: u32,
                    args: $Args,
                ) -> Result<(), BackendError> {
                    self.launch(stringify!($kernel), grid, block, &args.args())
                }
            )*
        }
    };
    (@ty Ptr) => { u64 };
    (@ty I32) => { i32 };
    (@ty F32) => { f32 };
    (@arg Ptr, $e:expr) => { Arg::Ptr($e) };
    (@arg I32, $e:expr) => { Arg::I32($e) };
    (@arg F32, $e:expr) => { Arg::F32($e) };
}

kernels! {
    /// Embedding lookup + the first RMSNorm (norm.cu); pending tokens
    /// (`PENDING_TOKEN`) read from `sampled`, the last step's rows.
    embed_rmsnorm => EmbedRmsnorm {
        tokens: Ptr, emb: Ptr, w: Ptr, residual: Ptr, out: Ptr, hidden: I32, eps: F32,
        sampled: Ptr, vocab: I32,
    }
    /// residual += x, then RMSNorm (norm.cu).
    add_rmsnorm => AddRmsnorm {
        x: Ptr, residual: Ptr, w: Ptr, out: Ptr, tokens: I32, eps: F32,
    }
    /// The last norm, for the rows that become logits (norm.cu).
    final_rmsnorm_rows => FinalRmsnormRows {
        rows: Ptr, x: Ptr, residual: Ptr, w: Ptr, out: Ptr, hidden: I32, eps: F32,
    }
    /// SiLU(gate) · up (activation.cu).
    silu_mul => SiluMul { gate_up: Ptr, out: Ptr, tokens: I32, inter: I32 }
    /// Bias, q/k norm, RoPE and the KV-cache write after the QKV GEMM
    /// (rope_kv.cu).
    qkv_rope_cache => QkvRopeCache {
        qkv: Ptr, bias: Ptr, q_norm: Ptr, k_norm: Ptr, cos_sin: Ptr, positions: Ptr,
        slots: Ptr, k_cache: Ptr, v_cache: Ptr, nq: I32, nkv: I32, eps: F32,
    }
    /// Paged attention, splits merged in-kernel (attention.cu).
    attention => Attention {
        qkv: Ptr, k_cache: Ptr, v_cache: Ptr, positions: Ptr, seq_idx: Ptr,
        block_tables: Ptr, bt_stride: Ptr, block_size: I32, nkv: I32, scale: F32,
        out: Ptr, part_acc: Ptr, part_ml: Ptr, counters: Ptr, split_keys: I32,
    }
    /// Paged attention for steps with prefill chunks (or drafts) and one
    /// split, without `batch_invariant`: a block may take several
    /// consecutive query tokens of one sequence, which then share its K/V
    /// loads; every token gets `attention`'s bits (attention.cu).
    attention_prefill => AttentionPrefill {
        qkv: Ptr, k_cache: Ptr, v_cache: Ptr, positions: Ptr, seq_idx: Ptr,
        block_tables: Ptr, bt_stride: Ptr, block_size: I32, nkv: I32, scale: F32,
        out: Ptr,
    }
    /// Paged attention under `batch_invariant` for steps of one split: each
    /// block folds its query's units of `split_keys` keys in order, the
    /// bits `attention` gives with one split per unit (attention.cu).
    attention_units => AttentionUnits {
        qkv: Ptr, k_cache: Ptr, v_cache: Ptr, positions: Ptr, seq_idx: Ptr,
        block_tables: Ptr, bt_stride: Ptr, block_size: I32, nkv: I32, scale: F32,
        out: Ptr, split_keys: I32,
    }
    /// `attention_units` for steps with prefill chunks (or drafts): a
    /// block may take several consecutive query tokens of one sequence,
    /// each with the bits `attention_units` gives it alone (attention.cu).
    attention_units_prefill => AttentionUnitsPrefill {
        qkv: Ptr, k_cache: Ptr, v_cache: Ptr, positions: Ptr, seq_idx: Ptr,
        block_tables: Ptr, bt_stride: Ptr, block_size: I32, nkv: I32, scale: F32,
        out: Ptr, split_keys: I32,
    }
    /// One token per logits row: greedy, or seeded top-k/top-p sampling
    /// (sampling.cu).
    sample_rows => SampleRows {
        logits: Ptr, vocab: I32, temperature: Ptr, top_k: Ptr, top_p: Ptr, seed_lo: Ptr,
        seed_hi: Ptr, draw_index: Ptr, out: Ptr,
    }
    /// RMSNorm prologue + QKV product, small batches (gemv.cu).
    norm_qkv => NormQkv { residual: Ptr, norm_w: Ptr, w: Ptr, y: Ptr, t: I32, n: I32, eps: F32 }
    /// norm_qkv and qkv_rope_cache in one kernel, models without q/k norm
    /// (gemv.cu).
    norm_qkv_rope_cache => NormQkvRopeCache {
        residual: Ptr, norm_w: Ptr, w: Ptr, bias: Ptr, cos_sin: Ptr, positions: Ptr,
        slots: Ptr, qkv: Ptr, k_cache: Ptr, v_cache: Ptr, t: I32, nq: I32, nkv: I32, eps: F32,
    }
    /// The same with q/k norms: each head's last block normalizes and
    /// rotates it, counted in `head_counters` (zeroed once,
    /// `arena::head_counter_bytes`) (gemv.cu).
    norm_qkv_qk_norm_rope_cache => NormQkvQkNormRopeCache {
        residual: Ptr, norm_w: Ptr, w: Ptr, bias: Ptr, q_norm: Ptr, k_norm: Ptr,
        head_counters: Ptr, cos_sin: Ptr, positions: Ptr, slots: Ptr, qkv: Ptr, k_cache: Ptr,
        v_cache: Ptr, t: I32, nq: I32, nkv: I32, eps: F32,
    }
    /// RMSNorm prologue + gate and up products + SiLU·mul (gemv.cu).
    norm_gate_up_silu => NormGateUpSilu {
        residual: Ptr, norm_w: Ptr, w: Ptr, act: Ptr, t: I32, eps: F32,
    }
    /// residual += x · W_oᵀ, small batches (gemv.cu).
    o_proj_residual => OProjResidual { x: Ptr, w: Ptr, residual: Ptr, t: I32, n: I32 }
    /// residual += x · W_downᵀ, small batches (gemv.cu).
    down_proj_residual => DownProjResidual { x: Ptr, w: Ptr, residual: Ptr, t: I32, n: I32 }
    /// o_proj_residual with K split across a block's warps
    /// (`DYNO_CUDA_GEMV_SPLIT_K`; gemv.cu).
    o_proj_residual_split => OProjResidualSplit { x: Ptr, w: Ptr, residual: Ptr, t: I32, n: I32 }
    /// down_proj_residual with K split across a block's warps (gemv.cu).
    down_proj_residual_split => DownProjResidualSplit {
        x: Ptr, w: Ptr, residual: Ptr, t: I32, n: I32,
    }
    /// Every layer of a small decode step in one persistent launch: the
    /// five small-batch bodies as phases between grid barriers
    /// (persistent.cu). `layers`: the layer table
    /// (`persistent::LAYER_POINTERS`); `k_cache` / `v_cache`: layer
    /// 0's; `barrier_count`: the grid barrier's 64-bit count
    /// (`persistent::BARRIER_BYTES`, zeroed once).
    decode_layers => DecodeLayers {
        layers: Ptr, nlayers: I32, residual: Ptr, qkv: Ptr, attn: Ptr, act: Ptr, cos_sin: Ptr,
        positions: Ptr, slots: Ptr, seq_idx: Ptr, block_tables: Ptr, bt_stride: Ptr,
        k_cache: Ptr, v_cache: Ptr, block_size: I32, t: I32, nq: I32, nkv: I32, eps: F32,
        scale: F32, nsplit: I32, part_acc: Ptr, part_ml: Ptr, counters: Ptr, barrier_count: Ptr,
    }
}

impl NormQkvRopeCache {
    /// The same launch for `norm_qkv_qk_norm_rope_cache`: q/k norm weights
    /// (0 where a model has none of that kind) and the head counters.
    pub fn with_qk_norms(
        &self,
        q_norm: u64,
        k_norm: u64,
        head_counters: u64,
    ) -> NormQkvQkNormRopeCache {
        NormQkvQkNormRopeCache {
            residual: self.residual,
            norm_w: self.norm_w,
            w: self.w,
            bias: self.bias,
            q_norm,
            k_norm,
            head_counters,
            cos_sin: self.cos_sin,
            positions: self.positions,
            slots: self.slots,
            qkv: self.qkv,
            k_cache: self.k_cache,
            v_cache: self.v_cache,
            t: self.t,
            nq: self.nq,
            nkv: self.nkv,
            eps: self.eps,
        }
    }
}

/// One launcher's arguments as another's: the named fields copied over
/// (the kernels that share a signature's first parameters).
macro_rules! copy_fields {
    ($from:expr => $To:ident { $($field:ident),* $(,)? }) => {
        $To { $($field: $from.$field),* }
    };
}

impl Attention {
    /// The same launch for `attention_units`, which takes no split
    /// buffers (its grid has one split).
    pub fn without_splits(&self) -> AttentionUnits {
        copy_fields!(self => AttentionUnits {
            qkv, k_cache, v_cache, positions, seq_idx, block_tables, bt_stride, block_size, nkv,
            scale, out, split_keys,
        })
    }

    /// The same launch for `attention_units_prefill` (one split, units).
    pub fn units_prefill(&self) -> AttentionUnitsPrefill {
        copy_fields!(self => AttentionUnitsPrefill {
            qkv, k_cache, v_cache, positions, seq_idx, block_tables, bt_stride, block_size, nkv,
            scale, out, split_keys,
        })
    }

    /// The same launch for `attention_prefill` (one split, no units).
    pub fn prefill(&self) -> AttentionPrefill {
        copy_fields!(self => AttentionPrefill {
            qkv, k_cache, v_cache, positions, seq_idx, block_tables, bt_stride, block_size, nkv,
            scale, out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_layout_follows_attention_unless_asked_and_bad_values_are_named() {
        let auto = KvLayout::parse(None, 16).unwrap();
        assert_eq!(auto, KvLayout::FollowAttention { block_size: 16 });
        assert_eq!(KvLayout::parse(Some("auto"), 16).unwrap(), auto);
        assert_eq!(auto.defines(), ["-DKV_HEAD_MAJOR=2", "-DKV_BLOCK_SIZE=16"]);
        assert!(auto.fits_block_size(16) && !auto.fits_block_size(32));
        // A block size that cannot be compiled in leaves the default
        // slot-major rather than failing (the KV cache refuses it anyway).
        assert_eq!(KvLayout::parse(None, 24).unwrap(), KvLayout::SlotMajor);
        assert_eq!(
            KvLayout::parse(Some("slot"), 16).unwrap(),
            KvLayout::SlotMajor
        );
        let head = KvLayout::parse(Some(" head "), 16).unwrap();
        assert_eq!(head, KvLayout::HeadMajor { block_size: 16 });
        assert_eq!(head.defines(), ["-DKV_HEAD_MAJOR=1", "-DKV_BLOCK_SIZE=16"]);
        assert_eq!(KvLayout::SlotMajor.defines(), ["-DKV_HEAD_MAJOR=0"]);
        assert!(head.fits_block_size(16) && !head.fits_block_size(32));
        assert!(KvLayout::SlotMajor.fits_block_size(32));
        let e = KvLayout::parse(Some("head"), 24).unwrap_err().to_string();
        assert!(
            e.contains("DYNO_CUDA_KV_LAYOUT=head") && e.contains("24"),
            "{e}"
        );
        let e = KvLayout::parse(Some("hnd"), 16).unwrap_err().to_string();
        assert!(
            e.contains("DYNO_CUDA_KV_LAYOUT=hnd") && e.contains("auto, slot or head"),
            "{e}"
        );
    }

    /// The tuning `vars` (name, value) give, as if they were the environment.
    fn tuning(vars: &[(&str, &str)]) -> Result<AttentionTuning, BackendError> {
        AttentionTuning::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn attention_tuning_comes_from_the_environment_and_bad_values_are_named() {
        let d = tuning(&[]).unwrap();
        assert_eq!(d, AttentionTuning::default());
        assert_eq!(
            d.defines(),
            [
                "-DATTN_KEYS_PER_ITER=2",
                "-DATTN_MIN_BLOCKS=0",
                "-DATTN_STAGED=2",
                "-DATTN_MMA=2",
                "-DATTN_PIPELINE=1",
                "-DATTN_UNITS_MIN_BLOCKS=0",
                "-DATTN_MMA_T=0"
            ]
        );
        let t = tuning(&[
            ("DYNO_CUDA_ATTN_KEYS", "1"),
            ("DYNO_CUDA_ATTN_MIN_BLOCKS", " 5 "),
            ("DYNO_CUDA_ATTN_STAGED", "1"),
            ("DYNO_CUDA_ATTN_MMA", "0"),
            ("DYNO_CUDA_ATTN_PIPELINE", "0"),
        ])
        .unwrap();
        assert_eq!(
            (t.keys_per_iter, t.min_blocks, t.staged, t.mma),
            (1, Some(5), Some(true), Some(false))
        );
        assert_eq!(t.defines()[2], "-DATTN_STAGED=1");
        assert_eq!(t.defines()[3], "-DATTN_MMA=0");
        assert!(!t.pipeline);
        assert_eq!(t.defines()[4], "-DATTN_PIPELINE=0");
        // The transposed tensor-core loop: settled per head dim and GPU.
        // Shared memory per SM: the H200's 228 KiB, the A100's 164 KiB.
        const H200: usize = 228 * 1024;
        const A100: usize = 164 * 1024;
        let mma_t = |vars: &[(&str, &str)], hd, major| {
            tuning(vars).and_then(|t| t.resolve_mma_t(hd, major, H200))
        };
        let by_default = |hd| mma_t(&[], hd, 9).unwrap().mma_t == Some(true);
        assert!(by_default(128) && by_default(80) && by_default(96));
        assert!(!by_default(64) && !by_default(72) && !by_default(256));
        // Two blocks per SM of the A100 at head dim 128: not by default,
        // but when asked for; three at head dim 80.
        let on_a100 = |vars: &[(&str, &str)], hd| {
            tuning(vars)
                .and_then(|t| t.resolve_mma_t(hd, 8, A100))
                .unwrap()
                .mma_t
        };
        assert_eq!(on_a100(&[], 128), Some(false));
        assert_eq!(on_a100(&[], 80), Some(true));
        assert_eq!(on_a100(&[("DYNO_CUDA_ATTN_MMA_T", "1")], 128), Some(true));
        let on = mma_t(&[("DYNO_CUDA_ATTN_MMA_T", "1")], 128, 9).unwrap();
        assert_eq!(on.mma_t, Some(true));
        assert_eq!(on.defines()[6], "-DATTN_MMA_T=1");
        assert_eq!(on.dynamic_shared_bytes(128), 4 * 2 * 2 * 16 * 136 * 2);
        let off = mma_t(&[("DYNO_CUDA_ATTN_MMA_T", "0")], 128, 9).unwrap();
        assert_eq!((off.mma_t, off.dynamic_shared_bytes(128)), (Some(false), 0));
        assert_eq!(off.defines()[6], "-DATTN_MMA_T=0");
        assert!(!mma_t(&[("DYNO_CUDA_ATTN_MMA", "0")], 128, 9)
            .unwrap()
            .mma_t
            .unwrap());
        for (vars, hd, major, text) in [
            (
                &[("DYNO_CUDA_ATTN_MMA_T", "1")][..],
                72,
                9,
                "this model's is 72",
            ),
            (&[("DYNO_CUDA_ATTN_MMA_T", "1")][..], 128, 7, "sm_7x"),
            (
                &[("DYNO_CUDA_ATTN_MMA_T", "1"), ("DYNO_CUDA_ATTN_MMA", "0")][..],
                128,
                9,
                "DYNO_CUDA_ATTN_MMA not 0",
            ),
            (
                &[
                    ("DYNO_CUDA_ATTN_MMA_T", "1"),
                    ("DYNO_CUDA_ATTN_STAGED", "1"),
                ][..],
                128,
                9,
                "unset DYNO_CUDA_ATTN_STAGED",
            ),
            (
                &[("DYNO_CUDA_ATTN_MMA_T", "yes")][..],
                128,
                9,
                "DYNO_CUDA_ATTN_MMA_T=yes",
            ),
        ] {
            let e = mma_t(vars, hd, major).unwrap_err().to_string();
            assert!(e.contains(text), "{vars:?}: {e}");
        }
        let t = tuning(&[("DYNO_CUDA_ATTN_MMA", " 1")]).unwrap();
        assert_eq!(t.mma, Some(true));
        assert_eq!(t.defines()[3], "-DATTN_MMA=1");
        for (var, value) in [
            ("DYNO_CUDA_ATTN_KEYS", "3"),
            ("DYNO_CUDA_ATTN_KEYS", "x"),
            ("DYNO_CUDA_ATTN_MIN_BLOCKS", "0"),
            ("DYNO_CUDA_ATTN_MIN_BLOCKS", "17"),
            ("DYNO_CUDA_ATTN_STAGED", "yes"),
            ("DYNO_CUDA_ATTN_MMA", "2"),
            ("DYNO_CUDA_ATTN_PIPELINE", "on"),
        ] {
            let e = tuning(&[(var, value)]).unwrap_err().to_string();
            assert!(e.contains(&format!("{var}={value}")), "{e}");
        }
    }

    /// The parameters of `extern "C"` kernel `name` in the CUDA sources, as
    /// (lower-cased name, kind).
    fn cuda_signature(src: &str, name: &str) -> Vec<(String, ParamKind)> {
        // The kernel's own parameter list is the parenthesis right after
        // its name (not `__launch_bounds__(...)`), before the body.
        let params = src
            .match_indices("extern \"C\"")
            .filter_map(|(i, _)| {
                let head = &src[i..i + src[i..].find('{')?];
                let at = head.find(&format!(" {name}("))? + name.len() + 2;
                Some(head[at..at + head[at..].find(')')?].to_string())
            })
            .next()
            .unwrap_or_else(|| panic!("kernel {name} not found in the CUDA sources"));
        params
            .split(',')
            .map(|p| {
                let p = p.trim();
                let ident = p
                    .rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .expect("a parameter name")
                    .to_ascii_lowercase();
                let kind = if p.contains('*') {
                    ParamKind::Ptr
                } else if p.starts_with("int ") {
                    ParamKind::I32
                } else if p.starts_with("float ") {
                    ParamKind::F32
                } else {
                    panic!("kernel {name}: parameter `{p}` is neither a pointer, int nor float")
                };
                (ident, kind)
            })
            .collect()
    }

    #[test]
    fn signatures_match_the_cuda_sources() {
        let src = super::super::nvrtc::program_source();
        for (name, params) in KERNEL_SIGNATURES {
            let want: Vec<(String, ParamKind)> = params
                .iter()
                .map(|(n, k)| (n.to_ascii_lowercase(), *k))
                .collect();
            assert_eq!(
                cuda_signature(&src, name),
                want,
                "kernel {name}: the launcher's parameters differ from the CUDA signature"
            );
        }
        // Every extern "C" kernel in the sources has a launcher.
        let declared = src.matches("extern \"C\"").count();
        assert_eq!(declared, KERNEL_NAMES.len(), "kernels without a launcher");
    }
}
