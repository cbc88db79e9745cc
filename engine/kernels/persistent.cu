// decode_layers: every layer of a small decode step in one launch.
//
// At batch 1 a step of the five-kernels-per-layer path (gemv.cu) is ~150
// dependent kernels of 3-8 us, each mostly launch and drain latency, not
// bytes. Here one persistent grid (as many blocks as the SMs hold at once,
// persistent.rs sizes it) runs the same five block bodies as phases, and the
// grid waits at a barrier between phases instead of ending a kernel:
//   RMSNorm+QKV+bias+RoPE+KV write | attention | O + residual |
//   RMSNorm+gate-up+SiLU·mul | down + residual
// A phase's work is the grid its kernel would have had, dealt out as
// virtual blocks (block b takes b, b + gridDim.x, ...); each block issues its
// first weight loads before it waits at the barrier, as the kernels do
// before pdl_wait. The bodies, their grids and their sums are the kernels',
// so the bits are the five-kernel path's.
//
// On the H200 it is slower than the five kernels (0.67 against 0.62 ms a
// batch-1 smollm2-135m step), so it is off by default (persistent.rs):
// the 149 barriers of a step cost ~0.22 ms, ~1.5 us each, about what a
// kernel boundary costs under programmatic dependent launch, and the
// phases' own work ~0.38 ms, ~2.5 us each, a chain of dependent memory
// accesses (PERSIST_ABLATE below measured both).
//
// Compiled only in a program of its own (persistent.rs, -DDYNO_PERSISTENT):
// there pdl_launch does nothing and activations are not __restrict__
// (common.cuh), since blocks read what other blocks of this launch wrote.
// For models without q/k norm (the fused QKV body) and steps of at most
// GEMV_MAX_T tokens; runner.rs keeps the five kernels otherwise.
#ifdef DYNO_PERSISTENT

// The layer table: LAYER_PTRS device pointers per layer, in the order of
// persistent.rs's LAYER_POINTERS (-D options from persistent::defines).
#if !defined(LAYER_PTRS) || !defined(LAYER_PTR_INPUT_NORM) || !defined(LAYER_PTR_QKV) ||     \
    !defined(LAYER_PTR_QKV_BIAS) || !defined(LAYER_PTR_O_PROJ) ||                             \
    !defined(LAYER_PTR_POST_NORM) || !defined(LAYER_PTR_GATE_UP) || !defined(LAYER_PTR_DOWN)
#error "compile decode_layers with the layer table's -D options (persistent.rs)"
#endif

// PERSIST_ABLATE (measurement builds only; wrong outputs): 1 drops the
// barriers, 2 the phases' work, 3 both, to time each part of a step alone
// (docs/BENCHMARKS.md; build the engine with the value changed here).
#ifndef PERSIST_ABLATE
#define PERSIST_ABLATE 0
#endif

__device__ __forceinline__ unsigned long long load_acquire(const unsigned long long* p) {
    unsigned long long v;
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

// A barrier over the whole grid on one 64-bit count that only grows: a
// block arrives by adding 1 (after an acquire-release fence, so that its
// writes, which __syncthreads ordered before thread 0's, are seen by every
// block that sees the count) and leaves when an acquire load finds the
// count at its target, gridDim.x more per barrier. Every launch adds the
// same number (barriers per launch times blocks), so a launch's first
// target follows from the count it finds: nothing to reset between
// launches or graph replays. (Measured on the H200 against a
// sense-reversing barrier with __threadfence, 0.82 -> 0.67 ms a batch-1
// step; spreading the count over eight 128-byte lines gained nothing:
// docs/BENCHMARKS.md.)
struct GridBarrier {
    unsigned long long* count;
    unsigned long long target;  // thread 0's
    // `barriers`: how many this launch passes.
    __device__ __forceinline__ void start(int barriers) {
        if (threadIdx.x == 0) {
            const unsigned long long per_launch = (unsigned long long)barriers * gridDim.x;
            // No block of this launch has passed its first barrier yet
            // (this one has not arrived), so the count is within the first
            // gridDim.x arrivals past the previous launches' total.
            const unsigned long long v = load_acquire(count);
            target = v - v % per_launch;
        }
    }
    __device__ __forceinline__ void operator()() {
#if PERSIST_ABLATE != 1 && PERSIST_ABLATE != 3
        __syncthreads();
        if (threadIdx.x == 0) {
            target += gridDim.x;
            asm volatile("fence.acq_rel.gpu;\n\tred.relaxed.gpu.global.add.u64 [%0], 1;"
                         :
                         : "l"(count)
                         : "memory");
            while (load_acquire(count) < target) {
            }
        }
        __syncthreads();
#endif
    }
};

// The barrier a block passes the first time it is called in a phase (a
// body calls it after issuing its first weight loads, as the kernels of
// their own call PdlWait).
struct PhaseWait {
    GridBarrier* barrier;
    bool* waited;
    __device__ __forceinline__ void operator()() const {
        if (!*waited) {
            (*barrier)();
            *waited = true;
        }
    }
};

// Runs a phase of `blocks` virtual blocks: body(vb, wait) for this block's
// share. A block with no virtual block (or whose bodies all returned before
// waiting) still passes the barrier once, so every block arrives exactly
// once per phase. `sync` false: the phase needs no barrier (the first one,
// after pdl_wait).
template <typename Body>
__device__ __forceinline__ void phase(GridBarrier& barrier, bool sync, int blocks,
                                      Body body) {
    bool waited = !sync;
    const PhaseWait wait{&barrier, &waited};
    for (int vb = blockIdx.x; vb < (PERSIST_ABLATE >= 2 ? 0 : blocks); vb += gridDim.x) {
        body(vb, wait);
        __syncthreads();  // the next virtual block reuses the shared memory
    }
    wait();
}

// Launch geometry of each phase (the grids runner.rs gives the kernels).
__device__ __forceinline__ int cdiv(int a, int b) { return (a + b - 1) / b; }

// Blocks per SM the registers must allow: the grid's default
// (persistent.rs DEFAULT_BLOCKS_PER_SM passes it), so that the attention
// body is not squeezed into spills for blocks the grid does not use.
#ifndef PERSIST_MIN_BLOCKS
#error "compile decode_layers with -DPERSIST_MIN_BLOCKS (persistent.rs)"
#endif
extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32, PERSIST_MIN_BLOCKS)
    decode_layers(const unsigned long long* layers, int nlayers, float* residual, float* qkv,
                  bf16* attn, bf16* act, const float2* cos_sin, const int* positions,
                  const int* slots, const int* seq_idx, const int* block_tables,
                  const int* bt_stride, bf16* k_cache, bf16* v_cache, int block_size, int T,
                  int nq, int nkv, float eps, float scale, int nsplit, float* part_acc,
                  float* part_ml, int* counters, unsigned long long* barrier_count) {
    static_assert(GEMV_WARPS == ATTN_WARPS, "one block size serves every phase");
    constexpr int HD = DYNO_HEAD_DIM;
    constexpr int K = DYNO_HIDDEN;
    // The normalized input of the product phases: dynamic shared memory
    // (GEMV_MAX_T rows of the hidden size, persistent.rs), so that with
    // attention's static buffers it may pass 48 KiB.
    extern __shared__ __align__(16) bf16 xs[];
    GridBarrier barrier{barrier_count, 0};
    barrier.start(5 * nlayers - 1);  // five phases a layer, the first without
    const int hidden = K;
    const int qkv_pairs = (nq + 2 * nkv) * HD / 2;
    const int head_blocks = nkv * DYNO_GROUP_CHUNKS;
    const int residual_blocks = cdiv(hidden, GEMV_WARPS * GEMV_ROWS);
    // Layer li's K (V) is layer 0's plus li times the distance from layer
    // 0's K to layer 1's, which is twice the distance from K to V
    // (kv_pool.rs: [layer][K | V], each array laid out by kv_row).
    const long kv_layer = 2 * (v_cache - k_cache);
    pdl_wait();  // the embedding kernel's residual
    for (int li = 0; li < nlayers; li++) {
        const unsigned long long* p = layers + (long)li * LAYER_PTRS;
        const bf16* input_norm = reinterpret_cast<const bf16*>(p[LAYER_PTR_INPUT_NORM]);
        const bf16* w_qkv = reinterpret_cast<const bf16*>(p[LAYER_PTR_QKV]);
        const bf16* bias = reinterpret_cast<const bf16*>(p[LAYER_PTR_QKV_BIAS]);
        const bf16* w_o = reinterpret_cast<const bf16*>(p[LAYER_PTR_O_PROJ]);
        const bf16* post_norm = reinterpret_cast<const bf16*>(p[LAYER_PTR_POST_NORM]);
        const bf16* w_gate_up = reinterpret_cast<const bf16*>(p[LAYER_PTR_GATE_UP]);
        const bf16* w_down = reinterpret_cast<const bf16*>(p[LAYER_PTR_DOWN]);
        bf16* k_layer = k_cache + li * kv_layer;
        bf16* v_layer = v_cache + li * kv_layer;
        phase(barrier, li > 0, cdiv(qkv_pairs, GEMV_WARPS), [&](int vb, PhaseWait wait) {
            // No q/k norms here (persistent::unsupported), so no head counters.
            norm_qkv_rope_cache_block<false>(vb, 0, xs, wait, residual, input_norm, w_qkv,
                                             bias, nullptr, nullptr, nullptr, cos_sin,
                                             positions, slots, qkv, k_layer, v_layer, T, nq,
                                             nkv, eps);
        });
        phase(barrier, true, T * head_blocks * nsplit, [&](int vb, PhaseWait wait) {
            const int per_split = T * head_blocks;
            const int z = vb / per_split, rest = vb - z * per_split;
            attention_impl<HD, DYNO_GROUP, DYNO_GROUP_CHUNKS, false, false>(
                wait, rest % T, rest / T, z, T, head_blocks, nsplit, qkv, k_layer, v_layer, positions,
                seq_idx, block_tables, bt_stride, block_size, nkv, scale, attn, part_acc, part_ml,
                counters, 0);
        });
        phase(barrier, true, residual_blocks, [&](int vb, PhaseWait wait) {
            gemv_residual_block<DYNO_QDIM>(vb, 0, wait, attn, w_o, residual, T, hidden);
        });
        phase(barrier, true, cdiv(DYNO_INTER, GEMV_WARPS), [&](int vb, PhaseWait wait) {
            norm_gate_up_silu_block(vb, 0, xs, wait, residual, post_norm, w_gate_up, act, T,
                                    eps);
        });
        phase(barrier, true, residual_blocks, [&](int vb, PhaseWait wait) {
            gemv_residual_block<DYNO_INTER>(vb, 0, wait, act, w_down, residual, T, hidden);
        });
    }
}

#endif  // DYNO_PERSISTENT
