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

FDY_POLICY_DEFINE(q4_0, .block_elems = FDY_Q4_0_BLOCK_ELEMS,
                  .block_bytes = FDY_Q4_0_BLOCK_BYTES, .sub_elems = FDY_Q4_0_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_0",
                  .tol_roundtrip = 0.11f /* measured 0.0852 */, .tol_f32 = 1e-5f, .tol_q8 = 1e-2f,
                  .decode = fdy_decode_q4_0, .dequantize_fast = q4_0_dequantize,
                  .quantize = q4_0_quantize);
#endif
