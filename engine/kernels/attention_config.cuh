// Compile-time choices of the attention kernels (attention.cu), from the
// -D options kernels.rs passes (the DYNO_CUDA_ATTN_* variables there) and
// resolved here for the model's head dim, and the cp.async helpers both
// inner loops stage K/V with. Concatenated before attention_mma.cu and
// attention.cu (nvrtc.rs SOURCES).
#define ATTN_WARPS 4
// Keys a sub-warp loads per iteration: -DATTN_KEYS_PER_ITER from
// kernels.rs (DYNO_CUDA_ATTN_KEYS overrides it there).
#ifndef ATTN_KEYS_PER_ITER
#define ATTN_KEYS_PER_ITER 2
#endif
#define KEYS_PER_ITER ATTN_KEYS_PER_ITER
// The grid's split count is fixed (a CUDA graph replays it at every context
// length), so a short context uses fewer splits, each at least one block
// iteration of keys, and the surplus blocks exit at once. One iteration per
// split keeps a split to one round trip to the cache: at small batches the
// step is bound by such round trips, not by bytes. ATTN_MAX_SPLITS, the most
// splits a grid has, comes from kernels.rs as a -D option (runner.rs sizes
// the grid with the same constant).
// Splits the merge reads per round of loads.
#define ATTN_MERGE_BATCH 16

// ATTN_STAGED (-D from kernels.rs; DYNO_CUDA_ATTN_STAGED there): the
// keys and values of each iteration go into shared memory with cp.async,
// one iteration ahead (double-buffered), and the loop reads them from
// there. Without it each lane loads its K and V straight into registers,
// so the loads in flight are bounded by registers, and the registers bound
// the blocks per SM (docs/CUDA.md). The same keys in the same order either
// way, so the results are bit-identical. 1 stages, 0 does not; 2 (the
// default, resolved below with ATTN_MMA) stages the tensor-core loop and
// not the sub-warp loop, as the H200 measured them (docs/CUDA.md).
#ifndef ATTN_STAGED
#define ATTN_STAGED 2
#endif

// ATTN_PIPELINE (-D from kernels.rs; DYNO_CUDA_ATTN_PIPELINE there): the
// unstaged sub-warp loop loads the next iteration's K and V rows into
// registers before it folds in the current ones, so the loads overlap the
// softmax (twice the K/V registers: at qwen3-0.6b's shape 113 instead of
// 96, 4 blocks per SM instead of 5, and still +1.9 % offline on the H200).
// Same keys, same order, same bits. Ignored by the tensor-core and staged
// loops. 1 (the default) or 0.
#ifndef ATTN_PIPELINE
#define ATTN_PIPELINE 1
#endif

// 16 bytes global -> shared without passing through registers; `valid`
// false zero-fills (no bytes read).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    const int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ATTN_MMA and ATTN_USE_MMA, which attention loop runs, are resolved in
// common.cuh: the KV cache's default layout follows them.
// The default staging: the tensor-core loop's (each warp its own rows, no
// block barrier in the loop: smollm2-135m offline +7.6 % on the H200) where
// its two buffers fit (head dims up to 128), never the sub-warp loop's
// (qwen3-0.6b offline -7.5 %: the block barrier per iteration costs more
// than the registers it frees).
#if ATTN_MMA_T && ATTN_STAGED == 1
#error "DYNO_CUDA_ATTN_STAGED=1 stages the other loops; the transposed tensor-core loop (DYNO_CUDA_ATTN_MMA_T) stages its own rows"
#endif
#if ATTN_MMA_T
#undef ATTN_STAGED
#define ATTN_STAGED 0
#endif
#if ATTN_STAGED == 2
#undef ATTN_STAGED
#if ATTN_USE_MMA && DYNO_HEAD_DIM <= 128
#define ATTN_STAGED 1
#else
#define ATTN_STAGED 0
#endif
#endif
#if ATTN_USE_MMA && ATTN_KEYS_PER_ITER != 2
#error "DYNO_CUDA_ATTN_KEYS tunes the sub-warp loop, but this head dim runs the tensor-core loop: add DYNO_CUDA_ATTN_MMA=0 to measure it"
#endif
