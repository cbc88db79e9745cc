// Greedy argmax and seeded sampling on the device, one block (1024 threads)
// per row of f32 logits. The algorithm is crate::sampler's, step for step:
// greedy = lowest id among the largest non-NaN logits; otherwise scale by
// 1/temperature, keep the top-k of the ranking (value desc, id asc), keep the
// shortest ranked prefix reaching top_p of the mass, then walk the kept
// tokens in ascending id until the running mass exceeds uniform(seed, index)
// times the kept mass. Thresholds on the ranking are found by bisection on
// an order-preserving integer key of the scaled logit, ties by id with a
// block-wide prefix scan, so nothing is sorted. Sums run in parallel, so a
// draw that lands within rounding of a boundary may differ from the CPU's.
#define SAMPLE_THREADS 1024

__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ float uniform01(unsigned long long seed, unsigned index) {
    const unsigned long long bits = mix64(mix64(seed) ^ (unsigned long long)index) >> 40;
    return (float)bits * (1.0f / 16777216.0f);
}

// Larger key = larger value; -inf (and NaN mapped to -inf) sort lowest.
__device__ __forceinline__ unsigned order_key(float v) {
    const unsigned b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float scaled_logit(const float* row, int i, float inv_t) {
    const float v = row[i];
    return isnan(v) ? -INFINITY : v * inv_t;
}

struct BestIdx {
    float v;
    int i;
};

// (v, i) beats (bv, bi): bi unset, a larger value, or equal value lower id.
__device__ __forceinline__ bool better(float v, int i, float bv, int bi, int unset) {
    return bi == unset || v > bv || (v == bv && i < bi);
}

// The warp's best (bv, bi) by `better`, in every lane; `unset` (bi ==
// vocab) entries lose.
__device__ __forceinline__ void warp_argmax(float& bv, int& bi, int vocab) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (oi != vocab && better(ov, oi, bv, bi, vocab)) {
            bv = ov;
            bi = oi;
        }
    }
}

// The row's argmax (lowest id among equal maxima); `nonfinite` is set, in
// every thread, to whether any logit is NaN or infinite. The greedy path
// gets that check from this one pass over the row instead of a second one
// (measured: the separate pass cost 2.5 % of batch-1 decode speed).
__device__ int block_argmax(const float* row, int vocab, bool& nonfinite) {
    __shared__ float sv[32];
    __shared__ int si[32];
    float bv = -INFINITY;
    int bi = vocab;
    int bad = 0;
    // Batches of 16 independent loads: one memory round trip per batch
    // instead of one per element.
    constexpr int BATCH = 16;
    for (int first = threadIdx.x; first < vocab; first += BATCH * blockDim.x) {
        float v[BATCH];
#pragma unroll
        for (int u = 0; u < BATCH; u++) {
            const int i = first + u * blockDim.x;
            v[u] = i < vocab ? row[i] : NAN;
        }
#pragma unroll
        for (int u = 0; u < BATCH; u++) {
            const int i = first + u * blockDim.x;
            bad |= i < vocab && !isfinite(v[u]);
            if (!isnan(v[u]) && better(v[u], i, bv, bi, vocab)) {
                bv = v[u];
                bi = i;
            }
        }
    }
    warp_argmax(bv, bi, vocab);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) {
        sv[warp] = bv;
        si[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
        bv = sv[lane];
        bi = si[lane];
        warp_argmax(bv, bi, vocab);
        if (lane == 0) si[0] = bi == vocab ? 0 : bi;
    }
    nonfinite = __syncthreads_or(bad) != 0;
    return si[0];
}

// Exclusive prefix sum over threads (block of SAMPLE_THREADS); returns this
// thread's exclusive prefix and writes the block total.
__device__ float block_exclusive_scan(float v, float* total) {
    __shared__ float warp_sums[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    __syncthreads();
    if (lane == 31) warp_sums[warp] = x;
    __syncthreads();
    if (warp == 0) {
        float w = warp_sums[lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const float y = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += y;
        }
        warp_sums[lane] = w;
    }
    __syncthreads();
    const float before_warp = warp > 0 ? warp_sums[warp - 1] : 0.0f;
    *total = warp_sums[31];
    return before_warp + x - v;
}

// State of the kept set: token i is kept when its key is above `k_key`, or
// equal and i <= k_id (top-k), and likewise for (p_key, p_id) (top-p).
struct Kept {
    unsigned k_key;
    int k_id;
    unsigned p_key;
    int p_id;
    __device__ bool keeps(unsigned key, int i) const {
        return (key > k_key || (key == k_key && i <= k_id)) &&
               (key > p_key || (key == p_key && i <= p_id));
    }
};

// The id of the token where a running sum over ids (of `weight(i)`) first
// reaches `target` (strictly exceeds it when `strict`), or -1. Threads own
// contiguous id chunks so the scan visits ids in ascending order.
template <typename W>
__device__ int first_crossing(int vocab, float target, bool strict, W weight) {
    __shared__ int found;
    const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
    const int lo = min(vocab, (int)threadIdx.x * chunk), hi = min(vocab, lo + chunk);
    float mine = 0.0f;
    for (int i = lo; i < hi; i++) mine += weight(i);
    float total;
    float run = block_exclusive_scan(mine, &total);
    if (threadIdx.x == 0) found = -1;
    __syncthreads();
    const bool crosses = strict ? (run + mine > target) : (run + mine >= target);
    const bool before = strict ? (run > target) : (run >= target);
    if (crosses && !before && hi > lo) {
        for (int i = lo; i < hi; i++) {
            run += weight(i);
            if (strict ? (run > target) : (run >= target)) {
                atomicCAS(&found, -1, i);
                break;
            }
        }
    }
    __syncthreads();
    const int r = found;
    __syncthreads();
    return r;
}

// Whether any logit of the row is NaN or infinite (broken weights or
// numerics). Such a row is not sampled: its output is 0xFFFFFFFF
// (backend::NONFINITE_LOGITS) and the engine stops the request. The result
// is the same in every thread, so the early return is block-uniform.
__device__ bool row_nonfinite(const float* row, int vocab) {
    int bad = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) bad |= !isfinite(row[i]);
    return __syncthreads_or(bad) != 0;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_rows(const float* __restrict__ logits, int vocab, const float* __restrict__ temperature,
                const int* __restrict__ top_k, const float* __restrict__ top_p,
                const unsigned* __restrict__ seed_lo, const unsigned* __restrict__ seed_hi,
                const unsigned* __restrict__ draw_index, unsigned* __restrict__ out) {
    __shared__ float scratch[32];
    pdl_wait();
    pdl_launch();
    const int s = blockIdx.x;
    const float* row = logits + (long)s * vocab;
    const float temp = temperature[s];
    if (!(temp > 0.0f)) {
        bool nonfinite;
        const int best = block_argmax(row, vocab, nonfinite);
        if (threadIdx.x == 0) out[s] = nonfinite ? 0xFFFFFFFFu : best;
        return;
    }
    if (row_nonfinite(row, vocab)) {
        if (threadIdx.x == 0) out[s] = 0xFFFFFFFFu;
        return;
    }
    const float inv_t = 1.0f / temp;
    const int k = top_k[s];
    const float p = top_p[s];
    Kept kept = {0u, vocab, 0u, vocab};

    // Top-k: the largest key K with count(key >= K) >= k, then the ties at K
    // with the lowest ids until k tokens are kept.
    if (k > 0 && k < vocab) {
        unsigned ans = 0;
        for (int bit = 31; bit >= 0; bit--) {
            const unsigned cand = ans | (1u << bit);
            float c = 0.0f;
            for (int i = threadIdx.x; i < vocab; i += blockDim.x)
                c += order_key(scaled_logit(row, i, inv_t)) >= cand ? 1.0f : 0.0f;
            if (block_sum(c, scratch) >= (float)k) ans = cand;
        }
        float above = 0.0f;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x)
            above += order_key(scaled_logit(row, i, inv_t)) > ans ? 1.0f : 0.0f;
        above = block_sum(above, scratch);
        const float need = (float)k - above;
        const unsigned key_k = ans;
        const int id = first_crossing(vocab, need, false, [&](int i) {
            return order_key(scaled_logit(row, i, inv_t)) == key_k ? 1.0f : 0.0f;
        });
        kept.k_key = ans;
        kept.k_id = id < 0 ? vocab : id;
    }

    float mx = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, scaled_logit(row, i, inv_t));
    mx = block_max(mx, scratch);
    if (mx == -INFINITY) {
        bool nonfinite;  // known false: row_nonfinite passed
        const int best = block_argmax(row, vocab, nonfinite);
        if (threadIdx.x == 0) out[s] = best;
        return;
    }
    auto prob = [&](int i) { return __expf(scaled_logit(row, i, inv_t) - mx); };

    // Top-p: the largest key K whose ranked mass (keys >= K) reaches the
    // target, then the ties at K in id order until it is reached.
    if (p < 1.0f) {
        float total = 0.0f;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            const unsigned key = order_key(scaled_logit(row, i, inv_t));
            if (kept.keeps(key, i)) total += prob(i);
        }
        total = block_sum(total, scratch);
        const float target = fmaxf(p, 0.0f) * total;
        unsigned ans = 0;
        for (int bit = 31; bit >= 0; bit--) {
            const unsigned cand = ans | (1u << bit);
            float mass = 0.0f, count = 0.0f;
            for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
                const unsigned key = order_key(scaled_logit(row, i, inv_t));
                if (key >= cand && kept.keeps(key, i)) {
                    mass += prob(i);
                    count += 1.0f;
                }
            }
            mass = block_sum(mass, scratch);
            count = block_sum(count, scratch);
            if (count >= 1.0f && mass >= target) ans = cand;
        }
        float above = 0.0f;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            const unsigned key = order_key(scaled_logit(row, i, inv_t));
            if (key > ans && kept.keeps(key, i)) above += prob(i);
        }
        above = block_sum(above, scratch);
        const unsigned key_p = ans;
        const Kept topk_only = kept;
        const int id = first_crossing(vocab, target - above, false, [&](int i) {
            const unsigned key = order_key(scaled_logit(row, i, inv_t));
            return key == key_p && topk_only.keeps(key, i) ? prob(i) : 0.0f;
        });
        kept.p_key = ans;
        kept.p_id = id < 0 ? vocab : id;
    }

    float kept_total = 0.0f;
    int last_kept = -1;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        if (kept.keeps(order_key(scaled_logit(row, i, inv_t)), i)) {
            kept_total += prob(i);
            last_kept = i;
        }
    }
    kept_total = block_sum(kept_total, scratch);
    const float last = block_max((float)last_kept, scratch);
    const unsigned long long seed = ((unsigned long long)seed_hi[s] << 32) | seed_lo[s];
    const float threshold = uniform01(seed, draw_index[s]) * kept_total;
    const int id = first_crossing(vocab, threshold, true, [&](int i) {
        return kept.keeps(order_key(scaled_logit(row, i, inv_t)), i) ? prob(i) : 0.0f;
    });
    if (threadIdx.x == 0) out[s] = id >= 0 ? id : (int)last;
}
