/* q8_0 - blocks of 32 weights: one f16 scale and 32 signed 8-bit codes; w = d * q.
 *
 *   block (32 elements, 34 bytes):
 *   | d: f16 (2) | qs[0..31]: int8 (32) |
 *
 * Quantizer (llama.cpp / gguf-py reference): d = max|x| / 127, q = round(x / d) (half away
 * from zero), d stored as f16.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_Q8_0_BLOCK_ELEMS 32
#define FDY_Q8_0_BLOCK_BYTES 34
#define FDY_Q8_0_SUB_ELEMS 16

typedef struct fdy_block_q8_0 {
    uint16_t d;
    int8_t qs[32];
} fdy_block_q8_0;
FDY_STATIC_ASSERT(sizeof(fdy_block_q8_0) == FDY_Q8_0_BLOCK_BYTES, "q8_0 block size");

FDY_FN void fdy_decode_q8_0(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_q8_0 *b = (FDY_GLOBAL const fdy_block_q8_0 *)blk;
    const float d = fdy_half_to_float(b->d);
    for (int i = 0; i < 16; i++) {
        out[i] = d * (float)b->qs[sub * 16 + i];
    }
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_legacy.h"

static void q8_0_dequantize(const void *src, float *dst, int64_t n) {
    const fdy_block_q8_0 *b = (const fdy_block_q8_0 *)src;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = fdy_half_to_float(b[i].d);
        for (int j = 0; j < 32; j++) {
            dst[i * 32 + j] = d * (float)b[i].qs[j];
        }
    }
}

static void q8_0_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_q8_0 *b = (fdy_block_q8_0 *)dst;
    for (int64_t i = 0; i < n / 32; i++) {
        const float *x = src + i * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            amax = fmaxf(amax, fabsf(x[j]));
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fdy_float_to_half(d);
        for (int j = 0; j < 32; j++) {
            b[i].qs[j] = (int8_t)fdy_roundf(x[j] * id);
        }
    }
}

/* ---- activation quantizer (q8_0 is the dot_type of q4_0, q5_0, q8_0, iq4_nl, mxfp4): the
 * bytes of q8_0_quantize (see simd_legacy.h) ---- */

#define Q8_0_QUANTIZE_ACT(NAME, TARGET, BLOCK)                                            \
    TARGET static void NAME(const float *src, void *dst, int64_t n) {                     \
        fdy_block_q8_0 *b = (fdy_block_q8_0 *)dst;                                        \
        for (int64_t i = 0; i < n / 32; i++) {                                            \
            int sum;                                                                      \
            b[i].d = fdy_float_to_half(BLOCK(src + i * 32, b[i].qs, &sum));               \
        }                                                                                 \
    }
Q8_0_QUANTIZE_ACT(q8_0_quantize_act_portable, , fdy_quant_block_portable)
#if defined(__x86_64__)
Q8_0_QUANTIZE_ACT(q8_0_quantize_act_avx2, FDY_TARGET_AVX2, fdy_quant_block_avx2)
Q8_0_QUANTIZE_ACT(q8_0_quantize_act_avx512, FDY_TARGET_AVX512, fdy_quant_block_avx512)
#endif

static void q8_0_quantize_act(const float *src, void *dst, int64_t n) {
    switch (fdy_leg_tier()) {
#if defined(__x86_64__)
    case FDY_LEG_AVX512:
    case FDY_LEG_AVX512VNNI: q8_0_quantize_act_avx512(src, dst, n); return;
    case FDY_LEG_AVX2:
    case FDY_LEG_AVXVNNI: q8_0_quantize_act_avx2(src, dst, n); return;
#endif
    default: q8_0_quantize_act_portable(src, dst, n); return;
    }
}

/* ---- q8-variant integer dot: a q8_0 weight row x a q8_0 activation row ----
 * sum over blocks of d_w * d_a * sum_j w_j * a_j.  Weight codes may be any int8 (-128
 * included); activation codes are in [-127, 127].  The byte dots take |w| (<= 128) times
 * a * sign(w) (<= 127 in magnitude): the maddubs pair sums stay below 32767. */

static inline int q8_0_block_dot(const fdy_block_q8_0 *x, const fdy_block_q8_0 *y) {
    int s = 0;
    for (int j = 0; j < 32; j++) {
        s += (int)x->qs[j] * (int)y->qs[j];
    }
    return s;
}

static float q8_0_dot_portable(const void *w, const void *a, int64_t n) {
    const fdy_block_q8_0 *x = (const fdy_block_q8_0 *)w, *y = (const fdy_block_q8_0 *)a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = fdy_half_to_float(x[i].d) * fdy_half_to_float(y[i].d);
        sum += d * (float)q8_0_block_dot(x + i, y + i);
    }
    return sum;
}

#if defined(__x86_64__)
/* AVX2: one block per ymm, two blocks per iteration */
#define Q8_0_DOT_AVX2(NAME, TARGET, DP)                                                      \
    TARGET static float NAME(const void *w, const void *a, int64_t n) {                      \
        const fdy_block_q8_0 *x = (const fdy_block_q8_0 *)w, *y = (const fdy_block_q8_0 *)a; \
        const int64_t nb = n / 32;                                                           \
        const __m256i z = _mm256_setzero_si256();                                            \
        __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};                          \
        int64_t i = 0;                                                                       \
        for (; i + 2 <= nb; i += 2) {                                                        \
            for (int k = 0; k < 2; k++) {                                                    \
                const __m256i wq = _mm256_loadu_si256((const __m256i *)x[i + k].qs);         \
                const __m256i aq = _mm256_loadu_si256((const __m256i *)y[i + k].qs);         \
                const __m256i s = DP(z, _mm256_abs_epi8(wq), _mm256_sign_epi8(aq, wq));      \
                const float d = fdy_leg_half(x[i + k].d) * fdy_leg_half(y[i + k].d);         \
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(d), acc[k]);  \
            }                                                                                \
        }                                                                                    \
        float sum = fdy_hsum256(_mm256_add_ps(acc[0], acc[1]));                              \
        for (; i < nb; i++) {                                                                \
            sum += fdy_leg_half(x[i].d) * fdy_leg_half(y[i].d) *                             \
                   (float)q8_0_block_dot(x + i, y + i);                                      \
        }                                                                                    \
        return sum;                                                                          \
    }
Q8_0_DOT_AVX2(q8_0_dot_avx2, FDY_TARGET_AVX2, fdy_dp256)
Q8_0_DOT_AVX2(q8_0_dot_avxvnni, FDY_TARGET_AVXVNNI, fdy_dp256_vnni)

/* AVX-512: two blocks per zmm, four blocks per iteration */
#define Q8_0_DOT_AVX512(NAME, TARGET, DP)                                                    \
    TARGET static float NAME(const void *w, const void *a, int64_t n) {                      \
        const fdy_block_q8_0 *x = (const fdy_block_q8_0 *)w, *y = (const fdy_block_q8_0 *)a; \
        const int64_t nb = n / 32;                                                           \
        const __m512i z = _mm512_setzero_si512();                                            \
        __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};                          \
        int64_t i = 0;                                                                       \
        for (; i + 4 <= nb; i += 4) {                                                        \
            for (int k = 0; k < 2; k++) {                                                    \
                const fdy_block_q8_0 *xb = x + i + 2 * k, *yb = y + i + 2 * k;               \
                const __m512i wq = fdy_load2x32(xb[0].qs, xb[1].qs);                         \
                const __m512i aq = fdy_load2x32(yb[0].qs, yb[1].qs);                         \
                const __m512i s = DP(z, _mm512_abs_epi8(wq),                                 \
                                     fdy_negate_where(aq, _mm512_movepi8_mask(wq)));         \
                const __m512 d = fdy_scale2(fdy_leg_half(xb[0].d) * fdy_leg_half(yb[0].d),   \
                                            fdy_leg_half(xb[1].d) * fdy_leg_half(yb[1].d));  \
                acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc[k]);                  \
            }                                                                                \
        }                                                                                    \
        float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));                     \
        for (; i < nb; i++) {                                                                \
            sum += fdy_leg_half(x[i].d) * fdy_leg_half(y[i].d) *                             \
                   (float)q8_0_block_dot(x + i, y + i);                                      \
        }                                                                                    \
        return sum;                                                                          \
    }
Q8_0_DOT_AVX512(q8_0_dot_avx512, FDY_TARGET_AVX512, fdy_dp512)
Q8_0_DOT_AVX512(q8_0_dot_avx512vnni, FDY_TARGET_AVX512VNNI, fdy_dp512_vnni)
#endif

static float q8_0_vec_dot(const void *w, const void *a, int64_t n) {
    switch (fdy_leg_tier()) {
#if defined(__x86_64__)
    case FDY_LEG_AVX512VNNI: return q8_0_dot_avx512vnni(w, a, n);
    case FDY_LEG_AVX512: return q8_0_dot_avx512(w, a, n);
    case FDY_LEG_AVXVNNI: return q8_0_dot_avxvnni(w, a, n);
    case FDY_LEG_AVX2: return q8_0_dot_avx2(w, a, n);
#endif
    default: return q8_0_dot_portable(w, a, n);
    }
}

FDY_POLICY_DEFINE(q8_0, .block_elems = FDY_Q8_0_BLOCK_ELEMS,
                  .block_bytes = FDY_Q8_0_BLOCK_BYTES, .sub_elems = FDY_Q8_0_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_0", .tol_roundtrip = 0.01f,
                  .tol_f32 = 1e-5f, .tol_q8 = 1e-2f, .decode = fdy_decode_q8_0,
                  .dequantize_fast = q8_0_dequantize, .quantize = q8_0_quantize,
                  .vec_dot = q8_0_vec_dot, .quantize_act = q8_0_quantize_act);
#endif
