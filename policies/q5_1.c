/* q5_1 - blocks of 32 weights: f16 scale and minimum, 32 unsigned 5-bit codes; w = d * q + m.
 *
 *   block (32 elements, 24 bytes):
 *   | d: f16 (2) | m: f16 (2) | qh[0..3]: u8 (4) | qs[0..15]: u8 (16) |
 *   qs[j] low nibble = bits 0..3 of element j, high nibble = bits 0..3 of element j + 16;
 *   qh read as a little-endian u32: bit k = bit 4 of element k
 *
 * Quantizer (llama.cpp / gguf-py reference): d = (max - min) / 31,
 * q = min(31, trunc((x - min) / d + 0.5)), d and m = min stored as f16.
 * A block of mixed +0 / -0 may store m = +0 where gguf-py stores -0 or the reverse (NumPy's
 * min of signed zeros depends on its SIMD width; here the first of equal minima wins, as
 * llama.cpp); the decoded weights are the same.
 * Dequantize rounds the product first: w = (d * q) + m, as gguf-py (no FMA).
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_Q5_1_BLOCK_ELEMS 32
#define FDY_Q5_1_BLOCK_BYTES 24
#define FDY_Q5_1_SUB_ELEMS 16

typedef struct fdy_block_q5_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[16];
} fdy_block_q5_1;
FDY_STATIC_ASSERT(sizeof(fdy_block_q5_1) == FDY_Q5_1_BLOCK_BYTES, "q5_1 block size");

/* sub 0: elements 0..15 (low nibbles), sub 1: elements 16..31 (high nibbles) */
FDY_FN void fdy_decode_q5_1(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_q5_1 *b = (FDY_GLOBAL const fdy_block_q5_1 *)blk;
    const float d = fdy_half_to_float(b->d);
    const float m = fdy_half_to_float(b->m);
    const uint32_t qh = (uint32_t)b->qh[0] | ((uint32_t)b->qh[1] << 8) |
                        ((uint32_t)b->qh[2] << 16) | ((uint32_t)b->qh[3] << 24);
    const int shift = sub * 4;
    for (int i = 0; i < 16; i++) {
        const int hi = (int)((qh >> (sub * 16 + i)) & 1u) << 4;
        const int q = (int)((b->qs[i] >> shift) & 0x0F) | hi;
        out[i] = d * (float)q + m;
    }
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_dequant.h"
#include "simd_legacy.h"
#include "simd_dotf32.h"

/* bit j of a u32, per lane */
static const uint32_t q5_1_bit[32] = {
    1u << 0,  1u << 1,  1u << 2,  1u << 3,  1u << 4,  1u << 5,  1u << 6,  1u << 7,
    1u << 8,  1u << 9,  1u << 10, 1u << 11, 1u << 12, 1u << 13, 1u << 14, 1u << 15,
    1u << 16, 1u << 17, 1u << 18, 1u << 19, 1u << 20, 1u << 21, 1u << 22, 1u << 23,
    1u << 24, 1u << 25, 1u << 26, 1u << 27, 1u << 28, 1u << 29, 1u << 30, 1u << 31};

FDY_DEQ_INLINE void q5_1_dequantize_rows(const void *src, float *dst, int64_t n) {
    const fdy_block_q5_1 *b = (const fdy_block_q5_1 *)src;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = fdy_half_to_float(b[i].d);
        const float m = fdy_half_to_float(b[i].m);
        const uint32_t qh = (uint32_t)b[i].qh[0] | ((uint32_t)b[i].qh[1] << 8) |
                            ((uint32_t)b[i].qh[2] << 16) | ((uint32_t)b[i].qh[3] << 24);
        float *y = dst + i * 32;
        uint8_t q[32]; /* unpack first: the convert loop then vectorizes */
        for (int j = 0; j < 16; j++) {
            q[j] = b[i].qs[j] & 0x0F;
            q[j + 16] = b[i].qs[j] >> 4;
        }
        for (int j = 0; j < 32; j++) {
            q[j] |= (qh & q5_1_bit[j]) ? 16 : 0; /* mask, not shift: vectorizes */
        }
        for (int j = 0; j < 32; j++) {
            y[j] = d * (float)q[j] + m;
        }
    }
}
#if defined(__x86_64__)
#define Q5_1_DEQ_BLOCK(B, Y, S) fdy_deq_nib32_##S((B)->qs, fdy_deq_le32((B)->qh), 1, NULL, 0, fdy_deq_half((B)->d), fdy_deq_half((B)->m), 1, Y)
FDY_DEQ_BLOCKS(q5_1_dequantize, fdy_block_q5_1, Q5_1_DEQ_BLOCK)
#endif
FDY_DEQ_SELECT(q5_1_dequantize, q5_1_dequantize_rows)

static void q5_1_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_q5_1 *b = (fdy_block_q5_1 *)dst;
    for (int64_t i = 0; i < n / 32; i++) {
        const float *x = src + i * 32;
        float min = x[0], max = x[0];
        for (int j = 1; j < 32; j++) {
            min = x[j] < min ? x[j] : min;
            max = x[j] > max ? x[j] : max;
        }
        const float d = (max - min) / 31.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fdy_float_to_half(d);
        b[i].m = fdy_float_to_half(min);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            int q0 = (int)truncf((x[j] - min) * id + 0.5f);
            int q1 = (int)truncf((x[j + 16] - min) * id + 0.5f);
            q0 = q0 < 31 ? q0 : 31;
            q1 = q1 < 31 ? q1 : 31;
            b[i].qs[j] = (uint8_t)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= ((uint32_t)(q0 >> 4) & 1u) << j;
            qh |= ((uint32_t)(q1 >> 4) & 1u) << (j + 16);
        }
        for (int k = 0; k < 4; k++) {
            b[i].qh[k] = (uint8_t)(qh >> (8 * k));
        }
    }
}

/* ---- q8-variant integer dot: a q5_1 weight row x a q8_1 activation row ----
 * sum over blocks of d_w * d_a * sum_j q_j * a_j + m_w * d_a * sum_j a_j, q in [0, 31].  The min
 * term uses the exact code sum, not the q8_1 `s` field (f16 of d_a * sum with the unrounded
 * d_a): `s` is off by up to ~1e-3 relative per block, far above the 1e-5 the tests hold the
 * kernels to against the dequantized activations. */

static inline float q5_1_block(const fdy_block_q5_1 *x, const fdy_leg_q8_1 *y) {
    int8_t w[32];
    fdy_leg_nibbles5(x->qs, x->qh, 0, w);
    const float da = fdy_half_to_float(y->d);
    return fdy_half_to_float(x->d) * da * (float)fdy_leg_dot32(w, y->qs) +
           fdy_half_to_float(x->m) * da * (float)fdy_leg_sum32(y->qs);
}

#if defined(__x86_64__)
FDY_TARGET_AVX2 FDY_LEG_INLINE fdy_ops256 q5_1_ops256(const fdy_block_q5_1 *x,
                                                      const fdy_leg_q8_1 *y) {
    const __m256i a = _mm256_loadu_si256((const __m256i *)y->qs);
    return (fdy_ops256){_mm256_or_si256(fdy_nibbles256(x->qs), fdy_bits256_x10(x->qh)), a, a};
}

#endif

FDY_LEG_KERNELS_MIN(q5_1, fdy_block_q5_1, fdy_leg_q8_1, FDY_LEG_D1, FDY_LEG_D8, FDY_LEG_M1,
                    FDY_LEG_M8)

/* ---- to_i8 (prefill GEMM): q = 5-bit code, scale = d, min = m; bit-exact */
static void q5_1_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                        float *restrict min, int64_t n) {
    const fdy_block_q5_1 *b = (const fdy_block_q5_1 *)src;
    for (int64_t i = 0; i < n / 32; i++) {
        int8_t t[32];
        fdy_leg_nibbles5(b[i].qs, b[i].qh, 0, t);
        memcpy(q + 32 * i, t, 32);
        scale[2 * i] = scale[2 * i + 1] = fdy_half_to_float(b[i].d);
        min[2 * i] = min[2 * i + 1] = fdy_half_to_float(b[i].m);
    }
}

/* ---- vec_dot_f32 (f32-variant GEMV): sum over blocks of sum_j (d * q_j + m) x_j ---- */
FDY_DF_PORTABLE_DECODE(q5_1, fdy_decode_q5_1, FDY_Q5_1_BLOCK_ELEMS, FDY_Q5_1_BLOCK_BYTES,
                       FDY_Q5_1_SUB_ELEMS)
#if defined(__x86_64__)
#define Q5_1_DF_QH(b) fdy_deq_le32((b)->qh)
FDY_STATIC_ASSERT(offsetof(fdy_block_q5_1, m) == 2, "q5_1: m at offset 2 (fdy_df_h2f)");
#define Q5_1_DF_M(b) fdy_df_half((b)->m)
#endif
FDY_DF_NIB_KERNELS(q5_1, fdy_block_q5_1, 1, 1, NULL, 0, Q5_1_DF_QH, Q5_1_DF_M)
FDY_DF_DISPATCH(q5_1)
FDY_DF_NIB_ROWS(q5_1)

FDY_POLICY_DEFINE(q5_1, .block_elems = FDY_Q5_1_BLOCK_ELEMS,
                  .block_bytes = FDY_Q5_1_BLOCK_BYTES, .sub_elems = FDY_Q5_1_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_1",
                  .tol_roundtrip = 0.05f /* measured 0.0375 */, .tol_f32 = 1e-5f, .tol_q8 = 1e-2f,
                  .decode = fdy_decode_q5_1, .dequantize_fast = q5_1_dequantize,
                  .quantize = q5_1_quantize, .vec_dot = q5_1_vec_dot, .vec_dot_rows = q5_1_vec_dot_rows,
                  .to_i8 = q5_1_to_i8, .vec_dot_f32 = q5_1_vec_dot_f32,
                  .vec_dot_f32_rows = q5_1_vec_dot_f32_rows);
#endif
