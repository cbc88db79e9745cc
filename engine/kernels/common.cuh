// Shared helpers for dyno's CUDA kernels. NVRTC compiles all kernel files as
// one program (common.cuh first), once per process, for the device's arch.
#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;

// The model's shape, fixed per process (passed by nvrtc.rs as -D options).
#if !defined(DYNO_HEAD_DIM) || !defined(DYNO_GROUP) || !defined(DYNO_GROUP_CHUNKS) || \
    !defined(DYNO_HIDDEN) || \
    !defined(DYNO_QDIM) || !defined(DYNO_INTER)
#error "compile with -DDYNO_HEAD_DIM=<multiple of 8, <= 256> -DDYNO_GROUP=<query heads per KV head> -DDYNO_GROUP_CHUNKS and the model's -DDYNO_HIDDEN, -DDYNO_QDIM, -DDYNO_INTER"
#endif
// Launch-geometry constants shared with the launchers (nvrtc.rs passes them).
#if !defined(GEMV_WARPS) || !defined(GEMV_ROWS) || !defined(GEMV_MAX_T) || \
    !defined(GEMV_MAX_HIDDEN) || !defined(ATTN_MAX_SPLITS) || !defined(ADD_RMSNORM_WARPS)
#error "compile with the -D options of nvrtc::launch_constants()"
#endif

// Programmatic dependent launch (sm_90+): a kernel launched with the
// programmatic-serialization attribute may start before the previous kernel
// on the stream finishes. pdl_wait blocks until that kernel has completed and
// its writes are visible, so every kernel calls it before it reads (or
// writes) anything another kernel touches; pdl_launch lets the next kernel
// start early. Both are no-ops without the attribute or before sm_90.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// In decode_layers (persistent.cu, compiled as a program of its own with
// -DDYNO_PERSISTENT) pdl_launch does nothing: a dependent kernel started
// early could take the SMs that blocks of the persistent grid still wait
// for, and they wait on each other at grid barriers.
__device__ __forceinline__ void pdl_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(DYNO_PERSISTENT)
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// Which attention loop runs (attention_config.cuh, attention.cu), resolved
// here because the KV cache's default layout below follows it.
// ATTN_MMA (-D from kernels.rs; DYNO_CUDA_ATTN_MMA there): each warp
// takes 16 keys per iteration and computes its scores and its weighted sum
// of V with tensor-core products (mma.sync m16n8k16, bf16 in, f32
// accumulate; 8 keys above head dim 64) instead of one sub-warp per key with shuffle reductions. The
// rows of the product are the block's G query heads (G <= 8, rows 8..15
// zero), so most of each product is padding, which costs little: the kernel
// is bound by the K/V bytes it reads, and the products replace ~25 warp
// instructions per key with ~2. Q and the softmax weights P enter the
// products as bf16 pairs hi + lo (x = hi + lo, |lo| <= 2^-9 |x|), so the
// scores and sums keep close to f32 precision although the operands are
// bf16; K and V are bf16 in the cache, exact. Needs sm_80+ and a head dim
// that is a multiple of 16; otherwise the sub-warp loop runs.
// ATTN_MMA 2 (the default) takes it for head dims up to 64, where the H200
// measured it faster (smollm2-135m offline +16 %); at 128 (qwen3-0.6b) the
// fragments cost so many registers that it was slower (docs/CUDA.md), and
// the transposed loop below runs there by default.
// 1 forces it wherever it can run, 0 never.
#ifndef ATTN_MMA
#define ATTN_MMA 2
#endif
// ATTN_MMA_T (-D from kernels.rs, which resolves DYNO_CUDA_ATTN_MMA_T and
// the default for the head dim and the GPU): the tensor-core loop with the
// products turned around (keys as rows; attend_split_mma_t in
// attention_mma.cu), its rows staged in dynamic shared memory
// (MmaTStage<HD>::BLOCK_BYTES per block, which kernels.rs gives every
// attention launch: ATTN_MMA_T_SHARED must equal it). It is a tensor-core
// loop, so ATTN_USE_MMA and the KV layout that follows it are those of the
// other one. The persistent program (DYNO_PERSISTENT), whose dynamic
// shared memory holds a layer's activations, keeps the other loop.
#ifndef ATTN_MMA_T
#define ATTN_MMA_T 0
#endif
#if ATTN_MMA_T && (DYNO_HEAD_DIM % 16 != 0 || !defined(ATTN_MMA_T_SHARED))
#error "ATTN_MMA_T needs a head dim that is a multiple of 16 and -DATTN_MMA_T_SHARED"
#endif
#if (ATTN_MMA == 1 || ATTN_MMA_T || (ATTN_MMA == 2 && DYNO_HEAD_DIM <= 64)) && (DYNO_HEAD_DIM % 16 == 0) && \
    (!defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800)
#define ATTN_USE_MMA 1
#else
#define ATTN_USE_MMA 0
#endif
#if defined(DYNO_PERSISTENT) || !ATTN_USE_MMA
#undef ATTN_MMA_T
#define ATTN_MMA_T 0
#endif

// The KV cache's layout (-DKV_HEAD_MAJOR, -DKV_BLOCK_SIZE from
// kernels.rs's KvLayout; DYNO_CUDA_KV_LAYOUT there): the element offset of
// KV head kvh's row for cache slot `slot` (slot = block * block size +
// position in the block), in one layer's K (or V) array. Slot-major (0):
// [slot][kv head][head dim], a slot's heads side by side, so consecutive
// keys of one head lie nkv rows apart. Head-major (1): [block][kv
// head][position][head dim], so one head's rows of a block are contiguous
// (block size x head dim x 2 bytes) and attention reads them in one run.
// 2 (the default) takes head-major where the tensor-core loop runs
// (smollm2-135m offline +2.0 % on the H200) and slot-major where the
// sub-warp loop does (qwen3-0.6b offline -1.9 % head-major; docs/CUDA.md).
// Every kernel that reads or writes the cache computes its rows here.
#ifndef KV_HEAD_MAJOR
#define KV_HEAD_MAJOR 0
#endif
#if KV_HEAD_MAJOR == 2
#undef KV_HEAD_MAJOR
#define KV_HEAD_MAJOR ATTN_USE_MMA
#endif
#if KV_HEAD_MAJOR && !defined(KV_BLOCK_SIZE)
#error "the head-major KV layout needs -DKV_BLOCK_SIZE"
#endif
__device__ __forceinline__ long kv_row(long slot, int kvh, int nkv, int hd) {
#if KV_HEAD_MAJOR
    const long block = slot / KV_BLOCK_SIZE;
    const long pos = slot - block * KV_BLOCK_SIZE;
    return ((block * nkv + kvh) * KV_BLOCK_SIZE + pos) * hd;
#else
    return (slot * nkv + kvh) * hd;
#endif
}

// Activations (residual, q/k/v, the KV cache, product inputs) are read
// through ACT_RESTRICT pointers: __restrict__ in kernels of their own, so
// the compiler may load them through the read-only cache; nothing in
// decode_layers, whose blocks read what other blocks of the same launch
// wrote (the read-only cache is not coherent within a launch).
#ifdef DYNO_PERSISTENT
#define ACT_RESTRICT
#else
#define ACT_RESTRICT __restrict__
#endif

// What a block does between issuing its first weight loads and reading
// the previous kernel's output, in a kernel of its own: wait for that
// kernel and let the next one start (decode_layers passes a grid barrier
// instead).
struct PdlWait {
    __device__ __forceinline__ void operator()() const {
        pdl_wait();
        pdl_launch();
    }
};

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#ifndef NAN
#define NAN __int_as_float(0x7fffffff)
#endif

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block; every thread gets the result. `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = lane < nwarps ? scratch[lane] : 0.0f;
    return warp_sum(r);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = lane < nwarps ? scratch[lane] : -INFINITY;
    return warp_max(r);
}

// RoPE's rotation of the pair (a, b) (rows i and i + head_dim/2) by the
// angle whose (cos, sin) is c, rounded as backend/rope.rs rounds it on the
// CPU: each product, then the sum. Explicit roundings, because ptxas may
// fuse a plain product into the next add or not depending on the code
// around it, which made the same rotation give other bits in two kernels.
__device__ __forceinline__ float2 rope_rotate(float a, float b, float2 c) {
    return make_float2(__fsub_rn(__fmul_rn(a, c.x), __fmul_rn(b, c.y)),
                       __fadd_rn(__fmul_rn(b, c.x), __fmul_rn(a, c.y)));
}

// Eight bf16 (one 16-byte load) to f32.
__device__ __forceinline__ void unpack8(const uint4& raw, float* out) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 f = __bfloat1622float2(h[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}

