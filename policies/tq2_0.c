/* tq2_0 - ternary weights, 2 bits each: blocks of 256, one f16 scale; w = d * (q - 1), q in 0..2.
 *
 *   block (256 elements, 66 bytes):
 *   | qs[0..63]: u8 (64) | d: f16 (2) |
 *   element 128*c + 32*l + m (c in 0..1, l in 0..3, m in 0..31) is bits 2l..2l+1 of qs[32*c + m]
 *
 * Quantizer (llama.cpp / gguf-py reference): d = max|x|, q = round(x / d) + 1 (half away from
 * zero; computed as x * (1/d), 0 for an all-zero block), d stored as f16.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_TQ2_0_BLOCK_ELEMS 256
#define FDY_TQ2_0_BLOCK_BYTES 66
#define FDY_TQ2_0_SUB_ELEMS 32

typedef struct fdy_block_tq2_0 {
    uint8_t qs[64];
    uint16_t d;
} fdy_block_tq2_0;
FDY_STATIC_ASSERT(sizeof(fdy_block_tq2_0) == FDY_TQ2_0_BLOCK_BYTES, "tq2_0 block size");

/* sub s (0..7): the 32 elements in 2-bit plane s % 4 of the 32 bytes 32 * (s / 4) .. + 31 */
FDY_FN void fdy_decode_tq2_0(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_tq2_0 *b = (FDY_GLOBAL const fdy_block_tq2_0 *)blk;
    const float d = fdy_half_to_float(b->d);
    FDY_GLOBAL const uint8_t *q = b->qs + 32 * (sub >> 2);
    const int shift = 2 * (sub & 3);
    for (int i = 0; i < 32; i++) {
        out[i] = d * (float)((int)((q[i] >> shift) & 3) - 1);
    }
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_dequant.h"
#include "simd_kquants.h"

FDY_DEQ_INLINE void tq2_0_dequantize_rows(const void *src, float *dst, int64_t n) {
    const fdy_block_tq2_0 *b = (const fdy_block_tq2_0 *)src;
    for (int64_t i = 0; i < n / 256; i++) {
        const float d = fdy_half_to_float(b[i].d);
        float *y = dst + i * 256;
        for (int c = 0; c < 2; c++) {
            for (int l = 0; l < 4; l++) {
                for (int m = 0; m < 32; m++) {
                    y[128 * c + 32 * l + m] =
                        d * (float)((int)((b[i].qs[32 * c + m] >> (2 * l)) & 3) - 1);
                }
            }
        }
    }
}
#if defined(__x86_64__)
#define TQ2_0_DEQ_BODY(S)                                                                  \
    {                                                                                      \
        const fdy_block_tq2_0 *b = (const fdy_block_tq2_0 *)src;                           \
        const __m256i m3 = _mm256_set1_epi8(3), c1 = _mm256_set1_epi8(1);                  \
        for (int64_t i = 0; i < n / 256; i++) {                                            \
            const float d = fdy_half_to_float(b[i].d);                                     \
            float *y = dst + i * 256;                                                      \
            for (int c = 0; c < 2; c++) {                                                  \
                const __m256i Q = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * c)); \
                for (int l = 0; l < 4; l++) {                                              \
                    const __m256i q = _mm256_sub_epi8(                                     \
                        _mm256_and_si256(_mm256_srli_epi16(Q, 2 * l), m3), c1);            \
                    fdy_deq_s8x32_##S(q, d, d, y + 128 * c + 32 * l);                      \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
    }
FDY_DEQ_BOTH(tq2_0_dequantize, TQ2_0_DEQ_BODY)
#endif
FDY_DEQ_SELECT(tq2_0_dequantize, tq2_0_dequantize_rows)

static void tq2_0_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_tq2_0 *b = (fdy_block_tq2_0 *)dst;
    for (int64_t i = 0; i < n / 256; i++) {
        const float *x = src + i * 256;
        float amax = 0.0f;
        for (int j = 0; j < 256; j++) {
            amax = fmaxf(amax, fabsf(x[j]));
        }
        const float d = amax;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int c = 0; c < 2; c++) {
            for (int m = 0; m < 32; m++) {
                uint8_t q = 0;
                for (int l = 0; l < 4; l++) {
                    const int t = (int)fdy_roundf(x[128 * c + 32 * l + m] * id) + 1;
                    q |= (uint8_t)(t << (2 * l));
                }
                b[i].qs[32 * c + m] = q;
            }
        }
        b[i].d = fdy_float_to_half(d);
    }
}

/* ---- q8 variant: integer dot with a Q8_K activation row (simd_kquants.h) ----
 * per block: d_a * d * ((q . a) - sum(a)), q the 2-bit codes; sum(a) from the bsums */

static float tq2_0_vec_dot_portable(const void *w, const void *a, int64_t n) {
    const fdy_block_tq2_0 *x = (const fdy_block_tq2_0 *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    int16_t q[256];
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 256; i++) {
        for (int c = 0; c < 2; c++) {
            for (int l = 0; l < 4; l++) {
                for (int m = 0; m < 32; m++) {
                    q[128 * c + 32 * l + m] = (int16_t)(((x[i].qs[32 * c + m] >> (2 * l)) & 3) - 1);
                }
            }
        }
        sum += y[i].d * fdy_half_to_float(x[i].d) * (float)fdy_kq_dot256(q, y[i].qs);
    }
    return sum;
}

#if defined(__x86_64__)
__attribute__((target(FDY_KQ_AVX2_TARGET))) static float tq2_0_vec_dot_avx2(const void *w,
                                                                          const void *a,
                                                                          int64_t n) {
    const fdy_block_tq2_0 *x = (const fdy_block_tq2_0 *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        /* int16 lanes: at most 8 x (3 * 128 * 2) in magnitude */
        __m256i s16 = _mm256_setzero_si256();
        #pragma GCC unroll 8
        for (int c = 0; c < 2; c++) {
            const __m256i qv = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * c));
            #pragma GCC unroll 8
            for (int l = 0; l < 4; l++) {
                const __m256i a8 =
                    _mm256_loadu_si256((const __m256i *)(y[i].qs + 128 * c + 32 * l));
                const __m256i u = _mm256_and_si256(_mm256_srli_epi16(qv, 2 * l), m3);
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(u, a8));
            }
        }
        const __m256i bs = _mm256_loadu_si256((const __m256i *)y[i].bsums);
        const __m256i sumi = _mm256_madd_epi16(_mm256_sub_epi16(s16, bs), ones);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * fdy_kq_half(x[i].d)),
                              _mm256_cvtepi32_ps(sumi), acc);
    }
    return fdy_kq_hsum256(acc);
}

FDY_KQ_BODY512 float tq2_0_vec_dot_body512(const void *w, const void *a, int64_t n,
                                           const int vnni) {
    const fdy_block_tq2_0 *x = (const fdy_block_tq2_0 *)w;
    const fdy_kq_act *y = (const fdy_kq_act *)a;
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m512i sh01 = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const __m512i sh23 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(6), 1);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / 256; i++) {
        const __m256i s = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y[i].bsums),
                                            _mm256_set1_epi16(1));
        __m512i sumi = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_zextsi256_si512(s));
        #pragma GCC unroll 8
        for (int c = 0; c < 2; c++) {
            const __m512i qv =
                _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * c)));
            const __m512i a01 = _mm512_loadu_si512((const void *)(y[i].qs + 128 * c));
            const __m512i a23 = _mm512_loadu_si512((const void *)(y[i].qs + 128 * c + 64));
            sumi = fdy_kq_dpbusd_small(sumi, _mm512_and_si512(_mm512_srlv_epi16(qv, sh01), m3),
                                       a01, vnni);
            sumi = fdy_kq_dpbusd_small(sumi, _mm512_and_si512(_mm512_srlv_epi16(qv, sh23), m3),
                                       a23, vnni);
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(y[i].d * fdy_kq_half(x[i].d)),
                              _mm512_cvtepi32_ps(sumi), acc);
    }
    return _mm512_reduce_add_ps(acc);
}
FDY_KQ_AVX512_ENTRIES(tq2_0_vec_dot)
#endif

FDY_KQ_DISPATCH(tq2_0_vec_dot)

/* roundtrip bound: 1.3x the measured 0.798 would pass an all-zero decoder (1.0), so the
 * bound is 0.9 instead; ternary codes with d = max|x| send most Gaussian weights to 0 */
/* ---- to_i8 (prefill GEMM): q = trit - 1, scale = d, min = 0; bit-exact */
static void tq2_0_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                        float *restrict min, int64_t n) {
    const fdy_block_tq2_0 *b = (const fdy_block_tq2_0 *)src;
    for (int64_t i = 0; i < n / 256; i++) {
        const float d = fdy_half_to_float(b[i].d);
        for (int sub = 0; sub < 8; sub++) {
            const uint8_t *qs = b[i].qs + 32 * (sub >> 2);
            const int shift = 2 * (sub & 3);
            for (int l = 0; l < 32; l++) {
                q[256 * i + 32 * sub + l] = (int8_t)((int)((qs[l] >> shift) & 3) - 1);
            }
        }
        for (int g = 0; g < 16; g++) {
            scale[16 * i + g] = d;
            min[16 * i + g] = 0.0f;
        }
    }
}

FDY_POLICY_DEFINE(tq2_0, .block_elems = FDY_TQ2_0_BLOCK_ELEMS,
                  .block_bytes = FDY_TQ2_0_BLOCK_BYTES, .sub_elems = FDY_TQ2_0_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_k",
                  .tol_roundtrip = 0.9f /* measured 0.798 */, .tol_f32 = 1e-5f, .tol_q8 = 1e-2f,
                  .decode = fdy_decode_tq2_0, .dequantize_fast = tq2_0_dequantize,
                  .quantize = tq2_0_quantize,
                  .vec_dot = tq2_0_vec_dot,
                  .to_i8 = tq2_0_to_i8);
#endif
