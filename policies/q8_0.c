/* q8_0 - blocks of 32 weights: one f16 scale and 32 signed 8-bit codes; w = d * q.
 *
 *   block (32 elements, 34 bytes):
 *   | d: f16 (2) | qs[0..31]: int8 (32) |
 *
 * Quantizer (llama.cpp / gguf-py reference): d = max|x| / 127, q = round(x / d) (half away
 * from zero), d stored as f16.
 */
#ifndef FDY_DIALECT
#include "dialect.h"
#endif

#define FDY_Q8_0_BLOCK_ELEMS 32
#define FDY_Q8_0_BLOCK_BYTES 34
#define FDY_Q8_0_SUB_ELEMS 16

typedef struct fdy_block_q8_0 {
    uint16_t d;
    int8_t qs[32];
} fdy_block_q8_0;
FDY_STATIC_ASSERT(sizeof(fdy_block_q8_0) == FDY_Q8_0_BLOCK_BYTES, "q8_0 block size");

FDY_FN void fdy_decode_q8_0(FDY_GLOBAL const uint8_t *blk, int sub, FDY_THREAD float *out) {
    FDY_GLOBAL const fdy_block_q8_0 *b = (FDY_GLOBAL const fdy_block_q8_0 *)blk;
    const float d = fdy_half_to_float(b->d);
    for (int i = 0; i < 16; i++) {
        out[i] = d * (float)b->qs[sub * 16 + i];
    }
}

/* GEMV dot hook (load, then calc): 4 parts per block, part p = qs[8p .. 8p+7] (16-bit loads:
 * blocks are 2-byte aligned) into r[0..1], d in r[2]; a signed code c becomes the float
 * (c ^ 0x80) - 128 = c without an int convert */
#define FDY_Q8_0_DOTF_PARTS 4
#define FDY_Q8_0_DOTF_WORDS 3
FDY_FN void fdy_dotf_load_q8_0(FDY_GLOBAL const uint8_t *blk, int part, FDY_THREAD uint32_t *r) {
    FDY_GLOBAL const uint16_t *h = (FDY_GLOBAL const uint16_t *)blk;
    r[0] = (uint32_t)h[1 + 4 * part] | ((uint32_t)h[2 + 4 * part] << 16);
    r[1] = (uint32_t)h[3 + 4 * part] | ((uint32_t)h[4 + 4 * part] << 16);
    r[2] = h[0];
}

FDY_FN float fdy_dotf_calc_q8_0(FDY_THREAD const uint32_t *r, int part, FDY_GLOBAL const float *x) {
    float s = 0.0f;
    for (int w = 0; w < 2; w++) {
        const fdy_float4 xv = fdy_load4(x + 8 * part + 4 * w);
        for (int i = 0; i < 4; i++) {
            s = fdy_fma(fdy_code_f(((r[w] >> (8 * i)) & 0xFFu) ^ 0x80u, 128), xv.v[i], s);
        }
    }
    return fdy_half_to_float((uint16_t)r[2]) * s;
}

/* the whole hook in one call (host checks) */
FDY_FN float fdy_dotf_q8_0(FDY_GLOBAL const uint8_t *blk, int part, FDY_GLOBAL const float *x) {
    uint32_t r[FDY_Q8_0_DOTF_WORDS];
    fdy_dotf_load_q8_0(blk, part, r);
    return fdy_dotf_calc_q8_0(r, part, x);
}

/* Integer GEMV hook (the q8 variant; activations in q8_0: codes xq of the block, scale xd[0]):
 * the parts and raw words of the dot hook above; calc: d * xd * (two dp4a of the codes). */
#define FDY_Q8_0_DOTI 1
#define FDY_Q8_0_DOTI_U 1 /* unroll depth of fdy_gemv_doti (GPU_NOTES run 11 sweep: U1R2 120%, U4R2 90%) */
FDY_FN float fdy_doti_calc_q8_0(FDY_THREAD const uint32_t *r, int part, FDY_GLOBAL const uint8_t *xq,
                                FDY_GLOBAL const float *xd) {
    const int s = fdy_dp4a(r[0], fdy_load_u1(xq + 8 * part), fdy_dp4a(r[1], fdy_load_u1(xq + 8 * part + 4), 0));
    return (fdy_half_to_float((uint16_t)r[2]) * xd[0]) * (float)s;
}

/* Activation quantizer of the q8 variant on a GPU (q8_0 is the dot_type of q4_0, q5_0, q8_0,
 * iq4_nl, mxfp4, int8, nf4): the arithmetic of q8_0_quantize, split so that a kernel can find
 * the largest magnitude with a SIMD-group reduction (metal/matmul.metal, fdy_quantize_act).
 * fdy_actq_scale_q8_0(amax, vmax, &id): amax = max |x| of the block, vmax the value there;
 * returns the scale the dot kernels multiply by (d rounded to f16, as stored) and sets the
 * factor of the codes; fdy_actq_code_q8_0(x, id): one code. */
#define FDY_Q8_0_ACT_GROUP 32
FDY_FN float fdy_actq_scale_q8_0(float amax, float vmax, FDY_THREAD float *id) {
    (void)vmax;
    const float d = amax / 127.0f;
    *id = d != 0.0f ? 1.0f / d : 0.0f;
    return fdy_round_f16(d);
}

FDY_FN int fdy_actq_code_q8_0(float x, float id) {
    return (int)fdy_round_away(x * id);
}

#ifdef FDY_HOST
#include "policy.h"
#include "simd_dequant.h"
#include "simd_legacy.h"
#include "simd_dotf32.h"
#include "simd_amx.h"

FDY_DEQ_INLINE void q8_0_dequantize_rows(const void *src, float *dst, int64_t n) {
    const fdy_block_q8_0 *b = (const fdy_block_q8_0 *)src;
    for (int64_t i = 0; i < n / 32; i++) {
        const float d = fdy_half_to_float(b[i].d);
        for (int j = 0; j < 32; j++) {
            dst[i * 32 + j] = d * (float)b[i].qs[j];
        }
    }
}
#if defined(__x86_64__)
#define Q8_0_DEQ_BLOCK(B, Y, S)                                                      \
    fdy_deq_s8x32_##S(_mm256_loadu_si256((const __m256i *)(B)->qs),                  \
                      fdy_deq_half((B)->d), fdy_deq_half((B)->d), Y)
FDY_DEQ_BLOCKS(q8_0_dequantize, fdy_block_q8_0, Q8_0_DEQ_BLOCK)
#endif
FDY_DEQ_SELECT(q8_0_dequantize, q8_0_dequantize_rows)

static void q8_0_quantize(const float *src, void *dst, int64_t n) {
    fdy_block_q8_0 *b = (fdy_block_q8_0 *)dst;
    for (int64_t i = 0; i < n / 32; i++) {
        const float *x = src + i * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            amax = fmaxf(amax, fabsf(x[j]));
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fdy_float_to_half(d);
        for (int j = 0; j < 32; j++) {
            b[i].qs[j] = (int8_t)fdy_roundf(x[j] * id);
        }
    }
}

/* ---- activation quantizer (q8_0 is the dot_type of q4_0, q5_0, q8_0, iq4_nl, mxfp4): the
 * bytes of q8_0_quantize (see simd_legacy.h) ---- */

#define Q8_0_QUANTIZE_ACT(NAME, TARGET, BLOCK)                              \
    TARGET static void NAME(const float *src, void *dst, int64_t n) {       \
        fdy_block_q8_0 *b = (fdy_block_q8_0 *)dst;                          \
        for (int64_t i = 0; i < n / 32; i++) {                              \
            int sum;                                                        \
            b[i].d = fdy_float_to_half(BLOCK(src + i * 32, b[i].qs, &sum)); \
        }                                                                   \
    }
Q8_0_QUANTIZE_ACT(q8_0_quantize_act_portable, , fdy_quant_block_portable)
#if defined(__x86_64__)
Q8_0_QUANTIZE_ACT(q8_0_quantize_act_avx2, FDY_TARGET_AVX2, fdy_quant_block_avx2)
Q8_0_QUANTIZE_ACT(q8_0_quantize_act_avx512, FDY_TARGET_AVX512, fdy_quant_block_avx512)
#endif

static void q8_0_quantize_act(const float *src, void *dst, int64_t n) {
    switch (fdy_leg_tier()) {
#if defined(__x86_64__)
    case FDY_LEG_AVX512: q8_0_quantize_act_avx512(src, dst, n); return;
    case FDY_LEG_AVX2:
    case FDY_LEG_AVXVNNI: q8_0_quantize_act_avx2(src, dst, n); return;
#endif
    default: q8_0_quantize_act_portable(src, dst, n); return;
    }
}

/* ---- q8-variant integer dot: a q8_0 weight row x a q8_0 activation row ----
 * sum over blocks of d_w * d_a * sum_j w_j * a_j.  Weight codes may be any int8 (-128
 * included): the byte dots take |w| (<= 128) and a with the sign of w (|a| <= 127). */

static inline float q8_0_block(const fdy_block_q8_0 *x, const fdy_block_q8_0 *y) {
    return fdy_half_to_float(x->d) * fdy_half_to_float(y->d) * (float)fdy_leg_dot32(x->qs, y->qs);
}

#if defined(__x86_64__)
FDY_TARGET_AVX2 FDY_LEG_INLINE fdy_ops256 q8_0_ops256(const fdy_block_q8_0 *x,
                                                      const fdy_block_q8_0 *y) {
    const __m256i w = _mm256_loadu_si256((const __m256i *)x->qs);
    const __m256i a = _mm256_loadu_si256((const __m256i *)y->qs);
    return (fdy_ops256){_mm256_abs_epi8(w), _mm256_sign_epi8(a, w), a};
}

#endif

FDY_LEG_KERNELS(q8_0, fdy_block_q8_0, fdy_block_q8_0, 0, FDY_LEG_D1, FDY_LEG_D8)

/* ---- to_i8 (prefill GEMM; weights and activations): the codes, scale = d, min = 0;
 * bit-exact */
static void q8_0_to_i8(const void *restrict src, int8_t *restrict q, float *restrict scale,
                        float *restrict min, int64_t n) {
    const fdy_block_q8_0 *b = (const fdy_block_q8_0 *)src;
    for (int64_t i = 0; i < n / 32; i++) {
        memcpy(q + 32 * i, b[i].qs, 32);
        scale[2 * i] = scale[2 * i + 1] = fdy_half_to_float(b[i].d);
        min[2 * i] = min[2 * i + 1] = 0.0f;
    }
}

/* ---- vec_dot_f32 (f32-variant GEMV): sum over blocks of d * sum_j q_j x_j ---- */
static float q8_0_dotf_portable(const void *w, const float *x, int64_t n) {
    const fdy_block_q8_0 *b = (const fdy_block_q8_0 *)w;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / 32; i++) {
        sum += fdy_half_to_float(b[i].d) * fdy_df_dot32_i8(b[i].qs, x + 32 * i);
    }
    return sum;
}

#if defined(__x86_64__)
FDY_DF_TARGET_AVX2 static float q8_0_dotf_avx2(const void *w, const float *x, int64_t n) {
    const fdy_block_q8_0 *b = (const fdy_block_q8_0 *)w;
    const int64_t nb = n / 32;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
#define Q8_0_DF_BLOCK256(acc, k)                                                             \
    do {                                                                                     \
        const float *xb = x + 32 * (i + (k));                                                \
        __m256 s = fdy_df_mul16_256(_mm_loadu_si128((const __m128i *)b[i + (k)].qs), xb);    \
        s = fdy_df_fma16_256(_mm_loadu_si128((const __m128i *)(b[i + (k)].qs + 16)), xb + 16, \
                             s);                                                             \
        acc = _mm256_fmadd_ps(s, _mm256_set1_ps(fdy_df_half(b[i + (k)].d)), acc);            \
    } while (0)
    for (; i + 2 <= nb; i += 2) {
        Q8_0_DF_BLOCK256(acc0, 0);
        Q8_0_DF_BLOCK256(acc1, 1);
    }
    if (i < nb) {
        Q8_0_DF_BLOCK256(acc0, 0);
    }
#undef Q8_0_DF_BLOCK256
    return fdy_df_hsum256(_mm256_add_ps(acc0, acc1));
}

/* one block against x0 (elements 0..15) and x1 (16..31): acc + d * sum q x, the products
 * first, the scale after (both AVX-512 kernels below, so that they give the same bits) */
FDY_DF_TARGET_AVX512 FDY_DF_INLINE __m512 q8_0_dotf_blk512(const fdy_block_q8_0 *b, __m512 x0,
                                                          __m512 x1, __m512 acc) {
    const __m512 s = _mm512_fmadd_ps(fdy_df_s8x16_512(b->qs + 16), x1,
                                     _mm512_mul_ps(fdy_df_s8x16_512(b->qs), x0));
    return _mm512_fmadd_ps(s, _mm512_set1_ps(*fdy_df_h2f(&b->d)), acc);
}

FDY_DF_TARGET_AVX512 static float q8_0_dotf_avx512(const void *w, const float *x, int64_t n) {
    const fdy_block_q8_0 *b = (const fdy_block_q8_0 *)w;
    const int64_t nb = n / 32;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
#define Q8_0_DF_BLOCK512(acc, k)                                                          \
    acc = q8_0_dotf_blk512(b + i + (k), _mm512_loadu_ps(x + 32 * (i + (k))),               \
                           _mm512_loadu_ps(x + 32 * (i + (k)) + 16), acc)
    for (; i + 2 <= nb; i += 2) {
        fdy_stream_prefetch(b + i, 2); /* 68 bytes a pair of blocks */
        Q8_0_DF_BLOCK512(acc0, 0);
        Q8_0_DF_BLOCK512(acc1, 1);
    }
    if (i < nb) {
        Q8_0_DF_BLOCK512(acc0, 0);
    }
#undef Q8_0_DF_BLOCK512
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

/* four rows at a time, each with q8_0_dotf_avx512's arithmetic (and bits): the rows share the
 * activation loads and the final reduction (fdy_df_reduce4_512); each row's stream is
 * prefetched.  Rows past the last four run the one-row kernel.  docs/CPU_NOTES.md item 44 */
FDY_DF_TARGET_AVX512 static void q8_0_dotf_rows_avx512(const void *w, size_t rb, const float *x,
                                                       int64_t n, float *out, int64_t rows) {
    const int64_t nb = n / 32;
    int64_t r = 0;
#define Q8_0_DF_BLK4(j, A0, A1, A2, A3)                                                   \
    do {                                                                                  \
        const __m512 x0 = _mm512_loadu_ps(x + 32 * (j)), x1 = _mm512_loadu_ps(x + 32 * (j) + 16); \
        A0 = q8_0_dotf_blk512(b0 + (j), x0, x1, A0);                                      \
        A1 = q8_0_dotf_blk512(b1 + (j), x0, x1, A1);                                      \
        A2 = q8_0_dotf_blk512(b2 + (j), x0, x1, A2);                                      \
        A3 = q8_0_dotf_blk512(b3 + (j), x0, x1, A3);                                      \
    } while (0)
    for (; r + 4 <= rows; r += 4) {
        const uint8_t *p = (const uint8_t *)w + (size_t)r * rb;
        const fdy_block_q8_0 *b0 = (const fdy_block_q8_0 *)p;
        const fdy_block_q8_0 *b1 = (const fdy_block_q8_0 *)(p + rb);
        const fdy_block_q8_0 *b2 = (const fdy_block_q8_0 *)(p + 2 * rb);
        const fdy_block_q8_0 *b3 = (const fdy_block_q8_0 *)(p + 3 * rb);
        const __m512 z = _mm512_setzero_ps();
        __m512 a00 = z, a01 = z, a10 = z, a11 = z, a20 = z, a21 = z, a30 = z, a31 = z;
        int64_t i = 0;
        for (; i + 2 <= nb; i += 2) {
            fdy_stream_prefetch(b0 + i, 2);
            fdy_stream_prefetch(b1 + i, 2);
            fdy_stream_prefetch(b2 + i, 2);
            fdy_stream_prefetch(b3 + i, 2);
            Q8_0_DF_BLK4(i, a00, a10, a20, a30);
            Q8_0_DF_BLK4(i + 1, a01, a11, a21, a31);
        }
        if (i < nb) {
            Q8_0_DF_BLK4(i, a00, a10, a20, a30);
        }
        fdy_df_reduce4_512(_mm512_add_ps(a00, a01), _mm512_add_ps(a10, a11),
                           _mm512_add_ps(a20, a21), _mm512_add_ps(a30, a31), out + r);
    }
#undef Q8_0_DF_BLK4
    for (; r < rows; r++) {
        out[r] = q8_0_dotf_avx512((const uint8_t *)w + (size_t)r * rb, x, n);
    }
}
#endif
FDY_DF_DISPATCH(q8_0)
FDY_DF_ROWS_WIDE(q8_0, fdy_block_q8_0, 32, 1)

/* the AMX layout of the f32 decode GEMV (simd_amx.h) */
FDY_AMX_KERNELS(q8_0, FDY_AMX_Q8_0)

FDY_POLICY_DEFINE(q8_0, .block_elems = FDY_Q8_0_BLOCK_ELEMS,
                  .block_bytes = FDY_Q8_0_BLOCK_BYTES, .sub_elems = FDY_Q8_0_SUB_ELEMS,
                  .flags = FDY_POLICY_GGUF, .dot_type = "q8_0", .tol_roundtrip = 0.01f,
                  .tol_f32 = 1e-5f, .tol_q8 = 1e-2f, .decode = fdy_decode_q8_0,
                  .dequantize_fast = q8_0_dequantize, .quantize = q8_0_quantize,
                  .vec_dot = q8_0_vec_dot, .vec_dot_rows = q8_0_vec_dot_rows, .quantize_act = q8_0_quantize_act,
                  .to_i8 = q8_0_to_i8, .vec_dot_f32 = q8_0_vec_dot_f32,
                  .vec_dot_f32_rows = q8_0_vec_dot_f32_rows,
                  FDY_AMX_FIELDS(q8_0, FDY_AMX_Q8_0));
#endif
