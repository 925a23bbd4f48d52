/* q5_k - super-blocks of 256 weights in 8 groups of 32: 5-bit codes with a 6-bit scale and a
 * 6-bit min per group, and two f16 super-scales; w = d * sc * q - dmin * m.
 *
 *   block (256 elements, 176 bytes):
 *   | d: f16 (2) | dmin: f16 (2) | scales[0..11]: u8 (12) | qh[0..31]: u8 (32) | qs[0..127]: u8 (128) |
 *
 *   scales: the same 12-byte packing of eight 6-bit (sc, m) pairs as q4_k.
 *   Element e = 64c + 32t + l (c = 0..3, t = 0..1, l = 0..31), group g = e / 32 = 2c + t:
 *   low 4 bits in nibble t of qs[32c + l], bit 4 in bit g of qh[l].
 *
 * Quantizer (llama.cpp quantize_row_q5_K_ref): as q4_k with nmax 31 and 16 search steps from
 * -0.5 by 0.1 (make_qkx2_quants), then 6-bit scales/mins and recomputed codes.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_Q5_K_BLOCK_ELEMS 256
#define FDY_Q5_K_BLOCK_BYTES 176
#define FDY_Q5_K_SUB_ELEMS 32

typedef struct fdy_block_q5_k {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qh[32];
    uint8_t qs[128];
} fdy_block_q5_k;
FDY_STATIC_ASSERT(sizeof(fdy_block_q5_k) == FDY_Q5_K_BLOCK_BYTES, "q5_k block size");

/* 6-bit scale (sc) and min (m) of group g from the 12-byte packing */
FDY_FN int fdy_q5_k_sc(FDY_GLOBAL const uint8_t *s, int g) {
    return g < 4 ? (s[g] & 63) : ((s[g + 4] & 0xF) | ((s[g - 4] >> 6) << 4));
}

FDY_FN int fdy_q5_k_m(FDY_GLOBAL const uint8_t *s, int g) {
    return g < 4 ? (s[g + 4] & 63) : ((s[g + 4] >> 4) | ((s[g] >> 6) << 4));
}

FDY_FN void fdy_decode_q5_k(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_q5_k *b = (FDY_GLOBAL const fdy_block_q5_k *)blk;
    const float dl = fdy_half_to_float(b->d) * (float)fdy_q5_k_sc(b->scales, sub);
    const float ml = fdy_half_to_float(b->dmin) * (float)fdy_q5_k_m(b->scales, sub);
    FDY_GLOBAL const uint8_t *q = b->qs + 32 * (sub >> 1);
    const int shift = 4 * (sub & 1);
    for (int l = 0; l < 32; l++) {
        const int v = ((q[l] >> shift) & 0xF) + (((b->qh[l] >> sub) & 1) << 4);
        out[l] = dl * (float)v - ml;
    }
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_dequant.h"
#include "kquant_ref.h"
#include "simd_kquants.h"
#include "simd_dotf32.h"

FDY_DEQ_INLINE void q5_k_dequantize_rows(const void *src, float *dst, int64_t n) {
    const fdy_block_q5_k *b = (const fdy_block_q5_k *)src;
    for (int64_t i = 0; i < n / 256; i++) {
        const float d = fdy_half_to_float(b[i].d);
        const float dmin = fdy_half_to_float(b[i].dmin);
        const uint8_t *qh = b[i].qh;
        float *y = dst + i * 256;
        for (int c = 0; c < 4; c++) {
            const int g1 = 2 * c, g2 = 2 * c + 1;
            const float d1 = d * (float)fdy_q5_k_sc(b[i].scales, g1);
            const float m1 = dmin * (float)fdy_q5_k_m(b[i].scales, g1);
            const float d2 = d * (float)fdy_q5_k_sc(b[i].scales, g2);
            const float m2 = dmin * (float)fdy_q5_k_m(b[i].scales, g2);
            const uint8_t *q = b[i].qs + 32 * c;
            for (int l = 0; l < 32; l++) {
                y[64 * c + l] = d1 * (float)((q[l] & 0xF) + (((qh[l] >> g1) & 1) << 4)) - m1;
            }
            for (int l = 0; l < 32; l++) {
                y[64 * c + 32 + l] = d2 * (float)((q[l] >> 4) + (((qh[l] >> g2) & 1) << 4)) - m2;
            }
        }
    }
}
#if defined(__x86_64__)
#define Q5_K_DEQ_BODY(S)                                                                   \
    {                                                                                      \
        const fdy_block_q5_k *b = (const fdy_block_q5_k *)src;                             \
        const __m256i m4 = _mm256_set1_epi8(0x0F), c16 = _mm256_set1_epi8(16);             \
        for (int64_t i = 0; i < n / 256; i++) {                                            \
            const float d = fdy_half_to_float(b[i].d);                                     \
            const float dmin = fdy_half_to_float(b[i].dmin);                               \
            const __m256i QH = _mm256_loadu_si256((const __m256i *)b[i].qh);               \
            float *y = dst + i * 256;                                                      \
            for (int c = 0; c < 4; c++) {                                                  \
                const int g1 = 2 * c, g2 = 2 * c + 1;                                      \
                const float d1 = d * (float)fdy_q5_k_sc(b[i].scales, g1);                  \
                const float m1 = dmin * (float)fdy_q5_k_m(b[i].scales, g1);                \
                const float d2 = d * (float)fdy_q5_k_sc(b[i].scales, g2);                  \
                const float m2 = dmin * (float)fdy_q5_k_m(b[i].scales, g2);                \
                const __m256i Q = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * c)); \
                const __m256i h1 = _mm256_andnot_si256(                                    \
                    _mm256_cmpeq_epi8(_mm256_and_si256(QH, _mm256_set1_epi8((char)(1 << g1))), \
                                      _mm256_setzero_si256()),                             \
                    c16);                                                                  \
                const __m256i h2 = _mm256_andnot_si256(                                    \
                    _mm256_cmpeq_epi8(_mm256_and_si256(QH, _mm256_set1_epi8((char)(1 << g2))), \
                                      _mm256_setzero_si256()),                             \
                    c16);                                                                  \
                fdy_deq_u8x32_ms_##S(_mm256_or_si256(_mm256_and_si256(Q, m4), h1), d1, m1, \
                                     d1, m1, y + 64 * c);                                  \
                fdy_deq_u8x32_ms_##S(                                                      \
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(Q, 4), m4), h2), d2, \
                    m2, d2, m2, y + 64 * c + 32);                                          \
            }                                                                              \
        }                                                                                  \
    }
FDY_DEQ_BOTH(q5_k_dequantize, Q5_K_DEQ_BODY)
#endif
FDY_DEQ_SELECT(q5_k_dequantize, q5_k_dequantize_rows)

static void q5_k_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_q5_k *b = (fdy_block_q5_k *)dst;
    uint8_t L[256];
    uint8_t aux[32];
    float w[32];
    float scales[8], mins[8];
    uint8_t ls[8], lm[8];
    for (int64_t i = 0; i < n / 256; i++) {
        const float *x = src + i * 256;
        float max_scale = 0.0f, max_min = 0.0f;
        for (int g = 0; g < 8; g++) {
            const float *xg = x + 32 * g;
            float sum_x2 = 0.0f;
            for (int l = 0; l < 32; l++) {
                sum_x2 += xg[l] * xg[l];
            }
            const float av_x = sqrtf(sum_x2 / 32.0f);
            for (int l = 0; l < 32; l++) {
                w[l] = av_x + fabsf(xg[l]);
            }
            scales[g] = fdy_kq_qkx2(32, 31, xg, w, L + 32 * g, &mins[g], aux, -0.5f, 0.1f, 15, 0);
            if (scales[g] > max_scale) {
                max_scale = scales[g];
            }
            if (mins[g] > max_min) {
                max_min = mins[g];
            }
        }
        const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
        const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
        for (int g = 0; g < 8; g++) {
            /* narrowed to 8 bits before the clamp, as llama.cpp does */
            const uint8_t s = (uint8_t)fdy_nearest_int(inv_scale * scales[g]);
            const uint8_t m = (uint8_t)fdy_nearest_int(inv_min * mins[g]);
            ls[g] = s < 63 ? s : 63;
            lm[g] = m < 63 ? m : 63;
        }
        fdy_kq_scale_min_put(b[i].scales, ls, lm);
        b[i].d = fdy_float_to_half(max_scale / 63.0f);
        b[i].dmin = fdy_float_to_half(max_min / 63.0f);
        /* recompute the codes against the rounded scales; a group whose scale rounds to zero
         * keeps the codes of the search */
        const float d = fdy_half_to_float(b[i].d);
        const float dmin = fdy_half_to_float(b[i].dmin);
        for (int g = 0; g < 8; g++) {
            const float dl = d * (float)fdy_q5_k_sc(b[i].scales, g);
            if (dl == 0.0f) {
                continue;
            }
            const float ml = dmin * (float)fdy_q5_k_m(b[i].scales, g);
            for (int l = 0; l < 32; l++) {
                L[32 * g + l] =
                    (uint8_t)fdy_kq_clamp(fdy_nearest_int((x[32 * g + l] + ml) / dl), 0, 31);
            }
        }
        memset(b[i].qh, 0, 32);
        for (int c = 0; c < 4; c++) {
            for (int l = 0; l < 32; l++) {
                const int v1 = L[64 * c + l];
                const int v2 = L[64 * c + 32 + l];
                b[i].qh[l] |= (uint8_t)(((v1 >> 4) << (2 * c)) | ((v2 >> 4) << (2 * c + 1)));
                b[i].qs[32 * c + l] = (uint8_t)((v1 & 0xF) | ((v2 & 0xF) << 4));
            }
        }
    }
}

/* ---- q8 variant: integer dot with a Q8_K activation row (simd_kquants.h) ----
 * per block: d_a * d * sum_g sc_g * (q . a)_g - d_a * dmin * sum_g m_g * (bsums_2g + bsums_2g+1) */

static float q5_k_vec_dot_portable(const void *w, const void *a, int64_t n) {
    const fdy_block_q5_k *x = (const fdy_block_q5_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    int16_t q[256];
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 256; i++) {
        const uint8_t *qh = x[i].qh;
        int32_t summ = 0;
        for (int c = 0; c < 4; c++) {
            const int s0 = fdy_q5_k_sc(x[i].scales, 2 * c);
            const int s1 = fdy_q5_k_sc(x[i].scales, 2 * c + 1);
            const uint8_t *qs = x[i].qs + 32 * c;
            for (int l = 0; l < 32; l++) {
                q[64 * c + l] = (int16_t)(((qs[l] & 0xF) | (((qh[l] >> (2 * c)) & 1) << 4)) * s0);
                q[64 * c + 32 + l] =
                    (int16_t)(((qs[l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4)) * s1);
            }
        }
        for (int g = 0; g < 8; g++) {
            summ += fdy_q5_k_m(x[i].scales, g) * (y[i].bsums[2 * g] + y[i].bsums[2 * g + 1]);
        }
        sum += y[i].d * fdy_half_to_float(x[i].d) * (float)fdy_kq_dot256(q, y[i].qs);
        sum -= y[i].d * fdy_half_to_float(x[i].dmin) * (float)summ;
    }
    return sum;
}

#if defined(__x86_64__)
__attribute__((target(FDY_KQ_AVX2_TARGET))) static float q5_k_vec_dot_avx2(const void *w,
                                                                         const void *a,
                                                                         int64_t n) {
    const fdy_block_q5_k *x = (const fdy_block_q5_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i b4 = _mm256_set1_epi8(0x10);
    const __m256i mctl = fdy_kq_mins_ctl();
    __m256 acc = _mm256_setzero_ps();
    __m256 accm = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        fdy_stream_prefetch(&x[i], 3); /* 176 bytes a super-block */
        const float d = y[i].d * fdy_kq_half(x[i].d);
        const float dmin = y[i].d * fdy_kq_half(x[i].dmin);
        /* bytes: scales 0..7, mins 0..7, in both 128-bit lanes */
        const __m256i sc =
            _mm256_broadcastsi128_si256(fdy_kq_scale_min_q4_k((const uint8_t *)&x[i]));
        const __m256i mdup = _mm256_shuffle_epi8(sc, mctl);
        const __m256i bs = _mm256_loadu_si256((const __m256i *)y[i].bsums);
        accm = _mm256_fmadd_ps(_mm256_set1_ps(dmin),
                               _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, mdup)), accm);
        const __m256i qh = _mm256_loadu_si256((const __m256i *)x[i].qh);
        __m256i sumi = _mm256_setzero_si256();
        #pragma GCC unroll 8
        for (int j = 0; j < 4; j++) {
            const __m256i sl = _mm256_shuffle_epi8(sc, _mm256_set1_epi16(FDY_KQ_BYTE(2 * j)));
            const __m256i sh =
                _mm256_shuffle_epi8(sc, _mm256_set1_epi16(FDY_KQ_BYTE(2 * j + 1)));
            /* bit 4 of group g = 2j / 2j + 1: bit g of qh moved to bit 4 of the same byte (a
             * 16-bit shift by g - 4 keeps both bytes of a lane apart at these positions) */
            const __m256i hl = _mm256_and_si256(
                j < 2 ? _mm256_slli_epi16(qh, 4 - 2 * j) : _mm256_srli_epi16(qh, 2 * j - 4), b4);
            const __m256i hh = _mm256_and_si256(
                j < 2 ? _mm256_slli_epi16(qh, 3 - 2 * j) : _mm256_srli_epi16(qh, 2 * j - 3), b4);
            const __m256i q4 = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j));
            const __m256i ql = _mm256_or_si256(_mm256_and_si256(q4, m4), hl);
            const __m256i qhi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4, 4), m4), hh);
            const __m256i a0 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * j));
            const __m256i a1 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * j + 32));
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(ql, a0), sl);
            const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(qhi, a1), sh);
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return fdy_kq_hsum256(_mm256_sub_ps(acc, accm));
}

FDY_KQ_BODY512 float q5_k_vec_dot_body512(const void *w, const void *a, int64_t n,
                                          const int vnni) {
    const fdy_block_q5_k *x = (const fdy_block_q5_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i b4 = _mm512_set1_epi8(0x10);
    const __m256i mctl = fdy_kq_mins_ctl();
    const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    __m512i ctl[4], bits[4];
    for (int j = 0; j < 4; j++) {
        ctl[j] = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_set1_epi16(FDY_KQ_BYTE(2 * j))),
            _mm256_set1_epi16(FDY_KQ_BYTE(2 * j + 1)), 1);
        /* qh bit 2j for the low half (group 2j), 2j + 1 for the high half */
        bits[j] = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * j))),
                                     _mm256_set1_epi8((char)(2 << (2 * j))), 1);
    }
    __m512 acc = _mm512_setzero_ps();
    __m256 accm = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        fdy_stream_prefetch(&x[i], 3); /* 176 bytes a super-block */
        /* (d, dmin) * d_a in lanes 0, 1 */
        int32_t dbits;
        memcpy(&dbits, &x[i], 4);
        const __m128 dd = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(dbits)), _mm_set1_ps(y[i].d));
        const __m512i sc = _mm512_broadcast_i32x4(fdy_kq_scale_min_q4_k((const uint8_t *)&x[i]));
        const __m256i mdup = _mm256_shuffle_epi8(_mm512_castsi512_si256(sc), mctl);
        const __m256i bs = _mm256_loadu_si256((const __m256i *)y[i].bsums);
        accm = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)),
                               _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, mdup)), accm);
        const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)x[i].qh));
        __m512i sumi = _mm512_setzero_si512();
        #pragma GCC unroll 8
        for (int j = 0; j < 4; j++) {
            const __m512i q4 = _mm512_broadcast_i64x4(
                _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j)));
            const __m512i q0 = _mm512_and_si512(_mm512_srlv_epi16(q4, shift), m4);
            const __mmask64 hb = _mm512_test_epi8_mask(qh, bits[j]);
            const __m512i q5 = _mm512_mask_add_epi8(q0, hb, q0, b4);
            const __m512i a8 = _mm512_loadu_si512((const void *)(y[i].qs + 64 * j));
            sumi = fdy_kq_dpwssd(sumi, _mm512_maddubs_epi16(q5, a8),
                                 _mm512_shuffle_epi8(sc, ctl[j]), vnni);
        }
        acc = _mm512_fmadd_ps(_mm512_broadcastss_ps(dd), _mm512_cvtepi32_ps(sumi), acc);
    }
    return _mm512_reduce_add_ps(acc) - fdy_kq_hsum256(accm);
}
FDY_KQ_AVX512_ENTRIES(q5_k_vec_dot)
#endif

FDY_KQ_DISPATCH(q5_k_vec_dot)

/* roundtrip: measured relative L2 error 0.0363 on N(0, 1) rows (random_rows seed 6) */
/* ---- to_i8 (prefill GEMM): q = 5-bit code, scale = d * sc, min = -(dmin * m) per group of
 * 32 (written to both of its 16-halves); bit-exact (decode's dl * q - ml) */
static void q5_k_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                        float *restrict min, int64_t n) {
    const fdy_block_q5_k *b = (const fdy_block_q5_k *)src;
    for (int64_t i = 0; i < n / 256; i++) {
        const float d = fdy_half_to_float(b[i].d);
        const float dmin = fdy_half_to_float(b[i].dmin);
        int8_t *y = q + 256 * i;
        for (int g = 0; g < 8; g++) {
            const float dl = d * (float)fdy_q5_k_sc(b[i].scales, g);
            const float ml = dmin * (float)fdy_q5_k_m(b[i].scales, g);
            const uint8_t *qs = b[i].qs + 32 * (g >> 1);
            const int shift = 4 * (g & 1);
            for (int l = 0; l < 32; l++) {
                y[32 * g + l] = (int8_t)(((qs[l] >> shift) & 0xF) | (((b[i].qh[l] >> g) & 1) << 4));
            }
            scale[16 * i + 2 * g] = scale[16 * i + 2 * g + 1] = dl;
            min[16 * i + 2 * g] = min[16 * i + 2 * g + 1] = -ml;
        }
    }
}

/* ---- vec_dot_f32 (f32-variant GEMV): per group g of 32, sum_l (dl_g * q_l - ml_g) x_l with
 * dl_g = d * sc_g and ml_g = dmin * m_g as the decode forms them and the 5-bit code q_l, the
 * weight formed with one fused multiply-add.  On x86 the row-range kernel of simd_dotf32.h
 * (fdy_df_k45_step2 with the fifth bits) runs on the AVX2 and AVX-512 tiers; a one-row call
 * runs it over that row (docs/CPU_NOTES.md item 35) ---- */
FDY_DF_PORTABLE_DECODE(q5_k, fdy_decode_q5_k, FDY_Q5_K_BLOCK_ELEMS, FDY_Q5_K_BLOCK_BYTES,
                       FDY_Q5_K_SUB_ELEMS)

#if defined(__x86_64__)
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q5_k_prep(const float *x, int full, float *xp) {
    fdy_df_k45_prep(x, full, xp);
}

FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q5_k_step2(const uint8_t *b0, const uint8_t *b1,
                                                        int bb, int qs, int full,
                                                        const float *xp, __m256 *a0,
                                                        __m256 *a1) {
    (void)bb;
    (void)full;
    fdy_df_k45_step2(b0, b1, qs, (int)offsetof(fdy_block_q5_k, qh), xp, a0, a1);
}

#endif
FDY_DF_ROWS_KERNEL(q5_k, FDY_Q5_K_BLOCK_BYTES, FDY_Q5_K_BLOCK_ELEMS,
                   (int)offsetof(fdy_block_q5_k, qs))

FDY_POLICY_DEFINE(q5_k, .block_elems = FDY_Q5_K_BLOCK_ELEMS,
                  .block_bytes = FDY_Q5_K_BLOCK_BYTES, .sub_elems = FDY_Q5_K_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_k", .tol_roundtrip = 0.047f,
                  .tol_f32 = 1e-5f, .tol_q8 = 1e-2f, .decode = fdy_decode_q5_k,
                  .dequantize_fast = q5_k_dequantize, .quantize = q5_k_quantize,
                  .vec_dot = q5_k_vec_dot,
                  .to_i8 = q5_k_to_i8, .vec_dot_f32 = q5_k_vec_dot_f32,
                  .vec_dot_f32_rows = q5_k_vec_dot_f32_rows);
#endif
