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
template <int HD>
__device__ void qkv_rope_cache_impl(float* __restrict__ qkv, const bf16* __restrict__ bias,
                                    const bf16* __restrict__ q_norm,
                                    const bf16* __restrict__ k_norm,
                                    const float2* __restrict__ cos_sin,
                                    const int* __restrict__ positions,
                                    const int* __restrict__ slots, bf16* __restrict__ k_cache,
                                    bf16* __restrict__ v_cache, int nq, int nkv, float eps) {
    static_assert(HD % 2 == 0, "rotate-half needs an even head dim");
    constexpr int HALF = HD / 2;
    constexpr int P = (HALF + 31) / 32;  // pairs per lane
    const int t = blockIdx.x;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int warps = blockDim.x >> 5;
    const int heads = nq + 2 * nkv;
    const int row_len = heads * HD;
    const long slot = slots[t];
    const float2* cs = cos_sin + (long)positions[t] * HALF;
    for (int hd = warp; hd < heads; hd += warps) {
        float* head = qkv + (long)t * row_len + hd * HD;
        float lo[P], hi[P];
#pragma unroll
        for (int j = 0; j < P; j++) {
            const int i = lane + 32 * j;
            const bool ok = i < HALF;
            lo[j] = ok ? head[i] : 0.0f;
            hi[j] = ok ? head[i + HALF] : 0.0f;
            if (bias && ok) {
                lo[j] += __bfloat162float(bias[hd * HD + i]);
                hi[j] += __bfloat162float(bias[hd * HD + i + HALF]);
            }
        }
        if (hd >= nq + nkv) {
            bf16* dst = v_cache + (slot * nkv + (hd - nq - nkv)) * HD;
#pragma unroll
            for (int j = 0; j < P; j++) {
                const int i = lane + 32 * j;
                if (i < HALF) {
                    dst[i] = __float2bfloat16(lo[j]);
                    dst[i + HALF] = __float2bfloat16(hi[j]);
                }
            }
            continue;
        }
        const bool is_q = hd < nq;
        const bf16* norm_w = is_q ? q_norm : k_norm;
        if (norm_w) {
            float ss = 0.0f;
#pragma unroll
            for (int j = 0; j < P; j++) ss += lo[j] * lo[j] + hi[j] * hi[j];
            const float r = rsqrtf(warp_sum(ss) / HD + eps);
#pragma unroll
            for (int j = 0; j < P; j++) {
                const int i = lane + 32 * j;
                if (i < HALF) {
                    lo[j] = lo[j] * r * __bfloat162float(norm_w[i]);
                    hi[j] = hi[j] * r * __bfloat162float(norm_w[i + HALF]);
                }
            }
        }
#pragma unroll
        for (int j = 0; j < P; j++) {
            const int i = lane + 32 * j;
            if (i >= HALF) continue;
            const float2 c = cs[i];
            const float2 r = rope_rotate(lo[j], hi[j], c);
            const float y0 = r.x, y1 = r.y;
            if (is_q) {
                head[i] = y0;
                head[i + HALF] = y1;
            } else {
                bf16* dst = k_cache + (slot * nkv + (hd - nq)) * HD;
                dst[i] = __float2bfloat16(y0);
                dst[i + HALF] = __float2bfloat16(y1);
            }
        }
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
