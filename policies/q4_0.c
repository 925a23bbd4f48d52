/* q4_0 - blocks of 32 weights: one f16 scale and 32 unsigned 4-bit codes; w = d * (q - 8).
 *
 *   block (32 elements, 18 bytes):
 *   | d: f16 (2) | qs[0..15]: u8 (16) |
 *   qs[j] low nibble = element j, high nibble = element j + 16
 *
 * Quantizer (llama.cpp / gguf-py reference): m = the element of largest magnitude (first one
 * on ties, sign kept), d = m / -8, q = min(15, trunc(x / d + 8.5)), d stored as f16.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_Q4_0_BLOCK_ELEMS 32
#define FDY_Q4_0_BLOCK_BYTES 18
#define FDY_Q4_0_SUB_ELEMS 16

typedef struct fdy_block_q4_0 {
    uint16_t d;
    uint8_t qs[16];
} fdy_block_q4_0;
FDY_STATIC_ASSERT(sizeof(fdy_block_q4_0) == FDY_Q4_0_BLOCK_BYTES, "q4_0 block size");

/* sub 0: the low nibbles (elements 0..15), sub 1: the high nibbles (elements 16..31) */
FDY_FN void fdy_decode_q4_0(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_q4_0 *b = (FDY_GLOBAL const fdy_block_q4_0 *)blk;
    const float d = fdy_half_to_float(b->d);
    const int shift = sub * 4;
    for (int i = 0; i < 16; i++) {
        out[i] = d * (float)((int)((b->qs[i] >> shift) & 0x0F) - 8);
    }
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_legacy.h"

static void q4_0_dequantize(const void *src, float *dst, int64_t n) {
    const fdy_block_q4_0 *b = (const fdy_block_q4_0 *)src;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = fdy_half_to_float(b[i].d);
        float *y = dst + i * 32;
        uint8_t q[32]; /* unpack first: the convert loop then vectorizes */
        for (int j = 0; j < 16; j++) {
            q[j] = b[i].qs[j] & 0x0F;
            q[j + 16] = b[i].qs[j] >> 4;
        }
        for (int j = 0; j < 32; j++) {
            y[j] = d * (float)((int)q[j] - 8);
        }
    }
}

static void q4_0_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_q4_0 *b = (fdy_block_q4_0 *)dst;
    for (int64_t i = 0; i < n / 32; i++) {
        const float *x = src + i * 32;
        float amax = fabsf(x[0]), max = x[0]; /* argmax |x|: first of equals, as NumPy */
        for (int j = 1; j < 32; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fdy_float_to_half(d);
        for (int j = 0; j < 16; j++) {
            const int q0 = (int)truncf(x[j] * id + 8.5f);
            const int q1 = (int)truncf(x[j + 16] * id + 8.5f);
            b[i].qs[j] = (uint8_t)((q0 < 15 ? q0 : 15) | ((q1 < 15 ? q1 : 15) << 4));
        }
    }
}

/* ---- q8-variant integer dot: a q4_0 weight row x a q8_0 activation row ----
 * sum over blocks of d_w * d_a * (sum_j q_j * a_j - 8 * sum_j a_j), q in [0, 15]: the byte
 * dots take q (unsigned) and the codes a (|a| <= 127) as they are. */

static inline int q4_0_block_dot(const fdy_block_q4_0 *x, const fdy_leg_q8_0 *y) {
    int s = 0;
    for (int j = 0; j < 16; j++) {
        s += ((int)(x->qs[j] & 0x0F) - 8) * (int)y->qs[j];
        s += ((int)(x->qs[j] >> 4) - 8) * (int)y->qs[j + 16];
    }
    return s;
}

static float q4_0_dot_portable(const void *w, const void *a, int64_t n) {
    const fdy_block_q4_0 *x = (const fdy_block_q4_0 *)w;
    const fdy_leg_q8_0 *y = (const fdy_leg_q8_0 *)a;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = fdy_half_to_float(x[i].d) * fdy_half_to_float(y[i].d);
        sum += d * (float)q4_0_block_dot(x + i, y + i);
    }
    return sum;
}

#if defined(__x86_64__)
/* AVX2: one block per ymm, two blocks per iteration */
#define Q4_0_DOT_AVX2(NAME, TARGET, DP)                                                     \
    TARGET static float NAME(const void *w, const void *a, int64_t n) {                     \
        const fdy_block_q4_0 *x = (const fdy_block_q4_0 *)w;                                \
        const fdy_leg_q8_0 *y = (const fdy_leg_q8_0 *)a;                                    \
        const int64_t nb = n / 32;                                                          \
        const __m256i z = _mm256_setzero_si256(), eight = _mm256_set1_epi8(8);              \
        __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};                         \
        int64_t i = 0;                                                                      \
        for (; i + 2 <= nb; i += 2) {                                                       \
            for (int k = 0; k < 2; k++) {                                                   \
                const __m256i q = fdy_nibbles256(x[i + k].qs);                              \
                const __m256i aq = _mm256_loadu_si256((const __m256i *)y[i + k].qs);        \
                const __m256i s = _mm256_sub_epi32(DP(z, q, aq), DP(z, eight, aq));         \
                const float d = fdy_leg_half(x[i + k].d) * fdy_leg_half(y[i + k].d);        \
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(d), acc[k]); \
            }                                                                               \
        }                                                                                   \
        float sum = fdy_hsum256(_mm256_add_ps(acc[0], acc[1]));                             \
        for (; i < nb; i++) {                                                               \
            sum += fdy_leg_half(x[i].d) * fdy_leg_half(y[i].d) *                            \
                   (float)q4_0_block_dot(x + i, y + i);                                     \
        }                                                                                   \
        return sum;                                                                         \
    }
Q4_0_DOT_AVX2(q4_0_dot_avx2, FDY_TARGET_AVX2, fdy_dp256)
Q4_0_DOT_AVX2(q4_0_dot_avxvnni, FDY_TARGET_AVXVNNI, fdy_dp256_vnni)

/* AVX-512: two blocks per zmm, four blocks per iteration */
#define Q4_0_DOT_AVX512(NAME, TARGET, DP)                                                   \
    TARGET static float NAME(const void *w, const void *a, int64_t n) {                     \
        const fdy_block_q4_0 *x = (const fdy_block_q4_0 *)w;                                \
        const fdy_leg_q8_0 *y = (const fdy_leg_q8_0 *)a;                                    \
        const int64_t nb = n / 32;                                                          \
        const __m512i z = _mm512_setzero_si512(), eight = _mm512_set1_epi8(8);              \
        __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};                         \
        int64_t i = 0;                                                                      \
        for (; i + 4 <= nb; i += 4) {                                                       \
            for (int k = 0; k < 2; k++) {                                                   \
                const fdy_block_q4_0 *xb = x + i + 2 * k;                                   \
                const fdy_leg_q8_0 *yb = y + i + 2 * k;                                     \
                const __m512i q = fdy_nibbles512(xb[0].qs, xb[1].qs);                       \
                const __m512i aq = fdy_load2x32(yb[0].qs, yb[1].qs);                        \
                const __m512i s = _mm512_sub_epi32(DP(z, q, aq), DP(z, eight, aq));         \
                const __m512 d = fdy_scale2(fdy_leg_half(xb[0].d) * fdy_leg_half(yb[0].d),  \
                                            fdy_leg_half(xb[1].d) * fdy_leg_half(yb[1].d)); \
                acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc[k]);                 \
            }                                                                               \
        }                                                                                   \
        float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));                    \
        for (; i < nb; i++) {                                                               \
            sum += fdy_leg_half(x[i].d) * fdy_leg_half(y[i].d) *                            \
                   (float)q4_0_block_dot(x + i, y + i);                                     \
        }                                                                                   \
        return sum;                                                                         \
    }
Q4_0_DOT_AVX512(q4_0_dot_avx512, FDY_TARGET_AVX512, fdy_dp512)
Q4_0_DOT_AVX512(q4_0_dot_avx512vnni, FDY_TARGET_AVX512VNNI, fdy_dp512_vnni)
#endif

static float q4_0_vec_dot(const void *w, const void *a, int64_t n) {
    switch (fdy_leg_tier()) {
#if defined(__x86_64__)
    case FDY_LEG_AVX512VNNI: return q4_0_dot_avx512vnni(w, a, n);
    case FDY_LEG_AVX512: return q4_0_dot_avx512(w, a, n);
    case FDY_LEG_AVXVNNI: return q4_0_dot_avxvnni(w, a, n);
    case FDY_LEG_AVX2: return q4_0_dot_avx2(w, a, n);
#endif
    default: return q4_0_dot_portable(w, a, n);
    }
}

FDY_POLICY_DEFINE(q4_0, .block_elems = FDY_Q4_0_BLOCK_ELEMS,
                  .block_bytes = FDY_Q4_0_BLOCK_BYTES, .sub_elems = FDY_Q4_0_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_0",
                  .tol_roundtrip = 0.11f /* measured 0.0852 */, .tol_f32 = 1e-5f, .tol_q8 = 1e-2f,
                  .decode = fdy_decode_q4_0, .dequantize_fast = q4_0_dequantize,
                  .quantize = q4_0_quantize, .vec_dot = q4_0_vec_dot);
#endif
