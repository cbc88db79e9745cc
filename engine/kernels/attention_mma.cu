// The attention kernels' tensor-core inner loop (ATTN_MMA, see
// attention_config.cuh): each warp of a block folds 16 keys per iteration
// (8 above head dim 64) into an online softmax with mma.sync products, for
// attention_impl in attention.cu.

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

// d[0..3] += A·B for all 16 rows of an m16n8k16 product: a0, a2 as in
// mma_rows8 for row lane/4, a1, a3 the same for row lane/4 + 8; d0, d1 are
// row lane/4's (n 2c, 2c+1), d2, d3 row lane/4 + 8's. Each output element
// is its own row's dot product: filling rows 8..15 changes no bit of rows
// 0..7.
__device__ __forceinline__ void mma_rows16(float& d0, float& d1, float& d2, float& d3,
                                           unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                           unsigned b0, unsigned b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
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

// One warp copies keys tile_base .. tile_base + ROWS - 1 of KV head kvh
// into dst with cp.async as one commit group: ROWS K rows, then ROWS V
// rows, ROW elements apart (a padded row). Keys at or past `limit` are
// zeros (their addresses those of key `fallback`, which is valid).
// block_size = 1 << shift.
template <int HD, int ROWS, int ROW>
__device__ __forceinline__ void stage_kv_rows(bf16* dst, const bf16* ACT_RESTRICT k_cache,
                                              const bf16* ACT_RESTRICT v_cache,
                                              const int* __restrict__ table, int block_size,
                                              int shift, int nkv, int kvh, int tile_base,
                                              int limit, int fallback, int lane) {
    constexpr int PIECES = HD / 8;  // 16-byte pieces of a row
#if KV_HEAD_MAJOR
    // The common case: the tile's keys all valid and in one cache block,
    // whose rows of this head are contiguous (head-major), so one
    // block-table read gives every piece's address; piece q of the tile is
    // q * 8 elements past the first row. The same bytes land in the same
    // places as below, at a fraction of the instructions (one table read
    // and no slot arithmetic per piece).
    if (KV_BLOCK_SIZE % ROWS == 0 && tile_base % ROWS == 0 && tile_base + ROWS <= limit) {
        const long first = (((long)table[tile_base / KV_BLOCK_SIZE] * nkv + kvh) * KV_BLOCK_SIZE +
                            tile_base % KV_BLOCK_SIZE) * HD;
        const bf16* k_src = k_cache + first;
        const bf16* v_src = v_cache + first;
#pragma unroll
        for (int q = lane; q < ROWS * PIECES; q += 32) {
            const int r = q / PIECES, piece = q % PIECES;
            cp_async16(dst + r * ROW + piece * 8, k_src + q * 8, true);
            cp_async16(dst + (ROWS + r) * ROW + piece * 8, v_src + q * 8, true);
        }
        cp_async_commit();
        return;
    }
#endif
    for (int q = lane; q < ROWS * PIECES; q += 32) {
        const int r = q / PIECES, piece = q % PIECES;
        const int pos = tile_base + r;
        const int p = pos < limit ? pos : fallback;
        const long slot = (long)table[p >> shift] * block_size + (p & (block_size - 1));
        const long off = kv_row(slot, kvh, nkv, HD) + piece * 8;
        cp_async16(dst + r * ROW + piece * 8, k_cache + off, pos < limit);
        cp_async16(dst + (ROWS + r) * ROW + piece * 8, v_cache + off, pos < limit);
    }
    cp_async_commit();
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
// rows, G query heads (g0 .. g0 + G - 1 of kv head kvh's group of GALL) of
// each of its ntok query tokens t .. t + ntok - 1 (row r: token t + r / G,
// head g0 + r % G; R rows at most, 16), and leaves its state in
// s_m_warp[R], s_l_warp[R] and s_acc_warp[R][HD] for the block's merge.
// Rows 0..7 are the m16n8k16 products' rows 0..7; rows 8..15, where R > 8,
// fill the products' rows 8..15, which are zero otherwise: the same
// instructions then serve twice the rows, and each row's bits stay those
// of a block of its own. With several tokens (consecutive positions of one
// sequence, one split) token t + i attends to keys below ctx_first + i
// (ctx_first: token t's context): later keys are masked in its rows. Every thread of
// the block calls it (it may hold __syncthreads). s_stage: the block's
// staged rows (ATTN_STAGED), else unused. Keys below stage_end (end, or
// the context's end for a block folding units) may be staged: a warp's
// last iteration stages its first rows of the next unit, and the next
// call, `prestaged`, starts from them. `buffer`: the staging buffer of the
// warp's next rows, kept across calls.
template <int HD, int G, int GALL, int R>
__device__ __forceinline__ void attend_split_mma(
    const float* ACT_RESTRICT qkv, const bf16* ACT_RESTRICT k_cache,
    const bf16* ACT_RESTRICT v_cache, const int* __restrict__ table, int block_size, int nkv,
    int kvh, int g0, int t, int ntok, int ctx_first, int row_len, float scale, int begin, int end,
    int stage_end,
    bool prestaged, int& buffer, bf16* s_stage, float* s_m_warp, float* s_l_warp,
    float* s_acc_warp) {
    using Stage = MmaStage<HD>;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    constexpr int KS = HD / 16;  // k-steps of the score product
    constexpr int NT = HD / 8;   // n-tiles of the value product
    constexpr int KW = HD / 8;   // words of a lane's K slice of a key (HD/4 dims)
    constexpr int VW = HD / 16;  // words of a lane's V slice of a key (HD/8 dims)
    static_assert(R <= 16, "the products' 16 rows hold the block's (token, head) rows");
    constexpr int H = R > 8 ? 2 : 1;  // row halves in use: rows g and g + 8
    const int g = lane >> 2, c = lane & 3;
    // Row g + 8h's token (t + tq) and head (g0 + hg); keys at or past
    // row_end are masked in it (its token's context).
    int tq[H], hg[H], row_end[H];
    bool row_on[H];
#pragma unroll
    for (int h = 0; h < H; h++) {
        const int r = g + 8 * h;
        tq[h] = r / G;
        hg[h] = r - tq[h] * G;
        row_on[h] = r < R && tq[h] < ntok && g0 + hg[h] < GALL;
        // One token per block (R == G): its context ends at or past `end`.
        row_end[h] = R > G ? min(end, ctx_first + tq[h]) : end;
    }
    // The products sum over the head dim in any order the operands
    // agree on, so lane (g, c) gives k-step ks the dims c*HD/4 + 4ks ..
    // + 3 of Q and K: a lane's K slice of a key is then contiguous
    // (HD/4 dims, one or two 16-byte loads). Q: A operand, row g (and
    // g + 8). Past a head dim of 64 the fragments (4 words per k-step)
    // would cost more registers than the K/V loads in flight can spare
    // (198 per thread at 128: two blocks per SM), so they wait in shared
    // memory, written once by warp 0 in the layout every warp reads
    // (half h, lane (g, c), k-step ks: hi0 hi1 lo0 lo1).
    constexpr bool Q_SHARED = KS > 4;
    __shared__ __align__(16) uint4 s_q[Q_SHARED ? H * 32 * KS : 1];
    unsigned qhi[H][Q_SHARED ? 1 : KS][2], qlo[H][Q_SHARED ? 1 : KS][2];
    if (!Q_SHARED || warp == 0) {
#pragma unroll
        for (int h = 0; h < H; h++) {
            const float* qrow = qkv + (long)(t + tq[h]) * row_len +
                                (kvh * GALL + g0 + hg[h]) * HD + c * (HD / 4);
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                const float4 v = row_on[h] ? reinterpret_cast<const float4*>(qrow)[ks]
                                           : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                unsigned h0, h1, l0, l1;
                split_bf16x2(v.x * scale, v.y * scale, &h0, &l0);
                split_bf16x2(v.z * scale, v.w * scale, &h1, &l1);
                if constexpr (Q_SHARED) {
                    s_q[(h * 32 + lane) * KS + ks] = make_uint4(h0, h1, l0, l1);
                } else {
                    qhi[h][Q_SHARED ? 0 : ks][0] = h0;
                    qhi[h][Q_SHARED ? 0 : ks][1] = h1;
                    qlo[h][Q_SHARED ? 0 : ks][0] = l0;
                    qlo[h][Q_SHARED ? 0 : ks][1] = l1;
                }
            }
        }
    }
    if constexpr (Q_SHARED) __syncthreads();
    // This lane's Q words of half h, k-step ks (from shared memory with a
    // volatile load, so that the compiler does not hoist all of them
    // into registers out of the key loop).
    auto q_words = [&](int h, int ks) {
        if constexpr (Q_SHARED) {
            uint4 v;
            const unsigned addr = static_cast<unsigned>(
                __cvta_generic_to_shared(&s_q[(h * 32 + lane) * KS + ks]));
            asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                         : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                         : "r"(addr));
            return v;
        } else {
            return make_uint4(qhi[h][ks][0], qhi[h][ks][1], qlo[h][ks][0], qlo[h][ks][1]);
        }
    };
    // O: C fragments of the value product, rows g (o[j][0..1]) and g + 8
    // (o[j][2..3]); n-slot n of n-tile j is dim n * NT + j, see the V loads.
    float o[NT][2 * H];
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 2 * H; e++) o[j][e] = 0.0f;
    // Row g + 8h's running max, and this lane's share of its sum.
    float m[H], l[H];
#pragma unroll
    for (int h = 0; h < H; h++) {
        m[h] = -INFINITY;
        l[h] = 0.0f;
    }
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
        stage_kv_rows<HD, Stage::ROWS, Stage::ROW>(
            my_stage + buffer * (2 * Stage::ROWS * Stage::ROW), k_cache, v_cache, table,
            block_size, shift, nkv, kvh, tile_base, stage_end, begin, lane);
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
#define ATTN_K_ROW(key) (k_cache + kv_row(slot_of(key), kvh, nkv, HD))
#define ATTN_V_ROW(key) (v_cache + kv_row(slot_of(key), kvh, nkv, HD))
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
        // Scores of row g + 8h, keys base + 8j + 2c + e.
        float s[H][KT][2];
#pragma unroll
        for (int h = 0; h < H; h++)
#pragma unroll
            for (int j = 0; j < KT; j++) s[h][j][0] = s[h][j][1] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            const uint4 qw = q_words(0, ks);  // hi0 hi1 lo0 lo1
#pragma unroll
            for (int j = 0; j < KT; j++) {
                if constexpr (H == 1) {
                    mma_rows8(s[0][j][0], s[0][j][1], qw.x, qw.y, kw[j][2 * ks], kw[j][2 * ks + 1]);
                    mma_rows8(s[0][j][0], s[0][j][1], qw.z, qw.w, kw[j][2 * ks], kw[j][2 * ks + 1]);
                } else {
                    const uint4 qw8 = q_words(H - 1, ks);
                    mma_rows16(s[0][j][0], s[0][j][1], s[H - 1][j][0], s[H - 1][j][1], qw.x,
                               qw8.x, qw.y, qw8.y, kw[j][2 * ks], kw[j][2 * ks + 1]);
                    mma_rows16(s[0][j][0], s[0][j][1], s[H - 1][j][0], s[H - 1][j][1], qw.z,
                               qw8.z, qw.w, qw8.w, kw[j][2 * ks], kw[j][2 * ks + 1]);
                }
            }
        }
        float corr[H], p[H][KT][2];
#pragma unroll
        for (int h = 0; h < H; h++) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < KT; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    if (base + 8 * j + 2 * c + e >= row_end[h]) s[h][j][e] = -INFINITY;
                    mx = fmaxf(mx, s[h][j][e]);
                }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            // With one token, key `base` is valid, so mx is finite. A row of
            // a later token's keys may have none here (mx -inf): its state
            // must stay exactly as it was (corr 1, p 0), as if it skipped
            // them.
            const bool none = R > G && mx == -INFINITY;
            const float m_new = fmaxf(m[h], mx);
            corr[h] = none ? 1.0f : __expf(m[h] - m_new);
            m[h] = m_new;
#pragma unroll
            for (int j = 0; j < KT; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) p[h][j][e] = none ? 0.0f : __expf(s[h][j][e] - m_new);
            if constexpr (KT == 2) {
                l[h] = l[h] * corr[h] + (p[h][0][0] + p[h][0][1]) + (p[h][1][0] + p[h][1][1]);
            } else {
                l[h] = l[h] * corr[h] + (p[h][0][0] + p[h][0][1]);
            }
        }
        // P: A operand, k 2c, 2c+1 from n-tile 0, k 2c+8, 2c+9 from 1
        // (zero with one tile); rows g and g + 8.
        unsigned phi0[H], plo0[H], phi1[H], plo1[H];
#pragma unroll
        for (int h = 0; h < H; h++) {
            phi1[h] = plo1[h] = 0u;
            split_bf16x2(p[h][0][0], p[h][0][1], &phi0[h], &plo0[h]);
            if constexpr (KT == 2) split_bf16x2(p[h][1][0], p[h][1][1], &phi1[h], &plo1[h]);
        }
#pragma unroll
        for (int j = 0; j < NT; j++) {
            // Dim g * NT + j of the four keys: half j & 1 of word j / 2.
            const unsigned sel = (j & 1) ? 0x7632u : 0x5410u;
            const unsigned b0 = __byte_perm(vw[0][j / 2], vw[1][j / 2], sel);
            const unsigned b1 = KT == 2 ? __byte_perm(vw[KT == 2 ? 2 : 0][j / 2], vw[KT == 2 ? 3 : 1][j / 2], sel) : 0u;
#pragma unroll
            for (int h = 0; h < H; h++) {
                o[j][2 * h] *= corr[h];
                o[j][2 * h + 1] *= corr[h];
            }
            if constexpr (H == 1) {
                mma_rows8(o[j][0], o[j][1], phi0[0], phi1[0], b0, b1);
                mma_rows8(o[j][0], o[j][1], plo0[0], plo1[0], b0, b1);
            } else {
                mma_rows16(o[j][0], o[j][1], o[j][2 * H - 2], o[j][2 * H - 1], phi0[0],
                           phi0[H - 1], phi1[0], phi1[H - 1], b0, b1);
                mma_rows16(o[j][0], o[j][1], o[j][2 * H - 2], o[j][2 * H - 1], plo0[0],
                           plo0[H - 1], plo1[0], plo1[H - 1], b0, b1);
            }
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
#pragma unroll
    for (int h = 0; h < H; h++) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
        const int r = g + 8 * h;
        if (r < R) {
            if (c == 0) {
                s_m_warp[r] = m[h];
                s_l_warp[r] = l[h];
            }
#pragma unroll
            for (int j = 0; j < NT; j++) {
                s_acc_warp[r * HD + (2 * c) * NT + j] = o[j][2 * h];
                s_acc_warp[r * HD + (2 * c + 1) * NT + j] = o[j][2 * h + 1];
            }
        }
    }
}

// ---- The transposed tensor-core loop (ATTN_MMA_T) ----
//
// For head dims past 64 (qwen3-0.6b's 128), where the loop above holds a
// product row per query head and pays for it in registers (its value
// product's accumulators span the head dim) and in instructions (8 keys a
// product, the other 8 zero), the products are turned around: the keys
// are the rows. Per iteration a warp takes 16 keys:
//   S^T (16 keys x 8 heads) = K (16 keys x HD) . Q^T (HD x 8 heads)
//   O^T (HD x 8 heads)     += V^T (HD x 16 keys) . P^T (16 keys x 8 heads)
// so every product's 16 rows are keys or dims, the query heads (G <= 8)
// are the 8 columns, and a lane keeps HD/4 accumulators (32 at 128). K
// and V^T come from this warp's rows in shared memory with ldmatrix (V^T
// with .trans), staged there by cp.async one iteration ahead; P^T's
// operand is S^T's accumulator layout transposed in registers
// (movmatrix). Q and P enter as bf16 pairs hi + lo, as above. The keys a
// warp takes, their order and the arithmetic depend on the split's keys
// only, so batch invariance holds as for the other loops.

// The warp's staging buffers in the kernel's dynamic shared memory: two
// of 16 K rows then 16 V rows, a row padded by 16 bytes so that the 8
// rows an ldmatrix reads hit distinct banks.
template <int HD>
struct MmaTStage {
    static constexpr int KEYS = 16;
    static constexpr int ROW = HD + 8;
    static constexpr int BUFFER_ELEMS = 2 * KEYS * ROW;
    static constexpr int WARP_ELEMS = 2 * BUFFER_ELEMS;
    static constexpr int BLOCK_BYTES = ATTN_WARPS * WARP_ELEMS * 2;
};

// Four 8x8 b16 matrices from shared memory: lanes 8i .. 8i + 7 give matrix
// i's row addresses; register i is matrix i's fragment (row lane/4,
// columns 2(lane%4), +1), or its transpose's with TRANS.
template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const bf16* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
    if constexpr (TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    }
#endif
}

// The transpose of an 8x8 b16 matrix held as fragments (lane: row lane/4,
// columns 2(lane%4), +1).
__device__ __forceinline__ unsigned movmatrix_trans(unsigned x) {
    unsigned y = x;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
#endif
    return y;
}

// Keys [begin, end) of one split for the block's columns: G query heads
// (g0 .. of kv head kvh's group of GALL) of each of its ntok query tokens
// t .. t + ntok - 1 (column n: token t + n / G, head g0 + n % G; R columns
// at most, 8): each warp folds its 16-key iterations (warp w: keys begin +
// 16w, then every 64) into an online softmax and leaves its state in
// s_m_warp[R], s_l_warp[R] and s_acc_warp[R][HD] for the block's merge, as
// attend_split_mma does. With several tokens (consecutive positions of one
// sequence: a prefill chunk) token t + i attends to keys below ctx_first +
// i, later keys masked in its columns; a column with no key in an
// iteration keeps its softmax state exactly, so each token gets the bits
// of a block of its own (a product's column depends on its own operand
// column only).
// Keys below stage_end (end, or the context's end for a block folding
// units, whose bounds are multiples of 64) may be staged: a warp's last
// iteration then stages its first rows of the next unit, so that its
// copies do not stop across the merge, and the next call, `prestaged`,
// starts from them. `buffer`: the staging buffer of the warp's next rows,
// kept across calls. The rows staged for a key are the same either way
// (zeros past stage_end, and a unit's keys end at stage_end or at a
// multiple of 64), so are the bits.
template <int HD, int G, int GALL, int R>
__device__ __forceinline__ void attend_split_mma_t(
    const float* ACT_RESTRICT qkv, const bf16* ACT_RESTRICT k_cache,
    const bf16* ACT_RESTRICT v_cache, const int* __restrict__ table, int block_size, int nkv,
    int kvh, int g0, int t, int ntok, int ctx_first, int row_len, float scale, int begin,
    int end, int stage_end, bool prestaged, int& buffer, float* s_m_warp, float* s_l_warp,
    float* s_acc_warp) {
    static_assert(HD % 16 == 0 && R <= 8 && R % G == 0,
                  "the transposed loop: head dim a multiple of 16, 8 columns of whole tokens");
    // Several tokens: columns may have no key in an iteration (see above).
    constexpr bool JOINT = R > G;
    using Stage = MmaTStage<HD>;
    extern __shared__ __align__(16) unsigned char attn_dynamic_smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    constexpr int KS = HD / 16;  // k-steps of the score product = m-tiles of the value product
    constexpr int ROW = Stage::ROW;
    // Q^T, B operand of the score product: k-step ks holds dims 16ks + 2c,
    // + 1 (word 0) and 16ks + 8 + 2c, + 1 (word 1) of column g (zero past
    // the block's columns).
    unsigned qhi[KS][2], qlo[KS][2];
    {
        const int tq = g / G, hg = g - tq * G;
        const bool on = g < R && tq < ntok && g0 + hg < GALL;
        const float* qrow = qkv + (long)(t + (on ? tq : 0)) * row_len +
                            (long)(kvh * GALL + g0 + (on ? hg : 0)) * HD;
#pragma unroll
        for (int ks = 0; ks < KS; ks++)
#pragma unroll
            for (int w = 0; w < 2; w++) {
                const float2 v = on ? *reinterpret_cast<const float2*>(qrow + 16 * ks + 8 * w + 2 * c)
                                    : make_float2(0.0f, 0.0f);
                split_bf16x2(v.x * scale, v.y * scale, &qhi[ks][w], &qlo[ks][w]);
            }
    }
    // O^T: m-tile mt's C fragment, dims 16mt + g (o[mt][0..1]) and + 8
    // (o[mt][2..3]), heads 2c and 2c + 1.
    float o[KS][4];
#pragma unroll
    for (int mt = 0; mt < KS; mt++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[mt][e] = 0.0f;
    // Columns 2c and 2c + 1: running max, and this lane's share of the
    // sum; keys at or past col_end[j] are masked in column 2c + j (its
    // token's context).
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    int col_end[2];
#pragma unroll
    for (int j = 0; j < 2; j++) col_end[j] = JOINT ? min(end, ctx_first + (2 * c + j) / G) : end;

    bf16* my_stage = reinterpret_cast<bf16*>(attn_dynamic_smem) + warp * Stage::WARP_ELEMS;
    const int shift = __ffs(block_size) - 1;  // block_size: a power of two
    // Keys tile_base .. + 15 into buffer `into` (zeros past stage_end).
    auto stage_rows = [&](int tile_base, int into) {
        stage_kv_rows<HD, Stage::KEYS, ROW>(my_stage + into * Stage::BUFFER_ELEMS, k_cache,
                                            v_cache, table, block_size, shift, nkv, kvh,
                                            tile_base, stage_end, begin, lane);
    };
    constexpr int WARP_STRIDE = ATTN_WARPS * Stage::KEYS;
    // ldmatrix row addresses: K (A operand, rows = keys): matrices (keys
    // 0-7, dims 0-7), (keys 8-15, dims 0-7), (0-7, 8-15), (8-15, 8-15) of a
    // k-step; V (A operand of V^T, transposed): (keys 0-7, dims 0-7), (keys
    // 0-7, dims 8-15), (8-15, 0-7), (8-15, 8-15) of an m-tile.
    const int k_row = (lane & 7) + ((lane >> 3) & 1) * 8, k_col = (lane >> 4) * 8;
    const int v_row = (lane & 7) + ((lane >> 4) & 1) * 8, v_col = ((lane >> 3) & 1) * 8;
    if (!prestaged && begin + warp * Stage::KEYS < end) stage_rows(begin + warp * Stage::KEYS, buffer);
#pragma unroll 1
    for (int base = begin + warp * Stage::KEYS; base < end; base += WARP_STRIDE) {
        if (base + WARP_STRIDE < stage_end) {
            stage_rows(base + WARP_STRIDE, buffer ^ 1);
            cp_async_wait<1>();  // this iteration's rows have landed
        } else {
            cp_async_wait<0>();
        }
        __syncwarp();
        const bf16* k_tile = my_stage + buffer * Stage::BUFFER_ELEMS;
        const bf16* v_tile = k_tile + Stage::KEYS * ROW;
        // S^T: rows keys base + g (s[0], s[1]) and + 8 (s[2], s[3]),
        // columns heads 2c, 2c + 1; Q's hi and lo products summed apart.
        float shi[4] = {0.0f, 0.0f, 0.0f, 0.0f}, slo[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            unsigned a[4];
            ldmatrix_x4<false>(a, k_tile + k_row * ROW + 16 * ks + k_col);
            mma_rows16(shi[0], shi[1], shi[2], shi[3], a[0], a[1], a[2], a[3], qhi[ks][0], qhi[ks][1]);
            mma_rows16(slo[0], slo[1], slo[2], slo[3], a[0], a[1], a[2], a[3], qlo[ks][0], qlo[ks][1]);
        }
        float s[4];
        s[0] = base + g < col_end[0] ? shi[0] + slo[0] : -INFINITY;
        s[1] = base + g < col_end[1] ? shi[1] + slo[1] : -INFINITY;
        s[2] = base + g + 8 < col_end[0] ? shi[2] + slo[2] : -INFINITY;
        s[3] = base + g + 8 < col_end[1] ? shi[3] + slo[3] : -INFINITY;
        // Each column's max over the 16 keys (the 8 lanes of one c), then
        // the online softmax. With one token, key `base` is valid, so the
        // max is finite; with several, a column without keys so far
        // subtracts 0 instead of its -inf maximum, so that its state stays
        // zero (and a column with earlier keys keeps it: corr 1, p 0).
        float mx[2] = {fmaxf(s[0], s[2]), fmaxf(s[1], s[3])};
        float corr[2], m_sub[2];
#pragma unroll
        for (int j = 0; j < 2; j++) {
#pragma unroll
            for (int off = 4; off < 32; off <<= 1)
                mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffffu, mx[j], off));
            const float m_new = fmaxf(m[j], mx[j]);
            m_sub[j] = JOINT && m_new == -INFINITY ? 0.0f : m_new;
            corr[j] = __expf(m[j] - m_sub[j]);
            m[j] = m_new;
        }
        const float p0 = __expf(s[0] - m_sub[0]), p1 = __expf(s[1] - m_sub[1]);
        const float p2 = __expf(s[2] - m_sub[0]), p3 = __expf(s[3] - m_sub[1]);
        l[0] = l[0] * corr[0] + (p0 + p2);
        l[1] = l[1] * corr[1] + (p1 + p3);
        // P^T, B operand of the value product: keys 2c, 2c + 1 (word 0)
        // and 8 + 2c, + 1 (word 1) of head g, from S^T's layout transposed.
        unsigned hi0, lo0, hi1, lo1;
        split_bf16x2(p0, p1, &hi0, &lo0);
        split_bf16x2(p2, p3, &hi1, &lo1);
        const unsigned bhi0 = movmatrix_trans(hi0), bhi1 = movmatrix_trans(hi1);
        const unsigned blo0 = movmatrix_trans(lo0), blo1 = movmatrix_trans(lo1);
#pragma unroll
        for (int mt = 0; mt < KS; mt++) {
            unsigned a[4];
            ldmatrix_x4<true>(a, v_tile + v_row * ROW + 16 * mt + v_col);
            o[mt][0] *= corr[0];
            o[mt][1] *= corr[1];
            o[mt][2] *= corr[0];
            o[mt][3] *= corr[1];
            mma_rows16(o[mt][0], o[mt][1], o[mt][2], o[mt][3], a[0], a[1], a[2], a[3], bhi0, bhi1);
            mma_rows16(o[mt][0], o[mt][1], o[mt][2], o[mt][3], a[0], a[1], a[2], a[3], blo0, blo1);
        }
        // Every lane has read this buffer before the next iteration's
        // copies go into the other one and the one after into this.
        __syncwarp();
        buffer ^= 1;
    }
#pragma unroll
    for (int j = 0; j < 2; j++) {
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) l[j] += __shfl_xor_sync(0xffffffffu, l[j], off);
        const int col = 2 * c + j;
        if (col < R) {
            if (g == 0) {
                s_m_warp[col] = m[j];
                s_l_warp[col] = l[j];
            }
#pragma unroll
            for (int mt = 0; mt < KS; mt++) {
                s_acc_warp[col * HD + 16 * mt + g] = o[mt][j];
                s_acc_warp[col * HD + 16 * mt + g + 8] = o[mt][2 + j];
            }
        }
    }
}
