/* q5_0 - blocks of 32 weights: one f16 scale and 32 unsigned 5-bit codes; w = d * (q - 16).
 *
 *   block (32 elements, 22 bytes):
 *   | d: f16 (2) | qh[0..3]: u8 (4) | qs[0..15]: u8 (16) |
 *   qs[j] low nibble = bits 0..3 of element j, high nibble = bits 0..3 of element j + 16;
 *   qh read as a little-endian u32: bit k = bit 4 of element k
 *
 * Quantizer (llama.cpp / gguf-py reference): m = the element of largest magnitude (first one
 * on ties, sign kept), d = m / -16, q = min(31, trunc(x / d + 16.5)), d stored as f16.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_Q5_0_BLOCK_ELEMS 32
#define FDY_Q5_0_BLOCK_BYTES 22
#define FDY_Q5_0_SUB_ELEMS 16

typedef struct fdy_block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[16];
} fdy_block_q5_0;
FDY_STATIC_ASSERT(sizeof(fdy_block_q5_0) == FDY_Q5_0_BLOCK_BYTES, "q5_0 block size");

/* sub 0: elements 0..15 (low nibbles), sub 1: elements 16..31 (high nibbles) */
FDY_FN void fdy_decode_q5_0(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_q5_0 *b = (FDY_GLOBAL const fdy_block_q5_0 *)blk;
    const float d = fdy_half_to_float(b->d);
    const uint32_t qh = (uint32_t)b->qh[0] | ((uint32_t)b->qh[1] << 8) |
                        ((uint32_t)b->qh[2] << 16) | ((uint32_t)b->qh[3] << 24);
    const int shift = sub * 4;
    for (int i = 0; i < 16; i++) {
        const int hi = (int)((qh >> (sub * 16 + i)) & 1u) << 4;
        const int q = (int)((b->qs[i] >> shift) & 0x0F) | hi;
        out[i] = d * (float)(q - 16);
    }
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_dequant.h"
#include "simd_legacy.h"
#include "simd_dotf32.h"

/* bit j of a u32, per lane */
static const uint32_t q5_0_bit[32] = {
    1u << 0,  1u << 1,  1u << 2,  1u << 3,  1u << 4,  1u << 5,  1u << 6,  1u << 7,
    1u << 8,  1u << 9,  1u << 10, 1u << 11, 1u << 12, 1u << 13, 1u << 14, 1u << 15,
    1u << 16, 1u << 17, 1u << 18, 1u << 19, 1u << 20, 1u << 21, 1u << 22, 1u << 23,
    1u << 24, 1u << 25, 1u << 26, 1u << 27, 1u << 28, 1u << 29, 1u << 30, 1u << 31};

FDY_DEQ_INLINE void q5_0_dequantize_rows(const void *src, float *dst, int64_t n) {
    const fdy_block_q5_0 *b = (const fdy_block_q5_0 *)src;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = fdy_half_to_float(b[i].d);
        const uint32_t qh = (uint32_t)b[i].qh[0] | ((uint32_t)b[i].qh[1] << 8) |
                            ((uint32_t)b[i].qh[2] << 16) | ((uint32_t)b[i].qh[3] << 24);
        float *y = dst + i * 32;
        uint8_t q[32]; /* unpack first: the convert loop then vectorizes */
        for (int j = 0; j < 16; j++) {
            q[j] = b[i].qs[j] & 0x0F;
            q[j + 16] = b[i].qs[j] >> 4;
        }
        for (int j = 0; j < 32; j++) {
            q[j] |= (qh & q5_0_bit[j]) ? 16 : 0; /* mask, not shift: vectorizes */
        }
        for (int j = 0; j < 32; j++) {
            y[j] = d * (float)((int)q[j] - 16);
        }
    }
}
#if defined(__x86_64__)
#define Q5_0_DEQ_BLOCK(B, Y, S) fdy_deq_nib32_##S((B)->qs, fdy_deq_le32((B)->qh), 1, NULL, 16, fdy_deq_half((B)->d), 0.0f, 0, Y)
FDY_DEQ_BLOCKS(q5_0_dequantize, fdy_block_q5_0, Q5_0_DEQ_BLOCK)
#endif
FDY_DEQ_SELECT(q5_0_dequantize, q5_0_dequantize_rows)

static void q5_0_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_q5_0 *b = (fdy_block_q5_0 *)dst;
    for (int64_t i = 0; i < n / 32; i++) {
        const float *x = src + i * 32;
        float amax = fabsf(x[0]), max = x[0]; /* argmax |x|: first of equals, as NumPy */
        for (int j = 1; j < 32; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -16.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fdy_float_to_half(d);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            int q0 = (int)truncf(x[j] * id + 16.5f);
            int q1 = (int)truncf(x[j + 16] * id + 16.5f);
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

/* ---- q8-variant integer dot: a q5_0 weight row x a q8_0 activation row ----
 * sum over blocks of d_w * d_a * (sum_j q_j * a_j - 16 * sum_j a_j), q in [0, 31]: the byte
 * dots take q (unsigned) and the codes a (|a| <= 127) as they are. */

static inline float q5_0_block(const fdy_block_q5_0 *x, const fdy_leg_q8_0 *y) {
    int8_t w[32];
    fdy_leg_nibbles5(x->qs, x->qh, 16, w);
    return fdy_half_to_float(x->d) * fdy_half_to_float(y->d) * (float)fdy_leg_dot32(w, y->qs);
}

#if defined(__x86_64__)
FDY_TARGET_AVX2 FDY_LEG_INLINE fdy_ops256 q5_0_ops256(const fdy_block_q5_0 *x,
                                                      const fdy_leg_q8_0 *y) {
    const __m256i a = _mm256_loadu_si256((const __m256i *)y->qs);
    return (fdy_ops256){_mm256_or_si256(fdy_nibbles256(x->qs), fdy_bits256_x10(x->qh)), a, a};
}

#endif

FDY_LEG_KERNELS(q5_0, fdy_block_q5_0, fdy_leg_q8_0, 16, FDY_LEG_D1, FDY_LEG_D8)

/* ---- to_i8 (prefill GEMM): q = 5-bit code - 16, scale = d, min = 0; bit-exact */
static void q5_0_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                        float *restrict min, int64_t n) {
    const fdy_block_q5_0 *b = (const fdy_block_q5_0 *)src;
    for (int64_t i = 0; i < n / 32; i++) {
        int8_t t[32];
        fdy_leg_nibbles5(b[i].qs, b[i].qh, 16, t);
        memcpy(q + 32 * i, t, 32);
        scale[2 * i] = scale[2 * i + 1] = fdy_half_to_float(b[i].d);
        min[2 * i] = min[2 * i + 1] = 0.0f;
    }
}

/* ---- vec_dot_f32 (f32-variant GEMV): sum over blocks of d * sum_j (q_j - 16) x_j ---- */
FDY_DF_PORTABLE_DECODE(q5_0, fdy_decode_q5_0, FDY_Q5_0_BLOCK_ELEMS, FDY_Q5_0_BLOCK_BYTES,
                       FDY_Q5_0_SUB_ELEMS)
#if defined(__x86_64__)
#define Q5_0_DF_QH(b) fdy_deq_le32((b)->qh)
#endif
FDY_DF_NIB_KERNELS(q5_0, fdy_block_q5_0, 1, 0, NULL, 16, Q5_0_DF_QH, FDY_DF_NO_M)
FDY_DF_DISPATCH(q5_0)
FDY_DF_NIB_ROWS(q5_0)

FDY_POLICY_DEFINE(q5_0, .block_elems = FDY_Q5_0_BLOCK_ELEMS,
                  .block_bytes = FDY_Q5_0_BLOCK_BYTES, .sub_elems = FDY_Q5_0_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_0",
                  .tol_roundtrip = 0.056f /* measured 0.0429 */, .tol_f32 = 1e-5f, .tol_q8 = 1e-2f,
                  .decode = fdy_decode_q5_0, .dequantize_fast = q5_0_dequantize,
                  .quantize = q5_0_quantize, .vec_dot = q5_0_vec_dot, .vec_dot_rows = q5_0_vec_dot_rows,
                  .to_i8 = q5_0_to_i8, .vec_dot_f32 = q5_0_vec_dot_f32,
                  .vec_dot_f32_rows = q5_0_vec_dot_f32_rows);
#endif
