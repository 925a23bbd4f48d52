/* simd_dotf32.h - host-only helpers of the f32 variant's fused GEMV kernels (vec_dot_f32):
 * the float dot product of one encoded weight row of n elements with a float row x, decoding
 * the weights in registers instead of writing them to a scratch row first; and the row-range
 * form vec_dot_f32_rows (FDY_DF_ROWS: q4_0, q4_1, q8_0, q4_k and q5_k with the steps below,
 * q6_k, iq4_xs, q3_k and q2_k with their own built on the placements below), which rearranges
 * x once per call.  On AVX-512 CPUs the nibble formats (FDY_DF_NIB_KERNELS) and q8_0 have
 * four-row kernels F_dotf_rows_avx512 instead, each row with the one-row kernel's bits.
 *
 * Tiers, chosen per call from the enabled CPU features (fdy_df_tier, the inline cached read):
 *   FDY_DF_AVX512    AVX-512 F+BW+VL+DQ with AVX2, FMA and F16C: 16 floats per vector; 4-bit
 *                    codes turn into floats with a 16-entry float table (vpermps); q4_0, q4_1
 *                    and iq4_nl place their codes by variable shifts on a rearranged x
 *   FDY_DF_AVX2      AVX2 + FMA + F16C: codes built as bytes, widened 8 at a time
 *   FDY_DF_PORTABLE  plain C (every other processor)
 * No global -m flag: every SIMD function carries its own target attribute.
 *
 * Arithmetic: each weight is formed as the decode forms it, up to the order of rounding
 * (one scale per block or group of 16 lanes applied after the code * x products, or the
 * weight d * q + m formed with a fused multiply-add), and the products are summed in float
 * with several vector accumulators.  The result differs from dequantize + float dot only by
 * float rounding, within the float32 dot-product bound the tests hold the f32 variant to.
 *
 * A format file F instantiates F_dotf_portable, and on x86-64 F_dotf_avx2 and F_dotf_avx512
 * (with the FDY_DF_TARGET_* attributes), then FDY_DF_DISPATCH(F) for F_vec_dot_f32.
 */
#ifndef FDY_SIMD_DOTF32_H
#define FDY_SIMD_DOTF32_H
#ifdef FDY_HOST

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "foundry.h"

enum { FDY_DF_PORTABLE, FDY_DF_AVX2, FDY_DF_AVX512 };

static inline int fdy_df_tier(void) {
#if defined(__x86_64__)
    const uint32_t f = fdy_cpu_enabled();
    const uint32_t base = FDY_CPU_AVX2 | FDY_CPU_FMA | FDY_CPU_F16C;
    if ((f & base) != base) {
        return FDY_DF_PORTABLE;
    }
    return (f & FDY_CPU_AVX512) ? FDY_DF_AVX512 : FDY_DF_AVX2;
#else
    return FDY_DF_PORTABLE;
#endif
}

/* portable: sum_j q[j] * x[j] over 32 codes with 8 partial sums (vectorizable) */
static inline float fdy_df_dot32_i8(const int8_t *q, const float *x) {
    float acc[8] = {0};
    for (int j = 0; j < 32; j += 8) {
        for (int k = 0; k < 8; k++) {
            acc[k] += (float)q[j + k] * x[j + k];
        }
    }
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* portable: sum_j w[j] * x[j] over n floats (n a multiple of 8) with 8 partial sums */
static inline float fdy_df_dot_f(const float *w, const float *x, int n) {
    float acc[8] = {0};
    for (int j = 0; j < n; j += 8) {
        for (int k = 0; k < 8; k++) {
            acc[k] += w[j + k] * x[j + k];
        }
    }
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* out[r] = dot(row r) for rows r < rows of w (row_bytes apart): the row-range hooks' fallback
 * where no row-range kernel runs */
static inline void fdy_df_rows_each(float (*dot)(const void *, const float *, int64_t),
                                    const void *w, size_t row_bytes, const float *x, int64_t n,
                                    float *out, int64_t rows) {
    for (int64_t r = 0; r < rows; r++) {
        out[r] = dot((const uint8_t *)w + (size_t)r * row_bytes, x, n);
    }
}

/* a portable kernel from the format's decode function: each block decoded to floats (sub-block
 * by sub-block), then a float dot with 8 partial sums */
#define FDY_DF_PORTABLE_DECODE(F, DECODE, BLOCK_ELEMS, BLOCK_BYTES, SUB_ELEMS)        \
    static float F##_dotf_portable(const void *w, const float *x, int64_t n) {        \
        const uint8_t *b = (const uint8_t *)w;                                        \
        float y[BLOCK_ELEMS];                                                         \
        float sum = 0.0f;                                                             \
        for (int64_t i = 0; i < n / (BLOCK_ELEMS); i++) {                             \
            for (int s = 0; s < (BLOCK_ELEMS) / (SUB_ELEMS); s++) {                   \
                DECODE(b + i * (BLOCK_BYTES), s, y + s * (SUB_ELEMS));                \
            }                                                                         \
            sum += fdy_df_dot_f(y, x + i * (BLOCK_ELEMS), BLOCK_ELEMS);               \
        }                                                                             \
        return sum;                                                                   \
    }

#if defined(__x86_64__)
#include <immintrin.h>

#define FDY_DF_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define FDY_DF_TARGET_AVX512 \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define FDY_DF_INLINE static inline __attribute__((always_inline))

#define FDY_DF_DISPATCH(F)                                                     \
    static float F##_vec_dot_f32(const void *w, const float *x, int64_t n) {   \
        switch (fdy_df_tier()) {                                               \
        case FDY_DF_AVX512: return F##_dotf_avx512(w, x, n);                   \
        case FDY_DF_AVX2: return F##_dotf_avx2(w, x, n);                       \
        default: return F##_dotf_portable(w, x, n);                            \
        }                                                                      \
    }

/* the per-group scales of a super-block are stored to a small array and then broadcast into
 * vectors; this compiler barrier keeps them in memory, so that each broadcast is one load
 * (vbroadcastss zmm, m32) rather than a lane extract + broadcast from a register (two shuffle
 * micro-ops each, which made the q4_k kernel shuffle-bound) */
FDY_DF_INLINE void fdy_df_spill(float *p) {
    __asm__ volatile("" : : "r"(p) : "memory");
}

/* the scales of super-block i as SCALES(block, float out[16]) writes them (with fdy_df_spill),
 * from two buffers sc[2][16]: block i + 1's are written now (and block 0's at i == 0), one
 * block ahead, so the broadcasts of block i read committed stores -- a broadcast right after
 * the 32-byte store it reads from waited for that store (store-to-load forwarding from a part
 * of a wider store stalls).  nb: the blocks of the row */
#define FDY_DF_SCALES_AHEAD(SCALES, b, i, nb, sc)                               \
    ((i) == 0 ? SCALES((b), (sc)[0]) : (void)0,                                 \
     (i) + 1 < (nb) ? SCALES((b) + (i) + 1, (sc)[((i) + 1) & 1]) : (void)0,     \
     (const float *)(sc)[(i) & 1])

/* an f16 as float (vcvtph2ps) */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE float fdy_df_half(uint16_t h) {
    return _cvtsh_ss(h);
}

FDY_DF_TARGET_AVX2 FDY_DF_INLINE float fdy_df_hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- AVX2: 16 codes as signed bytes q (lanes 0..15) against x[0..15] ---- */

/* the 8 floats of signed bytes 0..7 of q */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE __m256 fdy_df_s8lo_256(__m128i q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
}

/* acc + q[0..15] * x[0..15] (two multiply-adds) */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE __m256 fdy_df_fma16_256(__m128i q, const float *x, __m256 acc) {
    acc = _mm256_fmadd_ps(fdy_df_s8lo_256(q), _mm256_loadu_ps(x), acc);
    return _mm256_fmadd_ps(fdy_df_s8lo_256(_mm_srli_si128(q, 8)), _mm256_loadu_ps(x + 8), acc);
}

/* q[0..15] * x[0..15] as 8 partial sums */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE __m256 fdy_df_mul16_256(__m128i q, const float *x) {
    const __m256 p = _mm256_mul_ps(fdy_df_s8lo_256(q), _mm256_loadu_ps(x));
    return _mm256_fmadd_ps(fdy_df_s8lo_256(_mm_srli_si128(q, 8)), _mm256_loadu_ps(x + 8), p);
}

/* acc + (d * q[j] + m) * x[j] for j < 16: the weights formed with a fused multiply-add */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE __m256 fdy_df_fma16_dm_256(__m128i q, __m256 d, __m256 m,
                                                           const float *x, __m256 acc) {
    const __m256 w0 = _mm256_fmadd_ps(fdy_df_s8lo_256(q), d, m);
    const __m256 w1 = _mm256_fmadd_ps(fdy_df_s8lo_256(_mm_srli_si128(q, 8)), d, m);
    acc = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), acc);
    return _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + 8), acc);
}

/* the low and high nibbles of 16 bytes as bytes */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_nibbles_128(const uint8_t *qs, __m128i *lo,
                                                         __m128i *hi) {
    const __m128i v = _mm_loadu_si128((const __m128i *)qs);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    *lo = _mm_and_si128(v, m4);
    *hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
}

/* ---- AVX-512 ---- */

/* the 16 bytes at p zero-extended to int32 lanes (the table index of vpermps: its low 4 bits) */
FDY_DF_TARGET_AVX512 FDY_DF_INLINE __m512i fdy_df_u8x16_512(const uint8_t *p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
}

/* the floats of the 16 signed bytes at p */
FDY_DF_TARGET_AVX512 FDY_DF_INLINE __m512 fdy_df_s8x16_512(const void *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

/* 32 nibble codes of 16 bytes (low nibbles: elements 0..15, high: 16..31) mapped through the
 * float table tbl, against x[0..31]: the 16 partial sums */
FDY_DF_TARGET_AVX512 FDY_DF_INLINE __m512 fdy_df_nib32_512(const uint8_t *qs, __m512 tbl,
                                                          const float *x) {
    const __m512i v = fdy_df_u8x16_512(qs);
    const __m512 lo = _mm512_permutexvar_ps(v, tbl);
    const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tbl);
    return _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(x)));
}

/* the float table 0, 1, ..., 15 shifted by -off */
FDY_DF_TARGET_AVX512 FDY_DF_INLINE __m512 fdy_df_ramp_512(float off) {
    return _mm512_sub_ps(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_ps(off));
}

/* ---- the 32-element nibble formats (q4_0, q4_1, q5_0, q5_1, iq4_nl): 16 bytes qs, code j
 * the low nibble of qs[j] (j < 16) or the high nibble of qs[j - 16]; with hbit, 16 added where
 * bit j of qh is set; the value of a code: tbl[code] (an int8 table of 16, when not NULL) or
 * code - off; weight d * value, plus m when hasm.  One block: acc0 (and acc1 with hasm) += ---- */

/* byte j: 16 where bit j of h (16 bits) is set, else 0 */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE __m128i fdy_df_bits16_128(uint32_t h) {
    const __m128i bits = _mm_shuffle_epi8(_mm_cvtsi32_si128((int)(h & 0xFFFFu)),
                                          _mm_set_epi64x(0x0101010101010101LL, 0));
    const __m128i sel = _mm_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(bits, sel), sel), _mm_set1_epi8(16));
}

FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_nibblk_256(const uint8_t *qs, uint32_t qh, float d,
                                                        float m, int hbit, int hasm,
                                                        const int8_t *tbl, int off,
                                                        const float *x, __m256 *acc0,
                                                        __m256 *acc1) {
    __m128i lo, hi;
    fdy_df_nibbles_128(qs, &lo, &hi);
    if (hbit) {
        lo = _mm_or_si128(lo, fdy_df_bits16_128(qh));
        hi = _mm_or_si128(hi, fdy_df_bits16_128(qh >> 16));
    }
    if (tbl) {
        const __m128i t = _mm_loadu_si128((const __m128i *)tbl);
        lo = _mm_shuffle_epi8(t, lo);
        hi = _mm_shuffle_epi8(t, hi);
    } else if (off) {
        lo = _mm_sub_epi8(lo, _mm_set1_epi8((char)off));
        hi = _mm_sub_epi8(hi, _mm_set1_epi8((char)off));
    }
    const __m256 vd = _mm256_set1_ps(d);
    if (hasm) {
        const __m256 vm = _mm256_set1_ps(m);
        *acc0 = fdy_df_fma16_dm_256(lo, vd, vm, x, *acc0);
        *acc1 = fdy_df_fma16_dm_256(hi, vd, vm, x + 16, *acc1);
    } else {
        const __m256 s = fdy_df_fma16_256(hi, x + 16, fdy_df_mul16_256(lo, x));
        *acc0 = _mm256_fmadd_ps(s, vd, *acc0);
    }
}

/* the value tables of codes 0..15 (tlo) and 16..31 (thi) */
FDY_DF_TARGET_AVX512 FDY_DF_INLINE void fdy_df_nibtables_512(const int8_t *tbl, int off,
                                                             __m512 *tlo, __m512 *thi) {
    if (tbl) {
        *tlo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)tbl)));
    } else {
        *tlo = fdy_df_ramp_512((float)off);
    }
    *thi = fdy_df_ramp_512((float)(off - 16));
}

/* where the f16 at p is held as float (fdy_f16_table): a broadcast of it is one load.
 * Converting a scalar f16 and broadcasting it from a register cost three shuffle-port
 * micro-ops per scale, which made these kernels shuffle-bound (docs/CPU_NOTES.md item 41) */
FDY_DF_INLINE const float *fdy_df_h2f(const void *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return &fdy_f16_table[h];
}

/* one block (codes qs, fifth bits qh, d at *dp, the min at *mp when hasm) */
FDY_DF_TARGET_AVX512 FDY_DF_INLINE void fdy_df_nibblk_512(const uint8_t *qs, uint32_t qh,
                                                          const float *dp, const float *mp,
                                                          int hbit, int hasm,
                                                          __m512 tlo, __m512 thi,
                                                          const float *x, __m512 *acc0,
                                                          __m512 *acc1) {
    const __m512i v = fdy_df_u8x16_512(qs);
    const __m512i vh = _mm512_srli_epi32(v, 4);
    __m512 lo = _mm512_permutexvar_ps(v, tlo), hi = _mm512_permutexvar_ps(vh, tlo);
    if (hbit) {
        lo = _mm512_mask_permutexvar_ps(lo, (__mmask16)qh, v, thi);
        hi = _mm512_mask_permutexvar_ps(hi, (__mmask16)(qh >> 16), vh, thi);
    }
    const __m512 vd = _mm512_set1_ps(*dp);
    const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
    if (hasm) {
        const __m512 vm = _mm512_set1_ps(*mp);
        *acc0 = _mm512_fmadd_ps(_mm512_fmadd_ps(lo, vd, vm), x0, *acc0);
        *acc1 = _mm512_fmadd_ps(_mm512_fmadd_ps(hi, vd, vm), x1, *acc1);
    } else {
        *acc0 = _mm512_fmadd_ps(_mm512_fmadd_ps(hi, x1, _mm512_mul_ps(lo, x0)), vd, *acc0);
    }
}

/* one block of a row of the four-row kernel: fdy_df_nibblk_512 as the one-row kernel calls it */
#define FDY_DF_NIB_BLK512(HBIT, HASM, QH, bp, xp, acc0, acc1)                                \
    fdy_df_nibblk_512((bp)->qs, QH(bp), fdy_df_h2f(bp), fdy_df_h2f((const uint8_t *)(bp) + 2), \
                      HBIT, HASM, tlo, thi, (xp), &(acc0), &(acc1))

/* _mm512_reduce_add_ps of s0..s3 to out[0..3], the same additions in the same association
 * (the 256-bit halves, the 128-bit halves, lanes (0, 2) and (1, 3), then those two), so a row
 * of the four-row kernels sums to the one-row kernel's bits; nine shuffles for four rows
 * where four reductions take sixteen */
FDY_DF_TARGET_AVX512 FDY_DF_INLINE void fdy_df_reduce4_512(__m512 s0, __m512 s1, __m512 s2,
                                                          __m512 s3, float *out) {
    /* [s.lo256 + s.hi256] of rows 0, 1 and of rows 2, 3 */
    const __m512 u01 = _mm512_add_ps(_mm512_shuffle_f32x4(s0, s1, _MM_SHUFFLE(1, 0, 1, 0)),
                                     _mm512_shuffle_f32x4(s0, s1, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 u23 = _mm512_add_ps(_mm512_shuffle_f32x4(s2, s3, _MM_SHUFFLE(1, 0, 1, 0)),
                                     _mm512_shuffle_f32x4(s2, s3, _MM_SHUFFLE(3, 2, 3, 2)));
    /* 128-bit lane k: row k's low 128 + high 128 of the above */
    __m512 v = _mm512_add_ps(_mm512_shuffle_f32x4(u01, u23, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(u01, u23, _MM_SHUFFLE(3, 1, 3, 1)));
    v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
    const __m512 r = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0,
                                                             0, 0, 0, 0, 0), v);
    _mm_storeu_ps(out, _mm512_castps512_ps128(r));
}

/* the row-range kernels rearrange the activation this many elements at a time, and keep the
 * sums of this many rows between spans when a row is longer */
#define FDY_DF_ROWS_SPAN 8192
#define FDY_DF_ROWS_BATCH 64

/* ---- AVX-512 row-range kernel of the nibble formats without fifth bits (q4_0, q4_1, iq4_nl),
 * on a rearranged activation.  A block's 16 code bytes are broadcast to the four 128-bit lanes
 * (a load, no shuffle); lane k of dword i then shifts right by 8k (low nibbles) or 8k + 4 (high
 * nibbles), so its low 4 bits are the code of element 4i + k (or 16 + 4i + k), which vpermps
 * maps through the value table.  Those two variable shifts replace the zero-extension and the
 * shift of the one-row form: one shuffle-port micro-op fewer per block, the same count.  The
 * activation is rearranged to match (in each 16 elements a 4 x 4 transpose, FDY_DF_ROWS_SPAN
 * elements at a time), once per call.  Each weight and product is formed as in
 * fdy_df_nibblk_512 (the weight value * d after the products, or fma(value, d, m) then the
 * product); per row, blocks of even index go to one pair of accumulators and odd ones to
 * another, and the rows' sums are reduced four at a time (fdy_df_reduce4_512).  Four rows per
 * pass share the activation loads and the reduction; each row's stream is prefetched
 * (fdy_stream_prefetch).  docs/CPU_NOTES.md item 44. ---- */

/* xp = x (nb blocks of 32) with each 16 elements transposed as a 4 x 4 matrix */
FDY_DF_TARGET_AVX512 FDY_DF_INLINE void fdy_df_nibbc_prep(const float *x, int64_t nb, float *xp) {
    const __m512i t = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for (int64_t j = 0; j < 2 * nb; j++) {
        _mm512_store_ps(xp + 16 * j, _mm512_permutexvar_ps(t, _mm512_loadu_ps(x + 16 * j)));
    }
}

/* one block at b (d: f16 at byte 0; hasm: the min at byte 2; codes at byte qs) against the
 * rearranged x0 (elements 0..15) and x1 (16..31) */
FDY_DF_TARGET_AVX512 FDY_DF_INLINE void fdy_df_nibbc_blk(const uint8_t *b, int qs, int hasm,
                                                        __m512 tbl, __m512i sh0, __m512i sh4,
                                                        __m512 x0, __m512 x1, __m512 *acc0,
                                                        __m512 *acc1) {
    const __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(b + qs)));
    const __m512 vd = _mm512_set1_ps(*fdy_df_h2f(b));
    if (hasm) {
        /* the block's 16 weights fma(value, d, m) first, then each code picks its weight */
        const __m512 wt = _mm512_fmadd_ps(tbl, vd, _mm512_set1_ps(*fdy_df_h2f(b + 2)));
        *acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srlv_epi32(v, sh0), wt), x0, *acc0);
        *acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srlv_epi32(v, sh4), wt), x1, *acc1);
    } else {
        const __m512 lo = _mm512_permutexvar_ps(_mm512_srlv_epi32(v, sh0), tbl);
        const __m512 hi = _mm512_permutexvar_ps(_mm512_srlv_epi32(v, sh4), tbl);
        *acc0 = _mm512_fmadd_ps(_mm512_fmadd_ps(hi, x1, _mm512_mul_ps(lo, x0)), vd, *acc0);
    }
}

/* blocks [0, nb) of one row at b (block bytes bb) into its accumulators a[0..3]: even blocks
 * into a[0], a[1], odd ones into a[2], a[3] */
#define FDY_DF_NIBBC_ROW(b, bb, nb)                                                           \
    do {                                                                                      \
        int64_t i_ = 0;                                                                       \
        for (; i_ + 2 <= (nb); i_ += 2) {                                                     \
            fdy_stream_prefetch((b) + i_ * (bb), 1);                                          \
            fdy_df_nibbc_blk((b) + i_ * (bb), qs, hasm, tbl, sh0, sh4,                        \
                             _mm512_load_ps(xp + 32 * i_), _mm512_load_ps(xp + 32 * i_ + 16), \
                             &a[0], &a[1]);                                                   \
            fdy_df_nibbc_blk((b) + (i_ + 1) * (bb), qs, hasm, tbl, sh0, sh4,                  \
                             _mm512_load_ps(xp + 32 * i_ + 32),                               \
                             _mm512_load_ps(xp + 32 * i_ + 48), &a[2], &a[3]);                \
        }                                                                                     \
        if (i_ < (nb)) {                                                                      \
            fdy_df_nibbc_blk((b) + i_ * (bb), qs, hasm, tbl, sh0, sh4,                        \
                             _mm512_load_ps(xp + 32 * i_), _mm512_load_ps(xp + 32 * i_ + 16), \
                             &a[0], &a[1]);                                                   \
        }                                                                                     \
    } while (0)

/* one block of four rows (their accumulators A0..A3, four each) */
#define FDY_DF_NIBBC_BLK4(p, bb, i, A0, A1, A2, A3, k)                                        \
    do {                                                                                      \
        const __m512 x0_ = _mm512_load_ps(xp + 32 * (i)), x1_ = _mm512_load_ps(xp + 32 * (i) + 16); \
        fdy_df_nibbc_blk((p)[0] + (i) * (bb), qs, hasm, tbl, sh0, sh4, x0_, x1_, &A0[k], &A0[k + 1]); \
        fdy_df_nibbc_blk((p)[1] + (i) * (bb), qs, hasm, tbl, sh0, sh4, x0_, x1_, &A1[k], &A1[k + 1]); \
        fdy_df_nibbc_blk((p)[2] + (i) * (bb), qs, hasm, tbl, sh0, sh4, x0_, x1_, &A2[k], &A2[k + 1]); \
        fdy_df_nibbc_blk((p)[3] + (i) * (bb), qs, hasm, tbl, sh0, sh4, x0_, x1_, &A3[k], &A3[k + 1]); \
    } while (0)

/* out[r] for rows r < rows of w (rb bytes apart), n elements each (blocks of bb bytes, codes
 * at byte qs).  acc is read only for spans after the first, which wrote it: GCC cannot tell */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
FDY_DF_TARGET_AVX512 FDY_DF_INLINE void fdy_df_nibbc_rows(const uint8_t *w, size_t rb,
                                                         const float *x, int64_t n, float *out,
                                                         int64_t rows, int bb, int qs, int hasm,
                                                         __m512 tbl) {
    _Alignas(64) float xp[FDY_DF_ROWS_SPAN];
    __m512 acc[FDY_DF_ROWS_BATCH][4]; /* the rows' sums between spans (n > one span) */
    const __m512i sh0 = _mm512_setr_epi32(0, 0, 0, 0, 8, 8, 8, 8, 16, 16, 16, 16, 24, 24, 24, 24);
    const __m512i sh4 = _mm512_add_epi32(sh0, _mm512_set1_epi32(4));
    const int spans = n > FDY_DF_ROWS_SPAN;
    const int64_t batch = spans ? FDY_DF_ROWS_BATCH : rows;
    for (int64_t r0 = 0; r0 < rows; r0 += batch) {
        const int64_t nr = rows - r0 < batch ? rows - r0 : batch;
        for (int64_t k0 = 0; k0 < n; k0 += FDY_DF_ROWS_SPAN) {
            const int64_t nb = (n - k0 < FDY_DF_ROWS_SPAN ? n - k0 : FDY_DF_ROWS_SPAN) / 32;
            const int last = k0 + FDY_DF_ROWS_SPAN >= n;
            if (r0 == 0 || spans) {
                fdy_df_nibbc_prep(x + k0, nb, xp);
            }
            const uint8_t *wk = w + (size_t)(k0 / 32) * (size_t)bb;
            int64_t r = 0;
            for (; r + 4 <= nr; r += 4) {
                const uint8_t *p[4];
                __m512 A0[4], A1[4], A2[4], A3[4];
                for (int j = 0; j < 4; j++) {
                    p[j] = wk + (size_t)(r0 + r + j) * rb;
                    A0[j] = k0 ? acc[r][j] : _mm512_setzero_ps();
                    A1[j] = k0 ? acc[r + 1][j] : _mm512_setzero_ps();
                    A2[j] = k0 ? acc[r + 2][j] : _mm512_setzero_ps();
                    A3[j] = k0 ? acc[r + 3][j] : _mm512_setzero_ps();
                }
                int64_t i = 0;
                for (; i + 2 <= nb; i += 2) {
                    for (int j = 0; j < 4; j++) {
                        fdy_stream_prefetch(p[j] + i * bb, 1);
                    }
                    FDY_DF_NIBBC_BLK4(p, bb, i, A0, A1, A2, A3, 0);
                    FDY_DF_NIBBC_BLK4(p, bb, i + 1, A0, A1, A2, A3, 2);
                }
                if (i < nb) {
                    FDY_DF_NIBBC_BLK4(p, bb, i, A0, A1, A2, A3, 0);
                }
                if (last) {
                    fdy_df_reduce4_512(
                        _mm512_add_ps(_mm512_add_ps(A0[0], A0[1]), _mm512_add_ps(A0[2], A0[3])),
                        _mm512_add_ps(_mm512_add_ps(A1[0], A1[1]), _mm512_add_ps(A1[2], A1[3])),
                        _mm512_add_ps(_mm512_add_ps(A2[0], A2[1]), _mm512_add_ps(A2[2], A2[3])),
                        _mm512_add_ps(_mm512_add_ps(A3[0], A3[1]), _mm512_add_ps(A3[2], A3[3])),
                        out + r0 + r);
                } else {
                    for (int j = 0; j < 4; j++) {
                        acc[r][j] = A0[j];
                        acc[r + 1][j] = A1[j];
                        acc[r + 2][j] = A2[j];
                        acc[r + 3][j] = A3[j];
                    }
                }
            }
            for (; r < nr; r++) {
                __m512 a[4];
                for (int j = 0; j < 4; j++) {
                    a[j] = k0 ? acc[r][j] : _mm512_setzero_ps();
                }
                FDY_DF_NIBBC_ROW(wk + (size_t)(r0 + r) * rb, bb, nb);
                if (last) {
                    out[r0 + r] = _mm512_reduce_add_ps(
                        _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
                } else {
                    for (int j = 0; j < 4; j++) {
                        acc[r][j] = a[j];
                    }
                }
            }
        }
    }
}
#pragma GCC diagnostic pop

/* F_dotf_avx2 and F_dotf_avx512 of a nibble format with block type BT (fields qs, d) and the
 * expressions QH(b) (the qh bits as a uint32, or 0) and M(b) (the float min, or 0.0f) of a
 * block pointer b: two blocks per iteration into separate accumulators.  The AVX-512 kernel
 * reads d at offset 0 and (HASM) the min at offset 2 as f16 (fdy_df_h2f) */
#define FDY_DF_NIB_KERNELS(F, BT, HBIT, HASM, TBL, OFF, QH, M)                                 \
    _Static_assert(offsetof(BT, d) == 0, #F ": d at offset 0 (fdy_df_h2f)");                 \
    FDY_DF_TARGET_AVX2 static float F##_dotf_avx2(const void *w, const float *x, int64_t n) { \
        const BT *b = (const BT *)w;                                                          \
        const int64_t nb = n / 32;                                                            \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                           \
        int64_t i = 0;                                                                        \
        for (; i + 2 <= nb; i += 2) {                                                         \
            fdy_df_nibblk_256(b[i].qs, QH(b + i), fdy_df_half(b[i].d), M(b + i), HBIT, HASM,  \
                              TBL, OFF, x + 32 * i, &a0, &a1);                                \
            fdy_df_nibblk_256(b[i + 1].qs, QH(b + i + 1), fdy_df_half(b[i + 1].d),           \
                              M(b + i + 1), HBIT, HASM, TBL, OFF, x + 32 * i + 32, &a2, &a3); \
        }                                                                                     \
        if (i < nb) {                                                                         \
            fdy_df_nibblk_256(b[i].qs, QH(b + i), fdy_df_half(b[i].d), M(b + i), HBIT, HASM,  \
                              TBL, OFF, x + 32 * i, &a0, &a1);                                \
        }                                                                                     \
        return fdy_df_hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));  \
    }                                                                                         \
    FDY_DF_TARGET_AVX512 static float F##_dotf_avx512(const void *w, const float *x,         \
                                                      int64_t n) {                           \
        const BT *b = (const BT *)w;                                                          \
        const int64_t nb = n / 32;                                                            \
        __m512 tlo, thi;                                                                      \
        fdy_df_nibtables_512(TBL, OFF, &tlo, &thi);                                           \
        if (!(HBIT)) { /* the row-range kernel's arithmetic (and bits) */                     \
            float y = 0.0f;                                                                   \
            fdy_df_nibbc_rows((const uint8_t *)w, (size_t)(nb * (int64_t)sizeof(BT)), x, n,   \
                              &y, 1, (int)sizeof(BT), (int)offsetof(BT, qs), HASM, tlo);      \
            return y;                                                                         \
        }                                                                                     \
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                           \
        int64_t i = 0;                                                                        \
        for (; i + 2 <= nb; i += 2) {                                                         \
            fdy_stream_prefetch(b + i, 1);                                                    \
            fdy_df_nibblk_512(b[i].qs, QH(b + i), fdy_df_h2f(b + i),                          \
                              fdy_df_h2f((const uint8_t *)(b + i) + 2), HBIT, HASM, tlo, thi, \
                              x + 32 * i, &a0, &a1);                                          \
            fdy_df_nibblk_512(b[i + 1].qs, QH(b + i + 1), fdy_df_h2f(b + i + 1),              \
                              fdy_df_h2f((const uint8_t *)(b + i + 1) + 2), HBIT, HASM, tlo,  \
                              thi, x + 32 * i + 32, &a2, &a3);                                \
        }                                                                                     \
        if (i < nb) {                                                                         \
            fdy_df_nibblk_512(b[i].qs, QH(b + i), fdy_df_h2f(b + i),                          \
                              fdy_df_h2f((const uint8_t *)(b + i) + 2), HBIT, HASM, tlo, thi, \
                              x + 32 * i, &a0, &a1);                                          \
        }                                                                                     \
        return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1),                      \
                                                  _mm512_add_ps(a2, a3)));                    \
    }                                                                                         \
    FDY_DF_TARGET_AVX512 static void F##_dotf_rows_avx512(const void *w, size_t rb,           \
                                                         const float *x, int64_t n,           \
                                                         float *out, int64_t rows) {          \
        const int64_t nb = n / 32;                                                            \
        __m512 tlo, thi;                                                                      \
        fdy_df_nibtables_512(TBL, OFF, &tlo, &thi);                                           \
        if (!(HBIT)) {                                                                        \
            fdy_df_nibbc_rows((const uint8_t *)w, rb, x, n, out, rows, (int)sizeof(BT),       \
                              (int)offsetof(BT, qs), HASM, tlo);                              \
            return;                                                                           \
        }                                                                                     \
        int64_t r = 0;                                                                        \
        for (; r + 4 <= rows; r += 4) {                                                       \
            const uint8_t *p0 = (const uint8_t *)w + (size_t)r * rb;                          \
            const BT *b0 = (const BT *)p0, *b1 = (const BT *)(p0 + rb);                       \
            const BT *b2 = (const BT *)(p0 + 2 * rb), *b3 = (const BT *)(p0 + 3 * rb);        \
            const __m512 z = _mm512_setzero_ps();                                             \
            __m512 a00 = z, a01 = z, a02 = z, a03 = z, a10 = z, a11 = z, a12 = z, a13 = z;    \
            __m512 a20 = z, a21 = z, a22 = z, a23 = z, a30 = z, a31 = z, a32 = z, a33 = z;    \
            int64_t i = 0;                                                                    \
            for (; i + 2 <= nb; i += 2) {                                                     \
                fdy_stream_prefetch(b0 + i, 1);                                               \
                fdy_stream_prefetch(b1 + i, 1);                                               \
                fdy_stream_prefetch(b2 + i, 1);                                               \
                fdy_stream_prefetch(b3 + i, 1);                                               \
                FDY_DF_NIB_BLK512(HBIT, HASM, QH, b0 + i, x + 32 * i, a00, a01);          \
                FDY_DF_NIB_BLK512(HBIT, HASM, QH, b1 + i, x + 32 * i, a10, a11);          \
                FDY_DF_NIB_BLK512(HBIT, HASM, QH, b2 + i, x + 32 * i, a20, a21);          \
                FDY_DF_NIB_BLK512(HBIT, HASM, QH, b3 + i, x + 32 * i, a30, a31);          \
                FDY_DF_NIB_BLK512(HBIT, HASM, QH, b0 + i + 1, x + 32 * i + 32, a02, a03); \
                FDY_DF_NIB_BLK512(HBIT, HASM, QH, b1 + i + 1, x + 32 * i + 32, a12, a13); \
                FDY_DF_NIB_BLK512(HBIT, HASM, QH, b2 + i + 1, x + 32 * i + 32, a22, a23); \
                FDY_DF_NIB_BLK512(HBIT, HASM, QH, b3 + i + 1, x + 32 * i + 32, a32, a33); \
            }                                                                                 \
            if (i < nb) {                                                                     \
                FDY_DF_NIB_BLK512(HBIT, HASM, QH, b0 + i, x + 32 * i, a00, a01);          \
                FDY_DF_NIB_BLK512(HBIT, HASM, QH, b1 + i, x + 32 * i, a10, a11);          \
                FDY_DF_NIB_BLK512(HBIT, HASM, QH, b2 + i, x + 32 * i, a20, a21);          \
                FDY_DF_NIB_BLK512(HBIT, HASM, QH, b3 + i, x + 32 * i, a30, a31);          \
            }                                                                                 \
            fdy_df_reduce4_512(_mm512_add_ps(_mm512_add_ps(a00, a01), _mm512_add_ps(a02, a03)), \
                               _mm512_add_ps(_mm512_add_ps(a10, a11), _mm512_add_ps(a12, a13)), \
                               _mm512_add_ps(_mm512_add_ps(a20, a21), _mm512_add_ps(a22, a23)), \
                               _mm512_add_ps(_mm512_add_ps(a30, a31), _mm512_add_ps(a32, a33)), \
                               out + r);                                                      \
        }                                                                                     \
        for (; r < rows; r++) {                                                               \
            out[r] = F##_dotf_avx512((const uint8_t *)w + (size_t)r * rb, x, n);              \
        }                                                                                     \
    }

/* ---- vec_dot_f32_rows of a 32-element nibble format with w = d * (code - 8) (q4_0): AVX2 ----
 * The activation is rearranged once per call, so that the codes need no widening shuffle.
 * The 32 code bytes of two blocks, as eight 32-bit lanes (lanes 0..3: block i, 4..7: block
 * i + 1), hold in lane l at bits 4t .. 4t+3 (t = 0..7) the code of element 4 (l % 4) + t / 2 +
 * 16 (t % 2) of its block.  XOR 0x88 turns every code into code - 8 as a 4-bit two's
 * complement value; a byte shuffle puts the nibble of t at bits 28..31 of each lane with zeros
 * below (of the codes shifted up by 4 for even t, of the high nibbles in place for odd t), so
 * the lane is the integer (code - 8) * 2^28 and converts to float exactly.  The rearranged
 * activation holds, per pair of blocks and t, the 8 matching x * 2^-28: a multiply-add forms
 * the exact product (code - 8) * x, as the one-row kernel does (x * 2^-28 is exact for |x| >=
 * 2^-98; below it is subnormal and the product may be off by at most 2^-119 d).
 * Per row: two chains of four products per pair of blocks (even t, odd t), their sum times
 * the pair's scales (block i's d in lanes 0..3, block i + 1's in 4..7) added into one
 * accumulator pair by pair, the lanes summed at the end as fdy_df_hsum256 does.  The
 * activation is rearranged FDY_DF_ROWS_SPAN elements at a time (one span for rows up to that
 * long); two rows per pass share its loads, and the kernel prefetches both rows' streams
 * (FDY_DF_ROWS_PREFETCH). */
/* software prefetch distance of the two rows' streams, in bytes, for rows of rb bytes: two
 * rows ahead (the next pass's pair at the same offset), at least 1536.  Read from memory with
 * one thread, the q4_0 kernel ran at 230-316 ns per 2048-wide row without prefetch and 164-184
 * ns with 1536 bytes; 4096-wide rows of q4_0 and q8_0 gained another 1.2-1.4x from two rows
 * ahead over 1536 bytes (docs/CPU_NOTES.md item 27) */
#define FDY_DF_ROWS_PREFETCH(rb) ((rb) > 768 ? 2 * (rb) : 1536)

/* a 4 x 4 transpose in each 128-bit half: rows k = 0..3 are lo[4k .. 4k+3] (lanes 0..3) and
 * hi[4k .. 4k+3] (lanes 4..7; zeros when hi is NULL); column u, times sc, is stored at xp +
 * stride * u */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_cols4(const float *lo, const float *hi, __m256 sc,
                                                  float *xp, int stride) {
    __m256 R[4];
    for (int k = 0; k < 4; k++) {
        R[k] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(lo + 4 * k)),
                                    hi ? _mm_loadu_ps(hi + 4 * k) : _mm_setzero_ps(), 1);
    }
    const __m256 t0 = _mm256_unpacklo_ps(R[0], R[1]), t1 = _mm256_unpackhi_ps(R[0], R[1]);
    const __m256 t2 = _mm256_unpacklo_ps(R[2], R[3]), t3 = _mm256_unpackhi_ps(R[2], R[3]);
    _mm256_store_ps(xp, _mm256_mul_ps(_mm256_shuffle_ps(t0, t2, 0x44), sc));
    _mm256_store_ps(xp + stride, _mm256_mul_ps(_mm256_shuffle_ps(t0, t2, 0xEE), sc));
    _mm256_store_ps(xp + 2 * stride, _mm256_mul_ps(_mm256_shuffle_ps(t1, t3, 0x44), sc));
    _mm256_store_ps(xp + 3 * stride, _mm256_mul_ps(_mm256_shuffle_ps(t1, t3, 0xEE), sc));
}

/* the rearranged activation of the pair of blocks at x (both = 0: one block, zeros for the
 * second): xp[8 t + l] = x * scale of lane l's element for t (scale: a power of two); column u
 * of half h (x + 16 h: the elements of odd t when h = 1) is t = 2 u + h */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q4s_prep(const float *x, int both, float scale,
                                                     float *xp) {
    for (int h = 0; h < 2; h++) {
        fdy_df_cols4(x + 16 * h, both ? x + 32 + 16 * h : NULL, _mm256_set1_ps(scale),
                     xp + 8 * h, 16);
    }
}

/* the code bytes of the pair of blocks at b (block bytes bb, codes at qs), XOR x (0x88 for
 * code - 8 as 4-bit two's complement values, 0 for the codes as they are) */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE __m256i fdy_df_q4s_codes(const uint8_t *b, int bb, int qs,
                                                         int both, int x) {
    const __m128i lo = _mm_loadu_si128((const __m128i *)(b + qs));
    const __m128i hi = both ? _mm_loadu_si128((const __m128i *)(b + bb + qs)) : _mm_setzero_si128();
    return _mm256_xor_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1),
                            _mm256_set1_epi8((char)x));
}

/* the pair's scales: d (f16 at offset 0) of block i in lanes 0..3, of block i + 1 in 4..7 */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE __m256 fdy_df_q4s_scales(const uint8_t *b, int bb, int both) {
    uint16_t d0, d1 = 0;
    memcpy(&d0, b, 2);
    if (both) {
        memcpy(&d1, b + bb, 2);
    }
    const __m128 d = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)d0 | (uint32_t)d1 << 16)));
    return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(d),
                                    _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
}

/* the vpermps index of a group pair: lanes 0..3 take lane g of a vector of 8 group scales,
 * lanes 4..7 lane g + 1 (the layout of a pair of groups in fdy_df_nib_place2 and
 * fdy_df_q8s_place2) */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE __m256i fdy_df_pair_lanes(int g) {
    return _mm256_setr_epi32(g, g, g, g, g + 1, g + 1, g + 1, g + 1);
}

/* byte u of each 32-bit lane to bits 24..31, zeros below */
#define FDY_DF_Q4S_SEL(u)                                                                  \
    _mm256_setr_epi8(-128, -128, -128, (u), -128, -128, -128, 4 + (u), -128, -128, -128,    \
                     8 + (u), -128, -128, -128, 12 + (u), -128, -128, -128, (u), -128, -128, \
                     -128, 4 + (u), -128, -128, -128, 8 + (u), -128, -128, -128, 12 + (u))

/* q4_1 (w = d * code + m): the pair's d * 2^-24 and m (f16 at offsets 0 and 2), block i's in
 * lanes 0..3, block i + 1's in 4..7 (zeros for a missing second block) */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q4m_scales(const uint8_t *b, int bb, int both,
                                                        __m256 *d, __m256 *m) {
    uint32_t h0, h1 = 0;
    memcpy(&h0, b, 4);
    if (both) {
        memcpy(&h1, b + bb, 4);
    }
    const __m256 dm = _mm256_castps128_ps256(
        _mm_cvtph_ps(_mm_insert_epi32(_mm_cvtsi32_si128((int)h0), (int)h1, 1))); /* d0 m0 d1 m1 */
    *d = _mm256_mul_ps(_mm256_permutevar8x32_ps(dm, _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)),
                       _mm256_set1_ps(0x1p-24f));
    *m = _mm256_permutevar8x32_ps(dm, _mm256_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3));
}

/* the placement and products of fdy_df_nib_pair2 (below) from the code bytes of even t (vl,
 * ul: byte u of lane l holds element 4 (l % 4) + u of its block) and of odd t (vh, uh: element
 * + 16) of the two rows.  Byte t / 2 of each lane goes to the lane's bits 24..31 with zeros
 * below: with hasm = 0 the lane is the signed byte times 2^24 (q4_0: (code - 8) * 2^28,
 * iq4_xs: its grid value * 2^24) and the sum of products times dv[0] / du[0] goes into the
 * accumulator; hasm = 1 is q4_1's weight (see fdy_df_nib_pair2) */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_nib_place2(__m256i vl, __m256i vh, __m256i ul,
                                                        __m256i uh, int hasm,
                                                        const __m256 *dv, const __m256 *mv,
                                                        const __m256 *du, const __m256 *mu,
                                                        const float *xp, __m256 *a0,
                                                        __m256 *a1) {
    __m256 sv[2], su[2];
#pragma GCC unroll 8
    for (int t = 0; t < 8; t++) {
        const __m256i sel = FDY_DF_Q4S_SEL(t >> 1);
        const __m256 X = _mm256_load_ps(xp + 8 * t);
        __m256 wv = _mm256_cvtepi32_ps(_mm256_shuffle_epi8(t & 1 ? vh : vl, sel));
        __m256 wu = _mm256_cvtepi32_ps(_mm256_shuffle_epi8(t & 1 ? uh : ul, sel));
        if (hasm) {
            wv = _mm256_fmadd_ps(wv, dv[t & 1], mv[t & 1]);
            wu = _mm256_fmadd_ps(wu, du[t & 1], mu[t & 1]);
        }
        if (t < 2) {
            sv[t] = _mm256_mul_ps(wv, X);
            su[t] = _mm256_mul_ps(wu, X);
        } else {
            sv[t & 1] = _mm256_fmadd_ps(wv, X, sv[t & 1]);
            su[t & 1] = _mm256_fmadd_ps(wu, X, su[t & 1]);
        }
    }
    if (hasm) {
        *a0 = _mm256_add_ps(_mm256_add_ps(sv[0], sv[1]), *a0);
        *a1 = _mm256_add_ps(_mm256_add_ps(su[0], su[1]), *a1);
    } else {
        *a0 = _mm256_fmadd_ps(_mm256_add_ps(sv[0], sv[1]), dv[0], *a0);
        *a1 = _mm256_fmadd_ps(_mm256_add_ps(su[0], su[1]), du[0], *a1);
    }
}

/* one pair of blocks of two rows, codes v, u (from fdy_df_q4s_codes) into a0, a1.
 * q4_0 (hasm = 0): codes XOR 0x88; the byte shuffle of the codes shifted up by 4 (even t) or
 * of the high nibbles in place (odd t) puts code - 8 at bits 28..31 with zeros below, the
 * integer (code - 8) * 2^28; the products with x * 2^-28 are summed and the sum times the
 * pair's scales dv[0], du[0] (fdy_df_q4s_scales) added into the accumulator.
 * q4_1 (hasm = 1): codes as they are; the shuffle of the low or high nibbles puts the code at
 * bits 24..27, the integer code * 2^24, and fma(code * 2^24, d * 2^-24, m) (dv[t % 2], mv[t %
 * 2] from fdy_df_q4m_scales) is the one-row kernel's weight fma(code, d, m) exactly (d *
 * 2^-24 is exact: d >= 2^-24 as an f16); x is rearranged unscaled and the products are added
 * into the accumulator.  Two chains per row: even t and odd t. */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_nib_pair2(__m256i v, __m256i u, int hasm,
                                                       const __m256 *dv, const __m256 *mv,
                                                       const __m256 *du, const __m256 *mu,
                                                       const float *xp, __m256 *a0,
                                                       __m256 *a1) {
    const __m256i mask = _mm256_set1_epi8(hasm ? 0x0F : (char)0xF0);
    /* code t's nibble in the selected byte: even t from lo, odd t from hi */
    const __m256i vl = _mm256_and_si256(hasm ? v : _mm256_slli_epi32(v, 4), mask);
    const __m256i vh = _mm256_and_si256(hasm ? _mm256_srli_epi16(v, 4) : v, mask);
    const __m256i ul = _mm256_and_si256(hasm ? u : _mm256_slli_epi32(u, 4), mask);
    const __m256i uh = _mm256_and_si256(hasm ? _mm256_srli_epi16(u, 4) : u, mask);
    fdy_df_nib_place2(vl, vh, ul, uh, hasm, dv, mv, du, mu, xp, a0, a1);
}


/* ---- q8_0 (w = d * code, 32 signed code bytes after the f16 d): one block is eight 32-bit
 * lanes of 4 codes; the byte shuffle puts code u of each lane (element 4 l + u) at bits
 * 24..31 with zeros below, the integer code * 2^24, and x is rearranged as x * 2^-24 (exact
 * for |x| >= 2^-102).  Per row: two chains of two products per block, their sum times d
 * added into the accumulator block by block ---- */

/* the rearranged activation of the block at x: xp[8 u + l] = x[4 l + u] * 2^-24 */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q8s_prep(const float *x, float *xp) {
    fdy_df_cols4(x, x + 16, _mm256_set1_ps(0x1p-24f), xp, 8);
}

/* the same for the n chunks of 32 elements at x (the units of fdy_df_q8s_place2 in q3_k and
 * q2_k), times scale */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q8s_prep_chunks(const float *x, int n, float scale,
                                                             float *xp) {
    for (int c = 0; c < n; c++) {
        fdy_df_cols4(x + 32 * c, x + 32 * c + 16, _mm256_set1_ps(scale), xp + 32 * c, 8);
    }
}

/* 32 signed code bytes of each of two rows (v, u: byte 4 l + u of the vector is element 4 l +
 * u of the unit, lanes 0..3 and 4..7 in the two 128-bit halves) against the rearranged x at
 * xp: code u of each lane goes to the lane's bits 24..31 with zeros below (the integer code *
 * 2^24, converted exactly), two chains of two products per row.  hasm = 0: their sum times
 * the lanes' scales dv / du is added into a0 / a1 (q8_0: the block's d in every lane; q3_k: a
 * group of 16 per 128-bit half); hasm = 1: each weight is fma(code * 2^24, dv, mv) (q2_k: dv =
 * dl * 2^-24 and mv = -ml of the lane's group, the decode's weight exactly), x is rearranged
 * unscaled and the sum of products is added */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q8s_place2(__m256i v, __m256i u, int hasm,
                                                        __m256 dv, __m256 mv, __m256 du,
                                                        __m256 mu, const float *xp, __m256 *a0,
                                                        __m256 *a1) {
    __m256 sv[2], su[2];
#pragma GCC unroll 4
    for (int t = 0; t < 4; t++) {
        const __m256i sel = FDY_DF_Q4S_SEL(t);
        const __m256 X = _mm256_load_ps(xp + 8 * t);
        __m256 qv = _mm256_cvtepi32_ps(_mm256_shuffle_epi8(v, sel));
        __m256 qu = _mm256_cvtepi32_ps(_mm256_shuffle_epi8(u, sel));
        if (hasm) {
            qv = _mm256_fmadd_ps(qv, dv, mv);
            qu = _mm256_fmadd_ps(qu, du, mu);
        }
        if (t < 2) {
            sv[t] = _mm256_mul_ps(qv, X);
            su[t] = _mm256_mul_ps(qu, X);
        } else {
            sv[t & 1] = _mm256_fmadd_ps(qv, X, sv[t & 1]);
            su[t & 1] = _mm256_fmadd_ps(qu, X, su[t & 1]);
        }
    }
    if (hasm) {
        *a0 = _mm256_add_ps(_mm256_add_ps(sv[0], sv[1]), *a0);
        *a1 = _mm256_add_ps(_mm256_add_ps(su[0], su[1]), *a1);
    } else {
        *a0 = _mm256_fmadd_ps(_mm256_add_ps(sv[0], sv[1]), dv, *a0);
        *a1 = _mm256_fmadd_ps(_mm256_add_ps(su[0], su[1]), du, *a1);
    }
}

/* q8_0: one block of two rows at b0, b1 (d at offset 0, codes at qs) into a0, a1 */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q8s_step2(const uint8_t *b0, const uint8_t *b1,
                                                       int qs, const float *xp, __m256 *a0,
                                                       __m256 *a1) {
    uint16_t h0, h1;
    memcpy(&h0, b0, 2);
    memcpy(&h1, b1, 2);
    fdy_df_q8s_place2(_mm256_loadu_si256((const __m256i *)(b0 + qs)),
                      _mm256_loadu_si256((const __m256i *)(b1 + qs)), 0,
                      _mm256_set1_ps(fdy_df_half(h0)), _mm256_setzero_ps(),
                      _mm256_set1_ps(fdy_df_half(h1)), _mm256_setzero_ps(), xp, a0, a1);
}

/* the one-unit steps and activation rearrangements of q4_0, q4_1 and q8_0, in the form of
 * FDY_DF_ROWS_DRIVER (full = 0: a pair's odd last block) */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q4_0_step2(const uint8_t *b0, const uint8_t *b1,
                                                        int bb, int qs, int full,
                                                        const float *xp, __m256 *a0,
                                                        __m256 *a1) {
    const __m256 d0 = fdy_df_q4s_scales(b0, bb, full), d1 = fdy_df_q4s_scales(b1, bb, full);
    fdy_df_nib_pair2(fdy_df_q4s_codes(b0, bb, qs, full, 0x88),
                     fdy_df_q4s_codes(b1, bb, qs, full, 0x88), 0, &d0, NULL, &d1, NULL, xp, a0,
                     a1);
}

FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q4_1_step2(const uint8_t *b0, const uint8_t *b1,
                                                        int bb, int qs, int full,
                                                        const float *xp, __m256 *a0,
                                                        __m256 *a1) {
    __m256 d0[2], m0[2], d1[2], m1[2];
    fdy_df_q4m_scales(b0, bb, full, &d0[0], &m0[0]);
    fdy_df_q4m_scales(b1, bb, full, &d1[0], &m1[0]);
    d0[1] = d0[0], m0[1] = m0[0], d1[1] = d1[0], m1[1] = m1[0];
    fdy_df_nib_pair2(fdy_df_q4s_codes(b0, bb, qs, full, 0), fdy_df_q4s_codes(b1, bb, qs, full, 0),
                     1, d0, m0, d1, m1, xp, a0, a1);
}

FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q8_0_step2(const uint8_t *b0, const uint8_t *b1,
                                                        int bb, int qs, int full,
                                                        const float *xp, __m256 *a0,
                                                        __m256 *a1) {
    (void)bb;
    (void)full;
    fdy_df_q8s_step2(b0, b1, qs, xp, a0, a1);
}

FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q4_0_prep(const float *x, int full, float *xp) {
    fdy_df_q4s_prep(x, full, 0x1p-28f, xp);
}

FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q4_1_prep(const float *x, int full, float *xp) {
    fdy_df_q4s_prep(x, full, 1.0f, xp);
}

FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_q8_0_prep(const float *x, int full, float *xp) {
    (void)full;
    fdy_df_q8s_prep(x, xp);
}

#ifdef FDY_SIMD_KQUANTS_H
/* ---- q4_k and q5_k (simd_kquants.h included first): w = dl * q - ml per group of 32, dl = d
 * * sc and ml = dmin * m as the decode forms them (the 12-byte scale packing the two formats
 * share) ---- */

/* dl[g] * s for g < 8, then -ml[g] at dl[8 + g], of the super-block at blk (s: a power of two,
 * so dl * s is d * s * sc with the rounding of d * sc) */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_kscales(const uint8_t *blk, float *dl, float s) {
    const __m128i sm = fdy_kq_scale_min_q4_k(blk);
    uint16_t h[2];
    memcpy(h, blk, 4);
    const __m256 dd = _mm256_set1_ps(fdy_df_half(h[0]) * s);
    const __m256 dm = _mm256_set1_ps(-fdy_df_half(h[1]));
    _mm256_storeu_ps(dl, _mm256_mul_ps(dd, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sm))));
    _mm256_storeu_ps(dl + 8, _mm256_mul_ps(
                                 dm, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(sm, 8)))));
    fdy_df_spill(dl);
}

/* The row-range step (FDY_DF_ROWS_DRIVER, one super-block of two rows per unit) on an
 * activation rearranged once per call.  The 32 code bytes of a chunk c hold group 2c in their
 * low nibbles and group 2c + 1 in their high ones; masked (and shifted) to one code per byte,
 * with q5_k's fifth bit (qh byte l, bit g, for element l of group g) moved to bit 4, a byte
 * shuffle (FDY_DF_Q4S_SEL(t)) puts in lane l the code of element 16 (l / 4) + 4 (l % 4) + t of
 * the group at bits 24..28 with zeros elsewhere, the integer code * 2^24, so no widening
 * shuffle is needed.  fma(code * 2^24, dl * 2^-24, -ml) is fma(code, dl, -ml), the one-row q4_k
 * kernel's weight, exactly (dl * 2^-24 is exact: dl is d * sc with d an f16); the rearranged
 * activation holds per group and t those 8 elements (fdy_df_cols4), and each weight vector
 * meets its 8 x in one multiply-add.  Per row two chains of products, added into the row's
 * accumulator once per super-block.  q4_k in cache (2048-wide rows, 1 thread): 168-171 ns per
 * row against 222 for its one-row kernel (docs/CPU_NOTES.md item 34). */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_k45_prep(const float *x, int full, float *xp) {
    (void)full;
    for (int g = 0; g < 8; g++) {
        fdy_df_cols4(x + 32 * g, x + 32 * g + 16, _mm256_set1_ps(1.0f), xp + 32 * g, 8);
    }
}

/* one group of two rows: codes v, u (one per byte), scales dv / mv and du / mu as
 * fdy_df_kscales writes them with s = 2^-24, the group's rearranged x at xp, into the chains
 * sv, su (first: start them) */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_k45_group2(__m256i v, __m256i u, float dv,
                                                        float mv, float du, float mu,
                                                        const float *xp, __m256 *sv,
                                                        __m256 *su, int first) {
    const __m256 Dv = _mm256_set1_ps(dv), Mv = _mm256_set1_ps(mv);
    const __m256 Du = _mm256_set1_ps(du), Mu = _mm256_set1_ps(mu);
#pragma GCC unroll 4
    for (int t = 0; t < 4; t++) {
        const __m256i sel = FDY_DF_Q4S_SEL(t);
        const __m256 X = _mm256_load_ps(xp + 8 * t);
        const __m256 wv = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_shuffle_epi8(v, sel)), Dv, Mv);
        const __m256 wu = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_shuffle_epi8(u, sel)), Du, Mu);
        if (first && t < 2) {
            sv[t] = _mm256_mul_ps(wv, X);
            su[t] = _mm256_mul_ps(wu, X);
        } else {
            sv[t & 1] = _mm256_fmadd_ps(wv, X, sv[t & 1]);
            su[t & 1] = _mm256_fmadd_ps(wu, X, su[t & 1]);
        }
    }
}

/* bit g of each byte of h moved to bit 4, zeros elsewhere (g a constant) */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE __m256i fdy_df_bit_to_4(__m256i h, int g) {
    const __m256i b = _mm256_and_si256(h, _mm256_set1_epi8((char)(1 << g)));
    return g <= 4 ? _mm256_slli_epi16(b, 4 - g) : _mm256_srli_epi16(b, g - 4);
}

/* the super-blocks at b0, b1 (codes at qs, q5_k's fifth bits at qh, qh < 0 for q4_k) into a0,
 * a1 */
FDY_DF_TARGET_AVX2 FDY_DF_INLINE void fdy_df_k45_step2(const uint8_t *b0, const uint8_t *b1,
                                                       int qs, int qh, const float *xp,
                                                       __m256 *a0, __m256 *a1) {
    _Alignas(32) float s0[16], s1[16];
    fdy_df_kscales(b0, s0, 0x1p-24f);
    fdy_df_kscales(b1, s1, 0x1p-24f);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i hv = qh >= 0 ? _mm256_loadu_si256((const __m256i *)(b0 + qh)) : m4;
    const __m256i hu = qh >= 0 ? _mm256_loadu_si256((const __m256i *)(b1 + qh)) : m4;
    __m256 sv[2], su[2];
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(b0 + qs + 32 * c));
        const __m256i u = _mm256_loadu_si256((const __m256i *)(b1 + qs + 32 * c));
        __m256i vl = _mm256_and_si256(v, m4), ul = _mm256_and_si256(u, m4);
        __m256i vh = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        __m256i uh = _mm256_and_si256(_mm256_srli_epi16(u, 4), m4);
        if (qh >= 0) {
            vl = _mm256_or_si256(vl, fdy_df_bit_to_4(hv, 2 * c));
            ul = _mm256_or_si256(ul, fdy_df_bit_to_4(hu, 2 * c));
            vh = _mm256_or_si256(vh, fdy_df_bit_to_4(hv, 2 * c + 1));
            uh = _mm256_or_si256(uh, fdy_df_bit_to_4(hu, 2 * c + 1));
        }
        fdy_df_k45_group2(vl, ul, s0[2 * c], s0[8 + 2 * c], s1[2 * c], s1[8 + 2 * c],
                          xp + 64 * c, sv, su, c == 0);
        fdy_df_k45_group2(vh, uh, s0[2 * c + 1], s0[9 + 2 * c], s1[2 * c + 1], s1[9 + 2 * c],
                          xp + 64 * c + 32, sv, su, 0);
    }
    *a0 = _mm256_add_ps(_mm256_add_ps(sv[0], sv[1]), *a0);
    *a1 = _mm256_add_ps(_mm256_add_ps(su[0], su[1]), *a1);
}
#endif /* FDY_SIMD_KQUANTS_H */

/* NAME(w, row_bytes, x, n, out, rows), the AVX2 row-range kernel of a format with blocks of
 * BB bytes and BE elements (codes at QS): rows in batches of 64, two per pass (an odd last row
 * twice), x rearranged once per span by PREP(x, full, xp) one unit (UPB blocks, UPB * BE
 * floats) at a time, STEP(b0, b1, BB, QS, full, xp, &a0, &a1) adding one unit of two rows into
 * their accumulators (full = 0: a last unit with fewer blocks), the lanes summed at the end.
 * Each unit prefetches one line per 64 of its bytes in both rows (one for the units of q4_0,
 * q4_1 and q8_0, of 34-40 bytes; three or four for the 144, 176 and 210 bytes of q4_k, q5_k and q6_k) */
#define FDY_DF_ROWS_DRIVER(NAME, BB, BE, QS, UPB, PREP, STEP)                                 \
    FDY_DF_TARGET_AVX2 static void NAME(const void *wv, size_t row_bytes, const float *x,     \
                                        int64_t n, float *out, int64_t rows) {                \
        const uint8_t *w = (const uint8_t *)wv;                                               \
        const size_t pf = FDY_DF_ROWS_PREFETCH(row_bytes);                                  \
        _Alignas(32) float xp[FDY_DF_ROWS_SPAN];                                              \
        __m256 acc[FDY_DF_ROWS_BATCH];                                                        \
        for (int64_t r0 = 0; r0 < rows; r0 += FDY_DF_ROWS_BATCH) {                            \
            const int64_t nr = rows - r0 < FDY_DF_ROWS_BATCH ? rows - r0 : FDY_DF_ROWS_BATCH; \
            for (int64_t k0 = 0; k0 < n; k0 += FDY_DF_ROWS_SPAN) {                            \
                const int64_t nb =                                                            \
                    (n - k0 < FDY_DF_ROWS_SPAN ? n - k0 : FDY_DF_ROWS_SPAN) / (BE);           \
                if (r0 == 0 || n > FDY_DF_ROWS_SPAN) {                                        \
                    for (int64_t p = 0; (UPB) * p < nb; p++) {                                \
                        PREP(x + k0 + (BE) * (UPB) * p, (UPB) * (p + 1) <= nb,                \
                             xp + (BE) * (UPB) * p);                                          \
                    }                                                                         \
                }                                                                             \
                for (int64_t r = 0; r < nr; r += 2) {                                         \
                    const int64_t r1 = r + 1 < nr ? r + 1 : r;                                \
                    const size_t off = (size_t)(k0 / (BE) * (BB));                            \
                    const uint8_t *b0 = w + (size_t)(r0 + r) * row_bytes + off;               \
                    const uint8_t *b1 = w + (size_t)(r0 + r1) * row_bytes + off;              \
                    __m256 a0 = k0 ? acc[r] : _mm256_setzero_ps();                            \
                    __m256 a1 = k0 ? acc[r1] : _mm256_setzero_ps();                           \
                    int64_t p = 0;                                                            \
                    for (; (UPB) * (p + 1) <= nb; p++, b0 += (UPB) * (BB), b1 += (UPB) * (BB)) { \
                        for (int o = 0; o < (UPB) * (BB); o += 64) {                          \
                            _mm_prefetch((const char *)(b0 + pf + o), _MM_HINT_T0);           \
                            _mm_prefetch((const char *)(b1 + pf + o), _MM_HINT_T0);           \
                        }                                                                     \
                        STEP(b0, b1, BB, QS, 1, xp + (BE) * (UPB) * p, &a0, &a1);             \
                    }                                                                         \
                    if ((UPB) * p < nb) {                                                     \
                        STEP(b0, b1, BB, QS, 0, xp + (BE) * (UPB) * p, &a0, &a1);             \
                    }                                                                         \
                    acc[r] = a0;                                                              \
                    acc[r1] = a1;                                                             \
                }                                                                             \
            }                                                                                 \
            for (int64_t r = 0; r < nr; r++) {                                                \
                out[r0 + r] = fdy_df_hsum256(acc[r]);                                         \
            }                                                                                 \
        }                                                                                     \
    }

/* F_vec_dot_f32_rows of F (block type BT, codes at byte QS of a block; F in q4_0, q4_1, q8_0
 * uses the steps above, another format defines fdy_df_F_prep / fdy_df_F_step2 first, as
 * q4_k.c, q5_k.c and q6_k.c do): the driver on the AVX2 tier, F_vec_dot_f32 row by row on the
 * others; UPB: blocks per unit.  FDY_DF_ROWS: the codes in field qs. */
#define FDY_DF_ROWS(F, BT, BE, UPB) FDY_DF_ROWS_QS(F, BT, BE, (int)offsetof(BT, qs), UPB)
#define FDY_DF_ROWS_QS(F, BT, BE, QS, UPB)                                                    \
    FDY_DF_ROWS_DRIVER(F##_dotf_rows_avx2, (int)sizeof(BT), BE, QS, UPB, fdy_df_##F##_prep,  \
                       fdy_df_##F##_step2)                                                    \
    static void F##_vec_dot_f32_rows(const void *w, size_t row_bytes, const float *x,         \
                                     int64_t n, float *out, int64_t rows) {                   \
        if (fdy_df_tier() == FDY_DF_AVX2) {                                                   \
            F##_dotf_rows_avx2(w, row_bytes, x, n, out, rows);                                \
            return;                                                                           \
        }                                                                                     \
        fdy_df_rows_each(F##_vec_dot_f32, w, row_bytes, x, n, out, rows);                     \
    }

/* F_vec_dot_f32_rows of a format with the AVX2 row-range driver (as FDY_DF_ROWS) and an AVX-512
 * row-range kernel F_dotf_rows_avx512 (the nibble formats' of FDY_DF_NIB_KERNELS, q8_0's): AVX-512
 * CPUs run the latter, AVX2 ones the driver (docs/CPU_NOTES.md items 27 and 44) */
#define FDY_DF_ROWS_WIDE(F, BT, BE, UPB)                                                       \
    FDY_DF_ROWS_DRIVER(F##_dotf_rows_avx2, (int)sizeof(BT), BE, (int)offsetof(BT, qs), UPB,   \
                       fdy_df_##F##_prep, fdy_df_##F##_step2)                                 \
    static void F##_vec_dot_f32_rows(const void *w, size_t row_bytes, const float *x,         \
                                     int64_t n, float *out, int64_t rows) {                   \
        switch (fdy_df_tier()) {                                                              \
        case FDY_DF_AVX512: F##_dotf_rows_avx512(w, row_bytes, x, n, out, rows); return;      \
        case FDY_DF_AVX2: F##_dotf_rows_avx2(w, row_bytes, x, n, out, rows); return;          \
        default: break;                                                                       \
        }                                                                                     \
        fdy_df_rows_each(F##_vec_dot_f32, w, row_bytes, x, n, out, rows);                     \
    }

/* F_vec_dot_f32_rows of a nibble format without an AVX2 row-range kernel: the four-row
 * kernel on AVX-512 CPUs, else F_vec_dot_f32 row by row */
#define FDY_DF_NIB_ROWS(F)                                                                    \
    static void F##_vec_dot_f32_rows(const void *w, size_t row_bytes, const float *x,         \
                                     int64_t n, float *out, int64_t rows) {                   \
        if (fdy_df_tier() == FDY_DF_AVX512) {                                                 \
            F##_dotf_rows_avx512(w, row_bytes, x, n, out, rows);                              \
            return;                                                                           \
        }                                                                                     \
        fdy_df_rows_each(F##_vec_dot_f32, w, row_bytes, x, n, out, rows);                     \
    }

/* F_vec_dot_f32 and F_vec_dot_f32_rows of a format whose one kernel is the AVX2 row-range
 * driver over whole blocks (BB bytes, BE elements, codes at byte QS; the format defines
 * fdy_df_F_prep / fdy_df_F_step2 and F_dotf_portable first): a one-row call runs the driver over
 * that row, AVX-512 CPUs (which have AVX2, FMA and F16C) run it too, other CPUs the portable
 * dot */
#define FDY_DF_ROWS_KERNEL(F, BB, BE, QS)                                                     \
    FDY_DF_ROWS_DRIVER(F##_dotf_rows_avx2, BB, BE, QS, 1, fdy_df_##F##_prep,                 \
                       fdy_df_##F##_step2)                                                    \
    FDY_DF_TARGET_AVX2 static float F##_dotf_avx2(const void *w, const float *x, int64_t n) { \
        float y;                                                                              \
        F##_dotf_rows_avx2(w, (size_t)(n / (BE)) * (size_t)(BB), x, n, &y, 1);                \
        return y;                                                                             \
    }                                                                                         \
    FDY_DF_TARGET_AVX512 static float F##_dotf_avx512(const void *w, const float *x,          \
                                                      int64_t n) {                            \
        return F##_dotf_avx2(w, x, n);                                                        \
    }                                                                                         \
    FDY_DF_DISPATCH(F)                                                                        \
    static void F##_vec_dot_f32_rows(const void *w, size_t row_bytes, const float *x,         \
                                     int64_t n, float *out, int64_t rows) {                   \
        if (fdy_df_tier() != FDY_DF_PORTABLE) {                                               \
            F##_dotf_rows_avx2(w, row_bytes, x, n, out, rows);                                \
            return;                                                                           \
        }                                                                                     \
        fdy_df_rows_each(F##_dotf_portable, w, row_bytes, x, n, out, rows);                   \
    }

#else
#define FDY_DF_DISPATCH(F)                                                     \
    static float F##_vec_dot_f32(const void *w, const float *x, int64_t n) {   \
        return F##_dotf_portable(w, x, n);                                     \
    }
#define FDY_DF_NIB_KERNELS(F, BT, HBIT, HASM, TBL, OFF, QH, M)
#define FDY_DF_ROWS(F, BT, BE, UPB) FDY_DF_ROWS_QS(F, BT, BE, 0, UPB)
#define FDY_DF_ROWS_QS(F, BT, BE, QS, UPB)                                                    \
    static void F##_vec_dot_f32_rows(const void *w, size_t row_bytes, const float *x,         \
                                     int64_t n, float *out, int64_t rows) {                   \
        fdy_df_rows_each(F##_vec_dot_f32, w, row_bytes, x, n, out, rows);                     \
    }
#define FDY_DF_ROWS_KERNEL(F, BB, BE, QS) FDY_DF_DISPATCH(F) FDY_DF_ROWS_QS(F, BB, BE, QS, 1)
#define FDY_DF_ROWS_WIDE(F, BT, BE, UPB) FDY_DF_ROWS_QS(F, BT, BE, 0, UPB)
#define FDY_DF_NIB_ROWS(F) FDY_DF_ROWS_QS(F, 0, 0, 0, 1)
#endif /* __x86_64__ */

/* QH / M arguments of FDY_DF_NIB_KERNELS */
#define FDY_DF_NO_QH(b) 0u
#define FDY_DF_NO_M(b) 0.0f

#endif /* FDY_HOST */
#endif /* FDY_SIMD_DOTF32_H */
