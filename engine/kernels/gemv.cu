// Small-batch matrix products for decode steps: y[t, n] = Σ_k x[t, k] · W[n, k]
// for at most GEMV_MAX_T tokens, reading each weight once for all tokens.
//
// At batch 1 a decode step is a chain of small, latency-bound products, so
// what costs is the number of kernels and the DRAM round trips, not bytes.
// These kernels therefore fuse what sits around each product:
//   norm_qkv:     RMSNorm prologue + QKV product (f32 out, like the cuBLAS path)
//   gemv_residual: O or down product + residual add (residual += y, in place)
//   norm_gate_up_silu: RMSNorm prologue + gate and up products + SiLU·mul
// and each warp issues every weight load of its rows before it waits for the
// previous kernel (programmatic dependent launch, see pdl_wait), so weight
// traffic overlaps the previous kernel's tail.
//
// Numerics match the cuBLAS path: the normalized input is rounded to bf16 (it
// is the bf16 GEMM input there), products accumulate in f32.
//
// A warp owns GEMV_ROWS output rows; a lane takes 16-byte chunks (8 values)
// lane, lane + 32, ... of each row; the warp sums its lanes at the end.
// GEMV_WARPS, GEMV_ROWS, GEMV_MAX_T and GEMV_MAX_HIDDEN (the widest hidden
// size whose normalized input fits shared memory; wider models never launch
// these kernels) come from kernels.rs as -D options, so launcher and kernels
// share one value.
#define GEMV_SMEM_K (DYNO_HIDDEN <= GEMV_MAX_HIDDEN ? DYNO_HIDDEN : 8)
// Tokens whose epilogue inputs (residual, RoPE, cache slot) a warp loads
// before the wait (the others' load after the products): the batch-1 step's
// one. Each more costs registers (at 2, norm_qkv_rope_cache spills at
// smollm2-135m's shape; engine/scripts/kernel_registers.py).
#ifndef GEMV_EARLY_T
#define GEMV_EARLY_T 1
#endif

// Dot product of 8 bf16 weights with 8 bf16 inputs, in f32.
__device__ __forceinline__ float dot8(const uint4& w, const uint4& x) {
    const __nv_bfloat162* a = reinterpret_cast<const __nv_bfloat162*>(&w);
    const __nv_bfloat162* b = reinterpret_cast<const __nv_bfloat162*>(&x);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 fa = __bfloat1622float2(a[i]);
        const float2 fb = __bfloat1622float2(b[i]);
        s = fmaf(fa.x, fb.x, s);
        s = fmaf(fa.y, fb.y, s);
    }
    return s;
}

// RMSNorm of `T` residual rows (f32, `K` wide) times `w`, rounded to bf16,
// into shared memory `xs` ([T][K]). Warp w normalizes tokens w, w + WARPS, ...
// A lane loads its K/128 float4s of the row and the matching norm weights
// at once (one memory round trip), keeps them in registers for the write.
template <int K>
__device__ void norm_rows_to_shared(const float* ACT_RESTRICT residual,
                                    const bf16* __restrict__ w, int T, float eps,
                                    bf16* __restrict__ xs) {
    static_assert(K % 4 == 0, "rows load as float4");
    constexpr int VECS = K / 4;
    constexpr int PER_LANE = (VECS + 31) / 32;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int t = warp; t < T; t += GEMV_WARPS) {
        const float4* r = reinterpret_cast<const float4*>(residual + (long)t * K);
        float4 v[PER_LANE];
        uint2 g[PER_LANE];
#pragma unroll
        for (int i = 0; i < PER_LANE; i++) {
            const int c = lane + 32 * i;
            v[i] = c < VECS ? r[c] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            g[i] = c < VECS ? reinterpret_cast<const uint2*>(w)[c] : make_uint2(0, 0);
        }
        float ss = 0.0f;
#pragma unroll
        for (int i = 0; i < PER_LANE; i++)
            ss += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
        const float inv = rsqrtf(warp_sum(ss) / K + eps);
#pragma unroll
        for (int i = 0; i < PER_LANE; i++) {
            const int c = lane + 32 * i;
            if (c >= VECS) break;
            const __nv_bfloat162* gw = reinterpret_cast<const __nv_bfloat162*>(&g[i]);
            const float2 g01 = __bfloat1622float2(gw[0]), g23 = __bfloat1622float2(gw[1]);
            __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(xs + t * K + c * 4);
            dst[0] = __floats2bfloat162_rn(v[i].x * inv * g01.x, v[i].y * inv * g01.y);
            dst[1] = __floats2bfloat162_rn(v[i].z * inv * g23.x, v[i].w * inv * g23.y);
        }
    }
    __syncthreads();
}

// The warp's partial sums acc[r][t] for rows `rows[r]` of W ([N][K]) against
// x ([T][K], bf16, row stride K; shared or global memory); with STRIDE > K,
// over K columns of rows STRIDE wide (W and x point at the first column: a
// slice of the reduction, gemv_residual_split_block). The first batch of
// weight loads is issued before `wait` (PdlWait, or decode_layers' grid
// barrier), i.e. possibly while the previous kernel or phase still runs:
// weights never depend on it. `prologue` runs after the wait (it may read
// the previous kernel's output) and before x is read.
template <int K, int STRIDE = K, typename Wait, typename Prologue>
__device__ void gemv_rows(const bf16* __restrict__ W, const int (&rows)[GEMV_ROWS],
                          const bool (&ok)[GEMV_ROWS], const bf16* x, int T,
                          float (&acc)[GEMV_ROWS][GEMV_MAX_T], Wait wait, Prologue prologue) {
    constexpr int CHUNKS = K / 8;
    constexpr int PER_LANE = (CHUNKS + 31) / 32;
    constexpr int BATCH = PER_LANE < 8 ? PER_LANE : 8;
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
        for (int t = 0; t < GEMV_MAX_T; t++) acc[r][t] = 0.0f;
    uint4 w[GEMV_ROWS][BATCH];
    auto load = [&](int first) {
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
            for (int i = 0; i < BATCH; i++) {
                const int c = lane + 32 * (first + i);
                w[r][i] = (ok[r] && c < CHUNKS)
                              ? __ldg(reinterpret_cast<const uint4*>(W + (long)rows[r] * STRIDE) + c)
                              : make_uint4(0, 0, 0, 0);
            }
    };
    load(0);
    wait();
    prologue();
    for (int first = 0; first < PER_LANE; first += BATCH) {
        if (first > 0) load(first);
#pragma unroll
        for (int i = 0; i < BATCH; i++) {
            const int c = lane + 32 * (first + i);
            if (c >= CHUNKS) break;
#pragma unroll
            for (int t = 0; t < GEMV_MAX_T; t++) {
                if (t >= T) break;
                const uint4 xv = *reinterpret_cast<const uint4*>(x + (long)t * STRIDE + c * 8);
#pragma unroll
                for (int r = 0; r < GEMV_ROWS; r++) acc[r][t] += dot8(w[r][i], xv);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
        for (int t = 0; t < GEMV_MAX_T; t++) acc[r][t] = warp_sum(acc[r][t]);
}

// Steps of more than GEMV_MAX_T tokens (only under `batch_invariant` with
// the gemv products, see runner.rs) run as tiles of GEMV_MAX_T tokens, one
// per blockIdx.y (`by`): each token's sums run in the same order whatever
// the step's size, which is what makes this path batch-invariant. Returns
// the tile's first token and sets T to its token count; a block past the
// last token returns -1 (it exits before waiting on the previous kernel).
__device__ __forceinline__ int tile_first_token(int& T, int by) {
    const int t0 = by * GEMV_MAX_T;
    if (t0 >= T) return -1;
    T = min(T - t0, GEMV_MAX_T);
    return t0;
}

// The warp's GEMV_ROWS consecutive rows of an N-row matrix in block `bx`,
// and which exist.
__device__ __forceinline__ void consecutive_rows(int N, int bx, int (&rows)[GEMV_ROWS],
                                                 bool (&ok)[GEMV_ROWS]) {
    const int warp = threadIdx.x >> 5;
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) {
        rows[r] = (bx * GEMV_WARPS + warp) * GEMV_ROWS + r;
        ok[r] = rows[r] < N;
    }
}

// Each product below is a block body taking its place in the grid (bx, by),
// the shared memory for the normalized input (`xs`, GEMV_MAX_T rows of
// GEMV_SMEM_K) and what to do before reading the previous kernel's output
// (`wait`): the kernels of their own pass blockIdx, a __shared__ array and
// PdlWait; decode_layers (persistent.cu) runs the same bodies as virtual
// blocks of one persistent grid.

// y[t, n] = rmsnorm(residual[t]) · Wqkv[n] for the fused QKV matrix (f32 out;
// bias, q/k norm and RoPE follow in qkv_rope_cache).
extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
    norm_qkv(const float* __restrict__ residual, const bf16* __restrict__ norm_w,
             const bf16* __restrict__ W, float* __restrict__ y, int T, int N, float eps) {
    constexpr int K = DYNO_HIDDEN;
    __shared__ __align__(16) bf16 xs[GEMV_MAX_T * GEMV_SMEM_K];
    const int t0 = tile_first_token(T, blockIdx.y);
    if (t0 < 0) return;
    residual += (long)t0 * K;
    y += (long)t0 * N;
    const int lane = threadIdx.x & 31;
    int rows[GEMV_ROWS];
    bool ok[GEMV_ROWS];
    consecutive_rows(N, blockIdx.x, rows, ok);
    float acc[GEMV_ROWS][GEMV_MAX_T];
    gemv_rows<K>(W, rows, ok, xs, T, acc, PdlWait{},
                 [&] { norm_rows_to_shared<K>(residual, norm_w, T, eps, xs); });
    if (lane != 0) return;
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
        for (int t = 0; t < GEMV_MAX_T; t++)
            if (ok[r] && t < T) y[(long)t * N + rows[r]] = acc[r][t];
}

// norm_qkv and qkv_rope_cache in one kernel. A warp's two rows are i and
// i + HD/2 of one head: the pair RoPE rotates together (rotate-half).
// Without q/k norms (QK_NORM false) the warp adds the bias, rotates q and
// k, keeps q in f32 in `qkv` for attention and writes k and v, rounded to
// bf16, into the token's paged-cache slot. A q/k norm (Qwen3) needs the
// whole head, which spans HD / 2 / GEMV_WARPS blocks (a whole number:
// HEAD_BLOCKS below): each writes its rows of the head (plus bias) to
// `qkv` and counts itself done in `head_counters` (one per token tile and
// q/k head, reset by the last); the head's last block runs
// qkv_rope_cache's per-head code (rope_cache_head) for the tile's tokens.
// That is one kernel boundary per layer fewer than norm_qkv followed by
// qkv_rope_cache, with the same bits. V rows need no norm and are written
// directly either way. Grid: ((nq + 2 nkv) HD / 2 / GEMV_WARPS, token tiles).
template <bool QK_NORM, typename Wait>
__device__ void norm_qkv_rope_cache_block(
    int bx, int by, bf16* xs, Wait wait, const float* ACT_RESTRICT residual,
    const bf16* __restrict__ norm_w, const bf16* __restrict__ W, const bf16* __restrict__ bias,
    const bf16* __restrict__ q_norm, const bf16* __restrict__ k_norm,
    int* __restrict__ head_counters, const float2* __restrict__ cos_sin,
    const int* __restrict__ positions, const int* __restrict__ slots, float* ACT_RESTRICT qkv,
    bf16* ACT_RESTRICT k_cache, bf16* ACT_RESTRICT v_cache, int T, int nq, int nkv, float eps) {
    constexpr int K = DYNO_HIDDEN;
    constexpr int HD = DYNO_HEAD_DIM;
    static_assert(GEMV_ROWS == 2, "one rotation pair per warp");
    const int t0 = tile_first_token(T, by);
    if (t0 < 0) return;
    residual += (long)t0 * K;
    positions += t0;
    slots += t0;
    qkv += (long)t0 * (nq + 2 * nkv) * HD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int pair = bx * GEMV_WARPS + warp;
    const int head = pair / (HD / 2), i = pair % (HD / 2);
    const int heads = nq + 2 * nkv;
    const int rows[GEMV_ROWS] = {head * HD + i, head * HD + i + HD / 2};
    const bool ok[GEMV_ROWS] = {head < heads, head < heads};
    const bool rotated = head < nq + nkv;
    // Block-uniform: the head's last block normalizes and rotates it. Only
    // where a block's warps are pairs of one head (runner.rs launches the
    // two kernels for models with q/k norms otherwise).
    constexpr bool HEAD_BLOCKS = (HD / 2) % GEMV_WARPS == 0;
    const bool head_norm = QK_NORM && HEAD_BLOCKS && rotated;
    // The epilogue's inputs come from the weights, the host's step inputs
    // and the RoPE table, none from the previous kernel: lane 0 loads them
    // before the wait, so that no memory round trip follows the products.
    // Registers hold the first GEMV_EARLY_T tokens' (the others load after).
    float b0 = 0.0f, b1 = 0.0f;
    float2 rope[GEMV_EARLY_T];
    int slot[GEMV_EARLY_T];
    if (lane == 0 && head < heads) {
        if (bias) {
            b0 = __bfloat162float(bias[rows[0]]);
            b1 = __bfloat162float(bias[rows[1]]);
        }
#pragma unroll
        for (int t = 0; t < GEMV_EARLY_T; t++) {
            const bool on = t < T;
            slot[t] = on ? slots[t] : 0;
            rope[t] = on && rotated && !head_norm ? cos_sin[(long)positions[t] * (HD / 2) + i]
                                                  : make_float2(1.0f, 0.0f);
        }
    }
    // With q/k norms, every lane loads what it would need if its block
    // turns out to be the head's last: for the warp's first token (warp),
    // its slot and the RoPE pairs lane + 32 j, so that only the head's
    // values are read after the count.
    constexpr int HEAD_PAIRS = (HD / 2 + 31) / 32;
    float2 head_cs[HEAD_PAIRS];
    long head_slot = 0;
    if (head_norm && warp < T) {
        const float2* row = cos_sin + (long)positions[warp] * (HD / 2);
#pragma unroll
        for (int j = 0; j < HEAD_PAIRS; j++)
            head_cs[j] = lane + 32 * j < HD / 2 ? row[lane + 32 * j] : make_float2(1.0f, 0.0f);
        head_slot = slots[warp];
    }
    float acc[GEMV_ROWS][GEMV_MAX_T];
    gemv_rows<K>(W, rows, ok, xs, T, acc, wait,
                 [&] { norm_rows_to_shared<K>(residual, norm_w, T, eps, xs); });
    const int width = heads * HD;
    if (head_norm) {
        if (lane == 0) {
#pragma unroll
            for (int t = 0; t < GEMV_MAX_T; t++) {
                if (t >= T) break;
                qkv[(long)t * width + rows[0]] = acc[0][t] + b0;
                qkv[(long)t * width + rows[1]] = acc[1][t] + b1;
            }
            __threadfence();
        }
        // Visible before the count (threadFenceReduction's pattern); the
        // last block's reads go through L2 (rope_cache_head<.., true>).
        __shared__ int last_block;
        __syncthreads();
        if (threadIdx.x == 0) {
            int* count = head_counters + (long)by * (nq + nkv) + head;
            const int before = atomicAdd(count, 1);
            last_block = before == HD / 2 / GEMV_WARPS - 1;
            if (last_block) {
                *count = 0;
                __threadfence();
            }
        }
        __syncthreads();
        if (!last_block) return;
        // The last block: warp w takes tokens w, w + GEMV_WARPS, ...
        const bool is_q = head < nq;
        for (int t = warp; t < T; t += GEMV_WARPS) {
            const bool first = t == warp;
            const long s_t = first ? head_slot : slots[t];
            const float2* row = cos_sin + (long)positions[t] * (HD / 2);
            rope_cache_head<HD, true>(
                qkv + (long)t * width + head * HD, nullptr, is_q ? q_norm : k_norm,
                is_q ? HEAD_Q : HEAD_K,
                [&](int j) { return first ? head_cs[j] : row[lane + 32 * j]; },
                is_q ? nullptr : k_cache + kv_row(s_t, head - nq, nkv, HD), eps);
        }
        return;
    }
    if (lane != 0 || head >= heads) return;
#pragma unroll
    for (int t = 0; t < GEMV_MAX_T; t++) {
        if (t >= T) break;
        float x0 = acc[0][t] + b0, x1 = acc[1][t] + b1;
        if (rotated) {
            const float2 c = t < GEMV_EARLY_T ? rope[t < GEMV_EARLY_T ? t : 0]
                                              : cos_sin[(long)positions[t] * (HD / 2) + i];
            const float2 r = rope_rotate(x0, x1, c);
            x0 = r.x;
            x1 = r.y;
        }
        if (head < nq) {
            qkv[(long)t * width + rows[0]] = x0;
            qkv[(long)t * width + rows[1]] = x1;
        } else {
            const bool is_k = head < nq + nkv;
            bf16* cache = is_k ? k_cache : v_cache;
            const int kvh = is_k ? head - nq : head - nq - nkv;
            const int s_t = t < GEMV_EARLY_T ? slot[t < GEMV_EARLY_T ? t : 0] : slots[t];
            bf16* dst = cache + kv_row(s_t, kvh, nkv, HD) + i;
            dst[0] = __float2bfloat16(x0);
            dst[HD / 2] = __float2bfloat16(x1);
        }
    }
}

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
    norm_qkv_rope_cache(const float* __restrict__ residual, const bf16* __restrict__ norm_w,
                        const bf16* __restrict__ W, const bf16* __restrict__ bias,
                        const float2* __restrict__ cos_sin, const int* __restrict__ positions,
                        const int* __restrict__ slots, float* __restrict__ qkv,
                        bf16* __restrict__ k_cache, bf16* __restrict__ v_cache, int T, int nq,
                        int nkv, float eps) {
    __shared__ __align__(16) bf16 xs[GEMV_MAX_T * GEMV_SMEM_K];
    norm_qkv_rope_cache_block<false>(blockIdx.x, blockIdx.y, xs, PdlWait{}, residual, norm_w, W,
                                     bias, nullptr, nullptr, nullptr, cos_sin, positions, slots,
                                     qkv, k_cache, v_cache, T, nq, nkv, eps);
}

// The same with q/k norms (Qwen3): a kernel of its own, so that the norm
// path's registers do not cost the other models' kernel any.
extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
    norm_qkv_qk_norm_rope_cache(const float* __restrict__ residual,
                                const bf16* __restrict__ norm_w, const bf16* __restrict__ W,
                                const bf16* __restrict__ bias, const bf16* __restrict__ q_norm,
                                const bf16* __restrict__ k_norm, int* __restrict__ head_counters,
                                const float2* __restrict__ cos_sin,
                                const int* __restrict__ positions, const int* __restrict__ slots,
                                float* __restrict__ qkv, bf16* __restrict__ k_cache,
                                bf16* __restrict__ v_cache, int T, int nq, int nkv, float eps) {
    __shared__ __align__(16) bf16 xs[GEMV_MAX_T * GEMV_SMEM_K];
    norm_qkv_rope_cache_block<true>(blockIdx.x, blockIdx.y, xs, PdlWait{}, residual, norm_w, W,
                                    bias, q_norm, k_norm, head_counters, cos_sin, positions, slots,
                                    qkv, k_cache, v_cache, T, nq, nkv, eps);
}

// act[t, j] = SiLU(gate_j · x_t) · (up_j · x_t), x_t = rmsnorm(residual[t]);
// a warp's rows are gate rows j and the matching up rows I + j. Grid:
// (I / GEMV_WARPS, token tiles).
template <typename Wait>
__device__ void norm_gate_up_silu_block(int bx, int by, bf16* xs, Wait wait,
                                        const float* ACT_RESTRICT residual,
                                        const bf16* __restrict__ norm_w,
                                        const bf16* __restrict__ W, bf16* ACT_RESTRICT act, int T,
                                        float eps) {
    constexpr int K = DYNO_HIDDEN;
    constexpr int I = DYNO_INTER;
    static_assert(GEMV_ROWS == 2, "one gate row and its up row per warp");
    const int t0 = tile_first_token(T, by);
    if (t0 < 0) return;
    residual += (long)t0 * K;
    act += (long)t0 * I;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int j = bx * GEMV_WARPS + warp;
    const int rows[GEMV_ROWS] = {j, I + j};
    const bool ok[GEMV_ROWS] = {j < I, j < I};
    float acc[GEMV_ROWS][GEMV_MAX_T];
    gemv_rows<K>(W, rows, ok, xs, T, acc, wait,
                 [&] { norm_rows_to_shared<K>(residual, norm_w, T, eps, xs); });
    if (lane != 0 || j >= I) return;
#pragma unroll
    for (int t = 0; t < GEMV_MAX_T; t++) {
        if (t >= T) break;
        const float g = acc[0][t], u = acc[1][t];
        act[(long)t * I + j] = __float2bfloat16(g / (1.0f + __expf(-g)) * u);
    }
}

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
    norm_gate_up_silu(const float* __restrict__ residual, const bf16* __restrict__ norm_w,
                      const bf16* __restrict__ W, bf16* __restrict__ act, int T, float eps) {
    __shared__ __align__(16) bf16 xs[GEMV_MAX_T * GEMV_SMEM_K];
    norm_gate_up_silu_block(blockIdx.x, blockIdx.y, xs, PdlWait{}, residual, norm_w, W, act, T,
                            eps);
}

// The residual rows rows[r] of the first GEMV_EARLY_T tokens, which a
// residual product adds to. They were last written two kernels back (the O
// product's by the previous layer's down product, the down product's by the
// O product), which completed before the previous kernel could start, so
// they load before the wait and no memory round trip follows the products.
// (In decode_layers a barrier lies between those phases too.)
__device__ __forceinline__ void early_residual_rows(const float* ACT_RESTRICT residual,
                                                    const int (&rows)[GEMV_ROWS],
                                                    const bool (&ok)[GEMV_ROWS], int T, int N,
                                                    float (&old)[GEMV_ROWS][GEMV_EARLY_T]) {
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
        for (int t = 0; t < GEMV_EARLY_T; t++)
            old[r][t] = ok[r] && t < T ? residual[(long)t * N + rows[r]] : 0.0f;
}

// residual[t, rows[r]] += sum(r, t), from `old` for the first GEMV_EARLY_T
// tokens (early_residual_rows), reloaded for the others.
template <typename Sum>
__device__ __forceinline__ void add_to_residual_rows(float* ACT_RESTRICT residual,
                                                     const int (&rows)[GEMV_ROWS],
                                                     const bool (&ok)[GEMV_ROWS], int T, int N,
                                                     const float (&old)[GEMV_ROWS][GEMV_EARLY_T],
                                                     Sum sum) {
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
        for (int t = 0; t < GEMV_MAX_T; t++)
            if (ok[r] && t < T) {
                float* dst = residual + (long)t * N + rows[r];
                *dst = (t < GEMV_EARLY_T ? old[r][t < GEMV_EARLY_T ? t : 0] : *dst) + sum(r, t);
            }
}

// residual[t, n] += x[t] · W[n] with x bf16 ([T][K]): the O projection
// (K = query width) and the down projection (K = intermediate size). Grid:
// (N / (GEMV_WARPS GEMV_ROWS), token tiles).
template <int K, typename Wait>
__device__ void gemv_residual_block(int bx, int by, Wait wait, const bf16* ACT_RESTRICT x,
                                    const bf16* __restrict__ W, float* ACT_RESTRICT residual, int T,
                                    int N) {
    const int t0 = tile_first_token(T, by);
    if (t0 < 0) return;
    x += (long)t0 * K;
    residual += (long)t0 * N;
    const int lane = threadIdx.x & 31;
    int rows[GEMV_ROWS];
    bool ok[GEMV_ROWS];
    consecutive_rows(N, bx, rows, ok);
    // Lane 0 adds the warp's rows: it loads them before the wait.
    float old[GEMV_ROWS][GEMV_EARLY_T];
    if (lane == 0) early_residual_rows(residual, rows, ok, T, N, old);
    float acc[GEMV_ROWS][GEMV_MAX_T];
    gemv_rows<K>(W, rows, ok, x, T, acc, wait, [] {});
    if (lane != 0) return;
    add_to_residual_rows(residual, rows, ok, T, N, old, [&](int r, int t) { return acc[r][t]; });
}

// gemv_residual_block with each row's K columns split into GEMV_WARPS
// slices, one per warp of the block, for one GEMV_ROWS-row group per block:
// GEMV_WARPS times the blocks (the O and down products have hidden / 8
// row groups of GEMV_WARPS warps otherwise: 72 blocks at smollm2-135m's
// shape, fewer than the H200's 132 SMs) and a quarter of the loads per
// lane; warp 0 adds the slices' sums in order, through shared memory.
// Another summation order than gemv_residual_block, so other bits, but
// still one order per token whatever shares the step. Launched for a
// product whose K is at least 2,048 unless DYNO_CUDA_GEMV_SPLIT_K says
// otherwise (runner.rs gemv_split_k; docs/CUDA.md); K must be a multiple
// of 8 GEMV_WARPS (16-byte slices): other shapes compile to a trap and are
// never launched. Grid: (N / GEMV_ROWS, token tiles).
template <int K, typename Wait>
__device__ void gemv_residual_split_block(int bx, int by, Wait wait, const bf16* ACT_RESTRICT x,
                                          const bf16* __restrict__ W,
                                          float* ACT_RESTRICT residual, int T, int N) {
    if constexpr (K % (8 * GEMV_WARPS) != 0) {
        __trap();
    } else {
        constexpr int KS = K / GEMV_WARPS;
        const int t0 = tile_first_token(T, by);
        if (t0 < 0) return;
        x += (long)t0 * K;
        residual += (long)t0 * N;
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        int rows[GEMV_ROWS];
        bool ok[GEMV_ROWS];
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++) {
            rows[r] = bx * GEMV_ROWS + r;
            ok[r] = rows[r] < N;
        }
        // Warp 0's lane 0 adds the block's rows: it loads them before the wait.
        const bool adds = warp == 0 && lane == 0;
        float old[GEMV_ROWS][GEMV_EARLY_T];
        if (adds) early_residual_rows(residual, rows, ok, T, N, old);
        float acc[GEMV_ROWS][GEMV_MAX_T];
        gemv_rows<KS, K>(W + warp * KS, rows, ok, x + warp * KS, T, acc, wait, [] {});
        __shared__ float slices[GEMV_WARPS][GEMV_ROWS][GEMV_MAX_T];
        if (lane == 0) {
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
                for (int t = 0; t < GEMV_MAX_T; t++) slices[warp][r][t] = acc[r][t];
        }
        __syncthreads();
        if (!adds) return;
        add_to_residual_rows(residual, rows, ok, T, N, old, [&](int r, int t) {
            float sum = slices[0][r][t];
#pragma unroll
            for (int w = 1; w < GEMV_WARPS; w++) sum += slices[w][r][t];
            return sum;
        });
    }
}

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
    o_proj_residual(const bf16* x, const bf16* W, float* residual, int T, int N) {
    gemv_residual_block<DYNO_QDIM>(blockIdx.x, blockIdx.y, PdlWait{}, x, W, residual, T, N);
}

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
    down_proj_residual(const bf16* x, const bf16* W, float* residual, int T, int N) {
    gemv_residual_block<DYNO_INTER>(blockIdx.x, blockIdx.y, PdlWait{}, x, W, residual, T, N);
}

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
    o_proj_residual_split(const bf16* x, const bf16* W, float* residual, int T, int N) {
    gemv_residual_split_block<DYNO_QDIM>(blockIdx.x, blockIdx.y, PdlWait{}, x, W, residual, T, N);
}

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
    down_proj_residual_split(const bf16* x, const bf16* W, float* residual, int T, int N) {
    gemv_residual_split_block<DYNO_INTER>(blockIdx.x, blockIdx.y, PdlWait{}, x, W, residual, T,
                                          N);
}
