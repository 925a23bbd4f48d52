/* q8_k - activation format of the K-quant dot products: blocks of 256 values with one f32
 * scale, 256 signed 8-bit codes and the sums of each 16 codes; w = d * q.
 *
 *   block (256 elements, 292 bytes):
 *   | d: f32 (4) | qs[0..255]: int8 (256) | bsums[0..15]: int16 (32) |
 *
 *   bsums[g] = qs[16g] + ... + qs[16g + 15] (used by the dot kernels to apply the K-quant mins).
 *
 * Quantizer (llama.cpp quantize_row_q8_K_ref): with max the value of largest magnitude (sign
 * kept), iscale = -127 / max, q = min(127, nearest_int(iscale * x)), d = 1 / iscale stored as
 * f32.  An all-zero block gets d = 0, q = 0 and bsums = 0 (llama.cpp leaves bsums unwritten
 * there).
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_Q8_K_BLOCK_ELEMS 256
#define FDY_Q8_K_BLOCK_BYTES 292
#define FDY_Q8_K_SUB_ELEMS 32

typedef struct fdy_block_q8_k {
    float d;
    int8_t qs[256];
    int16_t bsums[16];
} fdy_block_q8_k;
FDY_STATIC_ASSERT(sizeof(fdy_block_q8_k) == FDY_Q8_K_BLOCK_BYTES, "q8_k block size");

FDY_FN void fdy_decode_q8_k(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_q8_k *b = (FDY_GLOBAL const fdy_block_q8_k *)blk;
    const float d = b->d;
    for (int i = 0; i < 32; i++) {
        out[i] = d * (float)b->qs[sub * 32 + i];
    }
}

/* Activation quantizer of the q8 variant on a GPU (q8_k is the dot_type of the K-quants and
 * the i-quants): the arithmetic of q8_k_quantize, split as in q8_0.c (fdy_actq_scale_q8_0).
 * vmax is the value of largest magnitude (the first one on ties); an all-zero block gets
 * d = 0 and codes 0.  The per-16 sums are not kept: the dot kernels sum the codes. */
#define FDY_Q8_K_ACT_GROUP 256
FDY_FN float fdy_actq_scale_q8_k(float amax, float vmax, FDY_THREAD float *id) {
    if (amax == 0.0f) {
        *id = 0.0f;
        return 0.0f;
    }
    const float iscale = -127.0f / vmax;
    *id = iscale;
    return 1.0f / iscale;
}

FDY_FN int fdy_actq_code_q8_k(float x, float id) {
    const int v = (int)fdy_rint(id * x);
    return v < 127 ? v : 127;
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_kquants.h"

static void q8_k_dequantize(const void *src, float *dst, int64_t n) {
    const fdy_block_q8_k *b = (const fdy_block_q8_k *)src;
    for (int64_t i = 0; i < n / 256; i++) {
        const float d = b[i].d;
        for (int j = 0; j < 256; j++) {
            dst[i * 256 + j] = d * (float)b[i].qs[j];
        }
    }
}

static void q8_k_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_q8_k *b = (fdy_block_q8_k *)dst;
    for (int64_t i = 0; i < n / 256; i++) {
        const float *x = src + i * 256;
        float amax = 0.0f, vmax = 0.0f;
        for (int j = 0; j < 256; j++) {
            const float a = fabsf(x[j]);
            if (a > amax) {
                amax = a;
                vmax = x[j];
            }
        }
        if (amax == 0.0f) {
            memset(&b[i], 0, sizeof b[i]);
            continue;
        }
        const float iscale = -127.0f / vmax;
        for (int j = 0; j < 256; j++) {
            const int v = fdy_nearest_int(iscale * x[j]);
            b[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) {
                sum += b[i].qs[16 * g + l];
            }
            b[i].bsums[g] = (int16_t)sum;
        }
        b[i].d = 1.0f / iscale;
    }
}

/* ---- q8 variant: q8_k weights x Q8_K activations (simd_kquants.h) ----
 * per block: d_w * d_a * (q_w . q_a).  The activation blocks also come from q8_k_quantize_act,
 * a vectorized quantizer that writes the bytes of q8_k_quantize for every input. */

static float q8_k_vec_dot_portable(const void *w, const void *a, int64_t n) {
    const fdy_block_q8_k *x = (const fdy_block_q8_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 256; i++) {
        int32_t sumi = 0;
        for (int j = 0; j < 256; j++) {
            sumi += x[i].qs[j] * y[i].qs[j];
        }
        sum += x[i].d * y[i].d * (float)sumi;
    }
    return sum;
}

/* bsums of one block from its codes */
static void q8_k_bsums(fdy_block_q8_k *b) {
    for (int g = 0; g < 16; g++) {
        int sum = 0;
        for (int l = 0; l < 16; l++) {
            sum += b->qs[16 * g + l];
        }
        b->bsums[g] = (int16_t)sum;
    }
}

#if defined(__x86_64__)
/* signed x signed bytes through vpmaddubsw: |w| x (a with the sign of w).  |w| <= 128 and
 * |a| <= 127 keep every pair sum inside int16; a = -128 against w < 0 gives a wrong (but
 * defined) product, and the quantizer never writes -128 */
__attribute__((target(FDY_KQ_AVX2_TARGET))) static float q8_k_vec_dot_avx2(const void *w,
                                                                         const void *a,
                                                                         int64_t n) {
    const fdy_block_q8_k *x = (const fdy_block_q8_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        __m256i sumi = _mm256_setzero_si256();
        #pragma GCC unroll 8
        for (int j = 0; j < 256; j += 32) {
            const __m256i qw = _mm256_loadu_si256((const __m256i *)(x[i].qs + j));
            const __m256i qa = _mm256_loadu_si256((const __m256i *)(y[i].qs + j));
            const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(qw), _mm256_sign_epi8(qa, qw));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, ones));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(x[i].d * y[i].d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return fdy_kq_hsum256(acc);
}

/* VNNI: (w + 128) as unsigned bytes against a, minus 128 * sum(a) from the bsums: exact for
 * every weight byte.  Without VNNI the sign trick of the AVX2 kernel, with masks. */
FDY_KQ_BODY512 float q8_k_vec_dot_body512(const void *w, const void *a, int64_t n,
                                          const int vnni) {
    const fdy_block_q8_k *x = (const fdy_block_q8_k *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const __m512i ones = _mm512_set1_epi16(1);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        __m512i sumi;
        if (vnni) {
            const __m256i s = _mm256_slli_epi32(
                _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y[i].bsums),
                                  _mm256_set1_epi16(1)), 7);
            sumi = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_zextsi256_si512(s));
        } else {
            sumi = _mm512_setzero_si512();
        }
        #pragma GCC unroll 8
        for (int j = 0; j < 256; j += 64) {
            const __m512i qw = _mm512_loadu_si512((const void *)(x[i].qs + j));
            const __m512i qa = _mm512_loadu_si512((const void *)(y[i].qs + j));
            if (vnni) {
                /* vpdpbusd itself (vnni = 1): exact for any unsigned byte */
                sumi = fdy_kq_dpbusd_small(sumi, _mm512_xor_si512(qw, flip), qa, 1);
            } else {
                const __mmask64 neg = _mm512_movepi8_mask(qw);
                const __m512i sa = _mm512_mask_sub_epi8(qa, neg, _mm512_setzero_si512(), qa);
                const __m512i p = _mm512_maddubs_epi16(_mm512_abs_epi8(qw), sa);
                sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(p, ones));
            }
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(x[i].d * y[i].d), _mm512_cvtepi32_ps(sumi), acc);
    }
    return _mm512_reduce_add_ps(acc);
}
FDY_KQ_AVX512_ENTRIES(q8_k_vec_dot)

/* the quantizer in 8-float steps: the same max search (first element of largest magnitude;
 * NaNs never win, as in the scalar comparison), the same float products and nearest_int bit
 * trick, min(127, v) and the truncation to 8 bits, so the bytes equal q8_k_quantize's */
__attribute__((target(FDY_KQ_AVX2_TARGET))) static void q8_k_quantize_avx2(const float *src,
                                                                         void *dst, int64_t n) {
    fdy_block_q8_k *b = (fdy_block_q8_k *)dst;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    const __m256i mant = _mm256_set1_epi32(0x007fffff);
    const __m256i half = _mm256_set1_epi32(0x00400000);
    const __m256i c127 = _mm256_set1_epi32(127);
    const __m256i lo8 = _mm256_set1_epi32(0xFF);
    for (int64_t i = 0; i < n / 256; i++) {
        const float *x = src + i * 256;
        __m256 mx = _mm256_setzero_ps();
        #pragma GCC unroll 8
        for (int j = 0; j < 256; j += 8) {
            /* max(|x|, mx) returns mx when x is NaN */
            mx = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), mx);
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        if (!(amax > 0.0f)) {
            memset(&b[i], 0, sizeof b[i]);
            continue;
        }
        float vmax = 0.0f;
        const __m256 am = _mm256_set1_ps(amax);
        #pragma GCC unroll 8
        for (int j = 0; j < 256; j += 8) {
            const __m256 v = _mm256_loadu_ps(x + j);
            const int hit =
                _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, v), am, _CMP_EQ_OQ));
            if (hit) {
                vmax = x[j + __builtin_ctz((unsigned)hit)];
                break;
            }
        }
        const float iscale = -127.0f / vmax;
        const __m256 is = _mm256_set1_ps(iscale);
        #pragma GCC unroll 8
        for (int j = 0; j < 256; j += 32) {
            __m256i q[4];
            #pragma GCC unroll 8
            for (int k = 0; k < 4; k++) {
                const __m256 f =
                    _mm256_add_ps(_mm256_mul_ps(is, _mm256_loadu_ps(x + j + 8 * k)), magic);
                __m256i v = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(f), mant), half);
                v = _mm256_min_epi32(v, c127);
                q[k] = _mm256_and_si256(v, lo8); /* the (int8_t) conversion: low 8 bits */
            }
            /* 0..255 values: the unsigned packs are exact; then undo the lane interleave */
            const __m256i p16a = _mm256_packus_epi32(q[0], q[1]);
            const __m256i p16b = _mm256_packus_epi32(q[2], q[3]);
            const __m256i p8 = _mm256_packus_epi16(p16a, p16b);
            const __m256i out =
                _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(b[i].qs + j), out);
        }
        q8_k_bsums(&b[i]);
        b[i].d = 1.0f / iscale;
    }
}
#endif

FDY_KQ_DISPATCH(q8_k_vec_dot)

static void q8_k_quantize_act(const float *src, void *dst, int64_t n) {
#if defined(__x86_64__)
    if (fdy_kq_tier() != FDY_KQ_PORTABLE) {
        q8_k_quantize_avx2(src, dst, n);
        return;
    }
#endif
    q8_k_quantize(src, dst, n);
}

/* roundtrip: measured relative L2 error 0.00690 on N(0, 1) rows (random_rows seed 6) */
/* ---- to_i8 (prefill GEMM activations): the codes, scale = d for all 16 groups, min = 0;
 * bit-exact */
static void q8_k_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                        float *restrict min, int64_t n) {
    const fdy_block_q8_k *b = (const fdy_block_q8_k *)src;
    for (int64_t i = 0; i < n / 256; i++) {
        memcpy(q + 256 * i, b[i].qs, 256);
        for (int g = 0; g < 16; g++) {
            scale[16 * i + g] = b[i].d;
            min[16 * i + g] = 0.0f;
        }
    }
}

FDY_POLICY_DEFINE(q8_k, .block_elems = FDY_Q8_K_BLOCK_ELEMS,
                  .block_bytes = FDY_Q8_K_BLOCK_BYTES, .sub_elems = FDY_Q8_K_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF | FDY_POLICY_ACT, .dot_type = "q8_k",
                  .tol_roundtrip = 0.009f, .tol_f32 = 1e-5f, .tol_q8 = 1e-2f,
                  .decode = fdy_decode_q8_k, .dequantize_fast = q8_k_dequantize,
                  .quantize = q8_k_quantize,
                  .vec_dot = q8_k_vec_dot, .quantize_act = q8_k_quantize_act,
                  .to_i8 = q8_k_to_i8);
#endif
