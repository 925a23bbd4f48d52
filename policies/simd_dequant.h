/* simd_dequant.h - host-only helpers of the whole-row dequantizers (dequantize_fast).
 *
 * Every format keeps its portable row loop F_dequantize_rows (an always-inline function) and
 * gets x86-64 copies chosen on each call from fdy_cpu_features_enabled():
 *   F_dequantize_avx512   AVX-512 F+BW+VL+DQ (with AVX2)
 *   F_dequantize_avx2     AVX2
 *   F_dequantize_rows     anything else (SSE2 baseline, aarch64, ...)
 * No global -m flag: each copy carries its own target attribute, and off x86-64 only the
 * portable loop is compiled.
 *
 *   FDY_DEQ_DISPATCH(F_dequantize, F_dequantize_rows)  compiles the portable loop itself for
 *       each target (what the compiler vectorizes; used where that is as fast as it gets)
 *   FDY_DEQ_BLOCKS(F_dequantize, BT, BODY)  per 32-weight block of type BT, BODY(b, y, S)
 *       with S the target suffix, calling the helpers below
 *   FDY_DEQ_BOTH(F_dequantize, BODY)  BODY(S) is a whole function body
 *   FDY_DEQ_SELECT(F_dequantize, F_dequantize_rows)  the dispatcher of the two above
 *
 * Bit-exactness: the helpers do the portable arithmetic (the same integer codes, converted
 * exactly to float, then d * q, or d * q + m / d * q - m as a multiply and a separate add or
 * subtract; the core compiles with -ffp-contract=off, so nothing is fused), with the scales
 * formed by the portable scalar code (fdy_half_to_float -- or fdy_deq_half, the same values
 * -- and the formats' scale unpacking).
 * tests/test_policies.py::test_every_cpu_path_matches_portable_path compares every path bit
 * for bit.
 */
#ifndef FDY_SIMD_DEQUANT_H
#define FDY_SIMD_DEQUANT_H
#ifdef FDY_HOST

#include <stdint.h>

#include "foundry.h"

#define FDY_DEQ_INLINE static inline __attribute__((always_inline))

/* 4 little-endian bytes as a uint32 */
FDY_DEQ_INLINE uint32_t fdy_deq_le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

#if defined(__x86_64__)
#define FDY_DEQ_TARGET_AVX2 __attribute__((target("avx2,f16c")))
#if defined(__clang__)
#define FDY_DEQ_TARGET_AVX512 \
    __attribute__((target("avx2,f16c,avx512f,avx512bw,avx512vl,avx512dq")))
#else /* GCC: let the loops it vectorizes itself (FDY_DEQ_DISPATCH) use 512-bit vectors */
#define FDY_DEQ_TARGET_AVX512 \
    __attribute__((target("avx2,f16c,avx512f,avx512bw,avx512vl,avx512dq,prefer-vector-width=512")))
#endif

#include <immintrin.h>

/* an f16 scale as float, as fdy_half_to_float: vcvtph2ps (exact) for finite values, the
 * portable code for infinities and NaNs (vcvtph2ps would quiet a signalling NaN) -- the
 * portable conversion is a dozen branchy integer operations, per block */
__attribute__((target("f16c"))) FDY_DEQ_INLINE float fdy_deq_half(uint16_t h) {
    if ((h & 0x7c00u) == 0x7c00u) {
        return fdy_half_to_float(h);
    }
    return _cvtsh_ss(h);
}

/* NAME chooses NAME_avx512, NAME_avx2 or the portable ROWS from the enabled features */
#define FDY_DEQ_SELECT(NAME, ROWS)                                                    \
    static void NAME(const void *src, float *dst, int64_t n) {                        \
        const uint32_t f = fdy_cpu_enabled();                                \
        if ((f & (FDY_CPU_AVX512 | FDY_CPU_AVX2)) == (FDY_CPU_AVX512 | FDY_CPU_AVX2)) { \
            NAME##_avx512(src, dst, n);                                               \
        } else if (f & FDY_CPU_AVX2) {                                                \
            NAME##_avx2(src, dst, n);                                                 \
        } else {                                                                      \
            ROWS(src, dst, n);                                                        \
        }                                                                             \
    }

#define FDY_DEQ_DISPATCH(NAME, ROWS)                                                  \
    FDY_DEQ_TARGET_AVX512 static void NAME##_avx512(const void *src, float *dst,      \
                                                    int64_t n) {                      \
        ROWS(src, dst, n);                                                            \
    }                                                                                 \
    FDY_DEQ_TARGET_AVX2 static void NAME##_avx2(const void *src, float *dst, int64_t n) { \
        ROWS(src, dst, n);                                                            \
    }                                                                                 \
    FDY_DEQ_SELECT(NAME, ROWS)

/* ---- 32 codes from 16 bytes of nibbles (the q4_0 / q4_1 / q5_0 / q5_1 / iq4_nl / iq4_xs /
 * mxfp4 layout): code j is the low nibble of qs[j] for j < 16, the high nibble of qs[j - 16]
 * above; with HBIT, 16 is added where bit j of qh is set; then the code is mapped through the
 * int8 table TBL (when not NULL), or OFF is subtracted; y[j] = d * (float)code, plus m when
 * HASM (a multiply, then an add: the portable arithmetic). ---- */

FDY_DEQ_TARGET_AVX512 FDY_DEQ_INLINE void fdy_deq_nib32_avx512(const uint8_t *qs, uint32_t qh,
                                                               int hbit, const int8_t *tbl,
                                                               int off, float d, float m,
                                                               int hasm, float *y) {
    const __m128i x = _mm_loadu_si128((const __m128i *)qs);
    const __m128i lo4 = _mm_set1_epi8(0x0F);
    const __m512 vd = _mm512_set1_ps(d);
    for (int h = 0; h < 2; h++) {
        __m128i v = h ? _mm_and_si128(_mm_srli_epi16(x, 4), lo4) : _mm_and_si128(x, lo4);
        if (hbit) {
            v = _mm_mask_mov_epi8(v, (__mmask16)(qh >> (16 * h)), _mm_or_si128(v, _mm_set1_epi8(16)));
        }
        __m512 f;
        if (tbl) {
            v = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)tbl), v);
            f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
        } else if (off) {
            f = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(v), _mm512_set1_epi32(off)));
        } else {
            f = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
        }
        f = _mm512_mul_ps(vd, f);
        if (hasm) {
            f = _mm512_add_ps(f, _mm512_set1_ps(m));
        }
        _mm512_storeu_ps(y + 16 * h, f);
    }
}

FDY_DEQ_TARGET_AVX2 FDY_DEQ_INLINE void fdy_deq_nib32_avx2(const uint8_t *qs, uint32_t qh,
                                                           int hbit, const int8_t *tbl, int off,
                                                           float d, float m, int hasm,
                                                           float *y) {
    const __m128i x = _mm_loadu_si128((const __m128i *)qs);
    const __m128i lo4 = _mm_set1_epi8(0x0F);
    const __m256 vd = _mm256_set1_ps(d);
    for (int h = 0; h < 2; h++) {
        __m128i v = h ? _mm_and_si128(_mm_srli_epi16(x, 4), lo4) : _mm_and_si128(x, lo4);
        if (hbit) {
            /* bit j of the 16 -> byte j: 0 or 16 */
            const __m128i bits = _mm_shuffle_epi8(_mm_cvtsi32_si128((int)((qh >> (16 * h)) & 0xFFFFu)),
                                                  _mm_set_epi64x(0x0101010101010101LL, 0));
            const __m128i sel = _mm_set1_epi64x((long long)0x8040201008040201ULL);
            const __m128i set = _mm_cmpeq_epi8(_mm_and_si128(bits, sel), sel);
            v = _mm_or_si128(v, _mm_and_si128(set, _mm_set1_epi8(16)));
        }
        if (tbl) {
            v = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)tbl), v);
        }
        for (int k = 0; k < 2; k++) {
            const __m128i v8 = k ? _mm_srli_si128(v, 8) : v;
            __m256 f;
            if (tbl) {
                f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v8));
            } else if (off) {
                f = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(v8), _mm256_set1_epi32(off)));
            } else {
                f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v8));
            }
            f = _mm256_mul_ps(vd, f);
            if (hasm) {
                f = _mm256_add_ps(f, _mm256_set1_ps(m));
            }
            _mm256_storeu_ps(y + 16 * h + 8 * k, f);
        }
    }
}

/* ---- 32 byte codes (a __m256i; AVX2 byte ops work in both copies) to floats:
 *   fdy_deq_s8x32_S(v, s0, s1, y)       y[j] = s * (float)(int8)v[j], s0 for j < 16, s1 above
 *   fdy_deq_u8x32_ms_S(v, s0, m0, s1, m1, y)   y[j] = s * (float)(uint8)v[j] - m
 * (the portable products / differences, in the portable order) ---- */

FDY_DEQ_TARGET_AVX512 FDY_DEQ_INLINE void fdy_deq_s8x32_avx512(__m256i v, float s0, float s1,
                                                               float *y) {
    _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_set1_ps(s0), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                                              _mm256_castsi256_si128(v)))));
    _mm512_storeu_ps(y + 16, _mm512_mul_ps(_mm512_set1_ps(s1),
                                           _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                               _mm256_extracti128_si256(v, 1)))));
}

FDY_DEQ_TARGET_AVX2 FDY_DEQ_INLINE void fdy_deq_s8x32_avx2(__m256i v, float s0, float s1,
                                                           float *y) {
    for (int h = 0; h < 2; h++) {
        const __m128i x = h ? _mm256_extracti128_si256(v, 1) : _mm256_castsi256_si128(v);
        const __m256 s = _mm256_set1_ps(h ? s1 : s0);
        _mm256_storeu_ps(y + 16 * h, _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(x))));
        _mm256_storeu_ps(y + 16 * h + 8, _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                                              _mm_srli_si128(x, 8)))));
    }
}

FDY_DEQ_TARGET_AVX512 FDY_DEQ_INLINE void fdy_deq_u8x32_ms_avx512(__m256i v, float s0, float m0,
                                                                  float s1, float m1, float *y) {
    for (int h = 0; h < 2; h++) {
        const __m128i x = h ? _mm256_extracti128_si256(v, 1) : _mm256_castsi256_si128(v);
        const __m512 f = _mm512_mul_ps(_mm512_set1_ps(h ? s1 : s0),
                                       _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(x)));
        _mm512_storeu_ps(y + 16 * h, _mm512_sub_ps(f, _mm512_set1_ps(h ? m1 : m0)));
    }
}

FDY_DEQ_TARGET_AVX2 FDY_DEQ_INLINE void fdy_deq_u8x32_ms_avx2(__m256i v, float s0, float m0,
                                                              float s1, float m1, float *y) {
    for (int h = 0; h < 2; h++) {
        const __m128i x = h ? _mm256_extracti128_si256(v, 1) : _mm256_castsi256_si128(v);
        const __m256 s = _mm256_set1_ps(h ? s1 : s0);
        const __m256 m = _mm256_set1_ps(h ? m1 : m0);
        for (int k = 0; k < 2; k++) {
            const __m128i x8 = k ? _mm_srli_si128(x, 8) : x;
            const __m256 f = _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(x8)));
            _mm256_storeu_ps(y + 16 * h + 8 * k, _mm256_sub_ps(f, m));
        }
    }
}

/* NAME_avx512 and NAME_avx2 from one body: BODY(S) is the body of a function
 * (const void *src, float *dst, int64_t n) calling the helpers as fdy_deq_..._##S */
#define FDY_DEQ_BOTH(NAME, BODY)                                                        \
    FDY_DEQ_TARGET_AVX512 static void NAME##_avx512(const void *src, float *dst,        \
                                                    int64_t n) BODY(avx512)             \
    FDY_DEQ_TARGET_AVX2 static void NAME##_avx2(const void *src, float *dst, int64_t n) \
        BODY(avx2)

/* NAME_avx512 / NAME_avx2 over blocks of type BT: BODY(b, y, SUFFIX) decodes block *b to y */
#define FDY_DEQ_BLOCKS(NAME, BT, BODY)                                                 \
    FDY_DEQ_TARGET_AVX512 static void NAME##_avx512(const void *src, float *dst,       \
                                                    int64_t n) {                       \
        const BT *b = (const BT *)src;                                                 \
        for (int64_t i = 0; i < n / 32; i++) {                                         \
            BODY((b + i), (dst + 32 * i), avx512);                                     \
        }                                                                              \
    }                                                                                  \
    FDY_DEQ_TARGET_AVX2 static void NAME##_avx2(const void *src, float *dst, int64_t n) { \
        const BT *b = (const BT *)src;                                                 \
        for (int64_t i = 0; i < n / 32; i++) {                                         \
            BODY((b + i), (dst + 32 * i), avx2);                                       \
        }                                                                              \
    }
#else
#define FDY_DEQ_DISPATCH(NAME, ROWS)                               \
    static void NAME(const void *src, float *dst, int64_t n) {     \
        ROWS(src, dst, n);                                         \
    }
#define FDY_DEQ_SELECT FDY_DEQ_DISPATCH
#endif

#endif /* FDY_HOST */
#endif /* FDY_SIMD_DEQUANT_H */
