//! CUDA backend: bf16 weights and activations with f32 accumulation, cuBLAS
//! GEMMs, NVRTC-compiled kernels (`engine/kernels/*.cu`), a paged KV pool
//! allocated once, a preallocated activation arena, and decode steps replayed
//! as CUDA graphs per batch-size bucket. Built with cudarc's dynamic loading:
//! a binary built without CUDA runs anywhere and finds the driver, NVRTC and
//! cuBLAS (CUDA 13, else 12) at run time.
//!
//! Files: `device` (driver, context, properties), `nvrtc` (header search and
//! compilation), `kernels` (launchers), `gemm` (cuBLAS), `gemm_lt`
//! (batch-invariant cuBLASLt products), `buffer` (device and
//! pinned memory), `weights` (upload, fused QKV and gate-up), `kv_pool`,
//! `arena`, `step_meta` (per-step inputs), `runner` (the forward
//! pass), `persistent` (all layers of a small step in one launch), `graphs`
//! (capture and buckets).

mod arena;
mod buffer;
mod device;
mod gemm;
mod gemm_lt;
mod graphs;
mod kernels;
mod kv_pool;
mod nvrtc;
mod persistent;
mod profile_window;
mod runner;
mod step_gaps;
mod step_meta;
mod weights;

use std::collections::VecDeque;
use std::sync::Arc;

use cudarc::driver::{result, sys as sys_driver, CudaContext, CudaEvent, CudaStream};

use super::*;
use arena::{Arena, Dims};
use buffer::{DeviceBuffer, PinnedBuffer};
use graphs::DecodeGraphs;
use kv_pool::KvPool;
use profile_window::StepProfileWindow;
use runner::Runner;
use step_gaps::StepGaps;
use step_meta::{MetaLayout, MetaLimits, Rows};

pub use device::{device_properties, is_available};

/// GPU test hook: pins and self-checks the batch-invariant product of an
/// `n × k` weight for up to `max_rows` rows on device 0, then compares
/// `rows`-row products with the `max_rows` one bit for bit (see
/// `gemm_lt::check_shape`), candidates timed as `DYNO_CUDA_PIN_TIMING`
/// says, as at the engine's load. Returns the pinned algorithm.
pub fn check_invariant_gemm(
    n: usize,
    k: usize,
    max_rows: usize,
    rows: &[usize],
) -> Result<String, BackendError> {
    let (_ctx, stream) = device::open(0)?;
    gemm_lt::check_shape(&stream, n, k, max_rows, rows, pin_timing()?)
}

/// How the batch-invariant GEMMs' candidates are timed at load:
/// `DYNO_CUDA_PIN_TIMING` (`gemm_lt::PinTiming`).
fn pin_timing() -> Result<gemm_lt::PinTiming, BackendError> {
    gemm_lt::PinTiming::parse(std::env::var("DYNO_CUDA_PIN_TIMING").ok().as_deref())
}

/// Device memory kept free beyond the KV pool for graphs and cuBLAS.
const RESERVE_BYTES: u64 = 512 << 20;

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    runner: Runner,
    kv: Option<KvPool>,
    graphs: DecodeGraphs,
    /// Host sides of steps not launched: two in all, less those launched.
    idle_hosts: Vec<StepHost>,
    /// Packed metadata of the steps that sync before returning (graph
    /// capture, `forward_logits`).
    sync_meta: PinnedBuffer<u32>,
    /// Launched steps not yet collected, oldest first (at most two).
    launched: VecDeque<Launched>,
    /// Rows of `arena.sampled` the last step left, which the next step's
    /// `PENDING_TOKEN`s may name (0 after a step that left none usable).
    pending_rows: usize,
    enforce_eager: bool,
    /// The KV cache layout the kernels were compiled for.
    kv_layout: kernels::KvLayout,
    max_num_seqs: usize,
    /// `max_num_seqs` for configs that leave it at 0, on this GPU.
    auto_max_num_seqs: usize,
    device_name: String,
    free_at_start: u64,
    min_free: u64,
    last_decode_launches: Option<u64>,
    /// `DYNO_PROFILE_DECODE_STEPS` / `DYNO_PROFILE_PREFILL_STEPS`: steps
    /// bracketed by cuProfilerStart/Stop for `ncu --profile-from-start off`.
    profile_window: StepProfileWindow,
    /// Host-clock spans of replayed decode steps, summarized on drop.
    step_gaps: StepGaps,
}

/// The host side of one step: its packed metadata (pinned; the upload
/// reads it when the stream gets there), its sampled tokens (pinned; the
/// download writes them) and two events around its work on the stream. The
/// backend has two, so that step N+1 is packed and launched while step N
/// runs and its download is still to land (`Backend::launch`).
struct StepHost {
    meta: PinnedBuffer<u32>,
    sampled: PinnedBuffer<u32>,
    /// Recorded before the step's upload and after its download.
    start: CudaEvent,
    done: CudaEvent,
}

impl StepHost {
    fn new(ctx: &Arc<CudaContext>, meta_len: usize, rows: usize) -> Result<Self, BackendError> {
        let event = || {
            ctx.new_event(Some(sys_driver::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| BackendError::Cuda(format!("creating a step event: {e}")))
        };
        Ok(StepHost {
            meta: PinnedBuffer::new(meta_len)?,
            sampled: PinnedBuffer::new(rows)?,
            start: event()?,
            done: event()?,
        })
    }
}

/// A launched step not yet collected.
struct Launched {
    host: StepHost,
    /// Sampled rows to read back.
    samples: usize,
    /// The graph bucket it replayed and its packing span (`step_gaps`).
    replay: Option<(usize, std::time::Duration)>,
}

/// What `enqueue` did with a step.
enum Enqueued {
    /// On the stream; `collect` waits for it.
    Queued {
        samples: usize,
        replay: Option<(usize, std::time::Duration)>,
    },
    /// Run to the end already (draft verification in chunks).
    Done(Vec<u32>),
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // A launched step may still write its sampled tokens into a pinned
        // buffer freed below: let the stream finish first.
        if !self.launched.is_empty() {
            let _ = self.stream.synchronize();
        }
        for line in self.step_gaps.summary() {
            eprintln!("cuda: {line}");
        }
    }
}

impl CudaBackend {
    pub fn new(checkpoint: &Checkpoint, cfg: &EngineConfig) -> Result<Self, BackendError> {
        Self::with_loader(&checkpoint.config, cfg, &|name| {
            Ok(checkpoint.tensor(name)?.to_bf16())
        })
    }

    /// Builds the backend from `config` and a tensor loader (HF names →
    /// bf16 values); `new` loads from a checkpoint.
    pub fn with_loader(
        config: &crate::config::ModelConfig,
        cfg: &EngineConfig,
        load: &dyn Fn(&str) -> Result<Vec<half::bf16>, BackendError>,
    ) -> Result<Self, BackendError> {
        let (ctx, stream) = device::open(0)?;
        let cuda =
            |what: &str, e: cudarc::driver::DriverError| BackendError::Cuda(format!("{what}: {e}"));
        let free_at_start = ctx.mem_get_info().map_err(|e| cuda("cuMemGetInfo", e))?.0 as u64;
        let props = device::properties_of(&ctx, device::driver_version()?)?;
        let auto_max_num_seqs = crate::engine_config::auto_max_num_seqs(Some((
            props.name.as_str(),
            props.total_memory_bytes,
        )));
        let max_num_seqs = cfg.effective_max_num_seqs(auto_max_num_seqs);
        let dims = dims_of(config, cfg)?;
        let shared_per_sm = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
            )
            .map_err(|e| cuda("shared memory per SM", e))?;
        let tuning = kernels::AttentionTuning::from_env()?.resolve_mma_t(
            dims.head_dim,
            props.compute_capability.0,
            shared_per_sm.max(0) as usize,
        )?;
        let attention_shared = tuning.dynamic_shared_bytes(dims.head_dim);
        let kv_layout = kernels::KvLayout::from_env(cfg.block_size)?;
        let mut module = nvrtc::load(&ctx, dims.kernel_shape(tuning, kv_layout), &[])?;
        if cfg.batch_invariant {
            // attention_units (the knob's large steps) loops over units and
            // may need more registers than attention; where that costs
            // blocks per SM, build it again bounded to attention's.
            let blocks = |name: &str| {
                module
                    .load_function(name)
                    .and_then(|f| {
                        f.occupancy_max_active_blocks_per_multiprocessor(
                            128,
                            attention_shared as usize,
                            None,
                        )
                    })
                    .map_err(|e| cuda("attention occupancy", e))
            };
            let (split, units) = (blocks("attention")?, blocks("attention_units")?);
            if units < split {
                let bounded = kernels::AttentionTuning {
                    units_min_blocks: Some(split as usize),
                    ..tuning
                };
                module = nvrtc::load(&ctx, dims.kernel_shape(bounded, kv_layout), &[])?;
            }
        }
        // Programmatic dependent launch needs Hopper (sm_90) or newer;
        // DYNO_CUDA_PDL=0 turns it off to measure what it buys.
        let pdl = props.compute_capability.0 >= 9
            && std::env::var("DYNO_CUDA_PDL").map_or(true, |v| v != "0");
        let profile_window = StepProfileWindow::from_env()?;
        let weights = weights::DeviceWeights::upload(&stream, config, load)?;
        let sm_count = props.sm_count.max(1) as usize;
        let persistent_settings = persistent::PersistentSettings::from_env()?;
        let (persistent_module, persistent) = match (
            persistent_settings.wanted(),
            persistent::unsupported(&dims, &weights, cfg.batch_invariant),
        ) {
            (false, _) => (None, None),
            (true, Some(why)) if persistent_settings.enabled == Some(true) => {
                return Err(BackendError::Cuda(format!(
                    "DYNO_CUDA_PERSISTENT=1: decode_layers cannot run this model: {why}"
                )))
            }
            (true, Some(_)) => (None, None),
            (true, None) => match persistent::PersistentDecode::build(
                &ctx,
                &stream,
                dims.kernel_shape(tuning, kv_layout),
                &weights,
                sm_count,
                persistent_settings.blocks_per_sm,
            ) {
                Ok((module, p)) => (Some((module, p.shared)), Some(p)),
                Err(e) if persistent_settings.enabled == Some(true) => {
                    return Err(BackendError::Cuda(format!("DYNO_CUDA_PERSISTENT=1: {e}")))
                }
                Err(e) => {
                    eprintln!(
                        "warning: the persistent decode kernel is off ({e}); small steps run \
                         five kernels per layer"
                    );
                    (None, None)
                }
            },
        };
        let kernels = kernels::Kernels::new(
            module,
            persistent_module,
            attention_shared,
            stream.clone(),
            pdl,
        )?;
        let logits_rows = arena::logits_rows(max_num_seqs);
        let invariant_products = runner::InvariantProducts::parse(
            std::env::var("DYNO_INVARIANT_PRODUCTS").ok().as_deref(),
        )?;
        if cfg.batch_invariant
            && invariant_products == runner::InvariantProducts::Gemv
            && !dims.small_batch_kernels()
        {
            return Err(BackendError::Cuda(format!(
                "DYNO_INVARIANT_PRODUCTS=gemv: this model has no small-batch kernels (hidden \
                 size {} above {}, or a width not a multiple of 8); use cublaslt",
                dims.hidden,
                kernels::GEMV_MAX_HIDDEN
            )));
        }
        // The knob's variables are read (and refused when bad) only with it on.
        let invariant_one_block_from = if cfg.batch_invariant {
            one_block_from_env(sm_count)?
        } else {
            runner::invariant_one_block_from(sm_count)
        };
        let (gemm, split_keys, partial_rows) = if cfg.batch_invariant {
            let split_keys = split_keys_for(dims.max_model_len)?;
            let max_splits = dims.max_model_len.div_ceil(split_keys);
            let shapes = gemm_shapes(
                &dims,
                &weights,
                cfg.max_num_batched_tokens,
                max_num_seqs,
                logits_rows,
            );
            let pinned = gemm_lt::InvariantGemm::new(&stream, &shapes, pin_timing()?)?;
            // What was pinned and how fast it measured at load: the knob's
            // throughput cost is mostly these choices (docs/CUDA.md).
            for line in pinned.describe() {
                eprintln!("batch_invariant: pinned GEMM {line}");
            }
            (
                runner::Products::Invariant(pinned),
                split_keys,
                arena::PARTIAL_ROWS.max(runner::invariant_partial_rows(
                    cfg.max_num_batched_tokens.max(max_num_seqs),
                    dims.attention_head_blocks(),
                    max_splits,
                    invariant_one_block_from,
                )),
            )
        } else {
            (
                runner::Products::Cublas(gemm::Gemm::new(&stream)?),
                0,
                arena::PARTIAL_ROWS,
            )
        };
        let qk_norm_fused = runner::qk_norm_fused(
            std::env::var("DYNO_CUDA_QK_NORM_FUSED").ok().as_deref(),
            dims.qk_norm_in_qkv_kernel(),
        )?;
        let attention_prefill =
            runner::attention_prefill(std::env::var("DYNO_CUDA_ATTN_PREFILL").ok().as_deref())?;
        let gemv_split_k = runner::gemv_split_k(
            std::env::var("DYNO_CUDA_GEMV_SPLIT_K").ok().as_deref(),
            dims.nq * dims.head_dim,
            dims.inter,
        )?;
        let cos_sin = DeviceBuffer::upload(
            &stream,
            &crate::backend::rope::Rope::new(config).cos_sin_table(dims.max_model_len),
            "RoPE table",
        )?;
        let arena = Arena::allocate(
            &stream,
            &dims,
            cfg.max_num_batched_tokens,
            max_num_seqs,
            cfg.block_size,
            partial_rows,
        )?;
        let idle_hosts = vec![
            StepHost::new(&ctx, arena.meta_len, arena.logits_rows)?,
            StepHost::new(&ctx, arena.meta_len, arena.logits_rows)?,
        ];
        let sync_meta = PinnedBuffer::new(arena.meta_len)?;
        let mut backend = CudaBackend {
            ctx,
            stream,
            runner: Runner {
                kernels,
                gemm,
                weights,
                arena,
                cos_sin,
                dims,
                sm_count,
                split_keys,
                invariant_one_block_from,
                invariant_products,
                persistent,
                qk_norm_fused,
                gemv_split_k,
                attention_prefill,
            },
            kv: None,
            graphs: DecodeGraphs::default(),
            idle_hosts,
            sync_meta,
            launched: VecDeque::new(),
            pending_rows: 0,
            enforce_eager: cfg.enforce_eager,
            kv_layout,
            max_num_seqs,
            auto_max_num_seqs,
            device_name: props.name,
            free_at_start,
            min_free: free_at_start,
            last_decode_launches: None,
            profile_window,
            step_gaps: StepGaps::default(),
        };
        backend.note_memory()?;
        Ok(backend)
    }

    fn note_memory(&mut self) -> Result<(), BackendError> {
        let (free, _) = self
            .ctx
            .mem_get_info()
            .map_err(|e| BackendError::Cuda(format!("cuMemGetInfo: {e}")))?;
        self.min_free = self.min_free.min(free as u64);
        Ok(())
    }

    fn limits(&self, kv: &KvPool) -> MetaLimits {
        MetaLimits {
            block_size: kv.block_size,
            num_blocks: kv.num_blocks,
            trash_block: kv.trash_block(),
            vocab_size: self.runner.dims.vocab,
            max_model_len: self.runner.dims.max_model_len,
            pending_rows: self.pending_rows,
        }
    }

    /// Uploads `packed` (pinned) into the arena's meta buffer. The caller
    /// keeps `packed` unwritten until the stream has passed the copy (a
    /// sync, or the step's `done` event).
    fn upload_meta(&self, packed: &[u32]) -> Result<(), BackendError> {
        // SAFETY: the arena's meta buffer holds meta_len ≥ packed.len()
        // elements; see above for the source.
        unsafe {
            result::memcpy_htod_async(self.runner.arena.meta.ptr, packed, self.stream.cu_stream())
        }
        .map_err(|e| BackendError::Cuda(format!("uploading step metadata: {e}")))
    }

    fn sync(&self) -> Result<(), BackendError> {
        self.stream
            .synchronize()
            .map_err(|e| BackendError::Cuda(format!("step failed: {e}")))
    }

    /// Captures one decode graph per bucket (after a warm-up run of each).
    fn capture_graphs(&mut self) -> Result<(), BackendError> {
        let Some(kv) = self.kv.as_ref() else {
            return Ok(());
        };
        let limits = self.limits(kv);
        let mut graphs = DecodeGraphs::default();
        for bucket in graphs::buckets(self.max_num_seqs) {
            let layout = MetaLayout {
                tokens_cap: bucket,
                samples_cap: bucket,
            };
            let packed = step_meta::pack(
                &[],
                layout,
                &limits,
                Rows::Sampled,
                bucket,
                self.sync_meta.as_mut_slice(),
            )?;
            self.upload_meta(&self.sync_meta.as_slice()[..packed.len])?;
            // A graph replays decode steps of any context length.
            let max_context = self.runner.dims.max_model_len;
            self.runner
                .step(kv, &layout, bucket, bucket, max_context, false)?;
            self.sync()?;
            let runner = &self.runner;
            let captured = graphs::capture(&self.stream, || {
                runner.step(kv, &layout, bucket, bucket, max_context, false)
            })?;
            graphs.insert(bucket, captured);
        }
        self.sync()?;
        self.runner.kernels.take_launch_count();
        self.graphs = graphs;
        self.pending_rows = 0;
        Ok(())
    }

    /// Packs `batch` into `host`, uploads it and puts the step on the
    /// stream, its sampled rows downloaded into `host` at the end.
    fn enqueue_into(
        &mut self,
        host: &mut StepHost,
        batch: &[SeqStep<'_>],
    ) -> Result<Enqueued, BackendError> {
        self.step_gaps.step_begins();
        let kv = self
            .kv
            .as_ref()
            .ok_or_else(|| BackendError::InvalidBatch("allocate_kv_cache was not called".into()))?;
        let limits = self.limits(kv);
        let decode = batch
            .iter()
            .all(|s| s.tokens.len() == 1 && s.sample.is_some());
        let bucket = if decode {
            self.graphs.bucket_for(batch.len())
        } else {
            None
        };
        // A graph replays a step padded to its bucket; an eager step is
        // packed to its exact size.
        let tokens: usize = batch.iter().map(|s| s.tokens.len()).sum();
        let max_context = longest_context(batch);
        let joint = several_tokens_of_a_sequence(batch);
        let (layout, pad_to) = match bucket {
            Some(b) => (
                MetaLayout {
                    tokens_cap: b,
                    samples_cap: b,
                },
                b,
            ),
            None => (
                MetaLayout {
                    tokens_cap: tokens,
                    samples_cap: step_meta::sampled_rows(batch),
                },
                0,
            ),
        };
        let packed = step_meta::pack(
            batch,
            layout,
            &limits,
            Rows::Sampled,
            pad_to,
            host.meta.as_mut_slice(),
        )?;
        host.start
            .record(&self.stream)
            .map_err(|e| BackendError::Cuda(format!("recording a step event: {e}")))?;
        self.upload_meta(&host.meta.as_slice()[..packed.len])?;
        self.profile_window.step_begins(decode)?;
        let mut replay = None;
        match bucket {
            Some(b) => {
                let g = self
                    .graphs
                    .get(b)
                    .ok_or_else(|| BackendError::Cuda(format!("no graph for bucket {b}")))?;
                replay = self.step_gaps.graph_launching(b);
                g.graph
                    .launch()
                    .map_err(|e| BackendError::Cuda(format!("graph launch: {e}")))?;
                self.last_decode_launches = Some(g.nodes);
            }
            None if packed.samples > self.runner.arena.logits_rows => {
                // Draft verification can sample more rows than the logits
                // buffer holds (max_num_seqs × (k + 1)): run them in chunks,
                // to the end.
                self.runner.kernels.take_launch_count();
                let sampled =
                    self.sample_in_chunks(kv, &layout, tokens, packed.samples, max_context, joint);
                // `sampled` holds the last chunk's rows only.
                self.pending_rows = 0;
                self.step_gaps.step_collected(None, None);
                self.profile_window.step_ends()?;
                return sampled.map(Enqueued::Done);
            }
            None => {
                self.runner.kernels.take_launch_count();
                self.runner
                    .step(kv, &layout, tokens, packed.samples, max_context, joint)?;
                let launches = self.runner.kernels.take_launch_count();
                if decode {
                    self.last_decode_launches = Some(launches);
                }
            }
        }
        let samples = packed.samples;
        let out = &mut host.sampled.as_mut_slice()[..samples];
        // SAFETY: `sampled` holds logits_rows ≥ samples u32s; `collect`
        // waits for `done`, recorded after the copy, before it reads `out`
        // or hands the buffer to another step.
        unsafe {
            result::memcpy_dtoh_async(out, self.runner.arena.sampled.ptr, self.stream.cu_stream())
        }
        .map_err(|e| BackendError::Cuda(format!("downloading sampled tokens: {e}")))?;
        host.done
            .record(&self.stream)
            .map_err(|e| BackendError::Cuda(format!("recording a step event: {e}")))?;
        self.pending_rows = samples;
        Ok(Enqueued::Queued { samples, replay })
    }

    /// Puts `batch` on the stream with one of the idle host sides: `None`
    /// when it is queued for `collect`, or the tokens of a step that had to
    /// run to the end. Refused while two steps are uncollected.
    fn enqueue(&mut self, batch: &[SeqStep<'_>]) -> Result<Option<Vec<u32>>, BackendError> {
        let mut host = self.idle_hosts.pop().ok_or_else(|| {
            BackendError::InvalidBatch(
                "a third step launched before the first was collected".into(),
            )
        })?;
        let enqueued = self.enqueue_into(&mut host, batch);
        match enqueued {
            Ok(Enqueued::Queued { samples, replay }) => {
                self.launched.push_back(Launched {
                    host,
                    samples,
                    replay,
                });
                Ok(None)
            }
            Ok(Enqueued::Done(tokens)) => {
                self.idle_hosts.push(host);
                Ok(Some(tokens))
            }
            Err(e) => {
                self.idle_hosts.push(host);
                Err(e)
            }
        }
    }

    /// An eager step whose `samples` sampled rows exceed the logits buffer:
    /// the layers once, then final norm, LM head, sampling and download per
    /// chunk of `logits_rows` rows.
    fn sample_in_chunks(
        &self,
        kv: &KvPool,
        layout: &MetaLayout,
        tokens: usize,
        samples: usize,
        max_context: usize,
        joint: bool,
    ) -> Result<Vec<u32>, BackendError> {
        let pending = self.runner.layers(kv, layout, tokens, max_context, joint)?;
        let chunk = self.runner.arena.logits_rows;
        let mut out = vec![0u32; samples];
        for first in (0..samples).step_by(chunk) {
            let rows = chunk.min(samples - first);
            let rows_ptr = self
                .runner
                .arena
                .meta
                .at::<u32>(layout.sample_rows() + first);
            self.runner.logits(rows_ptr, rows, pending)?;
            self.runner.sample(layout, first, rows)?;
            // SAFETY: `sampled` holds logits_rows ≥ rows u32s; synced below
            // before `out` is read or the next chunk overwrites `sampled`.
            unsafe {
                result::memcpy_dtoh_async(
                    &mut out[first..first + rows],
                    self.runner.arena.sampled.ptr,
                    self.stream.cu_stream(),
                )
            }
            .map_err(|e| BackendError::Cuda(format!("downloading sampled tokens: {e}")))?;
            self.sync()?;
        }
        Ok(out)
    }

    /// The pinned batch-invariant GEMM algorithms, one line per weight
    /// shape (empty without `batch_invariant`).
    pub fn invariant_gemms(&self) -> Vec<String> {
        match &self.runner.gemm {
            runner::Products::Invariant(g) => g.describe(),
            runner::Products::Cublas(_) => Vec::new(),
        }
    }

    /// Decode graphs captured (0 when eager).
    pub fn graph_count(&self) -> usize {
        self.graphs.len()
    }

    /// Bytes of device memory by purpose.
    pub fn memory_breakdown(&self) -> MemoryBreakdown {
        MemoryBreakdown {
            weights: self.runner.weights.bytes as u64,
            kv_cache: self.kv.as_ref().map_or(0, |k| k.bytes() as u64),
            activations: self.runner.arena.bytes() as u64,
        }
    }
}

/// Keys per attention split with `batch_invariant`:
/// `runner::invariant_split_keys`, or `DYNO_CUDA_SPLIT_KEYS=N` (a multiple
/// of 64, at least `runner::invariant_min_split_keys`, so the grid and the
/// partial buffers stay within `ATTN_MAX_SPLITS`) to measure the trade-off
/// between parallelism and merge work.
fn split_keys_for(max_model_len: usize) -> Result<usize, BackendError> {
    parse_split_keys(
        std::env::var("DYNO_CUDA_SPLIT_KEYS").ok().as_deref(),
        max_model_len,
    )
}

fn parse_split_keys(text: Option<&str>, max_model_len: usize) -> Result<usize, BackendError> {
    let Some(text) = text else {
        return Ok(runner::invariant_split_keys(max_model_len));
    };
    let min = runner::invariant_min_split_keys(max_model_len);
    match text.trim().parse::<usize>() {
        Ok(n) if n >= min && n.is_multiple_of(64) => Ok(n),
        _ => Err(BackendError::Cuda(format!(
            "DYNO_CUDA_SPLIT_KEYS={text}: must be a multiple of 64 and at least {min} \
             (max_model_len {max_model_len} over {} splits)",
            kernels::ATTN_MAX_SPLITS
        ))),
    }
}

/// Attention blocks per split from which `batch_invariant` runs one block
/// per query: `runner::invariant_one_block_from`, or
/// `DYNO_CUDA_INVARIANT_ONE_BLOCK=N` (N ≥ 1) — the GPU batch-invariance tests
/// set it low so that their small steps take both paths.
fn one_block_from_env(sm_count: usize) -> Result<usize, BackendError> {
    parse_one_block_from(
        std::env::var("DYNO_CUDA_INVARIANT_ONE_BLOCK")
            .ok()
            .as_deref(),
        sm_count,
    )
}

fn parse_one_block_from(text: Option<&str>, sm_count: usize) -> Result<usize, BackendError> {
    let Some(text) = text else {
        return Ok(runner::invariant_one_block_from(sm_count));
    };
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(BackendError::Cuda(format!(
            "DYNO_CUDA_INVARIANT_ONE_BLOCK={text}: expected a whole number of attention blocks, \
             at least 1"
        ))),
    }
}

/// The longest context (keys attended to) of any token of the step.
/// Whether a sequence has several query tokens in the step (a prefill
/// chunk, a draft to verify): attention's blocks then take consecutive ones
/// together (`Runner::layers`).
fn several_tokens_of_a_sequence(batch: &[SeqStep<'_>]) -> bool {
    batch.iter().any(|s| s.tokens.len() > 1)
}

fn longest_context(batch: &[SeqStep<'_>]) -> usize {
    batch
        .iter()
        .map(|s| s.start_pos + s.tokens.len())
        .max()
        .unwrap_or(0)
}

/// Every weight shape a forward pass multiplies by, with the most rows one
/// call can have (the layers' products up to `max_tokens` rows, the LM head
/// up to `logits_rows`) and the rows of a full decode step (`max_seqs`).
fn gemm_shapes(
    d: &Dims,
    w: &weights::DeviceWeights,
    max_tokens: usize,
    max_seqs: usize,
    logits_rows: usize,
) -> Vec<gemm_lt::GemmShape> {
    let shape = |n, k, max_rows: usize, weight| gemm_lt::GemmShape {
        n,
        k,
        max_rows,
        typical_rows: max_seqs.min(max_rows),
        weight,
    };
    let mut shapes = Vec::new();
    if let Some(l) = w.layers.first() {
        shapes.extend([
            shape(d.qkv_width(), d.hidden, max_tokens, l.qkv.ptr),
            shape(d.hidden, d.nq * d.head_dim, max_tokens, l.o_proj.ptr),
            shape(2 * d.inter, d.hidden, max_tokens, l.gate_up.ptr),
            shape(d.hidden, d.inter, max_tokens, l.down.ptr),
        ]);
    }
    shapes.push(shape(d.vocab, d.hidden, logits_rows, w.lm_head_ptr()));
    shapes
}

fn dims_of(c: &crate::config::ModelConfig, cfg: &EngineConfig) -> Result<Dims, BackendError> {
    let bad =
        |m: String| BackendError::Cuda(format!("model not supported by the CUDA backend: {m}"));
    if c.head_dim == 0 || !c.head_dim.is_multiple_of(8) || c.head_dim > kernels::MAX_HEAD_DIM {
        return Err(bad(format!(
            "head_dim {} (supported: multiples of 8 up to {})",
            c.head_dim,
            kernels::MAX_HEAD_DIM
        )));
    }
    if c.num_key_value_heads == 0 || !c.num_attention_heads.is_multiple_of(c.num_key_value_heads) {
        return Err(bad(
            "num_attention_heads must be a multiple of num_key_value_heads".into(),
        ));
    }
    let max_model_len = if cfg.max_model_len == 0 {
        c.max_position_embeddings
    } else {
        cfg.max_model_len
    };
    Ok(Dims {
        hidden: c.hidden_size,
        inter: c.intermediate_size,
        nq: c.num_attention_heads,
        nkv: c.num_key_value_heads,
        head_dim: c.head_dim,
        vocab: c.vocab_size,
        layers: c.num_hidden_layers,
        eps: c.rms_norm_eps as f32,
        max_model_len,
    })
}

impl Backend for CudaBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: "cuda".into(),
            device_name: self.device_name.clone(),
            dtype: "bf16".into(),
        }
    }

    fn auto_max_num_seqs(&self) -> usize {
        self.auto_max_num_seqs
    }

    fn kv_block_bytes(&self, block_size: usize) -> usize {
        let d = &self.runner.dims;
        kv_pool::block_bytes(d.layers, d.nkv, d.head_dim, block_size)
    }

    fn kv_memory_budget(&self, cfg: &EngineConfig) -> Result<u64, BackendError> {
        let (free, _) = self
            .ctx
            .mem_get_info()
            .map_err(|e| BackendError::Cuda(format!("cuMemGetInfo: {e}")))?;
        let used = self.free_at_start.saturating_sub(free as u64);
        let share = (cfg.gpu_memory_utilization * self.free_at_start as f64) as u64;
        Ok(share.saturating_sub(used).saturating_sub(RESERVE_BYTES))
    }

    fn allocate_kv_cache(
        &mut self,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<(), BackendError> {
        if self.kv.is_some() {
            return Err(BackendError::InvalidBatch(
                "the KV cache is already allocated".into(),
            ));
        }
        if num_blocks == 0 || !block_size.is_power_of_two() {
            return Err(BackendError::InvalidBatch(format!(
                "KV cache of {num_blocks} blocks of {block_size} tokens"
            )));
        }
        if !self.kv_layout.fits_block_size(block_size) {
            return Err(BackendError::InvalidBatch(format!(
                "KV cache of blocks of {block_size} tokens, but the kernels were built for \
                 {:?}: a head-major layout compiles the engine's block_size in \
                 (DYNO_CUDA_KV_LAYOUT=slot does not)",
                self.kv_layout
            )));
        }
        let d = self.runner.dims;
        self.kv = Some(KvPool::allocate(
            &self.stream,
            d.layers,
            d.nkv,
            d.head_dim,
            num_blocks,
            block_size,
        )?);
        self.note_memory()?;
        if !self.enforce_eager {
            self.capture_graphs()?;
        }
        self.note_memory()
    }

    fn forward(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<u32>, BackendError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if !self.launched.is_empty() {
            return Err(BackendError::InvalidBatch(
                "forward while launched steps are uncollected".into(),
            ));
        }
        match self.enqueue(batch)? {
            Some(done) => Ok(done),
            None => self.collect(),
        }
    }

    fn supports_pipelining(&self) -> bool {
        true
    }

    fn launch(&mut self, batch: &[SeqStep<'_>]) -> Result<(), BackendError> {
        if batch.is_empty() {
            return Err(BackendError::InvalidBatch("launch of an empty step".into()));
        }
        match self.enqueue(batch)? {
            None => Ok(()),
            Some(_) => Err(BackendError::InvalidBatch(
                "a launched step sampled more rows than the logits buffer holds (draft \
                 verification runs one step at a time)"
                    .into(),
            )),
        }
    }

    fn collect(&mut self) -> Result<Vec<u32>, BackendError> {
        let step = self
            .launched
            .pop_front()
            .ok_or_else(|| BackendError::InvalidBatch("nothing launched to collect".into()))?;
        let waited = step
            .host
            .done
            .synchronize()
            .map_err(|e| BackendError::Cuda(format!("step failed: {e}")));
        let busy = step.host.start.elapsed_ms(&step.host.done).ok();
        let tokens = step.host.sampled.as_slice()[..step.samples].to_vec();
        self.idle_hosts.push(step.host);
        waited?;
        self.step_gaps.step_collected(step.replay, busy);
        self.profile_window.step_ends()?;
        Ok(tokens)
    }

    fn forward_logits(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Vec<f32>>, BackendError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let kv = self
            .kv
            .as_ref()
            .ok_or_else(|| BackendError::InvalidBatch("allocate_kv_cache was not called".into()))?;
        let limits = self.limits(kv);
        let tokens: usize = batch.iter().map(|s| s.tokens.len()).sum();
        let layout = MetaLayout {
            tokens_cap: tokens,
            samples_cap: tokens,
        };
        if !self.launched.is_empty() {
            return Err(BackendError::InvalidBatch(
                "forward_logits while launched steps are uncollected".into(),
            ));
        }
        // It syncs below, before the buffer is written again.
        let packed = step_meta::pack(
            batch,
            layout,
            &limits,
            Rows::All,
            0,
            self.sync_meta.as_mut_slice(),
        )?;
        self.pending_rows = 0;
        self.upload_meta(&self.sync_meta.as_slice()[..packed.len])?;
        let pending = self.runner.layers(
            kv,
            &layout,
            tokens,
            longest_context(batch),
            several_tokens_of_a_sequence(batch),
        )?;
        let vocab = self.runner.dims.vocab;
        let chunk = self.runner.arena.logits_rows;
        let mut out = Vec::with_capacity(tokens);
        let mut host = vec![0f32; chunk * vocab];
        for start in (0..tokens).step_by(chunk) {
            let rows = chunk.min(tokens - start);
            let rows_ptr = self
                .runner
                .arena
                .meta
                .at::<u32>(layout.sample_rows() + start);
            self.runner.logits(rows_ptr, rows, pending)?;
            // SAFETY: the arena's logits hold logits_rows × vocab f32s.
            unsafe {
                result::memcpy_dtoh_async(
                    &mut host[..rows * vocab],
                    self.runner.arena.logits.ptr,
                    self.stream.cu_stream(),
                )
            }
            .map_err(|e| BackendError::Cuda(format!("downloading logits: {e}")))?;
            self.sync()?;
            out.extend(host[..rows * vocab].chunks(vocab).map(|r| r.to_vec()));
        }
        self.runner.kernels.take_launch_count();
        // A step of its own: the next replayed step's wall starts here.
        self.step_gaps.step_collected(None, None);
        Ok(out)
    }

    fn peak_memory_bytes(&self) -> Option<u64> {
        Some(self.free_at_start.saturating_sub(self.min_free))
    }

    /// Verify chunks run eagerly (a CUDA graph replays single-token decode
    /// steps only) and sample every row `step_meta` lists for them.
    fn supports_draft_verification(&self) -> bool {
        true
    }

    fn launches_per_decode_step(&self) -> Option<u64> {
        self.last_decode_launches
    }
}

/// Device memory the backend holds, by purpose (bytes).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemoryBreakdown {
    pub weights: u64,
    pub kv_cache: u64,
    pub activations: u64,
}

/// Static properties of one GPU, for the pipeline's fingerprint
/// (`engine info --json`): the contract type lives in `workloads`.
pub use workloads::engine_info::GpuProperties;

#[cfg(test)]
mod tests {
    use super::{parse_one_block_from, parse_split_keys, several_tokens_of_a_sequence};
    use crate::backend::SeqStep;

    #[test]
    fn only_steps_with_chunks_or_drafts_take_the_prefill_attention() {
        let step = |tokens: &'static [u32]| SeqStep {
            seq_id: 0,
            tokens,
            start_pos: 4,
            block_table: &[0],
            sample: None,
        };
        // A decode step: one token per sequence, however many sequences.
        assert!(!several_tokens_of_a_sequence(&[step(&[7]), step(&[8])]));
        assert!(!several_tokens_of_a_sequence(&[]));
        // One prefill chunk among decode tokens is enough.
        assert!(several_tokens_of_a_sequence(&[
            step(&[7]),
            step(&[7, 8, 9])
        ]));
    }

    #[test]
    fn one_block_threshold_defaults_to_the_heuristic_and_bad_overrides_are_named() {
        assert_eq!(parse_one_block_from(None, 132).unwrap(), 1056);
        assert_eq!(parse_one_block_from(Some(" 400 "), 132).unwrap(), 400);
        for text in ["0", "-3", "many", ""] {
            let e = parse_one_block_from(Some(text), 132)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("DYNO_CUDA_INVARIANT_ONE_BLOCK={text}")),
                "{e}"
            );
        }
    }

    #[test]
    fn split_keys_default_to_the_measured_size_and_bad_overrides_are_named() {
        // max_model_len 1536: at least 64 keys (48 rounded up), 512 unset.
        assert_eq!(parse_split_keys(None, 1536).unwrap(), 512);
        assert_eq!(parse_split_keys(Some("64"), 1536).unwrap(), 64);
        assert_eq!(parse_split_keys(Some(" 256 "), 1536).unwrap(), 256);
        // A long context limit needs coarser splits than the default.
        assert_eq!(parse_split_keys(None, 131_072).unwrap(), 4096);
        for (text, len) in [("100", 1536), ("0", 1536), ("x", 1536), ("256", 131_072)] {
            let e = parse_split_keys(Some(text), len).unwrap_err().to_string();
            assert!(e.contains(&format!("DYNO_CUDA_SPLIT_KEYS={text}")), "{e}");
        }
    }
}
