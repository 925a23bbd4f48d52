/* q8_k - activation format of the K-quant dot products: blocks of 256 values with one f32
 * scale, 256 signed 8-bit codes and the sums of each 16 codes; w = d * q.
 *
 *   block (256 elements, 292 bytes):
 *   | d: f32 (4) | qs[0..255]: int8 (256) | bsums[0..15]: int16 (32) |
 *
 *   bsums[g] = qs[16g] + ... + qs[16g + 15] (used by the dot kernels to apply the K-quant mins).
 *
 * Quantizer (llama.cpp quantize_row_q8_K_ref): with max the value of largest magnitude (sign
 * kept), iscale = -127 / max, q = min(127, nearest_int(iscale * x)), d = 1 / iscale stored as
 * f32.  An all-zero block gets d = 0, q = 0 and bsums = 0 (llama.cpp leaves bsums unwritten
 * there).
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_Q8_K_BLOCK_ELEMS 256
#define FDY_Q8_K_BLOCK_BYTES 292
#define FDY_Q8_K_SUB_ELEMS 32

typedef struct fdy_block_q8_k {
    float d;
    int8_t qs[256];
    int16_t bsums[16];
} fdy_block_q8_k;
FDY_STATIC_ASSERT(sizeof(fdy_block_q8_k) == FDY_Q8_K_BLOCK_BYTES, "q8_k block size");

FDY_FN void fdy_decode_q8_k(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_q8_k *b = (FDY_GLOBAL const fdy_block_q8_k *)blk;
    const float d = b->d;
    for (int i = 0; i < 32; i++) {
        out[i] = d * (float)b->qs[sub * 32 + i];
    }
}

#ifdef FDY_HOST
#include "policy.h"

static void q8_k_dequantize(const void *src, float *dst, int64_t n) {
    const fdy_block_q8_k *b = (const fdy_block_q8_k *)src;
    for (int64_t i = 0; i < n / 256; i++) {
        const float d = b[i].d;
        for (int j = 0; j < 256; j++) {
            dst[i * 256 + j] = d * (float)b[i].qs[j];
        }
    }
}

static void q8_k_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_q8_k *b = (fdy_block_q8_k *)dst;
    for (int64_t i = 0; i < n / 256; i++) {
        const float *x = src + i * 256;
        float amax = 0.0f, vmax = 0.0f;
        for (int j = 0; j < 256; j++) {
            const float a = fabsf(x[j]);
            if (a > amax) {
                amax = a;
                vmax = x[j];
            }
        }
        if (amax == 0.0f) {
            memset(&b[i], 0, sizeof b[i]);
            continue;
        }
        const float iscale = -127.0f / vmax;
        for (int j = 0; j < 256; j++) {
            const int v = fdy_nearest_int(iscale * x[j]);
            b[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) {
                sum += b[i].qs[16 * g + l];
            }
            b[i].bsums[g] = (int16_t)sum;
        }
        b[i].d = 1.0f / iscale;
    }
}

/* roundtrip: measured relative L2 error 0.00690 on N(0, 1) rows (random_rows seed 6) */
FDY_POLICY_DEFINE(q8_k, .block_elems = FDY_Q8_K_BLOCK_ELEMS,
                  .block_bytes = FDY_Q8_K_BLOCK_BYTES, .sub_elems = FDY_Q8_K_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF | FDY_POLICY_ACT, .dot_type = "q8_k",
                  .tol_roundtrip = 0.009f, .tol_f32 = 1e-5f, .tol_q8 = 1e-2f,
                  .decode = fdy_decode_q8_k, .dequantize_fast = q8_k_dequantize,
                  .quantize = q8_k_quantize);
#endif
