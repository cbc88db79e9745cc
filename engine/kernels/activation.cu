// SiLU(gate) * up over the fused gate-up GEMM output [T, 2I] (gate first).
extern "C" __global__ void silu_mul(const bf16* __restrict__ gate_up, bf16* __restrict__ out,
                                    int tokens, int inter) {
    const long n = (long)tokens * inter;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        const long t = i / inter, j = i - t * inter;
        const float g = __bfloat162float(gate_up[t * 2 * inter + j]);
        const float u = __bfloat162float(gate_up[t * 2 * inter + inter + j]);
        out[i] = __float2bfloat16(g / (1.0f + __expf(-g)) * u);
    }
}
