/* f16 - IEEE binary16 weights.
 *
 *   block (1 element, 2 bytes):  | f16 bits (little endian) |
 *
 * Quantizing rounds to nearest even (numpy's astype(float16)); out-of-range values become inf.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_F16_BLOCK_ELEMS 1
#define FDY_F16_BLOCK_BYTES 2
#define FDY_F16_SUB_ELEMS 1

FDY_FN void fdy_decode_f16(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    (void)sub;
    out[0] = fdy_half_to_float(*(FDY_GLOBAL const uint16_t *)blk);
}

#ifdef FDY_HOST
#include "policy.h"

#if defined(__x86_64__)
#include <immintrin.h>

/* F16C conversions: exact (half -> float) and round-to-nearest-even (float -> half), the same
 * results as the portable code, chosen at run time. */
__attribute__((target("avx,f16c"))) static void f16_dequantize_f16c(const uint16_t *h,
                                                                     float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i v = _mm_loadu_si128((const __m128i *)(h + i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(v));
    }
    for (; i < n; i++) {
        dst[i] = fdy_half_to_float(h[i]);
    }
}

__attribute__((target("avx,f16c"))) static void f16_quantize_f16c(const float *src, uint16_t *h,
                                                                   int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(src + i);
        /* NaNs take the portable path so their payload handling stays identical */
        if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0) {
            for (int j = 0; j < 8; j++) {
                h[i + j] = fdy_float_to_half(src[i + j]);
            }
            continue;
        }
        _mm_storeu_si128((__m128i *)(h + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; i++) {
        h[i] = fdy_float_to_half(src[i]);
    }
}
#endif

static void f16_dequantize(const void *src, float *dst, int64_t n) {
    const uint16_t *h = (const uint16_t *)src;
#if defined(__x86_64__)
    if (fdy_cpu_enabled() & FDY_CPU_F16C) {
        f16_dequantize_f16c(h, dst, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) {
        dst[i] = fdy_half_to_float(h[i]);
    }
}

static void f16_quantize(const float *src, void *dst, int64_t n) {
    uint16_t *h = (uint16_t *)dst;
#if defined(__x86_64__)
    if (fdy_cpu_enabled() & FDY_CPU_F16C) {
        f16_quantize_f16c(src, h, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) {
        h[i] = fdy_float_to_half(src[i]);
    }
}

FDY_POLICY_DEFINE(f16, .block_elems = FDY_F16_BLOCK_ELEMS, .block_bytes = FDY_F16_BLOCK_BYTES,
                  .sub_elems = FDY_F16_SUB_ELEMS, .flags = FDY_POLICY_GGUF | FDY_POLICY_FLOAT,
                  .dot_type = NULL, .tol_roundtrip = 1e-3f, .tol_f32 = 1e-5f, .tol_q8 = 1e-5f,
                  .decode = fdy_decode_f16, .dequantize_fast = f16_dequantize,
                  .quantize = f16_quantize);
#endif
