/* q6_k - super-blocks of 256 weights in 16 groups of 16: 6-bit signed codes with an 8-bit
 * signed scale per group and one f16 super-scale; w = d * sc * (q - 32).
 *
 *   block (256 elements, 210 bytes):
 *   | ql[0..127]: u8 (128) | qh[0..63]: u8 (64) | scales[0..15]: i8 (16) | d: f16 (2) |
 *
 *   Element e = 128h + 32k + l (h = 0..1, k = 0..3, l = 0..31): low 4 bits in nibble k/2 of
 *   ql[64h + 32(k%2) + l], high 2 bits in bits 2k..2k+1 of qh[32h + l]; group g = e / 16.
 *
 * Quantizer (llama.cpp quantize_row_q6_K_ref): per group a symmetric fit with weights x^2 and
 * a search over 19 scales (make_qx_quants, nmax 32); group scales quantized to 8 bits against
 * the largest-magnitude one (d = -max / 128) and the codes recomputed.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_Q6_K_BLOCK_ELEMS 256
#define FDY_Q6_K_BLOCK_BYTES 210
#define FDY_Q6_K_SUB_ELEMS 16

typedef struct fdy_block_q6_k {
    uint8_t ql[128];
    uint8_t qh[64];
    int8_t scales[16];
    uint16_t d;
} fdy_block_q6_k;
FDY_STATIC_ASSERT(sizeof(fdy_block_q6_k) == FDY_Q6_K_BLOCK_BYTES, "q6_k block size");

FDY_FN void fdy_decode_q6_k(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_q6_k *b = (FDY_GLOBAL const fdy_block_q6_k *)blk;
    const float dl = fdy_half_to_float(b->d) * (float)b->scales[sub];
    const int h = sub >> 3;
    const int k = (sub & 7) >> 1;
    const int l0 = 16 * (sub & 1);
    FDY_GLOBAL const uint8_t *ql = b->ql + 64 * h + 32 * (k & 1) + l0;
    FDY_GLOBAL const uint8_t *qh = b->qh + 32 * h + l0;
    const int lshift = 4 * (k >> 1);
    for (int l = 0; l < 16; l++) {
        const int v = (((ql[l] >> lshift) & 0xF) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
        out[l] = dl * (float)v;
    }
}

/* GEMV dot hook (load, then calc): 8 parts per block, part p = half h = p / 4, columns
 * l = 8j .. 8j+7 for j = p % 4: the 32 elements 128h + 32k + l (k = 0..3) built from
 * ql[64h + l] (k = 0 low, k = 2 high nibble), ql[64h + 32 + l] (k = 1, 3) and qh[32h + l]
 * bits 2k..2k+1; sub-block 8h + 2k + (j >= 2).  16-bit loads (blocks are 2-byte aligned):
 * r[0..1] and r[2..3] the two ql runs, r[4..5] the qh run, r[6..7] scales[8h .. 8h+7], r[8] d */
#define FDY_Q6_K_DOTF_PARTS 8
#define FDY_Q6_K_DOTF_WORDS 9
#define FDY_Q6_K_DOTF_U 2 /* unroll depth of fdy_gemv_dotf: the sweep's best */
#define FDY_Q6_K_DOTI_U 1 /* and of fdy_gemv_doti (bench_gpu.py --sweep, GPU_NOTES run 11) */
FDY_FN uint32_t fdy_q6_k_u32(FDY_GLOBAL const uint8_t *p) {
    FDY_GLOBAL const uint16_t *h = (FDY_GLOBAL const uint16_t *)p;
    return (uint32_t)h[0] | ((uint32_t)h[1] << 16);
}

FDY_FN void fdy_dotf_load_q6_k(FDY_GLOBAL const uint8_t *blk, int part, FDY_THREAD uint32_t *r) {
    FDY_GLOBAL const fdy_block_q6_k *b = (FDY_GLOBAL const fdy_block_q6_k *)blk;
    const int h = part >> 2, j = part & 3;
    for (int w = 0; w < 2; w++) {
        r[w] = fdy_q6_k_u32(b->ql + 64 * h + 8 * j + 4 * w);
        r[2 + w] = fdy_q6_k_u32(b->ql + 64 * h + 32 + 8 * j + 4 * w);
        r[4 + w] = fdy_q6_k_u32(b->qh + 32 * h + 8 * j + 4 * w);
        r[6 + w] = fdy_q6_k_u32((FDY_GLOBAL const uint8_t *)b->scales + 8 * h + 4 * w);
    }
    r[8] = b->d;
}

FDY_FN float fdy_dotf_calc_q6_k(FDY_THREAD const uint32_t *r, int part, FDY_GLOBAL const float *x) {
    const int h = part >> 2, j = part & 3;
    FDY_GLOBAL const float *xp = x + 128 * h + 8 * j;
    float tot = 0.0f;
    for (int k = 0; k < 4; k++) {
        const int sh = 4 * (k >> 1);
        float s = 0.0f;
        for (int w = 0; w < 2; w++) {
            const uint32_t lo = (k & 1) ? r[2 + w] : r[w];
            const fdy_float4 xv = fdy_load4(xp + 32 * k + 4 * w);
            for (int i = 0; i < 4; i++) {
                const uint32_t code = ((lo >> (8 * i + sh)) & 0xFu) |
                                      (((r[4 + w] >> (8 * i + 2 * k)) & 3u) << 4);
                s = fdy_fma(fdy_code_f(code, 32), xv.v[i], s);
            }
        }
        /* scale 2k + (j >> 1) of the half: byte 2 (k & 1) + (j >> 1) of r[6 + k / 2] */
        const int sb = 8 * (2 * (k & 1) + (j >> 1));
        const int sc = (int)(int8_t)(uint8_t)((r[6 + (k >> 1)] >> sb) & 0xFFu);
        tot = fdy_fma((float)sc, s, tot);
    }
    return fdy_half_to_float((uint16_t)r[8]) * tot;
}

/* the whole hook in one call (host checks) */
FDY_FN float fdy_dotf_q6_k(FDY_GLOBAL const uint8_t *blk, int part, FDY_GLOBAL const float *x) {
    uint32_t r[FDY_Q6_K_DOTF_WORDS];
    fdy_dotf_load_q6_k(blk, part, r);
    return fdy_dotf_calc_q6_k(r, part, x);
}

/* Integer GEMV hook (the q8 variant; activations in q8_k: codes xq of the block, scale xd[0]):
 * the parts and raw words of the dot hook above; calc: the 6-bit codes rebuilt four to a word,
 * sum (q - 32) c with dp4a per group, exact in integers, then d * xd * sum sc * dot. */
#define FDY_Q6_K_DOTI 1
FDY_FN float fdy_doti_calc_q6_k(FDY_THREAD const uint32_t *r, int part, FDY_GLOBAL const uint8_t *xq,
                                FDY_GLOBAL const float *xd) {
    const int h = part >> 2, j = part & 3;
    FDY_GLOBAL const uint8_t *xp = xq + 128 * h + 8 * j;
    int tot = 0;
    for (int k = 0; k < 4; k++) {
        const int sh = 4 * (k >> 1);
        int s = 0;
        for (int w = 0; w < 2; w++) {
            const uint32_t lo = (k & 1) ? r[2 + w] : r[w];
            const uint32_t q = ((lo >> sh) & 0x0F0F0F0Fu) | (((r[4 + w] >> (2 * k)) & 0x03030303u) << 4);
            const uint32_t xv = fdy_load_u1(xp + 32 * k + 4 * w);
            s = fdy_dp4a(q, xv, s);
            s -= fdy_dp4a(0x20202020u, xv, 0);
        }
        const int sb = 8 * (2 * (k & 1) + (j >> 1));
        tot += (int)(int8_t)(uint8_t)((r[6 + (k >> 1)] >> sb) & 0xFFu) * s;
    }
    return (fdy_half_to_float((uint16_t)r[8]) * xd[0]) * (float)tot;
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_dequant.h"
#include "kquant_ref.h"
#include "simd_kquants.h"
#include "simd_dotf32.h"

/* two passes per block, both plain loops the compiler vectorizes: unpack the signed 6-bit
 * codes in element order, then scale them group by group (same float expression as decode) */
FDY_DEQ_INLINE void q6_k_dequantize_rows(const void *src, float *dst, int64_t n) {
    const fdy_block_q6_k *b = (const fdy_block_q6_k *)src;
    int8_t q[256];
    for (int64_t i = 0; i < n / 256; i++) {
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = b[i].ql + 64 * h;
            const uint8_t *qh = b[i].qh + 32 * h;
            int8_t *qq = q + 128 * h;
            for (int l = 0; l < 32; l++) {
                qq[l] = (int8_t)(((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32);
                qq[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                qq[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                qq[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        const float d = fdy_half_to_float(b[i].d);
        float *y = dst + i * 256;
        for (int g = 0; g < 16; g++) {
            const float dl = d * (float)b[i].scales[g];
            for (int l = 0; l < 16; l++) {
                y[16 * g + l] = dl * (float)q[16 * g + l];
            }
        }
    }
}
#if defined(__x86_64__)
/* the codes of 32 bytes at once (ymm byte ops), then 16-wide scaled converts */
#define Q6_K_DEQ_BODY(S)                                                                   \
    {                                                                                      \
        const fdy_block_q6_k *b = (const fdy_block_q6_k *)src;                             \
        const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);            \
        const __m256i c32 = _mm256_set1_epi8(32);                                          \
        for (int64_t i = 0; i < n / 256; i++) {                                            \
            const float d = fdy_half_to_float(b[i].d);                                     \
            float dl[16];                                                                  \
            for (int g = 0; g < 16; g++) {                                                 \
                dl[g] = d * (float)b[i].scales[g];                                         \
            }                                                                              \
            float *y = dst + i * 256;                                                      \
            for (int h = 0; h < 2; h++) {                                                  \
                const __m256i A = _mm256_loadu_si256((const __m256i *)(b[i].ql + 64 * h)); \
                const __m256i B =                                                          \
                    _mm256_loadu_si256((const __m256i *)(b[i].ql + 64 * h + 32));          \
                const __m256i H = _mm256_loadu_si256((const __m256i *)(b[i].qh + 32 * h)); \
                __m256i q[4];                                                              \
                q[0] = _mm256_or_si256(_mm256_and_si256(A, m4),                            \
                                       _mm256_and_si256(_mm256_slli_epi16(H, 4), m30));    \
                q[1] = _mm256_or_si256(_mm256_and_si256(B, m4),                            \
                                       _mm256_and_si256(_mm256_slli_epi16(H, 2), m30));    \
                q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(A, 4), m4),      \
                                       _mm256_and_si256(H, m30));                          \
                q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(B, 4), m4),      \
                                       _mm256_and_si256(_mm256_srli_epi16(H, 2), m30));    \
                for (int k = 0; k < 4; k++) {                                              \
                    const int g = 8 * h + 2 * k;                                           \
                    fdy_deq_s8x32_##S(_mm256_sub_epi8(q[k], c32), dl[g], dl[g + 1],        \
                                      y + 16 * g);                                         \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
    }
FDY_DEQ_BOTH(q6_k_dequantize, Q6_K_DEQ_BODY)
#endif
FDY_DEQ_SELECT(q6_k_dequantize, q6_k_dequantize_rows)

static void q6_k_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_q6_k *b = (fdy_block_q6_k *)dst;
    int8_t L[256];
    float scales[16];
    for (int64_t i = 0; i < n / 256; i++) {
        const float *x = src + i * 256;
        float max_scale = 0.0f, max_abs = 0.0f;
        for (int g = 0; g < 16; g++) {
            scales[g] = fdy_kq_qx(16, 32, x + 16 * g, L + 16 * g, NULL);
            const float a = fabsf(scales[g]);
            if (a > max_abs) {
                max_abs = a;
                max_scale = scales[g];
            }
        }
        if (max_abs < FDY_KQ_GROUP_EPS) {
            memset(&b[i], 0, sizeof b[i]);
            continue;
        }
        const float iscale = -128.0f / max_scale;
        b[i].d = fdy_float_to_half(1.0f / iscale);
        for (int g = 0; g < 16; g++) {
            const int s = fdy_nearest_int(iscale * scales[g]);
            b[i].scales[g] = (int8_t)(s < 127 ? s : 127);
        }
        /* recompute the codes against the rounded scales; a group whose scale rounds to zero
         * keeps the codes of the search */
        const float d = fdy_half_to_float(b[i].d);
        for (int g = 0; g < 16; g++) {
            const float dl = d * (float)b[i].scales[g];
            if (dl == 0.0f) {
                continue;
            }
            for (int l = 0; l < 16; l++) {
                L[16 * g + l] =
                    (int8_t)(fdy_kq_clamp(fdy_nearest_int(x[16 * g + l] / dl), -32, 31) + 32);
            }
        }
        for (int h = 0; h < 2; h++) {
            const int8_t *Lh = L + 128 * h;
            uint8_t *ql = b[i].ql + 64 * h;
            uint8_t *qh = b[i].qh + 32 * h;
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((Lh[l] & 0xF) | ((Lh[l + 64] & 0xF) << 4));
                ql[l + 32] = (uint8_t)((Lh[l + 32] & 0xF) | ((Lh[l + 96] & 0xF) << 4));
                qh[l] = (uint8_t)((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) |
                                  ((Lh[l + 64] >> 4) << 4) | ((Lh[l + 96] >> 4) << 6));
            }
        }
    }
}

/* ---- q8 variant: integer dot with a Q8_K activation row (simd_kquants.h) ----
 * per block: d_a * d * sum_g sc_g * ((u . a)_g - 32 * bsums_g), u = q + 32 in 0..63 */

static float q6_k_vec_dot_portable(const void *w, const void *a, int64_t n) {
    const fdy_block_q6_k *x = (const fdy_block_q6_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    int16_t q[256];
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 256; i++) {
        const int8_t *sc = x[i].scales;
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[i].ql + 64 * h;
            const uint8_t *qh = x[i].qh + 32 * h;
            int16_t *qq = q + 128 * h;
            const int8_t *s = sc + 8 * h;
            for (int t = 0; t < 2; t++) {
                const int s0 = s[t], s1 = s[2 + t], s2 = s[4 + t], s3 = s[6 + t];
                for (int l = 16 * t; l < 16 * t + 16; l++) {
                    const int u0 = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                    const int u1 = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                    const int u2 = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    const int u3 = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    qq[l] = (int16_t)((u0 - 32) * s0);
                    qq[l + 32] = (int16_t)((u1 - 32) * s1);
                    qq[l + 64] = (int16_t)((u2 - 32) * s2);
                    qq[l + 96] = (int16_t)((u3 - 32) * s3);
                }
            }
        }
        sum += y[i].d * fdy_half_to_float(x[i].d) * (float)fdy_kq_dot256(q, y[i].qs);
    }
    return sum;
}

#if defined(__x86_64__)
__attribute__((target(FDY_KQ_AVX2_TARGET))) static float q6_k_vec_dot_avx2(const void *w,
                                                                         const void *a,
                                                                         int64_t n) {
    const fdy_block_q6_k *x = (const fdy_block_q6_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m2 = _mm256_set1_epi8(0x30);
    /* byte shuffles picking int16 scale 2k in the low 128-bit lane and 2k + 1 in the high */
    __m256i ctl[4];
    for (int k = 0; k < 4; k++) {
        ctl[k] = _mm256_set_m128i(_mm_set1_epi16(FDY_KQ_WORD(2 * k + 1)),
                                  _mm_set1_epi16(FDY_KQ_WORD(2 * k)));
    }
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        fdy_stream_prefetch(&x[i], 4); /* 210 bytes a super-block */
        const float d = y[i].d * fdy_kq_half(x[i].d);
        const __m128i sc8 = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
        /* sum_g sc_g * 32 * bsums_g, subtracted from the code products */
        __m256i sumi = _mm256_sub_epi32(
            _mm256_setzero_si256(),
            _mm256_slli_epi32(
                _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y[i].bsums), sc16), 5));
        #pragma GCC unroll 8
        for (int h = 0; h < 2; h++) {
            const __m256i sc = _mm256_broadcastsi128_si256(
                h ? _mm256_extracti128_si256(sc16, 1) : _mm256_castsi256_si128(sc16));
            const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(x[i].ql + 64 * h));
            const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(x[i].ql + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(x[i].qh + 32 * h));
            __m256i u[4];
            u[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4),
                                   _mm256_and_si256(_mm256_slli_epi16(qh, 4), m2));
            u[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4),
                                   _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2));
            u[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                   _mm256_and_si256(qh, m2));
            u[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                   _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2));
            #pragma GCC unroll 8
            for (int k = 0; k < 4; k++) {
                const __m256i a8 =
                    _mm256_loadu_si256((const __m256i *)(y[i].qs + 128 * h + 32 * k));
                sumi = _mm256_add_epi32(
                    sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(u[k], a8),
                                            _mm256_shuffle_epi8(sc, ctl[k])));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return fdy_kq_hsum256(acc);
}

FDY_KQ_BODY512 float q6_k_vec_dot_body512(const void *w, const void *a, int64_t n,
                                          const int vnni) {
    const fdy_block_q6_k *x = (const fdy_block_q6_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i m2 = _mm512_set1_epi8(0x30);
    /* per-half shift counts: qh bits 2k..2k+1 moved to bits 4-5 for k = 0|1 and k = 2|3 */
    const __m512i sh01 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i sh23 = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    /* int16 permutations: chunk c (elements 64c .. 64c+63) has groups 4c .. 4c+3, 8 lanes each */
    __m512i idx[4];
    for (int c = 0; c < 4; c++) {
        idx[c] = fdy_kq_group16_idx(c);
    }
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        fdy_stream_prefetch(&x[i], 4); /* 210 bytes a super-block */
        const float d = y[i].d * fdy_kq_half(x[i].d);
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[i].scales));
        const __m256i corr = _mm256_slli_epi32(
            _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y[i].bsums), sc16), 5);
        __m512i sumi = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_zextsi256_si512(corr));
        const __m512i scz = _mm512_castsi256_si512(sc16);
        #pragma GCC unroll 8
        for (int h = 0; h < 2; h++) {
            /* [ql 64h .. 64h+31 | ql 64h+32 .. 64h+63]: low nibbles k = 0 | 1, high k = 2 | 3 */
            const __m512i ql = _mm512_loadu_si512((const void *)(x[i].ql + 64 * h));
            const __m512i qh =
                _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x[i].qh + 32 * h)));
            const __m512i u01 = _mm512_or_si512(_mm512_and_si512(ql, m4),
                                                _mm512_and_si512(_mm512_sllv_epi16(qh, sh01), m2));
            const __m512i u23 =
                _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                _mm512_and_si512(_mm512_srlv_epi16(qh, sh23), m2));
            const __m512i a01 = _mm512_loadu_si512((const void *)(y[i].qs + 128 * h));
            const __m512i a23 = _mm512_loadu_si512((const void *)(y[i].qs + 128 * h + 64));
            sumi = fdy_kq_dpwssd(sumi, _mm512_maddubs_epi16(u01, a01),
                                 _mm512_permutexvar_epi16(idx[2 * h], scz), vnni);
            sumi = fdy_kq_dpwssd(sumi, _mm512_maddubs_epi16(u23, a23),
                                 _mm512_permutexvar_epi16(idx[2 * h + 1], scz), vnni);
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
    }
    return _mm512_reduce_add_ps(acc);
}
FDY_KQ_AVX512_ENTRIES(q6_k_vec_dot)
#endif

FDY_KQ_DISPATCH(q6_k_vec_dot)

/* roundtrip: measured relative L2 error 0.0178 on N(0, 1) rows (random_rows seed 6) */
/* ---- to_i8 (prefill GEMM): q = 6-bit code - 32, scale = d * sc per 16, min = 0; bit-exact */
static void q6_k_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                       float *restrict min, int64_t n) {
    /* element 128 h + 32 k + l: low 4 bits from ql[64 h + 32 (k & 1) + l] >> 4 (k >> 1), high
     * 2 bits from qh[32 h + l] >> 2 k (decode's indexing; constant shifts so the loop
     * vectorizes) */
    const fdy_block_q6_k *b = (const fdy_block_q6_k *)src;
    for (int64_t i = 0; i < n / 256; i++) {
        const float d = fdy_half_to_float(b[i].d);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = b[i].ql + 64 * h, *qh = b[i].qh + 32 * h;
            int8_t *y = q + 256 * i + 128 * h;
            for (int l = 0; l < 32; l++) {
                y[l] = (int8_t)(((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32);
                y[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                y[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                y[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        for (int sub = 0; sub < 16; sub++) {
            scale[16 * i + sub] = d * (float)b[i].scales[sub];
            min[16 * i + sub] = 0.0f;
        }
    }
}

/* ---- vec_dot_f32 (f32-variant GEMV): per group g of 16, dl_g * sum_l (q_l - 32) x_l with
 * dl_g = d * sc_g as the decode forms it ---- */
FDY_DF_PORTABLE_DECODE(q6_k, fdy_decode_q6_k, FDY_Q6_K_BLOCK_ELEMS, FDY_Q6_K_BLOCK_BYTES,
                       FDY_Q6_K_SUB_ELEMS)

#if defined(__x86_64__)
/* dl[g] = d * scales[g] */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void q6_k_df_scales(const fdy_block_q6_k *b, float *dl) {
    const __m128i sc = _mm_loadu_si128((const __m128i *)b->scales);
    const __m256 d = _mm256_set1_ps(fdy_df_half(b->d));
    _mm256_storeu_ps(dl, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc))));
    _mm256_storeu_ps(dl + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                                  _mm_srli_si128(sc, 8)))));
    fdy_df_spill(dl);
}

/* the signed codes q - 32 of elements 128h + 32k + (0..31), k = 0..3, as bytes (c[k]: columns
 * 0..15 in the low 128 bits, 16..31 in the high; the one-row kernels take them 16 at a time,
 * fdy_df_half16) */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void q6_k_df_codes(const fdy_block_q6_k *b, int h,
                                                      __m256i *c) {
    const __m256i qa = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
    const __m256i qb = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
    const __m256i qh = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    const __m256i o = _mm256_set1_epi8(32);
    c[0] = _mm256_or_si256(_mm256_and_si256(qa, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
    c[1] = _mm256_or_si256(_mm256_and_si256(qb, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
    c[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qa, 4), m4), _mm256_and_si256(qh, m30));
    c[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qb, 4), m4),
                           _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
    for (int k = 0; k < 4; k++) {
        c[k] = _mm256_sub_epi8(c[k], o);
    }
}

/* columns l0 .. l0 + 15 (l0 = 0 or 16) of a code vector of q6_k_df_codes */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE __m128i q6_k_df_half16(__m256i c, int l0) {
    return l0 ? _mm256_extracti128_si256(c, 1) : _mm256_castsi256_si128(c);
}

FDY_DF_TARGET_AVX2 static float q6_k_dotf_avx2(const void *w, const float *x, int64_t n) {
    const fdy_block_q6_k *b = (const fdy_block_q6_k *)w;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    float sc[2][16];
    const int64_t nb = n / 256;
    for (int64_t i = 0; i < nb; i++) {
        const float *dl = FDY_DF_SCALES_AHEAD(q6_k_df_scales, b, i, nb, sc);
        for (int h = 0; h < 2; h++) {
            __m256i c[4];
            q6_k_df_codes(b + i, h, c);
            for (int l0 = 0; l0 < 32; l0 += 16) {
                for (int k = 0; k < 4; k++) {
                    const float *xk = x + 256 * i + 128 * h + 32 * k + l0;
                    acc[k] = _mm256_fmadd_ps(fdy_df_mul16_256(q6_k_df_half16(c[k], l0), xk),
                                             _mm256_set1_ps(dl[8 * h + 2 * k + l0 / 16]), acc[k]);
                }
            }
        }
    }
    return fdy_df_hsum256(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]),
                                        _mm256_add_ps(acc[2], acc[3])));
}

FDY_DF_TARGET_AVX512 static float q6_k_dotf_avx512(const void *w, const float *x, int64_t n) {
    const fdy_block_q6_k *b = (const fdy_block_q6_k *)w;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    float sc[2][16];
    const int64_t nb = n / 256;
    for (int64_t i = 0; i < nb; i++) {
        fdy_stream_prefetch(b + i, 4); /* 210 bytes a super-block */
        const float *dl = FDY_DF_SCALES_AHEAD(q6_k_df_scales, b, i, nb, sc);
        for (int h = 0; h < 2; h++) {
            __m256i c[4];
            q6_k_df_codes(b + i, h, c);
            for (int l0 = 0; l0 < 32; l0 += 16) {
                for (int k = 0; k < 4; k++) {
                    const float *xk = x + 256 * i + 128 * h + 32 * k + l0;
                    const __m512 q =
                        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q6_k_df_half16(c[k], l0)));
                    acc[k] = _mm512_fmadd_ps(_mm512_mul_ps(q, _mm512_loadu_ps(xk)),
                                             _mm512_set1_ps(dl[8 * h + 2 * k + l0 / 16]), acc[k]);
                }
            }
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]),
                                              _mm512_add_ps(acc[2], acc[3])));
}

/* ---- vec_dot_f32_rows (AVX2): a super-block of two rows per step, on an activation
 * rearranged once per call (docs/CPU_NOTES.md item 36).  Per half h and k = 0..3 the 32 code
 * bytes q - 32 of elements 128h + 32k + l (q6_k_df_codes) go to the lanes
 * by one byte shuffle each (FDY_DF_Q4S_SEL(t): lane j gets column 16 (j / 4) + 4 (j % 4) + t
 * at bits 24..31, the integer (q - 32) * 2^24), against x * 2^-24 (exact for |x| >= 2^-102, as
 * q8_0's kernel); lanes 0..3 hold columns 0..15 (group 8h + 2k) and lanes 4..7 columns 16..31
 * (group 8h + 2k + 1), so the sum of the four products times (dl of the one group in lanes
 * 0..3, of the other in 4..7) is the kernel's dl_g * sum (q - 32) x ---- */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q6_k_prep(const float *x, int full, float *xp) {
    (void)full;
    for (int g = 0; g < 8; g++) {
        fdy_df_q8s_prep(x + 32 * g, xp + 32 * g); /* q8_0's rearrangement, 32 at a time */
    }
}

/* the scales of groups g (lanes 0..3) and g + 1 (lanes 4..7) from dl */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE __m256 q6_k_df_pair(const float *dl, int g) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_broadcast_ss(dl + g)),
                                _mm_broadcast_ss(dl + g + 1), 1);
}

FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q6_k_step2(const uint8_t *b0, const uint8_t *b1,
                                                        int bb, int qs, int full,
                                                        const float *xp, __m256 *a0,
                                                        __m256 *a1) {
    (void)bb;
    (void)qs;
    (void)full;
    const fdy_block_q6_k *v = (const fdy_block_q6_k *)b0, *u = (const fdy_block_q6_k *)b1;
    _Alignas(32) float dv[16], du[16];
    q6_k_df_scales(v, dv);
    q6_k_df_scales(u, du);
    __m256 av = *a0, au = *a1;
    for (int h = 0; h < 2; h++) {
        __m256i cv[4], cu[4];
        q6_k_df_codes(v, h, cv);
        q6_k_df_codes(u, h, cu);
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            const float *xk = xp + 128 * h + 32 * k;
            __m256 sv = _mm256_setzero_ps(), su = sv;
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++) {
                const __m256i sel = FDY_DF_Q4S_SEL(t);
                const __m256 X = _mm256_load_ps(xk + 8 * t);
                const __m256 qv = _mm256_cvtepi32_ps(_mm256_shuffle_epi8(cv[k], sel));
                const __m256 qu = _mm256_cvtepi32_ps(_mm256_shuffle_epi8(cu[k], sel));
                sv = t ? _mm256_fmadd_ps(qv, X, sv) : _mm256_mul_ps(qv, X);
                su = t ? _mm256_fmadd_ps(qu, X, su) : _mm256_mul_ps(qu, X);
            }
            av = _mm256_fmadd_ps(sv, q6_k_df_pair(dv, 8 * h + 2 * k), av);
            au = _mm256_fmadd_ps(su, q6_k_df_pair(du, 8 * h + 2 * k), au);
        }
    }
    *a0 = av;
    *a1 = au;
}
#endif
FDY_DF_DISPATCH(q6_k)
FDY_DF_ROWS_QS(q6_k, fdy_block_q6_k, FDY_Q6_K_BLOCK_ELEMS, 0, 1)

FDY_POLICY_DEFINE(q6_k, .block_elems = FDY_Q6_K_BLOCK_ELEMS,
                  .block_bytes = FDY_Q6_K_BLOCK_BYTES, .sub_elems = FDY_Q6_K_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_k", .tol_roundtrip = 0.023f,
                  .tol_f32 = 1e-5f, .tol_q8 = 1e-2f, .decode = fdy_decode_q6_k,
                  .dequantize_fast = q6_k_dequantize, .quantize = q6_k_quantize,
                  .vec_dot = q6_k_vec_dot,
                  .to_i8 = q6_k_to_i8, .vec_dot_f32 = q6_k_vec_dot_f32,
                  .vec_dot_f32_rows = q6_k_vec_dot_f32_rows);
#endif
