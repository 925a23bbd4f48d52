/* q8_1 - activation format of the q4_1/q5_1 dot products: blocks of 32 values with an f16
 * scale, an f16 copy of d * (sum of the codes) and 32 signed 8-bit codes; w = d * q.
 *
 *   block (32 elements, 36 bytes):
 *   | d: f16 (2) | s: f16 (2) | qs[0..31]: int8 (32) |
 *
 * Quantizer (llama.cpp quantize_row_q8_1_ref): d = max|x| / 127, q = round(x / d) (half away
 * from zero, computed as x * (1/d)), s = f16(d * sum(q)) with d the unrounded f32 scale.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_Q8_1_BLOCK_ELEMS 32
#define FDY_Q8_1_BLOCK_BYTES 36
#define FDY_Q8_1_SUB_ELEMS 32

typedef struct fdy_block_q8_1 {
    uint16_t d;
    uint16_t s;
    int8_t qs[32];
} fdy_block_q8_1;
FDY_STATIC_ASSERT(sizeof(fdy_block_q8_1) == FDY_Q8_1_BLOCK_BYTES, "q8_1 block size");

FDY_FN void fdy_decode_q8_1(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_q8_1 *b = (FDY_GLOBAL const fdy_block_q8_1 *)blk;
    const float d = fdy_half_to_float(b->d);
    for (int i = 0; i < 32; i++) {
        out[i] = d * (float)b->qs[sub * 32 + i];
    }
}

/* Activation quantizer of the q8 variant on a GPU (q8_1 is the dot_type of q4_1, q5_1): the
 * codes and d of q8_1_quantize, which are those of q8_0 (see q8_0.c, fdy_actq_scale_q8_0);
 * s is not kept: the dot kernels sum the codes themselves. */
#define FDY_Q8_1_ACT_GROUP 32
FDY_FN float fdy_actq_scale_q8_1(float amax, float vmax, FDY_THREAD float *id) {
    (void)vmax;
    const float d = amax / 127.0f;
    *id = d != 0.0f ? 1.0f / d : 0.0f;
    return fdy_round_f16(d);
}

FDY_FN int fdy_actq_code_q8_1(float x, float id) {
    return (int)fdy_round_away(x * id);
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_legacy.h"

static void q8_1_dequantize(const void *src, float *dst, int64_t n) {
    const fdy_block_q8_1 *b = (const fdy_block_q8_1 *)src;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = fdy_half_to_float(b[i].d);
        for (int j = 0; j < 32; j++) {
            dst[i * 32 + j] = d * (float)b[i].qs[j];
        }
    }
}

static void q8_1_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_q8_1 *b = (fdy_block_q8_1 *)dst;
    for (int64_t i = 0; i < n / 32; i++) {
        const float *x = src + i * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            const float a = fabsf(x[j]);
            amax = amax > a ? amax : a;
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            const int8_t q = (int8_t)fdy_roundf(x[j] * id);
            b[i].qs[j] = q;
            sum += q;
        }
        b[i].d = fdy_float_to_half(d);
        b[i].s = fdy_float_to_half((float)sum * d);
    }
}

/* ---- activation quantizer (q8_1 is the dot_type of q4_1, q5_1): the bytes of
 * q8_1_quantize (see simd_legacy.h) ---- */

#define Q8_1_QUANTIZE_ACT(NAME, TARGET, BLOCK)                        \
    TARGET static void NAME(const float *src, void *dst, int64_t n) { \
        fdy_block_q8_1 *b = (fdy_block_q8_1 *)dst;                    \
        for (int64_t i = 0; i < n / 32; i++) {                        \
            int sum;                                                  \
            const float d = BLOCK(src + i * 32, b[i].qs, &sum);       \
            b[i].d = fdy_float_to_half(d);                            \
            b[i].s = fdy_float_to_half((float)sum * d);               \
        }                                                             \
    }
Q8_1_QUANTIZE_ACT(q8_1_quantize_act_portable, , fdy_quant_block_portable)
#if defined(__x86_64__)
Q8_1_QUANTIZE_ACT(q8_1_quantize_act_avx2, FDY_TARGET_AVX2, fdy_quant_block_avx2)
Q8_1_QUANTIZE_ACT(q8_1_quantize_act_avx512, FDY_TARGET_AVX512, fdy_quant_block_avx512)
#endif

static void q8_1_quantize_act(const float *src, void *dst, int64_t n) {
    switch (fdy_leg_tier()) {
#if defined(__x86_64__)
    case FDY_LEG_AVX512: q8_1_quantize_act_avx512(src, dst, n); return;
    case FDY_LEG_AVX2:
    case FDY_LEG_AVXVNNI: q8_1_quantize_act_avx2(src, dst, n); return;
#endif
    default: q8_1_quantize_act_portable(src, dst, n); return;
    }
}

/* roundtrip: measured relative L2 error 0.00527 on N(0, 1) rows (random_rows seed 6) */
/* ---- to_i8 (prefill GEMM activations): the codes, scale = d, min = 0 (the `s` field is not
 * used: the GEMM sums the codes exactly, as the vec_dot kernels do); bit-exact */
static void q8_1_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                        float *restrict min, int64_t n) {
    const fdy_block_q8_1 *b = (const fdy_block_q8_1 *)src;
    for (int64_t i = 0; i < n / 32; i++) {
        memcpy(q + 32 * i, b[i].qs, 32);
        scale[2 * i] = scale[2 * i + 1] = fdy_half_to_float(b[i].d);
        min[2 * i] = min[2 * i + 1] = 0.0f;
    }
}

FDY_POLICY_DEFINE(q8_1, .block_elems = FDY_Q8_1_BLOCK_ELEMS,
                  .block_bytes = FDY_Q8_1_BLOCK_BYTES, .sub_elems = FDY_Q8_1_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF | FDY_POLICY_ACT, .dot_type = "q8_1",
                  .tol_roundtrip = 0.007f, .tol_f32 = 1e-5f, .tol_q8 = 1e-2f,
                  .decode = fdy_decode_q8_1, .dequantize_fast = q8_1_dequantize,
                  .quantize = q8_1_quantize, .quantize_act = q8_1_quantize_act,
                  .to_i8 = q8_1_to_i8);
#endif
