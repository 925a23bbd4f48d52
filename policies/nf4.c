/* nf4 - NormalFloat4 of QLoRA / bitsandbytes (not a GGUF format): blocks of 64 weights, an f16
 * absmax and 64 4-bit indices into the 16-entry NF4 table; w = nf4[q] * absmax.
 *
 *   block (64 elements, 34 bytes):
 *   | absmax: f16 (2) | qs[0..31]: u8 (32) |
 *   qs[j] low nibble = code of element j, high nibble = code of element j + 32
 *
 * Quantizer (spec of pyfoundry.reference.quants, float32 throughout): absmax = max|x| stored as
 * f16 (round to nearest even); with a the f16 value as float32, v = x / a (0 when a == 0) and
 * the code is the index of the table value nearest to v, |v - nf4[k]| smallest, lower index
 * on ties.  Dequantize: w = nf4[q] * a.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_NF4_BLOCK_ELEMS 64
#define FDY_NF4_BLOCK_BYTES 34
#define FDY_NF4_SUB_ELEMS 32

typedef struct fdy_block_nf4 {
    uint16_t absmax;
    uint8_t qs[32];
} fdy_block_nf4;
FDY_STATIC_ASSERT(sizeof(fdy_block_nf4) == FDY_NF4_BLOCK_BYTES, "nf4 block size");

/* the NF4 table of QLoRA (bitsandbytes), as float32 */
FDY_CONSTANT float fdy_nf4_values[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982694625854f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

/* sub 0: the low nibbles (elements 0..31), sub 1: the high nibbles (elements 32..63) */
FDY_FN void fdy_decode_nf4(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_nf4 *b = (FDY_GLOBAL const fdy_block_nf4 *)blk;
    const float a = fdy_half_to_float(b->absmax);
    const int shift = sub * 4;
    for (int i = 0; i < 32; i++) {
        out[i] = fdy_nf4_values[(b->qs[i] >> shift) & 0x0F] * a;
    }
}

#ifdef FDY_HOST
#include "policy.h"

static void nf4_dequantize(const void *src, float *dst, int64_t n) {
    const fdy_block_nf4 *b = (const fdy_block_nf4 *)src;
    for (int64_t i = 0; i < n / 64; i++) {
        const float a = fdy_half_to_float(b[i].absmax);
        float *y = dst + i * 64;
        float lut[16]; /* the same products as decode, formed once per block */
        for (int k = 0; k < 16; k++) {
            lut[k] = fdy_nf4_values[k] * a;
        }
        for (int j = 0; j < 32; j++) {
            y[j] = lut[b[i].qs[j] & 0x0F];
            y[j + 32] = lut[b[i].qs[j] >> 4];
        }
    }
}

/* index of the table value nearest to v; lower index on ties */
static int nf4_nearest(float v) {
    int best = 0;
    float best_err = fabsf(v - fdy_nf4_values[0]);
    for (int k = 1; k < 16; k++) {
        const float err = fabsf(v - fdy_nf4_values[k]);
        if (err < best_err) {
            best_err = err;
            best = k;
        }
    }
    return best;
}

static void nf4_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_nf4 *b = (fdy_block_nf4 *)dst;
    for (int64_t i = 0; i < n / 64; i++) {
        const float *x = src + i * 64;
        float amax = 0.0f;
        for (int j = 0; j < 64; j++) {
            amax = fmaxf(amax, fabsf(x[j]));
        }
        b[i].absmax = fdy_float_to_half(amax);
        const float a = fdy_half_to_float(b[i].absmax);
        for (int j = 0; j < 32; j++) {
            const int q0 = nf4_nearest(a != 0.0f ? x[j] / a : 0.0f);
            const int q1 = nf4_nearest(a != 0.0f ? x[j + 32] / a : 0.0f);
            b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

FDY_POLICY_DEFINE(nf4, .block_elems = FDY_NF4_BLOCK_ELEMS,
                  .block_bytes = FDY_NF4_BLOCK_BYTES, .sub_elems = FDY_NF4_SUB_ELEMS,
                  .flags = 0, .dot_type = "q8_0",
                  .tol_roundtrip = 0.12f /* measured 0.0920 */, .tol_f32 = 1e-5f, .tol_q8 = 1e-2f,
                  .decode = fdy_decode_nf4, .dequantize_fast = nf4_dequantize,
                  .quantize = nf4_quantize);
#endif
