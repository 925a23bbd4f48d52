/* tq1_0 - ternary weights at 1.6875 bits: blocks of 256, one f16 scale; w = d * (t - 1),
 * t in 0..2, five trits packed per byte as a base-3 fixed-point fraction.
 *
 *   block (256 elements, 54 bytes):
 *   | qs[0..47]: u8 (48) | qh[0..3]: u8 (4) | d: f16 (2) |
 *   elements   0..159: qs[m], m in 0..31, trit l (0..4) = element 32*l + m
 *   elements 160..239: qs[32 + m], m in 0..15, trit l (0..4) = element 160 + 16*l + m
 *   elements 240..255: qh[m], m in 0..3, trit l (0..3) = element 240 + 4*l + m
 *   A byte holds ceil(v * 256 / 243) for v = sum of t_l * 3^(4 - l) (the most significant
 *   trit first; qh bytes hold four trits and a zero fifth); trit l is read back as
 *   ((uint8_t)(byte * 3^l) * 3) >> 8.
 *
 * Quantizer (llama.cpp / gguf-py reference): d = max|x|, t = round(x / d) + 1 (half away from
 * zero; computed as x * (1/d), 0 for an all-zero block), d stored as f16.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_TQ1_0_BLOCK_ELEMS 256
#define FDY_TQ1_0_BLOCK_BYTES 54
#define FDY_TQ1_0_SUB_ELEMS 16

typedef struct fdy_block_tq1_0 {
    uint8_t qs[48];
    uint8_t qh[4];
    uint16_t d;
} fdy_block_tq1_0;
FDY_STATIC_ASSERT(sizeof(fdy_block_tq1_0) == FDY_TQ1_0_BLOCK_BYTES, "tq1_0 block size");

FDY_CONSTANT uint8_t fdy_pow3_tq1_0[5] = {1, 3, 9, 27, 81};

/* trit (0..2) at position l of a packed byte */
FDY_FN int fdy_trit_tq1_0(uint8_t byte, int l) {
    const uint8_t v = (uint8_t)(byte * fdy_pow3_tq1_0[l]);
    return (int)(((uint32_t)v * 3u) >> 8);
}

/* sub s in 0..9: trit s/2 of qs[16*(s%2) .. +15]; s in 10..14: trit s-10 of qs[32..47];
 * s = 15: element 240 + i is trit i/4 of qh[i%4] */
FDY_FN void fdy_decode_tq1_0(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_tq1_0 *b = (FDY_GLOBAL const fdy_block_tq1_0 *)blk;
    const float d = fdy_half_to_float(b->d);
    if (sub < 10) {
        FDY_GLOBAL const uint8_t *q = b->qs + 16 * (sub & 1);
        for (int i = 0; i < 16; i++) {
            out[i] = d * (float)(fdy_trit_tq1_0(q[i], sub >> 1) - 1);
        }
    } else if (sub < 15) {
        for (int i = 0; i < 16; i++) {
            out[i] = d * (float)(fdy_trit_tq1_0(b->qs[32 + i], sub - 10) - 1);
        }
    } else {
        for (int i = 0; i < 16; i++) {
            out[i] = d * (float)(fdy_trit_tq1_0(b->qh[i & 3], i >> 2) - 1);
        }
    }
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_dequant.h"
#include "simd_kquants.h"

FDY_DEQ_INLINE void tq1_0_dequantize_rows(const void *src, float *dst, int64_t n) {
    const fdy_block_tq1_0 *b = (const fdy_block_tq1_0 *)src;
    for (int64_t i = 0; i < n / 256; i++) {
        const float d = fdy_half_to_float(b[i].d);
        float *y = dst + i * 256;
        uint8_t t[256]; /* unpack the trits first: the convert loop then vectorizes */
        for (int l = 0; l < 5; l++) {
            const uint8_t p = fdy_pow3_tq1_0[l];
            for (int m = 0; m < 32; m++) {
                t[32 * l + m] = (uint8_t)(((uint8_t)(b[i].qs[m] * p) * 3u) >> 8);
            }
            for (int m = 0; m < 16; m++) {
                t[160 + 16 * l + m] = (uint8_t)(((uint8_t)(b[i].qs[32 + m] * p) * 3u) >> 8);
            }
        }
        for (int l = 0; l < 4; l++) {
            const uint8_t p = fdy_pow3_tq1_0[l];
            for (int m = 0; m < 4; m++) {
                t[240 + 4 * l + m] = (uint8_t)(((uint8_t)(b[i].qh[m] * p) * 3u) >> 8);
            }
        }
        for (int j = 0; j < 256; j++) {
            y[j] = d * (float)((int)t[j] - 1);
        }
    }
}
#if defined(__x86_64__)
/* 16 trits t = ((uint8_t)(q * p) * 3) >> 8 of 16 bytes q, with the multipliers p (16-bit lanes) */
FDY_DEQ_TARGET_AVX2 FDY_DEQ_INLINE __m128i tq1_0_trits16(__m128i q, __m256i p) {
    __m256i w = _mm256_and_si256(_mm256_mullo_epi16(_mm256_cvtepu8_epi16(q), p),
                                 _mm256_set1_epi16(0xFF));
    w = _mm256_srli_epi16(_mm256_mullo_epi16(w, _mm256_set1_epi16(3)), 8);
    return _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
}

/* trit - 1 of 32 bytes x = (uint8_t)(q * p): ((x * 3) >> 8) - 1 = [x >= 86] + [x >= 171] - 1 */
FDY_DEQ_TARGET_AVX2 FDY_DEQ_INLINE __m256i tq1_0_trits32m1(__m256i x) {
    const __m256i ge86 = _mm256_cmpeq_epi8(_mm256_max_epu8(x, _mm256_set1_epi8(86)), x);
    const __m256i ge171 = _mm256_cmpeq_epi8(_mm256_max_epu8(x, _mm256_set1_epi8((char)171)), x);
    return _mm256_sub_epi8(_mm256_sub_epi8(_mm256_set1_epi8(-1), ge86), ge171);
}

/* the products q * 3^l (mod 256) by repeated byte additions x + x + x */
#define TQ1_0_DEQ_BODY(S)                                                                  \
    {                                                                                      \
        const fdy_block_tq1_0 *b = (const fdy_block_tq1_0 *)src;                           \
        const __m256i c1 = _mm256_set1_epi8(1);                                            \
        const __m256i ph = _mm256_setr_epi16(1, 1, 1, 1, 3, 3, 3, 3, 9, 9, 9, 9, 27, 27, 27, 27); \
        for (int64_t i = 0; i < n / 256; i++) {                                            \
            const float d = fdy_half_to_float(b[i].d);                                     \
            float *y = dst + i * 256;                                                      \
            __m256i x = _mm256_loadu_si256((const __m256i *)b[i].qs);                      \
            __m256i x2 = _mm256_broadcastsi128_si256(                                      \
                _mm_loadu_si128((const __m128i *)(b[i].qs + 32)));                         \
            __m256i t2[5];                                                                 \
            for (int l = 0; l < 5; l++) {                                                  \
                fdy_deq_s8x32_##S(tq1_0_trits32m1(x), d, d, y + 32 * l);                   \
                t2[l] = tq1_0_trits32m1(x2);                                               \
                x = _mm256_add_epi8(_mm256_add_epi8(x, x), x);                             \
                x2 = _mm256_add_epi8(_mm256_add_epi8(x2, x2), x2);                         \
            }                                                                              \
            uint32_t h4;                                                                   \
            memcpy(&h4, b[i].qh, 4);                                                       \
            const __m128i t3 = _mm_sub_epi8(tq1_0_trits16(_mm_set1_epi32((int)h4), ph),    \
                                            _mm256_castsi256_si128(c1));                   \
            fdy_deq_s8x32_##S(_mm256_blend_epi32(t2[0], t2[1], 0xF0), d, d, y + 160);      \
            fdy_deq_s8x32_##S(_mm256_blend_epi32(t2[2], t2[3], 0xF0), d, d, y + 192);      \
            fdy_deq_s8x32_##S(_mm256_inserti128_si256(t2[4], t3, 1), d, d, y + 224);       \
        }                                                                                  \
    }
FDY_DEQ_BOTH(tq1_0_dequantize, TQ1_0_DEQ_BODY)
#endif
FDY_DEQ_SELECT(tq1_0_dequantize, tq1_0_dequantize_rows)

/* pack trits t[0], t[stride], ... (count of them, most significant first) into one byte */
static uint8_t tq1_0_pack(const int *t, int stride, int count) {
    unsigned v = 0;
    for (int l = 0; l < 5; l++) {
        v = v * 3u + (l < count ? (unsigned)t[l * stride] : 0u);
    }
    return (uint8_t)((v * 256u + 242u) / 243u); /* ceiling division, 243 = 3^5 */
}

static void tq1_0_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_tq1_0 *b = (fdy_block_tq1_0 *)dst;
    int t[256];
    for (int64_t i = 0; i < n / 256; i++) {
        const float *x = src + i * 256;
        float amax = 0.0f;
        for (int j = 0; j < 256; j++) {
            amax = fmaxf(amax, fabsf(x[j]));
        }
        const float d = amax;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < 256; j++) {
            t[j] = (int)fdy_roundf(x[j] * id) + 1;
        }
        for (int m = 0; m < 32; m++) {
            b[i].qs[m] = tq1_0_pack(t + m, 32, 5);
        }
        for (int m = 0; m < 16; m++) {
            b[i].qs[32 + m] = tq1_0_pack(t + 160 + m, 16, 5);
        }
        for (int m = 0; m < 4; m++) {
            b[i].qh[m] = tq1_0_pack(t + 240 + m, 4, 4);
        }
        b[i].d = fdy_float_to_half(d);
    }
}

/* ---- q8 variant: integer dot with a Q8_K activation row (simd_kquants.h) ----
 * per block: d_a * d * ((t . a) - sum(a)), t the trits; sum(a) from the bsums.
 * SIMD trit extraction: with a byte b in the high half of a 16-bit lane, (b << 8) * 3^l keeps
 * (b * 3^l mod 256) << 8 and the high 16 bits of that times 3 are trit l. */

static float tq1_0_vec_dot_portable(const void *w, const void *a, int64_t n) {
    const fdy_block_tq1_0 *x = (const fdy_block_tq1_0 *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    int16_t q[256];
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 256; i++) {
        for (int l = 0; l < 5; l++) {
            const uint8_t p = fdy_pow3_tq1_0[l];
            for (int m = 0; m < 32; m++) {
                q[32 * l + m] = (int16_t)((((uint8_t)(x[i].qs[m] * p) * 3u) >> 8) - 1);
            }
            for (int m = 0; m < 16; m++) {
                q[160 + 16 * l + m] = (int16_t)((((uint8_t)(x[i].qs[32 + m] * p) * 3u) >> 8) - 1);
            }
        }
        for (int l = 0; l < 4; l++) {
            const uint8_t p = fdy_pow3_tq1_0[l];
            for (int m = 0; m < 4; m++) {
                q[240 + 4 * l + m] = (int16_t)((((uint8_t)(x[i].qh[m] * p) * 3u) >> 8) - 1);
            }
        }
        sum += y[i].d * fdy_half_to_float(x[i].d) * (float)fdy_kq_dot256(q, y[i].qs);
    }
    return sum;
}

#if defined(__x86_64__)
/* int16 multipliers 3^l of the trit vectors below, one per 16-bit lane (2 bytes) */
static const int16_t tq1_0_pow3_lanes[4][32] = {
    /* qs[0..31] x {1 | 3} and x {9 | 27}: elements 0..63, 64..127 */
    {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
     3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3},
    {9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
     27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27},
    /* qs[0..31] x 81 | qs[32..47] x {1, 3}: elements 128..191 */
    {81, 81, 81, 81, 81, 81, 81, 81, 81, 81, 81, 81, 81, 81, 81, 81,
     1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3},
    /* qs[32..47] x {9, 27} | qs[32..47] x 81, qh[0..3] x4 x {1, 3, 9, 27}: elements 192..255 */
    {9, 9, 9, 9, 9, 9, 9, 9, 27, 27, 27, 27, 27, 27, 27, 27,
     81, 81, 81, 81, 81, 81, 81, 81, 1, 1, 3, 3, 9, 9, 27, 27},
};

__attribute__((target(FDY_KQ_AVX2_TARGET))) static inline __m256i tq1_0_trits256(__m256i b,
                                                                                __m256i p) {
    const __m256i three = _mm256_set1_epi16(3);
    const __m256i te = _mm256_mulhi_epu16(_mm256_mullo_epi16(_mm256_slli_epi16(b, 8), p), three);
    const __m256i to = _mm256_mulhi_epu16(
        _mm256_mullo_epi16(_mm256_and_si256(b, _mm256_set1_epi16((short)0xFF00)), p), three);
    return _mm256_or_si256(te, _mm256_slli_epi16(to, 8));
}

__attribute__((target(FDY_KQ_AVX2_TARGET))) static float tq1_0_vec_dot_avx2(const void *w,
                                                                          const void *a,
                                                                          int64_t n) {
    const fdy_block_tq1_0 *x = (const fdy_block_tq1_0 *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i *pw = (const __m256i *)tq1_0_pow3_lanes;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        const __m256i b0 = _mm256_loadu_si256((const __m256i *)x[i].qs);
        const __m128i c = _mm_loadu_si128((const __m128i *)(x[i].qs + 32));
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        const __m256i b1 = _mm256_broadcastsi128_si256(c);
        const __m256i b2 = _mm256_set_m128i(_mm_set1_epi32((int)qh), c);
        /* the 8 trit vectors of elements 32v .. 32v+31 (int16 sums stay within 8 x 2 x 2 x 128) */
        __m256i t[8];
        t[0] = tq1_0_trits256(b0, _mm256_set1_epi16(1));
        t[1] = tq1_0_trits256(b0, _mm256_set1_epi16(3));
        t[2] = tq1_0_trits256(b0, _mm256_set1_epi16(9));
        t[3] = tq1_0_trits256(b0, _mm256_set1_epi16(27));
        t[4] = tq1_0_trits256(b0, _mm256_set1_epi16(81));
        t[5] = tq1_0_trits256(b1, _mm256_loadu_si256(pw + 5)); /* {1 | 3} */
        t[6] = tq1_0_trits256(b1, _mm256_loadu_si256(pw + 6)); /* {9 | 27} */
        t[7] = tq1_0_trits256(b2, _mm256_loadu_si256(pw + 7)); /* {81 | 1, 3, 9, 27} */
        __m256i s16 = _mm256_setzero_si256();
        #pragma GCC unroll 8
        for (int v = 0; v < 8; v++) {
            const __m256i a8 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 32 * v));
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(t[v], a8));
        }
        const __m256i bs = _mm256_loadu_si256((const __m256i *)y[i].bsums);
        const __m256i sumi = _mm256_madd_epi16(_mm256_sub_epi16(s16, bs), ones);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * fdy_kq_half(x[i].d)),
                              _mm256_cvtepi32_ps(sumi), acc);
    }
    return fdy_kq_hsum256(acc);
}

FDY_KQ_BODY512 __m512i tq1_0_trits512(__m512i b, __m512i p) {
    const __m512i three = _mm512_set1_epi16(3);
    const __m512i te = _mm512_mulhi_epu16(_mm512_mullo_epi16(_mm512_slli_epi16(b, 8), p), three);
    const __m512i to = _mm512_mulhi_epu16(
        _mm512_mullo_epi16(_mm512_and_si512(b, _mm512_set1_epi16((short)0xFF00)), p), three);
    return _mm512_or_si512(te, _mm512_slli_epi16(to, 8));
}

FDY_KQ_BODY512 float tq1_0_vec_dot_body512(const void *w, const void *a, int64_t n,
                                           const int vnni) {
    const fdy_block_tq1_0 *x = (const fdy_block_tq1_0 *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    __m512i pw[4];
    for (int v = 0; v < 4; v++) {
        pw[v] = _mm512_loadu_si512((const void *)tq1_0_pow3_lanes[v]);
    }
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        const __m256i b = _mm256_loadu_si256((const __m256i *)x[i].qs);
        const __m128i c = _mm_loadu_si128((const __m128i *)(x[i].qs + 32));
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        const __m512i z01 = _mm512_broadcast_i64x4(b);
        const __m512i z2 = _mm512_inserti64x4(_mm512_castsi256_si512(b),
                                              _mm256_broadcastsi128_si256(c), 1);
        const __m512i z3 =
            _mm512_inserti32x4(_mm512_broadcast_i32x4(c), _mm_set1_epi32((int)qh), 3);
        const __m256i s = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y[i].bsums),
                                            _mm256_set1_epi16(1));
        __m512i sumi = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_zextsi256_si512(s));
        sumi = fdy_kq_dpbusd_small(sumi, tq1_0_trits512(z01, pw[0]),
                                   _mm512_loadu_si512((const void *)y[i].qs), vnni);
        sumi = fdy_kq_dpbusd_small(sumi, tq1_0_trits512(z01, pw[1]),
                                   _mm512_loadu_si512((const void *)(y[i].qs + 64)), vnni);
        sumi = fdy_kq_dpbusd_small(sumi, tq1_0_trits512(z2, pw[2]),
                                   _mm512_loadu_si512((const void *)(y[i].qs + 128)), vnni);
        sumi = fdy_kq_dpbusd_small(sumi, tq1_0_trits512(z3, pw[3]),
                                   _mm512_loadu_si512((const void *)(y[i].qs + 192)), vnni);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(y[i].d * fdy_kq_half(x[i].d)),
                              _mm512_cvtepi32_ps(sumi), acc);
    }
    return _mm512_reduce_add_ps(acc);
}
FDY_KQ_AVX512_ENTRIES(tq1_0_vec_dot)
#endif

FDY_KQ_DISPATCH(tq1_0_vec_dot)

/* roundtrip bound: 1.3x the measured 0.798 would pass an all-zero decoder (1.0), so the
 * bound is 0.9 instead; ternary codes with d = max|x| send most Gaussian weights to 0 */
/* ---- to_i8 (prefill GEMM): q = trit - 1, scale = d, min = 0; bit-exact */
static void tq1_0_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                        float *restrict min, int64_t n) {
    const fdy_block_tq1_0 *b = (const fdy_block_tq1_0 *)src;
    for (int64_t i = 0; i < n / 256; i++) {
        const float d = fdy_half_to_float(b[i].d);
        for (int sub = 0; sub < 16; sub++) {
            int8_t *y = q + 256 * i + 16 * sub;
            for (int l = 0; l < 16; l++) {
                const uint8_t byte = sub < 10 ? b[i].qs[16 * (sub & 1) + l]
                                   : sub < 15 ? b[i].qs[32 + l] : b[i].qh[l & 3];
                const int pos = sub < 10 ? sub >> 1 : sub < 15 ? sub - 10 : l >> 2;
                y[l] = (int8_t)(fdy_trit_tq1_0(byte, pos) - 1);
            }
            scale[16 * i + sub] = d;
            min[16 * i + sub] = 0.0f;
        }
    }
}

FDY_POLICY_DEFINE(tq1_0, .block_elems = FDY_TQ1_0_BLOCK_ELEMS,
                  .block_bytes = FDY_TQ1_0_BLOCK_BYTES, .sub_elems = FDY_TQ1_0_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_k",
                  .tol_roundtrip = 0.9f /* measured 0.798 */, .tol_f32 = 1e-5f, .tol_q8 = 1e-2f,
                  .decode = fdy_decode_tq1_0, .dequantize_fast = tq1_0_dequantize,
                  .quantize = tq1_0_quantize,
                  .vec_dot = tq1_0_vec_dot,
                  .to_i8 = tq1_0_to_i8);
#endif
