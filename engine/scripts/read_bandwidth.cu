// What the GPU's memory actually delivers to a kernel that only reads: the
// denominator for "percent of the hardware limit" (issue 15 quotes ~4.3
// TB/s for the H200's HBM3e, whose data-sheet peak is 4.8). On the GPU
// machine, no cargo needed:
//   nvcc -O3 -arch=sm_90 engine/scripts/read_bandwidth.cu -o /tmp/read_bw && /tmp/read_bw [GiB]
// Reads a buffer of GiB (default 4: far past the 50 MB L2) in three ways,
// each timed with CUDA events over 20 launches after 3 warm-ups, and
// prints the median and best TB/s (10^12 bytes/s) of the launches:
//   stream   every thread reads 16-byte words, grid-stride, whole grid
//   chunks   one warp per chunk of CHUNK bytes (2 KiB: one KV block of
//            16 tokens × 128 bytes, as the head-major cache holds a kv
//            head's keys for smollm2-135m), chunks visited in a shuffled
//            order, 16 warps per SM resident: the attention kernel's
//            access pattern without its arithmetic
//   chunks-4 the same with 4 chunks per warp in flight at once
// A sum of what was read is written per block so that no load is dead.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#define CHECK(x)                                                                      \
    do {                                                                              \
        cudaError_t e = (x);                                                          \
        if (e != cudaSuccess) {                                                       \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x,                \
                    cudaGetErrorString(e));                                           \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

__global__ void stream_read(const uint4* __restrict__ p, size_t n, unsigned* out) {
    unsigned acc = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const uint4 v = __ldg(p + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x12345678u) out[blockIdx.x] = acc;  // never true in practice; keeps the loads
}

// Warp w takes chunks order[w], order[w + warps], ...; IN_FLIGHT chunks per
// iteration, each CHUNK_WORDS 16-byte words read by the warp's 32 lanes.
template <int CHUNK_WORDS, int IN_FLIGHT>
__global__ void chunk_read(const uint4* __restrict__ p, const unsigned* __restrict__ order,
                           unsigned chunks, unsigned* out) {
    const unsigned warps = gridDim.x * (blockDim.x / 32);
    const unsigned warp = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const unsigned lane = threadIdx.x & 31;
    unsigned acc = 0;
    for (unsigned c = warp; c < chunks; c += warps * IN_FLIGHT) {
        uint4 v[IN_FLIGHT][CHUNK_WORDS / 32];
#pragma unroll
        for (int f = 0; f < IN_FLIGHT; f++) {
            const unsigned ci = c + f * warps;
            const uint4* src = p + (size_t)order[ci < chunks ? ci : c] * CHUNK_WORDS;
#pragma unroll
            for (int w = 0; w < CHUNK_WORDS / 32; w++) v[f][w] = __ldg(src + w * 32 + lane);
        }
#pragma unroll
        for (int f = 0; f < IN_FLIGHT; f++)
#pragma unroll
            for (int w = 0; w < CHUNK_WORDS / 32; w++)
                acc ^= v[f][w].x ^ v[f][w].y ^ v[f][w].z ^ v[f][w].w;
    }
    if (acc == 0x12345678u) out[blockIdx.x] = acc;
}

template <typename Launch>
static void time_it(const char* name, size_t bytes, Launch launch) {
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++) launch();
    CHECK(cudaDeviceSynchronize());
    std::vector<double> tbs;
    for (int i = 0; i < 20; i++) {
        CHECK(cudaEventRecord(a));
        launch();
        CHECK(cudaEventRecord(b));
        CHECK(cudaEventSynchronize(b));
        float ms = 0;
        CHECK(cudaEventElapsedTime(&ms, a, b));
        tbs.push_back(bytes / (ms * 1e-3) / 1e12);
    }
    CHECK(cudaGetLastError());
    std::sort(tbs.begin(), tbs.end());
    printf("%-9s %6.3f TB/s median, %6.3f best (%zu MiB, 20 launches)\n", name, tbs[tbs.size() / 2],
           tbs.back(), bytes >> 20);
}

int main(int argc, char** argv) {
    const double gib = argc > 1 ? atof(argv[1]) : 4.0;
    if (!(gib > 0.0 && gib <= 64.0)) {
        fprintf(stderr, "usage: %s [GiB, 0 < GiB <= 64; default 4]\n", argv[0]);
        return 2;
    }
    const size_t chunk_bytes = 2048;
    const size_t bytes = (size_t)(gib * (1u << 30)) / chunk_bytes * chunk_bytes;
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("%s, %d SMs, L2 %d MiB; reading %zu MiB\n", prop.name, prop.multiProcessorCount,
           prop.l2CacheSize >> 20, bytes >> 20);
    uint4* buf;
    unsigned* out;
    CHECK(cudaMalloc(&buf, bytes));
    CHECK(cudaMemset(buf, 1, bytes));
    CHECK(cudaMalloc(&out, 1 << 20));
    const unsigned chunks = (unsigned)(bytes / chunk_bytes);
    std::vector<unsigned> order(chunks);
    std::iota(order.begin(), order.end(), 0u);
    std::shuffle(order.begin(), order.end(), std::mt19937(0));
    unsigned* d_order;
    CHECK(cudaMalloc(&d_order, chunks * sizeof(unsigned)));
    CHECK(cudaMemcpy(d_order, order.data(), chunks * sizeof(unsigned), cudaMemcpyHostToDevice));
    const int sms = prop.multiProcessorCount;
    const size_t words = bytes / 16;
    time_it("stream", bytes, [&] { stream_read<<<sms * 8, 256>>>(buf, words, out); });
    // 16 warps per SM resident: 4 blocks of 128 threads, as the attention kernel.
    time_it("chunks", bytes, [&] { chunk_read<128, 1><<<sms * 4, 128>>>(buf, d_order, chunks, out); });
    time_it("chunks-4", bytes,
            [&] { chunk_read<128, 4><<<sms * 4, 128>>>(buf, d_order, chunks, out); });
    CHECK(cudaFree(d_order));
    CHECK(cudaFree(out));
    CHECK(cudaFree(buf));
    return 0;
}
