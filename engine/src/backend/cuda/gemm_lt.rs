//! Batch-invariant matrix products (`batch_invariant = true`):
//! `y[T, N] = x[T, K] · W[N, K]ᵀ` through cuBLASLt with one algorithm pinned
//! per weight shape (n, k) and used for every row count.
//!
//! Why: `cublasGemmEx` with `CUBLAS_GEMM_DEFAULT` (`gemm.rs`) picks a kernel
//! per call from the problem size — another tile shape, split-K or stream-K
//! for another row count — so a row's sum over k is done in another order
//! when other requests join its batch, and a greedy output can flip. Here the
//! algorithm (kernel, tile, stages) is chosen once at load, with split-K
//! forced to 1 and no reduction scheme, so each output element is one
//! thread block's sum over k in the kernel's fixed order whatever the grid.
//! That is what the configuration promises; Hopper kernels may still
//! decompose work by tile count, so the promise is not trusted: at load every
//! shape is multiplied on the device with the same input rows at the largest
//! row count and at several small ones, and a candidate is pinned only when
//! the shared rows agree bit for bit (and a repeat of the largest call does
//! too). Candidates are tried fastest first (timed on the device at load,
//! in a CUDA graph, at 1 row, a full decode step and the largest step),
//! since one algorithm serves them all.
//! A shape with no passing candidate fails the load, naming the shape.
//! Other candidates that are faster somewhere and give the pinned one's
//! bits (the same check, plus equality with it at the largest call) join
//! its family, and each range of row counts takes the family's fastest
//! member there: a row's bits still never depend on the step's size.
//!
//! Operands are bf16, compute and output f32, as in `gemm.rs`. The workspace
//! is allocated once and fixed, so the products can be captured into CUDA
//! graphs.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{result as driver, sys as sys_driver, CudaStream};

use super::super::BackendError;
use super::buffer::DeviceBuffer;

/// Workspace every pinned algorithm must fit (and gets at every call).
const WORKSPACE_BYTES: usize = 32 << 20;
/// Candidates asked of the heuristic per row count.
const CANDIDATES: i32 = 16;
/// Row counts compared with the largest call in the self-check (those
/// below the shape's largest row count): single rows, odd counts that leave
/// partial tiles, and counts around common tile heights.
const CHECK_ROWS: &[usize] = &[1, 2, 3, 8, 17, 64, 127, 255, 1000];

/// Leading rows of the largest call compared first when a candidate is
/// tested for the pinned algorithm's family (a cheap early rejection).
const LEADING_ROWS: usize = 64;
/// How much faster than the pinned algorithm (at one of its timed row
/// counts) a candidate must be to be tested for its family: closer ones
/// would win a range by timing noise and cost load time.
const FAMILY_MIN_GAIN: f64 = 0.9;

/// Row counts at which the members of a pinned algorithm's family are
/// timed against each other (with the shape's busy decode and largest row
/// counts): batch-1 decode, small decode batches, and steps in between.
const FAMILY_ROWS: &[usize] = &[1, 8, 32, 128];

/// How candidates are timed at load (`DYNO_CUDA_PIN_TIMING`). Which of
/// these predicts a decode step's time is not settled (docs/BENCHMARKS.md,
/// "The knob's GEMMs timed on the device"), so all three can be compared
/// with one binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PinTiming {
    /// `graph` (the default): `TIMED_CALLS` calls back to back in a CUDA
    /// graph between two events. The calls may overlap, which favours
    /// algorithms of few thread blocks; on the H200 those made
    /// smollm2-135m's batch-1,024 step faster than `host`'s picks.
    #[default]
    Graph,
    /// `alone`: the same graph with a 4-byte memset after each call, so
    /// that each call starts when the last has finished: a product's own
    /// latency.
    Alone,
    /// `host`: 10 calls launched one by one from the host between two
    /// synchronizations (the timing before `5a3d26d`); for small products
    /// it times the launches.
    Host,
}

impl PinTiming {
    /// From `DYNO_CUDA_PIN_TIMING` (`graph`, `alone` or `host`; unset =
    /// `graph`); anything else is an error naming the variable.
    pub fn parse(text: Option<&str>) -> Result<Self, BackendError> {
        match text.map(str::trim) {
            None | Some("graph") => Ok(PinTiming::Graph),
            Some("alone") => Ok(PinTiming::Alone),
            Some("host") => Ok(PinTiming::Host),
            Some(other) => Err(BackendError::Cuda(format!(
                "DYNO_CUDA_PIN_TIMING={other}: expected `graph`, `alone` or `host`"
            ))),
        }
    }
}

/// Calls per timing of a candidate in a graph (`PinTiming::Graph`,
/// `PinTiming::Alone`), and from the host (`PinTiming::Host`).
const TIMED_CALLS: u32 = 20;
const HOST_TIMED_CALLS: u32 = 10;
/// The memset after each call of `PinTiming::Alone`: the smallest write.
const FENCE_BYTES: usize = 4;

/// cuBLAS's `CUBLAS_OP_N` / `CUBLAS_OP_T` (the matmul descriptor's
/// TRANSA/TRANSB attributes are `int32_t`).
const OP_N: i32 = 0;
const OP_T: i32 = 1;

fn lt_err(what: &str) -> impl Fn(lt::CublasError) -> BackendError + '_ {
    move |e| BackendError::Cuda(format!("cuBLASLt {what}: {e}"))
}

/// One weight shape the products use: `n` outputs, `k` inputs, at most
/// `max_rows` rows per call, `typical_rows` rows in a busy decode step
/// (`max_num_seqs`), and a device pointer to one of its weight matrices
/// (`n × k` bf16, row-major) for the self-check and the timing.
#[derive(Debug, Clone, Copy)]
pub struct GemmShape {
    pub n: usize,
    pub k: usize,
    pub max_rows: usize,
    pub typical_rows: usize,
    pub weight: u64,
}

/// A cuBLASLt matrix layout, destroyed on drop.
struct Layout(sys::cublasLtMatrixLayout_t);

impl Layout {
    fn new(
        ty: sys::cudaDataType,
        rows: usize,
        cols: usize,
        ld: usize,
    ) -> Result<Self, BackendError> {
        lt::create_matrix_layout(ty, rows as u64, cols as u64, ld as i64)
            .map(Layout)
            .map_err(lt_err("matrix layout"))
    }

    /// Sets the column count (the row count of the product, in the
    /// column-major view). The layout is read by `cublasLtMatmul` when it is
    /// called, so changing it afterwards does not affect queued work.
    fn set_cols(&self, cols: usize) -> Result<(), BackendError> {
        let cols = cols as u64;
        // SAFETY: a live layout; COLS is a uint64_t attribute.
        unsafe {
            lt::set_matrix_layout_attribute(
                self.0,
                sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_COLS,
                &cols as *const u64 as *const c_void,
                std::mem::size_of::<u64>(),
            )
        }
        .map_err(lt_err("set layout columns"))
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

/// A weight shape with its pinned algorithm.
struct Pinned {
    n: usize,
    k: usize,
    max_rows: usize,
    /// W: column-major `k × n` (HF's row-major `n × k`), used transposed.
    a: Layout,
    /// x: column-major `k × rows`.
    b: Layout,
    /// y: column-major `n × rows` (row-major `rows × n`), f32.
    d: Layout,
    /// The algorithm for each range of row counts, by the range's first
    /// row count (ascending; the first is 1): members of one family whose
    /// products are bit-identical (see `InvariantGemm::family`), so which
    /// one a call takes does not change its bits.
    ranges: Vec<(usize, sys::cublasLtMatmulAlgo_t)>,
    description: String,
}

impl Pinned {
    /// The algorithm for a call of `rows` rows.
    fn algo_for(&self, rows: usize) -> &sys::cublasLtMatmulAlgo_t {
        let i = self.ranges.partition_point(|&(from, _)| from <= rows);
        &self.ranges[i.saturating_sub(1)].1
    }
}

/// Batch-invariant products: one pinned cuBLASLt algorithm per (n, k).
pub struct InvariantGemm {
    handle: sys::cublasLtHandle_t,
    desc: sys::cublasLtMatmulDesc_t,
    pinned: Vec<Pinned>,
    stream: Arc<CudaStream>,
    workspace: DeviceBuffer,
    timing: PinTiming,
}

impl Drop for InvariantGemm {
    fn drop(&mut self) {
        // Layouts go first (fields drop after this body), then the
        // descriptor and handle: none is used by queued work once the
        // stream is idle.
        let _ = self.stream.synchronize();
        self.pinned.clear();
        // SAFETY: created in `new`, destroyed once.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

impl InvariantGemm {
    /// Picks and checks an algorithm for every shape (duplicates of one
    /// (n, k) merged, keeping the largest row count). Runs products on the
    /// device; returns an error naming the shape when no candidate passes.
    pub fn new(
        stream: &Arc<CudaStream>,
        shapes: &[GemmShape],
        timing: PinTiming,
    ) -> Result<Self, BackendError> {
        // SAFETY: only tries to dlopen libcublasLt by its usual names.
        if !unsafe { sys::is_culib_present() } {
            return Err(BackendError::Cuda(
                "batch_invariant needs libcublasLt, which could not be loaded: add the CUDA \
                 toolkit's lib64 folder to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        // cuBLASLt works in the thread's current context.
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| BackendError::Cuda(format!("binding the CUDA context: {e}")))?;
        let handle = lt::create_handle().map_err(lt_err("create handle"))?;
        let desc = match lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        ) {
            Ok(d) => d,
            Err(e) => {
                // SAFETY: created above, not used elsewhere.
                let _ = unsafe { lt::destroy_handle(handle) };
                return Err(lt_err("matmul descriptor")(e));
            }
        };
        let workspace = DeviceBuffer::zeroed(stream, WORKSPACE_BYTES, "cuBLASLt workspace")?;
        let mut gemm = InvariantGemm {
            handle,
            desc,
            pinned: Vec::new(),
            stream: stream.clone(),
            workspace,
            timing,
        };
        for (attr, op) in [
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                OP_T,
            ),
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                OP_N,
            ),
        ] {
            // SAFETY: a live descriptor; TRANSA/TRANSB are int32_t.
            unsafe {
                lt::set_matmul_desc_attribute(
                    desc,
                    attr,
                    &op as *const i32 as *const c_void,
                    std::mem::size_of::<i32>(),
                )
            }
            .map_err(lt_err("set transpose"))?;
        }

        let mut merged: Vec<GemmShape> = Vec::new();
        for s in shapes {
            match merged.iter_mut().find(|m| m.n == s.n && m.k == s.k) {
                Some(m) => {
                    m.max_rows = m.max_rows.max(s.max_rows);
                    m.typical_rows = m.typical_rows.max(s.typical_rows);
                }
                None => merged.push(*s),
            }
        }
        // Scratch for the self-check, sized for the largest shape: a
        // deterministic input (a fixed pseudo-random sequence of bf16
        // values of both signs, so every bit of the sum matters) and one
        // output (each result is downloaded before the next call). Freed
        // when `new` returns.
        let x_len = merged.iter().map(|s| s.max_rows * s.k).max().unwrap_or(0);
        let y_len = merged.iter().map(|s| s.max_rows * s.n).max().unwrap_or(0);
        let x_host: Vec<half::bf16> = pseudo_random(x_len);
        let x = DeviceBuffer::upload(stream, &x_host, "GEMM self-check input")?;
        let y = DeviceBuffer::zeroed(stream, y_len * 4, "GEMM self-check output")?;
        let fence = DeviceBuffer::zeroed(stream, FENCE_BYTES, "GEMM timing fence")?;
        let scratch = Scratch {
            x: x.ptr,
            y: y.ptr,
            fence: fence.ptr,
        };
        for s in merged {
            let pinned = gemm.pin(s, &scratch)?;
            gemm.pinned.push(pinned);
        }
        Ok(gemm)
    }

    /// What was pinned, one line per shape (for logs and tests).
    pub fn describe(&self) -> Vec<String> {
        self.pinned
            .iter()
            .map(|p| {
                format!(
                    "n={} k={} rows<={}: {}",
                    p.n, p.k, p.max_rows, p.description
                )
            })
            .collect()
    }

    /// `y[t, n] = Σ_k x[t, k] · w[n, k]` for row-major `x` (`rows × k`),
    /// `w` (`n × k`) and `y` (`rows × n`), with the algorithm pinned for
    /// (n, k). Pointers are device addresses.
    pub fn linear(
        &self,
        x: u64,
        w: u64,
        y: u64,
        rows: usize,
        n: usize,
        k: usize,
    ) -> Result<(), BackendError> {
        if rows == 0 {
            return Ok(());
        }
        let p = self
            .pinned
            .iter()
            .find(|p| p.n == n && p.k == k)
            .ok_or_else(|| {
                BackendError::Cuda(format!(
                    "batch-invariant GEMM: no algorithm pinned for n={n} k={k}"
                ))
            })?;
        if rows > p.max_rows {
            return Err(BackendError::InvalidBatch(format!(
                "batch-invariant GEMM n={n} k={k}: {rows} rows exceed the {} it was checked for",
                p.max_rows
            )));
        }
        self.run(p, p.algo_for(rows), x, w, y, rows)
    }

    fn run(
        &self,
        p: &Pinned,
        algo: &sys::cublasLtMatmulAlgo_t,
        x: u64,
        w: u64,
        y: u64,
        rows: usize,
    ) -> Result<(), BackendError> {
        p.b.set_cols(rows)?;
        p.d.set_cols(rows)?;
        let alpha = 1.0f32;
        let beta = 0.0f32;
        // SAFETY: the pointers address device buffers of the stated shapes
        // (checked by the callers against the arena's capacities); the
        // workspace is ours and sized as the algorithm was checked with;
        // C = D with beta 0.
        unsafe {
            lt::matmul(
                self.handle,
                self.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                w as *const c_void,
                p.a.0,
                x as *const c_void,
                p.b.0,
                y as *const c_void,
                p.d.0,
                y as *mut c_void,
                p.d.0,
                algo,
                self.workspace.ptr as *mut c_void,
                WORKSPACE_BYTES,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| BackendError::Cuda(format!("cublasLtMatmul ({rows}x{}x{}): {e}", p.n, p.k)))
    }

    /// Chooses the algorithm of one shape: the heuristic's candidates at a
    /// busy decode step's row count, the largest and one row (those
    /// without a split-K reduction first; `heuristic_asks`), each forced to
    /// split-K 1 without a reduction scheme and accepted by
    /// `cublasLtMatmulAlgoCheck` at 1 and `max_rows` rows; then, fastest first, the first that passes the self-check.
    /// "Fastest" is timed here, at 1 row (batch-1 decode), `typical_rows`
    /// (a busy decode step) and `max_rows` (a full prefill step), each
    /// relative to the best candidate at that count, summed: one algorithm
    /// serves them all, and the heuristic's pick for the largest count can
    /// be slow at one row. The self-check samples row counts
    /// (`CHECK_ROWS`); the GPU test `pinned_gemms_are_batch_invariant`
    /// tries others.
    fn pin(&self, s: GemmShape, scratch: &Scratch) -> Result<Pinned, BackendError> {
        let bf16 = sys::cudaDataType::CUDA_R_16BF;
        let mut p = Pinned {
            n: s.n,
            k: s.k,
            max_rows: s.max_rows,
            a: Layout::new(bf16, s.k, s.n, s.k)?,
            b: Layout::new(bf16, s.k, s.max_rows, s.k)?,
            d: Layout::new(sys::cudaDataType::CUDA_R_32F, s.n, s.max_rows, s.n)?,
            ranges: Vec::new(),
            description: String::new(),
        };
        let mut candidates: Vec<sys::cublasLtMatmulAlgo_t> = Vec::new();
        let mut rejected = Vec::new();
        // Configurations without split-K reduction first; then the rest,
        // forced to split-K 1 below (in case the mask leaves none). The
        // heuristic is asked at a busy decode step's row count first: that
        // is where a served or offline workload spends its products' time,
        // and its picks there (other tiles, cooperative schedules) need not
        // be among its picks for a full prefill step or for one row.
        let typical = s.typical_rows.clamp(1, s.max_rows);
        for (rows, restrict) in heuristic_asks(typical, s.max_rows) {
            match self.heuristic(&p, rows, restrict) {
                Ok(found) => {
                    for mut algo in found {
                        force_no_split(&mut algo);
                        if !candidates.iter().any(|c| c.data == algo.data) {
                            candidates.push(algo);
                        }
                    }
                }
                Err(e) => rejected.push(format!("heuristic at {rows} rows: {e}")),
            }
        }
        let mut timing_rows = vec![1, typical, s.max_rows];
        timing_rows.dedup();
        // (algorithm, seconds per call at each of timing_rows)
        let mut timed: Vec<(sys::cublasLtMatmulAlgo_t, Vec<f64>)> = Vec::new();
        for algo in &candidates {
            let timing = self.supported(&p, algo, &[1, s.max_rows]).and_then(|()| {
                timing_rows
                    .iter()
                    .map(|&r| self.seconds_per_call(&p, algo, s.weight, scratch, r))
                    .collect::<Result<Vec<f64>, String>>()
            });
            match timing {
                Ok(t) => timed.push((*algo, t)),
                Err(why) => rejected.push(format!("{}: {why}", describe_algo(algo))),
            }
        }
        let times: Vec<Vec<f64>> = timed.iter().map(|(_, t)| t.clone()).collect();
        for (algo, t) in fastest_first(&times).into_iter().map(|i| &timed[i]) {
            let name = describe_algo(algo);
            match self.self_check(&p, algo, s.weight, scratch) {
                Ok(reference) => {
                    let times: Vec<String> = timing_rows
                        .iter()
                        .zip(t)
                        .map(|(r, t)| format!("{r} rows {:.1} us", t * 1e6))
                        .collect();
                    p.description = format!(
                        "{name} ({}; {} candidates, {} rejected before it)",
                        times.join(", "),
                        candidates.len(),
                        rejected.len()
                    );
                    // Family candidates: those clearly faster than the
                    // pinned one at some timed row count (the others would
                    // serve no range), each checked in `family`.
                    let others: Vec<sys::cublasLtMatmulAlgo_t> = timed
                        .iter()
                        .filter(|(a, ta)| {
                            a.data != algo.data
                                && ta.iter().zip(t).any(|(x, y)| *x < FAMILY_MIN_GAIN * y)
                        })
                        .map(|(a, _)| *a)
                        .collect();
                    let (ranges, note) = self.family(&p, algo, &reference, &others, s, scratch)?;
                    p.ranges = ranges;
                    p.description.push_str(&note);
                    return Ok(p);
                }
                Err(why) => rejected.push(format!("{name}: {why}")),
            }
        }
        const SHOWN: usize = 8;
        let reasons = if candidates.is_empty() && rejected.is_empty() {
            "the heuristic returned none".to_string()
        } else if rejected.len() > SHOWN {
            format!(
                "{}; and {} more",
                rejected[..SHOWN].join("; "),
                rejected.len() - SHOWN
            )
        } else {
            rejected.join("; ")
        };
        Err(BackendError::Cuda(format!(
            "batch_invariant: no cuBLASLt algorithm is batch-invariant for the weight shape \
             n={} k={} (rows 1..={}); {} candidates, none passed: {reasons}",
            s.n,
            s.k,
            s.max_rows,
            candidates.len(),
        )))
    }

    /// The pinned algorithm's family and which member serves which row
    /// counts. A member is another candidate whose products at `max_rows`
    /// rows and at each of `CHECK_ROWS` below it are bit-identical to the
    /// pinned one's (typically the same kernel and k-order with another
    /// tile or schedule). Each rung of `FAMILY_ROWS` (plus the shape's busy
    /// decode and largest row counts) takes the member fastest there, for
    /// the row counts from the rung below (exclusive) up to it. Returns the
    /// ranges and a note for the description. `reference`: the pinned
    /// algorithm's product at `max_rows` rows (from its self-check).
    fn family(
        &self,
        p: &Pinned,
        pinned: &sys::cublasLtMatmulAlgo_t,
        reference: &[f32],
        others: &[sys::cublasLtMatmulAlgo_t],
        s: GemmShape,
        scratch: &Scratch,
    ) -> Result<(Vec<(usize, sys::cublasLtMatmulAlgo_t)>, String), BackendError> {
        let max = p.max_rows;
        let err = |e: String| BackendError::Cuda(format!("GEMM n={} k={}: {e}", p.n, p.k));
        let n = p.n;
        // Whether `algo` gives the reference's bits: first the leading rows
        // of the largest call (most candidates differ there, at the cost of
        // a small download), then all of it, then each checked row count
        // against the reference's leading rows (whose own self-check
        // showed them equal to the pinned algorithm's at that count).
        let same_bits = |algo: &sys::cublasLtMatmulAlgo_t| -> Result<bool, String> {
            let lead = max.min(LEADING_ROWS);
            let part = self.product(p, algo, s.weight, scratch, max, lead)?;
            if first_difference(&reference[..lead * n], &part).is_some() {
                return Ok(false);
            }
            let full = self.product(p, algo, s.weight, scratch, max, max)?;
            if first_difference(reference, &full).is_some() {
                return Ok(false);
            }
            for &rows in CHECK_ROWS.iter().filter(|&&r| r < max) {
                let part = self.product(p, algo, s.weight, scratch, rows, rows)?;
                if first_difference(&reference[..rows * n], &part).is_some() {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        let mut members = vec![*pinned];
        for algo in others {
            // A candidate that fails (or cannot run) is simply not a member.
            if same_bits(algo) == Ok(true) {
                members.push(*algo);
            }
        }
        let mut rungs: Vec<usize> = FAMILY_ROWS
            .iter()
            .copied()
            .chain([s.typical_rows, max])
            .filter(|&r| (1..=max).contains(&r))
            .collect();
        rungs.sort_unstable();
        rungs.dedup();
        // times[m][r]: member m at rung r.
        let times = members
            .iter()
            .map(|algo| {
                rungs
                    .iter()
                    .map(|&rows| self.seconds_per_call(p, algo, s.weight, scratch, rows))
                    .collect::<Result<Vec<f64>, String>>()
            })
            .collect::<Result<Vec<Vec<f64>>, String>>()
            .map_err(err)?;
        let ranges: Vec<(usize, sys::cublasLtMatmulAlgo_t)> = fastest_per_range(&rungs, &times)
            .into_iter()
            .map(|(from, m)| (from, members[m]))
            .collect();
        let note = if ranges.len() > 1 {
            let parts: Vec<String> = ranges
                .iter()
                .map(|(from, a)| format!("from {from} rows {}", describe_algo(a)))
                .collect();
            format!(
                "; family of {} bit-identical algorithms: {}",
                members.len(),
                parts.join(", ")
            )
        } else {
            format!("; family of {} bit-identical algorithms", members.len())
        };
        Ok((ranges, note))
    }

    /// Up to `CANDIDATES` algorithms the heuristic offers at `rows` rows
    /// within our workspace (`restrict`: only configurations without a
    /// split-K reduction scheme).
    fn heuristic(
        &self,
        p: &Pinned,
        rows: usize,
        restrict: bool,
    ) -> Result<Vec<sys::cublasLtMatmulAlgo_t>, BackendError> {
        p.b.set_cols(rows)?;
        p.d.set_cols(rows)?;
        let pref = lt::create_matmul_pref().map_err(lt_err("preference"))?;
        let result = (|| {
            let ws = WORKSPACE_BYTES as u64;
            // Only configurations without a split-K reduction.
            let no_reduction =
                sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_NONE as u32;
            // SAFETY: a live preference; MAX_WORKSPACE_BYTES is uint64_t and
            // REDUCTION_SCHEME_MASK uint32_t.
            unsafe {
                lt::set_matmul_pref_attribute(
                    pref,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &ws as *const u64 as *const c_void,
                    std::mem::size_of::<u64>(),
                )
                .map_err(lt_err("preference workspace"))?;
                if restrict {
                    lt::set_matmul_pref_attribute(
                        pref,
                        sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                        &no_reduction as *const u32 as *const c_void,
                        std::mem::size_of::<u32>(),
                    )
                    .map_err(lt_err("preference reduction scheme"))?;
                }
            }
            let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> =
                Vec::with_capacity(CANDIDATES as usize);
            let mut count = 0i32;
            // SAFETY: `results` has room for CANDIDATES entries; the
            // descriptors are live.
            unsafe {
                sys::cublasLtMatmulAlgoGetHeuristic(
                    self.handle,
                    self.desc,
                    p.a.0,
                    p.b.0,
                    p.d.0,
                    p.d.0,
                    pref,
                    CANDIDATES,
                    results.as_mut_ptr(),
                    &mut count,
                )
                .result()
                .map_err(lt_err("algorithm heuristic"))?;
                results.set_len(count.clamp(0, CANDIDATES) as usize);
            }
            Ok(results
                .into_iter()
                .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
                .map(|r| r.algo)
                .collect())
        })();
        // SAFETY: created above, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(pref) };
        result
    }

    /// Whether cuBLASLt accepts `algo` at each of `rows` within the
    /// workspace.
    fn supported(
        &self,
        p: &Pinned,
        algo: &sys::cublasLtMatmulAlgo_t,
        rows: &[usize],
    ) -> Result<(), String> {
        for &r in rows {
            p.b.set_cols(r).map_err(|e| e.to_string())?;
            p.d.set_cols(r).map_err(|e| e.to_string())?;
            let mut result =
                std::mem::MaybeUninit::<sys::cublasLtMatmulHeuristicResult_t>::zeroed();
            // SAFETY: live descriptors; `result` is written by the call.
            let status = unsafe {
                sys::cublasLtMatmulAlgoCheck(
                    self.handle,
                    self.desc,
                    p.a.0,
                    p.b.0,
                    p.d.0,
                    p.d.0,
                    algo,
                    result.as_mut_ptr(),
                )
            };
            status
                .result()
                .map_err(|e| format!("rejected by cublasLtMatmulAlgoCheck at {r} rows ({e})"))?;
            // SAFETY: zero-initialized and filled in on success.
            let result = unsafe { result.assume_init() };
            if result.workspaceSize > WORKSPACE_BYTES {
                return Err(format!(
                    "needs {} bytes of workspace at {r} rows",
                    result.workspaceSize
                ));
            }
        }
        Ok(())
    }

    /// Mean seconds per call of `algo` at `rows` rows, timed as
    /// `self.timing` says (after one warm-up). Timing calls launched one by
    /// one from the host measures the host: a cuBLASLt launch takes about
    /// as long as a product of a few thousand rows (on the H200 every
    /// candidate timed 6.6–9.5 µs from 1 to 2,048 rows). In a graph, back
    /// to back, the calls overlap: a 1,024 × 576 × 576 product on 18
    /// thread blocks timed 3.7 µs, faster than 18 SMs compute it. Those
    /// few-block picks were slower alone under Nsight (smollm2-135m's
    /// products of a 1,024-row step: 1.49 ms against 1.21 ms as host-timed
    /// picks), yet the step they run in was faster (4.17 against 4.34 ms
    /// with graphs, where the next kernel starts beside a product).
    fn seconds_per_call(
        &self,
        p: &Pinned,
        algo: &sys::cublasLtMatmulAlgo_t,
        weight: u64,
        s: &Scratch,
        rows: usize,
    ) -> Result<f64, String> {
        let cuda = |what: &'static str| {
            move |e: driver::DriverError| format!("{what} at {rows} rows: {e}")
        };
        if self.timing == PinTiming::Host {
            self.run(p, algo, s.x, weight, s.y, rows)
                .map_err(|e| e.to_string())?;
            self.stream.synchronize().map_err(cuda("warm-up"))?;
            let start = std::time::Instant::now();
            for _ in 0..HOST_TIMED_CALLS {
                self.run(p, algo, s.x, weight, s.y, rows)
                    .map_err(|e| e.to_string())?;
            }
            self.stream.synchronize().map_err(cuda("timing"))?;
            return Ok(start.elapsed().as_secs_f64() / f64::from(HOST_TIMED_CALLS));
        }
        let fenced = self.timing == PinTiming::Alone;
        let graph = super::graphs::capture(&self.stream, || {
            (0..TIMED_CALLS).try_for_each(|_| {
                self.run(p, algo, s.x, weight, s.y, rows)?;
                if fenced {
                    // SAFETY: `fence` is a live device buffer of FENCE_BYTES.
                    unsafe {
                        driver::memset_d8_async(s.fence, 0, FENCE_BYTES, self.stream.cu_stream())
                    }
                    .map_err(|e| BackendError::Cuda(format!("fence between timed calls: {e}")))?;
                }
                Ok(())
            })
        })
        .map_err(|e| format!("capturing at {rows} rows: {e}"))?;
        graph.graph.launch().map_err(cuda("warm-up replay"))?;
        let events = Some(sys_driver::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self
            .stream
            .record_event(events)
            .map_err(cuda("start event"))?;
        graph.graph.launch().map_err(cuda("timed replay"))?;
        let end = self
            .stream
            .record_event(events)
            .map_err(cuda("end event"))?;
        let ms = start.elapsed_ms(&end).map_err(cuda("timing"))?;
        Ok(f64::from(ms) * 1e-3 / f64::from(TIMED_CALLS))
    }

    /// The self-check input's first `rows` rows times the weight with
    /// `algo`; the first `download` rows of the result (at most `rows`)
    /// come back.
    fn product(
        &self,
        p: &Pinned,
        algo: &sys::cublasLtMatmulAlgo_t,
        weight: u64,
        s: &Scratch,
        rows: usize,
        download: usize,
    ) -> Result<Vec<f32>, String> {
        let n = p.n;
        // NaN bytes first, so an element the product leaves unwritten
        // cannot match the previous call's.
        // SAFETY: `y` holds at least max_rows × n f32s.
        unsafe { driver::memset_d8_async(s.y, 0xff, rows * n * 4, self.stream.cu_stream()) }
            .map_err(|e| format!("clearing the output: {e}"))?;
        self.run(p, algo, s.x, weight, s.y, rows)
            .map_err(|e| e.to_string())?;
        let mut host = vec![0f32; download.min(rows) * n];
        // SAFETY: `y` holds at least max_rows × n f32s; synchronized
        // before `host` is read.
        unsafe { driver::memcpy_dtoh_async(&mut host, s.y, self.stream.cu_stream()) }
            .map_err(|e| format!("downloading: {e}"))?;
        self.stream
            .synchronize()
            .map_err(|e| format!("running at {rows} rows: {e}"))?;
        Ok(host)
    }

    /// Multiplies the same input rows at `max_rows` rows and at each of
    /// `CHECK_ROWS` below it, and the largest call twice: every shared row
    /// must be bit-identical. Returns the largest call's product.
    fn self_check(
        &self,
        p: &Pinned,
        algo: &sys::cublasLtMatmulAlgo_t,
        weight: u64,
        s: &Scratch,
    ) -> Result<Vec<f32>, String> {
        let n = p.n;
        let max = p.max_rows;
        let run = |rows: usize| self.product(p, algo, weight, s, rows, rows);
        let full = run(max)?;
        if let Some(at) = full.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "row {} column {} at {max} rows is not finite (unwritten?)",
                at / n,
                at % n
            ));
        }
        let again = run(max)?;
        if let Some(at) = first_difference(&full, &again) {
            return Err(format!(
                "two runs at {max} rows differ (row {}, column {})",
                at / n,
                at % n
            ));
        }
        for &rows in CHECK_ROWS.iter().filter(|&&r| r < max) {
            let part = run(rows)?;
            if let Some(at) = first_difference(&full[..rows * n], &part) {
                return Err(format!(
                    "row {} column {} differs between {rows} and {max} rows",
                    at / n,
                    at % n
                ));
            }
        }
        Ok(full)
    }
}

/// The GPU test of the products in isolation: pins the algorithm of an
/// `n × k` weight of fixed pseudo-random values for up to `max_rows` rows
/// (the load's self-check runs), then multiplies the same input at
/// `max_rows` rows and at each of `rows` through [`InvariantGemm::linear`],
/// as the forward pass calls it, and compares the shared rows bit for bit.
/// Returns the pinned algorithm's description.
pub fn check_shape(
    stream: &Arc<CudaStream>,
    n: usize,
    k: usize,
    max_rows: usize,
    rows: &[usize],
    timing: PinTiming,
) -> Result<String, BackendError> {
    let w = DeviceBuffer::upload(stream, &pseudo_random(n * k + 7)[7..], "test weight")?;
    let shape = GemmShape {
        n,
        k,
        max_rows,
        typical_rows: max_rows.min(256),
        weight: w.ptr,
    };
    let gemm = InvariantGemm::new(stream, &[shape], timing)?;
    // Another input than the self-check's (shifted sequence).
    let x = DeviceBuffer::upload(stream, &pseudo_random(max_rows * k + 3)[3..], "test input")?;
    let y = DeviceBuffer::zeroed(stream, max_rows * n * 4, "test output")?;
    let run = |r: usize| -> Result<Vec<f32>, BackendError> {
        gemm.linear(x.ptr, w.ptr, y.ptr, r, n, k)?;
        let mut host = vec![0f32; r * n];
        // SAFETY: `y` holds max_rows × n ≥ r × n f32s; synchronized below.
        unsafe { driver::memcpy_dtoh_async(&mut host, y.ptr, stream.cu_stream()) }
            .map_err(|e| BackendError::Cuda(format!("downloading: {e}")))?;
        stream
            .synchronize()
            .map_err(|e| BackendError::Cuda(format!("GEMM at {r} rows: {e}")))?;
        Ok(host)
    };
    let full = run(max_rows)?;
    if full.iter().all(|v| *v == 0.0) || full.iter().any(|v| !v.is_finite()) {
        return Err(BackendError::Cuda(format!(
            "n={n} k={k}: the product is all zeros or not finite"
        )));
    }
    for &r in rows {
        let part = run(r)?;
        if let Some(at) = first_difference(&full[..r * n], &part) {
            return Err(BackendError::Cuda(format!(
                "n={n} k={k}: row {} column {} differs between {r} and {max_rows} rows \
                 ({} vs {})",
                at / n,
                at % n,
                part[at],
                full[at]
            )));
        }
    }
    Ok(gemm.describe().join("; "))
}

struct Scratch {
    x: u64,
    y: u64,
    /// `FENCE_BYTES` cleared between timed calls (`PinTiming::Alone`).
    fence: u64,
}

/// The (row count, without split-K reduction only) pairs the heuristic is
/// asked for candidates at, in order: the busy decode step's count, the
/// largest and one row, first restricted to configurations without a
/// split-K reduction, then unrestricted; repeats dropped.
fn heuristic_asks(typical_rows: usize, max_rows: usize) -> Vec<(usize, bool)> {
    let mut asks = Vec::new();
    for restrict in [true, false] {
        for rows in [typical_rows, max_rows, 1] {
            if !asks.contains(&(rows, restrict)) {
                asks.push((rows, restrict));
            }
        }
    }
    asks
}

/// Candidate indices ordered by the sum over row counts of each
/// candidate's time relative to the best time at that row count (ties keep
/// the heuristic's order). `times[c][r]`: seconds of candidate `c` at row
/// count `r`.
fn fastest_first(times: &[Vec<f64>]) -> Vec<usize> {
    let counts = times.first().map_or(0, Vec::len);
    let best: Vec<f64> = (0..counts)
        .map(|r| times.iter().map(|t| t[r]).fold(f64::INFINITY, f64::min))
        .collect();
    let score = |t: &[f64]| -> f64 {
        t.iter()
            .zip(&best)
            .map(|(a, b)| a / b.max(f64::MIN_POSITIVE))
            .sum()
    };
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|&a, &b| score(&times[a]).total_cmp(&score(&times[b])));
    order
}

/// For rungs of row counts (ascending) and `times[m][r]`, each member's
/// seconds at rung `r`: (first row count, member) for each range, where
/// rung r's fastest member serves the row counts above rung r - 1 up to
/// rung r (the first range from one row, the last on to any larger count),
/// adjacent ranges of one member merged. At least one range: member 0 from
/// one row when there are no rungs.
fn fastest_per_range(rungs: &[usize], times: &[Vec<f64>]) -> Vec<(usize, usize)> {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let mut below = 0;
    for (r, &rows) in rungs.iter().enumerate() {
        let best = (0..times.len())
            .min_by(|&a, &b| times[a][r].total_cmp(&times[b][r]))
            .unwrap_or(0);
        if ranges.last().is_none_or(|&(_, m)| m != best) {
            ranges.push((below + 1, best));
        }
        below = rows;
    }
    match ranges.first_mut() {
        Some(first) => first.0 = 1,
        None => ranges.push((1, 0)),
    }
    ranges
}

/// Index of the first element whose bits differ.
fn first_difference(a: &[f32], b: &[f32]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits())
}

/// `len` bf16 values in (-1, 1), a fixed sequence (an LCG).
fn pseudo_random(len: usize) -> Vec<half::bf16> {
    let mut s = 0x2545_f491_u32;
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            half::bf16::from_f32((s >> 8) as f32 / (1u32 << 23) as f32 - 1.0)
        })
        .collect()
}

type ConfigAttr = sys::cublasLtMatmulAlgoConfigAttributes_t;

/// Sets split-K to 1 and the reduction scheme to none where the algorithm
/// has those attributes (an algorithm without split-K support ignores
/// them; `cublasLtMatmulAlgoCheck` then validates the configuration).
fn force_no_split(algo: &mut sys::cublasLtMatmulAlgo_t) {
    let one = 1u32;
    let none = sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_NONE as u32;
    for (attr, value) in [
        (ConfigAttr::CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &one),
        (ConfigAttr::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &none),
    ] {
        // SAFETY: both attributes are uint32_t; `algo` is a valid algorithm
        // struct from the heuristic.
        let _ = unsafe {
            sys::cublasLtMatmulAlgoConfigSetAttribute(
                algo,
                attr,
                value as *const u32 as *const c_void,
                std::mem::size_of::<u32>(),
            )
        };
    }
}

/// The algorithm's id, tile, stages, split-K, reduction scheme, swizzle and
/// custom option, e.g. `algo 66 tile 22 stages 35 splitk 1 reduction 0
/// swizzle 0 custom 0`.
fn describe_algo(algo: &sys::cublasLtMatmulAlgo_t) -> String {
    let get = |attr: ConfigAttr| -> String {
        let mut v = 0u32;
        let mut written = 0usize;
        // SAFETY: every attribute read here is 4 bytes (int32/uint32).
        let status = unsafe {
            sys::cublasLtMatmulAlgoConfigGetAttribute(
                algo,
                attr,
                &mut v as *mut u32 as *mut c_void,
                std::mem::size_of::<u32>(),
                &mut written,
            )
        };
        if status == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            v.to_string()
        } else {
            "?".into()
        }
    };
    format!(
        "algo {} tile {} stages {} splitk {} reduction {} swizzle {} custom {}",
        get(ConfigAttr::CUBLASLT_ALGO_CONFIG_ID),
        get(ConfigAttr::CUBLASLT_ALGO_CONFIG_TILE_ID),
        get(ConfigAttr::CUBLASLT_ALGO_CONFIG_STAGES_ID),
        get(ConfigAttr::CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
        get(ConfigAttr::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
        get(ConfigAttr::CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING),
        get(ConfigAttr::CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_check_input_is_fixed_and_not_trivial() {
        let a = pseudo_random(4096);
        assert_eq!(a, pseudo_random(4096));
        let distinct: std::collections::HashSet<u16> = a.iter().map(|v| v.to_bits()).collect();
        assert!(distinct.len() > 200, "{}", distinct.len());
        assert!(a.iter().any(|v| v.to_f32() < 0.0) && a.iter().any(|v| v.to_f32() > 0.0));
        assert!(a.iter().all(|v| v.to_f32().abs() <= 1.0));
    }

    #[test]
    fn pin_timing_comes_from_its_variable_and_bad_values_are_named() {
        assert_eq!(PinTiming::parse(None).unwrap(), PinTiming::Graph);
        assert_eq!(PinTiming::parse(Some("graph")).unwrap(), PinTiming::Graph);
        assert_eq!(PinTiming::parse(Some(" alone ")).unwrap(), PinTiming::Alone);
        assert_eq!(PinTiming::parse(Some("host")).unwrap(), PinTiming::Host);
        for bad in ["", "Graph", "fenced"] {
            let e = PinTiming::parse(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(&format!("DYNO_CUDA_PIN_TIMING={bad}:")), "{e}");
            assert!(e.contains("`graph`, `alone` or `host`"), "{e}");
        }
    }

    #[test]
    fn the_heuristic_is_asked_at_the_decode_batch_first() {
        assert_eq!(
            heuristic_asks(1024, 8192),
            vec![
                (1024, true),
                (8192, true),
                (1, true),
                (1024, false),
                (8192, false),
                (1, false)
            ]
        );
        // A shape whose busy step is its largest call (the LM head) or
        // one row is asked once per count.
        assert_eq!(
            heuristic_asks(64, 64),
            vec![(64, true), (1, true), (64, false), (1, false)]
        );
        assert_eq!(heuristic_asks(1, 1), vec![(1, true), (1, false)]);
    }

    #[test]
    fn candidates_are_ranked_over_all_row_counts() {
        // (1 row, 256 rows, 8192 rows): the first is best at 8192 rows but
        // three times slower at one row; the second is best overall.
        let times = vec![
            vec![30e-6, 20e-6, 1.00e-3],
            vec![10e-6, 20e-6, 1.05e-3],
            vec![10e-6, 40e-6, 2.00e-3],
        ];
        assert_eq!(fastest_first(&times), vec![1, 0, 2]);
        // Ties keep the heuristic's order.
        assert_eq!(fastest_first(&[vec![1.0], vec![1.0]]), vec![0, 1]);
        assert!(fastest_first(&[]).is_empty());
    }

    #[test]
    fn each_range_of_rows_takes_the_member_fastest_at_its_top() {
        let rungs = [1, 8, 32, 128, 1024];
        // Member 0 wins at 1 and 8 rows, member 1 from 32 on, member 0
        // again at the largest count.
        let times = vec![vec![1.0, 1.0, 3.0, 3.0, 1.0], vec![2.0, 2.0, 2.0, 2.0, 2.0]];
        assert_eq!(
            fastest_per_range(&rungs, &times),
            vec![(1, 0), (9, 1), (129, 0)]
        );
        // One member: one range from one row.
        assert_eq!(fastest_per_range(&rungs, &[vec![1.0; 5]]), vec![(1, 0)]);
        assert_eq!(fastest_per_range(&[], &[]), vec![(1, 0)]);
        // The winner at the first rung serves from one row on.
        assert_eq!(
            fastest_per_range(&[4, 64], &[vec![2.0, 1.0], vec![1.0, 2.0]]),
            vec![(1, 1), (5, 0)]
        );
    }

    #[test]
    fn first_difference_compares_bits() {
        assert_eq!(first_difference(&[1.0, 2.0], &[1.0, 2.0]), None);
        assert_eq!(first_difference(&[0.0, 2.0], &[-0.0, 2.0]), Some(0));
        assert_eq!(first_difference(&[1.0, f32::NAN], &[1.0, 3.0]), Some(1));
    }
}
