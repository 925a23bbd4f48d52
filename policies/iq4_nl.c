/* iq4_nl - blocks of 32 weights: one f16 scale and 32 4-bit indices into a fixed non-linear
 * grid of 16 levels; w = d * grid[q].
 *
 *   block (32 elements, 18 bytes):
 *   | d: f16 (2) | qs[0..15]: u8 (16) |
 *
 *   element j < 16 in the low nibble of qs[j], element 16 + j in its high nibble.
 *   grid = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}
 *
 * Quantizer (llama.cpp quantize_iq4_nl without importance weights, i.e. ggml_quantize_chunk):
 * weights x^2; least-squares scale at d = max / 127 and at the 15 trial inverse scales
 * (t - 127) / max, t = -7 .. 7, keeping the best fit; d stored as f16 and the indices taken
 * at 1 / d with the unrounded d.  (quantize_row_iq4_nl_ref in llama.cpp is a cheaper variant
 * without the trial scales; the file quantizer is the one GGUF IQ4_NL weights come from.)
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_IQ4_NL_BLOCK_ELEMS 32
#define FDY_IQ4_NL_BLOCK_BYTES 18
#define FDY_IQ4_NL_SUB_ELEMS 32

FDY_CONSTANT int8_t fdy_iq4_nl_grid[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                           1,    13,   25,  38,  53,  69,  89,  113};

typedef struct fdy_block_iq4_nl {
    uint16_t d;
    uint8_t qs[16];
} fdy_block_iq4_nl;
FDY_STATIC_ASSERT(sizeof(fdy_block_iq4_nl) == FDY_IQ4_NL_BLOCK_BYTES, "iq4_nl block size");

FDY_FN void fdy_decode_iq4_nl(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_iq4_nl *b = (FDY_GLOBAL const fdy_block_iq4_nl *)blk;
    const float d = fdy_half_to_float(b->d);
    (void)sub; /* one sub-block per block: sub is always 0 */
    for (int j = 0; j < 16; j++) {
        out[j] = d * (float)fdy_iq4_nl_grid[b->qs[j] & 0xF];
        out[j + 16] = d * (float)fdy_iq4_nl_grid[b->qs[j] >> 4];
    }
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_dequant.h"
#include "simd_legacy.h"
#include "simd_dotf32.h"
#include "kquant_ref.h"

/* two passes per block: look the grid values up in element order (a byte table lookup), then
 * one plain float loop the compiler vectorizes (same float expression as the decode) */
FDY_DEQ_INLINE void iq4_nl_dequantize_rows(const void *src, float *dst, int64_t n) {
    const fdy_block_iq4_nl *b = (const fdy_block_iq4_nl *)src;
    int8_t v[32];
    for (int64_t i = 0; i < n / 32; i++) {
        for (int j = 0; j < 16; j++) {
            v[j] = fdy_iq4_nl_grid[b[i].qs[j] & 0xF];
            v[j + 16] = fdy_iq4_nl_grid[b[i].qs[j] >> 4];
        }
        const float d = fdy_half_to_float(b[i].d);
        float *y = dst + i * 32;
        for (int j = 0; j < 32; j++) {
            y[j] = d * (float)v[j];
        }
    }
}
#if defined(__x86_64__)
#define IQ4_NL_DEQ_BLOCK(B, Y, S) fdy_deq_nib32_##S((B)->qs, 0, 0, fdy_iq4_nl_grid, 0, fdy_deq_half((B)->d), 0.0f, 0, Y)
FDY_DEQ_BLOCKS(iq4_nl_dequantize, fdy_block_iq4_nl, IQ4_NL_DEQ_BLOCK)
#endif
FDY_DEQ_SELECT(iq4_nl_dequantize, iq4_nl_dequantize_rows)

static void iq4_nl_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_iq4_nl *b = (fdy_block_iq4_nl *)dst;
    uint8_t L[32];
    for (int64_t i = 0; i < n / 32; i++) {
        const float *x = src + i * 32;
        const float d = fdy_iq4_block_scale(x, fdy_iq4_nl_grid, 7);
        b[i].d = fdy_float_to_half(d);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < 32; j++) {
            L[j] = (uint8_t)fdy_iq4_best_index(fdy_iq4_nl_grid, id * x[j]);
        }
        for (int j = 0; j < 16; j++) {
            b[i].qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
        }
    }
}

/* ---- q8-variant integer dot: an iq4_nl weight row x a q8_0 activation row ----
 * sum over blocks of d_w * d_a * sum_j grid[q_j] * a_j.  The byte dots take |grid[q]| (<= 127,
 * a byte shuffle of the table) and a with the sign of grid[q] (negative exactly for q < 8). */

static inline float iq4_nl_block(const fdy_block_iq4_nl *x, const fdy_leg_q8_0 *y) {
    int s = 0; /* table lookups: summed directly (a table-filled array would stall the loads) */
    for (int j = 0; j < 16; j++) {
        s += (int)fdy_iq4_nl_grid[x->qs[j] & 0x0F] * (int)y->qs[j];
        s += (int)fdy_iq4_nl_grid[x->qs[j] >> 4] * (int)y->qs[j + 16];
    }
    return fdy_half_to_float(x->d) * fdy_half_to_float(y->d) * (float)s;
}

#if defined(__x86_64__)
FDY_TARGET_AVX2 FDY_LEG_INLINE fdy_ops256 iq4_nl_ops256(const fdy_block_iq4_nl *x,
                                                        const fdy_leg_q8_0 *y) {
    const __m256i grid =
        _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)fdy_iq4_nl_grid));
    const __m256i g = _mm256_shuffle_epi8(grid, fdy_nibbles256(x->qs));
    const __m256i a = _mm256_loadu_si256((const __m256i *)y->qs);
    return (fdy_ops256){_mm256_abs_epi8(g), _mm256_sign_epi8(a, g), a};
}

#endif

FDY_LEG_KERNELS(iq4_nl, fdy_block_iq4_nl, fdy_leg_q8_0, 0, FDY_LEG_D1, FDY_LEG_D8)

/* roundtrip: measured relative L2 error 0.0754 on N(0, 1) rows (random_rows seed 6) */
/* ---- to_i8 (prefill GEMM): q = the grid value, scale = d, min = 0; bit-exact */
static void iq4_nl_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                        float *restrict min, int64_t n) {
    const fdy_block_iq4_nl *b = (const fdy_block_iq4_nl *)src;
    for (int64_t i = 0; i < n / 32; i++) {
        for (int j = 0; j < 16; j++) {
            q[32 * i + j] = fdy_iq4_nl_grid[b[i].qs[j] & 0xF];
            q[32 * i + j + 16] = fdy_iq4_nl_grid[b[i].qs[j] >> 4];
        }
        scale[2 * i] = scale[2 * i + 1] = fdy_half_to_float(b[i].d);
        min[2 * i] = min[2 * i + 1] = 0.0f;
    }
}

/* ---- vec_dot_f32 (f32-variant GEMV): sum over blocks of d * sum_j grid[q_j] x_j ---- */
FDY_DF_PORTABLE_DECODE(iq4_nl, fdy_decode_iq4_nl, FDY_IQ4_NL_BLOCK_ELEMS, FDY_IQ4_NL_BLOCK_BYTES,
                       FDY_IQ4_NL_SUB_ELEMS)
#if defined(__x86_64__)
#endif
FDY_DF_NIB_KERNELS(iq4_nl, fdy_block_iq4_nl, 0, 0, fdy_iq4_nl_grid, 0, FDY_DF_NO_QH, FDY_DF_NO_M)
FDY_DF_DISPATCH(iq4_nl)
FDY_DF_NIB_ROWS(iq4_nl)

FDY_POLICY_DEFINE(iq4_nl, .block_elems = FDY_IQ4_NL_BLOCK_ELEMS,
                  .block_bytes = FDY_IQ4_NL_BLOCK_BYTES, .sub_elems = FDY_IQ4_NL_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_0", .tol_roundtrip = 0.1f,
                  .tol_f32 = 1e-5f, .tol_q8 = 1e-2f, .decode = fdy_decode_iq4_nl,
                  .dequantize_fast = iq4_nl_dequantize, .quantize = iq4_nl_quantize,
                  .vec_dot = iq4_nl_vec_dot, .vec_dot_rows = iq4_nl_vec_dot_rows,
                  .to_i8 = iq4_nl_to_i8, .vec_dot_f32 = iq4_nl_vec_dot_f32,
                  .vec_dot_f32_rows = iq4_nl_vec_dot_f32_rows);
#endif
