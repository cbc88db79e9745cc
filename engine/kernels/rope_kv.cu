// After the fused QKV GEMM (f32 output): add the q/k/v bias (Qwen2), RMSNorm
// each q and k head (Qwen3), rotate q and k (RoPE, rotate-half convention),
// leave q in place in the qkv buffer, still f32 (attention reads it as is),
// and write k and v, rounded to bf16, into the paged KV cache slot of the
// token. One block per token; a warp takes heads warp, warp + warps, ... (q
// heads, then k heads, then v heads), so any head count fits one block.
//
// A lane holds the rotation pairs (i, i + HD/2) for i = lane, lane + 32, ...
// below HD/2, so any even head dim works (64, 80, 96, 128, 256) and a pair
// is rotated without shuffles.

// One head of one token, for one warp: `head` is the head's HD values in
// the token's f32 qkv row (`L2_LOADS`: read through L2, for a head that
// other blocks of the same kernel wrote), `bias` the head's bias or null,
// `norm_w` its q/k norm or null, `kind` Q (rotated in place), K or V
// (written, rounded to bf16, to `dst`: the head's row in the token's cache
// slot), `cs(j)` the RoPE table's (cos, sin) for the lane's j-th pair
// (i = lane + 32 j) at the token's position. norm_qkv_qk_norm_rope_cache
// (gemv.cu) runs it too, so both paths give the same bits.
enum HeadKind { HEAD_Q = 0, HEAD_K = 1, HEAD_V = 2 };

template <int HD, bool L2_LOADS, typename CosSin>
__device__ __forceinline__ void rope_cache_head(float* head, const bf16* __restrict__ bias,
                                                const bf16* __restrict__ norm_w, int kind,
                                                CosSin cs, bf16* dst, float eps) {
    static_assert(HD % 2 == 0, "rotate-half needs an even head dim");
    constexpr int HALF = HD / 2;
    constexpr int P = (HALF + 31) / 32;  // pairs per lane
    const int lane = threadIdx.x & 31;
    float lo[P], hi[P];
#pragma unroll
    for (int j = 0; j < P; j++) {
        const int i = lane + 32 * j;
        const bool ok = i < HALF;
        lo[j] = ok ? (L2_LOADS ? __ldcg(head + i) : head[i]) : 0.0f;
        hi[j] = ok ? (L2_LOADS ? __ldcg(head + i + HALF) : head[i + HALF]) : 0.0f;
        if (bias && ok) {
            lo[j] += __bfloat162float(bias[i]);
            hi[j] += __bfloat162float(bias[i + HALF]);
        }
    }
    if (kind == HEAD_V) {
#pragma unroll
        for (int j = 0; j < P; j++) {
            const int i = lane + 32 * j;
            if (i < HALF) {
                dst[i] = __float2bfloat16(lo[j]);
                dst[i + HALF] = __float2bfloat16(hi[j]);
            }
        }
        return;
    }
    if (norm_w) {
        // Every product and sum rounded as written (no FMA contraction),
        // so the norm gives the same bits wherever ptxas inlines it: here,
        // and in norm_qkv_qk_norm_rope_cache's last block of a head.
        float ss = 0.0f;
#pragma unroll
        for (int j = 0; j < P; j++)
            ss = __fadd_rn(ss, __fadd_rn(__fmul_rn(lo[j], lo[j]), __fmul_rn(hi[j], hi[j])));
        const float r = rsqrtf(__fadd_rn(__fdiv_rn(warp_sum(ss), (float)HD), eps));
#pragma unroll
        for (int j = 0; j < P; j++) {
            const int i = lane + 32 * j;
            if (i < HALF) {
                lo[j] = __fmul_rn(__fmul_rn(lo[j], r), __bfloat162float(norm_w[i]));
                hi[j] = __fmul_rn(__fmul_rn(hi[j], r), __bfloat162float(norm_w[i + HALF]));
            }
        }
    }
#pragma unroll
    for (int j = 0; j < P; j++) {
        const int i = lane + 32 * j;
        if (i >= HALF) continue;
        const float2 r = rope_rotate(lo[j], hi[j], cs(j));
        if (kind == HEAD_Q) {
            head[i] = r.x;
            head[i + HALF] = r.y;
        } else {
            dst[i] = __float2bfloat16(r.x);
            dst[i + HALF] = __float2bfloat16(r.y);
        }
    }
}

template <int HD>
__device__ void qkv_rope_cache_impl(float* __restrict__ qkv, const bf16* __restrict__ bias,
                                    const bf16* __restrict__ q_norm,
                                    const bf16* __restrict__ k_norm,
                                    const float2* __restrict__ cos_sin,
                                    const int* __restrict__ positions,
                                    const int* __restrict__ slots, bf16* __restrict__ k_cache,
                                    bf16* __restrict__ v_cache, int nq, int nkv, float eps) {
    const int t = blockIdx.x;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int warps = blockDim.x >> 5;
    const int heads = nq + 2 * nkv;
    const long slot = slots[t];
    const float2* cs_row = cos_sin + (long)positions[t] * (HD / 2);
    const auto cs = [&](int j) { return cs_row[lane + 32 * j]; };
    for (int hd = warp; hd < heads; hd += warps) {
        const int kind = hd < nq ? HEAD_Q : hd < nq + nkv ? HEAD_K : HEAD_V;
        bf16* dst = kind == HEAD_K   ? k_cache + kv_row(slot, hd - nq, nkv, HD)
                    : kind == HEAD_V ? v_cache + kv_row(slot, hd - nq - nkv, nkv, HD)
                                     : nullptr;
        rope_cache_head<HD, false>(qkv + ((long)t * heads + hd) * HD, bias ? bias + hd * HD : nullptr,
                                   kind == HEAD_Q ? q_norm : kind == HEAD_K ? k_norm : nullptr,
                                   kind, cs, dst, eps);
    }
}

extern "C" __global__ void qkv_rope_cache(float* qkv, const bf16* bias, const bf16* q_norm,
                                          const bf16* k_norm, const float2* cos_sin,
                                          const int* positions, const int* slots, bf16* k_cache,
                                          bf16* v_cache, int nq, int nkv, float eps) {
    pdl_wait();
    pdl_launch();
    qkv_rope_cache_impl<DYNO_HEAD_DIM>(qkv, bias, q_norm, k_norm, cos_sin, positions, slots,
                                       k_cache, v_cache, nq, nkv, eps);
}
