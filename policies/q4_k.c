/* q4_k - super-blocks of 256 weights in 8 groups of 32: 4-bit codes with a 6-bit scale and a
 * 6-bit min per group, and two f16 super-scales; w = d * sc * q - dmin * m.
 *
 *   block (256 elements, 144 bytes):
 *   | d: f16 (2) | dmin: f16 (2) | scales[0..11]: u8 (12) | qs[0..127]: u8 (128) |
 *
 *   scales packs eight 6-bit (sc, m) pairs:
 *     bytes 0..3  : sc[j] (bits 0-5) | sc[j+4] bits 4-5 (bits 6-7),  j = 0..3
 *     bytes 4..7  : m[j]  (bits 0-5) | m[j+4]  bits 4-5 (bits 6-7)
 *     bytes 8..11 : sc[j+4] bits 0-3 | m[j+4] bits 0-3 << 4
 *   qs: element 64c + l (l < 32) in the low nibble of qs[32c + l], element 64c + 32 + l in
 *   its high nibble; group g = elements 32g .. 32g+31.
 *
 * Quantizer (llama.cpp quantize_row_q4_K_ref): per group an asymmetric (scale, min) search
 * with weights rms(group) + |x| and squared error (make_qkx2_quants, nmax 15, 21 steps from
 * -1.0 by 0.1); scales and mins are quantized to 6 bits against their maxima (d = max / 63)
 * and the codes recomputed from the rounded values.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_Q4_K_BLOCK_ELEMS 256
#define FDY_Q4_K_BLOCK_BYTES 144
#define FDY_Q4_K_SUB_ELEMS 32

typedef struct fdy_block_q4_k {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qs[128];
} fdy_block_q4_k;
FDY_STATIC_ASSERT(sizeof(fdy_block_q4_k) == FDY_Q4_K_BLOCK_BYTES, "q4_k block size");

/* 6-bit scale (sc) and min (m) of group g from the 12-byte packing */
FDY_FN int fdy_q4_k_sc(FDY_GLOBAL const uint8_t *s, int g) {
    return g < 4 ? (s[g] & 63) : ((s[g + 4] & 0xF) | ((s[g - 4] >> 6) << 4));
}

FDY_FN int fdy_q4_k_m(FDY_GLOBAL const uint8_t *s, int g) {
    return g < 4 ? (s[g + 4] & 63) : ((s[g + 4] >> 4) | ((s[g] >> 6) << 4));
}

FDY_FN void fdy_decode_q4_k(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_q4_k *b = (FDY_GLOBAL const fdy_block_q4_k *)blk;
    const float dl = fdy_half_to_float(b->d) * (float)fdy_q4_k_sc(b->scales, sub);
    const float ml = fdy_half_to_float(b->dmin) * (float)fdy_q4_k_m(b->scales, sub);
    FDY_GLOBAL const uint8_t *q = b->qs + 32 * (sub >> 1);
    const int shift = 4 * (sub & 1);
    for (int l = 0; l < 32; l++) {
        out[l] = dl * (float)((q[l] >> shift) & 0xF) - ml;
    }
}

/* GEMV dot hook (load, then calc): 8 parts per block, part p = qs[32c + 16j .. +15] for
 * c = p / 2, j = p % 2: elements 64c + 16j .. +15 (low nibbles, group 2c) and 64c + 32 + 16j
 * .. +15 (high nibbles, group 2c + 1).  Blocks are 144 bytes, so on 16-byte aligned rows every
 * block and every 16 bytes of qs are 16-byte aligned: load is two 16-byte loads, r[0..3] the
 * block's first 16 bytes (d | dmin << 16, then the 12 scale bytes), r[4..7] the part's codes;
 * calc unpacks the two groups' 6-bit scales and mins from r[1..3] with word operations */
#define FDY_Q4_K_DOTF_PARTS 8
#define FDY_Q4_K_DOTF_WORDS 8
#define FDY_Q4_K_DOTF_U 2 /* unroll depth of fdy_gemv_dotf: the sweep's best */
FDY_FN void fdy_dotf_load_q4_k(FDY_GLOBAL const uint8_t *blk, int part, FDY_THREAD uint32_t *r) {
    const fdy_uint4 h = fdy_load_u4(blk);
    const fdy_uint4 q = fdy_load_u4(blk + 16 + 16 * part);
    for (int i = 0; i < 4; i++) {
        r[i] = h.v[i];
        r[4 + i] = q.v[i];
    }
}

FDY_FN float fdy_dotf_calc_q4_k(FDY_THREAD const uint32_t *r, int part, FDY_GLOBAL const float *x) {
    const int c = part >> 1, j = part & 1;
    FDY_GLOBAL const float *xl = x + 64 * c + 16 * j;
    float sl = 0.0f, sh = 0.0f, xsl = 0.0f, xsh = 0.0f;
    for (int w = 0; w < 4; w++) {
        const uint32_t lo = r[4 + w] & 0x0F0F0F0Fu, hi = (r[4 + w] >> 4) & 0x0F0F0F0Fu;
        const fdy_float4 al = fdy_load4(xl + 4 * w), ah = fdy_load4(xl + 32 + 4 * w);
        for (int i = 0; i < 4; i++) {
            const float a = al.v[i], e = ah.v[i];
            sl = fdy_fma(fdy_code_f((lo >> (8 * i)) & 0xFFu, 0), a, sl);
            sh = fdy_fma(fdy_code_f((hi >> (8 * i)) & 0xFFu, 0), e, sh);
            xsl += a;
            xsh += e;
        }
    }
    /* byte g of sw / mw is group g's (groups 0-3) or g + 4's (groups 4-7) scale / min */
    const uint32_t s0 = r[1], s1 = r[2], s2 = r[3];
    const uint32_t sw = c < 2 ? (s0 & 0x3F3F3F3Fu) : ((s2 & 0x0F0F0F0Fu) | ((s0 >> 2) & 0x30303030u));
    const uint32_t mw = c < 2 ? (s1 & 0x3F3F3F3Fu)
                              : (((s2 >> 4) & 0x0F0F0F0Fu) | ((s1 >> 2) & 0x30303030u));
    const int sh0 = 16 * (c & 1); /* group 2c is byte 2 (c & 1), group 2c + 1 the next */
    const float d = fdy_half_to_float((uint16_t)(r[0] & 0xFFFFu));
    const float dmin = fdy_half_to_float((uint16_t)(r[0] >> 16));
    const float dl = d * (float)((sw >> sh0) & 0xFFu), ml = dmin * (float)((mw >> sh0) & 0xFFu);
    const float dh = d * (float)((sw >> (sh0 + 8)) & 0xFFu);
    const float mh = dmin * (float)((mw >> (sh0 + 8)) & 0xFFu);
    return (dl * sl - ml * xsl) + (dh * sh - mh * xsh);
}

/* the whole hook in one call (host checks) */
FDY_FN float fdy_dotf_q4_k(FDY_GLOBAL const uint8_t *blk, int part, FDY_GLOBAL const float *x) {
    uint32_t r[FDY_Q4_K_DOTF_WORDS];
    fdy_dotf_load_q4_k(blk, part, r);
    return fdy_dotf_calc_q4_k(r, part, x);
}

/* Integer GEMV hook (the q8 variant; activations in q8_k: codes xq of the block, scale xd[0]):
 * the parts and raw words of the dot hook above; calc: the code dots and code sums of the two
 * groups with dp4a, then xd * (d * sum sc * dot - dmin * sum m * csum), exact in integers. */
#define FDY_Q4_K_DOTI 1
FDY_FN float fdy_doti_calc_q4_k(FDY_THREAD const uint32_t *r, int part, FDY_GLOBAL const uint8_t *xq,
                                FDY_GLOBAL const float *xd) {
    const int c = part >> 1, j = part & 1;
    const fdy_uint4 al = fdy_load_u4(xq + 64 * c + 16 * j), ah = fdy_load_u4(xq + 64 * c + 32 + 16 * j);
    int sl = 0, sh = 0, xsl = 0, xsh = 0;
    for (int w = 0; w < 4; w++) {
        const uint32_t lo = r[4 + w] & 0x0F0F0F0Fu, hi = (r[4 + w] >> 4) & 0x0F0F0F0Fu;
        sl = fdy_dp4a(lo, al.v[w], sl);
        sh = fdy_dp4a(hi, ah.v[w], sh);
        xsl = fdy_dp4a(0x01010101u, al.v[w], xsl);
        xsh = fdy_dp4a(0x01010101u, ah.v[w], xsh);
    }
    const uint32_t s0 = r[1], s1 = r[2], s2 = r[3];
    const uint32_t sw = c < 2 ? (s0 & 0x3F3F3F3Fu) : ((s2 & 0x0F0F0F0Fu) | ((s0 >> 2) & 0x30303030u));
    const uint32_t mw = c < 2 ? (s1 & 0x3F3F3F3Fu)
                              : (((s2 >> 4) & 0x0F0F0F0Fu) | ((s1 >> 2) & 0x30303030u));
    const int sh0 = 16 * (c & 1);
    const int sc = (int)((sw >> sh0) & 0xFFu) * sl + (int)((sw >> (sh0 + 8)) & 0xFFu) * sh;
    const int mn = (int)((mw >> sh0) & 0xFFu) * xsl + (int)((mw >> (sh0 + 8)) & 0xFFu) * xsh;
    const float d = fdy_half_to_float((uint16_t)(r[0] & 0xFFFFu));
    const float dmin = fdy_half_to_float((uint16_t)(r[0] >> 16));
    return xd[0] * (d * (float)sc - dmin * (float)mn);
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_dequant.h"
#include "kquant_ref.h"
#include "simd_kquants.h"
#include "simd_dotf32.h"

FDY_DEQ_INLINE void q4_k_dequantize_rows(const void *src, float *dst, int64_t n) {
    const fdy_block_q4_k *b = (const fdy_block_q4_k *)src;
    for (int64_t i = 0; i < n / 256; i++) {
        const float d = fdy_half_to_float(b[i].d);
        const float dmin = fdy_half_to_float(b[i].dmin);
        float *y = dst + i * 256;
        for (int c = 0; c < 4; c++) {
            const float d1 = d * (float)fdy_q4_k_sc(b[i].scales, 2 * c);
            const float m1 = dmin * (float)fdy_q4_k_m(b[i].scales, 2 * c);
            const float d2 = d * (float)fdy_q4_k_sc(b[i].scales, 2 * c + 1);
            const float m2 = dmin * (float)fdy_q4_k_m(b[i].scales, 2 * c + 1);
            const uint8_t *q = b[i].qs + 32 * c;
            for (int l = 0; l < 32; l++) {
                y[64 * c + l] = d1 * (float)(q[l] & 0xF) - m1;
            }
            for (int l = 0; l < 32; l++) {
                y[64 * c + 32 + l] = d2 * (float)(q[l] >> 4) - m2;
            }
        }
    }
}
#if defined(__x86_64__)
#define Q4_K_DEQ_BODY(S)                                                                   \
    {                                                                                      \
        const fdy_block_q4_k *b = (const fdy_block_q4_k *)src;                             \
        const __m256i m4 = _mm256_set1_epi8(0x0F);                                         \
        for (int64_t i = 0; i < n / 256; i++) {                                            \
            const float d = fdy_half_to_float(b[i].d);                                     \
            const float dmin = fdy_half_to_float(b[i].dmin);                               \
            float *y = dst + i * 256;                                                      \
            for (int c = 0; c < 4; c++) {                                                  \
                const float d1 = d * (float)fdy_q4_k_sc(b[i].scales, 2 * c);               \
                const float m1 = dmin * (float)fdy_q4_k_m(b[i].scales, 2 * c);             \
                const float d2 = d * (float)fdy_q4_k_sc(b[i].scales, 2 * c + 1);           \
                const float m2 = dmin * (float)fdy_q4_k_m(b[i].scales, 2 * c + 1);         \
                const __m256i Q = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * c)); \
                fdy_deq_u8x32_ms_##S(_mm256_and_si256(Q, m4), d1, m1, d1, m1, y + 64 * c); \
                fdy_deq_u8x32_ms_##S(_mm256_and_si256(_mm256_srli_epi16(Q, 4), m4), d2, m2, \
                                     d2, m2, y + 64 * c + 32);                             \
            }                                                                              \
        }                                                                                  \
    }
FDY_DEQ_BOTH(q4_k_dequantize, Q4_K_DEQ_BODY)
#endif
FDY_DEQ_SELECT(q4_k_dequantize, q4_k_dequantize_rows)

static void q4_k_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_q4_k *b = (fdy_block_q4_k *)dst;
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
            scales[g] = fdy_kq_qkx2(32, 15, xg, w, L + 32 * g, &mins[g], aux, -1.0f, 0.1f, 20, 0);
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
            const float dl = d * (float)fdy_q4_k_sc(b[i].scales, g);
            if (dl == 0.0f) {
                continue;
            }
            const float ml = dmin * (float)fdy_q4_k_m(b[i].scales, g);
            for (int l = 0; l < 32; l++) {
                L[32 * g + l] =
                    (uint8_t)fdy_kq_clamp(fdy_nearest_int((x[32 * g + l] + ml) / dl), 0, 15);
            }
        }
        for (int c = 0; c < 4; c++) {
            for (int l = 0; l < 32; l++) {
                b[i].qs[32 * c + l] = (uint8_t)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
            }
        }
    }
}

/* ---- q8 variant: integer dot with a Q8_K activation row (simd_kquants.h) ----
 * per block: d_a * d * sum_g sc_g * (q . a)_g - d_a * dmin * sum_g m_g * (bsums_2g + bsums_2g+1) */

static float q4_k_vec_dot_portable(const void *w, const void *a, int64_t n) {
    const fdy_block_q4_k *x = (const fdy_block_q4_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    int16_t q[256];
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 256; i++) {
        int32_t summ = 0;
        for (int c = 0; c < 4; c++) {
            const int s0 = fdy_q4_k_sc(x[i].scales, 2 * c);
            const int s1 = fdy_q4_k_sc(x[i].scales, 2 * c + 1);
            const uint8_t *qs = x[i].qs + 32 * c;
            for (int l = 0; l < 32; l++) {
                q[64 * c + l] = (int16_t)((qs[l] & 0xF) * s0);
                q[64 * c + 32 + l] = (int16_t)((qs[l] >> 4) * s1);
            }
        }
        for (int g = 0; g < 8; g++) {
            summ += fdy_q4_k_m(x[i].scales, g) * (y[i].bsums[2 * g] + y[i].bsums[2 * g + 1]);
        }
        sum += y[i].d * fdy_half_to_float(x[i].d) * (float)fdy_kq_dot256(q, y[i].qs);
        sum -= y[i].d * fdy_half_to_float(x[i].dmin) * (float)summ;
    }
    return sum;
}

#if defined(__x86_64__)
__attribute__((target(FDY_KQ_AVX2_TARGET))) static float q4_k_vec_dot_avx2(const void *w,
                                                                         const void *a,
                                                                         int64_t n) {
    const fdy_block_q4_k *x = (const fdy_block_q4_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i mctl = fdy_kq_mins_ctl();
    __m256 acc = _mm256_setzero_ps();
    __m256 accm = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        fdy_stream_prefetch(&x[i], 3); /* 144 bytes a super-block */
        const float d = y[i].d * fdy_kq_half(x[i].d);
        const float dmin = y[i].d * fdy_kq_half(x[i].dmin);
        /* bytes: scales 0..7, mins 0..7, in both 128-bit lanes */
        const __m256i sc =
            _mm256_broadcastsi128_si256(fdy_kq_scale_min_q4_k((const uint8_t *)&x[i]));
        const __m256i mdup = _mm256_shuffle_epi8(sc, mctl);
        const __m256i bs = _mm256_loadu_si256((const __m256i *)y[i].bsums);
        accm = _mm256_fmadd_ps(_mm256_set1_ps(dmin),
                               _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, mdup)), accm);
        __m256i sumi = _mm256_setzero_si256();
        #pragma GCC unroll 8
        for (int j = 0; j < 4; j++) {
            /* int16 scale of group 2j (lo nibbles) and 2j + 1 (hi nibbles) in every lane */
            const __m256i sl = _mm256_shuffle_epi8(sc, _mm256_set1_epi16(FDY_KQ_BYTE(2 * j)));
            const __m256i sh =
                _mm256_shuffle_epi8(sc, _mm256_set1_epi16(FDY_KQ_BYTE(2 * j + 1)));
            const __m256i q4 = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j));
            const __m256i ql = _mm256_and_si256(q4, m4);
            const __m256i qh = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
            const __m256i a0 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * j));
            const __m256i a1 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * j + 32));
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(ql, a0), sl);
            const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(qh, a1), sh);
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return fdy_kq_hsum256(_mm256_sub_ps(acc, accm));
}

FDY_KQ_BODY512 float q4_k_vec_dot_body512(const void *w, const void *a, int64_t n,
                                          const int vnni) {
    const fdy_block_q4_k *x = (const fdy_block_q4_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m256i mctl = fdy_kq_mins_ctl();
    /* shift counts: 0 in the low 256 bits (lo nibbles), 4 in the high (hi nibbles) */
    const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    /* byte shuffles giving the int16 scale of group 2j (low half) and 2j + 1 (high half) */
    __m512i ctl[4];
    for (int j = 0; j < 4; j++) {
        ctl[j] = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_set1_epi16(FDY_KQ_BYTE(2 * j))),
            _mm256_set1_epi16(FDY_KQ_BYTE(2 * j + 1)), 1);
    }
    __m512 acc = _mm512_setzero_ps();
    __m256 accm = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        fdy_stream_prefetch(&x[i], 3); /* 144 bytes a super-block */
        /* (d, dmin) * d_a in lanes 0, 1 */
        int32_t dbits;
        memcpy(&dbits, &x[i], 4);
        const __m128 dd = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(dbits)), _mm_set1_ps(y[i].d));
        const __m512i sc = _mm512_broadcast_i32x4(fdy_kq_scale_min_q4_k((const uint8_t *)&x[i]));
        const __m256i mdup = _mm256_shuffle_epi8(_mm512_castsi512_si256(sc), mctl);
        const __m256i bs = _mm256_loadu_si256((const __m256i *)y[i].bsums);
        accm = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)),
                               _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, mdup)), accm);
        __m512i sumi = _mm512_setzero_si512();
        #pragma GCC unroll 8
        for (int j = 0; j < 4; j++) {
            /* [lo nibbles | hi nibbles] of qs[32j..32j+31]: elements 64j .. 64j+63 */
            const __m512i q4 = _mm512_broadcast_i64x4(
                _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j)));
            const __m512i q = _mm512_and_si512(_mm512_srlv_epi16(q4, shift), m4);
            const __m512i a8 = _mm512_loadu_si512((const void *)(y[i].qs + 64 * j));
            sumi = fdy_kq_dpwssd(sumi, _mm512_maddubs_epi16(q, a8), _mm512_shuffle_epi8(sc, ctl[j]),
                                 vnni);
        }
        acc = _mm512_fmadd_ps(_mm512_broadcastss_ps(dd), _mm512_cvtepi32_ps(sumi), acc);
    }
    return _mm512_reduce_add_ps(acc) - fdy_kq_hsum256(accm);
}
FDY_KQ_AVX512_ENTRIES(q4_k_vec_dot)
#endif

FDY_KQ_DISPATCH(q4_k_vec_dot)

/* roundtrip: measured relative L2 error 0.0715 on N(0, 1) rows (random_rows seed 6) */
/* ---- to_i8 (prefill GEMM): q = nibble, scale = d * sc, min = -(dmin * m) per group of 32
 * (written to both of its 16-halves); bit-exact (decode's dl * q - ml) */
static void q4_k_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                        float *restrict min, int64_t n) {
    const fdy_block_q4_k *b = (const fdy_block_q4_k *)src;
    for (int64_t i = 0; i < n / 256; i++) {
        const float d = fdy_half_to_float(b[i].d);
        const float dmin = fdy_half_to_float(b[i].dmin);
        int8_t *y = q + 256 * i;
        for (int g = 0; g < 8; g++) {
            const float dl = d * (float)fdy_q4_k_sc(b[i].scales, g);
            const float ml = dmin * (float)fdy_q4_k_m(b[i].scales, g);
            const uint8_t *qs = b[i].qs + 32 * (g >> 1);
            const int shift = 4 * (g & 1);
            for (int l = 0; l < 32; l++) {
                y[32 * g + l] = (int8_t)((qs[l] >> shift) & 0xF);
            }
            scale[16 * i + 2 * g] = scale[16 * i + 2 * g + 1] = dl;
            min[16 * i + 2 * g] = min[16 * i + 2 * g + 1] = -ml;
        }
    }
}

/* ---- vec_dot_f32 (f32-variant GEMV): per group g of 32, sum_l (dl_g * q_l - ml_g) x_l with
 * dl_g = d * sc_g and ml_g = dmin * m_g as the decode forms them, the weight formed with one
 * fused multiply-add ---- */
FDY_DF_PORTABLE_DECODE(q4_k, fdy_decode_q4_k, FDY_Q4_K_BLOCK_ELEMS, FDY_Q4_K_BLOCK_BYTES,
                       FDY_Q4_K_SUB_ELEMS)

#if defined(__x86_64__)
/* dl[g] for g < 8, then -ml[g] at dl[8 + g] */
#define q4_k_df_scales(b, dl) fdy_df_kscales((const uint8_t *)(b), (dl), 1.0f)

FDY_DF_TARGET_AVX2 static float q4_k_dotf_avx2(const void *w, const float *x, int64_t n) {
    const fdy_block_q4_k *b = (const fdy_block_q4_k *)w;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    float sc[2][16];
    const int64_t nb = n / 256;
    for (int64_t i = 0; i < nb; i++) {
        const float *dl = FDY_DF_SCALES_AHEAD(q4_k_df_scales, b, i, nb, sc);
        const float *xb = x + 256 * i;
        for (int c = 0; c < 4; c++) {
            const __m256 d1 = _mm256_set1_ps(dl[2 * c]), m1 = _mm256_set1_ps(dl[8 + 2 * c]);
            const __m256 d2 = _mm256_set1_ps(dl[2 * c + 1]);
            const __m256 m2 = _mm256_set1_ps(dl[8 + 2 * c + 1]);
            __m128i lo, hi;
            fdy_df_nibbles_128(b[i].qs + 32 * c, &lo, &hi);
            acc0 = fdy_df_fma16_dm_256(lo, d1, m1, xb + 64 * c, acc0);
            acc1 = fdy_df_fma16_dm_256(hi, d2, m2, xb + 64 * c + 32, acc1);
            fdy_df_nibbles_128(b[i].qs + 32 * c + 16, &lo, &hi);
            acc2 = fdy_df_fma16_dm_256(lo, d1, m1, xb + 64 * c + 16, acc2);
            acc3 = fdy_df_fma16_dm_256(hi, d2, m2, xb + 64 * c + 48, acc3);
        }
    }
    return fdy_df_hsum256(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
}

/* per group the 16 weight values dl * j - ml (one FMA) as a vpermps table: the weight vector
 * of 16 codes is then one permute (the kernel was FMA-bound with a per-vector weight FMA) */
FDY_DF_TARGET_AVX512 static float q4_k_dotf_avx512(const void *w, const float *x, int64_t n) {
    const fdy_block_q4_k *b = (const fdy_block_q4_k *)w;
    const __m512 ramp = fdy_df_ramp_512(0.0f);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    float sc[2][16];
    const int64_t nb = n / 256;
    for (int64_t i = 0; i < nb; i++) {
        fdy_stream_prefetch(b + i, 3); /* 144 bytes a super-block */
        const float *dl = FDY_DF_SCALES_AHEAD(q4_k_df_scales, b, i, nb, sc);
        const float *xb = x + 256 * i;
        for (int c = 0; c < 4; c++) {
            const __m512 t1 = _mm512_fmadd_ps(ramp, _mm512_set1_ps(dl[2 * c]),
                                              _mm512_set1_ps(dl[8 + 2 * c]));
            const __m512 t2 = _mm512_fmadd_ps(ramp, _mm512_set1_ps(dl[2 * c + 1]),
                                              _mm512_set1_ps(dl[8 + 2 * c + 1]));
            const __m512i v0 = fdy_df_u8x16_512(b[i].qs + 32 * c);
            const __m512i v1 = fdy_df_u8x16_512(b[i].qs + 32 * c + 16);
            const __m512 w0 = _mm512_permutexvar_ps(v0, t1);
            const __m512 w1 = _mm512_permutexvar_ps(v1, t1);
            const __m512 w2 = _mm512_permutexvar_ps(_mm512_srli_epi32(v0, 4), t2);
            const __m512 w3 = _mm512_permutexvar_ps(_mm512_srli_epi32(v1, 4), t2);
            acc0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xb + 64 * c), acc0);
            acc1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xb + 64 * c + 16), acc1);
            acc2 = _mm512_fmadd_ps(w2, _mm512_loadu_ps(xb + 64 * c + 32), acc2);
            acc3 = _mm512_fmadd_ps(w3, _mm512_loadu_ps(xb + 64 * c + 48), acc3);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

/* vec_dot_f32_rows (AVX2): the q4_k / q5_k steps of simd_dotf32.h without a fifth bit */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q4_k_prep(const float *x, int full, float *xp) {
    fdy_df_k45_prep(x, full, xp);
}

FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q4_k_step2(const uint8_t *b0, const uint8_t *b1,
                                                        int bb, int qs, int full,
                                                        const float *xp, __m256 *a0,
                                                        __m256 *a1) {
    (void)bb;
    (void)full;
    fdy_df_k45_step2(b0, b1, qs, -1, xp, a0, a1);
}
#endif
FDY_DF_DISPATCH(q4_k)
FDY_DF_ROWS(q4_k, fdy_block_q4_k, FDY_Q4_K_BLOCK_ELEMS, 1)

FDY_POLICY_DEFINE(q4_k, .block_elems = FDY_Q4_K_BLOCK_ELEMS,
                  .block_bytes = FDY_Q4_K_BLOCK_BYTES, .sub_elems = FDY_Q4_K_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_k", .tol_roundtrip = 0.095f,
                  .tol_f32 = 1e-5f, .tol_q8 = 1e-2f, .decode = fdy_decode_q4_k,
                  .dequantize_fast = q4_k_dequantize, .quantize = q4_k_quantize,
                  .vec_dot = q4_k_vec_dot,
                  .to_i8 = q4_k_to_i8, .vec_dot_f32 = q4_k_vec_dot_f32,
                  .vec_dot_f32_rows = q4_k_vec_dot_f32_rows);
#endif
