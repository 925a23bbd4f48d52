/* q4_1 - blocks of 32 weights: f16 scale and minimum, 32 unsigned 4-bit codes; w = d * q + m.
 *
 *   block (32 elements, 20 bytes):
 *   | d: f16 (2) | m: f16 (2) | qs[0..15]: u8 (16) |
 *   qs[j] low nibble = element j, high nibble = element j + 16
 *
 * Quantizer (llama.cpp / gguf-py reference): d = (max - min) / 15,
 * q = min(15, trunc((x - min) / d + 0.5)), d and m = min stored as f16.
 * A block of mixed +0 / -0 may store m = +0 where gguf-py stores -0 or the reverse (NumPy's
 * min of signed zeros depends on its SIMD width; here the first of equal minima wins, as
 * llama.cpp); the decoded weights are the same.
 * Dequantize rounds the product first: w = (d * q) + m, as gguf-py (no FMA).
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_Q4_1_BLOCK_ELEMS 32
#define FDY_Q4_1_BLOCK_BYTES 20
#define FDY_Q4_1_SUB_ELEMS 16

typedef struct fdy_block_q4_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qs[16];
} fdy_block_q4_1;
FDY_STATIC_ASSERT(sizeof(fdy_block_q4_1) == FDY_Q4_1_BLOCK_BYTES, "q4_1 block size");

/* sub 0: the low nibbles (elements 0..15), sub 1: the high nibbles (elements 16..31) */
FDY_FN void fdy_decode_q4_1(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_q4_1 *b = (FDY_GLOBAL const fdy_block_q4_1 *)blk;
    const float d = fdy_half_to_float(b->d);
    const float m = fdy_half_to_float(b->m);
    const int shift = sub * 4;
    for (int i = 0; i < 16; i++) {
        out[i] = d * (float)((b->qs[i] >> shift) & 0x0F) + m;
    }
}

/* GEMV dot hook (load, then calc): 4 parts per block, part p = qs[4p .. 4p+3] (elements
 * 4p.. low nibbles, 16 + 4p.. high nibbles); 32-bit loads (blocks are 4-byte aligned):
 * r[0] = codes, r[1] = d | m << 16; calc: d sum q x + m sum x */
#define FDY_Q4_1_DOTF_PARTS 4
#define FDY_Q4_1_DOTF_WORDS 2
#define FDY_Q4_1_DOTF_U 1 /* unroll depth of fdy_gemv_dotf: the sweep's best */
FDY_FN void fdy_dotf_load_q4_1(FDY_GLOBAL const uint8_t *blk, int part, FDY_THREAD uint32_t *r) {
    FDY_GLOBAL const uint32_t *w = (FDY_GLOBAL const uint32_t *)blk;
    r[0] = w[1 + part];
    r[1] = w[0];
}

FDY_FN float fdy_dotf_calc_q4_1(FDY_THREAD const uint32_t *r, int part, FDY_GLOBAL const float *x) {
    const fdy_float4 xl = fdy_load4(x + 4 * part), xh = fdy_load4(x + 16 + 4 * part);
    const uint32_t lo = r[0] & 0x0F0F0F0Fu, hi = (r[0] >> 4) & 0x0F0F0F0Fu;
    float s = 0.0f, sx = 0.0f;
    for (int i = 0; i < 4; i++) {
        s = fdy_fma(fdy_code_f((lo >> (8 * i)) & 0xFFu, 0), xl.v[i], s);
        s = fdy_fma(fdy_code_f((hi >> (8 * i)) & 0xFFu, 0), xh.v[i], s);
        sx += xl.v[i] + xh.v[i];
    }
    return fdy_fma(fdy_half_to_float((uint16_t)(r[1] & 0xFFFFu)), s,
                   fdy_half_to_float((uint16_t)(r[1] >> 16)) * sx);
}

/* the whole hook in one call (host checks) */
FDY_FN float fdy_dotf_q4_1(FDY_GLOBAL const uint8_t *blk, int part, FDY_GLOBAL const float *x) {
    uint32_t r[FDY_Q4_1_DOTF_WORDS];
    fdy_dotf_load_q4_1(blk, part, r);
    return fdy_dotf_calc_q4_1(r, part, x);
}

/* Integer GEMV hook (the q8 variant; activations in q8_1 codes xq of the block, scale xd[0]):
 * the parts and raw words of the dot hook above; calc: xd * (d * sum q c + m * sum c), the
 * sums with dp4a (the code sum computed here, as the CPU kernels do, not q8_1's stored s). */
#define FDY_Q4_1_DOTI 1
FDY_FN float fdy_doti_calc_q4_1(FDY_THREAD const uint32_t *r, int part, FDY_GLOBAL const uint8_t *xq,
                                FDY_GLOBAL const float *xd) {
    const uint32_t lo = r[0] & 0x0F0F0F0Fu, hi = (r[0] >> 4) & 0x0F0F0F0Fu;
    const uint32_t xl = fdy_load_u1(xq + 4 * part), xh = fdy_load_u1(xq + 16 + 4 * part);
    const int s = fdy_dp4a(lo, xl, fdy_dp4a(hi, xh, 0));
    const int sx = fdy_dp4a(0x01010101u, xl, fdy_dp4a(0x01010101u, xh, 0));
    return xd[0] * fdy_fma(fdy_half_to_float((uint16_t)(r[1] & 0xFFFFu)), (float)s,
                           fdy_half_to_float((uint16_t)(r[1] >> 16)) * (float)sx);
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_dequant.h"
#include "simd_legacy.h"
#include "simd_dotf32.h"
#include "simd_amx.h"

FDY_DEQ_INLINE void q4_1_dequantize_rows(const void *src, float *dst, int64_t n) {
    const fdy_block_q4_1 *b = (const fdy_block_q4_1 *)src;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = fdy_half_to_float(b[i].d);
        const float m = fdy_half_to_float(b[i].m);
        float *y = dst + i * 32;
        uint8_t q[32]; /* unpack first: the convert loop then vectorizes */
        for (int j = 0; j < 16; j++) {
            q[j] = b[i].qs[j] & 0x0F;
            q[j + 16] = b[i].qs[j] >> 4;
        }
        for (int j = 0; j < 32; j++) {
            y[j] = d * (float)q[j] + m;
        }
    }
}
#if defined(__x86_64__)
#define Q4_1_DEQ_BLOCK(B, Y, S) fdy_deq_nib32_##S((B)->qs, 0, 0, NULL, 0, fdy_deq_half((B)->d), fdy_deq_half((B)->m), 1, Y)
FDY_DEQ_BLOCKS(q4_1_dequantize, fdy_block_q4_1, Q4_1_DEQ_BLOCK)
#endif
FDY_DEQ_SELECT(q4_1_dequantize, q4_1_dequantize_rows)

static void q4_1_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_q4_1 *b = (fdy_block_q4_1 *)dst;
    for (int64_t i = 0; i < n / 32; i++) {
        const float *x = src + i * 32;
        float min = x[0], max = x[0];
        for (int j = 1; j < 32; j++) {
            min = x[j] < min ? x[j] : min;
            max = x[j] > max ? x[j] : max;
        }
        const float d = (max - min) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fdy_float_to_half(d);
        b[i].m = fdy_float_to_half(min);
        for (int j = 0; j < 16; j++) {
            const int q0 = (int)truncf((x[j] - min) * id + 0.5f);
            const int q1 = (int)truncf((x[j + 16] - min) * id + 0.5f);
            b[i].qs[j] = (uint8_t)((q0 < 15 ? q0 : 15) | ((q1 < 15 ? q1 : 15) << 4));
        }
    }
}

/* ---- q8-variant integer dot: a q4_1 weight row x a q8_1 activation row ----
 * sum over blocks of d_w * d_a * sum_j q_j * a_j + m_w * d_a * sum_j a_j, q in [0, 15].  The min
 * term uses the exact code sum, not the q8_1 `s` field (f16 of d_a * sum with the unrounded
 * d_a): `s` is off by up to ~1e-3 relative per block, far above the 1e-5 the tests hold the
 * kernels to against the dequantized activations. */

static inline float q4_1_block(const fdy_block_q4_1 *x, const fdy_leg_q8_1 *y) {
    int8_t w[32];
    fdy_leg_nibbles(x->qs, 0, w);
    const float da = fdy_half_to_float(y->d);
    return fdy_half_to_float(x->d) * da * (float)fdy_leg_dot32(w, y->qs) +
           fdy_half_to_float(x->m) * da * (float)fdy_leg_sum32(y->qs);
}

#if defined(__x86_64__)
FDY_TARGET_AVX2 FDY_LEG_INLINE fdy_ops256 q4_1_ops256(const fdy_block_q4_1 *x,
                                                      const fdy_leg_q8_1 *y) {
    const __m256i a = _mm256_loadu_si256((const __m256i *)y->qs);
    return (fdy_ops256){fdy_nibbles256(x->qs), a, a};
}

#endif

FDY_LEG_KERNELS_MIN(q4_1, fdy_block_q4_1, fdy_leg_q8_1, FDY_LEG_D1, FDY_LEG_D8, FDY_LEG_M1,
                    FDY_LEG_M8)

/* ---- to_i8 (prefill GEMM): q = nibble, scale = d, min = m; bit-exact (decode's d * q + m) */
static void q4_1_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                        float *restrict min, int64_t n) {
    const fdy_block_q4_1 *b = (const fdy_block_q4_1 *)src;
    for (int64_t i = 0; i < n / 32; i++) {
        int8_t t[32];
        fdy_leg_nibbles(b[i].qs, 0, t);
        memcpy(q + 32 * i, t, 32);
        scale[2 * i] = scale[2 * i + 1] = fdy_half_to_float(b[i].d);
        min[2 * i] = min[2 * i + 1] = fdy_half_to_float(b[i].m);
    }
}

/* ---- vec_dot_f32 (f32-variant GEMV): sum over blocks of sum_j (d * q_j + m) x_j ---- */
FDY_DF_PORTABLE_DECODE(q4_1, fdy_decode_q4_1, FDY_Q4_1_BLOCK_ELEMS, FDY_Q4_1_BLOCK_BYTES,
                       FDY_Q4_1_SUB_ELEMS)
#if defined(__x86_64__)
FDY_STATIC_ASSERT(offsetof(fdy_block_q4_1, m) == 2, "q4_1: m at offset 2 (fdy_df_h2f)");
#define Q4_1_DF_M(b) fdy_df_half((b)->m)
#endif
FDY_DF_NIB_KERNELS(q4_1, fdy_block_q4_1, 0, 1, NULL, 0, FDY_DF_NO_QH, Q4_1_DF_M)
FDY_DF_DISPATCH(q4_1)
FDY_DF_ROWS_WIDE(q4_1, fdy_block_q4_1, 32, 2)

/* the 8-row interleaved layout of the decode GEMV (simd_legacy.h): with the min, no zero point */
FDY_PACK8_NIB_KERNELS(q4_1, fdy_block_q4_1, (int)offsetof(fdy_block_q4_1, m), 0, fdy_leg_q8_1)

/* the AMX layout of the f32 decode GEMV (simd_amx.h) */
FDY_AMX_KERNELS(q4_1, FDY_AMX_Q4_1)

FDY_POLICY_DEFINE(q4_1, .block_elems = FDY_Q4_1_BLOCK_ELEMS,
                  .block_bytes = FDY_Q4_1_BLOCK_BYTES, .sub_elems = FDY_Q4_1_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_1",
                  .tol_roundtrip = 0.10f /* measured 0.0782 */, .tol_f32 = 1e-5f, .tol_q8 = 1e-2f,
                  .decode = fdy_decode_q4_1, .dequantize_fast = q4_1_dequantize,
                  .quantize = q4_1_quantize, .vec_dot = q4_1_vec_dot, .vec_dot_rows = q4_1_vec_dot_rows,
                  .to_i8 = q4_1_to_i8, .vec_dot_f32 = q4_1_vec_dot_f32,
                  .pack_rows = 8, .pack = q4_1_pack, .vec_dot_packed = q4_1_vec_dot_packed,
                  .vec_dot_f32_rows = q4_1_vec_dot_f32_rows,
                  FDY_AMX_FIELDS(q4_1, FDY_AMX_Q4_1));
#endif
