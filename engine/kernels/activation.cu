// SiLU(gate) * up over the fused gate-up GEMM output [T, 2I] (gate first),
// f32 so that the product is rounded to bf16 once, as the down GEMM's input.
extern "C" __global__ void silu_mul(const float* __restrict__ gate_up, bf16* __restrict__ out,
                                    int tokens, int inter) {
    pdl_wait();
    pdl_launch();
    const long n = (long)tokens * inter;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        const long t = i / inter, j = i - t * inter;
        const float g = gate_up[t * 2 * inter + j];
        const float u = gate_up[t * 2 * inter + inter + j];
        out[i] = __float2bfloat16(g / (1.0f + __expf(-g)) * u);
    }
}
