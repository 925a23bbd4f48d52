/* dot.c - float32 dot products for the f32 variant, one per SIMD tier, chosen at run time.
 * Each keeps several independent accumulators (more lanes, shorter dependency chains): the
 * sums differ from a sequential loop only by float rounding, which the tests bound. */
#include "foundry.h"
#include "cpu/simd.h"

static float dot_portable(const float *a, const float *b, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int j = 0; j < 8; j++) {
            acc[j] += a[i + j] * b[i + j];
        }
    }
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++) {
        s += a[i] * b[i];
    }
    return s;
}

/* one pair of the tile in the portable kernel: 8 lane sums over the multiples of 8, summed
 * as hsum256 does, then the tail */
static float tile_pair_portable(const float *a, const float *b, int64_t n) {
    float l[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int j = 0; j < 8; j++) {
            l[j] += a[i + j] * b[i + j];
        }
    }
    float s = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
    for (; i < n; i++) {
        s += a[i] * b[i];
    }
    return s;
}

static void tile_portable(const float *w, int64_t ws, const float *x, int64_t xs, int64_t n,
                          int R, int T, float *acc, int64_t as) {
    for (int r = 0; r < R; r++) {
        for (int t = 0; t < T; t++) {
            acc[r * as + t] += tile_pair_portable(w + r * ws, x + t * xs, n);
        }
    }
}

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx2,fma"))) static float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

__attribute__((target("avx2,fma"))) static float dot_avx2(const float *a, const float *b,
                                                          int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    }
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) {
        s += a[i] * b[i];
    }
    return s;
}

/* the tile for constant R, T (inlined into tile_avx2's cases): R * T accumulators, each x
 * vector loaded once for the R rows and each w vector once for the T tokens */
__attribute__((target("avx2,fma"), always_inline)) static inline void tile_avx2_rt(
    const float *w, int64_t ws, const float *x, int64_t xs, int64_t n, const int R, const int T,
    float *acc, int64_t as) {
    __m256 s[FDY_TILE_R][FDY_TILE_T];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) {
            s[r][t] = _mm256_setzero_ps();
        }
    }
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 xv[FDY_TILE_T];
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) {
            xv[t] = _mm256_loadu_ps(x + t * xs + i);
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m256 wv = _mm256_loadu_ps(w + r * ws + i);
#pragma GCC unroll 3
            for (int t = 0; t < T; t++) {
                s[r][t] = _mm256_fmadd_ps(wv, xv[t], s[r][t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) {
            const __m128 lo = _mm256_castps256_ps128(s[r][t]);
            const __m128 hi = _mm256_extractf128_ps(s[r][t], 1);
            const __m128 q = _mm_add_ps(lo, hi);              /* l0+l4, l1+l5, l2+l6, l3+l7 */
            const __m128 h = _mm_add_ps(q, _mm_movehl_ps(q, q)); /* (l0+l4)+(l2+l6), (..1)+(..3) */
            float v = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
            for (int64_t j = i; j < n; j++) {
                v += w[r * ws + j] * x[t * xs + j];
            }
            acc[r * as + t] += v;
        }
    }
}

#define TILE_CASE(R, T)                                             \
    case (R) * 4 + (T): tile_avx2_rt(w, ws, x, xs, n, R, T, acc, as); \
        break;
__attribute__((target("avx2,fma"))) static void tile_avx2(const float *w, int64_t ws,
                                                          const float *x, int64_t xs, int64_t n,
                                                          int R, int T, float *acc,
                                                          int64_t as) {
    switch (R * 4 + T) {
        TILE_CASE(4, 3) TILE_CASE(4, 2) TILE_CASE(4, 1)
        TILE_CASE(3, 3) TILE_CASE(3, 2) TILE_CASE(3, 1)
        TILE_CASE(2, 3) TILE_CASE(2, 2) TILE_CASE(2, 1)
        TILE_CASE(1, 3) TILE_CASE(1, 2) TILE_CASE(1, 1)
    default: /* not reached: the callers keep 1 <= R <= 4, 1 <= T <= 3 */
        tile_portable(w, ws, x, xs, n, R, T, acc, as);
    }
}
#undef TILE_CASE

__attribute__((target("avx512f"))) static float dot_avx512(const float *a, const float *b,
                                                           int64_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i + 16 <= n; i += 16) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    }
    if (i < n) {
        __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}
#endif

fdy_dot_f32_fn fdy_select_dot_f32(void) {
#if defined(__x86_64__)
    uint32_t f = fdy_cpu_features_enabled();
    if (f & FDY_CPU_AVX512) {
        return dot_avx512;
    }
    if ((f & FDY_CPU_AVX2) && (f & FDY_CPU_FMA)) {
        return dot_avx2;
    }
#endif
    return dot_portable;
}

fdy_tile_f32_fn fdy_select_tile_f32(void) {
#if defined(__x86_64__)
    uint32_t f = fdy_cpu_features_enabled();
    if ((f & FDY_CPU_AVX2) && (f & FDY_CPU_FMA)) {
        return tile_avx2;
    }
#endif
    return tile_portable;
}
