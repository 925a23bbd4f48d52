/* q2_k - super-blocks of 256 weights in 16 groups of 16: 2-bit codes with a 4-bit scale and a
 * 4-bit min per group, and two f16 super-scales; w = d * sc * q - dmin * m.
 *
 *   block (256 elements, 84 bytes):
 *   | scales[0..15]: u8 (16) | qs[0..63]: u8 (64) | d: f16 (2) | dmin: f16 (2) |
 *
 *   scales[g]: low nibble = sc of group g, high nibble = m of group g (group g = elements
 *   16g .. 16g+15).  qs: two halves of 128 elements; in half h, byte qs[32h + l] holds the codes
 *   of elements 128h + 32k + l in bits 2k..2k+1 (k = 0..3).
 *
 * Quantizer (llama.cpp quantize_row_q2_K_ref): per group, an asymmetric (scale, min) search
 * with weights |x| and absolute error (make_qkx2_quants, nmax 3); scales and mins are then
 * quantized to 4 bits against their maxima (d = max_scale / 15, dmin = max_min / 15) and the
 * codes are recomputed from the rounded scales.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_Q2_K_BLOCK_ELEMS 256
#define FDY_Q2_K_BLOCK_BYTES 84
#define FDY_Q2_K_SUB_ELEMS 16

typedef struct fdy_block_q2_k {
    uint8_t scales[16];
    uint8_t qs[64];
    uint16_t d;
    uint16_t dmin;
} fdy_block_q2_k;
FDY_STATIC_ASSERT(sizeof(fdy_block_q2_k) == FDY_Q2_K_BLOCK_BYTES, "q2_k block size");

FDY_FN void fdy_decode_q2_k(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_q2_k *b = (FDY_GLOBAL const fdy_block_q2_k *)blk;
    const int sc = b->scales[sub];
    const float dl = fdy_half_to_float(b->d) * (float)(sc & 0xF);
    const float ml = fdy_half_to_float(b->dmin) * (float)(sc >> 4);
    /* group sub covers elements 16*sub ..: half sub/8, shift pair (sub%8)/2, bytes 16*(sub%2) */
    FDY_GLOBAL const uint8_t *q = b->qs + 32 * (sub >> 3) + 16 * (sub & 1);
    const int shift = 2 * ((sub & 7) >> 1);
    for (int l = 0; l < 16; l++) {
        out[l] = dl * (float)((q[l] >> shift) & 3) - ml;
    }
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_dequant.h"
#include "kquant_ref.h"
#include "simd_kquants.h"
#include "simd_dotf32.h"

/* two passes per block, both plain loops the compiler vectorizes: unpack the 2-bit codes in
 * element order, then scale them group by group (same float expression as the decode) */
FDY_DEQ_INLINE void q2_k_dequantize_rows(const void *src, float *dst, int64_t n) {
    const fdy_block_q2_k *b = (const fdy_block_q2_k *)src;
    uint8_t q[256];
    for (int64_t i = 0; i < n / 256; i++) {
        for (int h = 0; h < 2; h++) {
            for (int k = 0; k < 4; k++) {
                for (int l = 0; l < 32; l++) {
                    q[128 * h + 32 * k + l] = (uint8_t)((b[i].qs[32 * h + l] >> (2 * k)) & 3);
                }
            }
        }
        const float d = fdy_half_to_float(b[i].d);
        const float dmin = fdy_half_to_float(b[i].dmin);
        float *y = dst + i * 256;
        for (int g = 0; g < 16; g++) {
            const float dl = d * (float)(b[i].scales[g] & 0xF);
            const float ml = dmin * (float)(b[i].scales[g] >> 4);
            for (int l = 0; l < 16; l++) {
                y[16 * g + l] = dl * (float)q[16 * g + l] - ml;
            }
        }
    }
}
#if defined(__x86_64__)
#define Q2_K_DEQ_BODY(S)                                                                   \
    {                                                                                      \
        const fdy_block_q2_k *b = (const fdy_block_q2_k *)src;                             \
        const __m256i m3 = _mm256_set1_epi8(3);                                            \
        for (int64_t i = 0; i < n / 256; i++) {                                            \
            const float d = fdy_half_to_float(b[i].d);                                     \
            const float dmin = fdy_half_to_float(b[i].dmin);                               \
            float dl[16], ml[16];                                                          \
            for (int g = 0; g < 16; g++) {                                                 \
                dl[g] = d * (float)(b[i].scales[g] & 0xF);                                 \
                ml[g] = dmin * (float)(b[i].scales[g] >> 4);                               \
            }                                                                              \
            float *y = dst + i * 256;                                                      \
            for (int h = 0; h < 2; h++) {                                                  \
                const __m256i Q = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * h)); \
                for (int k = 0; k < 4; k++) {                                              \
                    const int g = 8 * h + 2 * k;                                           \
                    const __m256i q = _mm256_and_si256(_mm256_srli_epi16(Q, 2 * k), m3);   \
                    fdy_deq_u8x32_ms_##S(q, dl[g], ml[g], dl[g + 1], ml[g + 1], y + 16 * g); \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
    }
FDY_DEQ_BOTH(q2_k_dequantize, Q2_K_DEQ_BODY)
#endif
FDY_DEQ_SELECT(q2_k_dequantize, q2_k_dequantize_rows)

static void q2_k_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_q2_k *b = (fdy_block_q2_k *)dst;
    uint8_t L[256];
    uint8_t aux[16];
    float w[16];
    float scales[16], mins[16];
    for (int64_t i = 0; i < n / 256; i++) {
        const float *x = src + i * 256;
        float max_scale = 0.0f, max_min = 0.0f;
        for (int g = 0; g < 16; g++) {
            for (int l = 0; l < 16; l++) {
                w[l] = fabsf(x[16 * g + l]);
            }
            scales[g] = fdy_kq_qkx2(16, 3, x + 16 * g, w, L + 16 * g, &mins[g], aux, -0.5f,
                                    0.1f, 15, 1);
            if (scales[g] > max_scale) {
                max_scale = scales[g];
            }
            if (mins[g] > max_min) {
                max_min = mins[g];
            }
        }
        if (max_scale > 0.0f) {
            const float iscale = 15.0f / max_scale;
            for (int g = 0; g < 16; g++) {
                b[i].scales[g] = (uint8_t)fdy_nearest_int(iscale * scales[g]);
            }
            b[i].d = fdy_float_to_half(max_scale / 15.0f);
        } else {
            memset(b[i].scales, 0, 16);
            b[i].d = fdy_float_to_half(0.0f);
        }
        if (max_min > 0.0f) {
            const float iscale = 15.0f / max_min;
            for (int g = 0; g < 16; g++) {
                b[i].scales[g] |= (uint8_t)(fdy_nearest_int(iscale * mins[g]) << 4);
            }
            b[i].dmin = fdy_float_to_half(max_min / 15.0f);
        } else {
            b[i].dmin = fdy_float_to_half(0.0f);
        }
        /* recompute the codes against the rounded scales; a group whose scale rounds to zero
         * keeps the codes of the search */
        const float d = fdy_half_to_float(b[i].d);
        const float dmin = fdy_half_to_float(b[i].dmin);
        for (int g = 0; g < 16; g++) {
            const float dl = d * (float)(b[i].scales[g] & 0xF);
            if (dl == 0.0f) {
                continue;
            }
            const float ml = dmin * (float)(b[i].scales[g] >> 4);
            for (int l = 0; l < 16; l++) {
                L[16 * g + l] =
                    (uint8_t)fdy_kq_clamp(fdy_nearest_int((x[16 * g + l] + ml) / dl), 0, 3);
            }
        }
        for (int h = 0; h < 2; h++) {
            const uint8_t *Lh = L + 128 * h;
            for (int l = 0; l < 32; l++) {
                b[i].qs[32 * h + l] = (uint8_t)(Lh[l] | (Lh[l + 32] << 2) | (Lh[l + 64] << 4) |
                                                (Lh[l + 96] << 6));
            }
        }
    }
}

/* ---- q8 variant: integer dot with a Q8_K activation row (simd_kquants.h) ----
 * per block: d_a * d * sum_g sc_g * (q . a)_g - d_a * dmin * sum_g m_g * bsums_g */

static float q2_k_vec_dot_portable(const void *w, const void *a, int64_t n) {
    const fdy_block_q2_k *x = (const fdy_block_q2_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    int16_t q[256];
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 256; i++) {
        int32_t summ = 0;
        for (int g = 0; g < 16; g++) {
            summ += (x[i].scales[g] >> 4) * y[i].bsums[g];
        }
        for (int h = 0; h < 2; h++) {
            for (int k = 0; k < 4; k++) {
                for (int t = 0; t < 2; t++) {
                    const int s = x[i].scales[8 * h + 2 * k + t] & 0xF;
                    for (int l = 16 * t; l < 16 * t + 16; l++) {
                        const int v = (x[i].qs[32 * h + l] >> (2 * k)) & 3;
                        q[128 * h + 32 * k + l] = (int16_t)(v * s);
                    }
                }
            }
        }
        sum += y[i].d * fdy_half_to_float(x[i].d) * (float)fdy_kq_dot256(q, y[i].qs);
        sum -= y[i].d * fdy_half_to_float(x[i].dmin) * (float)summ;
    }
    return sum;
}

#if defined(__x86_64__)
__attribute__((target(FDY_KQ_AVX2_TARGET))) static float q2_k_vec_dot_avx2(const void *w,
                                                                         const void *a,
                                                                         int64_t n) {
    const fdy_block_q2_k *x = (const fdy_block_q2_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0xF);
    __m256i ctl[4];
    for (int k = 0; k < 4; k++) {
        ctl[k] = _mm256_set_m128i(_mm_set1_epi16(FDY_KQ_WORD(2 * k + 1)),
                                  _mm_set1_epi16(FDY_KQ_WORD(2 * k)));
    }
    __m256 acc = _mm256_setzero_ps();
    __m256 accm = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        fdy_stream_prefetch(&x[i], 2); /* 84 bytes a super-block */
        const float d = y[i].d * fdy_kq_half(x[i].d);
        const float dmin = y[i].d * fdy_kq_half(x[i].dmin);
        const __m128i s8 = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(s8, m4));
        const __m256i m16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s8, 4), m4));
        const __m256i bs = _mm256_loadu_si256((const __m256i *)y[i].bsums);
        accm = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, m16)),
                               accm);
        __m256i sumi = _mm256_setzero_si256();
        #pragma GCC unroll 8
        for (int h = 0; h < 2; h++) {
            const __m256i sc = _mm256_broadcastsi128_si256(
                h ? _mm256_extracti128_si256(sc16, 1) : _mm256_castsi256_si128(sc16));
            const __m256i qv = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h));
            #pragma GCC unroll 8
            for (int k = 0; k < 4; k++) {
                const __m256i uq = _mm256_and_si256(_mm256_srli_epi16(qv, 2 * k), m3);
                const __m256i a8 =
                    _mm256_loadu_si256((const __m256i *)(y[i].qs + 128 * h + 32 * k));
                sumi = _mm256_add_epi32(
                    sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(uq, a8),
                                            _mm256_shuffle_epi8(sc, ctl[k])));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return fdy_kq_hsum256(_mm256_sub_ps(acc, accm));
}

FDY_KQ_BODY512 float q2_k_vec_dot_body512(const void *w, const void *a, int64_t n,
                                          const int vnni) {
    const fdy_block_q2_k *x = (const fdy_block_q2_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0xF);
    const __m512i sh01 = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const __m512i sh23 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(6), 1);
    __m512i idx[4];
    for (int c = 0; c < 4; c++) {
        idx[c] = fdy_kq_group16_idx(c);
    }
    __m512 acc = _mm512_setzero_ps();
    __m256 accm = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        fdy_stream_prefetch(&x[i], 2); /* 84 bytes a super-block */
        /* (d, dmin) * d_a in lanes 0, 1 */
        int32_t dbits;
        memcpy(&dbits, &x[i].d, 4);
        const __m128 dd = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(dbits)), _mm_set1_ps(y[i].d));
        const __m128i s8 = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(s8, m4));
        const __m256i m16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s8, 4), m4));
        const __m256i bs = _mm256_loadu_si256((const __m256i *)y[i].bsums);
        accm = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)),
                               _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, m16)), accm);
        const __m512i scz = _mm512_castsi256_si512(sc16);
        __m512i sumi = _mm512_setzero_si512();
        #pragma GCC unroll 8
        for (int h = 0; h < 2; h++) {
            const __m512i qv =
                _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h)));
            #pragma GCC unroll 8
            for (int t = 0; t < 2; t++) {
                const int c = 2 * h + t;
                const __m512i uq = _mm512_and_si512(_mm512_srlv_epi16(qv, t ? sh23 : sh01), m3);
                const __m512i a8 = _mm512_loadu_si512((const void *)(y[i].qs + 64 * c));
                sumi = fdy_kq_dpwssd(sumi, _mm512_maddubs_epi16(uq, a8),
                                     _mm512_permutexvar_epi16(idx[c], scz), vnni);
            }
        }
        acc = _mm512_fmadd_ps(_mm512_broadcastss_ps(dd), _mm512_cvtepi32_ps(sumi), acc);
    }
    return _mm512_reduce_add_ps(acc) - fdy_kq_hsum256(accm);
}
FDY_KQ_AVX512_ENTRIES(q2_k_vec_dot)
#endif

FDY_KQ_DISPATCH(q2_k_vec_dot)

/* roundtrip: measured relative L2 error 0.297 on N(0, 1) rows (random_rows seed 6) */
/* ---- to_i8 (prefill GEMM): q = 2-bit code, scale = d * (sc & 15), min = -(dmin * (sc >> 4))
 * per 16; bit-exact (decode's dl * q - ml) */
static void q2_k_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                       float *restrict min, int64_t n) {
    /* element 128 h + 32 j + l = (qs[32 h + l] >> 2 j) & 3 (decode's indexing) */
    const fdy_block_q2_k *b = (const fdy_block_q2_k *)src;
    for (int64_t i = 0; i < n / 256; i++) {
        const float d = fdy_half_to_float(b[i].d);
        const float dmin = fdy_half_to_float(b[i].dmin);
        for (int h = 0; h < 2; h++) {
            const uint8_t *qs = b[i].qs + 32 * h;
            int8_t *y = q + 256 * i + 128 * h;
            for (int l = 0; l < 32; l++) {
                y[l] = (int8_t)(qs[l] & 3);
                y[l + 32] = (int8_t)((qs[l] >> 2) & 3);
                y[l + 64] = (int8_t)((qs[l] >> 4) & 3);
                y[l + 96] = (int8_t)(qs[l] >> 6);
            }
        }
        for (int sub = 0; sub < 16; sub++) {
            const int sc = b[i].scales[sub];
            scale[16 * i + sub] = d * (float)(sc & 0xF);
            min[16 * i + sub] = -(dmin * (float)(sc >> 4));
        }
    }
}

/* ---- vec_dot_f32 (f32-variant GEMV): per group g of 16, sum_l (dl_g * q_l - ml_g) x_l with
 * dl_g = d * sc_g and ml_g = dmin * m_g as the decode forms them (dl_g * q is exact, so the
 * weight has the decode's one rounding) and the 2-bit code q.  On x86 the AVX2 row-range
 * kernel runs on the AVX2 and AVX-512 tiers (docs/CPU_NOTES.md item 37) ---- */
FDY_DF_PORTABLE_DECODE(q2_k, fdy_decode_q2_k, FDY_Q2_K_BLOCK_ELEMS, FDY_Q2_K_BLOCK_BYTES,
                       FDY_Q2_K_SUB_ELEMS)

#if defined(__x86_64__)
/* the activation of one super-block, rearranged 32 elements (a chunk: h, k) at a time as
 * fdy_df_q8s_place2 reads it, unscaled */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q2_k_prep(const float *x, int full, float *xp) {
    (void)full;
    fdy_df_q8s_prep_chunks(x, 8, 1.0f, xp);
}

/* the super-block's dl * 2^-24 (dl[h]) and -ml (ml[h]) of groups 8h .. 8h + 7, lane by lane
 * (dl * 2^-24 is d * 2^-24 * sc: the rounding of d * sc, none, as d * sc is exact) */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q2_k_scales(const uint8_t *b, __m256 *dl,
                                                         __m256 *ml) {
    uint16_t d, dmin;
    memcpy(&d, b + offsetof(fdy_block_q2_k, d), 2);
    memcpy(&dmin, b + offsetof(fdy_block_q2_k, dmin), 2);
    const __m256 dv = _mm256_set1_ps(fdy_df_half(d) * 0x1p-24f);
    const __m256 mv = _mm256_set1_ps(-fdy_df_half(dmin));
    const __m128i s = _mm_loadu_si128((const __m128i *)(b + offsetof(fdy_block_q2_k, scales)));
    const __m128i sc = _mm_and_si128(s, _mm_set1_epi8(0x0F));
    const __m128i m = _mm_and_si128(_mm_srli_epi16(s, 4), _mm_set1_epi8(0x0F));
    for (int h = 0; h < 2; h++) {
        const __m128i sh = h ? _mm_unpackhi_epi64(sc, sc) : sc;
        const __m128i mh = h ? _mm_unpackhi_epi64(m, m) : m;
        dl[h] = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sh)));
        ml[h] = _mm256_mul_ps(mv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mh)));
    }
}

/* one super-block of two rows: per chunk of 32 elements (groups 8h + 2k and 8h + 2k + 1 in the
 * two 128-bit halves) the 2-bit codes, each weight fma(q * 2^24, dl * 2^-24, -ml), and the
 * products */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q2_k_step2(const uint8_t *b0, const uint8_t *b1,
                                                        int bb, int qs, int full,
                                                        const float *xp, __m256 *a0,
                                                        __m256 *a1) {
    (void)bb;
    (void)full;
    __m256 d0[2], m0[2], d1[2], m1[2];
    fdy_df_q2_k_scales(b0, d0, m0);
    fdy_df_q2_k_scales(b1, d1, m1);
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; h++) {
        const __m256i qv = _mm256_loadu_si256((const __m256i *)(b0 + qs + 32 * h));
        const __m256i qu = _mm256_loadu_si256((const __m256i *)(b1 + qs + 32 * h));
        for (int k = 0; k < 4; k++) {
            const __m256i pair = fdy_df_pair_lanes(2 * k);
            fdy_df_q8s_place2(_mm256_and_si256(_mm256_srli_epi16(qv, 2 * k), m3),
                              _mm256_and_si256(_mm256_srli_epi16(qu, 2 * k), m3), 1,
                              _mm256_permutevar8x32_ps(d0[h], pair),
                              _mm256_permutevar8x32_ps(m0[h], pair),
                              _mm256_permutevar8x32_ps(d1[h], pair),
                              _mm256_permutevar8x32_ps(m1[h], pair), xp + 128 * h + 32 * k, a0,
                              a1);
        }
    }
}
#endif
FDY_DF_ROWS_KERNEL(q2_k, FDY_Q2_K_BLOCK_BYTES, FDY_Q2_K_BLOCK_ELEMS,
                   (int)offsetof(fdy_block_q2_k, qs))

FDY_POLICY_DEFINE(q2_k, .block_elems = FDY_Q2_K_BLOCK_ELEMS,
                  .block_bytes = FDY_Q2_K_BLOCK_BYTES, .sub_elems = FDY_Q2_K_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_k", .tol_roundtrip = 0.39f,
                  .tol_f32 = 1e-5f, .tol_q8 = 1e-2f, .decode = fdy_decode_q2_k,
                  .dequantize_fast = q2_k_dequantize, .quantize = q2_k_quantize,
                  .vec_dot = q2_k_vec_dot,
                  .to_i8 = q2_k_to_i8, .vec_dot_f32 = q2_k_vec_dot_f32,
                  .vec_dot_f32_rows = q2_k_vec_dot_f32_rows);
#endif
