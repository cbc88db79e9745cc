// Embedding gather and RMSNorm kernels. The residual stream is kept in f32
// (one row per token); normalized activations are bf16 GEMM inputs.

// residual[t] = emb[tokens[t]]; out[t] = rmsnorm(residual[t]) * w
extern "C" __global__ void embed_rmsnorm(const int* __restrict__ tokens,
                                         const bf16* __restrict__ emb,
                                         const bf16* __restrict__ w,
                                         float* __restrict__ residual,
                                         bf16* __restrict__ out, int hidden, float eps) {
    __shared__ float scratch[32];
    pdl_wait();
    pdl_launch();
    const long t = blockIdx.x;
    const bf16* row = emb + (long)tokens[t] * hidden;
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
// never passes through bf16).
extern "C" __global__ void add_rmsnorm(const float* __restrict__ x, float* __restrict__ residual,
                                       const bf16* __restrict__ w, bf16* __restrict__ out,
                                       int hidden, float eps) {
    __shared__ float scratch[32];
    pdl_wait();
    pdl_launch();
    const long t = blockIdx.x;
    float* res = residual + t * hidden;
    const float* xr = x + t * hidden;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = res[i] + xr[i];
        res[i] = v;
        ss += v * v;
    }
    const float r = rsqrtf(block_sum(ss, scratch) / hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        out[t * hidden + i] = __float2bfloat16(res[i] * r * __bfloat162float(w[i]));
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
