/* simd_dotf32.h - host-only helpers of the f32 variant's fused GEMV kernels (vec_dot_f32):
 * the float dot product of one encoded weight row of n elements with a float row x, decoding
 * the weights in registers instead of writing them to a scratch row first.
 *
 * Tiers, chosen per call from fdy_cpu_features_enabled() (fdy_df_tier):
 *   FDY_DF_AVX512    AVX-512 F+BW+VL+DQ with AVX2, FMA and F16C: 16 floats per vector; 4-bit
 *                    codes turn into floats with a 16-entry float table (vpermps)
 *   FDY_DF_AVX2      AVX2 + FMA + F16C: codes built as bytes, widened 8 at a time
 *   FDY_DF_PORTABLE  plain C (every other processor)
 * No global -m flag: every SIMD function carries its own target attribute.
 *
 * Arithmetic: each weight is formed as the decode forms it, up to the order of rounding
 * (one scale per block or group of 16 lanes applied after the code * x products, or the
 * weight d * q + m formed with a fused multiply-add), and the products are summed in float
 * with several vector accumulators.  The result differs from dequantize + float dot only by
 * float rounding, within the float32 dot-product bound the tests hold the f32 variant to.
 *
 * A format file F instantiates F_dotf_portable, and on x86-64 F_dotf_avx2 and F_dotf_avx512
 * (with the FDY_DF_TARGET_* attributes), then FDY_DF_DISPATCH(F) for F_vec_dot_f32.
 */
#ifndef FDY_SIMD_DOTF32_H
#define FDY_SIMD_DOTF32_H
#ifdef FDY_HOST

#include <stdint.h>
#include <string.h>

#include "foundry.h"

enum { FDY_DF_PORTABLE, FDY_DF_AVX2, FDY_DF_AVX512 };

static inline int fdy_df_tier(void) {
#if defined(__x86_64__)
    const uint32_t f = fdy_cpu_features_enabled();
    const uint32_t base = FDY_CPU_AVX2 | FDY_CPU_FMA | FDY_CPU_F16C;
    if ((f & base) != base) {
        return FDY_DF_PORTABLE;
    }
    return (f & FDY_CPU_AVX512) ? FDY_DF_AVX512 : FDY_DF_AVX2;
#else
    return FDY_DF_PORTABLE;
#endif
}

/* portable: sum_j q[j] * x[j] over 32 codes with 8 partial sums (vectorizable) */
static inline float fdy_df_dot32_i8(const int8_t *q, const float *x) {
    float acc[8] = {0};
    for (int j = 0; j < 32; j += 8) {
        for (int k = 0; k < 8; k++) {
            acc[k] += (float)q[j + k] * x[j + k];
        }
    }
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* portable: sum_j w[j] * x[j] over n floats (n a multiple of 8) with 8 partial sums */
static inline float fdy_df_dot_f(const float *w, const float *x, int n) {
    float acc[8] = {0};
    for (int j = 0; j < n; j += 8) {
        for (int k = 0; k < 8; k++) {
            acc[k] += w[j + k] * x[j + k];
        }
    }
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

#if defined(__x86_64__)
#include <immintrin.h>

#define FDY_DF_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define FDY_DF_TARGET_AVX512 \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define FDY_DF_INLINE static inline __attribute__((always_inline))

#define FDY_DF_DISPATCH(F)                                                     \
    static float F##_vec_dot_f32(const void *w, const float *x, int64_t n) {   \
        switch (fdy_df_tier()) {                                               \
        case FDY_DF_AVX512: return F##_dotf_avx512(w, x, n);                   \
        case FDY_DF_AVX2: return F##_dotf_avx2(w, x, n);                       \
        default: return F##_dotf_portable(w, x, n);                            \
        }                                                                      \
    }

/* an f16 as float (vcvtph2ps) */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE float fdy_df_half(uint16_t h) {
    return _cvtsh_ss(h);
}

FDY_DF_TARGET_AVX2 FDY_DF_INLINE float fdy_df_hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- AVX2: 16 codes as signed bytes q (lanes 0..15) against x[0..15] ---- */

/* the 8 floats of signed bytes 0..7 of q */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE __m256 fdy_df_s8lo_256(__m128i q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
}

/* acc + q[0..15] * x[0..15] (two multiply-adds) */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE __m256 fdy_df_fma16_256(__m128i q, const float *x, __m256 acc) {
    acc = _mm256_fmadd_ps(fdy_df_s8lo_256(q), _mm256_loadu_ps(x), acc);
    return _mm256_fmadd_ps(fdy_df_s8lo_256(_mm_srli_si128(q, 8)), _mm256_loadu_ps(x + 8), acc);
}

/* q[0..15] * x[0..15] as 8 partial sums */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE __m256 fdy_df_mul16_256(__m128i q, const float *x) {
    const __m256 p = _mm256_mul_ps(fdy_df_s8lo_256(q), _mm256_loadu_ps(x));
    return _mm256_fmadd_ps(fdy_df_s8lo_256(_mm_srli_si128(q, 8)), _mm256_loadu_ps(x + 8), p);
}

/* acc + (d * q[j] + m) * x[j] for j < 16: the weights formed with a fused multiply-add */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE __m256 fdy_df_fma16_dm_256(__m128i q, __m256 d, __m256 m,
                                                           const float *x, __m256 acc) {
    const __m256 w0 = _mm256_fmadd_ps(fdy_df_s8lo_256(q), d, m);
    const __m256 w1 = _mm256_fmadd_ps(fdy_df_s8lo_256(_mm_srli_si128(q, 8)), d, m);
    acc = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), acc);
    return _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + 8), acc);
}

/* the low and high nibbles of 16 bytes as bytes */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_nibbles_128(const uint8_t *qs, __m128i *lo,
                                                         __m128i *hi) {
    const __m128i v = _mm_loadu_si128((const __m128i *)qs);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    *lo = _mm_and_si128(v, m4);
    *hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
}

/* ---- AVX-512 ---- */

/* the 16 bytes at p zero-extended to int32 lanes (the table index of vpermps: its low 4 bits) */
FDY_DF_TARGET_AVX512 FDY_DF_INLINE __m512i fdy_df_u8x16_512(const uint8_t *p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
}

/* the floats of the 16 signed bytes at p */
FDY_DF_TARGET_AVX512 FDY_DF_INLINE __m512 fdy_df_s8x16_512(const void *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

/* 32 nibble codes of 16 bytes (low nibbles: elements 0..15, high: 16..31) mapped through the
 * float table tbl, against x[0..31]: the 16 partial sums */
FDY_DF_TARGET_AVX512 FDY_DF_INLINE __m512 fdy_df_nib32_512(const uint8_t *qs, __m512 tbl,
                                                          const float *x) {
    const __m512i v = fdy_df_u8x16_512(qs);
    const __m512 lo = _mm512_permutexvar_ps(v, tbl);
    const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tbl);
    return _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(x)));
}

/* the float table 0, 1, ..., 15 shifted by -off */
FDY_DF_TARGET_AVX512 FDY_DF_INLINE __m512 fdy_df_ramp_512(float off) {
    return _mm512_sub_ps(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_ps(off));
}

#else
#define FDY_DF_DISPATCH(F)                                                     \
    static float F##_vec_dot_f32(const void *w, const float *x, int64_t n) {   \
        return F##_dotf_portable(w, x, n);                                     \
    }
#endif /* __x86_64__ */

#endif /* FDY_HOST */
#endif /* FDY_SIMD_DOTF32_H */
