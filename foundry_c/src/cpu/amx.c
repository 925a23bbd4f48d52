/* amx.c - the activation of the f32 variant's AMX decode GEMV (policy.h: fdy_amx_act): a
 * float row as exact integers, four signed base-256 digits of a 32-bit fixed point per block
 * of 32 elements, laid out as the int8 tiles the policies' vec_dot_f32_amx kernels multiply
 * (policies/simd_amx.h).  Written once per GEMV, before the row tasks start. */
#include <math.h>
#include <string.h>

#include "foundry.h"
#include "policy.h"

size_t fdy_amx_bytes(int64_t n) {
    const int64_t nc = (n / 32 + 1) / 2;
    return (size_t)(nc * 512 + nc * 2 * 3 * (int64_t)sizeof(float) + 64);
}

/* S_b for a block whose largest |x| is m (finite): |x| * 2^S < 2^30, S at most 120 (so that
 * 2^-S / 16 is a normal float; blocks below 2^-90 keep an absolute precision of 2^-121) */
static inline int block_shift(float m) {
    if (m == 0.0f) {
        return 0;
    }
    int e;
    (void)frexpf(m, &e); /* m = f 2^e, f in [0.5, 1) */
    const int s = 30 - e;
    return s > 120 ? 120 : s;
}

#if defined(__x86_64__)
#include <immintrin.h>

#define AMX_PREP_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

/* the low digit of X (in [-128, 127]) and X = (X - digit) / 256 */
AMX_PREP_TARGET static inline __m512i next_digit(__m512i *X) {
    const __m512i d = _mm512_sub_epi32(
        _mm512_and_si512(_mm512_add_epi32(*X, _mm512_set1_epi32(128)), _mm512_set1_epi32(255)),
        _mm512_set1_epi32(128));
    *X = _mm512_srai_epi32(_mm512_sub_epi32(*X, d), 8);
    return d;
}

AMX_PREP_TARGET static int prepare_avx512(const float *x, int64_t n, void *buf, fdy_amx_act *a) {
    const int64_t nb = n / 32, nc = (nb + 1) / 2;
    int8_t *dg = (int8_t *)buf;
    float *scale = (float *)(dg + nc * 512), *scale16 = scale + 2 * nc, *sum = scale16 + 2 * nc;
    for (int64_t b = 0; b < nb; b++) {
        const __m512 x0 = _mm512_loadu_ps(x + 32 * b), x1 = _mm512_loadu_ps(x + 32 * b + 16);
        /* an infinity or a NaN (classes QNaN, +Inf, -Inf, SNaN) */
        if (_mm512_fpclass_ps_mask(x0, 0x99) | _mm512_fpclass_ps_mask(x1, 0x99)) {
            return -1;
        }
        const float m = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        const int s = block_shift(m);
        const __m512 p2 = _mm512_set1_ps(ldexpf(1.0f, s));
        __m512i X[2] = {_mm512_cvtps_epi32(_mm512_mul_ps(x0, p2)),
                        _mm512_cvtps_epi32(_mm512_mul_ps(x1, p2))};
        /* the exact integer sum (|X| < 2^30: doubles add it exactly) */
        const __m512d t = _mm512_add_pd(
            _mm512_add_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(X[0])),
                          _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(X[0], 1))),
            _mm512_add_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(X[1])),
                          _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(X[1], 1))));
        sum[b] = (float)ldexp(_mm512_reduce_add_pd(t), -s);
        scale[b] = ldexpf(1.0f, -s);
        scale16[b] = ldexpf(1.0f, -s - 4);
        const int h = (int)(b & 1);
        int8_t *c = dg + (b / 2) * 512;
        for (int p = 0; p < 4; p++) {
            int8_t *row = c + 64 * (2 * p + h);
            _mm_storeu_si128((__m128i *)(row + 32 * h), _mm512_cvtepi32_epi8(next_digit(&X[0])));
            _mm_storeu_si128((__m128i *)(row + 32 * h + 16),
                             _mm512_cvtepi32_epi8(next_digit(&X[1])));
            _mm256_storeu_si256((__m256i *)(row + 32 * (1 - h)), _mm256_setzero_si256());
        }
    }
    if (nb & 1) { /* the padding block */
        int8_t *c = dg + (nb / 2) * 512;
        for (int p = 0; p < 4; p++) {
            memset(c + 64 * (2 * p + 1), 0, 64);
        }
        scale[nb] = scale16[nb] = sum[nb] = 0.0f;
    }
    a->digits = dg;
    a->scale = scale;
    a->scale16 = scale16;
    a->sum = sum;
    a->n_chunks = nc;
    return 0;
}
#endif

int fdy_amx_prepare(const float *x, int64_t n, void *buf, fdy_amx_act *a) {
    if (n <= 0 || n % 32 != 0) {
        return -1;
    }
#if defined(__x86_64__)
    /* the AMX kernels run only where AVX-512 does (FDY_CPU_AMX implies it) */
    if ((fdy_cpu_features_enabled() & FDY_CPU_AVX512) != 0) {
        return prepare_avx512(x, n, buf, a);
    }
#else
    (void)x;
    (void)buf;
    (void)a;
#endif
    return -1;
}
