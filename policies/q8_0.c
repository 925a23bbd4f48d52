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

FDY_POLICY_DEFINE(q8_0, .block_elems = FDY_Q8_0_BLOCK_ELEMS,
                  .block_bytes = FDY_Q8_0_BLOCK_BYTES, .sub_elems = FDY_Q8_0_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_0", .tol_roundtrip = 0.01f,
                  .tol_f32 = 1e-5f, .tol_q8 = 1e-2f, .decode = fdy_decode_q8_0,
                  .dequantize_fast = q8_0_dequantize, .quantize = q8_0_quantize);
#endif
