// Embedding gather and RMSNorm kernels. The residual stream is kept in f32
// (one row per token); normalized activations are bf16 GEMM inputs.

// residual[t] = emb[tokens[t]]; out[t] = rmsnorm(residual[t]) * w
// A token with the top bit set (PENDING_TOKEN, backend/mod.rs) is the one
// the previous step sampled in row `token & 0x7fffffff` of `sampled`
// (pipelined stepping: the host had not seen it when it packed this step);
// a row past the vocabulary (the non-finite marker) reads as token 0, and
// the engine drops that sequence's row.
extern "C" __global__ void embed_rmsnorm(const unsigned* __restrict__ tokens,
                                         const bf16* __restrict__ emb,
                                         const bf16* __restrict__ w,
                                         float* __restrict__ residual,
                                         bf16* __restrict__ out, int hidden, float eps,
                                         const unsigned* __restrict__ sampled, int vocab) {
    __shared__ float scratch[32];
    pdl_wait();
    pdl_launch();
    const long t = blockIdx.x;
    unsigned token = tokens[t];
    if (token & 0x80000000u) {
        token = sampled[token & 0x7fffffffu];
        if (token >= (unsigned)vocab) token = 0;
    }
    const bf16* row = emb + (long)token * hidden;
    float* res = residual + t * hidden;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = __bfloat162float(row[i]);
        res[i] = v;
        ss += v * v;
    }
    const float r = rsqrtf(block_sum(ss, scratch) / hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        out[t * hidden + i] = __float2bfloat16(res[i] * r * __bfloat162float(w[i]));
}

// residual[t] += x[t]; out[t] = rmsnorm(residual[t]) * w. `x` is the f32
// output of the o_proj / down_proj GEMM (kept in f32 so the residual stream
// never passes through bf16). One warp per token (ADD_RMSNORM_WARPS tokens
// per block, -D from kernels.rs): 16-byte loads, the row held in registers
// between the sum and the scaling where it fits (hidden <=
// ADD_RMSNORM_REG_HIDDEN; wider rows read the residual back), and the sum
// is a warp's shuffles, with no block barrier. A token's sum has one order
// whatever the grid, so the result does not depend on the step's other
// tokens (batch invariance).
#define ADD_RMSNORM_REG_HIDDEN 2048
extern "C" __global__ void __launch_bounds__(ADD_RMSNORM_WARPS * 32)
    add_rmsnorm(const float* __restrict__ x, float* __restrict__ residual,
                const bf16* __restrict__ w, bf16* __restrict__ out, int tokens, float eps) {
    constexpr int K = DYNO_HIDDEN;
    pdl_wait();
    pdl_launch();
    const int lane = threadIdx.x & 31;
    const long t = (long)blockIdx.x * ADD_RMSNORM_WARPS + (threadIdx.x >> 5);
    if (t >= tokens) return;
    float* res = residual + t * K;
    const float* xr = x + t * K;
    bf16* o = out + t * K;
    float ss = 0.0f;
    if constexpr (K % 4 == 0 && K <= ADD_RMSNORM_REG_HIDDEN) {
        constexpr int N4 = (K / 4 + 31) / 32;  // float4s per lane
        float4 v[N4];
#pragma unroll
        for (int i = 0; i < N4; i++) {
            const int j = lane + 32 * i;
            if (j < K / 4) {
                const float4 a = reinterpret_cast<const float4*>(res)[j];
                const float4 b = reinterpret_cast<const float4*>(xr)[j];
                v[i] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
                reinterpret_cast<float4*>(res)[j] = v[i];
                ss += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
            }
        }
        const float r = rsqrtf(warp_sum(ss) / K + eps);
#pragma unroll
        for (int i = 0; i < N4; i++) {
            const int j = lane + 32 * i;
            if (j < K / 4) {
                const __nv_bfloat162 w01 = reinterpret_cast<const __nv_bfloat162*>(w)[2 * j];
                const __nv_bfloat162 w23 = reinterpret_cast<const __nv_bfloat162*>(w)[2 * j + 1];
                const __nv_bfloat162 lo = __floats2bfloat162_rn(v[i].x * r * __low2float(w01),
                                                                v[i].y * r * __high2float(w01));
                const __nv_bfloat162 hi = __floats2bfloat162_rn(v[i].z * r * __low2float(w23),
                                                                v[i].w * r * __high2float(w23));
                uint2 packed;
                packed.x = *reinterpret_cast<const unsigned*>(&lo);
                packed.y = *reinterpret_cast<const unsigned*>(&hi);
                reinterpret_cast<uint2*>(o)[j] = packed;
            }
        }
    } else {
        for (int i = lane; i < K; i += 32) {
            const float v = res[i] + xr[i];
            res[i] = v;
            ss += v * v;
        }
        const float r = rsqrtf(warp_sum(ss) / K + eps);
        __syncwarp();
        for (int i = lane; i < K; i += 32) o[i] = __float2bfloat16(res[i] * r * __bfloat162float(w[i]));
    }
}

// The model's last norm, only for the rows that are turned into logits:
// out[s] = rmsnorm(residual[rows[s]] + x[rows[s]]) * w. The residual is not
// written back (no later layer reads it). `x` is null when the last layer
// already added its output into the residual (the small-batch path).
extern "C" __global__ void final_rmsnorm_rows(const int* __restrict__ rows,
                                              const float* __restrict__ x,
                                              const float* __restrict__ residual,
                                              const bf16* __restrict__ w, bf16* __restrict__ out,
                                              int hidden, float eps) {
    __shared__ float scratch[32];
    pdl_wait();
    pdl_launch();
    const long s = blockIdx.x;
    const long t = rows[s];
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = residual[t * hidden + i] + (x ? x[t * hidden + i] : 0.0f);
        ss += v * v;
    }
    const float r = rsqrtf(block_sum(ss, scratch) / hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = residual[t * hidden + i] + (x ? x[t * hidden + i] : 0.0f);
        out[s * hidden + i] = __float2bfloat16(v * r * __bfloat162float(w[i]));
    }
}
