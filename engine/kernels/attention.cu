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
// Where the head dim allows, a warp takes 16 keys at a time on tensor cores
// instead (attention_mma.cu); attention_config.cuh resolves which loop runs
// and whether K/V are staged. Under batch_invariant, contexts are cut into
// units of split_keys keys folded in order (attention_impl below).

// Folds the softmax partial (m, l, a) of the next keys into the running
// one (M, L, A): the same operations, in the same order, wherever partials
// are combined (a block folding its units, the last block folding the
// splits' partials), so that one query gets the same bits whichever of the
// two did it. Explicit roundings keep the compiler from contracting it
// differently in different places. The first partial is taken as it is.
__device__ __forceinline__ void fold_partial(float& M, float& L, float& A, float m, float l,
                                             float a) {
    if (m == -INFINITY) return;  // no keys: nothing to add
    if (M == -INFINITY) {
        M = m;
        L = l;
        A = a;
        return;
    }
    const float mx = fmaxf(M, m);
    const float f_old = __expf(M - mx), f_new = __expf(m - mx);
    L = __fmaf_rn(l, f_new, __fmul_rn(L, f_old));
    A = __fmaf_rn(a, f_new, __fmul_rn(A, f_old));
    M = mx;
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

// Bytes of static shared memory attention_impl declares besides a folding
// block's running partial: the warps' maxima and sums, the tensor-core
// loop's Q fragments past head dim 64, and the staged rows or the warps'
// partials (one region).
template <int HD, int G, int LPT>
__host__ __device__ constexpr int attn_shared_bytes() {
    constexpr int NSUB = ATTN_WARPS * (32 / LPT);
    constexpr int NMERGE = ATTN_USE_MMA ? ATTN_WARPS : NSUB;
    int region = NMERGE * G * HD * 4;
    int q = 0;
#if ATTN_USE_MMA
    q = HD / 16 > 4 ? 32 * (HD / 16) * 16 : 16;
#if ATTN_STAGED
    region = region > ATTN_WARPS * MmaStage<HD>::WARP_ELEMS * 2 ? region
                                                                  : ATTN_WARPS * MmaStage<HD>::WARP_ELEMS * 2;
#endif
#elif ATTN_STAGED
    const int stage = 2 * 2 * (NSUB * KEYS_PER_ITER * HD) * 2;
    region = region > stage ? region : stage;
#endif
    return 2 * NMERGE * G * 4 + q + region + 64;
}

// (bx, by, bz) is the block's place in a (query tokens, head blocks = gy,
// splits = gz) grid: blockIdx and gridDim for a kernel of its own, a
// virtual block of decode_layers' attention phase (persistent.cu).
// Pulls the K and V rows of keys [begin, end) of KV head `kvh` into L2 (a
// block's first iteration of keys, before it waits for the kernel that
// writes q: the rows of earlier steps are already in the cache, and the
// block table is the host's). A row this step writes may be fetched before
// its write; L2 is where writes land, so the loads after the wait still
// see it. A thread per 128-byte line.
template <int HD>
__device__ __forceinline__ void prefetch_rows_l2(const bf16* k_cache, const bf16* v_cache,
                                                 const int* __restrict__ table, int block_size,
                                                 int nkv, int kvh, int begin, int end) {
    constexpr int LINES = (HD * 2 + 127) / 128;  // 128-byte lines per row
    const int n = (end - begin) * LINES * 2;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int rest = i >> 1, key = begin + rest / LINES, line = rest % LINES;
        const long slot = (long)table[key / block_size] * block_size + key % block_size;
        const bf16* row = ((i & 1) ? v_cache : k_cache) + kv_row(slot, kvh, nkv, HD);
        asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<const char*>(row) +
                                                      line * 128));
    }
}

// `wait` (PdlWait, or decode_layers' grid barrier) runs once the block knows
// its keys and has prefetched the first of them, before it reads q.
template <int HD, int GALL, int CHUNKS, bool UNITS, bool JOINED, typename Wait>
__device__ void attention_impl(Wait wait, int bx, int by, int bz, int gx, int gy, int gz,
                               const float* ACT_RESTRICT qkv, const bf16* ACT_RESTRICT k_cache,
                               const bf16* ACT_RESTRICT v_cache,
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
    // Query tokens a block may take at once (JOINED: attention_prefill,
    // attention_units_prefill):
    // the tensor-core loop's product rows (all 16 up to head dim 64; past
    // it, where the value product's accumulators are twice as many, the 8
    // a decode block fills), or the transposed loop's 8 columns, hold
    // JOINT tokens' G heads each, so consecutive query tokens of one
    // sequence (a prefill chunk) share every K/V load instead of each
    // reading its own prefix. One in the sub-warp loop.
    constexpr int MMA_ROWS = HD <= 64 && !ATTN_MMA_T ? 16 : 8;
    constexpr int JOINT = JOINED && ATTN_USE_MMA ? MMA_ROWS / G : 1;
    constexpr int R = JOINT * G;  // partial rows per warp: (token, head) pairs
    constexpr int LPT = attn_lanes_per_key(HD);  // lanes per key
    constexpr int SUBS = 32 / LPT;              // sub-warps per warp
    constexpr int NSUB = ATTN_WARPS * SUBS;     // sub-warps per block
    constexpr int WARP_KEYS = SUBS * KEYS_PER_ITER;
    // Partial softmax states the block merges: one per warp on the
    // tensor-core path, one per sub-warp otherwise.
    constexpr int NMERGE = ATTN_USE_MMA ? ATTN_WARPS : NSUB;
    __shared__ float s_m[NMERGE][R];
    __shared__ float s_l[NMERGE][R];
    __shared__ bool s_last;
    constexpr int THREADS = ATTN_WARPS * 32;
#if ATTN_USE_MMA && ATTN_STAGED
    // Per warp, two buffers of one iteration's K and V rows (a row padded
    // by 16 bytes, so that the fragment reads hit 32 distinct banks); the
    // same bytes hold the warps' partials for the merge after, except in
    // a block folding several units (CHAIN) where they fit apart: it
    // stages the next unit's first rows before it merges the last one's,
    // so that its loads never stop.
    constexpr int MMA_STAGE_BYTES = ATTN_WARPS * MmaStage<HD>::WARP_ELEMS * 2;
    constexpr int MMA_ACC_BYTES = NMERGE * R * HD * 4;
    static_assert(MMA_STAGE_BYTES <= 40 * 1024,
                  "ATTN_STAGED with the tensor-core loop: two iterations of K and V rows per warp "
                  "do not fit in static shared memory at this head dim; add DYNO_CUDA_ATTN_MMA=0");
    constexpr bool CHAIN =
        UNITS && attn_shared_bytes<HD, R, LPT>() + MMA_ACC_BYTES + R * HD * 4 <= 47 * 1024;
    constexpr int RAW_BYTES = CHAIN ? MMA_STAGE_BYTES + MMA_ACC_BYTES
                                    : (MMA_STAGE_BYTES > MMA_ACC_BYTES ? MMA_STAGE_BYTES : MMA_ACC_BYTES);
    __shared__ __align__(16) unsigned char s_raw[RAW_BYTES];
    bf16* s_stage = reinterpret_cast<bf16*>(s_raw);
    float(*s_acc)[R][HD] = reinterpret_cast<float(*)[R][HD]>(s_raw + (CHAIN ? MMA_STAGE_BYTES : 0));
    constexpr int EXTRA_BYTES = CHAIN ? MMA_ACC_BYTES : 0;
#else
    constexpr bool CHAIN = false;
    constexpr int EXTRA_BYTES = 0;
#endif
    // A block folding several units (batch_invariant, large steps): its
    // running partial, the maxima and sums per row by unit parity,
    // and the sums of values in shared memory where they fit next to the
    // rest (static shared memory: 48 KiB), else in registers.
    constexpr bool FOLD_SHARED =
        UNITS && attn_shared_bytes<HD, R, LPT>() + EXTRA_BYTES + R * HD * 4 <= 47 * 1024;
    constexpr int FOLD_REGS = (R * HD + THREADS - 1) / THREADS;
    __shared__ float s_fold_ml[UNITS ? 2 : 1][R][2];
    __shared__ float s_fold_acc[FOLD_SHARED ? R * HD : 1];
    float fold_acc_regs[FOLD_REGS];  // unused where FOLD_SHARED
#if ATTN_USE_MMA && ATTN_STAGED
#elif ATTN_USE_MMA
    __shared__ float s_acc[NMERGE][R][HD];
#elif ATTN_STAGED
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

    const int t = bx, split = bz, stride = gz;
    const int kvh = by / CHUNKS, g0 = (by % CHUNKS) * G;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int sub_in_warp = lane / LPT, sl = lane % LPT;
    const bool lane_on = sl * 8 < HD;  // lanes past the head dim hold zeros
    const int sub = warp * SUBS + sub_in_warp;
    const int nq = nkv * GALL;
    // The block's query tokens t .. t + ntok - 1. Tokens are grouped in
    // aligned windows of JOINT rows of the step; within a window, a run of
    // tokens of one sequence at consecutive positions (a prefill chunk, or
    // a draft being verified) is taken by the block of its first token,
    // and the blocks of the others exit. Only without context splits (one
    // split in the grid: large steps), where each token's keys are cut
    // into the same iterations as when it is alone — also with
    // batch_invariant's units (UNITS), whose bounds are multiples of
    // split_keys for every token: every row's result is then bit-identical
    // to a block of its own (a key past a row's context is masked, an
    // iteration with no key of the row leaves its softmax state exactly as
    // it was, and so does a unit past its context: fold_partial skips a
    // partial without keys).
    int ntok = 1;
    if constexpr (JOINT > 1) {
        if (gz == 1 && (UNITS || split_keys == 0)) {
            auto continues = [&](int u) {
                return seq_idx[u] == seq_idx[u - 1] && positions[u] == positions[u - 1] + 1;
            };
            const int lead = t - t % JOINT;
            if (t > lead && continues(t)) return;  // an earlier block takes this token
            const int window_end = min(lead + JOINT, gx);
            while (t + ntok < window_end && continues(t + ntok)) ntok++;
        }
    }
    const int ctx_first = positions[t] + 1;  // the block's first token's context
    const int ctx = ctx_first + ntok - 1;   // its last token's (positions consecutive)
    constexpr int BLOCK_KEYS = ATTN_MMA_T    ? ATTN_WARPS * MmaTStage<HD>::KEYS
                               : ATTN_USE_MMA ? ATTN_WARPS * 8 * attn_mma_key_tiles(HD)
                                              : ATTN_WARPS * WARP_KEYS;
    // split_keys > 0 (batch_invariant): the context is cut into units of
    // split_keys keys, and a query's result is defined as its units'
    // partials (each merged over the block's warps) folded in order with
    // fold_partial, which depends on its context length only, not on the
    // grid. The `attention_units` kernel (UNITS, runner.rs launches it for
    // large steps, with one split) has each block fold its query's units
    // one after another; `attention` has one unit per split (runner.rs
    // makes the grid's z at least the unit count) and the last block folds
    // their partials. split_keys 0: as many splits as the grid has, each at
    // least one block iteration of keys, one unit each.
    int nsplit, begin, end;
    if constexpr (UNITS) {
        nsplit = 1;
        begin = 0;
        end = ctx;
    } else {
        const int wanted = split_keys > 0 ? (ctx + split_keys - 1) / split_keys
                                          : max(1, (ctx + BLOCK_KEYS - 1) / BLOCK_KEYS);
        nsplit = min(stride, wanted);
        if (split >= nsplit) return;
        const int chunk =
            split_keys > 0 && nsplit == wanted ? split_keys : (ctx + nsplit - 1) / nsplit;
        begin = split * chunk;
        end = min(ctx, begin + chunk);
    }
    const int* table = block_tables + (long)seq_idx[t] * (*bt_stride_ptr);
    const int row_len = (nq + 2 * nkv) * HD;
    prefetch_rows_l2<HD>(k_cache, v_cache, table, block_size, nkv, kvh, begin,
                         min(end, begin + BLOCK_KEYS));
    wait();

    int mma_buffer = 0;  // the tensor-core loop's staging buffer (CHAIN: across units)
    // Attends to keys [ub, ue), leaving each warp's (or sub-warp's) softmax
    // state in s_m, s_l and s_acc for the merge.
    auto attend_unit = [&](int ub, int ue) {
#if ATTN_MMA_T
        static_assert(MmaTStage<HD>::BLOCK_BYTES == ATTN_MMA_T_SHARED,
                      "kernels.rs gives the attention kernels another dynamic shared memory size");
        // A block folding units chains its copies across them (its staging
        // buffers are apart from the merge's).
        attend_split_mma_t<HD, G, GALL, R>(qkv, k_cache, v_cache, table, block_size, nkv, kvh, g0,
                                           t, ntok, ctx_first, row_len, scale, ub, ue,
                                           UNITS ? end : ue, UNITS && ub > begin, mma_buffer,
                                           s_m[warp], s_l[warp], &s_acc[warp][0][0]);
#elif ATTN_USE_MMA
#if ATTN_STAGED
        bf16* stage_rows_of_block = s_stage;
#else
        bf16* stage_rows_of_block = nullptr;
#endif
        attend_split_mma<HD, G, GALL, R>(qkv, k_cache, v_cache, table, block_size, nkv, kvh, g0, t,
                                      ntok, ctx_first, row_len, scale, ub, ue, CHAIN ? end : ue,
                                      CHAIN && ub > begin, mma_buffer, stage_rows_of_block,
                                      s_m[warp], s_l[warp], &s_acc[warp][0][0]);
#else
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
        // Block-wide iterations of BLOCK_KEYS keys (every thread has the
        // same ub and ue, so the loop and its barriers are uniform).
        // Iteration i's rows go to buffer i & 1; row r of an iteration is
        // the key base + r, r = warp * WARP_KEYS + sub_in_warp *
        // KEYS_PER_ITER + v, the same key the unstaged loop gives that lane.
        constexpr int CHUNKS_PER_ROW = HD / 8;  // 16-byte pieces of a key's row
        const int iters = (ue - ub + BLOCK_KEYS - 1) / BLOCK_KEYS;
        auto stage = [&](int it) {
            bf16* dst = s_kv + (it & 1) * 2 * STAGE_ELEMS;
            const int base = ub + it * BLOCK_KEYS;
            for (int c = threadIdx.x; c < BLOCK_KEYS * CHUNKS_PER_ROW; c += blockDim.x) {
                const int r = c / CHUNKS_PER_ROW, piece = c % CHUNKS_PER_ROW;
                const int pos = base + r;
                const bool ok = pos < ue;
                const int p = ok ? pos : ub;
                const long slot = (long)table[p / block_size] * block_size + (p % block_size);
                const long off = kv_row(slot, kvh, nkv, HD) + piece * 8;
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
            const int base = ub + it * BLOCK_KEYS + warp * WARP_KEYS + sub_in_warp * KEYS_PER_ITER;
            uint4 kraw[KEYS_PER_ITER], vraw[KEYS_PER_ITER];
            bool valid[KEYS_PER_ITER];
#pragma unroll
            for (int v = 0; v < KEYS_PER_ITER; v++) {
                valid[v] = base + v < ue;
                const int r = warp * WARP_KEYS + sub_in_warp * KEYS_PER_ITER + v;
                const uint4 zero = make_uint4(0, 0, 0, 0);
                kraw[v] = lane_on ? *reinterpret_cast<const uint4*>(src + r * HD + sl * 8) : zero;
                vraw[v] = lane_on ? *reinterpret_cast<const uint4*>(src + STAGE_ELEMS + r * HD + sl * 8)
                                  : zero;
            }
            attend_keys<G, LPT>(q, kraw, vraw, valid, m, l, acc);
            // Every lane is done with this buffer before iteration it + 2's
            // copies (issued at the top of iteration it + 1) overwrite it.
            __syncthreads();
        }
#else
        // This lane's K and V rows of the iteration at warp base `wbase`.
        auto load_keys = [&](int wbase, uint4 (&kraw)[KEYS_PER_ITER], uint4 (&vraw)[KEYS_PER_ITER],
                             bool (&valid)[KEYS_PER_ITER]) {
            const int base = wbase + sub_in_warp * KEYS_PER_ITER;
#pragma unroll
            for (int v = 0; v < KEYS_PER_ITER; v++) {
                const int pos = base + v;
                valid[v] = pos < ue;
                const int p = valid[v] ? pos : ub;
                const long slot = (long)table[p / block_size] * block_size + (p % block_size);
                const long off = kv_row(slot, kvh, nkv, HD) + sl * 8;
                kraw[v] = lane_on ? *reinterpret_cast<const uint4*>(k_cache + off) : make_uint4(0, 0, 0, 0);
                vraw[v] = lane_on ? *reinterpret_cast<const uint4*>(v_cache + off) : make_uint4(0, 0, 0, 0);
            }
        };
        // This lane's K and V pieces of keys base .. base + KEYS_PER_ITER - 1
        // (those below `limit`) into L2.
        auto prefetch_keys_l2 = [&](int base, int limit) {
#pragma unroll
            for (int v = 0; v < KEYS_PER_ITER; v++) {
                const int pos = base + v;
                if (pos < limit) {
                    const long slot = (long)table[pos / block_size] * block_size + (pos % block_size);
                    const long off = kv_row(slot, kvh, nkv, HD) + sl * 8;
                    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(k_cache + off));
                    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(v_cache + off));
                }
            }
        };
        constexpr int WARP_STRIDE = ATTN_WARPS * WARP_KEYS;
        // The loop bound is uniform across the warp (shuffles need every lane).
#if ATTN_PIPELINE
        // The next iteration's rows are loaded before this one's keys are
        // folded in, so a warp's loads stay in flight while it computes
        // (twice the K/V registers). The same keys in the same order.
        uint4 kraw[KEYS_PER_ITER], vraw[KEYS_PER_ITER];
        bool valid[KEYS_PER_ITER];
        int wbase = ub + warp * WARP_KEYS;
        if (wbase < ue) load_keys(wbase, kraw, vraw, valid);
        for (; wbase < ue; wbase += WARP_STRIDE) {
            uint4 knext[KEYS_PER_ITER], vnext[KEYS_PER_ITER];
            bool valid_next[KEYS_PER_ITER];
            if (wbase + WARP_STRIDE < ue) load_keys(wbase + WARP_STRIDE, knext, vnext, valid_next);
            attend_keys<G, LPT>(q, kraw, vraw, valid, m, l, acc);
#pragma unroll
            for (int v = 0; v < KEYS_PER_ITER; v++) {
                kraw[v] = knext[v];
                vraw[v] = vnext[v];
                valid[v] = valid_next[v];
            }
        }
#else
        for (int wbase = ub + warp * WARP_KEYS; wbase < ue; wbase += WARP_STRIDE) {
            uint4 kraw[KEYS_PER_ITER], vraw[KEYS_PER_ITER];
            bool valid[KEYS_PER_ITER];
            load_keys(wbase, kraw, vraw, valid);
            attend_keys<G, LPT>(q, kraw, vraw, valid, m, l, acc);
        }
#endif
        if constexpr (UNITS) {
            // The rows this lane loads first in the next unit, on their way
            // to L2 while the block merges this one.
            if (lane_on) prefetch_keys_l2(ue + warp * WARP_KEYS + sub_in_warp * KEYS_PER_ITER, end);
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
#endif  // ATTN_USE_MMA
    };
    // Merges unit u of `units` (after a barrier).
    auto merge_unit = [&](int u, int units) {
        // This unit's partial: the block's warps (or sub-warps) merged. A
        // block of one unit writes it out (the output, or its split's
        // partial); a block of several folds it into its running partial,
        // kept in shared memory (the maxima and sums per query head in two
        // buffers by unit parity, read from one while written to the other),
        // and writes the output after the last.
        // Element i = threadIdx.x + k * THREADS of the block's R x HD
        // outputs (R = its tokens x G heads) is this thread's k-th.
#pragma unroll
        for (int k = 0; k < (R * HD + THREADS - 1) / THREADS; k++) {
            const int i = threadIdx.x + k * THREADS;
            if (i >= R * HD) break;
            const int g = i / HD, d = i - g * HD;  // partial row g: token t + g / G, head g % G
            const int tq = g / G, hg = g - tq * G;
            if (tq >= ntok) break;
            if (g0 + hg >= GALL) continue;  // the last chunk of an uneven group
            float mm = -INFINITY;
#pragma unroll
            for (int w = 0; w < NMERGE; w++) mm = fmaxf(mm, s_m[w][g]);
            float ll = 0.0f, aa = 0.0f;
            if (mm != -INFINITY) {
#pragma unroll
                for (int w = 0; w < NMERGE; w++) {
                    const float f = __expf(s_m[w][g] - mm);
                    ll = __fmaf_rn(s_l[w][g], f, ll);
                    aa = __fmaf_rn(s_acc[w][g][d], f, aa);
                }
            }
            if (UNITS && units > 1) {
                float fm = -INFINITY, fl = 0.0f, fa = 0.0f;
                if (u > 0) {
                    fm = s_fold_ml[(u + 1) & 1][g][0];
                    fl = s_fold_ml[(u + 1) & 1][g][1];
                    fa = FOLD_SHARED ? s_fold_acc[i] : fold_acc_regs[k];
                }
                fold_partial(fm, fl, fa, mm, ll, aa);
                if constexpr (FOLD_SHARED) {
                    s_fold_acc[i] = fa;
                } else {
                    fold_acc_regs[k] = fa;
                }
                if (d == 0) {
                    s_fold_ml[u & 1][g][0] = fm;
                    s_fold_ml[u & 1][g][1] = fl;
                }
                mm = fm;
                ll = fl;
                aa = fa;
                if (u + 1 < units) continue;
            }
            const int h = kvh * GALL + g0 + hg;
            if (nsplit == 1) {
                out[((long)(t + tq) * nq + h) * HD + d] = __float2bfloat16(aa / ll);
            } else {
                const long p = ((long)t * nq + h) * stride + split;
                part_acc[p * HD + d] = aa;
                if (d == 0) {
                    part_ml[2 * p] = mm;
                    part_ml[2 * p + 1] = ll;
                }
            }
        }
    };
    if constexpr (UNITS) {
        const int units = (ctx + split_keys - 1) / split_keys;
#pragma unroll 1
        for (int u = 0; u < units; u++) {
            attend_unit(u * split_keys, min(ctx, (u + 1) * split_keys));
            __syncthreads();
            merge_unit(u, units);
            // The next unit's loop overwrites the merge's inputs.
            if (u + 1 < units) __syncthreads();
        }
    } else {
        attend_unit(begin, end);
        __syncthreads();
        merge_unit(0, 1);
    }
    if (nsplit == 1) return;

    // Last block of this (token, kv head) merges the splits.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int* counter = split_counters + (long)t * gy + by;
        const int done = atomicAdd(counter, 1);
        s_last = done == nsplit - 1;
        if (s_last) *counter = 0;  // ready for the next step / graph replay
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    // Every output element folds its splits' partials in split order with
    // fold_partial, whichever block happens to finish last (the result
    // depends on nsplit only, and under batch_invariant equals the fold a
    // single block makes of the same units): a batch of splits' maxima,
    // sums and partials is loaded at once (one round trip per
    // ATTN_MERGE_BATCH splits), then folded in one by one.
    for (int i = threadIdx.x; i < G * HD; i += blockDim.x) {
        const int g = i / HD, d = i - g * HD;
        if (g0 + g >= GALL) break;
        const int h = kvh * GALL + g0 + g;
        const long base = ((long)t * nq + h) * stride;
        float mm = -INFINITY, ll = 0.0f, aa = 0.0f;
        for (int z0 = 0; z0 < nsplit; z0 += ATTN_MERGE_BATCH) {
            float mz[ATTN_MERGE_BATCH], lz[ATTN_MERGE_BATCH], az[ATTN_MERGE_BATCH];
#pragma unroll
            for (int v = 0; v < ATTN_MERGE_BATCH; v++) {
                const int z = z0 + v;
                const bool ok = z < nsplit;
                mz[v] = ok ? __ldcg(&part_ml[2 * (base + z)]) : -INFINITY;
                lz[v] = ok ? __ldcg(&part_ml[2 * (base + z) + 1]) : 0.0f;
                az[v] = ok ? __ldcg(&part_acc[(base + z) * HD + d]) : 0.0f;
            }
#pragma unroll
            for (int v = 0; v < ATTN_MERGE_BATCH; v++) fold_partial(mm, ll, aa, mz[v], lz[v], az[v]);
        }
        out[((long)t * nq + h) * HD + d] = __float2bfloat16(aa / ll);
    }
}

// One instantiation per process: the model's head dim, GQA group size and
// the group's chunk count come in as -DDYNO_HEAD_DIM / -DDYNO_GROUP /
// -DDYNO_GROUP_CHUNKS (see nvrtc.rs).
// Blocks per SM the register allocation must allow (-DATTN_MIN_BLOCKS from
// kernels.rs; DYNO_CUDA_ATTN_MIN_BLOCKS there). 1 leaves it to the
// compiler. 0 (the default): 4 for the staged tensor-core loop (128
// registers at smollm2-135m's shape instead of 151, i.e. 4 blocks per SM
// instead of 3: the configuration the H200 measured), 1 otherwise.
#ifndef ATTN_MIN_BLOCKS
#define ATTN_MIN_BLOCKS 0
#endif
#if ATTN_MIN_BLOCKS == 0
#undef ATTN_MIN_BLOCKS
#if ATTN_USE_MMA && ATTN_STAGED
#define ATTN_MIN_BLOCKS 4
#else
#define ATTN_MIN_BLOCKS 1
#endif
#endif
extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32, ATTN_MIN_BLOCKS)
    attention(const float* qkv, const bf16* k_cache, const bf16* v_cache, const int* positions,
              const int* seq_idx, const int* block_tables, const int* bt_stride, int block_size,
              int nkv, float scale, bf16* out, float* part_acc, float* part_ml, int* counters,
              int split_keys) {
    attention_impl<DYNO_HEAD_DIM, DYNO_GROUP, DYNO_GROUP_CHUNKS, false, false>(
        PdlWait{}, blockIdx.x, blockIdx.y, blockIdx.z, gridDim.x, gridDim.y, gridDim.z, qkv, k_cache, v_cache, positions, seq_idx, block_tables, bt_stride, block_size, nkv, scale,
        out, part_acc, part_ml, counters, split_keys);
}

// Steps with prefill chunks (or drafts to verify) and one split, without
// batch_invariant: `attention` whose blocks may take several consecutive
// query tokens of one sequence at once (JOINED; see attention_impl), each
// token with the bits a block of its own gives it. A kernel of its own so
// that decode steps, which have one token per sequence, keep `attention`'s
// code and registers. Grid (query tokens, kv heads x group chunks, 1).
extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32, ATTN_MIN_BLOCKS)
    attention_prefill(const float* qkv, const bf16* k_cache, const bf16* v_cache,
                      const int* positions, const int* seq_idx, const int* block_tables,
                      const int* bt_stride, int block_size, int nkv, float scale, bf16* out) {
    attention_impl<DYNO_HEAD_DIM, DYNO_GROUP, DYNO_GROUP_CHUNKS, false, true>(
        PdlWait{}, blockIdx.x, blockIdx.y, blockIdx.z, gridDim.x, gridDim.y, gridDim.z, qkv, k_cache, v_cache, positions, seq_idx, block_tables, bt_stride, block_size, nkv, scale,
        out, nullptr, nullptr, nullptr, 0);
}

// Blocks per SM the units kernels' registers must allow
// (-DATTN_UNITS_MIN_BLOCKS from kernels.rs): 0, the default, takes
// attention's bound; the backend asks for attention's occupancy where the
// loop over units would cost a block per SM (qwen3-0.6b: 103 registers
// against 95, 4 blocks against 5).
#if !defined(ATTN_UNITS_MIN_BLOCKS) || ATTN_UNITS_MIN_BLOCKS == 0
#undef ATTN_UNITS_MIN_BLOCKS
#define ATTN_UNITS_MIN_BLOCKS ATTN_MIN_BLOCKS
#endif
// batch_invariant, steps large enough to fill the GPU without splits: one
// block per (query token, kv head, group chunk) folds the context's units
// of split_keys keys in order, giving the bits `attention` gives the same
// query with one split per unit. A kernel of its own so that the loop over
// units costs `attention` no registers. Grid (query tokens, kv heads x
// group chunks, 1).
extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32, ATTN_UNITS_MIN_BLOCKS)
    attention_units(const float* qkv, const bf16* k_cache, const bf16* v_cache,
                    const int* positions, const int* seq_idx, const int* block_tables,
                    const int* bt_stride, int block_size, int nkv, float scale, bf16* out,
                    int split_keys) {
    attention_impl<DYNO_HEAD_DIM, DYNO_GROUP, DYNO_GROUP_CHUNKS, true, false>(
        PdlWait{}, blockIdx.x, blockIdx.y, blockIdx.z, gridDim.x, gridDim.y, gridDim.z, qkv, k_cache, v_cache, positions, seq_idx, block_tables, bt_stride, block_size, nkv, scale,
        out, nullptr, nullptr, nullptr, split_keys);
}

// attention_units for steps with prefill chunks (or drafts to verify): a
// block may take several consecutive query tokens of one sequence at once
// (JOINED; see attention_impl), each token with the bits a block of its
// own gives it, so the knob's prefill steps share K/V loads as
// attention_prefill's do. Grid (query tokens, kv heads x group chunks, 1).
extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32, ATTN_UNITS_MIN_BLOCKS)
    attention_units_prefill(const float* qkv, const bf16* k_cache, const bf16* v_cache,
                            const int* positions, const int* seq_idx, const int* block_tables,
                            const int* bt_stride, int block_size, int nkv, float scale,
                            bf16* out, int split_keys) {
    attention_impl<DYNO_HEAD_DIM, DYNO_GROUP, DYNO_GROUP_CHUNKS, true, true>(
        PdlWait{}, blockIdx.x, blockIdx.y, blockIdx.z, gridDim.x, gridDim.y, gridDim.z, qkv, k_cache, v_cache, positions, seq_idx, block_tables, bt_stride, block_size, nkv, scale,
        out, nullptr, nullptr, nullptr, split_keys);
}
