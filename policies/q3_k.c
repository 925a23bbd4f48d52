/* q3_k - super-blocks of 256 weights in 16 groups of 16: 3-bit signed codes with a 6-bit
 * signed scale per group and one f16 super-scale; w = d * (sc - 32) * q, q in [-4, 3].
 *
 *   block (256 elements, 110 bytes):
 *   | hmask[0..31]: u8 (32) | qs[0..63]: u8 (64) | scales[0..11]: u8 (12) | d: f16 (2) |
 *
 *   Element e = 128h + 32k + l (h = 0..1, k = 0..3, l = 0..31): low two bits in bits 2k..2k+1
 *   of qs[32h + l]; high bit in bit 4h+k of hmask[l]; q = low - (high ? 0 : 4).
 *   Scale of group g (elements 16g ..): low nibble from scales[g] (g < 8) or the high nibble
 *   of scales[g-8] (g >= 8); bits 4-5 from bits 2(g/4)..2(g/4)+1 of scales[8 + g%4].
 *
 * Quantizer (llama.cpp quantize_row_q3_K_ref): per group a symmetric fit with weights x^2 and
 * single-level refinement (make_q3_quants, nmax 4); the group scales are quantized to 6 bits
 * against the largest-magnitude one (d = -max / 32) and the codes recomputed.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_Q3_K_BLOCK_ELEMS 256
#define FDY_Q3_K_BLOCK_BYTES 110
#define FDY_Q3_K_SUB_ELEMS 16

typedef struct fdy_block_q3_k {
    uint8_t hmask[32];
    uint8_t qs[64];
    uint8_t scales[12];
    uint16_t d;
} fdy_block_q3_k;
FDY_STATIC_ASSERT(sizeof(fdy_block_q3_k) == FDY_Q3_K_BLOCK_BYTES, "q3_k block size");

/* the 6-bit scale of group g, minus 32 */
FDY_FN int fdy_q3_k_scale(FDY_GLOBAL const uint8_t *s, int g) {
    const int lo = g < 8 ? (s[g] & 0xF) : (s[g - 8] >> 4);
    const int hi = (s[8 + (g & 3)] >> (2 * (g >> 2))) & 3;
    return (lo | (hi << 4)) - 32;
}

FDY_FN void fdy_decode_q3_k(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_q3_k *b = (FDY_GLOBAL const fdy_block_q3_k *)blk;
    const float dl = fdy_half_to_float(b->d) * (float)fdy_q3_k_scale(b->scales, sub);
    const int h = sub >> 3;
    const int k = (sub & 7) >> 1;
    const int l0 = 16 * (sub & 1);
    FDY_GLOBAL const uint8_t *q = b->qs + 32 * h + l0;
    FDY_GLOBAL const uint8_t *hm = b->hmask + l0;
    const int hbit = 4 * h + k;
    for (int l = 0; l < 16; l++) {
        const int v = ((q[l] >> (2 * k)) & 3) - (((hm[l] >> hbit) & 1) ? 0 : 4);
        out[l] = dl * (float)v;
    }
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_dequant.h"
#include "kquant_ref.h"
#include "simd_kquants.h"
#include "simd_dotf32.h"

/* two passes per block, both plain loops the compiler vectorizes: unpack the signed 3-bit
 * codes in element order, then scale them group by group (same float expression as decode) */
FDY_DEQ_INLINE void q3_k_dequantize_rows(const void *src, float *dst, int64_t n) {
    const fdy_block_q3_k *b = (const fdy_block_q3_k *)src;
    int8_t q[256];
    for (int64_t i = 0; i < n / 256; i++) {
        for (int h = 0; h < 2; h++) {
            for (int k = 0; k < 4; k++) {
                const int hbit = 4 * h + k;
                for (int l = 0; l < 32; l++) {
                    const int low = (b[i].qs[32 * h + l] >> (2 * k)) & 3;
                    const int off = (((b[i].hmask[l] >> hbit) & 1) ^ 1) << 2; /* 4 when bit clear */
                    q[128 * h + 32 * k + l] = (int8_t)(low - off);
                }
            }
        }
        const float d = fdy_half_to_float(b[i].d);
        float *y = dst + i * 256;
        for (int g = 0; g < 16; g++) {
            const float dl = d * (float)fdy_q3_k_scale(b[i].scales, g);
            for (int l = 0; l < 16; l++) {
                y[16 * g + l] = dl * (float)q[16 * g + l];
            }
        }
    }
}
#if defined(__x86_64__)
#define Q3_K_DEQ_BODY(S)                                                                   \
    {                                                                                      \
        const fdy_block_q3_k *b = (const fdy_block_q3_k *)src;                             \
        const __m256i m3 = _mm256_set1_epi8(3), c4 = _mm256_set1_epi8(4);                  \
        for (int64_t i = 0; i < n / 256; i++) {                                            \
            const float d = fdy_half_to_float(b[i].d);                                     \
            float dl[16];                                                                  \
            for (int g = 0; g < 16; g++) {                                                 \
                dl[g] = d * (float)fdy_q3_k_scale(b[i].scales, g);                         \
            }                                                                              \
            float *y = dst + i * 256;                                                      \
            const __m256i Hm = _mm256_loadu_si256((const __m256i *)b[i].hmask);            \
            for (int h = 0; h < 2; h++) {                                                  \
                const __m256i Q = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * h)); \
                for (int k = 0; k < 4; k++) {                                              \
                    const int g = 8 * h + 2 * k;                                           \
                    const __m256i low = _mm256_and_si256(_mm256_srli_epi16(Q, 2 * k), m3); \
                    const __m256i clear = _mm256_cmpeq_epi8(                               \
                        _mm256_and_si256(Hm, _mm256_set1_epi8((char)(1 << (4 * h + k)))),  \
                        _mm256_setzero_si256());                                           \
                    const __m256i q = _mm256_sub_epi8(low, _mm256_and_si256(clear, c4));   \
                    fdy_deq_s8x32_##S(q, dl[g], dl[g + 1], y + 16 * g);                    \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
    }
FDY_DEQ_BOTH(q3_k_dequantize, Q3_K_DEQ_BODY)
#endif
FDY_DEQ_SELECT(q3_k_dequantize, q3_k_dequantize_rows)

static void q3_k_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_q3_k *b = (fdy_block_q3_k *)dst;
    int8_t L[256];
    float scales[16];
    for (int64_t i = 0; i < n / 256; i++) {
        const float *x = src + i * 256;
        float max_scale = 0.0f, amax = 0.0f;
        for (int g = 0; g < 16; g++) {
            scales[g] = fdy_kq_q3(16, 4, x + 16 * g, L + 16 * g);
            const float a = fabsf(scales[g]);
            if (a > amax) {
                amax = a;
                max_scale = scales[g];
            }
        }
        memset(b[i].scales, 0, 12);
        if (max_scale != 0.0f) {
            const float iscale = -32.0f / max_scale;
            for (int g = 0; g < 16; g++) {
                /* llama.cpp narrows the rounded value to int8 before clamping */
                const int8_t r = (int8_t)fdy_nearest_int(iscale * scales[g]);
                const int l = fdy_kq_clamp(r, -32, 31) + 32;
                if (g < 8) {
                    b[i].scales[g] = (uint8_t)(l & 0xF);
                } else {
                    b[i].scales[g - 8] |= (uint8_t)((l & 0xF) << 4);
                }
                b[i].scales[8 + (g & 3)] |= (uint8_t)((l >> 4) << (2 * (g >> 2)));
            }
            b[i].d = fdy_float_to_half(1.0f / iscale);
        } else {
            b[i].d = fdy_float_to_half(0.0f);
        }
        /* recompute the codes against the rounded scales; a group whose scale rounds to zero
         * keeps the codes of the search */
        const float d = fdy_half_to_float(b[i].d);
        for (int g = 0; g < 16; g++) {
            const float dl = d * (float)fdy_q3_k_scale(b[i].scales, g);
            if (dl == 0.0f) {
                continue;
            }
            for (int l = 0; l < 16; l++) {
                L[16 * g + l] =
                    (int8_t)(fdy_kq_clamp(fdy_nearest_int(x[16 * g + l] / dl), -4, 3) + 4);
            }
        }
        memset(b[i].hmask, 0, 32);
        for (int j = 0; j < 256; j++) {
            if (L[j] > 3) {
                b[i].hmask[j & 31] |= (uint8_t)(1u << (j >> 5));
                L[j] = (int8_t)(L[j] - 4);
            }
        }
        for (int h = 0; h < 2; h++) {
            const int8_t *Lh = L + 128 * h;
            for (int l = 0; l < 32; l++) {
                b[i].qs[32 * h + l] = (uint8_t)(Lh[l] | (Lh[l + 32] << 2) | (Lh[l + 64] << 4) |
                                                (Lh[l + 96] << 6));
            }
        }
    }
}

/* ---- q8 variant: integer dot with a Q8_K activation row (simd_kquants.h) ----
 * per block: d_a * d * sum_g s_g * (q . a)_g; the SIMD kernels take the codes as u = q + 4
 * (0..7, unsigned) and subtract 4 * bsums_g */

static float q3_k_vec_dot_portable(const void *w, const void *a, int64_t n) {
    const fdy_block_q3_k *x = (const fdy_block_q3_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    int16_t q[256];
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 256; i++) {
        for (int h = 0; h < 2; h++) {
            for (int k = 0; k < 4; k++) {
                const int hbit = 4 * h + k;
                for (int t = 0; t < 2; t++) {
                    const int s = fdy_q3_k_scale(x[i].scales, 8 * h + 2 * k + t);
                    for (int l = 16 * t; l < 16 * t + 16; l++) {
                        const int low = (x[i].qs[32 * h + l] >> (2 * k)) & 3;
                        const int high = (x[i].hmask[l] >> hbit) & 1;
                        q[128 * h + 32 * k + l] = (int16_t)((low + 4 * high - 4) * s);
                    }
                }
            }
        }
        sum += y[i].d * fdy_half_to_float(x[i].d) * (float)fdy_kq_dot256(q, y[i].qs);
    }
    return sum;
}

#if defined(__x86_64__)
__attribute__((target(FDY_KQ_AVX2_TARGET))) static float q3_k_vec_dot_avx2(const void *w,
                                                                         const void *a,
                                                                         int64_t n) {
    const fdy_block_q3_k *x = (const fdy_block_q3_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i four = _mm256_set1_epi8(4);
    __m256i ctl[4];
    for (int k = 0; k < 4; k++) {
        ctl[k] = _mm256_set_m128i(_mm_set1_epi16(FDY_KQ_WORD(2 * k + 1)),
                                  _mm_set1_epi16(FDY_KQ_WORD(2 * k)));
    }
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        fdy_stream_prefetch(&x[i], 2); /* 110 bytes a super-block */
        const float d = y[i].d * fdy_kq_half(x[i].d);
        const __m128i sc8 = fdy_kq_scales_q3_k((const uint8_t *)&x[i]);
        const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
        __m256i sumi = _mm256_sub_epi32(
            _mm256_setzero_si256(),
            _mm256_slli_epi32(
                _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y[i].bsums), sc16), 2));
        const __m256i hm = _mm256_loadu_si256((const __m256i *)x[i].hmask);
        #pragma GCC unroll 8
        for (int h = 0; h < 2; h++) {
            const __m256i sc = _mm256_broadcastsi128_si256(
                h ? _mm256_extracti128_si256(sc16, 1) : _mm256_castsi256_si128(sc16));
            const __m256i qv = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h));
            #pragma GCC unroll 8
            for (int k = 0; k < 4; k++) {
                /* hmask bit b = 4h + k moved to bit 2 of the same byte: 4 where it is set */
                const int b = 4 * h + k;
                const __m256i hb = _mm256_and_si256(
                    b < 2 ? _mm256_slli_epi16(hm, 2 - b) : _mm256_srli_epi16(hm, b - 2), four);
                const __m256i uq =
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qv, 2 * k), m3), hb);
                const __m256i a8 =
                    _mm256_loadu_si256((const __m256i *)(y[i].qs + 128 * h + 32 * k));
                sumi = _mm256_add_epi32(
                    sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(uq, a8),
                                            _mm256_shuffle_epi8(sc, ctl[k])));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return fdy_kq_hsum256(acc);
}

FDY_KQ_BODY512 float q3_k_vec_dot_body512(const void *w, const void *a, int64_t n,
                                          const int vnni) {
    const fdy_block_q3_k *x = (const fdy_block_q3_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m512i four = _mm512_set1_epi8(4);
    /* shift counts of the 2-bit planes k = 0 | 1 and k = 2 | 3 */
    const __m512i sh01 = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const __m512i sh23 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(6), 1);
    __m512i idx[4], bits[4];
    for (int c = 0; c < 4; c++) {
        idx[c] = fdy_kq_group16_idx(c);
        /* hmask bits 2c, 2c + 1 (h = c / 2, k = 2 (c % 2) | 2 (c % 2) + 1) */
        bits[c] = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * c))),
                                     _mm256_set1_epi8((char)(2 << (2 * c))), 1);
    }
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        fdy_stream_prefetch(&x[i], 2); /* 110 bytes a super-block */
        const float d = y[i].d * fdy_kq_half(x[i].d);
        const __m128i sc8 = fdy_kq_scales_q3_k((const uint8_t *)&x[i]);
        const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
        const __m256i corr = _mm256_slli_epi32(
            _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y[i].bsums), sc16), 2);
        __m512i sumi = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_zextsi256_si512(corr));
        const __m512i scz = _mm512_castsi256_si512(sc16);
        const __m512i hm = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)x[i].hmask));
        #pragma GCC unroll 8
        for (int h = 0; h < 2; h++) {
            const __m512i qv =
                _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h)));
            #pragma GCC unroll 8
            for (int t = 0; t < 2; t++) {
                const int c = 2 * h + t;
                const __m512i lo = _mm512_and_si512(_mm512_srlv_epi16(qv, t ? sh23 : sh01), m3);
                const __m512i uq =
                    _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(hm, bits[c]), lo, four);
                const __m512i a8 = _mm512_loadu_si512((const void *)(y[i].qs + 64 * c));
                sumi = fdy_kq_dpwssd(sumi, _mm512_maddubs_epi16(uq, a8),
                                     _mm512_permutexvar_epi16(idx[c], scz), vnni);
            }
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
    }
    return _mm512_reduce_add_ps(acc);
}
FDY_KQ_AVX512_ENTRIES(q3_k_vec_dot)
#endif

FDY_KQ_DISPATCH(q3_k_vec_dot)

/* roundtrip: measured relative L2 error 0.150 on N(0, 1) rows (random_rows seed 6) */
/* ---- to_i8 (prefill GEMM): q = 3-bit signed code (-4 .. 3), scale = d * sc per 16, min = 0;
 * bit-exact */
static void q3_k_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                       float *restrict min, int64_t n) {
    /* element 128 h + 32 k + l = ((qs[32 h + l] >> 2 k) & 3) - 4 unless bit 4 h + k of
     * hmask[l] (decode's indexing) */
    const fdy_block_q3_k *b = (const fdy_block_q3_k *)src;
    for (int64_t i = 0; i < n / 256; i++) {
        const float d = fdy_half_to_float(b[i].d);
        for (int h = 0; h < 2; h++) {
            const uint8_t *qs = b[i].qs + 32 * h, *hm = b[i].hmask;
            int8_t *y = q + 256 * i + 128 * h;
            for (int k = 0; k < 4; k++) {
                const int hb = 4 * h + k;
                for (int l = 0; l < 32; l++) {
                    y[32 * k + l] = (int8_t)(((qs[l] >> (2 * k)) & 3) - 4 + 4 * ((hm[l] >> hb) & 1));
                }
            }
        }
        for (int sub = 0; sub < 16; sub++) {
            scale[16 * i + sub] = d * (float)fdy_q3_k_scale(b[i].scales, sub);
            min[16 * i + sub] = 0.0f;
        }
    }
}

/* ---- vec_dot_f32 (f32-variant GEMV): per group g of 16, dl_g * sum_l q_l x_l with dl_g = d *
 * (sc_g - 32) as the decode forms it (at most 16 significant bits, so each weight dl_g * q is
 * exact in float and the group scale adds one rounding) and the signed code q in [-4, 3].  On
 * x86 the AVX2 row-range kernel runs on the AVX2 and AVX-512 tiers (docs/CPU_NOTES.md item 37)
 * ---- */
FDY_DF_PORTABLE_DECODE(q3_k, fdy_decode_q3_k, FDY_Q3_K_BLOCK_ELEMS, FDY_Q3_K_BLOCK_BYTES,
                       FDY_Q3_K_SUB_ELEMS)

#if defined(__x86_64__)
/* the activation of one super-block, rearranged 32 elements (a chunk: h, k) at a time as
 * fdy_df_q8s_place2 reads it, times 2^-24 (exact for |x| >= 2^-102) */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q3_k_prep(const float *x, int full, float *xp) {
    (void)full;
    fdy_df_q8s_prep_chunks(x, 8, 0x1p-24f, xp);
}

/* the signed codes of chunk (h, k) in element order: the low two bits (bits 2k.. of the 32
 * bytes qv at qs + 32 h) minus 4 where hmask bit 4h + k (in hm) is clear */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE __m256i fdy_df_q3_k_codes(__m256i qv, __m256i hm, int k,
                                                           int hbit) {
    const __m256i low = _mm256_and_si256(_mm256_srli_epi16(qv, 2 * k), _mm256_set1_epi8(3));
    const __m256i clear = _mm256_cmpeq_epi8(
        _mm256_and_si256(hm, _mm256_set1_epi8((char)(1 << hbit))), _mm256_setzero_si256());
    return _mm256_add_epi8(low, _mm256_and_si256(clear, _mm256_set1_epi8(-4)));
}

/* one super-block of two rows: per chunk of 32 elements (groups 8h + 2k and 8h + 2k + 1 in the
 * two 128-bit halves) the codes, their products and the sums times the two groups' scales */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q3_k_step2(const uint8_t *b0, const uint8_t *b1,
                                                        int bb, int qs, int full,
                                                        const float *xp, __m256 *a0,
                                                        __m256 *a1) {
    (void)bb;
    (void)full;
    const int hmo = (int)offsetof(fdy_block_q3_k, hmask);
    uint16_t h0, h1;
    memcpy(&h0, b0 + offsetof(fdy_block_q3_k, d), 2);
    memcpy(&h1, b1 + offsetof(fdy_block_q3_k, d), 2);
    const __m256 d0 = _mm256_set1_ps(fdy_df_half(h0)), d1 = _mm256_set1_ps(fdy_df_half(h1));
    const __m128i c0 = fdy_kq_scales_q3_k(b0), c1 = fdy_kq_scales_q3_k(b1);
    /* dl of groups 8h .. 8h + 7, lane by lane */
    const __m256 s0[2] = {_mm256_mul_ps(d0, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c0))),
                          _mm256_mul_ps(d0, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                                _mm_unpackhi_epi64(c0, c0))))};
    const __m256 s1[2] = {_mm256_mul_ps(d1, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c1))),
                          _mm256_mul_ps(d1, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                                _mm_unpackhi_epi64(c1, c1))))};
    const __m256i hv = _mm256_loadu_si256((const __m256i *)(b0 + hmo));
    const __m256i hu = _mm256_loadu_si256((const __m256i *)(b1 + hmo));
    for (int h = 0; h < 2; h++) {
        const __m256i qv = _mm256_loadu_si256((const __m256i *)(b0 + qs + 32 * h));
        const __m256i qu = _mm256_loadu_si256((const __m256i *)(b1 + qs + 32 * h));
        for (int k = 0; k < 4; k++) {
            const __m256i pair = fdy_df_pair_lanes(2 * k);
            fdy_df_q8s_place2(fdy_df_q3_k_codes(qv, hv, k, 4 * h + k),
                              fdy_df_q3_k_codes(qu, hu, k, 4 * h + k), 0,
                              _mm256_permutevar8x32_ps(s0[h], pair), _mm256_setzero_ps(),
                              _mm256_permutevar8x32_ps(s1[h], pair), _mm256_setzero_ps(),
                              xp + 128 * h + 32 * k, a0, a1);
        }
    }
}
#endif
FDY_DF_ROWS_KERNEL(q3_k, FDY_Q3_K_BLOCK_BYTES, FDY_Q3_K_BLOCK_ELEMS,
                   (int)offsetof(fdy_block_q3_k, qs))

FDY_POLICY_DEFINE(q3_k, .block_elems = FDY_Q3_K_BLOCK_ELEMS,
                  .block_bytes = FDY_Q3_K_BLOCK_BYTES, .sub_elems = FDY_Q3_K_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_k", .tol_roundtrip = 0.2f,
                  .tol_f32 = 1e-5f, .tol_q8 = 1e-2f, .decode = fdy_decode_q3_k,
                  .dequantize_fast = q3_k_dequantize, .quantize = q3_k_quantize,
                  .vec_dot = q3_k_vec_dot,
                  .to_i8 = q3_k_to_i8, .vec_dot_f32 = q3_k_vec_dot_f32,
                  .vec_dot_f32_rows = q3_k_vec_dot_f32_rows);
#endif
