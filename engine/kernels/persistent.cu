// decode_layers: every layer of a small decode step in one launch.
//
// At batch 1 a step of the five-kernels-per-layer path (gemv.cu) is ~150
// dependent kernels of 3-8 us, each mostly launch and drain latency, not
// bytes. Here one persistent grid (as many blocks as the SMs hold at once,
// runner.rs sizes it) runs the same five block bodies as phases, and the
// grid waits at a barrier between phases instead of ending a kernel:
//   RMSNorm+QKV+bias+RoPE+KV write | attention | O + residual |
//   RMSNorm+gate-up+SiLU·mul | down + residual
// A phase's work is the grid its kernel would have had, dealt out as
// virtual blocks (block b takes b, b + gridDim.x, ...); each block issues its
// first weight loads before it waits at the barrier, as the kernels do
// before pdl_wait. The bodies, their grids and their sums are the kernels',
// so the bits are the five-kernel path's.
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
#error "compile decode_layers with the layer table's -D options (nvrtc.rs)"
#endif

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// A sense-reversing barrier over the whole grid: `state[0]` counts the
// blocks that arrived, `state[1]` is the generation the last one advances
// (it also resets the count, so the barrier is ready for the next launch or
// graph replay without a memset). Every block's writes before it are seen
// by every block after it. All blocks must be resident at once, which the
// grid size guarantees (runner.rs: at most the occupancy times the SMs, and
// nothing launched after it starts before it ends: pdl_launch is a no-op).
struct GridBarrier {
    unsigned* state;
    __device__ __forceinline__ void operator()() const {
        __syncthreads();
        if (threadIdx.x == 0) {
            const unsigned generation = load_acquire(state + 1);
            __threadfence();
            if (atomicAdd(state, 1u) == gridDim.x - 1) {
                atomicExch(state, 0u);
                __threadfence();
                atomicAdd(state + 1, 1u);
            } else {
                while (load_acquire(state + 1) == generation) {
                }
            }
            __threadfence();
        }
        __syncthreads();
    }
};

// The barrier a block passes the first time it is called in a phase (a
// body calls it after issuing its first weight loads, as the kernels of
// their own call PdlWait).
struct PhaseWait {
    const GridBarrier* barrier;
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
__device__ __forceinline__ void phase(const GridBarrier& barrier, bool sync, int blocks,
                                      Body body) {
    bool waited = !sync;
    const PhaseWait wait{&barrier, &waited};
    for (int vb = blockIdx.x; vb < blocks; vb += gridDim.x) {
        body(vb, wait);
        __syncthreads();  // the next virtual block reuses the shared memory
    }
    wait();
}

// Launch geometry of each phase (the grids runner.rs gives the kernels).
__device__ __forceinline__ int cdiv(int a, int b) { return (a + b - 1) / b; }

// Blocks per SM the registers must allow: the grid's default
// (persistent.rs DEFAULT_BLOCKS_PER_SM), so that the attention body is not
// squeezed into spills for blocks the grid does not use.
#ifndef PERSIST_MIN_BLOCKS
#define PERSIST_MIN_BLOCKS 2
#endif
extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32, PERSIST_MIN_BLOCKS)
    decode_layers(const unsigned long long* layers, int nlayers, float* residual, float* qkv,
                  bf16* attn, bf16* act, const float2* cos_sin, const int* positions,
                  const int* slots, const int* seq_idx, const int* block_tables,
                  const int* bt_stride, bf16* k_cache, bf16* v_cache, int block_size, int T,
                  int nq, int nkv, float eps, float scale, int nsplit, float* part_acc,
                  float* part_ml, int* counters, unsigned* barrier_state) {
    static_assert(GEMV_WARPS == ATTN_WARPS, "one block size serves every phase");
    constexpr int HD = DYNO_HEAD_DIM;
    constexpr int K = DYNO_HIDDEN;
    // The normalized input of the product phases: dynamic shared memory
    // (GEMV_MAX_T rows of the hidden size, persistent.rs), so that with
    // attention's static buffers it may pass 48 KiB.
    extern __shared__ __align__(16) bf16 xs[];
    const GridBarrier barrier{barrier_state};
    const int hidden = K;
    const int qkv_pairs = (nq + 2 * nkv) * HD / 2;
    const int head_blocks = nkv * DYNO_GROUP_CHUNKS;
    const int residual_blocks = cdiv(hidden, GEMV_WARPS * GEMV_ROWS);
    // Layer li's K (V) is layer 0's plus li times the distance from layer
    // 0's K to layer 1's, which is twice the distance from K to V
    // (kv_pool.rs: [layer][K | V][slot][kv head][head dim]).
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
            norm_qkv_rope_cache_block(vb, 0, xs, wait, residual, input_norm, w_qkv, bias,
                                      cos_sin, positions, slots, qkv, k_layer, v_layer, T, nq,
                                      nkv, eps);
        });
        phase(barrier, true, T * head_blocks * nsplit, [&](int vb, PhaseWait wait) {
            wait();
            const int per_split = T * head_blocks;
            const int z = vb / per_split, rest = vb - z * per_split;
            attention_impl<HD, DYNO_GROUP, DYNO_GROUP_CHUNKS, false>(
                rest % T, rest / T, z, head_blocks, nsplit, qkv, k_layer, v_layer, positions,
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
