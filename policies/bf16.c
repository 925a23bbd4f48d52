/* bf16 - bfloat16 weights: the upper 16 bits of an IEEE binary32.
 *
 *   block (1 element, 2 bytes):  | bf16 bits (little endian) |
 *
 * Quantizing rounds to nearest even and keeps NaNs quiet (gguf-py / ggml_compute_fp32_to_bf16);
 * decoding shifts the bits back up, exactly.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_BF16_BLOCK_ELEMS 1
#define FDY_BF16_BLOCK_BYTES 2
#define FDY_BF16_SUB_ELEMS 1

FDY_FN void fdy_decode_bf16(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    (void)sub;
    out[0] = fdy_bf16_to_float(*(FDY_GLOBAL const uint16_t *)blk);
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_dequant.h"

FDY_DEQ_INLINE void bf16_dequantize_rows(const void *src, float *dst, int64_t n) {
    const uint16_t *h = (const uint16_t *)src;
    for (int64_t i = 0; i < n; i++) {
        dst[i] = fdy_bf16_to_float(h[i]);
    }
}
FDY_DEQ_DISPATCH(bf16_dequantize, bf16_dequantize_rows)

static void bf16_quantize(const float *src, void *dst, int64_t n) {
    uint16_t *h = (uint16_t *)dst;
    for (int64_t i = 0; i < n; i++) {
        h[i] = fdy_float_to_bf16(src[i]);
    }
}

FDY_POLICY_DEFINE(bf16, .block_elems = FDY_BF16_BLOCK_ELEMS,
                  .block_bytes = FDY_BF16_BLOCK_BYTES, .sub_elems = FDY_BF16_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF | FDY_POLICY_FLOAT, .dot_type = NULL,
                  .tol_roundtrip = 2.2e-3f /* measured 1.64e-3 */, .tol_f32 = 1e-5f,
                  .tol_q8 = 1e-5f, .decode = fdy_decode_bf16,
                  .dequantize_fast = bf16_dequantize, .quantize = bf16_quantize);
#endif
