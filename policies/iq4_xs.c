/* iq4_xs - super-blocks of 256 weights in 8 groups of 32: 4-bit indices into the fixed
 * non-linear grid of iq4_nl, a 6-bit signed scale per group and one f16 super-scale;
 * w = d * (ls - 32) * grid[q].
 *
 *   block (256 elements, 136 bytes):
 *   | d: f16 (2) | scales_h: u16 (2) | scales_l[0..3]: u8 (4) | qs[0..127]: u8 (128) |
 *
 *   ls of group g: low nibble g%2 of scales_l[g/2] | bits 2g..2g+1 of scales_h << 4.
 *   Element 32g + j (j < 16) in the low nibble of qs[16g + j], 32g + 16 + j in its high nibble.
 *   grid = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}
 *
 * Quantizer (llama.cpp quantize_row_iq4_xs_ref = quantize_iq4_xs without importance weights):
 * per group the iq4_nl scale search (weights x^2, 15 trial scales); d = -max_scale / 32 with
 * max_scale the group scale of largest magnitude, ls = clamp(nearest_int(scale / d), -32, 31),
 * and the indices taken at 1 / (d * ls) with the unrounded d.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_IQ4_XS_BLOCK_ELEMS 256
#define FDY_IQ4_XS_BLOCK_BYTES 136
#define FDY_IQ4_XS_SUB_ELEMS 32

FDY_CONSTANT int8_t fdy_iq4_xs_grid[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                           1,    13,   25,  38,  53,  69,  89,  113};

typedef struct fdy_block_iq4_xs {
    uint16_t d;
    uint16_t scales_h;
    uint8_t scales_l[4];
    uint8_t qs[128];
} fdy_block_iq4_xs;
FDY_STATIC_ASSERT(sizeof(fdy_block_iq4_xs) == FDY_IQ4_XS_BLOCK_BYTES, "iq4_xs block size");

/* the 6-bit scale of group g, minus 32 */
FDY_FN int fdy_iq4_xs_scale(FDY_GLOBAL const fdy_block_iq4_xs *b, int g) {
    const int lo = (b->scales_l[g >> 1] >> (4 * (g & 1))) & 0xF;
    const int hi = (b->scales_h >> (2 * g)) & 3;
    return (lo | (hi << 4)) - 32;
}

FDY_FN void fdy_decode_iq4_xs(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_iq4_xs *b = (FDY_GLOBAL const fdy_block_iq4_xs *)blk;
    const float dl = fdy_half_to_float(b->d) * (float)fdy_iq4_xs_scale(b, sub);
    FDY_GLOBAL const uint8_t *q = b->qs + 16 * sub;
    for (int j = 0; j < 16; j++) {
        out[j] = dl * (float)fdy_iq4_xs_grid[q[j] & 0xF];
        out[j + 16] = dl * (float)fdy_iq4_xs_grid[q[j] >> 4];
    }
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_dequant.h"
#include "kquant_ref.h"
#include "simd_kquants.h"
#include "simd_dotf32.h"

/* two passes per block: look the grid values up in element order (a byte table lookup), then
 * plain float loops the compiler vectorizes (same float expression as the decode) */
FDY_DEQ_INLINE void iq4_xs_dequantize_rows(const void *src, float *dst, int64_t n) {
    const fdy_block_iq4_xs *b = (const fdy_block_iq4_xs *)src;
    int8_t v[256];
    for (int64_t i = 0; i < n / 256; i++) {
        for (int g = 0; g < 8; g++) {
            const uint8_t *q = b[i].qs + 16 * g;
            for (int j = 0; j < 16; j++) {
                v[32 * g + j] = fdy_iq4_xs_grid[q[j] & 0xF];
                v[32 * g + j + 16] = fdy_iq4_xs_grid[q[j] >> 4];
            }
        }
        const float d = fdy_half_to_float(b[i].d);
        float *y = dst + i * 256;
        for (int g = 0; g < 8; g++) {
            const float dl = d * (float)fdy_iq4_xs_scale(&b[i], g);
            for (int j = 0; j < 32; j++) {
                y[32 * g + j] = dl * (float)v[32 * g + j];
            }
        }
    }
}
#if defined(__x86_64__)
#define IQ4_XS_DEQ_BODY(S)                                                                 \
    {                                                                                      \
        const fdy_block_iq4_xs *b = (const fdy_block_iq4_xs *)src;                         \
        for (int64_t i = 0; i < n / 256; i++) {                                            \
            const float d = fdy_half_to_float(b[i].d);                                     \
            float *y = dst + i * 256;                                                      \
            for (int g = 0; g < 8; g++) {                                                  \
                const float dl = d * (float)fdy_iq4_xs_scale(&b[i], g);                    \
                fdy_deq_nib32_##S(b[i].qs + 16 * g, 0, 0, fdy_iq4_xs_grid, 0, dl, 0.0f, 0,  \
                                  y + 32 * g);                                             \
            }                                                                              \
        }                                                                                  \
    }
FDY_DEQ_BOTH(iq4_xs_dequantize, IQ4_XS_DEQ_BODY)
#endif
FDY_DEQ_SELECT(iq4_xs_dequantize, iq4_xs_dequantize_rows)

static void iq4_xs_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_iq4_xs *b = (fdy_block_iq4_xs *)dst;
    float scales[8];
    uint8_t L[32];
    for (int64_t i = 0; i < n / 256; i++) {
        const float *x = src + i * 256;
        float max_scale = 0.0f, amax_scale = 0.0f;
        for (int g = 0; g < 8; g++) {
            scales[g] = fdy_iq4_block_scale(x + 32 * g, fdy_iq4_xs_grid, 7);
            const float a = fabsf(scales[g]);
            if (a > amax_scale) {
                amax_scale = a;
                max_scale = scales[g];
            }
        }
        const float d = -max_scale / 32.0f;
        b[i].d = fdy_float_to_half(d);
        b[i].scales_h = 0;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int g = 0; g < 8; g++) {
            const int l = fdy_kq_clamp(fdy_nearest_int(id * scales[g]), -32, 31);
            const float dl = d * (float)l;
            const float idl = dl != 0.0f ? 1.0f / dl : 0.0f;
            const float *xg = x + 32 * g;
            for (int j = 0; j < 32; j++) {
                L[j] = (uint8_t)fdy_iq4_best_index(fdy_iq4_xs_grid, idl * xg[j]);
            }
            for (int j = 0; j < 16; j++) {
                b[i].qs[16 * g + j] = (uint8_t)(L[j] | (L[j + 16] << 4));
            }
            const int ls = l + 32;
            if (g % 2 == 0) {
                b[i].scales_l[g / 2] = (uint8_t)(ls & 0xF);
            } else {
                b[i].scales_l[g / 2] |= (uint8_t)((ls & 0xF) << 4);
            }
            b[i].scales_h |= (uint16_t)((ls >> 4) << (2 * g));
        }
    }
}

/* ---- q8 variant: integer dot with a Q8_K activation row (simd_kquants.h) ----
 * per block: d_a * d * sum_g ls_g * (grid[q] . a)_g.  grid values are signed: the SIMD kernels
 * multiply |grid[q]| (unsigned) by a with the sign of grid[q] (|grid| <= 127, no saturation) */

static float iq4_xs_vec_dot_portable(const void *w, const void *a, int64_t n) {
    const fdy_block_iq4_xs *x = (const fdy_block_iq4_xs *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 256; i++) {
        int32_t sumi = 0;
        for (int g = 0; g < 8; g++) {
            const uint8_t *q = x[i].qs + 16 * g;
            const int8_t *q8 = y[i].qs + 32 * g;
            int32_t s = 0;
            for (int j = 0; j < 16; j++) {
                s += fdy_iq4_xs_grid[q[j] & 0xF] * q8[j] + fdy_iq4_xs_grid[q[j] >> 4] * q8[j + 16];
            }
            sumi += fdy_iq4_xs_scale(&x[i], g) * s;
        }
        sum += y[i].d * fdy_half_to_float(x[i].d) * (float)sumi;
    }
    return sum;
}

#if defined(__x86_64__)
/* the 8 group scales ls - 32 as int16, from the first 16 bytes of the block */
__attribute__((target(FDY_KQ_AVX2_TARGET))) static inline __m128i iq4_xs_scales16(
    const fdy_block_iq4_xs *b) {
    const __m128i v = _mm_loadu_si128((const __m128i *)b); /* d, scales_h, scales_l, qs... */
    const __m128i m4 = _mm_set1_epi8(0xF);
    const __m128i sl = _mm_srli_si128(v, 4);
    /* low nibbles: byte g = nibble g % 2 of scales_l[g / 2] */
    const __m128i lo = _mm_unpacklo_epi8(_mm_and_si128(sl, m4),
                                         _mm_and_si128(_mm_srli_epi16(sl, 4), m4));
    /* bits 2g..2g+1 of scales_h: byte g / 4 of it, moved to bits 6-7 by a multiply */
    const __m128i hb = _mm_cvtepu8_epi16(
        _mm_shuffle_epi8(v, _mm_setr_epi8(2, 2, 2, 2, 3, 3, 3, 3, -1, -1, -1, -1, -1, -1, -1, -1)));
    const __m128i hi = _mm_and_si128(
        _mm_srli_epi16(_mm_mullo_epi16(hb, _mm_setr_epi16(64, 16, 4, 1, 64, 16, 4, 1)), 6),
        _mm_set1_epi16(3));
    return _mm_sub_epi16(_mm_or_si128(_mm_cvtepu8_epi16(lo), _mm_slli_epi16(hi, 4)),
                         _mm_set1_epi16(32));
}

__attribute__((target(FDY_KQ_AVX2_TARGET))) static float iq4_xs_vec_dot_avx2(const void *w,
                                                                           const void *a,
                                                                           int64_t n) {
    const fdy_block_iq4_xs *x = (const fdy_block_iq4_xs *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    const __m256i grid =
        _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)fdy_iq4_xs_grid));
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        fdy_stream_prefetch(&x[i], 3); /* 136 bytes a super-block */
        const float d = y[i].d * fdy_kq_half(x[i].d);
        const __m256i sc = _mm256_broadcastsi128_si256(iq4_xs_scales16(&x[i]));
        __m256i sumi = _mm256_setzero_si256();
        #pragma GCC unroll 8
        for (int j = 0; j < 4; j++) {
            /* groups 2j, 2j+1 as [low nibbles | high nibbles]: elements 64j .. 64j+63 */
            const __m256i q4 = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j));
            const __m256i lo = _mm256_and_si256(q4, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
            const __m256i v0 = _mm256_shuffle_epi8(grid, _mm256_permute2x128_si256(lo, hi, 0x20));
            const __m256i v1 = _mm256_shuffle_epi8(grid, _mm256_permute2x128_si256(lo, hi, 0x31));
            const __m256i a0 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * j));
            const __m256i a1 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * j + 32));
            const __m256i p0 = _mm256_maddubs_epi16(_mm256_abs_epi8(v0), _mm256_sign_epi8(a0, v0));
            const __m256i p1 = _mm256_maddubs_epi16(_mm256_abs_epi8(v1), _mm256_sign_epi8(a1, v1));
            const __m256i s0 = _mm256_shuffle_epi8(sc, _mm256_set1_epi16(FDY_KQ_WORD(2 * j)));
            const __m256i s1 = _mm256_shuffle_epi8(sc, _mm256_set1_epi16(FDY_KQ_WORD(2 * j + 1)));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_madd_epi16(p0, s0),
                                                           _mm256_madd_epi16(p1, s1)));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return fdy_kq_hsum256(acc);
}

FDY_KQ_BODY512 float iq4_xs_vec_dot_body512(const void *w, const void *a, int64_t n,
                                            const int vnni) {
    const fdy_block_iq4_xs *x = (const fdy_block_iq4_xs *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    const __m512i m4 = _mm512_set1_epi8(0xF);
    const __m512i eight = _mm512_set1_epi8(8);
    /* |grid| in every 128-bit lane; grid[q] < 0 exactly for q < 8 */
    const __m512i agrid = _mm512_broadcast_i32x4(
        _mm_setr_epi8(127, 104, 83, 65, 49, 35, 22, 10, 1, 13, 25, 38, 53, 69, 89, 113));
    /* shift counts per 128-bit lane: low nibbles, high nibbles, low, high */
    const __m512i shift = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_set_m128i(_mm_set1_epi16(4), _mm_setzero_si128())),
        _mm256_set_m128i(_mm_set1_epi16(4), _mm_setzero_si128()), 1);
    __m512i ctl[4];
    for (int j = 0; j < 4; j++) {
        ctl[j] = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_set1_epi16(FDY_KQ_WORD(2 * j))),
            _mm256_set1_epi16(FDY_KQ_WORD(2 * j + 1)), 1);
    }
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        fdy_stream_prefetch(&x[i], 3); /* 136 bytes a super-block */
        const float d = y[i].d * fdy_kq_half(x[i].d);
        const __m512i sc = _mm512_broadcast_i32x4(iq4_xs_scales16(&x[i]));
        __m512i sumi = _mm512_setzero_si512();
        #pragma GCC unroll 8
        for (int j = 0; j < 4; j++) {
            /* groups 2j, 2j+1: 128-bit lanes [2j low | 2j high | 2j+1 low | 2j+1 high] */
            const __m512i q2 = _mm512_castsi256_si512(
                _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j)));
            const __m512i q = _mm512_and_si512(
                _mm512_srlv_epi16(_mm512_shuffle_i64x2(q2, q2, _MM_SHUFFLE(1, 1, 0, 0)), shift),
                m4);
            const __m512i a8 = _mm512_loadu_si512((const void *)(y[i].qs + 64 * j));
            const __m512i sa = _mm512_mask_sub_epi8(a8, _mm512_cmplt_epu8_mask(q, eight),
                                                    _mm512_setzero_si512(), a8);
            sumi = fdy_kq_dpwssd(sumi, _mm512_maddubs_epi16(_mm512_shuffle_epi8(agrid, q), sa),
                                 _mm512_shuffle_epi8(sc, ctl[j]), vnni);
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
    }
    return _mm512_reduce_add_ps(acc);
}
FDY_KQ_AVX512_ENTRIES(iq4_xs_vec_dot)
#endif

FDY_KQ_DISPATCH(iq4_xs_vec_dot)

/* roundtrip: measured relative L2 error 0.0768 on N(0, 1) rows (random_rows seed 6) */
/* ---- to_i8 (prefill GEMM): q = the grid value, scale = d * sc per group of 32 (both
 * 16-halves), min = 0; bit-exact */
static void iq4_xs_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                        float *restrict min, int64_t n) {
    const fdy_block_iq4_xs *b = (const fdy_block_iq4_xs *)src;
    for (int64_t i = 0; i < n / 256; i++) {
        const float d = fdy_half_to_float(b[i].d);
        for (int g = 0; g < 8; g++) {
            const uint8_t *qs = b[i].qs + 16 * g;
            int8_t *y = q + 256 * i + 32 * g;
            for (int j = 0; j < 16; j++) {
                y[j] = fdy_iq4_xs_grid[qs[j] & 0xF];
                y[j + 16] = fdy_iq4_xs_grid[qs[j] >> 4];
            }
            const float dl = d * (float)fdy_iq4_xs_scale(&b[i], g);
            scale[16 * i + 2 * g] = scale[16 * i + 2 * g + 1] = dl;
            min[16 * i + 2 * g] = min[16 * i + 2 * g + 1] = 0.0f;
        }
    }
}

/* ---- vec_dot_f32 (f32-variant GEMV): per group g of 32, dl_g * sum_l grid[q_l] x_l with dl_g
 * = d * (ls_g - 32) as the decode forms it (at most 16 significant bits, so each weight dl_g *
 * grid[q] is exact in float and the group scale adds one rounding).  On x86 the AVX2
 * row-range kernel (fdy_df_nib_place2, the grid looked up by a byte shuffle) runs on the AVX2
 * and AVX-512 tiers (docs/CPU_NOTES.md item 37) ---- */
FDY_DF_PORTABLE_DECODE(iq4_xs, fdy_decode_iq4_xs, FDY_IQ4_XS_BLOCK_ELEMS, FDY_IQ4_XS_BLOCK_BYTES,
                       FDY_IQ4_XS_SUB_ELEMS)

#if defined(__x86_64__)
/* the activation of one super-block, rearranged pair of groups by pair of groups as
 * fdy_df_nib_place2 reads it, times 2^-24 (exact for |x| >= 2^-102) */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_iq4_xs_prep(const float *x, int full, float *xp) {
    (void)full;
    for (int p = 0; p < 4; p++) {
        fdy_df_q4s_prep(x + 64 * p, 1, 0x1p-24f, xp + 64 * p);
    }
}

/* the super-block's 8 group scales d * (ls_g - 32), group g in lane g */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE __m256 fdy_df_iq4_xs_scales(const uint8_t *b) {
    uint16_t d, sh;
    uint32_t sl;
    memcpy(&d, b + offsetof(fdy_block_iq4_xs, d), 2);
    memcpy(&sh, b + offsetof(fdy_block_iq4_xs, scales_h), 2);
    memcpy(&sl, b + offsetof(fdy_block_iq4_xs, scales_l), 4);
    const __m256i lo = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)sl),
                                                          _mm256_setr_epi32(0, 4, 8, 12, 16,
                                                                            20, 24, 28)),
                                        _mm256_set1_epi32(0xF));
    const __m256i hi = _mm256_and_si256(
        _mm256_srlv_epi32(_mm256_set1_epi32(sh), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
        _mm256_set1_epi32(3));
    const __m256i ls = _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)),
                                        _mm256_set1_epi32(32));
    return _mm256_mul_ps(_mm256_set1_ps(fdy_df_half(d)), _mm256_cvtepi32_ps(ls));
}

/* one super-block of two rows: per pair of groups (32 code bytes, a group per 128-bit half),
 * the low and high nibbles looked up in the grid, placed and multiplied by fdy_df_nib_place2,
 * the sums times the pair's scales */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_iq4_xs_step2(const uint8_t *b0, const uint8_t *b1,
                                                          int bb, int qs, int full,
                                                          const float *xp, __m256 *a0,
                                                          __m256 *a1) {
    (void)bb;
    (void)full;
    const __m256i grid =
        _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)fdy_iq4_xs_grid));
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256 s0 = fdy_df_iq4_xs_scales(b0), s1 = fdy_df_iq4_xs_scales(b1);
    for (int p = 0; p < 4; p++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(b0 + qs + 32 * p));
        const __m256i u = _mm256_loadu_si256((const __m256i *)(b1 + qs + 32 * p));
        const __m256i pair = fdy_df_pair_lanes(2 * p);
        const __m256 dv = _mm256_permutevar8x32_ps(s0, pair);
        const __m256 du = _mm256_permutevar8x32_ps(s1, pair);
        fdy_df_nib_place2(
            _mm256_shuffle_epi8(grid, _mm256_and_si256(v, m4)),
            _mm256_shuffle_epi8(grid, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4)),
            _mm256_shuffle_epi8(grid, _mm256_and_si256(u, m4)),
            _mm256_shuffle_epi8(grid, _mm256_and_si256(_mm256_srli_epi16(u, 4), m4)), 0, &dv,
            NULL, &du, NULL, xp + 64 * p, a0, a1);
    }
}
#endif
FDY_DF_ROWS_KERNEL(iq4_xs, FDY_IQ4_XS_BLOCK_BYTES, FDY_IQ4_XS_BLOCK_ELEMS,
                   (int)offsetof(fdy_block_iq4_xs, qs))

FDY_POLICY_DEFINE(iq4_xs, .block_elems = FDY_IQ4_XS_BLOCK_ELEMS,
                  .block_bytes = FDY_IQ4_XS_BLOCK_BYTES, .sub_elems = FDY_IQ4_XS_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_k", .tol_roundtrip = 0.1f,
                  .tol_f32 = 1e-5f, .tol_q8 = 1e-2f, .decode = fdy_decode_iq4_xs,
                  .dequantize_fast = iq4_xs_dequantize, .quantize = iq4_xs_quantize,
                  .vec_dot = iq4_xs_vec_dot,
                  .to_i8 = iq4_xs_to_i8, .vec_dot_f32 = iq4_xs_vec_dot_f32,
                  .vec_dot_f32_rows = iq4_xs_vec_dot_f32_rows);
#endif
