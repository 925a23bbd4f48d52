/* f32 - IEEE binary32 weights, stored as they are.
 *
 *   block (1 element, 4 bytes):  | f32 value (little endian) |
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_F32_BLOCK_ELEMS 1
#define FDY_F32_BLOCK_BYTES 4
#define FDY_F32_SUB_ELEMS 1

FDY_FN void fdy_decode_f32(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    (void)sub;
    out[0] = *(FDY_GLOBAL const float *)blk;
}

#ifdef FDY_HOST
#include "policy.h"

static void f32_dequantize(const void *src, float *dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static void f32_quantize(const float *src, void *dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

FDY_POLICY_DEFINE(f32, .block_elems = FDY_F32_BLOCK_ELEMS, .block_bytes = FDY_F32_BLOCK_BYTES,
                  .sub_elems = FDY_F32_SUB_ELEMS, .flags = FDY_POLICY_GGUF | FDY_POLICY_FLOAT,
                  .dot_type = NULL, .tol_roundtrip = 0.0f, .tol_f32 = 1e-5f, .tol_q8 = 1e-5f,
                  .decode = fdy_decode_f32, .dequantize_fast = f32_dequantize,
                  .quantize = f32_quantize);
#endif
