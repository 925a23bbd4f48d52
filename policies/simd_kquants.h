/* simd_kquants.h - host-only helpers of the integer dot kernels (vec_dot) of the policies
 * whose dot_type is Q8_K: q2_k ... q6_k, q8_k, iq4_xs, tq1_0, tq2_0.  Include only inside
 * `#ifdef FDY_HOST`, after policy.h.
 *
 * A vec_dot takes one weight row of n weights and one activation row of n values in Q8_K
 * blocks (fdy_kq_act below).  Per 256-element super-block it forms the exact integer sums of
 * code products per sub-block, applies the integer sub-block scales, and combines the
 * result with the float super-scales (and, for formats with mins, the bsums-based min term)
 * in float, as llama.cpp's ggml_vec_dot_<w>_q8_K do.  Every tier gives the same integer sums
 * for activations from the Q8_K quantizer; the float combination differs only by rounding.
 *
 * Tiers, chosen per call by fdy_kq_tier():
 *   FDY_KQ_AVX512VNNI  AVX-512 (F+BW+VL+DQ) with vpdpbusd / vpdpwssd
 *   FDY_KQ_AVX512      AVX-512 with vpmaddubsw / vpmaddwd in their place
 *   FDY_KQ_AVX2        AVX2 + FMA + F16C (the AVX-512 tiers use these too)
 *   FDY_KQ_PORTABLE    plain C (every other processor)
 * The x86 functions carry their own target attributes (no global -m flags).  The two AVX-512
 * kernels of a format share one always-inline body with a constant `vnni` argument; the VNNI
 * instructions are written as inline assembly there, because an intrinsic would need the VNNI
 * target on the shared body itself.
 *
 * Saturation: vpmaddubsw adds two u8 x s8 products in int16 with saturation.  The kernels only
 * feed it unsigned codes small enough (at most 63, or magnitudes <= 128 against activations
 * of magnitude <= 127) that no sum of two products can leave int16 for any byte pattern of
 * the weights; where a kernel needs the sign trick (|w| against sign(w) * a) an activation
 * byte of -128, which the quantizer never writes, gives a defined but inexact result.
 */
#ifndef FDY_SIMD_KQUANTS_H
#define FDY_SIMD_KQUANTS_H

#include <stdint.h>
#include <string.h>

#include "policy.h"

/* one Q8_K activation block (the layout of policies/q8_k.c) */
typedef struct fdy_kq_act {
    float d;
    int8_t qs[256];
    int16_t bsums[16];
} fdy_kq_act;

enum { FDY_KQ_PORTABLE = 0, FDY_KQ_AVX2 = 1, FDY_KQ_AVX512 = 2, FDY_KQ_AVX512VNNI = 3 };

static inline int fdy_kq_tier(void) {
#if defined(__x86_64__)
    const uint32_t f = fdy_cpu_enabled();
    const uint32_t base = FDY_CPU_AVX2 | FDY_CPU_FMA | FDY_CPU_F16C;
    if ((f & base) != base) {
        return FDY_KQ_PORTABLE;
    }
    if (f & FDY_CPU_AVX512) {
        return (f & FDY_CPU_AVX512VNNI) ? FDY_KQ_AVX512VNNI : FDY_KQ_AVX512;
    }
    return FDY_KQ_AVX2;
#else
    return FDY_KQ_PORTABLE;
#endif
}

/* portable kernels: sum_l w[l] * a[l] over a block, w the codes already multiplied by their
 * sub-block scale (|w| < 2^13 for every format here), as one plain loop the compiler
 * vectorizes (a single reduction per block; no per-group horizontal sums) */
static inline int32_t fdy_kq_dot256(const int16_t *w, const int8_t *a) {
    int32_t s = 0;
    for (int l = 0; l < 256; l++) {
        s += w[l] * a[l];
    }
    return s;
}

#if defined(__x86_64__)
#include <immintrin.h>

#define FDY_KQ_AVX2_TARGET "avx2,fma,f16c"
#define FDY_KQ_AVX512_TARGET "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"
#define FDY_KQ_AVX512VNNI_TARGET FDY_KQ_AVX512_TARGET ",avx512vnni"

/* q4_k / q5_k: the 12-byte scale/min packing (fdy_q4_k_sc / fdy_q4_k_m), read with the 16
 * bytes at the start of the block (d, dmin, scales), unpacked in registers with 32-bit lane
 * operations to 16 bytes: scales 0..7, mins 0..7 */
__attribute__((target(FDY_KQ_AVX2_TARGET))) static inline __m128i fdy_kq_scale_min_q4_k(
    const uint8_t *blk) {
    const __m128i v = _mm_loadu_si128((const __m128i *)blk); /* dwords: d|dmin, w0, w1, w2 */
    const __m128i a = _mm_shuffle_epi32(v, _MM_SHUFFLE(3, 2, 3, 1)); /* w0, w2, w1, w2 */
    const __m128i b = _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 2, 1, 1)); /* w0, w0, w1, w1 */
    const __m128i lo = _mm_and_si128(a, _mm_set1_epi32(0x3f3f3f3f));
    const __m128i hi = _mm_or_si128(
        _mm_and_si128(_mm_srlv_epi32(a, _mm_setr_epi32(0, 0, 0, 4)), _mm_set1_epi32(0x0f0f0f0f)),
        _mm_slli_epi32(_mm_and_si128(_mm_srli_epi32(b, 6), _mm_set1_epi32(0x03030303)), 4));
    return _mm_blend_epi32(lo, hi, 0xA);
}

/* q3_k: the sixteen 6-bit scales (fdy_q3_k_scale), read with the 16 bytes that end with them
 * (bytes 92..107 of the block), unpacked in registers to 16 signed bytes: scale g - 32 */
__attribute__((target(FDY_KQ_AVX2_TARGET))) static inline __m128i fdy_kq_scales_q3_k(
    const uint8_t *blk) {
    const __m128i v = _mm_loadu_si128((const __m128i *)(blk + 92)); /* dwords: -, a0, a1, a2 */
    const __m128i a = _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 1)); /* a0, a1, a0, a1 */
    const __m128i c = _mm_shuffle_epi32(v, _MM_SHUFFLE(3, 3, 3, 3)); /* a2 x 4 */
    const __m128i lo =
        _mm_and_si128(_mm_srlv_epi32(a, _mm_setr_epi32(0, 0, 4, 4)), _mm_set1_epi32(0x0f0f0f0f));
    const __m128i hi = _mm_slli_epi32(
        _mm_and_si128(_mm_srlv_epi32(c, _mm_setr_epi32(0, 2, 4, 6)), _mm_set1_epi32(0x03030303)),
        4);
    return _mm_sub_epi8(_mm_or_si128(lo, hi), _mm_set1_epi8(32));
}

/* vpshufb control replicating int16 lane w (0..7) of each 128-bit lane */
#define FDY_KQ_WORD(w) ((short)(0x0100 + 0x0202 * (w)))
/* vpshufb control giving every int16 lane byte b (0..15) of its 128-bit lane, zero-extended */
#define FDY_KQ_BYTE(b) ((short)(0x8000 | (b)))

/* vpshufb control (both 128-bit lanes holding the bytes of fdy_kq_scale_min_q4_k) giving the
 * int16 lanes m0 m0 m1 m1 .. m7 m7: against the bsums, vpmaddwd forms m_g * (bsums of group g) */
__attribute__((target(FDY_KQ_AVX2_TARGET))) static inline __m256i fdy_kq_mins_ctl(void) {
    return _mm256_setr_epi8(8, -128, 8, -128, 9, -128, 9, -128, 10, -128, 10, -128, 11, -128, 11,
                            -128, 12, -128, 12, -128, 13, -128, 13, -128, 14, -128, 14, -128, 15,
                            -128, 15, -128);
}

/* an f16 super-scale as float (vcvtph2ps; NaNs come back quiet, else as fdy_half_to_float) */
__attribute__((target(FDY_KQ_AVX2_TARGET))) static inline float fdy_kq_half(uint16_t h) {
    return _cvtsh_ss(h);
}

/* shared AVX-512 bodies and their helpers */
#define FDY_KQ_BODY512 static inline __attribute__((always_inline, target(FDY_KQ_AVX512_TARGET)))

__attribute__((target(FDY_KQ_AVX2_TARGET))) static inline float fdy_kq_hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* acc + (sums of adjacent int16 products of a and b): vpdpwssd, or vpmaddwd + vpaddd */
FDY_KQ_BODY512 __m512i fdy_kq_dpwssd(__m512i acc, __m512i a, __m512i b, const int vnni) {
    if (vnni) {
        __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
        return acc;
    }
    return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
}

/* acc + (sums of four adjacent u8 x s8 products of u and s): vpdpbusd, or vpmaddubsw +
 * vpmaddwd + vpaddd.  The fallback is exact only while no two products exceed int16 (u <= 127
 * suffices for any s); it serves the ternary codes (u <= 3). */
FDY_KQ_BODY512 __m512i fdy_kq_dpbusd_small(__m512i acc, __m512i u, __m512i s, const int vnni) {
    if (vnni) {
        __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
        return acc;
    }
    return _mm512_add_epi32(acc,
                            _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)));
}

/* vpermw indices for the 64-element chunk c of a block of 16-element groups: the int16 lanes
 * 8t .. 8t+7 (the vpmaddubsw sums of group 4c + t) take the int16 scale 4c + t */
FDY_KQ_BODY512 __m512i fdy_kq_group16_idx(int c) {
    const __m512i lane = _mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18,
                                          17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2,
                                          1, 0);
    return _mm512_add_epi16(_mm512_set1_epi16((short)(4 * c)), _mm512_srli_epi16(lane, 3));
}

/* the two AVX-512 entry points of format `name` from its body name##_body512(w, a, n, vnni) */
#define FDY_KQ_AVX512_ENTRIES(name)                                                          \
    __attribute__((target(FDY_KQ_AVX512_TARGET))) static float name##_avx512(                \
        const void *w, const void *a, int64_t n) {                                           \
        return name##_body512(w, a, n, 0);                                                   \
    }                                                                                        \
    __attribute__((target(FDY_KQ_AVX512VNNI_TARGET))) static float name##_avx512vnni(        \
        const void *w, const void *a, int64_t n) {                                           \
        return name##_body512(w, a, n, 1);                                                   \
    }

/* the run-time dispatcher `name` over name##_avx512vnni, _avx512, _avx2 and _portable */
#define FDY_KQ_DISPATCH(name)                                                                \
    static float name(const void *w, const void *a, int64_t n) {                             \
        switch (fdy_kq_tier()) {                                                             \
        case FDY_KQ_AVX512VNNI: return name##_avx512vnni(w, a, n);                            \
        case FDY_KQ_AVX512: return name##_avx512(w, a, n);                                    \
        case FDY_KQ_AVX2: return name##_avx2(w, a, n);                                        \
        default: return name##_portable(w, a, n);                                            \
        }                                                                                    \
    }
#else
#define FDY_KQ_DISPATCH(name)                                                                \
    static float name(const void *w, const void *a, int64_t n) {                             \
        return name##_portable(w, a, n);                                                     \
    }
#endif

#endif
