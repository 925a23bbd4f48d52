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
#include "simd_dequant.h"
#include "simd_legacy.h"

FDY_DEQ_INLINE void mxfp4_dequantize_rows(const void *src, float *dst, int64_t n) {
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
#if defined(__x86_64__)
/* fdy_kvalues_mxfp4 as int8 (d * (float)code is the product the portable table holds) */
static const int8_t mxfp4_codes[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
#define MXFP4_DEQ_BLOCK(B, Y, S) fdy_deq_nib32_##S((B)->qs, 0, 0, mxfp4_codes, 0, fdy_e8m0_to_float_half((B)->e), 0.0f, 0, Y)
FDY_DEQ_BLOCKS(mxfp4_dequantize, fdy_block_mxfp4, MXFP4_DEQ_BLOCK)
#endif
FDY_DEQ_SELECT(mxfp4_dequantize, mxfp4_dequantize_rows)

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

/* ---- q8-variant integer dot: an mxfp4 weight row x a q8_0 activation row ----
 * sum over blocks of d_w * d_a * sum_j k[q_j] * a_j with k the doubled E2M1 values as int8
 * and d_w = fdy_e8m0_to_float_half(e), a power of two.  The byte dots take |k[q]| (<= 12, a
 * byte shuffle of the table) and a with the sign of k[q] (negative for q > 8). */

static const int8_t mxfp4_k_i8[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

static inline float mxfp4_block(const fdy_block_mxfp4 *x, const fdy_leg_q8_0 *y) {
    int s = 0; /* table lookups: summed directly (a table-filled array would stall the loads) */
    for (int j = 0; j < 16; j++) {
        s += (int)mxfp4_k_i8[x->qs[j] & 0x0F] * (int)y->qs[j];
        s += (int)mxfp4_k_i8[x->qs[j] >> 4] * (int)y->qs[j + 16];
    }
    return fdy_e8m0_to_float_half(x->e) * fdy_half_to_float(y->d) * (float)s;
}

#if defined(__x86_64__)
#define MXFP4_D1(x) fdy_e8m0_to_float_half((x)->e)

/* fdy_e8m0_to_float_half of the exponents of x[0..7] */
FDY_TARGET_AVX2 FDY_LEG_INLINE __m256 mxfp4_d8(const fdy_block_mxfp4 *x) {
    const __m256i e = _mm256_setr_epi32(x[0].e, x[1].e, x[2].e, x[3].e, x[4].e, x[5].e, x[6].e,
                                        x[7].e);
    const __m256i normal = _mm256_slli_epi32(_mm256_sub_epi32(e, _mm256_set1_epi32(1)), 23);
    const __m256i sub = _mm256_sllv_epi32(_mm256_set1_epi32(0x00200000), e);
    const __m256i is_sub = _mm256_cmpgt_epi32(_mm256_set1_epi32(2), e);
    return _mm256_castsi256_ps(_mm256_blendv_epi8(normal, sub, is_sub));
}

FDY_TARGET_AVX2 FDY_LEG_INLINE fdy_ops256 mxfp4_ops256(const fdy_block_mxfp4 *x,
                                                       const fdy_leg_q8_0 *y) {
    const __m256i k = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)mxfp4_k_i8));
    const __m256i g = _mm256_shuffle_epi8(k, fdy_nibbles256(x->qs));
    const __m256i a = _mm256_loadu_si256((const __m256i *)y->qs);
    return (fdy_ops256){_mm256_abs_epi8(g), _mm256_sign_epi8(a, g), a};
}

#endif

FDY_LEG_KERNELS(mxfp4, fdy_block_mxfp4, fdy_leg_q8_0, 0, MXFP4_D1, mxfp4_d8)

/* ---- to_i8 (prefill GEMM): q = the E2M1 value doubled (an integer in [-12, 12]), scale = the
 * halved E8M0 scale, min = 0; bit-exact (decode's d * kvalue, kvalue = (float)q) */
static void mxfp4_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                        float *restrict min, int64_t n) {
    const fdy_block_mxfp4 *b = (const fdy_block_mxfp4 *)src;
    for (int64_t i = 0; i < n / 32; i++) {
        for (int j = 0; j < 16; j++) {
            q[32 * i + j] = (int8_t)fdy_kvalues_mxfp4[b[i].qs[j] & 0xF];
            q[32 * i + j + 16] = (int8_t)fdy_kvalues_mxfp4[b[i].qs[j] >> 4];
        }
        scale[2 * i] = scale[2 * i + 1] = fdy_e8m0_to_float_half(b[i].e);
        min[2 * i] = min[2 * i + 1] = 0.0f;
    }
}

FDY_POLICY_DEFINE(mxfp4, .block_elems = FDY_MXFP4_BLOCK_ELEMS,
                  .block_bytes = FDY_MXFP4_BLOCK_BYTES, .sub_elems = FDY_MXFP4_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_0",
                  .tol_roundtrip = 0.15f /* measured 0.1155 */, .tol_f32 = 1e-5f, .tol_q8 = 1e-2f,
                  .decode = fdy_decode_mxfp4, .dequantize_fast = mxfp4_dequantize,
                  .quantize = mxfp4_quantize, .vec_dot = mxfp4_vec_dot, .vec_dot_rows = mxfp4_vec_dot_rows,
                  .to_i8 = mxfp4_to_i8);
#endif
