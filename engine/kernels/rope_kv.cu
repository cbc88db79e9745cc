// After the fused QKV GEMM (f32 output): add the q/k/v bias (Qwen2), RMSNorm
// each q and k head (Qwen3), rotate q and k (RoPE, rotate-half convention),
// leave q in place in the qkv buffer, still f32 (attention reads it as is),
// and write k and v, rounded to bf16, into the paged KV cache slot of the
// token. One block per token, one warp per head (q heads, k heads, v heads).
//
// A lane holds HD/32 consecutive elements: lanes 0-15 the first half of the
// head, lanes 16-31 the second, so the rotation partner is lane ^ 16.
template <int HD>
__device__ void qkv_rope_cache_impl(float* __restrict__ qkv, const bf16* __restrict__ bias,
                                    const bf16* __restrict__ q_norm,
                                    const bf16* __restrict__ k_norm,
                                    const float2* __restrict__ cos_sin,
                                    const int* __restrict__ positions,
                                    const int* __restrict__ slots, bf16* __restrict__ k_cache,
                                    bf16* __restrict__ v_cache, int nq, int nkv, float eps) {
    constexpr int E = HD / 32;
    const int t = blockIdx.x;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int heads = nq + 2 * nkv;
    if (warp >= heads) return;
    const int row_len = heads * HD;
    float* head = qkv + (long)t * row_len + warp * HD + lane * E;
    float x[E];
#pragma unroll
    for (int e = 0; e < E; e++) {
        x[e] = head[e];
        if (bias) x[e] += __bfloat162float(bias[warp * HD + lane * E + e]);
    }
    const bool is_v = warp >= nq + nkv;
    const long slot = slots[t];
    if (is_v) {
        bf16* dst = v_cache + (slot * nkv + (warp - nq - nkv)) * HD + lane * E;
#pragma unroll
        for (int e = 0; e < E; e++) dst[e] = __float2bfloat16(x[e]);
        return;
    }
    const bool is_q = warp < nq;
    const bf16* norm_w = is_q ? q_norm : k_norm;
    if (norm_w) {
        float ss = 0.0f;
#pragma unroll
        for (int e = 0; e < E; e++) ss += x[e] * x[e];
        const float r = rsqrtf(warp_sum(ss) / HD + eps);
#pragma unroll
        for (int e = 0; e < E; e++) x[e] = x[e] * r * __bfloat162float(norm_w[lane * E + e]);
    }
    const float2* cs = cos_sin + (long)positions[t] * (HD / 2) + (lane & 15) * E;
    const float sign = lane < 16 ? -1.0f : 1.0f;
    float y[E];
#pragma unroll
    for (int e = 0; e < E; e++) {
        const float partner = __shfl_xor_sync(0xffffffffu, x[e], 16);
        const float2 c = cs[e];
        y[e] = x[e] * c.x + sign * partner * c.y;
    }
    if (is_q) {
#pragma unroll
        for (int e = 0; e < E; e++) head[e] = y[e];
    } else {
        bf16* dst = k_cache + (slot * nkv + (warp - nq)) * HD + lane * E;
#pragma unroll
        for (int e = 0; e < E; e++) dst[e] = __float2bfloat16(y[e]);
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
