/* int8 - asymmetric 8-bit weights (not a GGUF format): blocks of 128, an f16 minimum and an
 * f16 maximum, 128 unsigned 8-bit codes; w = lo + q * d with d = (hi - lo) / 255.
 *
 *   block (128 elements, 132 bytes):
 *   | lo: f16 (2) | hi: f16 (2) | q[0..127]: u8 (128) |
 *
 * Quantizer (spec of pyfoundry.reference.quants, float32 throughout): lo = f16(min x + 0),
 * hi = f16(max x + 0) (round to nearest even; the + 0 makes a zero extreme +0); with lo_f, hi_f those f16 values as float32,
 * d = (hi_f - lo_f) / 255, id = d != 0 ? 1 / d : 0, q = clamp(round((x - lo_f) * id), 0, 255)
 * (half away from zero).  Dequantize: w = lo_f + (float)q * d, with d recomputed the same
 * way (no FMA).  Blocks beyond the f16 range (|x| > 65504) are not representable.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_INT8_BLOCK_ELEMS 128
#define FDY_INT8_BLOCK_BYTES 132
#define FDY_INT8_SUB_ELEMS 32

typedef struct fdy_block_int8 {
    uint16_t lo;
    uint16_t hi;
    uint8_t q[128];
} fdy_block_int8;
FDY_STATIC_ASSERT(sizeof(fdy_block_int8) == FDY_INT8_BLOCK_BYTES, "int8 block size");

FDY_FN void fdy_decode_int8(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_int8 *b = (FDY_GLOBAL const fdy_block_int8 *)blk;
    const float lo = fdy_half_to_float(b->lo);
    const float d = (fdy_half_to_float(b->hi) - lo) / 255.0f;
    for (int i = 0; i < 32; i++) {
        out[i] = lo + (float)b->q[sub * 32 + i] * d;
    }
}

#ifdef FDY_HOST
#include "policy.h"

static void int8_dequantize(const void *src, float *dst, int64_t n) {
    const fdy_block_int8 *b = (const fdy_block_int8 *)src;
    for (int64_t i = 0; i < n / 128; i++) {
        const float lo = fdy_half_to_float(b[i].lo);
        const float d = (fdy_half_to_float(b[i].hi) - lo) / 255.0f;
        for (int j = 0; j < 128; j++) {
            dst[i * 128 + j] = lo + (float)b[i].q[j] * d;
        }
    }
}

static void int8_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_int8 *b = (fdy_block_int8 *)dst;
    for (int64_t i = 0; i < n / 128; i++) {
        const float *x = src + i * 128;
        float min = x[0], max = x[0];
        for (int j = 1; j < 128; j++) {
            min = x[j] < min ? x[j] : min;
            max = x[j] > max ? x[j] : max;
        }
        /* + 0.0f turns a -0 extreme into +0, so mixed signed zeros store one way */
        b[i].lo = fdy_float_to_half(min + 0.0f);
        b[i].hi = fdy_float_to_half(max + 0.0f);
        const float lo = fdy_half_to_float(b[i].lo);
        const float d = (fdy_half_to_float(b[i].hi) - lo) / 255.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < 128; j++) {
            const float q = fdy_roundf((x[j] - lo) * id);
            b[i].q[j] = (uint8_t)(q < 0.0f ? 0.0f : (q > 255.0f ? 255.0f : q));
        }
    }
}

/* ---- to_i8 (prefill GEMM): q = code - 128, scale = (hi - lo) / 255, min = lo + 128 * scale;
 * equal to decode's lo + code * scale up to float rounding (not bit-exact: the code shift moves
 * 128 * scale from the product into the min) */
static void int8_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                        float *restrict min, int64_t n) {
    const fdy_block_int8 *b = (const fdy_block_int8 *)src;
    for (int64_t i = 0; i < n / 128; i++) {
        const float lo = fdy_half_to_float(b[i].lo);
        const float d = (fdy_half_to_float(b[i].hi) - lo) / 255.0f;
        for (int j = 0; j < 128; j++) {
            q[128 * i + j] = (int8_t)((int)b[i].q[j] - 128);
        }
        for (int g = 0; g < 8; g++) {
            scale[8 * i + g] = d;
            min[8 * i + g] = lo + 128.0f * d;
        }
    }
}

FDY_POLICY_DEFINE(int8, .block_elems = FDY_INT8_BLOCK_ELEMS,
                  .block_bytes = FDY_INT8_BLOCK_BYTES, .sub_elems = FDY_INT8_SUB_ELEMS,
                  .flags = 0, .dot_type = "q8_0",
                  .tol_roundtrip = 7.6e-3f /* measured 5.86e-3 */, .tol_f32 = 1e-5f,
                  .tol_q8 = 1e-2f, .decode = fdy_decode_int8,
                  .dequantize_fast = int8_dequantize, .quantize = int8_quantize,
                  .to_i8 = int8_to_i8);
#endif
