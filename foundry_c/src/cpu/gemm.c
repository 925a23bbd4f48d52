/* gemm.c - the q8 variant's prefill matmul: M >= 2 activation rows against one weight matrix,
 * generic over the weight policy (no kernel names a format).
 *
 * The vec_dot path decodes every weight row once per token.  Here each weight row is decoded
 * once per call, with the policy's to_i8 hook, into int8 codes with a float scale and min per
 * 16 elements (w = scale * q + min), and reused by every token:
 *
 *   1. activations: each row quantized by the dot_type's quantizer (the bytes the vec_dot path
 *      uses), unpacked by the dot_type's to_i8 (codes a, scale xs per 16), and the per-16 terms
 *      xms = xs * sum(a) kept for the weight mins;
 *   2. a task = a tile of 16 weight rows, unpacked into per-thread scratch in the layout of the
 *      selected tier, then for 8 (AVX2: 4) tokens at a time a micro-kernel whose vector lanes
 *      are the 16 weight rows: per 16-element group g, the exact int32 dot sum_k q[r,k] a[t,k]
 *      of every row, converted to float, times scale[r,g] * xs[t,g], plus min[r,g] * xms[t,g],
 *      accumulated in float;
 *   3. bias, activation function and accumulate as fdy_matmul's other paths.
 *
 * Tiers (run-time choice from fdy_cpu_features_enabled(), no -m flag):
 *   AVX-512 VNNI  weights as s8 in groups of 4 codes per row (64 bytes = 16 rows x 4), the
 *                 activations as u8 = a + 128 broadcast 4 at a time; vpdpbusd starts from the
 *                 exact correction -128 * sum(q over the group) of each row, so the int32 sum is
 *                 exactly sum q * a (no float cancellation of the offset);
 *   AVX2+FMA      a tile whose codes span at most 32 values (4- and 5-bit formats): the codes
 *                 as u8 = q - (the tile's smallest code), four per 32-bit lane, times the
 *                 activation's s8 codes by vpmaddubsw, summed in int16 over a group (at most
 *                 8 * 31 * 128 = 31744 per lane: no saturation), then to int32 by vpmaddwd with
 *                 ones, plus the exact correction (smallest code) * sum(a); other tiles: weights
 *                 and activations widened to int16, pairs multiplied by vpmaddwd (exact:
 *                 |q * a| <= 128 * 128).  Both give the same int32 sums, so the same bits;
 *   portable      plain C.
 * Each (row, token) result is the same sequence of float operations whatever the tile it sits
 * in, the number of tokens per micro-kernel call or the thread count, so results do not depend
 * on the number of threads.  The integer parts are exact; the float parts differ from the
 * vec_dot kernels only by rounding (the tests bound it).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dialect.h"
#include "internal.h"
#include "policy.h"
#include "threadpool.h"
#include "cpu/gemm.h"

#define GR 16    /* weight rows per tile: the vector lanes of the micro-kernels */
#define GT 8     /* most tokens per micro-kernel call */

enum { TIER_PORTABLE, TIER_AVX2, TIER_VNNI };

static int gemm_tier(void) {
#if defined(__x86_64__)
    const uint32_t f = fdy_cpu_features_enabled();
    const uint32_t avx2 = FDY_CPU_AVX2 | FDY_CPU_FMA;
    if ((f & (avx2 | FDY_CPU_AVX512 | FDY_CPU_AVX512VNNI)) ==
        (avx2 | FDY_CPU_AVX512 | FDY_CPU_AVX512VNNI)) {
        return TIER_VNNI;
    }
    if ((f & avx2) == avx2) {
        return TIER_AVX2;
    }
#endif
    return TIER_PORTABLE;
}

/* the same activation functions as ops.c (mm_store) */
static float gemm_act(float v, int act) {
    switch (act) {
    case FDY_ACT_SILU: return v / (1.0f + expf(-v));
    case FDY_ACT_GELU: {
        const float c = 0.7978845608028654f; /* sqrt(2/pi) */
        return 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v)));
    }
    case FDY_ACT_RELU: return v > 0.0f ? v : 0.0f;
    default: return v;
    }
}

typedef struct gemm_ctx {
    const fdy_policy *wp, *ap;  /* weight policy, activation (dot_type) policy */
    const uint8_t *wd;          /* weight rows */
    int64_t w_row;              /* bytes per weight row */
    int64_t M, K, N, G;         /* G = K / 16 */
    int tier;
    int no_u8;                  /* AVX2: every tile as int16 (PYFOUNDRY_GEMM_I16=1) */
    /* activations */
    const float *x;
    uint8_t *xq;                /* (M, a_row) quantized rows */
    int64_t a_row;
    void *xa;                   /* (M, K) codes: s8 (portable), u8 = a + 128 (VNNI), s16 (AVX2) */
    int8_t *xa8;                /* AVX2: (M, K) s8 codes as well, for the u8 tiles */
    int32_t *xsum;              /* AVX2: (M, G) code sums of each group */
    float *xs, *xms;            /* (M, G) scales and scale * code sums */
    /* output */
    const float *bias;
    float *out;
    int accumulate, act;
} gemm_ctx;

static inline size_t al64(size_t n) {
    return (n + 63) & ~(size_t)63;
}

/* ---- step 1: activation rows ---------------------------------------------------------- */

static void prep_task(void *vctx, int64_t m, int thread) {
    const gemm_ctx *c = (const gemm_ctx *)vctx;
    const int64_t K = c->K, G = c->G;
    uint8_t *q = c->xq + m * c->a_row;
    fdy_quant_fn qf = c->ap->quantize_act ? c->ap->quantize_act : c->ap->quantize;
    qf(c->x + m * K, q, K);
    int8_t *codes = (int8_t *)fdy_scratch(thread);
    float *mins = (float *)((uint8_t *)codes + al64((size_t)K));
    float *xs = c->xs + m * G;
    c->ap->to_i8(q, codes, xs, mins, K);
    for (int64_t g = 0; g < G; g++) {
        int s = 0;
        for (int k = 0; k < 16; k++) {
            s += codes[16 * g + k];
        }
        c->xms[m * G + g] = xs[g] * (float)s;
        if (c->xsum) {
            c->xsum[m * G + g] = s;
        }
    }
    if (c->tier == TIER_AVX2) {
        int16_t *d = (int16_t *)c->xa + m * K;
        for (int64_t k = 0; k < K; k++) {
            d[k] = codes[k];
        }
        memcpy(c->xa8 + m * K, codes, (size_t)K);
    } else {
        uint8_t *d = (uint8_t *)c->xa + m * K;
        const uint8_t flip = c->tier == TIER_VNNI ? 0x80 : 0x00;
        for (int64_t k = 0; k < K; k++) {
            d[k] = (uint8_t)codes[k] ^ flip;
        }
    }
}

/* ---- step 2: weight tiles --------------------------------------------------------------- */

/* the per-thread scratch of a tile task */
typedef struct tile_buf {
    int8_t *q;        /* (GR, K) codes, row-major (the portable kernel's layout) */
    float *sc, *mn1;  /* (GR, G) scales and mins, row-major */
    void *w;          /* the codes in the SIMD tier's layout */
    float *ws, *mn;   /* (G, GR) scales and mins */
    int32_t *corr;    /* (G, GR) VNNI offset corrections */
    float *res;       /* (GT, GR) micro-kernel results */
    int u8;           /* AVX2: w holds the u8 layout (codes - lo) */
    int lo;           /* AVX2 u8 layout: the tile's smallest code */
} tile_buf;

static size_t tile_bytes(int64_t K, int64_t G, tile_buf *b, void *base) {
    uint8_t *p = (uint8_t *)base;
    size_t off = 0;
#define TAKE(field, type, n)                                  \
    do {                                                      \
        if (b) {                                              \
            b->field = (type *)(void *)(p + off);             \
        }                                                     \
        off += al64((size_t)(n) * sizeof(type));              \
    } while (0)
    TAKE(q, int8_t, K * GR + 64); /* + 64: the AVX2 gathers read 2 bytes past the last row */
    TAKE(sc, float, G * GR);
    TAKE(mn1, float, G * GR);
    TAKE(w, int16_t, K * GR); /* the widest layout (AVX2: int16) */
    TAKE(ws, float, G * GR);
    TAKE(mn, float, G * GR);
    TAKE(corr, int32_t, G * GR);
    TAKE(res, float, GT * GR);
#undef TAKE
    return off;
}

/* the portable layout: scales and mins transposed to (G, GR); the codes stay row-major */
static int pack_portable(int64_t G, const tile_buf *b) {
    int has_min = 0;
    for (int r = 0; r < GR; r++) {
        for (int64_t g = 0; g < G; g++) {
            b->ws[g * GR + r] = b->sc[r * G + g];
            b->mn[g * GR + r] = b->mn1[r * G + g];
            has_min |= b->mn1[r * G + g] != 0.0f;
        }
    }
    return has_min;
}

#if defined(__x86_64__)
static int pack_vnni(int64_t K, int64_t G, const tile_buf *b);
static int pack_avx2(int64_t K, int64_t G, tile_buf *b, int no_u8);
#endif

/* unpack weight rows n0 .. n0 + GR - 1 (rows past N as zeros) into the tier's layout; returns
 * whether any min is nonzero */
static int unpack_tile(const gemm_ctx *c, int64_t n0, tile_buf *b) {
    const int64_t K = c->K, G = c->G;
    for (int r = 0; r < GR; r++) {
        int8_t *q = b->q + r * K;
        float *sc = b->sc + r * G, *mn = b->mn1 + r * G;
        if (n0 + r < c->N) {
            c->wp->to_i8(c->wd + (n0 + r) * c->w_row, q, sc, mn, K);
        } else {
            memset(q, 0, (size_t)K);
            memset(sc, 0, (size_t)G * sizeof(float));
            memset(mn, 0, (size_t)G * sizeof(float));
        }
    }
    switch (c->tier) {
#if defined(__x86_64__)
    case TIER_VNNI: return pack_vnni(K, G, b);
    case TIER_AVX2: return pack_avx2(K, G, b, c->no_u8);
#endif
    default: return pack_portable(G, b);
    }
}

/* micro-kernels: res[t * GR + r] = sum over groups g of
 *   (float)(sum_k q[r, 16g + k] a[t, 16g + k]) * (ws[g, r] * xs[t, g]) + mn[g, r] * xms[t, g]
 * for T tokens starting at t0 */

static void kern_portable(const gemm_ctx *c, const tile_buf *b, int64_t t0, int T,
                          int has_min) {
    const int64_t K = c->K, G = c->G;
    const int8_t *W = b->q;
    for (int t = 0; t < T; t++) {
        const int8_t *xa = (const int8_t *)c->xa + (t0 + t) * K;
        const float *xs = c->xs + (t0 + t) * G, *xms = c->xms + (t0 + t) * G;
        for (int r = 0; r < GR; r++) {
            const int8_t *wr = W + r * K;
            float acc = 0.0f;
            for (int64_t g = 0; g < G; g++) {
                int s = 0;
                for (int k = 0; k < 16; k++) {
                    s += (int)wr[16 * g + k] * (int)xa[16 * g + k];
                }
                acc += (float)s * (b->ws[g * GR + r] * xs[g]);
                if (has_min) {
                    acc += b->mn[g * GR + r] * xms[g];
                }
            }
            b->res[t * GR + r] = acc;
        }
    }
}

#if defined(__x86_64__)
#include <immintrin.h>

#define GEMM_AVX2 __attribute__((target("avx2,fma")))
#define GEMM_VNNI \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")))
#define GEMM_INLINE static inline __attribute__((always_inline))

static inline int32_t ld32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* transpose of a 16 x n block of 32-bit words (n <= 16): row r of src at src + r * sstride
 * bytes; column c of the block (16 words, one per row) stored at dst + c * 64 (unpacks and
 * lane shuffles: the gathers are slow on some processors) */
GEMM_VNNI static void tr16(const uint8_t *src, int64_t sstride, int n, uint8_t *dst) {
    const __mmask16 m = (__mmask16)((1u << n) - 1u);
    __m512i r[16], t[16], u[16];
    for (int i = 0; i < 16; i++) {
        r[i] = _mm512_maskz_loadu_epi32(m, (const void *)(src + i * sstride));
    }
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    /* u[4 q + k], 128-bit lane L: column 4 L + k of rows 4 q .. 4 q + 3 */
    for (int k = 0; k < 4; k++) {
        const __m512i a = _mm512_shuffle_i32x4(u[k], u[4 + k], _MM_SHUFFLE(2, 0, 2, 0));
        const __m512i b = _mm512_shuffle_i32x4(u[k], u[4 + k], _MM_SHUFFLE(3, 1, 3, 1));
        const __m512i c = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], _MM_SHUFFLE(2, 0, 2, 0));
        const __m512i d = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], _MM_SHUFFLE(3, 1, 3, 1));
        const __m512i o[4] = {_mm512_shuffle_i32x4(a, c, _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_i32x4(b, d, _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_i32x4(a, c, _MM_SHUFFLE(3, 1, 3, 1)),
                              _mm512_shuffle_i32x4(b, d, _MM_SHUFFLE(3, 1, 3, 1))};
        for (int L = 0; L < 4; L++) {
            if (4 * L + k < n) {
                _mm512_store_si512((void *)(dst + (4 * L + k) * 64), o[L]);
            }
        }
    }
}

/* (G, GR) scales and mins from the row-major (GR, G) ones; whether a min is nonzero */
GEMM_VNNI static int pack_scales512(int64_t G, const tile_buf *b) {
    for (int64_t g = 0; g < G; g += 16) {
        const int n = (int)(G - g < 16 ? G - g : 16);
        tr16((const uint8_t *)(b->sc + g), G * 4, n, (uint8_t *)(b->ws + g * GR));
        tr16((const uint8_t *)(b->mn1 + g), G * 4, n, (uint8_t *)(b->mn + g * GR));
    }
    __mmask16 nz = 0;
    for (int64_t g = 0; g < G; g++) {
        nz |= _mm512_cmp_ps_mask(_mm512_load_ps(b->mn + g * GR), _mm512_setzero_ps(),
                                 _CMP_NEQ_UQ);
    }
    return nz != 0;
}

/* VNNI layout: byte 64 j + 4 r .. + 3 = codes 4 j .. 4 j + 3 of row r; corrections -128 *
 * (sum of each row's 16 codes of a group) by vpdpbusd with 128 */
GEMM_VNNI static int pack_vnni(int64_t K, int64_t G, const tile_buf *b) {
    uint8_t *W = (uint8_t *)b->w;
    for (int64_t j = 0; j < K / 4; j += 16) {
        const int n = (int)(K / 4 - j < 16 ? K / 4 - j : 16);
        tr16((const uint8_t *)(b->q + 4 * j), K, n, W + 64 * j);
    }
    const __m512i c128 = _mm512_set1_epi8((char)0x80), z = _mm512_setzero_si512();
    for (int64_t g = 0; g < G; g++) {
        const uint8_t *wg = W + 256 * g;
        __m512i s = _mm512_dpbusd_epi32(z, c128, _mm512_load_si512((const void *)wg));
        s = _mm512_dpbusd_epi32(s, c128, _mm512_load_si512((const void *)(wg + 64)));
        s = _mm512_dpbusd_epi32(s, c128, _mm512_load_si512((const void *)(wg + 128)));
        s = _mm512_dpbusd_epi32(s, c128, _mm512_load_si512((const void *)(wg + 192)));
        _mm512_store_si512((void *)(b->corr + g * GR), _mm512_sub_epi32(z, s));
    }
    return pack_scales512(G, b);
}

/* the 8 x 8 transpose of 16-bit words: a[r] word j -> o[j] word r */
GEMM_AVX2 GEMM_INLINE void tr8x8_16(const __m128i a[8], __m128i o[8]) {
    __m128i b[8], c[8];
    for (int i = 0; i < 4; i++) {
        b[2 * i] = _mm_unpacklo_epi16(a[2 * i], a[2 * i + 1]);
        b[2 * i + 1] = _mm_unpackhi_epi16(a[2 * i], a[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        c[4 * i] = _mm_unpacklo_epi32(b[4 * i], b[4 * i + 2]);
        c[4 * i + 1] = _mm_unpackhi_epi32(b[4 * i], b[4 * i + 2]);
        c[4 * i + 2] = _mm_unpacklo_epi32(b[4 * i + 1], b[4 * i + 3]);
        c[4 * i + 3] = _mm_unpackhi_epi32(b[4 * i + 1], b[4 * i + 3]);
    }
    for (int i = 0; i < 4; i++) {
        o[2 * i] = _mm_unpacklo_epi64(c[i], c[4 + i]);
        o[2 * i + 1] = _mm_unpackhi_epi64(c[i], c[4 + i]);
    }
}

/* the 8 x 8 transpose of 32-bit words: a[r] word j -> o[j] word r */
GEMM_AVX2 GEMM_INLINE void tr8x8_32(const __m256i a[8], __m256i o[8]) {
    __m256i b[8], c[8];
    for (int i = 0; i < 4; i++) {
        b[2 * i] = _mm256_unpacklo_epi32(a[2 * i], a[2 * i + 1]);
        b[2 * i + 1] = _mm256_unpackhi_epi32(a[2 * i], a[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        c[4 * i] = _mm256_unpacklo_epi64(b[4 * i], b[4 * i + 2]);
        c[4 * i + 1] = _mm256_unpackhi_epi64(b[4 * i], b[4 * i + 2]);
        c[4 * i + 2] = _mm256_unpacklo_epi64(b[4 * i + 1], b[4 * i + 3]);
        c[4 * i + 3] = _mm256_unpackhi_epi64(b[4 * i + 1], b[4 * i + 3]);
    }
    /* c[k] (k < 4), 128-bit lane L: word k + 4L of rows 0..3; c[4 + k]: of rows 4..7 */
    for (int i = 0; i < 4; i++) {
        o[i] = _mm256_permute2x128_si256(c[i], c[4 + i], 0x20);
        o[4 + i] = _mm256_permute2x128_si256(c[i], c[4 + i], 0x31);
    }
}

/* AVX2 u8 layout, for a tile whose codes span at most 32 values: byte 64 j + 4 r + e = code
 * 4 j + e of row r minus lo, the tile's smallest code (b->lo; b->u8 = 1).  Returns 0 (and
 * writes nothing) when the span is wider */
GEMM_AVX2 static int pack_avx2_u8(int64_t K, tile_buf *b) {
    __m256i mn = _mm256_set1_epi8(127), mx = _mm256_set1_epi8(-128);
    for (int64_t i = 0; i < GR * K; i += 32) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(b->q + i));
        mn = _mm256_min_epi8(mn, v);
        mx = _mm256_max_epi8(mx, v);
    }
    int8_t lo8[32], hi8[32];
    _mm256_storeu_si256((__m256i *)(void *)lo8, mn);
    _mm256_storeu_si256((__m256i *)(void *)hi8, mx);
    int lo = 127, hi = -128;
    for (int i = 0; i < 32; i++) {
        lo = lo8[i] < lo ? lo8[i] : lo;
        hi = hi8[i] > hi ? hi8[i] : hi;
    }
    b->u8 = hi - lo <= 31;
    b->lo = lo;
    if (!b->u8) {
        return 0;
    }
    uint8_t *W = (uint8_t *)b->w;
    const __m256i off = _mm256_set1_epi8((char)lo);
    for (int64_t j = 0; j < K / 4; j += 8) { /* quads j .. j + 7 */
        for (int h = 0; h < 2; h++) {          /* rows 8h .. 8h + 7 */
            __m256i a[8], o[8];
            for (int r = 0; r < 8; r++) {
                a[r] = _mm256_sub_epi8(
                    _mm256_loadu_si256((const __m256i *)(const void *)(b->q + (8 * h + r) * K +
                                                                       4 * j)),
                    off);
            }
            tr8x8_32(a, o);
            for (int i = 0; i < 8; i++) {
                _mm256_store_si256((__m256i *)(void *)(W + 64 * (j + i) + 32 * h), o[i]);
            }
        }
    }
    return 1;
}

/* AVX2 layout: int16 element 32 j + 2 r + e = code 2 j + e of row r.  Per 16 codes of the
 * 16 rows: the rows' code pairs as 16-bit words transposed (two 8 x 8 transposes), each
 * word's two codes sign-extended to int16 (no gathers: they were a tenth of prefill) */
GEMM_AVX2 static int pack_avx2(int64_t K, int64_t G, tile_buf *b, int no_u8) {
    if (!no_u8 && pack_avx2_u8(K, b)) {
        return pack_portable(G, b);
    }
    int16_t *W = (int16_t *)b->w;
    for (int64_t c16 = 0; c16 < K / 16; c16++) {
        __m128i a[8], o[8];
        for (int h = 0; h < 2; h++) { /* rows 8h .. 8h + 7 */
            for (int r = 0; r < 8; r++) {
                a[r] = _mm_loadu_si128((const __m128i *)(const void *)(b->q + (8 * h + r) * K +
                                                                       16 * c16));
            }
            tr8x8_16(a, o);
            for (int j = 0; j < 8; j++) {
                _mm256_store_si256((__m256i *)(void *)(W + 32 * (8 * c16 + j) + 16 * h),
                                   _mm256_cvtepi8_epi16(o[j]));
            }
        }
    }
    return pack_portable(G, b);
}

GEMM_VNNI GEMM_INLINE void vnni_body(const gemm_ctx *c, const tile_buf *b, int64_t t0,
                                     const int T, const int has_min) {
    const int64_t K = c->K, G = c->G;
    const uint8_t *W = (const uint8_t *)b->w;
    const uint8_t *xa = (const uint8_t *)c->xa + t0 * K;
    const float *xs = c->xs + t0 * G, *xms = c->xms + t0 * G;
    __m512 acc[GT];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        acc[t] = _mm512_setzero_ps();
    }
    for (int64_t g = 0; g < G; g++) {
        const __m512i w0 = _mm512_load_si512((const void *)(W + g * 256));
        const __m512i w1 = _mm512_load_si512((const void *)(W + g * 256 + 64));
        const __m512i w2 = _mm512_load_si512((const void *)(W + g * 256 + 128));
        const __m512i w3 = _mm512_load_si512((const void *)(W + g * 256 + 192));
        const __m512i cr = _mm512_load_si512((const void *)(b->corr + g * GR));
        const __m512 s = _mm512_load_ps(b->ws + g * GR);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const uint8_t *xp = xa + t * K + 16 * g;
            __m512i i = _mm512_dpbusd_epi32(cr, _mm512_set1_epi32(ld32(xp)), w0);
            i = _mm512_dpbusd_epi32(i, _mm512_set1_epi32(ld32(xp + 4)), w1);
            i = _mm512_dpbusd_epi32(i, _mm512_set1_epi32(ld32(xp + 8)), w2);
            i = _mm512_dpbusd_epi32(i, _mm512_set1_epi32(ld32(xp + 12)), w3);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i),
                                     _mm512_mul_ps(s, _mm512_set1_ps(xs[t * G + g])), acc[t]);
        }
        if (has_min) {
            const __m512 mn = _mm512_load_ps(b->mn + g * GR);
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) {
                acc[t] = _mm512_fmadd_ps(mn, _mm512_set1_ps(xms[t * G + g]), acc[t]);
            }
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        _mm512_store_ps(b->res + t * GR, acc[t]);
    }
}

#define VNNI_T(T)                                                                      \
    GEMM_VNNI static void vnni_##T(const gemm_ctx *c, const tile_buf *b, int64_t t0,   \
                                   int has_min) {                                      \
        if (has_min) {                                                                 \
            vnni_body(c, b, t0, T, 1);                                                 \
        } else {                                                                       \
            vnni_body(c, b, t0, T, 0);                                                 \
        }                                                                              \
    }
VNNI_T(1)
VNNI_T(2)
VNNI_T(3)
VNNI_T(4)
VNNI_T(5)
VNNI_T(6)
VNNI_T(7)
VNNI_T(8)

static void kern_vnni(const gemm_ctx *c, const tile_buf *b, int64_t t0, int T, int has_min) {
    switch (T) {
    case 1: vnni_1(c, b, t0, has_min); break;
    case 2: vnni_2(c, b, t0, has_min); break;
    case 3: vnni_3(c, b, t0, has_min); break;
    case 4: vnni_4(c, b, t0, has_min); break;
    case 5: vnni_5(c, b, t0, has_min); break;
    case 6: vnni_6(c, b, t0, has_min); break;
    case 7: vnni_7(c, b, t0, has_min); break;
    default: vnni_8(c, b, t0, has_min); break;
    }
}

#define GT2 4 /* tokens per AVX2 micro-kernel call (16 ymm registers) */

/* the float steps of group g for T tokens, from the group's int32 sums of rows 0..7 (i0) and
 * 8..15 (i1): acc += float(i) * (ws * xs), then + mn * xms where a min is nonzero */
GEMM_AVX2 GEMM_INLINE void avx2_group_float(__m256 acc[][2], const __m256i *i0,
                                            const __m256i *i1, const tile_buf *b, int64_t g,
                                            const float *xs, const float *xms, int64_t G,
                                            const int T, const int has_min) {
    const __m256 s0 = _mm256_load_ps(b->ws + g * GR);
    const __m256 s1 = _mm256_load_ps(b->ws + g * GR + 8);
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        const __m256 xb = _mm256_set1_ps(xs[t * G + g]);
        acc[t][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0[t]), _mm256_mul_ps(s0, xb), acc[t][0]);
        acc[t][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1[t]), _mm256_mul_ps(s1, xb), acc[t][1]);
    }
    if (has_min) {
        const __m256 m0 = _mm256_load_ps(b->mn + g * GR);
        const __m256 m1 = _mm256_load_ps(b->mn + g * GR + 8);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const __m256 xm = _mm256_set1_ps(xms[t * G + g]);
            acc[t][0] = _mm256_fmadd_ps(m0, xm, acc[t][0]);
            acc[t][1] = _mm256_fmadd_ps(m1, xm, acc[t][1]);
        }
    }
}

GEMM_AVX2 GEMM_INLINE void avx2_store_res(__m256 acc[][2], const tile_buf *b, const int T) {
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        _mm256_store_ps(b->res + t * GR, acc[t][0]);
        _mm256_store_ps(b->res + t * GR + 8, acc[t][1]);
    }
}

GEMM_AVX2 GEMM_INLINE void avx2_body(const gemm_ctx *c, const tile_buf *b, int64_t t0,
                                     const int T, const int has_min) {
    const int64_t K = c->K, G = c->G;
    const int16_t *W = (const int16_t *)b->w;
    const int16_t *xa = (const int16_t *)c->xa + t0 * K;
    const float *xs = c->xs + t0 * G, *xms = c->xms + t0 * G;
    __m256 acc[GT2][2];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    }
    for (int64_t g = 0; g < G; g++) {
        const int16_t *wg = W + g * 8 * 2 * GR; /* 8 pairs x 16 rows x 2 */
        const int16_t *xg = xa + 16 * g;
        /* each pair of weight vectors is loaded once and used by every token (the loads, not
         * the multiplies, bounded the token-outer order) */
        __m256i i0[GT2], i1[GT2];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            i0[t] = i1[t] = _mm256_setzero_si256();
        }
#pragma GCC unroll 8
        for (int e = 0; e < 8; e++) {
            const __m256i *wp = (const __m256i *)(const void *)(wg + e * 2 * GR);
            const __m256i w0 = _mm256_load_si256(wp), w1 = _mm256_load_si256(wp + 1);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                const __m256i xb = _mm256_set1_epi32(ld32(xg + t * K + 2 * e));
                i0[t] = _mm256_add_epi32(i0[t], _mm256_madd_epi16(w0, xb));
                i1[t] = _mm256_add_epi32(i1[t], _mm256_madd_epi16(w1, xb));
                /* keep the sums in registers: unchecked, the compiler re-associates the
                 * integer chains into a tree of stored products */
                __asm__("" : "+x"(i0[t]), "+x"(i1[t]));
            }
        }
        avx2_group_float(acc, i0, i1, b, g, xs, xms, G, T, has_min);
    }
    avx2_store_res(acc, b, T);
}

/* the u8 tiles: the same per-group float steps as avx2_body on the same int32 sums */
GEMM_AVX2 GEMM_INLINE void avx2u8_body(const gemm_ctx *c, const tile_buf *b, int64_t t0,
                                       const int T, const int has_min) {
    const int64_t K = c->K, G = c->G;
    const uint8_t *W = (const uint8_t *)b->w;
    const int8_t *xa = c->xa8 + t0 * K;
    const int32_t *xsum = c->xsum + t0 * G;
    const float *xs = c->xs + t0 * G, *xms = c->xms + t0 * G;
    const __m256i ones = _mm256_set1_epi16(1);
    const int lo = b->lo;
    __m256 acc[GT2][2];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    }
    for (int64_t g = 0; g < G; g++) {
        const uint8_t *wg = W + g * 4 * 64; /* 4 quads x 16 rows x 4 */
        const int8_t *xg = xa + 16 * g;
        __m256i s0[GT2], s1[GT2];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m256i w0 = _mm256_load_si256((const __m256i *)(const void *)(wg + 64 * j));
            const __m256i w1 =
                _mm256_load_si256((const __m256i *)(const void *)(wg + 64 * j + 32));
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                const __m256i xb = _mm256_set1_epi32(ld32(xg + t * K + 4 * j));
                const __m256i p0 = _mm256_maddubs_epi16(w0, xb);
                const __m256i p1 = _mm256_maddubs_epi16(w1, xb);
                s0[t] = j ? _mm256_add_epi16(s0[t], p0) : p0;
                s1[t] = j ? _mm256_add_epi16(s1[t], p1) : p1;
                /* the sums stay in registers (as in avx2_body) */
                __asm__("" : "+x"(s0[t]), "+x"(s1[t]));
            }
        }
        __m256i i0[GT2], i1[GT2];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const __m256i corr = _mm256_set1_epi32(lo * xsum[t * G + g]);
            i0[t] = _mm256_add_epi32(_mm256_madd_epi16(s0[t], ones), corr);
            i1[t] = _mm256_add_epi32(_mm256_madd_epi16(s1[t], ones), corr);
        }
        avx2_group_float(acc, i0, i1, b, g, xs, xms, G, T, has_min);
    }
    avx2_store_res(acc, b, T);
}

#define AVX2_T(T)                                                                      \
    GEMM_AVX2 static void avx2_##T(const gemm_ctx *c, const tile_buf *b, int64_t t0,   \
                                   int has_min) {                                      \
        if (has_min) {                                                                 \
            avx2_body(c, b, t0, T, 1);                                                 \
        } else {                                                                       \
            avx2_body(c, b, t0, T, 0);                                                 \
        }                                                                              \
    }                                                                                  \
    GEMM_AVX2 static void avx2u8_##T(const gemm_ctx *c, const tile_buf *b, int64_t t0, \
                                     int has_min) {                                    \
        if (has_min) {                                                                 \
            avx2u8_body(c, b, t0, T, 1);                                               \
        } else {                                                                       \
            avx2u8_body(c, b, t0, T, 0);                                               \
        }                                                                              \
    }
AVX2_T(1)
AVX2_T(2)
AVX2_T(3)
AVX2_T(4)

static void kern_avx2(const gemm_ctx *c, const tile_buf *b, int64_t t0, int T, int has_min) {
    if (b->u8) {
        switch (T) {
        case 1: avx2u8_1(c, b, t0, has_min); break;
        case 2: avx2u8_2(c, b, t0, has_min); break;
        case 3: avx2u8_3(c, b, t0, has_min); break;
        default: avx2u8_4(c, b, t0, has_min); break;
        }
        return;
    }
    switch (T) {
    case 1: avx2_1(c, b, t0, has_min); break;
    case 2: avx2_2(c, b, t0, has_min); break;
    case 3: avx2_3(c, b, t0, has_min); break;
    default: avx2_4(c, b, t0, has_min); break;
    }
}
#endif

/* o[0 .. nr) (=, or += with accumulate) act(v + bias[n0 ..]), v = the kernel's results: the
 * arithmetic of mm_store in ops.c, in loops without a per-element switch */
static void store_row(const gemm_ctx *c, const float *res, float *o, int64_t n0, int nr) {
    float v[GR];
    for (int r = 0; r < nr; r++) {
        v[r] = c->bias ? res[r] + c->bias[n0 + r] : res[r];
    }
    if (c->act != FDY_ACT_NONE) {
        for (int r = 0; r < nr; r++) {
            v[r] = gemm_act(v[r], c->act);
        }
    }
    if (c->accumulate) {
        for (int r = 0; r < nr; r++) {
            o[r] += v[r];
        }
    } else {
        memcpy(o, v, (size_t)nr * sizeof(float));
    }
}

static void tile_task(void *vctx, int64_t task, int thread) {
    const gemm_ctx *c = (const gemm_ctx *)vctx;
    tile_buf b = {0};
    tile_bytes(c->K, c->G, &b, fdy_scratch(thread));
    const int64_t n0 = task * GR;
    const int nr = (int)(c->N - n0 < GR ? c->N - n0 : GR);
    const int has_min = unpack_tile(c, n0, &b);
    int step = GT;
#if defined(__x86_64__)
    if (c->tier == TIER_AVX2) {
        step = GT2;
    }
#endif
    for (int64_t t0 = 0; t0 < c->M; t0 += step) {
        const int T = (int)(c->M - t0 < step ? c->M - t0 : step);
        switch (c->tier) {
#if defined(__x86_64__)
        case TIER_VNNI: kern_vnni(c, &b, t0, T, has_min); break;
        case TIER_AVX2: kern_avx2(c, &b, t0, T, has_min); break;
#endif
        default: kern_portable(c, &b, t0, T, has_min); break;
        }
        for (int t = 0; t < T; t++) {
            store_row(c, b.res + t * GR, c->out + (t0 + t) * c->N + n0, n0, nr);
        }
    }
}

/* ---- entry ------------------------------------------------------------------------------ */

fdy_status fdy_gemm_q8(const fdy_weight *w, const float *x, int64_t M, const float *bias,
                       float *out, int accumulate, int act, int *handled) {
    *handled = 0;
    const fdy_policy *wp = w->policy;
    if (!wp->to_i8 || !wp->dot_type) {
        return FDY_OK;
    }
    const fdy_policy *ap = fdy_policy_by_name(wp->dot_type);
    const int64_t K = w->cols, N = w->rows;
    if (!ap || !ap->to_i8 || !ap->quantize || K % ap->block_elems != 0 ||
        K % wp->block_elems != 0 || K % 32 != 0) {
        return FDY_OK;
    }
    gemm_ctx c = {0};
    c.wp = wp;
    c.ap = ap;
    c.wd = (const uint8_t *)w->data;
    c.w_row = fdy_policy_row_bytes(wp, K);
    c.a_row = fdy_policy_row_bytes(ap, K);
    if (c.w_row < 0 || c.a_row < 0) {
        return FDY_ERR_INVALID;
    }
    c.M = M;
    c.K = K;
    c.N = N;
    c.G = K / 16;
    c.tier = gemm_tier();
    /* PYFOUNDRY_GEMM_I16=1: the AVX2 tier widens every tile to int16 (the same bits; a timing
     * and testing switch, read per call) */
    const char *i16 = getenv("PYFOUNDRY_GEMM_I16");
    c.no_u8 = i16 && *i16 && *i16 != '0';
    c.x = x;
    c.bias = bias;
    c.out = out;
    c.accumulate = accumulate;
    c.act = act;

    const size_t xq_bytes = al64((size_t)(M * c.a_row));
    const size_t xa_bytes = al64((size_t)(M * K) * (c.tier == TIER_AVX2 ? 2 : 1));
    const size_t xs_bytes = al64((size_t)(M * c.G) * sizeof(float));
    /* AVX2: the s8 codes and the group sums as well */
    const size_t x8_bytes = c.tier == TIER_AVX2 ? al64((size_t)(M * K)) + xs_bytes : 0;
    uint8_t *buf = (uint8_t *)aligned_alloc(64, xq_bytes + xa_bytes + 2 * xs_bytes + x8_bytes);
    if (!buf) {
        return fdy_fail(FDY_ERR_NOMEM, "matmul: cannot allocate the quantized activations");
    }
    c.xq = buf;
    c.xa = buf + xq_bytes;
    c.xs = (float *)(void *)(buf + xq_bytes + xa_bytes);
    c.xms = (float *)(void *)(buf + xq_bytes + xa_bytes + xs_bytes);
    if (x8_bytes) {
        c.xa8 = (int8_t *)(void *)(buf + xq_bytes + xa_bytes + 2 * xs_bytes);
        c.xsum = (int32_t *)(void *)(buf + xq_bytes + xa_bytes + 2 * xs_bytes + al64((size_t)(M * K)));
    }

    size_t scratch = tile_bytes(K, c.G, NULL, NULL);
    const size_t prep = al64((size_t)K) + al64((size_t)c.G * sizeof(float));
    fdy_status s = fdy_scratch_reserve(scratch > prep ? scratch : prep);
    if (s) {
        free(buf);
        return s;
    }
    fdy_parallel(prep_task, &c, M);
    fdy_parallel(tile_task, &c, (N + GR - 1) / GR);
    free(buf);
    *handled = 1;
    return FDY_OK;
}
