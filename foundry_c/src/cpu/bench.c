/* bench.c - a memory read-bandwidth probe for the benchmarks: streams a buffer with wide loads
 * on the thread pool (the same threads the kernels use) and returns a checksum so the reads
 * cannot be optimised away. */
#include "internal.h"
#include "threadpool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

typedef struct probe_ctx {
    const uint8_t *data;
    size_t bytes, chunk;
    uint64_t sums[256];
} probe_ctx;

static uint64_t read_portable(const uint64_t *p, size_t n) {
    uint64_t a = 0, b = 0, c = 0, d = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a ^= p[i];
        b ^= p[i + 1];
        c ^= p[i + 2];
        d ^= p[i + 3];
    }
    for (; i < n; i++) {
        a ^= p[i];
    }
    return a ^ b ^ c ^ d;
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) static uint64_t read_avx2(const uint64_t *p, size_t n) {
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a = _mm256_xor_si256(a, _mm256_loadu_si256((const __m256i *)(p + i)));
        b = _mm256_xor_si256(b, _mm256_loadu_si256((const __m256i *)(p + i + 4)));
        c = _mm256_xor_si256(c, _mm256_loadu_si256((const __m256i *)(p + i + 8)));
        d = _mm256_xor_si256(d, _mm256_loadu_si256((const __m256i *)(p + i + 12)));
    }
    a = _mm256_xor_si256(_mm256_xor_si256(a, b), _mm256_xor_si256(c, d));
    uint64_t r[4];
    _mm256_storeu_si256((__m256i *)r, a);
    return r[0] ^ r[1] ^ r[2] ^ r[3] ^ read_portable(p + i, n - i);
}
#endif

static void probe_task(void *vctx, int64_t task, int thread) {
    probe_ctx *c = (probe_ctx *)vctx;
    size_t off = (size_t)task * c->chunk;
    size_t len = off + c->chunk <= c->bytes ? c->chunk : c->bytes - off;
    const uint64_t *p = (const uint64_t *)(c->data + off);
    uint64_t s;
#if defined(__x86_64__)
    if (fdy_cpu_features_enabled() & FDY_CPU_AVX2) {
        s = read_avx2(p, len / 8);
    } else
#endif
    {
        s = read_portable(p, len / 8);
    }
    c->sums[task & 255] ^= s;
}

uint64_t fdy_bench_read(const void *data, size_t bytes) {
    probe_ctx c = {0};
    c.data = (const uint8_t *)data;
    c.bytes = bytes & ~(size_t)63;
    int threads = fdy_get_num_threads();
    c.chunk = ((c.bytes / (size_t)threads) + 63) & ~(size_t)63;
    if (c.chunk == 0) {
        return 0;
    }
    int64_t n = (int64_t)((c.bytes + c.chunk - 1) / c.chunk);
    fdy_parallel(probe_task, &c, n);
    uint64_t r = 0;
    for (int i = 0; i < 256; i++) {
        r ^= c.sums[i];
    }
    return r;
}
