/* f16 - IEEE binary16 weights.
 *
 *   block (1 element, 2 bytes):  | f16 bits (little endian) |
 *
 * Quantizing rounds to nearest even (numpy's astype(float16)); out-of-range values become inf.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_F16_BLOCK_ELEMS 1
#define FDY_F16_BLOCK_BYTES 2
#define FDY_F16_SUB_ELEMS 1

FDY_FN void fdy_decode_f16(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    (void)sub;
    out[0] = fdy_half_to_float(*(FDY_GLOBAL const uint16_t *)blk);
}

#ifdef FDY_HOST
#include "policy.h"

static void f16_dequantize(const void *src, float *dst, int64_t n) {
    const uint16_t *h = (const uint16_t *)src;
    for (int64_t i = 0; i < n; i++) {
        dst[i] = fdy_half_to_float(h[i]);
    }
}

static void f16_quantize(const float *src, void *dst, int64_t n) {
    uint16_t *h = (uint16_t *)dst;
    for (int64_t i = 0; i < n; i++) {
        h[i] = fdy_float_to_half(src[i]);
    }
}

FDY_POLICY_DEFINE(f16, .block_elems = FDY_F16_BLOCK_ELEMS, .block_bytes = FDY_F16_BLOCK_BYTES,
                  .sub_elems = FDY_F16_SUB_ELEMS, .flags = FDY_POLICY_GGUF | FDY_POLICY_FLOAT,
                  .dot_type = NULL, .tol_roundtrip = 1e-3f, .tol_f32 = 1e-5f, .tol_q8 = 1e-5f,
                  .decode = fdy_decode_f16, .dequantize_fast = f16_dequantize,
                  .quantize = f16_quantize);
#endif
