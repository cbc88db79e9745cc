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
// that is a multiple of 16; otherwise the sub-warp loop below runs.
// ATTN_MMA 2 (the default) takes it for head dims up to 64, where the H200
// measured it faster (smollm2-135m offline +16 %); at 128 (qwen3-0.6b) the
// fragments cost so many registers that it was slower (docs/CUDA.md).
// 1 forces it wherever it can run, 0 never.
#ifndef ATTN_MMA
#define ATTN_MMA 2
#endif
#if (ATTN_MMA == 1 || (ATTN_MMA == 2 && DYNO_HEAD_DIM <= 64)) && (DYNO_HEAD_DIM % 16 == 0) && \
    (!defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800)
#define ATTN_USE_MMA 1
#else
#define ATTN_USE_MMA 0
#endif
// The default staging: the tensor-core loop's (each warp its own rows, no
// block barrier in the loop: smollm2-135m offline +7.6 % on the H200) where
// its two buffers fit (head dims up to 128), never the sub-warp loop's
// (qwen3-0.6b offline -7.5 %: the block barrier per iteration costs more
// than the registers it frees).
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
// Score tiles of 8 keys a warp takes per iteration on the tensor-core path:
// two up to head dim 64; one above, where a lane's K and V words of 16 keys
// (64 of them at head dim 128, with 32 accumulators) cost more registers
// than the loads in flight are worth (the value product then runs with its
// keys 8..15 zero).
__host__ __device__ constexpr int attn_mma_key_tiles(int hd) { return hd <= 64 ? 2 : 1; }

// d[0..1] += A·B for rows 0..7 of an m16n8k16 product whose rows 8..15 are
// zero: a0 holds (row lane/4, k 2c, 2c+1), a2 (row lane/4, k 2c+8, 2c+9),
// b0 (k 2c, 2c+1; n lane/4), b1 (k 2c+8, 2c+9), c = lane % 4; d0, d1 are
// (row lane/4, n 2c, 2c+1). Lower element in the lower 16 bits.
__device__ __forceinline__ void mma_rows8(float& d0, float& d1, unsigned a0, unsigned a2,
                                          unsigned b0, unsigned b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    float unused2, unused3;
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%10,%10};\n"
        : "+f"(d0), "+f"(d1), "=f"(unused2), "=f"(unused3)
        : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1), "f"(0.0f));
#endif
}

__device__ __forceinline__ unsigned pack_bf16x2(bf16 lo, bf16 hi) {
    return static_cast<unsigned>(__bfloat16_as_ushort(lo)) |
           (static_cast<unsigned>(__bfloat16_as_ushort(hi)) << 16);
}

// x and y as bf16 pairs hi + lo: *hi = (bf16(x), bf16(y)), *lo = the rest.
__device__ __forceinline__ void split_bf16x2(float x, float y, unsigned* hi, unsigned* lo) {
    const bf16 hx = __float2bfloat16_rn(x), hy = __float2bfloat16_rn(y);
    *hi = pack_bf16x2(hx, hy);
    *lo = pack_bf16x2(__float2bfloat16_rn(x - __bfloat162float(hx)),
                      __float2bfloat16_rn(y - __bfloat162float(hy)));
}

// N 32-bit words from `src` (bf16 pairs), with the widest loads BYTES_ALIGN
// (the byte alignment of src) allows.
template <int N, int BYTES_ALIGN>
__device__ __forceinline__ void load_words(const bf16* src, unsigned (&w)[N]) {
    if constexpr (BYTES_ALIGN % 16 == 0 && N % 4 == 0) {
#pragma unroll
        for (int i = 0; i < N / 4; i++) {
            const uint4 v = reinterpret_cast<const uint4*>(src)[i];
            w[4 * i] = v.x;
            w[4 * i + 1] = v.y;
            w[4 * i + 2] = v.z;
            w[4 * i + 3] = v.w;
        }
    } else if constexpr (BYTES_ALIGN % 8 == 0 && N % 2 == 0) {
#pragma unroll
        for (int i = 0; i < N / 2; i++) {
            const uint2 v = reinterpret_cast<const uint2*>(src)[i];
            w[2 * i] = v.x;
            w[2 * i + 1] = v.y;
        }
    } else {
#pragma unroll
        for (int i = 0; i < N; i++) w[i] = reinterpret_cast<const unsigned*>(src)[i];
    }
}

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

// Staged rows of the tensor-core loop (ATTN_STAGED): per warp, two buffers
// of K and V rows for one iteration's keys, each row padded by 16 bytes so
// that the fragment reads hit distinct banks.
template <int HD>
struct MmaStage {
    static constexpr int ROWS = 8 * attn_mma_key_tiles(HD);  // keys per warp iteration
    static constexpr int ROW = HD + 8;                        // bf16 per staged row
    static constexpr int WARP_ELEMS = 2 * 2 * ROWS * ROW;     // 2 buffers of K and V
};

// The tensor-core loop over keys [begin, end) of one split (ATTN_MMA): each
// warp folds its iterations of keys into an online softmax for the block's
// G query heads (g0 .. g0 + G - 1 of kv head kvh's group of GALL) and leaves
// its state in s_m_warp[G], s_l_warp[G] and s_acc_warp[G][HD] for the
// block's merge. Every thread of the block calls it (it may hold
// __syncthreads). s_stage: the block's staged rows (ATTN_STAGED), else unused.
// Keys below stage_end (end, or the context's end for a block folding units)
// may be staged: a warp's last iteration stages its first rows of the next
// unit, and the next call, `prestaged`, starts from them. `buffer`: the
// staging buffer of the warp's next rows, kept across calls.
template <int HD, int G, int GALL>
__device__ __forceinline__ void attend_split_mma(
    const float* __restrict__ qkv, const bf16* __restrict__ k_cache,
    const bf16* __restrict__ v_cache, const int* __restrict__ table, int block_size, int nkv,
    int kvh, int g0, int t, int row_len, float scale, int begin, int end, int stage_end,
    bool prestaged, int& buffer, bf16* s_stage, float* s_m_warp, float* s_l_warp,
    float* s_acc_warp) {
    using Stage = MmaStage<HD>;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    constexpr int KS = HD / 16;  // k-steps of the score product
    constexpr int NT = HD / 8;   // n-tiles of the value product
    constexpr int KW = HD / 8;   // words of a lane's K slice of a key (HD/4 dims)
    constexpr int VW = HD / 16;  // words of a lane's V slice of a key (HD/8 dims)
    const int g = lane >> 2, c = lane & 3;
    const bool row_on = g < G && g0 + g < GALL;
    // The products sum over the head dim in any order the operands
    // agree on, so lane (g, c) gives k-step ks the dims c*HD/4 + 4ks ..
    // + 3 of Q and K: a lane's K slice of a key is then contiguous
    // (HD/4 dims, one or two 16-byte loads). Q: A operand, row g.
    // Past a head dim of 64 the fragments (4 words per k-step) would
    // cost more registers than the K/V loads in flight can spare (198
    // per thread at 128: two blocks per SM), so they wait in shared
    // memory, written once by warp 0 in the layout every warp reads
    // (lane (g, c), k-step ks: hi0 hi1 lo0 lo1).
    constexpr bool Q_SHARED = KS > 4;
    __shared__ __align__(16) uint4 s_q[Q_SHARED ? 32 * KS : 1];
    unsigned qhi[Q_SHARED ? 1 : KS][2], qlo[Q_SHARED ? 1 : KS][2];
    if (!Q_SHARED || warp == 0) {
        const float* qrow = qkv + (long)t * row_len + (kvh * GALL + g0 + g) * HD + c * (HD / 4);
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            const float4 v = row_on ? reinterpret_cast<const float4*>(qrow)[ks]
                                    : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            unsigned h0, h1, l0, l1;
            split_bf16x2(v.x * scale, v.y * scale, &h0, &l0);
            split_bf16x2(v.z * scale, v.w * scale, &h1, &l1);
            if constexpr (Q_SHARED) {
                s_q[lane * KS + ks] = make_uint4(h0, h1, l0, l1);
            } else {
                qhi[Q_SHARED ? 0 : ks][0] = h0;
                qhi[Q_SHARED ? 0 : ks][1] = h1;
                qlo[Q_SHARED ? 0 : ks][0] = l0;
                qlo[Q_SHARED ? 0 : ks][1] = l1;
            }
        }
    }
    if constexpr (Q_SHARED) __syncthreads();
    // This lane's Q words of k-step ks (from shared memory with a
    // volatile load, so that the compiler does not hoist all of them
    // into registers out of the key loop).
    auto q_words = [&](int ks) {
        if constexpr (Q_SHARED) {
            uint4 v;
            const unsigned addr =
                static_cast<unsigned>(__cvta_generic_to_shared(&s_q[lane * KS + ks]));
            asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                         : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                         : "r"(addr));
            return v;
        } else {
            return make_uint4(qhi[ks][0], qhi[ks][1], qlo[ks][0], qlo[ks][1]);
        }
    };
    // O: C fragments of the value product, rows 0..7 (n-slot n of
    // n-tile j is dim n * NT + j, see the V loads).
    float o[NT][2];
#pragma unroll
    for (int j = 0; j < NT; j++) o[j][0] = o[j][1] = 0.0f;
    float m = -INFINITY, l = 0.0f;  // row g's running max, this lane's share of the sum
    const int shift = __ffs(block_size) - 1;  // block_size: a power of two
    auto slot_of = [&](int pos) {
        const int p = pos < stage_end ? pos : begin;
        return (long)table[p >> shift] * block_size + (p & (block_size - 1));
    };
    constexpr int KT = attn_mma_key_tiles(HD);  // score tiles of 8 keys per iteration
    constexpr int WARP_STRIDE = ATTN_WARPS * 8 * KT;  // keys between a warp's iterations
#if ATTN_STAGED
    // This warp's K and V rows go to shared memory with cp.async one
    // iteration ahead (its own buffers: no block-wide barrier); the
    // fragments below are then read from there.
    bf16* my_stage = s_stage + warp * Stage::WARP_ELEMS;
    auto stage_rows = [&](int tile_base, int buffer) {
        bf16* dst = my_stage + buffer * (2 * Stage::ROWS * Stage::ROW);
        constexpr int PIECES = HD / 8;  // 16-byte pieces of a row
        for (int q = lane; q < Stage::ROWS * PIECES; q += 32) {
            const int r = q / PIECES, piece = q % PIECES;
            const int pos = tile_base + r;
            const long off = (slot_of(pos) * nkv + kvh) * HD + piece * 8;
            cp_async16(dst + r * Stage::ROW + piece * 8, k_cache + off, pos < stage_end);
            cp_async16(dst + (Stage::ROWS + r) * Stage::ROW + piece * 8, v_cache + off,
                       pos < stage_end);
        }
        cp_async_commit();
    };
    if (!prestaged && begin + warp * 8 * KT < end) stage_rows(begin + warp * 8 * KT, buffer);
#endif
#pragma unroll 1
    for (int base = begin + warp * 8 * KT; base < end; base += WARP_STRIDE) {
        // Where key `key` of this iteration (row `row` of its tile) is
        // read from: the cache, or this warp's staged rows.
#if ATTN_STAGED
        if (base + WARP_STRIDE < stage_end) {
            stage_rows(base + WARP_STRIDE, buffer ^ 1);
            cp_async_wait<1>();  // this iteration's rows have landed
        } else {
            cp_async_wait<0>();
        }
        __syncwarp();
        const bf16* tile = my_stage + buffer * (2 * Stage::ROWS * Stage::ROW);
        auto k_row = [&](int key) { return tile + (key - base) * Stage::ROW; };
        auto v_row = [&](int key) { return tile + (Stage::ROWS + key - base) * Stage::ROW; };
#define ATTN_K_ROW(key) k_row(key)
#define ATTN_V_ROW(key) v_row(key)
#else
        // Spelled out rather than through a lambda, so that the loads
        // keep the read-only path (ld.global.nc) that the restrict
        // pointers give.
#define ATTN_K_ROW(key) (k_cache + (slot_of(key) * nkv + kvh) * HD)
#define ATTN_V_ROW(key) (v_cache + (slot_of(key) * nkv + kvh) * HD)
#endif
        // K: B operand of n-tile j, key base + 8j + g (n-slot g).
        unsigned kw[KT][KW];
#pragma unroll
        for (int j = 0; j < KT; j++)
            load_words<KW, (HD / 2) % 16 == 0 ? 16 : 8>(ATTN_K_ROW(base + 8 * j + g) + c * (HD / 4), kw[j]);
        // V: B operand of the value product, whose k-slots are the
        // keys in the score tiles' column order (k 2c, 2c+1 = keys
        // base + 2c, + 1; k 2c+8, 2c+9 = keys base + 8 + 2c, + 1) and
        // whose n-slot g is dims g * NT .. + NT - 1, one per n-tile.
        unsigned vw[2 * KT][VW];
#pragma unroll
        for (int r = 0; r < 2 * KT; r++)
            load_words<VW, (HD / 4) % 16 == 0 ? 16 : ((HD / 4) % 8 == 0 ? 8 : 4)>(
                ATTN_V_ROW(base + (r >> 1) * 8 + 2 * c + (r & 1)) + g * NT, vw[r]);
#undef ATTN_K_ROW
#undef ATTN_V_ROW
        // Scores of row g, keys base + 8j + 2c + e.
        float s[KT][2];
#pragma unroll
        for (int j = 0; j < KT; j++) s[j][0] = s[j][1] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            const uint4 qw = q_words(ks);  // hi0 hi1 lo0 lo1
#pragma unroll
            for (int j = 0; j < KT; j++) {
                mma_rows8(s[j][0], s[j][1], qw.x, qw.y, kw[j][2 * ks], kw[j][2 * ks + 1]);
                mma_rows8(s[j][0], s[j][1], qw.z, qw.w, kw[j][2 * ks], kw[j][2 * ks + 1]);
            }
        }
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < KT; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                if (base + 8 * j + 2 * c + e >= end) s[j][e] = -INFINITY;
                mx = fmaxf(mx, s[j][e]);
            }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // Key `base` is valid, so m_new is finite.
        const float m_new = fmaxf(m, mx);
        const float corr = __expf(m - m_new);
        m = m_new;
        float p[KT][2];
#pragma unroll
        for (int j = 0; j < KT; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) p[j][e] = __expf(s[j][e] - m_new);
        if constexpr (KT == 2) {
            l = l * corr + (p[0][0] + p[0][1]) + (p[1][0] + p[1][1]);
        } else {
            l = l * corr + (p[0][0] + p[0][1]);
        }
        // P: A operand, k 2c, 2c+1 from n-tile 0, k 2c+8, 2c+9 from 1
        // (zero with one tile).
        unsigned phi0, plo0, phi1 = 0u, plo1 = 0u;
        split_bf16x2(p[0][0], p[0][1], &phi0, &plo0);
        if constexpr (KT == 2) split_bf16x2(p[1][0], p[1][1], &phi1, &plo1);
#pragma unroll
        for (int j = 0; j < NT; j++) {
            // Dim g * NT + j of the four keys: half j & 1 of word j / 2.
            const unsigned sel = (j & 1) ? 0x7632u : 0x5410u;
            const unsigned b0 = __byte_perm(vw[0][j / 2], vw[1][j / 2], sel);
            const unsigned b1 = KT == 2 ? __byte_perm(vw[KT == 2 ? 2 : 0][j / 2], vw[KT == 2 ? 3 : 1][j / 2], sel) : 0u;
            o[j][0] *= corr;
            o[j][1] *= corr;
            mma_rows8(o[j][0], o[j][1], phi0, phi1, b0, b1);
            mma_rows8(o[j][0], o[j][1], plo0, plo1, b0, b1);
        }
#if ATTN_STAGED
        // Every lane has read this buffer before the next iteration's
        // copies (into the other one) and the one after (into this).
        __syncwarp();
        buffer ^= 1;
#endif
    }
#if ATTN_STAGED
    __syncthreads();  // the partials below overwrite other warps' staged rows
#endif
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (g < G) {
        if (c == 0) {
            s_m_warp[g] = m;
            s_l_warp[g] = l;
        }
#pragma unroll
        for (int j = 0; j < NT; j++) {
            s_acc_warp[g * HD + (2 * c) * NT + j] = o[j][0];
            s_acc_warp[g * HD + (2 * c + 1) * NT + j] = o[j][1];
        }
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

template <int HD, int GALL, int CHUNKS, bool UNITS>
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
    // Partial softmax states the block merges: one per warp on the
    // tensor-core path, one per sub-warp otherwise.
    constexpr int NMERGE = ATTN_USE_MMA ? ATTN_WARPS : NSUB;
    __shared__ float s_m[NMERGE][G];
    __shared__ float s_l[NMERGE][G];
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
    constexpr int MMA_ACC_BYTES = NMERGE * G * HD * 4;
    static_assert(MMA_STAGE_BYTES <= 40 * 1024,
                  "ATTN_STAGED with the tensor-core loop: two iterations of K and V rows per warp "
                  "do not fit in static shared memory at this head dim; add DYNO_CUDA_ATTN_MMA=0");
    constexpr bool CHAIN =
        UNITS && attn_shared_bytes<HD, G, LPT>() + MMA_ACC_BYTES + G * HD * 4 <= 47 * 1024;
    constexpr int RAW_BYTES = CHAIN ? MMA_STAGE_BYTES + MMA_ACC_BYTES
                                    : (MMA_STAGE_BYTES > MMA_ACC_BYTES ? MMA_STAGE_BYTES : MMA_ACC_BYTES);
    __shared__ __align__(16) unsigned char s_raw[RAW_BYTES];
    bf16* s_stage = reinterpret_cast<bf16*>(s_raw);
    float(*s_acc)[G][HD] = reinterpret_cast<float(*)[G][HD]>(s_raw + (CHAIN ? MMA_STAGE_BYTES : 0));
    constexpr int EXTRA_BYTES = CHAIN ? MMA_ACC_BYTES : 0;
#else
    constexpr bool CHAIN = false;
    constexpr int EXTRA_BYTES = 0;
#endif
    // A block folding several units (batch_invariant, large steps): its
    // running partial, the maxima and sums per query head by unit parity,
    // and the sums of values in shared memory where they fit next to the
    // rest (static shared memory: 48 KiB), else in registers.
    constexpr bool FOLD_SHARED =
        UNITS && attn_shared_bytes<HD, G, LPT>() + EXTRA_BYTES + G * HD * 4 <= 47 * 1024;
    constexpr int FOLD_REGS = (G * HD + THREADS - 1) / THREADS;
    __shared__ float s_fold_ml[UNITS ? 2 : 1][G][2];
    __shared__ float s_fold_acc[FOLD_SHARED ? G * HD : 1];
    float fold_acc_regs[FOLD_REGS];  // unused where FOLD_SHARED
#if ATTN_USE_MMA && ATTN_STAGED
#elif ATTN_USE_MMA
    __shared__ float s_acc[NMERGE][G][HD];
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

    const int t = blockIdx.x, split = blockIdx.z, stride = gridDim.z;
    const int kvh = blockIdx.y / CHUNKS, g0 = (blockIdx.y % CHUNKS) * G;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int sub_in_warp = lane / LPT, sl = lane % LPT;
    const bool lane_on = sl * 8 < HD;  // lanes past the head dim hold zeros
    const int sub = warp * SUBS + sub_in_warp;
    const int nq = nkv * GALL;
    const int ctx = positions[t] + 1;
    constexpr int BLOCK_KEYS =
        ATTN_USE_MMA ? ATTN_WARPS * 8 * attn_mma_key_tiles(HD) : ATTN_WARPS * WARP_KEYS;
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

    int mma_buffer = 0;  // the tensor-core loop's staging buffer (CHAIN: across units)
    // Attends to keys [ub, ue), leaving each warp's (or sub-warp's) softmax
    // state in s_m, s_l and s_acc for the merge.
    auto attend_unit = [&](int ub, int ue) {
#if ATTN_USE_MMA
#if ATTN_STAGED
        bf16* stage_rows_of_block = s_stage;
#else
        bf16* stage_rows_of_block = nullptr;
#endif
        attend_split_mma<HD, G, GALL>(qkv, k_cache, v_cache, table, block_size, nkv, kvh, g0, t,
                                      row_len, scale, ub, ue, CHAIN ? end : ue,
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
        // The loop bound is uniform across the warp (shuffles need every lane).
        for (int wbase = ub + warp * WARP_KEYS; wbase < ue; wbase += ATTN_WARPS * WARP_KEYS) {
            const int base = wbase + sub_in_warp * KEYS_PER_ITER;
            uint4 kraw[KEYS_PER_ITER], vraw[KEYS_PER_ITER];
            bool valid[KEYS_PER_ITER];
#pragma unroll
            for (int v = 0; v < KEYS_PER_ITER; v++) {
                const int pos = base + v;
                valid[v] = pos < ue;
                const int p = valid[v] ? pos : ub;
                const long slot = (long)table[p / block_size] * block_size + (p % block_size);
                const long off = (slot * nkv + kvh) * HD + sl * 8;
                kraw[v] = lane_on ? *reinterpret_cast<const uint4*>(k_cache + off) : make_uint4(0, 0, 0, 0);
                vraw[v] = lane_on ? *reinterpret_cast<const uint4*>(v_cache + off) : make_uint4(0, 0, 0, 0);
            }
            attend_keys<G, LPT>(q, kraw, vraw, valid, m, l, acc);
        }
        if constexpr (UNITS) {
            // The rows this lane loads first in the next unit, on their way
            // to L2 while the block merges this one.
#pragma unroll
            for (int v = 0; v < KEYS_PER_ITER; v++) {
                const int pos = ue + warp * WARP_KEYS + sub_in_warp * KEYS_PER_ITER + v;
                if (lane_on && pos < end) {
                    const long slot = (long)table[pos / block_size] * block_size + (pos % block_size);
                    const long off = (slot * nkv + kvh) * HD + sl * 8;
                    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(k_cache + off));
                    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(v_cache + off));
                }
            }
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
        // Element i = threadIdx.x + k * THREADS of the block's G x HD
        // outputs is this thread's k-th.
#pragma unroll
        for (int k = 0; k < (G * HD + THREADS - 1) / THREADS; k++) {
            const int i = threadIdx.x + k * THREADS;
            if (i >= G * HD) break;
            const int g = i / HD, d = i - g * HD;
            if (g0 + g >= GALL) break;  // the last chunk of an uneven group
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
        int* counter = split_counters + (long)t * gridDim.y + blockIdx.y;
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
    pdl_wait();
    pdl_launch();
    attention_impl<DYNO_HEAD_DIM, DYNO_GROUP, DYNO_GROUP_CHUNKS, false>(
        qkv, k_cache, v_cache, positions, seq_idx, block_tables, bt_stride, block_size, nkv, scale,
        out, part_acc, part_ml, counters, split_keys);
}

// Blocks per SM attention_units' registers must allow
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
    pdl_wait();
    pdl_launch();
    attention_impl<DYNO_HEAD_DIM, DYNO_GROUP, DYNO_GROUP_CHUNKS, true>(
        qkv, k_cache, v_cache, positions, seq_idx, block_tables, bt_stride, block_size, nkv, scale,
        out, nullptr, nullptr, nullptr, split_keys);
}
