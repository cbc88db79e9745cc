// SiLU(gate) * up over the fused gate-up GEMM output [T, 2I] (gate first),
// f32 so that the product is rounded to bf16 once, as the down GEMM's input.
// Grid: y walks the tokens, x the row. Where I is a multiple of 4 a thread
// takes 4 neighbours (16-byte loads, one 8-byte store), so no thread divides
// a flat index by I; both paths compute each element with the same
// expression and rounding, so their results are the same bits.
__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

extern "C" __global__ void silu_mul(const float* __restrict__ gate_up, bf16* __restrict__ out,
                                    int tokens, int inter) {
    pdl_wait();
    pdl_launch();
    const int stride = gridDim.x * blockDim.x;
    for (int t = blockIdx.y; t < tokens; t += gridDim.y) {
        const float* gate = gate_up + (long)t * 2 * inter;
        const float* up = gate + inter;
        bf16* o = out + (long)t * inter;
        if ((inter & 3) == 0) {
            const float4* g4 = reinterpret_cast<const float4*>(gate);
            const float4* u4 = reinterpret_cast<const float4*>(up);
            for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < inter / 4; j += stride) {
                const float4 g = g4[j], u = u4[j];
                const __nv_bfloat162 lo = __floats2bfloat162_rn(silu_times(g.x, u.x), silu_times(g.y, u.y));
                const __nv_bfloat162 hi = __floats2bfloat162_rn(silu_times(g.z, u.z), silu_times(g.w, u.w));
                uint2 packed;
                packed.x = *reinterpret_cast<const unsigned*>(&lo);
                packed.y = *reinterpret_cast<const unsigned*>(&hi);
                reinterpret_cast<uint2*>(o)[j] = packed;
            }
        } else {
            for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < inter; j += stride)
                o[j] = __float2bfloat16(silu_times(gate[j], up[j]));
        }
    }
}
