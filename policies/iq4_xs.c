/* iq4_xs - super-blocks of 256 weights in 8 groups of 32: 4-bit indices into the fixed
 * non-linear grid of iq4_nl, a 6-bit signed scale per group and one f16 super-scale;
 * w = d * (ls - 32) * grid[q].
 *
 *   block (256 elements, 136 bytes):
 *   | d: f16 (2) | scales_h: u16 (2) | scales_l[0..3]: u8 (4) | qs[0..127]: u8 (128) |
 *
 *   ls of group g: low nibble g%2 of scales_l[g/2] | bits 2g..2g+1 of scales_h << 4.
 *   Element 32g + j (j < 16) in the low nibble of qs[16g + j], 32g + 16 + j in its high nibble.
 *   grid = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}
 *
 * Quantizer (llama.cpp quantize_row_iq4_xs_ref = quantize_iq4_xs without importance weights):
 * per group the iq4_nl scale search (weights x^2, 15 trial scales); d = -max_scale / 32 with
 * max_scale the group scale of largest magnitude, ls = clamp(nearest_int(scale / d), -32, 31),
 * and the indices taken at 1 / (d * ls) with the unrounded d.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_IQ4_XS_BLOCK_ELEMS 256
#define FDY_IQ4_XS_BLOCK_BYTES 136
#define FDY_IQ4_XS_SUB_ELEMS 32

FDY_CONSTANT int8_t fdy_iq4_xs_grid[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                           1,    13,   25,  38,  53,  69,  89,  113};

typedef struct fdy_block_iq4_xs {
    uint16_t d;
    uint16_t scales_h;
    uint8_t scales_l[4];
    uint8_t qs[128];
} fdy_block_iq4_xs;
FDY_STATIC_ASSERT(sizeof(fdy_block_iq4_xs) == FDY_IQ4_XS_BLOCK_BYTES, "iq4_xs block size");

/* the 6-bit scale of group g, minus 32 */
FDY_FN int fdy_iq4_xs_scale(FDY_GLOBAL const fdy_block_iq4_xs *b, int g) {
    const int lo = (b->scales_l[g >> 1] >> (4 * (g & 1))) & 0xF;
    const int hi = (b->scales_h >> (2 * g)) & 3;
    return (lo | (hi << 4)) - 32;
}

FDY_FN void fdy_decode_iq4_xs(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_iq4_xs *b = (FDY_GLOBAL const fdy_block_iq4_xs *)blk;
    const float dl = fdy_half_to_float(b->d) * (float)fdy_iq4_xs_scale(b, sub);
    FDY_GLOBAL const uint8_t *q = b->qs + 16 * sub;
    for (int j = 0; j < 16; j++) {
        out[j] = dl * (float)fdy_iq4_xs_grid[q[j] & 0xF];
        out[j + 16] = dl * (float)fdy_iq4_xs_grid[q[j] >> 4];
    }
}

#ifdef FDY_HOST
#include "policy.h"
#include "kquant_ref.h"

/* two passes per block: look the grid values up in element order (a byte table lookup), then
 * plain float loops the compiler vectorizes (same float expression as the decode) */
static void iq4_xs_dequantize(const void *src, float *dst, int64_t n) {
    const fdy_block_iq4_xs *b = (const fdy_block_iq4_xs *)src;
    int8_t v[256];
    for (int64_t i = 0; i < n / 256; i++) {
        for (int g = 0; g < 8; g++) {
            const uint8_t *q = b[i].qs + 16 * g;
            for (int j = 0; j < 16; j++) {
                v[32 * g + j] = fdy_iq4_xs_grid[q[j] & 0xF];
                v[32 * g + j + 16] = fdy_iq4_xs_grid[q[j] >> 4];
            }
        }
        const float d = fdy_half_to_float(b[i].d);
        float *y = dst + i * 256;
        for (int g = 0; g < 8; g++) {
            const float dl = d * (float)fdy_iq4_xs_scale(&b[i], g);
            for (int j = 0; j < 32; j++) {
                y[32 * g + j] = dl * (float)v[32 * g + j];
            }
        }
    }
}

static void iq4_xs_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_iq4_xs *b = (fdy_block_iq4_xs *)dst;
    float scales[8];
    uint8_t L[32];
    for (int64_t i = 0; i < n / 256; i++) {
        const float *x = src + i * 256;
        float max_scale = 0.0f, amax_scale = 0.0f;
        for (int g = 0; g < 8; g++) {
            scales[g] = fdy_iq4_block_scale(x + 32 * g, fdy_iq4_xs_grid, 7);
            const float a = fabsf(scales[g]);
            if (a > amax_scale) {
                amax_scale = a;
                max_scale = scales[g];
            }
        }
        const float d = -max_scale / 32.0f;
        b[i].d = fdy_float_to_half(d);
        b[i].scales_h = 0;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int g = 0; g < 8; g++) {
            const int l = fdy_kq_clamp(fdy_nearest_int(id * scales[g]), -32, 31);
            const float dl = d * (float)l;
            const float idl = dl != 0.0f ? 1.0f / dl : 0.0f;
            const float *xg = x + 32 * g;
            for (int j = 0; j < 32; j++) {
                L[j] = (uint8_t)fdy_iq4_best_index(fdy_iq4_xs_grid, idl * xg[j]);
            }
            for (int j = 0; j < 16; j++) {
                b[i].qs[16 * g + j] = (uint8_t)(L[j] | (L[j + 16] << 4));
            }
            const int ls = l + 32;
            if (g % 2 == 0) {
                b[i].scales_l[g / 2] = (uint8_t)(ls & 0xF);
            } else {
                b[i].scales_l[g / 2] |= (uint8_t)((ls & 0xF) << 4);
            }
            b[i].scales_h |= (uint16_t)((ls >> 4) << (2 * g));
        }
    }
}

/* roundtrip: measured relative L2 error 0.0768 on N(0, 1) rows (random_rows seed 6) */
FDY_POLICY_DEFINE(iq4_xs, .block_elems = FDY_IQ4_XS_BLOCK_ELEMS,
                  .block_bytes = FDY_IQ4_XS_BLOCK_BYTES, .sub_elems = FDY_IQ4_XS_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_k", .tol_roundtrip = 0.1f,
                  .tol_f32 = 1e-5f, .tol_q8 = 1e-2f, .decode = fdy_decode_iq4_xs,
                  .dequantize_fast = iq4_xs_dequantize, .quantize = iq4_xs_quantize);
#endif
