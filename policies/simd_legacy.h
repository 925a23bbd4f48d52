/* simd_legacy.h - host-only helpers of the integer dot kernels (vec_dot) of the 32-element
 * block formats q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl and mxfp4, and of the activation
 * quantizers of q8_0 / q8_1.
 *
 * Tiers, chosen per call from fdy_cpu_features_enabled():
 *   FDY_LEG_AVX512 / FDY_LEG_AVX512VNNI   AVX-512 F+BW+VL+DQ (+FMA, F16C), two blocks per zmm;
 *                                         with VNNI the byte dots are vpdpbusd
 *   FDY_LEG_AVX2 / FDY_LEG_AVXVNNI        AVX2+FMA+F16C, one block per ymm; the byte dots are
 *                                         vpmaddubsw + vpmaddwd, or AVX-VNNI's vpdpbusd
 *   FDY_LEG_PORTABLE                      plain C (every other machine, aarch64 included)
 * No global -m flag: every SIMD function carries its own target attribute.
 *
 * The byte dot primitive fdy_dp{256,512}[_vnni](acc, u, s) adds to each int32 lane the sum of
 * the four products u[4k+j] * s[4k+j] (u unsigned bytes, s signed bytes).  The maddubs form
 * saturates a pair sum at int16, so every caller keeps |u0*s0 + u1*s1| <= 32767: u <= 128 with
 * |s| <= 127 (the activation codes, whose quantizer never yields -128) is always safe.
 * Kernels sum the int32 block sums in float vectors scaled by the per-block d_w * d_a (one
 * fused multiply-add per two blocks), and reduce horizontally once per row.
 */
#ifndef FDY_SIMD_LEGACY_H
#define FDY_SIMD_LEGACY_H
#ifdef FDY_HOST

#include <stdint.h>
#include <math.h>
#include <string.h>

#include "foundry.h"

/* the activation blocks the kernels read (the layouts of fdy_block_q8_0 in q8_0.c and
 * fdy_block_q8_1 in q8_1.c; each policy file is its own translation unit) */
typedef struct fdy_leg_q8_0 {
    uint16_t d;
    int8_t qs[32];
} fdy_leg_q8_0;
typedef struct fdy_leg_q8_1 {
    uint16_t d;
    uint16_t s;
    int8_t qs[32];
} fdy_leg_q8_1;
_Static_assert(sizeof(fdy_leg_q8_0) == 34, "q8_0 block size");
_Static_assert(sizeof(fdy_leg_q8_1) == 36, "q8_1 block size");

enum { FDY_LEG_PORTABLE, FDY_LEG_AVX2, FDY_LEG_AVXVNNI, FDY_LEG_AVX512, FDY_LEG_AVX512VNNI };

/* the tier the enabled CPU features allow */
static inline int fdy_leg_tier(void) {
#if defined(__x86_64__)
    const uint32_t f = fdy_cpu_features_enabled();
    const uint32_t base = FDY_CPU_AVX2 | FDY_CPU_FMA | FDY_CPU_F16C;
    if ((f & base) != base) {
        return FDY_LEG_PORTABLE;
    }
    if (f & FDY_CPU_AVX512) {
        return (f & FDY_CPU_AVX512VNNI) ? FDY_LEG_AVX512VNNI : FDY_LEG_AVX512;
    }
    return (f & FDY_CPU_AVXVNNI) ? FDY_LEG_AVXVNNI : FDY_LEG_AVX2;
#else
    return FDY_LEG_PORTABLE;
#endif
}

/* exact round-half-away-from-zero of |v| < 2^31 (roundf) without a libm call: the integer
 * part and the remainder v - t are exact */
static inline int fdy_leg_roundf_int(float v) {
    const int t = (int)v;
    const float r = v - (float)t;
    return t + (r >= 0.5f) - (r <= -0.5f);
}

/* ---- activation quantization (q8_0 / q8_1): one block of 32 values ----
 * The codes of the reference quantizers for every block whose reference result is defined
 * (finite x * (1 / d)): the same amax (max is exact in any order; NaN lanes are skipped, as
 * fmaxf does), the same d and 1 / d, one IEEE product x * id per value and an exact roundf.
 * Each returns the unrounded scale d and stores the codes' sum in *sum. */

static inline float fdy_quant_block_portable(const float *x, int8_t *qs, int *sum) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) {
        amax = fmaxf(amax, fabsf(x[j]));
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int s = 0;
    for (int j = 0; j < 32; j++) {
        const int q = fdy_leg_roundf_int(x[j] * id);
        qs[j] = (int8_t)q;
        s += q;
    }
    *sum = s;
    return d;
}

#if defined(__x86_64__)
#include <immintrin.h>

#define FDY_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define FDY_TARGET_AVXVNNI __attribute__((target("avx2,fma,f16c,avxvnni")))
#define FDY_TARGET_AVX512                                                                 \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define FDY_TARGET_AVX512VNNI                                                             \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

/* ---- AVX2 ---- */

FDY_TARGET_AVX2 static inline __m256i fdy_dp256(__m256i acc, __m256i u, __m256i s) {
    const __m256i p = _mm256_maddubs_epi16(u, s);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

FDY_TARGET_AVXVNNI static inline __m256i fdy_dp256_vnni(__m256i acc, __m256i u, __m256i s) {
    return _mm256_dpbusd_avx_epi32(acc, u, s);
}

FDY_TARGET_AVX2 static inline float fdy_hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

FDY_TARGET_AVX2 static inline float fdy_leg_half(uint16_t h) {
    return _cvtsh_ss(h); /* exact for every half, subnormals included */
}

/* 16 bytes of packed nibbles -> 32 bytes: the low nibbles, then the high nibbles */
FDY_TARGET_AVX2 static inline __m256i fdy_nibbles256(const uint8_t *q) {
    const __m128i t = _mm_loadu_si128((const __m128i *)q);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
}

/* bit k of the little-endian u32 at p -> byte k: 0x10 where set, else 0 */
FDY_TARGET_AVX2 static inline __m256i fdy_bits256_x10(const uint8_t *p) {
    uint32_t x;
    memcpy(&x, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                           0x0101010101010101, 0x0000000000000000);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    b = _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1));
    return _mm256_and_si256(b, _mm256_set1_epi8(0x10));
}

/* roundf of each lane, exactly: trunc, then +-1 where the remainder (exact) is >= 0.5 */
FDY_TARGET_AVX2 static inline __m256i fdy_round256(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 r = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    const __m256 up = _mm256_cmp_ps(r, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0f));
    return _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_and_ps(up, one)));
}

FDY_TARGET_AVX2 static inline float fdy_quant_block_avx2(const float *x, int8_t *qs, int *sum) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4];
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        m = _mm256_max_ps(_mm256_andnot_ps(sign, v[k]), m); /* a NaN first operand gives m */
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float amax = _mm_cvtss_f32(h);
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; k++) {
        q[k] = fdy_round256(_mm256_mul_ps(v[k], vid));
    }
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
    *sum = _mm_cvtsi128_si32(s4);
    /* |q| <= 127: the saturating packs are exact; then undo their lane interleave */
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]),
                                         _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256((__m256i *)qs,
                        _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    return d;
}

/* ---- AVX-512 ---- */

FDY_TARGET_AVX512 static inline __m512i fdy_round512(__m512 v) {
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_abs_ps(_mm512_sub_ps(v, t));
    const __mmask16 up = _mm512_cmp_ps_mask(r, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __m512 one = _mm512_or_ps(_mm512_and_ps(v, _mm512_set1_ps(-0.0f)), _mm512_set1_ps(1.0f));
    return _mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, one));
}

FDY_TARGET_AVX512 static inline float fdy_quant_block_avx512(const float *x, int8_t *qs,
                                                             int *sum) {
    const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
    __m512 m = _mm512_max_ps(_mm512_abs_ps(x0), _mm512_setzero_ps()); /* NaN lanes give 0 */
    m = _mm512_max_ps(_mm512_abs_ps(x1), m);
    const float amax = _mm512_reduce_max_ps(m);
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i q0 = fdy_round512(_mm512_mul_ps(x0, vid));
    const __m512i q1 = fdy_round512(_mm512_mul_ps(x1, vid));
    *sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    _mm_storeu_si128((__m128i *)qs, _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128((__m128i *)(qs + 16), _mm512_cvtepi32_epi8(q1));
    return d;
}


FDY_TARGET_AVX512 static inline __m512i fdy_dp512(__m512i acc, __m512i u, __m512i s) {
    const __m512i p = _mm512_maddubs_epi16(u, s);
    return _mm512_add_epi32(acc, _mm512_madd_epi16(p, _mm512_set1_epi16(1)));
}

FDY_TARGET_AVX512VNNI static inline __m512i fdy_dp512_vnni(__m512i acc, __m512i u, __m512i s) {
    return _mm512_dpbusd_epi32(acc, u, s);
}

/* the 32 bytes at p0 in the low half, those at p1 in the high half */
FDY_TARGET_AVX512 static inline __m512i fdy_load2x32(const void *p0, const void *p1) {
    const __m256i lo = _mm256_loadu_si256((const __m256i *)p0);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo),
                              _mm256_loadu_si256((const __m256i *)p1), 1);
}

/* two blocks of 16 packed-nibble bytes -> 64 bytes: [lo(q0), hi(q0), lo(q1), hi(q1)] */
FDY_TARGET_AVX512 static inline __m512i fdy_nibbles512(const uint8_t *q0, const uint8_t *q1) {
    const __m256i v = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)q0)),
        _mm_loadu_si128((const __m128i *)q1), 1);
    __m512i z = _mm512_castsi256_si512(v);
    z = _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(1, 1, 0, 0));
    const long long c4 = 0x0004000400040004LL; /* shift the odd 128-bit lanes by 4 */
    z = _mm512_srlv_epi16(z, _mm512_set_epi64(c4, c4, 0, 0, c4, c4, 0, 0));
    return _mm512_and_si512(z, _mm512_set1_epi8(0x0F));
}

/* the 5th bits of two q5 blocks (qh: little-endian u32 of bit k = element k) added to their
 * 4-bit codes q (the 64 bytes of fdy_nibbles512) */
FDY_TARGET_AVX512 static inline __m512i fdy_qh512(__m512i q, const uint8_t *qh0,
                                                  const uint8_t *qh1) {
    uint32_t h0, h1;
    memcpy(&h0, qh0, 4);
    memcpy(&h1, qh1, 4);
    const __mmask64 m = (__mmask64)h0 | (__mmask64)h1 << 32;
    return _mm512_mask_add_epi8(q, m, q, _mm512_set1_epi8(0x10));
}

/* 8 lanes of d0, then 8 lanes of d1 */
FDY_TARGET_AVX512 static inline __m512 fdy_scale2(float d0, float d1) {
    return _mm512_insertf32x8(_mm512_set1_ps(d0), _mm256_set1_ps(d1), 1);
}

/* s negated in the bytes where m is set (s must not hold -128) */
FDY_TARGET_AVX512 static inline __m512i fdy_negate_where(__m512i s, __mmask64 m) {
    return _mm512_mask_sub_epi8(s, m, _mm512_setzero_si512(), s);
}

#endif /* __x86_64__ */
#endif /* FDY_HOST */
#endif
