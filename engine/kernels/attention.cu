// Paged causal attention over the KV cache, flash-decoding style.
//
// Every query token t (a decode token or a token of a prefill chunk) attends
// to keys 0..=positions[t] of its sequence, all of them already in the cache
// (qkv_rope_cache ran first), so chunked prefill and decode are one case.
// Grid: (query tokens, kv heads, splits). A block (4 warps) handles one kv
// head for all the query heads that share it (GQA) over one split of the
// context; each warp walks every 4th key with an online softmax. With one
// split the block writes the normalized output; otherwise it writes its
// unnormalized partial sums and attention_reduce combines the splits.
#define ATTN_WARPS 4
#define MAX_GROUP 8
#define KEYS_PER_ITER 2

template <int HD>
__device__ void attention_impl(const bf16* __restrict__ qkv, const bf16* __restrict__ k_cache,
                               const bf16* __restrict__ v_cache,
                               const int* __restrict__ positions,
                               const int* __restrict__ seq_idx,
                               const int* __restrict__ block_tables,
                               const int* __restrict__ bt_stride_ptr, int block_size, int nq,
                               int nkv, float scale, bf16* __restrict__ out,
                               float* __restrict__ part_acc, float* __restrict__ part_ml) {
    constexpr int E = HD / 32;
    __shared__ float s_m[ATTN_WARPS][MAX_GROUP];
    __shared__ float s_l[ATTN_WARPS][MAX_GROUP];
    __shared__ float s_acc[ATTN_WARPS][MAX_GROUP][HD];

    const int t = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z, nsplit = gridDim.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int group = nq / nkv;
    const int ctx = positions[t] + 1;
    const int chunk = (ctx + nsplit - 1) / nsplit;
    const int begin = split * chunk;
    const int end = min(ctx, begin + chunk);
    const int* table = block_tables + (long)seq_idx[t] * (*bt_stride_ptr);
    const int row_len = (nq + 2 * nkv) * HD;

    float q[MAX_GROUP][E];
#pragma unroll
    for (int g = 0; g < MAX_GROUP; g++) {
        if (g < group) {
            const bf16* qp = qkv + (long)t * row_len + (kvh * group + g) * HD + lane * E;
#pragma unroll
            for (int e = 0; e < E; e++) q[g][e] = __bfloat162float(qp[e]) * scale;
        }
    }
    float m[MAX_GROUP], l[MAX_GROUP], acc[MAX_GROUP][E];
#pragma unroll
    for (int g = 0; g < MAX_GROUP; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < E; e++) acc[g][e] = 0.0f;
    }

    for (int base = begin + warp * KEYS_PER_ITER; base < end;
         base += ATTN_WARPS * KEYS_PER_ITER) {
        float kf[KEYS_PER_ITER][E], vf[KEYS_PER_ITER][E];
        bool valid[KEYS_PER_ITER];
#pragma unroll
        for (int u = 0; u < KEYS_PER_ITER; u++) {
            const int pos = base + u;
            valid[u] = pos < end;
            const int p = valid[u] ? pos : begin;
            const long slot = (long)table[p / block_size] * block_size + (p % block_size);
            const bf16* kp = k_cache + (slot * nkv + kvh) * HD + lane * E;
            const bf16* vp = v_cache + (slot * nkv + kvh) * HD + lane * E;
#pragma unroll
            for (int e = 0; e < E; e++) {
                kf[u][e] = __bfloat162float(kp[e]);
                vf[u][e] = __bfloat162float(vp[e]);
            }
        }
#pragma unroll
        for (int g = 0; g < MAX_GROUP; g++) {
            if (g < group) {
                float s[KEYS_PER_ITER];
                float smax = -INFINITY;
#pragma unroll
                for (int u = 0; u < KEYS_PER_ITER; u++) {
                    float d = 0.0f;
#pragma unroll
                    for (int e = 0; e < E; e++) d += q[g][e] * kf[u][e];
                    d = warp_sum(d);
                    s[u] = valid[u] ? d : -INFINITY;
                    smax = fmaxf(smax, s[u]);
                }
                const float m_new = fmaxf(m[g], smax);
                const float corr = __expf(m[g] - m_new);
                l[g] *= corr;
#pragma unroll
                for (int e = 0; e < E; e++) acc[g][e] *= corr;
#pragma unroll
                for (int u = 0; u < KEYS_PER_ITER; u++) {
                    const float p = __expf(s[u] - m_new);
                    l[g] += p;
#pragma unroll
                    for (int e = 0; e < E; e++) acc[g][e] += p * vf[u][e];
                }
                m[g] = m_new;
            }
        }
    }

#pragma unroll
    for (int g = 0; g < MAX_GROUP; g++) {
        if (g < group) {
            if (lane == 0) {
                s_m[warp][g] = m[g];
                s_l[warp][g] = l[g];
            }
#pragma unroll
            for (int e = 0; e < E; e++) s_acc[warp][g][lane * E + e] = acc[g][e];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < group * HD; i += blockDim.x) {
        const int g = i / HD, d = i - g * HD;
        float mm = -INFINITY;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; w++) mm = fmaxf(mm, s_m[w][g]);
        float ll = 0.0f, aa = 0.0f;
        if (mm != -INFINITY) {
#pragma unroll
            for (int w = 0; w < ATTN_WARPS; w++) {
                const float f = __expf(s_m[w][g] - mm);
                ll += s_l[w][g] * f;
                aa += s_acc[w][g][d] * f;
            }
        }
        const int h = kvh * group + g;
        if (nsplit == 1) {
            out[((long)t * nq + h) * HD + d] = __float2bfloat16(aa / ll);
        } else {
            const long p = ((long)t * nq + h) * nsplit + split;
            part_acc[p * HD + d] = aa;
            if (d == 0) {
                part_ml[2 * p] = mm;
                part_ml[2 * p + 1] = ll;
            }
        }
    }
}

// Combines the splits of one (query token, head): grid (tokens, nq), HD threads.
template <int HD>
__device__ void attention_reduce_impl(const float* __restrict__ part_acc,
                                      const float* __restrict__ part_ml, int nsplit, int nq,
                                      bf16* __restrict__ out) {
    const int t = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    const long base = ((long)t * nq + h) * nsplit;
    float mm = -INFINITY;
    for (int z = 0; z < nsplit; z++) mm = fmaxf(mm, part_ml[2 * (base + z)]);
    float ll = 0.0f, aa = 0.0f;
    for (int z = 0; z < nsplit; z++) {
        const float mz = part_ml[2 * (base + z)];
        if (mz == -INFINITY) continue;
        const float f = __expf(mz - mm);
        ll += part_ml[2 * (base + z) + 1] * f;
        aa += part_acc[(base + z) * HD + d] * f;
    }
    out[((long)t * nq + h) * HD + d] = __float2bfloat16(aa / ll);
}

#define ATTENTION(HD)                                                                           \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32) attention_hd##HD(             \
        const bf16* qkv, const bf16* k_cache, const bf16* v_cache, const int* positions,        \
        const int* seq_idx, const int* block_tables, const int* bt_stride, int block_size,      \
        int nq, int nkv, float scale, bf16* out, float* part_acc, float* part_ml) {             \
        attention_impl<HD>(qkv, k_cache, v_cache, positions, seq_idx, block_tables, bt_stride,  \
                           block_size, nq, nkv, scale, out, part_acc, part_ml);                 \
    }                                                                                           \
    extern "C" __global__ void attention_reduce_hd##HD(const float* part_acc,                   \
                                                       const float* part_ml, int nsplit, int nq, \
                                                       bf16* out) {                             \
        attention_reduce_impl<HD>(part_acc, part_ml, nsplit, nq, out);                          \
    }
ATTENTION(64)
ATTENTION(128)
ATTENTION(256)
