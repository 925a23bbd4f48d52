/* mxfp4 - OCP microscaling FP4: blocks of 32 E2M1 weights sharing one E8M0 power-of-two scale.
 *
 *   block (32 elements, 17 bytes):
 *   | e: u8 E8M0 exponent (1) | qs[0..15]: u8 (16) |
 *   qs[j] low nibble = code of element j, high nibble = code of element j + 16
 *
 * A code indexes the doubled E2M1 values kvalues = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3,
 * -4, -6, -8, -12}; the scale is halved to compensate: d = 2^(e - 128) (ggml's
 * e8m0_to_fp32_half: for e < 2 the subnormal 2^-128 * 2^e), w = d * kvalues[q].
 *
 * Quantizer (gguf-py / llama.cpp reference): a = max|x|; e = floor(log2f(a)) - 2 + 127 for
 * a > 0, else 0; then each code is the argmin over the 16 entries of |d * kvalues[k] - x|
 * (first index on ties, so 0 is code 0, never 8).
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_MXFP4_BLOCK_ELEMS 32
#define FDY_MXFP4_BLOCK_BYTES 17
#define FDY_MXFP4_SUB_ELEMS 16

typedef struct fdy_block_mxfp4 {
    uint8_t e;
    uint8_t qs[16];
} fdy_block_mxfp4;
FDY_STATIC_ASSERT(sizeof(fdy_block_mxfp4) == FDY_MXFP4_BLOCK_BYTES, "mxfp4 block size");

FDY_CONSTANT float fdy_kvalues_mxfp4[16] = {0.0f,  1.0f,  2.0f,  3.0f,  4.0f,  6.0f,
                                            8.0f,  12.0f, 0.0f,  -1.0f, -2.0f, -3.0f,
                                            -4.0f, -6.0f, -8.0f, -12.0f};

/* E8M0 exponent -> half the scale it encodes, exactly (ggml_e8m0_to_fp32_half) */
FDY_FN float fdy_e8m0_to_float_half(uint8_t e) {
    const uint32_t bits = e < 2 ? (0x00200000u << e) : ((uint32_t)(e - 1) << 23);
    return fdy_as_float(bits);
}

/* sub 0: the low nibbles (elements 0..15), sub 1: the high nibbles (elements 16..31) */
FDY_FN void fdy_decode_mxfp4(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_mxfp4 *b = (FDY_GLOBAL const fdy_block_mxfp4 *)blk;
    const float d = fdy_e8m0_to_float_half(b->e);
    const int shift = sub * 4;
    for (int i = 0; i < 16; i++) {
        out[i] = d * fdy_kvalues_mxfp4[(b->qs[i] >> shift) & 0x0F];
    }
}

#ifdef FDY_HOST
#include "policy.h"

static void mxfp4_dequantize(const void *src, float *dst, int64_t n) {
    const fdy_block_mxfp4 *b = (const fdy_block_mxfp4 *)src;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = fdy_e8m0_to_float_half(b[i].e);
        float *y = dst + i * 32;
        float lut[16]; /* the same products as decode, formed once per block */
        for (int k = 0; k < 16; k++) {
            lut[k] = d * fdy_kvalues_mxfp4[k];
        }
        for (int j = 0; j < 16; j++) {
            y[j] = lut[b[i].qs[j] & 0x0F];
            y[j + 16] = lut[b[i].qs[j] >> 4];
        }
    }
}

/* the code whose value d * kvalues[k] is nearest to x; first index on ties */
static int mxfp4_nearest(float d, float x) {
    int best = 0;
    float best_err = fabsf(d * fdy_kvalues_mxfp4[0] - x);
    for (int k = 1; k < 16; k++) {
        const float err = fabsf(d * fdy_kvalues_mxfp4[k] - x);
        if (err < best_err) {
            best_err = err;
            best = k;
        }
    }
    return best;
}

static void mxfp4_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_mxfp4 *b = (fdy_block_mxfp4 *)dst;
    for (int64_t i = 0; i < n / 32; i++) {
        const float *x = src + i * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            amax = fmaxf(amax, fabsf(x[j]));
        }
        /* float32 log2 as gguf-py's np.log2; the int detour wraps like NumPy's uint8 cast */
        const uint8_t e =
            amax > 0.0f ? (uint8_t)(int)(floorf(log2f(amax)) - 2.0f + 127.0f) : (uint8_t)0;
        const float d = fdy_e8m0_to_float_half(e);
        b[i].e = e;
        for (int j = 0; j < 16; j++) {
            const int q0 = mxfp4_nearest(d, x[j]);
            const int q1 = mxfp4_nearest(d, x[j + 16]);
            b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

FDY_POLICY_DEFINE(mxfp4, .block_elems = FDY_MXFP4_BLOCK_ELEMS,
                  .block_bytes = FDY_MXFP4_BLOCK_BYTES, .sub_elems = FDY_MXFP4_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_0",
                  .tol_roundtrip = 0.15f /* measured 0.1155 */, .tol_f32 = 1e-5f, .tol_q8 = 1e-2f,
                  .decode = fdy_decode_mxfp4, .dequantize_fast = mxfp4_dequantize,
                  .quantize = mxfp4_quantize);
#endif
