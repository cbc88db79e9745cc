// Paged causal attention over the KV cache, flash-decoding style.
//
// Every query token t (a decode token or a token of a prefill chunk) attends
// to keys 0..=positions[t] of its sequence, all of them already in the cache
// (qkv_rope_cache ran first), so chunked prefill and decode are one case.
// Grid: (query tokens, kv heads x group chunks, splits). A block (4 warps)
// handles one kv head for a chunk of the G query heads that share it (GQA)
// over one split of the context; groups above 8 are cut into
// DYNO_GROUP_CHUNKS chunks of at most 8 (shared memory holds 8 heads'
// partials). A warp is cut into sub-warps of LPT lanes (HD/8 rounded up to a
// power of two; lanes past the head dim idle, so head dims like 80 and 96
// work); each sub-warp takes one key at a time, a lane loading 8 dims of K
// and of V with one 16-byte load each, and keeps its own online softmax. The block merges its
// sub-warps in shared memory. With several splits each block writes its
// unnormalized partial; the last block of a (token, kv head) to finish
// (counted with an atomic) merges the splits, so no second kernel is needed.
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

// ATTN_STAGED (-D from kernels.rs; DYNO_CUDA_ATTN_STAGED=1 there): the
// block copies each iteration's keys and values into shared memory with
// cp.async, one iteration ahead (double-buffered), and the sub-warps read
// them from there. Without it each lane loads its K and V straight into
// registers, so the loads in flight are bounded by registers, and the
// registers bound the blocks per SM (docs/CUDA.md). Each sub-warp takes the
// same keys in the same order either way, so the results are bit-identical.
#ifndef ATTN_STAGED
#define ATTN_STAGED 0
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

// Lanes per key: HD/8 rounded up to a power of two (shuffle reductions).
__host__ __device__ constexpr int attn_lanes_per_key(int hd) {
    int l = 4;
    while (l * 8 < hd) l *= 2;
    return l;
}

// Folds one iteration's keys into a sub-warp's online softmax, for each of
// its G query heads: this lane's 8 dims of each key's K and V row (kraw,
// vraw; zeros past the head dim), `valid` false for keys past the split.
template <int G, int LPT>
__device__ __forceinline__ void attend_keys(const float (&q)[G][8],
                                            const uint4 (&kraw)[KEYS_PER_ITER],
                                            const uint4 (&vraw)[KEYS_PER_ITER],
                                            const bool (&valid)[KEYS_PER_ITER], float (&m)[G],
                                            float (&l)[G], float (&acc)[G][8]) {
    float kf[KEYS_PER_ITER][8], vf[KEYS_PER_ITER][8];
#pragma unroll
    for (int u = 0; u < KEYS_PER_ITER; u++) {
        unpack8(kraw[u], kf[u]);
        unpack8(vraw[u], vf[u]);
    }
#pragma unroll
    for (int g = 0; g < G; g++) {
        float s[KEYS_PER_ITER];
        float smax = -INFINITY;
#pragma unroll
        for (int u = 0; u < KEYS_PER_ITER; u++) {
            float d = 0.0f;
#pragma unroll
            for (int e = 0; e < 8; e++) d += q[g][e] * kf[u][e];
#pragma unroll
            for (int o = LPT / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
            s[u] = valid[u] ? d : -INFINITY;
            smax = fmaxf(smax, s[u]);
        }
        const float m_new = fmaxf(m[g], smax);
        // No valid key yet for this sub-warp: leave its state unchanged
        // (predicated, so the warp never diverges around the shuffles).
        const bool any = m_new != -INFINITY;
        const float corr = any ? __expf(m[g] - m_new) : 1.0f;
        l[g] *= corr;
#pragma unroll
        for (int e = 0; e < 8; e++) acc[g][e] *= corr;
#pragma unroll
        for (int u = 0; u < KEYS_PER_ITER; u++) {
            const float p = any ? __expf(s[u] - m_new) : 0.0f;
            l[g] += p;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] += p * vf[u][e];
        }
        m[g] = any ? m_new : m[g];
    }
}

template <int HD, int GALL, int CHUNKS>
__device__ void attention_impl(const float* __restrict__ qkv, const bf16* __restrict__ k_cache,
                               const bf16* __restrict__ v_cache,
                               const int* __restrict__ positions,
                               const int* __restrict__ seq_idx,
                               const int* __restrict__ block_tables,
                               const int* __restrict__ bt_stride_ptr, int block_size, int nkv,
                               float scale, bf16* __restrict__ out, float* __restrict__ part_acc,
                               float* __restrict__ part_ml, int* __restrict__ split_counters,
                               int split_keys) {
    static_assert(HD % 8 == 0 && HD <= 256, "head dim: a multiple of 8, at most 256");
    constexpr int G = (GALL + CHUNKS - 1) / CHUNKS;  // query heads per block
    static_assert(G <= 8, "at most 8 query heads per block (shared memory)");
    constexpr int LPT = attn_lanes_per_key(HD);  // lanes per key
    constexpr int SUBS = 32 / LPT;              // sub-warps per warp
    constexpr int NSUB = ATTN_WARPS * SUBS;     // sub-warps per block
    constexpr int WARP_KEYS = SUBS * KEYS_PER_ITER;
    __shared__ float s_m[NSUB][G];
    __shared__ float s_l[NSUB][G];
    __shared__ bool s_last;
#if ATTN_STAGED
    // Two buffers of one iteration's K and V rows while the keys are read;
    // the same bytes hold the sub-warps' partials for the merge after.
    constexpr int STAGE_ELEMS = ATTN_WARPS * SUBS * KEYS_PER_ITER * HD;  // bf16 per K (or V) tile
    constexpr int STAGE_BYTES = 2 * 2 * STAGE_ELEMS * 2;
    constexpr int ACC_BYTES = NSUB * G * HD * 4;
    static_assert(STAGE_BYTES <= 40 * 1024,
                  "ATTN_STAGED: two iterations of K and V rows do not fit in static shared memory "
                  "(48 KiB); use fewer keys per iteration (DYNO_CUDA_ATTN_KEYS)");
    __shared__ __align__(16) unsigned char s_raw[STAGE_BYTES > ACC_BYTES ? STAGE_BYTES : ACC_BYTES];
    bf16* s_kv = reinterpret_cast<bf16*>(s_raw);  // [buffer][K|V][key][HD]
    float(*s_acc)[G][HD] = reinterpret_cast<float(*)[G][HD]>(s_raw);
#else
    __shared__ float s_acc[NSUB][G][HD];
#endif

    const int t = blockIdx.x, split = blockIdx.z, stride = gridDim.z;
    const int kvh = blockIdx.y / CHUNKS, g0 = (blockIdx.y % CHUNKS) * G;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int sub_in_warp = lane / LPT, sl = lane % LPT;
    const bool lane_on = sl * 8 < HD;  // lanes past the head dim hold zeros
    const int sub = warp * SUBS + sub_in_warp;
    const int nq = nkv * GALL;
    const int ctx = positions[t] + 1;
    constexpr int BLOCK_KEYS = ATTN_WARPS * WARP_KEYS;
    // split_keys > 0 (batch_invariant): splits of split_keys keys, so a
    // query's split structure, and with it the order its softmax is summed
    // and merged in, depends on its context length only, not on the grid
    // (runner.rs makes the grid's z at least that split count). 0: as many
    // splits as the grid has, each at least one block iteration of keys.
    const int wanted = split_keys > 0 ? (ctx + split_keys - 1) / split_keys
                                      : max(1, (ctx + BLOCK_KEYS - 1) / BLOCK_KEYS);
    const int nsplit = min(stride, wanted);
    if (split >= nsplit) return;
    const int chunk = split_keys > 0 && nsplit == wanted ? split_keys : (ctx + nsplit - 1) / nsplit;
    const int begin = split * chunk;
    const int end = min(ctx, begin + chunk);
    const int* table = block_tables + (long)seq_idx[t] * (*bt_stride_ptr);
    const int row_len = (nq + 2 * nkv) * HD;

    float q[G][8];
#pragma unroll
    for (int g = 0; g < G; g++) {
        const bool on = lane_on && g0 + g < GALL;
        const float4* src = reinterpret_cast<const float4*>(
            qkv + (long)t * row_len + (kvh * GALL + g0 + g) * HD + sl * 8);
        const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        const float4 lo = on ? src[0] : zero, hi = on ? src[1] : zero;
        const float qv[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
        for (int e = 0; e < 8; e++) q[g][e] = qv[e] * scale;
    }
    float m[G], l[G], acc[G][8];
#pragma unroll
    for (int g = 0; g < G; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) acc[g][e] = 0.0f;
    }

#if ATTN_STAGED
    // Block-wide iterations of BLOCK_KEYS keys (every thread has the same
    // begin and end, so the loop and its barriers are uniform). Iteration
    // i's rows go to buffer i & 1; row r of an iteration is the key
    // base + r, r = warp * WARP_KEYS + sub_in_warp * KEYS_PER_ITER + u, the
    // same key the unstaged loop gives that lane.
    constexpr int CHUNKS_PER_ROW = HD / 8;  // 16-byte pieces of a key's row
    const int iters = (end - begin + BLOCK_KEYS - 1) / BLOCK_KEYS;
    auto stage = [&](int it) {
        bf16* dst = s_kv + (it & 1) * 2 * STAGE_ELEMS;
        const int base = begin + it * BLOCK_KEYS;
        for (int c = threadIdx.x; c < BLOCK_KEYS * CHUNKS_PER_ROW; c += blockDim.x) {
            const int r = c / CHUNKS_PER_ROW, piece = c % CHUNKS_PER_ROW;
            const int pos = base + r;
            const bool ok = pos < end;
            const int p = ok ? pos : begin;
            const long slot = (long)table[p / block_size] * block_size + (p % block_size);
            const long off = (slot * nkv + kvh) * HD + piece * 8;
            cp_async16(dst + r * HD + piece * 8, k_cache + off, ok);
            cp_async16(dst + STAGE_ELEMS + r * HD + piece * 8, v_cache + off, ok);
        }
        cp_async_commit();
    };
    if (iters > 0) stage(0);
    for (int it = 0; it < iters; it++) {
        if (it + 1 < iters) {
            stage(it + 1);
            cp_async_wait<1>();  // iteration it's group has landed
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const bf16* src = s_kv + (it & 1) * 2 * STAGE_ELEMS;
        const int base = begin + it * BLOCK_KEYS + warp * WARP_KEYS + sub_in_warp * KEYS_PER_ITER;
        uint4 kraw[KEYS_PER_ITER], vraw[KEYS_PER_ITER];
        bool valid[KEYS_PER_ITER];
#pragma unroll
        for (int u = 0; u < KEYS_PER_ITER; u++) {
            valid[u] = base + u < end;
            const int r = warp * WARP_KEYS + sub_in_warp * KEYS_PER_ITER + u;
            const uint4 zero = make_uint4(0, 0, 0, 0);
            kraw[u] = lane_on ? *reinterpret_cast<const uint4*>(src + r * HD + sl * 8) : zero;
            vraw[u] = lane_on ? *reinterpret_cast<const uint4*>(src + STAGE_ELEMS + r * HD + sl * 8) : zero;
        }
        attend_keys<G, LPT>(q, kraw, vraw, valid, m, l, acc);
        // Every lane is done with this buffer before iteration it + 2's
        // copies (issued at the top of iteration it + 1) overwrite it.
        __syncthreads();
    }
#else
    // The loop bound is uniform across the warp (shuffles need every lane).
    for (int wbase = begin + warp * WARP_KEYS; wbase < end; wbase += ATTN_WARPS * WARP_KEYS) {
        const int base = wbase + sub_in_warp * KEYS_PER_ITER;
        uint4 kraw[KEYS_PER_ITER], vraw[KEYS_PER_ITER];
        bool valid[KEYS_PER_ITER];
#pragma unroll
        for (int u = 0; u < KEYS_PER_ITER; u++) {
            const int pos = base + u;
            valid[u] = pos < end;
            const int p = valid[u] ? pos : begin;
            const long slot = (long)table[p / block_size] * block_size + (p % block_size);
            const long off = (slot * nkv + kvh) * HD + sl * 8;
            kraw[u] = lane_on ? *reinterpret_cast<const uint4*>(k_cache + off) : make_uint4(0, 0, 0, 0);
            vraw[u] = lane_on ? *reinterpret_cast<const uint4*>(v_cache + off) : make_uint4(0, 0, 0, 0);
        }
        attend_keys<G, LPT>(q, kraw, vraw, valid, m, l, acc);
    }
#endif

#pragma unroll
    for (int g = 0; g < G; g++) {
        if (sl == 0) {
            s_m[sub][g] = m[g];
            s_l[sub][g] = l[g];
        }
        if (lane_on) {
#pragma unroll
            for (int e = 0; e < 8; e++) s_acc[sub][g][sl * 8 + e] = acc[g][e];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * HD; i += blockDim.x) {
        const int g = i / HD, d = i - g * HD;
        if (g0 + g >= GALL) break;  // the last chunk of an uneven group
        float mm = -INFINITY;
#pragma unroll
        for (int w = 0; w < NSUB; w++) mm = fmaxf(mm, s_m[w][g]);
        float ll = 0.0f, aa = 0.0f;
        if (mm != -INFINITY) {
#pragma unroll
            for (int w = 0; w < NSUB; w++) {
                const float f = __expf(s_m[w][g] - mm);
                ll += s_l[w][g] * f;
                aa += s_acc[w][g][d] * f;
            }
        }
        const int h = kvh * GALL + g0 + g;
        if (nsplit == 1) {
            out[((long)t * nq + h) * HD + d] = __float2bfloat16(aa / ll);
        } else {
            const long p = ((long)t * nq + h) * stride + split;
            part_acc[p * HD + d] = aa;
            if (d == 0) {
                part_ml[2 * p] = mm;
                part_ml[2 * p + 1] = ll;
            }
        }
    }
    if (nsplit == 1) return;

    // Last block of this (token, kv head) merges the splits.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int* counter = split_counters + (long)t * gridDim.y + blockIdx.y;
        const int done = atomicAdd(counter, 1);
        s_last = done == nsplit - 1;
        if (s_last) *counter = 0;  // ready for the next step / graph replay
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    // Every output element merges its splits in split order, whichever
    // block happens to finish last (the result depends on nsplit only): a
    // batch of splits' maxima,
    // sums and partials is loaded at once, then folded in with an online
    // rescale (one round trip per ATTN_MERGE_BATCH splits).
    for (int i = threadIdx.x; i < G * HD; i += blockDim.x) {
        const int g = i / HD, d = i - g * HD;
        if (g0 + g >= GALL) break;
        const int h = kvh * GALL + g0 + g;
        const long base = ((long)t * nq + h) * stride;
        float mm = -INFINITY, ll = 0.0f, aa = 0.0f;
        for (int z0 = 0; z0 < nsplit; z0 += ATTN_MERGE_BATCH) {
            float mz[ATTN_MERGE_BATCH], lz[ATTN_MERGE_BATCH], az[ATTN_MERGE_BATCH];
#pragma unroll
            for (int u = 0; u < ATTN_MERGE_BATCH; u++) {
                const int z = z0 + u;
                const bool ok = z < nsplit;
                mz[u] = ok ? __ldcg(&part_ml[2 * (base + z)]) : -INFINITY;
                lz[u] = ok ? __ldcg(&part_ml[2 * (base + z) + 1]) : 0.0f;
                az[u] = ok ? __ldcg(&part_acc[(base + z) * HD + d]) : 0.0f;
            }
            float cm = mm;
#pragma unroll
            for (int u = 0; u < ATTN_MERGE_BATCH; u++) cm = fmaxf(cm, mz[u]);
            const float rescale = mm == -INFINITY ? 0.0f : __expf(mm - cm);
            ll *= rescale;
            aa *= rescale;
#pragma unroll
            for (int u = 0; u < ATTN_MERGE_BATCH; u++) {
                const float f = mz[u] == -INFINITY ? 0.0f : __expf(mz[u] - cm);
                ll += lz[u] * f;
                aa += az[u] * f;
            }
            mm = cm;
        }
        out[((long)t * nq + h) * HD + d] = __float2bfloat16(aa / ll);
    }
}

// One instantiation per process: the model's head dim, GQA group size and
// the group's chunk count come in as -DDYNO_HEAD_DIM / -DDYNO_GROUP /
// -DDYNO_GROUP_CHUNKS (see nvrtc.rs).
// Blocks per SM the register allocation must allow (-DATTN_MIN_BLOCKS from
// kernels.rs; DYNO_CUDA_ATTN_MIN_BLOCKS there). 1 leaves it to the compiler
// (118 registers for smollm2's shape: 4 blocks per SM).
#ifndef ATTN_MIN_BLOCKS
#define ATTN_MIN_BLOCKS 1
#endif
extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32, ATTN_MIN_BLOCKS)
    attention(const float* qkv, const bf16* k_cache, const bf16* v_cache, const int* positions,
              const int* seq_idx, const int* block_tables, const int* bt_stride, int block_size,
              int nkv, float scale, bf16* out, float* part_acc, float* part_ml, int* counters,
              int split_keys) {
    pdl_wait();
    pdl_launch();
    attention_impl<DYNO_HEAD_DIM, DYNO_GROUP, DYNO_GROUP_CHUNKS>(qkv, k_cache, v_cache, positions, seq_idx,
                                              block_tables, bt_stride, block_size, nkv, scale, out,
                                              part_acc, part_ml, counters, split_keys);
}
