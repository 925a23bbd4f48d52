/* q4_0 - blocks of 32 weights: one f16 scale and 32 unsigned 4-bit codes; w = d * (q - 8).
 *
 *   block (32 elements, 18 bytes):
 *   | d: f16 (2) | qs[0..15]: u8 (16) |
 *   qs[j] low nibble = element j, high nibble = element j + 16
 *
 * Quantizer (llama.cpp / gguf-py reference): m = the element of largest magnitude (first one
 * on ties, sign kept), d = m / -8, q = min(15, trunc(x / d + 8.5)), d stored as f16.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_Q4_0_BLOCK_ELEMS 32
#define FDY_Q4_0_BLOCK_BYTES 18
#define FDY_Q4_0_SUB_ELEMS 16

typedef struct fdy_block_q4_0 {
    uint16_t d;
    uint8_t qs[16];
} fdy_block_q4_0;
FDY_STATIC_ASSERT(sizeof(fdy_block_q4_0) == FDY_Q4_0_BLOCK_BYTES, "q4_0 block size");

/* sub 0: the low nibbles (elements 0..15), sub 1: the high nibbles (elements 16..31) */
FDY_FN void fdy_decode_q4_0(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_q4_0 *b = (FDY_GLOBAL const fdy_block_q4_0 *)blk;
    const float d = fdy_half_to_float(b->d);
    const int shift = sub * 4;
    for (int i = 0; i < 16; i++) {
        out[i] = d * (float)((int)((b->qs[i] >> shift) & 0x0F) - 8);
    }
}

/* GEMV dot hook, in two steps so a kernel can issue every load of a step before any
 * arithmetic: 4 parts per block, part p = the codes in qs[4p .. 4p+3], i.e. elements
 * 4p .. 4p+3 (low nibbles) and 16 + 4p .. 16 + 4p+3 (high nibbles).  load: 16-bit loads
 * (blocks are 2-byte aligned) into r[0] = codes, r[1] = d; calc: d * sum (q - 8) x */
#define FDY_Q4_0_DOTF_PARTS 4
#define FDY_Q4_0_DOTF_WORDS 2
#define FDY_Q4_0_DOTF_U 1 /* unroll depth of fdy_gemv_dotf: the sweep's best */
FDY_FN void fdy_dotf_load_q4_0(FDY_GLOBAL const uint8_t *blk, int part, FDY_THREAD uint32_t *r) {
    FDY_GLOBAL const uint16_t *h = (FDY_GLOBAL const uint16_t *)blk;
    r[0] = (uint32_t)h[1 + 2 * part] | ((uint32_t)h[2 + 2 * part] << 16);
    r[1] = h[0];
}

FDY_FN float fdy_dotf_calc_q4_0(FDY_THREAD const uint32_t *r, int part, FDY_GLOBAL const float *x) {
    const fdy_float4 xl = fdy_load4(x + 4 * part), xh = fdy_load4(x + 16 + 4 * part);
    const uint32_t lo = r[0] & 0x0F0F0F0Fu, hi = (r[0] >> 4) & 0x0F0F0F0Fu;
    float s = 0.0f;
    for (int i = 0; i < 4; i++) {
        s = fdy_fma(fdy_code_f((lo >> (8 * i)) & 0xFFu, 8), xl.v[i], s);
        s = fdy_fma(fdy_code_f((hi >> (8 * i)) & 0xFFu, 8), xh.v[i], s);
    }
    return fdy_half_to_float((uint16_t)r[1]) * s;
}

/* the whole hook in one call (host checks) */
FDY_FN float fdy_dotf_q4_0(FDY_GLOBAL const uint8_t *blk, int part, FDY_GLOBAL const float *x) {
    uint32_t r[FDY_Q4_0_DOTF_WORDS];
    fdy_dotf_load_q4_0(blk, part, r);
    return fdy_dotf_calc_q4_0(r, part, x);
}

/* Integer GEMV hook (the q8 variant; activations in q8_0: codes xq of the block, scale xd[0]):
 * the parts and raw words of the dot hook above; calc: d * xd * sum (q - 8) c with dp4a. */
#define FDY_Q4_0_DOTI 1
FDY_FN float fdy_doti_calc_q4_0(FDY_THREAD const uint32_t *r, int part, FDY_GLOBAL const uint8_t *xq,
                                FDY_GLOBAL const float *xd) {
    const uint32_t lo = r[0] & 0x0F0F0F0Fu, hi = (r[0] >> 4) & 0x0F0F0F0Fu;
    const uint32_t xl = fdy_load_u1(xq + 4 * part), xh = fdy_load_u1(xq + 16 + 4 * part);
    const int s = fdy_dp4a(lo, xl, fdy_dp4a(hi, xh, 0)) -
                  fdy_dp4a(0x08080808u, xl, fdy_dp4a(0x08080808u, xh, 0));
    return (fdy_half_to_float((uint16_t)r[1]) * xd[0]) * (float)s;
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_dequant.h"
#include "simd_legacy.h"
#include "simd_dotf32.h"
#include "simd_amx.h"

FDY_DEQ_INLINE void q4_0_dequantize_rows(const void *src, float *dst, int64_t n) {
    const fdy_block_q4_0 *b = (const fdy_block_q4_0 *)src;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = fdy_half_to_float(b[i].d);
        float *y = dst + i * 32;
        uint8_t q[32]; /* unpack first: the convert loop then vectorizes */
        for (int j = 0; j < 16; j++) {
            q[j] = b[i].qs[j] & 0x0F;
            q[j + 16] = b[i].qs[j] >> 4;
        }
        for (int j = 0; j < 32; j++) {
            y[j] = d * (float)((int)q[j] - 8);
        }
    }
}
#if defined(__x86_64__)
#define Q4_0_DEQ_BLOCK(B, Y, S) fdy_deq_nib32_##S((B)->qs, 0, 0, NULL, 8, fdy_deq_half((B)->d), 0.0f, 0, Y)
FDY_DEQ_BLOCKS(q4_0_dequantize, fdy_block_q4_0, Q4_0_DEQ_BLOCK)
#endif
FDY_DEQ_SELECT(q4_0_dequantize, q4_0_dequantize_rows)

static void q4_0_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_q4_0 *b = (fdy_block_q4_0 *)dst;
    for (int64_t i = 0; i < n / 32; i++) {
        const float *x = src + i * 32;
        float amax = fabsf(x[0]), max = x[0]; /* argmax |x|: first of equals, as NumPy */
        for (int j = 1; j < 32; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fdy_float_to_half(d);
        for (int j = 0; j < 16; j++) {
            const int q0 = (int)truncf(x[j] * id + 8.5f);
            const int q1 = (int)truncf(x[j + 16] * id + 8.5f);
            b[i].qs[j] = (uint8_t)((q0 < 15 ? q0 : 15) | ((q1 < 15 ? q1 : 15) << 4));
        }
    }
}

/* ---- q8-variant integer dot: a q4_0 weight row x a q8_0 activation row ----
 * sum over blocks of d_w * d_a * (sum_j q_j * a_j - 8 * sum_j a_j), q in [0, 15]: the byte
 * dots take q (unsigned) and the codes a (|a| <= 127) as they are. */

static inline float q4_0_block(const fdy_block_q4_0 *x, const fdy_leg_q8_0 *y) {
    int8_t w[32];
    fdy_leg_nibbles(x->qs, 8, w);
    return fdy_half_to_float(x->d) * fdy_half_to_float(y->d) * (float)fdy_leg_dot32(w, y->qs);
}

#if defined(__x86_64__)
FDY_TARGET_AVX2 FDY_LEG_INLINE fdy_ops256 q4_0_ops256(const fdy_block_q4_0 *x,
                                                      const fdy_leg_q8_0 *y) {
    const __m256i a = _mm256_loadu_si256((const __m256i *)y->qs);
    return (fdy_ops256){fdy_nibbles256(x->qs), a, a};
}

#endif

FDY_LEG_KERNELS(q4_0, fdy_block_q4_0, fdy_leg_q8_0, 8, FDY_LEG_D1, FDY_LEG_D8)

/* the 8-row interleaved layout of the decode GEMV (simd_legacy.h): no min, zero point 8 */
FDY_PACK8_NIB_KERNELS(q4_0, fdy_block_q4_0, -1, 8, fdy_leg_q8_0)

/* ---- to_i8 (prefill GEMM): q = nibble - 8, scale = d, min = 0; bit-exact (decode's d * q) */
static void q4_0_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                        float *restrict min, int64_t n) {
    const fdy_block_q4_0 *b = (const fdy_block_q4_0 *)src;
    for (int64_t i = 0; i < n / 32; i++) {
        int8_t t[32];
        fdy_leg_nibbles(b[i].qs, 8, t);
        memcpy(q + 32 * i, t, 32);
        scale[2 * i] = scale[2 * i + 1] = fdy_half_to_float(b[i].d);
        min[2 * i] = min[2 * i + 1] = 0.0f;
    }
}

/* ---- vec_dot_f32 (f32-variant GEMV): sum over blocks of d * sum_j (q_j - 8) x_j ---- */
static float q4_0_dotf_portable(const void *w, const float *x, int64_t n) {
    const fdy_block_q4_0 *b = (const fdy_block_q4_0 *)w;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 32; i++) {
        int8_t q[32];
        fdy_leg_nibbles(b[i].qs, 8, q);
        sum += fdy_half_to_float(b[i].d) * fdy_df_dot32_i8(q, x + 32 * i);
    }
    return sum;
}

FDY_DF_NIB_KERNELS(q4_0, fdy_block_q4_0, 0, 0, NULL, 8, FDY_DF_NO_QH, FDY_DF_NO_M)
FDY_DF_DISPATCH(q4_0)
FDY_DF_ROWS_WIDE(q4_0, fdy_block_q4_0, 32, 2)

/* the AMX layout of the f32 decode GEMV (simd_amx.h) */
FDY_AMX_KERNELS(q4_0, FDY_AMX_Q4_0)

FDY_POLICY_DEFINE(q4_0, .block_elems = FDY_Q4_0_BLOCK_ELEMS,
                  .block_bytes = FDY_Q4_0_BLOCK_BYTES, .sub_elems = FDY_Q4_0_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_0",
                  .tol_roundtrip = 0.11f /* measured 0.0852 */, .tol_f32 = 1e-5f, .tol_q8 = 1e-2f,
                  .decode = fdy_decode_q4_0, .dequantize_fast = q4_0_dequantize,
                  .quantize = q4_0_quantize, .vec_dot = q4_0_vec_dot, .vec_dot_rows = q4_0_vec_dot_rows,
                  .to_i8 = q4_0_to_i8, .vec_dot_f32 = q4_0_vec_dot_f32,
                  .pack_rows = 8, .pack = q4_0_pack,
                  .vec_dot_packed = q4_0_vec_dot_packed,
                  .vec_dot_f32_rows = q4_0_vec_dot_f32_rows,
                  FDY_AMX_FIELDS(q4_0, FDY_AMX_Q4_0));
#endif
