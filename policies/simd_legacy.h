/* simd_legacy.h - host-only helpers of the q8 variant's integer dot kernels (vec_dot) of the
 * 32-element block formats q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl and mxfp4, and of the fast
 * activation quantizers (quantize_act) of q8_0 / q8_1.
 *
 * Tiers, chosen per call from fdy_cpu_features_enabled():
 *   FDY_LEG_AVX512        AVX-512 F+BW+VL+DQ with FMA and F16C: the activation quantizers;
 *                         the dot kernels run the AVX2 / AVXVNNI tier (fdy_leg_dot_tier)
 *   FDY_LEG_AVX2 / AVXVNNI  AVX2+FMA+F16C: one block per ymm; AVX-VNNI's vpdpbusd if present
 *   FDY_LEG_PORTABLE      plain C (any other machine, aarch64 included)
 * No global -m flag: every SIMD function carries its own target attribute.
 *
 * Byte dots: fdy_dp*(acc, u, s) adds to each int32 lane the four products u[4k+j] * s[4k+j]
 * (u unsigned, s signed bytes).  The maddubs form saturates a pair sum at int16, so every
 * kernel keeps |u0*s0 + u1*s1| <= 32767: u <= 128 with |s| <= 127.  Activation codes are in
 * [-127, 127] (the quantizers never give -128); weight operands are codes in [0, 31],
 * |int8 code| <= 128 or |table value| <= 127.
 *
 * A format file F (weight blocks WT, activation blocks AT) supplies
 *   F_block(x, y)     the float value of blocks x[0] . y[0] (the portable kernel, SIMD tails)
 *   F_ops256(x, y)    the byte-dot operands {u, s, a} of block x[0] (AVX2)
 *   W1, W8            the weight scale of x[0] as a float, those of x[0..7] as a __m256;
 *                     M1, M8 the minimum of q4_1 / q5_1
 * with the block's integer sum dot(u, s) - OFF * sum(a) (OFF: 8 for q4_0, 16 for q5_0), and
 * instantiates every kernel and the F_vec_dot dispatcher with FDY_LEG_KERNELS (or
 * FDY_LEG_KERNELS_MIN).  The kernels keep the sums in float vectors: per block one
 * multiply-add of the converted int32 sums by d_w * d_a, the scales of 8
 * blocks formed at once, 8 blocks per unrolled iteration, one horizontal sum per row.
 */
#ifndef FDY_SIMD_LEGACY_H
#define FDY_SIMD_LEGACY_H
#ifdef FDY_HOST

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "foundry.h"
#include "policy.h"

/* the activation blocks the kernels read (the layouts of fdy_block_q8_0 in q8_0.c and
 * fdy_block_q8_1 in q8_1.c; each policy file is its own translation unit) */
typedef struct fdy_leg_q8_0 {
    uint16_t d;
    int8_t qs[32];
} fdy_leg_q8_0;
typedef struct fdy_leg_q8_1 {
    uint16_t d;
    uint16_t s;
    int8_t qs[32];
} fdy_leg_q8_1;
_Static_assert(sizeof(fdy_leg_q8_0) == 34, "q8_0 block size");
_Static_assert(sizeof(fdy_leg_q8_1) == 36, "q8_1 block size");

enum { FDY_LEG_PORTABLE, FDY_LEG_AVX2, FDY_LEG_AVXVNNI, FDY_LEG_AVX512 };

/* the tier the enabled CPU features allow */
static inline int fdy_leg_tier(void) {
#if defined(__x86_64__)
    const uint32_t f = fdy_cpu_enabled();
    const uint32_t base = FDY_CPU_AVX2 | FDY_CPU_FMA | FDY_CPU_F16C;
    if ((f & base) != base) {
        return FDY_LEG_PORTABLE;
    }
    if (f & FDY_CPU_AVX512) {
        return FDY_LEG_AVX512;
    }
    return (f & FDY_CPU_AVXVNNI) ? FDY_LEG_AVXVNNI : FDY_LEG_AVX2;
#else
    return FDY_LEG_PORTABLE;
#endif
}

/* the tier of the dot kernels (vec_dot, vec_dot_rows): the 256-bit ones on AVX-512 CPUs too,
 * with AVX-VNNI's vpdpbusd where the CPU has it.  On an AVX-512 Xeon their row-range form
 * (the activation's terms once per call, FDY_LEG_ROWS256) ran 1.0-1.3x faster than the
 * two-blocks-per-zmm kernels this header had for AVX-512 (docs/CPU_NOTES.md item 40) */
static inline int fdy_leg_dot_tier(void) {
    const int t = fdy_leg_tier();
#if defined(__x86_64__)
    if (t == FDY_LEG_AVX512) {
        return (fdy_cpu_enabled() & FDY_CPU_AVXVNNI) ? FDY_LEG_AVXVNNI : FDY_LEG_AVX2;
    }
#endif
    return t;
}

/* exact round-half-away-from-zero of |v| < 2^31 (roundf) without a libm call: the integer
 * part and the remainder v - t are exact */
static inline int fdy_leg_roundf_int(float v) {
    const int t = (int)v;
    const float r = v - (float)t;
    return t + (r >= 0.5f) - (r <= -0.5f);
}

/* ---- activation quantization (q8_0 / q8_1): one block of 32 values ----
 * The codes of the reference quantizers for every block whose reference result is defined
 * (finite x * (1 / d)): the same amax (max is exact in any order; NaN lanes are skipped, as
 * fmaxf does), the same d and 1 / d, one IEEE product x * id per value and an exact roundf.
 * Each returns the unrounded scale d and stores the codes' sum in *sum. */

static inline float fdy_quant_block_portable(const float *x, int8_t *qs, int *sum) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) {
        amax = fmaxf(amax, fabsf(x[j]));
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int s = 0;
    for (int j = 0; j < 32; j++) {
        const int q = fdy_leg_roundf_int(x[j] * id);
        qs[j] = (int8_t)q;
        s += q;
    }
    *sum = s;
    return d;
}

/* ---- the portable kernel and the dispatcher ----
 * The portable block functions unpack the weight codes to 32 int8 with a loop the compiler
 * vectorizes (no variable shifts: the q5 bits are tested against fdy_leg_bit), then take
 * the int8 dot product; this form stays vectorized at -O2 and -O3 alike (a single loop
 * mixing both gets fully unrolled to scalar code at -O3). */

static const uint32_t fdy_leg_bit[32] = {
    1u << 0,  1u << 1,  1u << 2,  1u << 3,  1u << 4,  1u << 5,  1u << 6,  1u << 7,
    1u << 8,  1u << 9,  1u << 10, 1u << 11, 1u << 12, 1u << 13, 1u << 14, 1u << 15,
    1u << 16, 1u << 17, 1u << 18, 1u << 19, 1u << 20, 1u << 21, 1u << 22, 1u << 23,
    1u << 24, 1u << 25, 1u << 26, 1u << 27, 1u << 28, 1u << 29, 1u << 30, 1u << 31};

static inline int fdy_leg_dot32(const int8_t *w, const int8_t *a) {
    int s = 0;
    for (int j = 0; j < 32; j++) {
        s += (int)w[j] * (int)a[j];
    }
    return s;
}

static inline int fdy_leg_sum32(const int8_t *a) {
    int s = 0;
    for (int j = 0; j < 32; j++) {
        s += a[j];
    }
    return s;
}

/* the 32 nibbles of 16 bytes in element order (the low nibbles, then the high), minus off */
static inline void fdy_leg_nibbles(const uint8_t *qs, int off, int8_t *w) {
    for (int j = 0; j < 16; j++) {
        w[j] = (int8_t)((qs[j] & 0x0F) - off);
        w[j + 16] = (int8_t)((qs[j] >> 4) - off);
    }
}

/* the 5-bit codes of a q5 block (nibbles, bit 4 from the little-endian u32 at qh), minus off */
static inline void fdy_leg_nibbles5(const uint8_t *qs, const uint8_t *qh, int off, int8_t *w) {
    uint32_t h;
    memcpy(&h, qh, 4);
    uint8_t q[32];
    for (int j = 0; j < 16; j++) {
        q[j] = qs[j] & 0x0F;
        q[j + 16] = qs[j] >> 4;
    }
    for (int j = 0; j < 32; j++) {
        w[j] = (int8_t)((q[j] | ((h & fdy_leg_bit[j]) ? 16 : 0)) - off);
    }
}

#define FDY_LEG_DOT_PORTABLE(NAME, WT, AT, BLOCK)                \
    static float NAME(const void *w, const void *a, int64_t n) { \
        const WT *x = (const WT *)w;                             \
        const AT *y = (const AT *)a;                             \
        float sum = 0.0f;                                        \
        for (int64_t i = 0; i < n / 32; i++) {                   \
            sum += BLOCK(x + i, y + i);                          \
        }                                                        \
        return sum;                                              \
    }

/* NAME_rows: the one-row kernel NAME over consecutive rows, inlined into the loop (flatten),
 * so its constants are set up once per call rather than once per row (the AVX2 kernels
 * define their own with FDY_LEG_ROWS256, which also computes the activation's terms once per
 * call) */
#define FDY_LEG_ROWS(NAME, TARGET)                                                          \
    TARGET __attribute__((flatten)) static void NAME##_rows(                                \
        const void *w, size_t rb, const void *a, int64_t n, float *out, int64_t rows) {     \
        for (int64_t r = 0; r < rows; r++) {                                                \
            out[r] = NAME((const uint8_t *)w + (size_t)r * rb, a, n);                       \
        }                                                                                   \
    }

#if defined(__x86_64__)
#define FDY_LEG_VEC_DOT(F)                                                                  \
    static float F##_vec_dot(const void *w, const void *a, int64_t n) {                     \
        switch (fdy_leg_dot_tier()) {                                                       \
        case FDY_LEG_AVXVNNI: return F##_dot_avxvnni(w, a, n);                              \
        case FDY_LEG_AVX2: return F##_dot_avx2(w, a, n);                                    \
        default: return F##_dot_portable(w, a, n);                                          \
        }                                                                                   \
    }                                                                                       \
    FDY_LEG_ROWS(F##_dot_portable, )                                                        \
    static void F##_vec_dot_rows(const void *w, size_t rb, const void *a, int64_t n,        \
                                 float *out, int64_t rows) {                                \
        switch (fdy_leg_dot_tier()) {                                                       \
        case FDY_LEG_AVXVNNI: F##_dot_avxvnni_rows(w, rb, a, n, out, rows); break;          \
        case FDY_LEG_AVX2: F##_dot_avx2_rows(w, rb, a, n, out, rows); break;                \
        default: F##_dot_portable_rows(w, rb, a, n, out, rows); break;                      \
        }                                                                                   \
    }
#else
#define FDY_LEG_VEC_DOT(F)                                                                  \
    static float F##_vec_dot(const void *w, const void *a, int64_t n) {                     \
        return F##_dot_portable(w, a, n);                                                   \
    }                                                                                       \
    FDY_LEG_ROWS(F##_dot_portable, )                                                        \
    static void F##_vec_dot_rows(const void *w, size_t rb, const void *a, int64_t n,        \
                                 float *out, int64_t rows) {                                \
        F##_dot_portable_rows(w, rb, a, n, out, rows);                                      \
    }
#define FDY_LEG_KERNELS(F, WT, AT, OFF, W1, W8)               \
    FDY_LEG_DOT_PORTABLE(F##_dot_portable, WT, AT, F##_block) \
    FDY_LEG_VEC_DOT(F)
#define FDY_LEG_KERNELS_MIN(F, WT, AT, W1, W8, M1, M8)           \
    FDY_LEG_DOT_PORTABLE(F##_dot_portable, WT, AT, F##_block)    \
    FDY_LEG_VEC_DOT(F)
#endif

#if defined(__x86_64__)
#include <immintrin.h>

#define FDY_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define FDY_TARGET_AVXVNNI __attribute__((target("avx2,fma,f16c,avxvnni")))
#define FDY_TARGET_AVX512 \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define FDY_LEG_INLINE static inline __attribute__((always_inline))

/* ---- AVX2 ---- */

typedef struct fdy_ops256 {
    __m256i u, s, a; /* byte-dot operands (unsigned, signed) and the activation codes */
} fdy_ops256;

FDY_TARGET_AVX2 FDY_LEG_INLINE __m256i fdy_dp256(__m256i acc, __m256i u, __m256i s) {
    const __m256i p = _mm256_maddubs_epi16(u, s);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

FDY_TARGET_AVXVNNI FDY_LEG_INLINE __m256i fdy_dp256_vnni(__m256i acc, __m256i u, __m256i s) {
    return _mm256_dpbusd_avx_epi32(acc, u, s);
}

/* the block sums dot(u, s) - off * sum(a) in int32 lanes; the activation sums alone */
#define FDY_LEG_SUMS256(SUFFIX, TARGET)                                                     \
    TARGET FDY_LEG_INLINE __m256i fdy_sums256##SUFFIX(fdy_ops256 o, int off) {              \
        const __m256i z = _mm256_setzero_si256();                                           \
        const __m256i d = fdy_dp256##SUFFIX(z, o.u, o.s);                                   \
        if (!off) {                                                                         \
            return d;                                                                       \
        }                                                                                   \
        return _mm256_sub_epi32(d, fdy_dp256##SUFFIX(z, _mm256_set1_epi8((char)off), o.a)); \
    }                                                                                       \
    TARGET FDY_LEG_INLINE __m256i fdy_asums256##SUFFIX(fdy_ops256 o) {                      \
        return fdy_dp256##SUFFIX(_mm256_setzero_si256(), _mm256_set1_epi8(1), o.a);         \
    }
FDY_LEG_SUMS256(_vnni, FDY_TARGET_AVXVNNI)

/* the activation half of fdy_sums256 with an offset (row-independent, so a rows kernel
 * computes it once per block), and the sums from it: the same operations, the same bits */
FDY_TARGET_AVXVNNI FDY_LEG_INLINE __m256i fdy_offterm256_vnni(__m256i a, int off) {
    return fdy_dp256_vnni(_mm256_setzero_si256(), _mm256_set1_epi8((char)off), a);
}
FDY_TARGET_AVXVNNI FDY_LEG_INLINE __m256i fdy_sums256_pre_vnni(fdy_ops256 o, __m256i t) {
    return _mm256_sub_epi32(fdy_dp256_vnni(_mm256_setzero_si256(), o.u, o.s), t);
}

/* without VNNI: the offset is subtracted from the int16 pair sums before they are widened
 * (|dot pair| + |off pair| <= 2 * 31 * 127 + 2 * 16 * 127 < 32768 for every offset format) */
FDY_TARGET_AVX2 FDY_LEG_INLINE __m256i fdy_sums256(fdy_ops256 o, int off) {
    __m256i p = _mm256_maddubs_epi16(o.u, o.s);
    if (off) {
        p = _mm256_sub_epi16(p, _mm256_maddubs_epi16(_mm256_set1_epi8((char)off), o.a));
    }
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

FDY_TARGET_AVX2 FDY_LEG_INLINE __m256i fdy_offterm256(__m256i a, int off) {
    return _mm256_maddubs_epi16(_mm256_set1_epi8((char)off), a);
}
FDY_TARGET_AVX2 FDY_LEG_INLINE __m256i fdy_sums256_pre(fdy_ops256 o, __m256i t) {
    return _mm256_madd_epi16(_mm256_sub_epi16(_mm256_maddubs_epi16(o.u, o.s), t),
                             _mm256_set1_epi16(1));
}

FDY_TARGET_AVX2 FDY_LEG_INLINE __m256i fdy_asums256(fdy_ops256 o) {
    return fdy_dp256(_mm256_setzero_si256(), _mm256_set1_epi8(1), o.a);
}

FDY_TARGET_AVX2 FDY_LEG_INLINE float fdy_hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

FDY_TARGET_AVX2 FDY_LEG_INLINE float fdy_leg_half(uint16_t h) {
    return _cvtsh_ss(h); /* exact for every half, subnormals included */
}

/* the 8 f16 at p, p + stride, ..., p + 7 * stride as floats */
FDY_TARGET_AVX2 FDY_LEG_INLINE __m256 fdy_halves8(const void *p, int stride) {
    const uint8_t *b = (const uint8_t *)p;
    uint16_t h[8];
    for (int k = 0; k < 8; k++) {
        memcpy(&h[k], b + k * stride, 2);
    }
    __m128i v = _mm_cvtsi32_si128(h[0]);
    v = _mm_insert_epi16(v, h[1], 1);
    v = _mm_insert_epi16(v, h[2], 2);
    v = _mm_insert_epi16(v, h[3], 3);
    v = _mm_insert_epi16(v, h[4], 4);
    v = _mm_insert_epi16(v, h[5], 5);
    v = _mm_insert_epi16(v, h[6], 6);
    v = _mm_insert_epi16(v, h[7], 7);
    return _mm256_cvtph_ps(v);
}

/* the scale fields of the f16-scaled formats: d (and m), of x[0] / of x[0..7] */
#define FDY_LEG_D1(x) fdy_leg_half((x)->d)
#define FDY_LEG_D8(x) fdy_halves8(&(x)->d, (int)sizeof *(x))
#define FDY_LEG_M1(x) fdy_leg_half((x)->m)
#define FDY_LEG_M8(x) fdy_halves8(&(x)->m, (int)sizeof *(x))

/* 16 bytes of packed nibbles -> 32 bytes: the low nibbles, then the high nibbles */
FDY_TARGET_AVX2 FDY_LEG_INLINE __m256i fdy_nibbles256(const uint8_t *q) {
    const __m128i t = _mm_loadu_si128((const __m128i *)q);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
}

/* bit k of the little-endian u32 at p -> byte k: 0x10 where set, else 0 */
FDY_TARGET_AVX2 FDY_LEG_INLINE __m256i fdy_bits256_x10(const uint8_t *p) {
    uint32_t x;
    memcpy(&x, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                           0x0101010101010101, 0x0000000000000000);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    b = _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1));
    return _mm256_and_si256(b, _mm256_set1_epi8(0x10));
}

/* lane k of d in all 8 lanes */
#define FDY_LEG_LANE256(d, k) _mm256_permutevar8x32_ps((d), _mm256_set1_epi32(k))

#define FDY_LEG_PRE_MAX 256 /* blocks of the activation terms a rows call keeps on its stack */

/* NAME and NAME_rows of an AVX2 kernel NAME_body(w, a, n, pre, pda): NAME passes no
 * precomputed terms; NAME_rows computes, once per call, pda[g] (the activation scales of
 * blocks 8g .. 8g + 7) and, when HASPRE, pre[b] = PRE (an expression of the activation block
 * y[b], of type PT), then runs the body row by row (rows longer than FDY_LEG_PRE_MAX blocks, or
 * a single row, take the plain path) */
#define FDY_LEG_ROWS256(NAME, TARGET, AT, PT, HASPRE, PRE)                                      \
    TARGET static float NAME(const void *w, const void *a, int64_t n) {                      \
        return NAME##_body(w, a, n, NULL, NULL);                                             \
    }                                                                                        \
    TARGET static void NAME##_rows(const void *w, size_t rb, const void *a, int64_t n,       \
                                   float *out, int64_t rows) {                               \
        const int64_t nb = n / 32;                                                           \
        if (nb > FDY_LEG_PRE_MAX || rows < 2) {                                              \
            for (int64_t r = 0; r < rows; r++) {                                             \
                out[r] = NAME##_body((const uint8_t *)w + (size_t)r * rb, a, n, NULL, NULL); \
            }                                                                                \
            return;                                                                          \
        }                                                                                    \
        const AT *y = (const AT *)a;                                                         \
        PT pre[(HASPRE) ? FDY_LEG_PRE_MAX : 1];                                              \
        __m256 pda[FDY_LEG_PRE_MAX / 8];                                                     \
        if (HASPRE) {                                                                        \
            for (int64_t b = 0; b < nb; b++) {                                               \
                pre[b] = PRE;                                                                \
            }                                                                                \
        }                                                                                    \
        for (int64_t g = 0; g < nb / 8; g++) {                                               \
            pda[g] = FDY_LEG_D8(y + 8 * g);                                                  \
        }                                                                                    \
        for (int64_t r = 0; r < rows; r++) {                                                 \
            out[r] = NAME##_body((const uint8_t *)w + (size_t)r * rb, a, n,                  \
                                 (HASPRE) ? pre : NULL, pda);                                \
        }                                                                                    \
    }

/* one block: acc += (block sums) * d (8 lanes); the offset term from pre[] when given */
#define FDY_LEG_STEP256(V, OPS, OFF, acc, k, d)                                            \
    do {                                                                                   \
        const fdy_ops256 o_ = OPS(x + i + (k), y + i + (k));                               \
        const __m256i s_ = (OFF) && pre ? fdy_sums256_pre##V(o_, pre[i + (k)])             \
                                        : fdy_sums256##V(o_, OFF);                         \
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s_), d, acc);                             \
    } while (0)

/* AVX2 kernel of a one-scale format: eight blocks per iteration, then single blocks.
 * NAME_body takes the activation's row-independent terms precomputed (pre[b]: block b's offset
 * term, for offset formats; pda[g]: the scales of blocks 8g .. 8g + 7) or NULL; NAME_rows
 * computes them once per call (the same operations, so the same bits as NAME) */
#define FDY_LEG_DOT256(NAME, TARGET, V, WT, AT, OPS, OFF, W1, W8, BLOCK)                     \
    TARGET FDY_LEG_INLINE float NAME##_body(const void *w, const void *a, int64_t n,          \
                                            const __m256i *pre, const __m256 *pda) {         \
        const WT *x = (const WT *)w;                                                         \
        const AT *y = (const AT *)a;                                                         \
        const int64_t nb = n / 32;                                                           \
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();                       \
        int64_t i = 0;                                                                       \
        for (; i + 8 <= nb; i += 8) {                                                        \
            fdy_stream_prefetch(x + i, (int)((8 * sizeof(WT) + 63) / 64));                   \
            const __m256 d = _mm256_mul_ps(W8(x + i), pda ? pda[i / 8] : FDY_LEG_D8(y + i)); \
            FDY_LEG_STEP256(V, OPS, OFF, acc0, 0, FDY_LEG_LANE256(d, 0));                    \
            FDY_LEG_STEP256(V, OPS, OFF, acc1, 1, FDY_LEG_LANE256(d, 1));                    \
            FDY_LEG_STEP256(V, OPS, OFF, acc0, 2, FDY_LEG_LANE256(d, 2));                    \
            FDY_LEG_STEP256(V, OPS, OFF, acc1, 3, FDY_LEG_LANE256(d, 3));                    \
            FDY_LEG_STEP256(V, OPS, OFF, acc0, 4, FDY_LEG_LANE256(d, 4));                    \
            FDY_LEG_STEP256(V, OPS, OFF, acc1, 5, FDY_LEG_LANE256(d, 5));                    \
            FDY_LEG_STEP256(V, OPS, OFF, acc0, 6, FDY_LEG_LANE256(d, 6));                    \
            FDY_LEG_STEP256(V, OPS, OFF, acc1, 7, FDY_LEG_LANE256(d, 7));                    \
        }                                                                                    \
        for (; i < nb; i++) {                                                                \
            const __m256 d = _mm256_set1_ps(W1(x + i) * FDY_LEG_D1(y + i));                  \
            FDY_LEG_STEP256(V, OPS, OFF, acc0, 0, d);                                        \
        }                                                                                    \
        return fdy_hsum256(_mm256_add_ps(acc0, acc1));                                       \
    }                                                                                        \
    FDY_LEG_ROWS256(NAME, TARGET, AT, __m256i, OFF,                                          \
                    fdy_offterm256##V(_mm256_loadu_si256((const __m256i *)y[b].qs), OFF))

/* one block with a minimum: acc += dot(u, s) * d, accm += sum(a) * m; the float sum(a)
 * vector from pre[] when the caller computed it */
#define FDY_LEG_STEPM256(V, OPS, k, d, m)                                                    \
    do {                                                                                     \
        const fdy_ops256 o_ = OPS(x + i + (k), y + i + (k));                                 \
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(fdy_sums256##V(o_, 0)), d, acc);            \
        accm = _mm256_fmadd_ps(pre ? pre[i + (k)] : _mm256_cvtepi32_ps(fdy_asums256##V(o_)), \
                               m, accm);                                                     \
    } while (0)

/* AVX2 kernel of q4_1 / q5_1: w = d * q + m, with q8_1 activations.  NAME_body takes the
 * activation's row-independent terms precomputed (pre[b]: the float code-sum vector of block
 * b; pda[g]: the scales of blocks 8g .. 8g + 7) or NULL; NAME_rows computes them once per call
 * (the same integer sums and conversions, so the same bits as NAME) */
#define FDY_LEG_DOTM256(NAME, TARGET, V, WT, AT, OPS, W1, W8, M1, M8)                        \
    TARGET FDY_LEG_INLINE float NAME##_body(const void *w, const void *a, int64_t n,          \
                                            const __m256 *pre, const __m256 *pda) {          \
        const WT *x = (const WT *)w;                                                         \
        const AT *y = (const AT *)a;                                                         \
        const int64_t nb = n / 32;                                                           \
        __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();                        \
        int64_t i = 0;                                                                       \
        for (; i + 8 <= nb; i += 8) {                                                        \
            fdy_stream_prefetch(x + i, (int)((8 * sizeof(WT) + 63) / 64));                   \
            const __m256 da = pda ? pda[i / 8] : FDY_LEG_D8(y + i);                          \
            const __m256 d = _mm256_mul_ps(W8(x + i), da), m = _mm256_mul_ps(M8(x + i), da); \
            for (int k = 0; k < 8; k++) {                                                    \
                FDY_LEG_STEPM256(V, OPS, k, FDY_LEG_LANE256(d, k), FDY_LEG_LANE256(m, k));   \
            }                                                                                \
        }                                                                                    \
        for (; i < nb; i++) {                                                                \
            const float da = FDY_LEG_D1(y + i);                                              \
            FDY_LEG_STEPM256(V, OPS, 0, _mm256_set1_ps(W1(x + i) * da),                      \
                             _mm256_set1_ps(M1(x + i) * da));                                \
        }                                                                                    \
        return fdy_hsum256(_mm256_add_ps(acc, accm));                                        \
    }                                                                                        \
    FDY_LEG_ROWS256(NAME, TARGET, AT, __m256, 1,                                             \
                    _mm256_cvtepi32_ps(fdy_asums256##V(((fdy_ops256){                        \
                        _mm256_setzero_si256(), _mm256_setzero_si256(),                      \
                        _mm256_loadu_si256((const __m256i *)y[b].qs)}))))

/* roundf of each lane, exactly: trunc, then +-1 where the remainder (exact) is >= 0.5 */
FDY_TARGET_AVX2 static inline __m256i fdy_round256(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 r = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    const __m256 up = _mm256_cmp_ps(r, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0f));
    return _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_and_ps(up, one)));
}

FDY_TARGET_AVX2 static inline float fdy_quant_block_avx2(const float *x, int8_t *qs, int *sum) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4];
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        m = _mm256_max_ps(_mm256_andnot_ps(sign, v[k]), m); /* a NaN first operand gives m */
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float amax = _mm_cvtss_f32(h);
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; k++) {
        q[k] = fdy_round256(_mm256_mul_ps(v[k], vid));
    }
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
    *sum = _mm_cvtsi128_si32(s4);
    /* |q| <= 127: the saturating packs are exact; then undo their lane interleave */
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]),
                                         _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256((__m256i *)qs,
                        _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    return d;
}

/* ---- AVX-512 ---- */

/* the activation quantizer's rounding (the dot kernels on AVX-512 CPUs are the 256-bit ones:
 * fdy_leg_dot_tier) */
FDY_TARGET_AVX512 static inline __m512i fdy_round512(__m512 v) {
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_abs_ps(_mm512_sub_ps(v, t));
    const __mmask16 up = _mm512_cmp_ps_mask(r, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __m512 one = _mm512_or_ps(_mm512_and_ps(v, _mm512_set1_ps(-0.0f)), _mm512_set1_ps(1.0f));
    return _mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, one));
}

FDY_TARGET_AVX512 static inline float fdy_quant_block_avx512(const float *x, int8_t *qs,
                                                             int *sum) {
    const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
    __m512 m = _mm512_max_ps(_mm512_abs_ps(x0), _mm512_setzero_ps()); /* NaN lanes give 0 */
    m = _mm512_max_ps(_mm512_abs_ps(x1), m);
    const float amax = _mm512_reduce_max_ps(m);
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i q0 = fdy_round512(_mm512_mul_ps(x0, vid));
    const __m512i q1 = fdy_round512(_mm512_mul_ps(x1, vid));
    *sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    _mm_storeu_si128((__m128i *)qs, _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128((__m128i *)(qs + 16), _mm512_cvtepi32_epi8(q1));
    return d;
}


/* ---- every kernel of a format ---- */

#define FDY_LEG_KERNELS(F, WT, AT, OFF, W1, W8)                                             \
    FDY_LEG_DOT_PORTABLE(F##_dot_portable, WT, AT, F##_block)                               \
    FDY_LEG_DOT256(F##_dot_avx2, FDY_TARGET_AVX2, , WT, AT, F##_ops256, OFF, W1, W8,        \
                   F##_block)                                                               \
    FDY_LEG_DOT256(F##_dot_avxvnni, FDY_TARGET_AVXVNNI, _vnni, WT, AT, F##_ops256, OFF, W1, \
                   W8, F##_block)                                                           \
    FDY_LEG_VEC_DOT(F)

#define FDY_LEG_KERNELS_MIN(F, WT, AT, W1, W8, M1, M8)                                      \
    FDY_LEG_DOT_PORTABLE(F##_dot_portable, WT, AT, F##_block)                               \
    FDY_LEG_DOTM256(F##_dot_avx2, FDY_TARGET_AVX2, , WT, AT, F##_ops256, W1, W8, M1, M8)    \
    FDY_LEG_DOTM256(F##_dot_avxvnni, FDY_TARGET_AVXVNNI, _vnni, WT, AT, F##_ops256, W1, W8, \
                    M1, M8)                                                                 \
    FDY_LEG_VEC_DOT(F)

#endif /* __x86_64__ */

/* ---- the 8-row interleaved layout of the nibble formats' q8 decode GEMV (q4_0, q4_1) ----
 * A group holds 8 consecutive rows, block by block: for block b, 8 * block_bytes bytes
 *   | d of rows 0, 1, 4, 5, 2, 3, 6, 7 (8 x f16) | (q4_1: m of the same rows, 8 x f16) |
 *   qs: for chunk c = 0, 1 (bytes 8c .. 8c+7 of each row's 16 code bytes), for half h = 0, 1
 *   (rows 4h .. 4h+3), for row 4h + k: its 8 bytes |
 * so one 32-byte load holds one chunk of four rows (a row per 64-bit lane): the low nibbles are
 * elements 8c .. 8c+7 and the high ones 16 + 8c .. 16 + 8c+7 of each, and byte dots with the
 * activation's 8 matching codes broadcast to every lane give per-row sums in the lanes.  The
 * scale order is that of the lanes after combining the two halves (_mm256_hadd_epi32), so a
 * block's 8 products need no permute; results go back to row order once per group.
 * Per row: acc = fma(float(sum q a - zero * sum a), d * d_a, acc) (+ fma(m, d_a * sum a, acc)
 * with a min), block by block: the integer sums of vec_dot, the float accumulation in block
 * order; the portable and AVX2 kernels give the same bits. */
static const int fdy_pack8_slot_row[8] = {0, 1, 4, 5, 2, 3, 6, 7}; /* its own inverse */

/* where row r's 8 code bytes of chunk c sit in a group block */
static inline int fdy_pack8_qs_at(int head, int r, int c) {
    return head + 64 * c + 32 * (r / 4) + 8 * (r % 4);
}

/* pack 8 rows (d at d_off, m at m_off or -1, the 16 code bytes at qs_off) into the layout
 * above */
static inline void fdy_pack8_rows(const void *src, size_t row_bytes, void *dst, int64_t n,
                                  int block_bytes, int d_off, int m_off, int qs_off) {
    const uint8_t *s = (const uint8_t *)src;
    uint8_t *g = (uint8_t *)dst;
    const int head = m_off >= 0 ? 32 : 16;
    for (int64_t b = 0; b < n / 32; b++, g += 8 * block_bytes) {
        for (int slot = 0; slot < 8; slot++) {
            const uint8_t *x = s + (size_t)fdy_pack8_slot_row[slot] * row_bytes + b * block_bytes;
            memcpy(g + 2 * slot, x + d_off, 2);
            if (m_off >= 0) {
                memcpy(g + 16 + 2 * slot, x + m_off, 2);
            }
        }
        for (int r = 0; r < 8; r++) {
            const uint8_t *x = s + (size_t)r * row_bytes + b * block_bytes + qs_off;
            for (int c = 0; c < 2; c++) {
                memcpy(g + fdy_pack8_qs_at(head, r, c), x + 8 * c, 8);
            }
        }
    }
}

/* a group's 8 results, in slot order, to out in row order */
static inline void fdy_pack8_unslot(const float *acc, float *out) {
    for (int slot = 0; slot < 8; slot++) {
        out[fdy_pack8_slot_row[slot]] = acc[slot];
    }
}

static inline int fdy_pack8_asum(const int8_t *q) {
    int t = 0;
    for (int j = 0; j < 32; j++) {
        t += q[j];
    }
    return t;
}

/* the activation block b of a q8_0 / q8_1 row (astride bytes each, d first, codes at aqs) */
#define FDY_PACK8_ACT(a, b) ((const uint8_t *)(a) + (size_t)(b) * astride)

static inline void fdy_pack8_nib_portable(const void *groups, size_t group_bytes, const void *a,
                                          int64_t n, float *out, int64_t n_groups,
                                          int block_bytes, int has_m, int zero, int astride,
                                          int aqs) {
    const int head = has_m ? 32 : 16;
    for (int64_t gi = 0; gi < n_groups; gi++) {
        const uint8_t *g = (const uint8_t *)groups + (size_t)gi * group_bytes;
        float acc[8] = {0};
        for (int64_t b = 0; b < n / 32; b++, g += 8 * block_bytes) {
            const uint8_t *y = FDY_PACK8_ACT(a, b);
            const int8_t *aq = (const int8_t *)(y + aqs);
            uint16_t dah;
            memcpy(&dah, y, 2);
            const float da = fdy_half_to_float(dah);
            const int asum = fdy_pack8_asum(aq);
            for (int slot = 0; slot < 8; slot++) {
                const int r = fdy_pack8_slot_row[slot];
                int sum = 0;
                for (int c = 0; c < 2; c++) {
                    const uint8_t *q = g + fdy_pack8_qs_at(head, r, c);
                    for (int j = 0; j < 8; j++) {
                        sum += (q[j] & 0x0F) * aq[8 * c + j] + (q[j] >> 4) * aq[16 + 8 * c + j];
                    }
                }
                uint16_t h;
                memcpy(&h, g + 2 * slot, 2);
                acc[slot] = fmaf((float)(sum - zero * asum), fdy_half_to_float(h) * da, acc[slot]);
                if (has_m) {
                    memcpy(&h, g + 16 + 2 * slot, 2);
                    acc[slot] = fmaf(fdy_half_to_float(h), da * (float)asum, acc[slot]);
                }
            }
        }
        fdy_pack8_unslot(acc, out + 8 * gi);
    }
}

#if defined(__x86_64__)
FDY_TARGET_AVX2 static inline void fdy_pack8_nib_avx2(const void *groups, size_t group_bytes,
                                                      const void *a, int64_t n, float *out,
                                                      int64_t n_groups, int block_bytes,
                                                      int has_m, int zero, int astride,
                                                      int aqs) {
    const int64_t nb = n / 32;
    const int head = has_m ? 32 : 16;
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    /* the activation's terms, once per call (rows up to FDY_LEG_PRE_MAX blocks) */
    int asum[FDY_LEG_PRE_MAX];
    float da[FDY_LEG_PRE_MAX];
    const int pre = nb <= FDY_LEG_PRE_MAX;
    for (int64_t b = 0; pre && b < nb; b++) {
        const uint8_t *y = FDY_PACK8_ACT(a, b);
        uint16_t h;
        memcpy(&h, y, 2);
        asum[b] = fdy_pack8_asum((const int8_t *)(y + aqs));
        da[b] = _cvtsh_ss(h);
    }
    for (int64_t gi = 0; gi < n_groups; gi++) {
        const uint8_t *g = (const uint8_t *)groups + (size_t)gi * group_bytes;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++, g += 8 * block_bytes) {
            const uint8_t *y = FDY_PACK8_ACT(a, b);
            fdy_stream_prefetch(g, 3); /* 144 (q4_0) or 160 (q4_1) bytes a block */
            int64_t t0, t1, t2, t3;
            memcpy(&t0, y + aqs, 8);
            memcpy(&t1, y + aqs + 8, 8);
            memcpy(&t2, y + aqs + 16, 8);
            memcpy(&t3, y + aqs + 24, 8);
            const __m256i al0 = _mm256_set1_epi64x(t0), al1 = _mm256_set1_epi64x(t1);
            const __m256i ah0 = _mm256_set1_epi64x(t2), ah1 = _mm256_set1_epi64x(t3);
            __m256i hs[2];
            for (int k = 0; k < 2; k++) { /* rows 4k .. 4k+3 */
                const __m256i v0 = _mm256_loadu_si256((const __m256i *)(g + fdy_pack8_qs_at(head, 4 * k, 0)));
                const __m256i v1 = _mm256_loadu_si256((const __m256i *)(g + fdy_pack8_qs_at(head, 4 * k, 1)));
                __m256i t = _mm256_maddubs_epi16(_mm256_and_si256(v0, m4), al0);
                t = _mm256_add_epi16(t, _mm256_maddubs_epi16(
                                            _mm256_and_si256(_mm256_srli_epi16(v0, 4), m4), ah0));
                t = _mm256_add_epi16(t, _mm256_maddubs_epi16(_mm256_and_si256(v1, m4), al1));
                t = _mm256_add_epi16(t, _mm256_maddubs_epi16(
                                            _mm256_and_si256(_mm256_srli_epi16(v1, 4), m4), ah1));
                hs[k] = _mm256_madd_epi16(t, ones);
            }
            int as;
            float db;
            if (pre) {
                as = asum[b];
                db = da[b];
            } else {
                uint16_t h;
                memcpy(&h, y, 2);
                as = fdy_pack8_asum((const int8_t *)(y + aqs));
                db = _cvtsh_ss(h);
            }
            __m256i sum = _mm256_hadd_epi32(hs[0], hs[1]);
            if (zero) {
                sum = _mm256_sub_epi32(sum, _mm256_set1_epi32(zero * as));
            }
            const __m256 d = _mm256_mul_ps(
                _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g)), _mm256_set1_ps(db));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), d, acc);
            if (has_m) {
                acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + 16))),
                                      _mm256_set1_ps(db * (float)as), acc);
            }
        }
        float t[8];
        _mm256_storeu_ps(t, acc);
        fdy_pack8_unslot(t, out + 8 * gi);
    }
}
#endif


/* NAME_pack and NAME_vec_dot_packed of a nibble format (see above) */
#define FDY_PACK8_NIB_KERNELS(NAME, BT, M_OFF, ZERO, AT)                                      \
    static void NAME##_pack(const void *src, size_t row_bytes, void *dst, int64_t n) {       \
        fdy_pack8_rows(src, row_bytes, dst, n, (int)sizeof(BT), (int)offsetof(BT, d), M_OFF,  \
                       (int)offsetof(BT, qs));                                                \
    }                                                                                         \
    static void NAME##_vec_dot_packed(const void *groups, size_t group_bytes, const void *a,  \
                                      int64_t n, float *out, int64_t n_groups) {              \
        FDY_PACK8_DISPATCH(groups, group_bytes, a, n, out, n_groups, (int)sizeof(BT),         \
                           (M_OFF) >= 0, ZERO, (int)sizeof(AT), (int)offsetof(AT, qs));       \
    }
#if defined(__x86_64__)
#define FDY_PACK8_DISPATCH(...)                                                               \
    do {                                                                                      \
        if (fdy_leg_tier() != FDY_LEG_PORTABLE) {                                             \
            fdy_pack8_nib_avx2(__VA_ARGS__);                                                  \
        } else {                                                                              \
            fdy_pack8_nib_portable(__VA_ARGS__);                                              \
        }                                                                                     \
    } while (0)
#else
#define FDY_PACK8_DISPATCH(...) fdy_pack8_nib_portable(__VA_ARGS__)
#endif

#endif /* FDY_HOST */
#endif
