/* simd_amx.h - host-only: the f32 variant's decode GEMV on CPUs with AMX (int8 tile
 * multiplies), for the 32-element block formats q4_0, q4_1 and q8_0 (policy.h: fdy_amx_act,
 * pack_amx, vec_dot_f32_amx).
 *
 * The activation comes as exact integers (fdy_amx_prepare: four signed base-256 digits of a
 * 32-bit fixed point per block) and the weight codes as int8, so one tile multiply-add
 * (TDPBSSD, or TDPBSUD for unsigned codes) of an 8 x 64 digit tile A by a 64 x 16 code tile B
 * gives, for 16 weight rows at once, each digit's exact integer sum over each of two blocks:
 * C[2 p + h][n] = sum over block h of digit_p(X_k) * code(n, k).  Per block, the four digit
 * sums make the integer sum_k X_k code(n, k) = ((C3 * 256 + C2) * 65536 + (C1 * 256 + C0)):
 * the two halves exactly in int32, then one float multiply-add; times d * 2^-S_b (and, with a
 * min, plus m * sum_b) into the row's float accumulator.  So the result differs from the
 * exact dot product of the decoded weights with x by the fixed point of x (at most 2^-30 of
 * the block's largest |x| per element) and a few float roundings per block: inside the
 * float32 dot-product bound of the f32 kernels (they round once per product and sum).
 *
 * The weight's AMX layout (pack_amx) holds, per group of 16 rows and chunk of 64 elements
 * (two blocks; an odd last block padded with zero codes and scales), the 32 scales d as f16
 * in the order [block h][row n], for q4_1 then the 32 mins likewise, then the codes:
 *   q8_0  1024 bytes, the B tile itself: byte 64 i + 4 n + j is code(n, 4 i + j)
 *   q4_0, q4_1  512 bytes of nibbles: byte 64 i + 4 n + j holds code(n, 8 i + j) in its low
 *         and code(n, 8 i + 4 + j) in its high nibble; q4_0 stores code ^ 8, the value
 *         code - 8 as a 4-bit two's complement number.  B rows 2 i and 2 i + 1 are formed
 *         with three operations per 64 bytes: (v << 4) & 0xF0 and v & 0xF0, the codes times
 *         16 (as int8 for q4_0, as uint8 for q4_1); scale16 = 2^-S_b / 16 undoes the 16.
 * Same bytes per weight as the file's blocks (18, 20 and 34 per 32).
 *
 * The kernel runs a three-stage software pipeline over steps (group, quad of chunks): the
 * codes of step s + 1 are formed into a scratch tile while the tile unit multiplies step s and
 * the vector unit extracts the sums of step s - 1.  A tile load of bytes that vector stores
 * have just written waits for those stores to reach the cache, and a vector load of a tile
 * store's bytes likewise: without the distance the kernel ran 1.8x slower
 * (docs/CPU_NOTES.md item 47). */
#ifndef FDY_SIMD_AMX_H
#define FDY_SIMD_AMX_H
#ifdef FDY_HOST

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

enum { FDY_AMX_Q4_0, FDY_AMX_Q4_1, FDY_AMX_Q8_0 };

/* the layout's bytes per chunk, and the offset of the codes in it */
#define FDY_AMX_CB(fmt) ((fmt) == FDY_AMX_Q8_0 ? 1088 : (fmt) == FDY_AMX_Q4_1 ? 640 : 576)
#define FDY_AMX_CODES(fmt) ((fmt) == FDY_AMX_Q4_1 ? 128 : 64)

/* 16 rows (row_bytes apart, n elements each) as one group of the AMX layout at dst, read
 * through the policy's to_i8 (the codes, and its scale and min per 16 elements, equal in the
 * two halves of a block; the scales and mins came from f16 and go back to it exactly).
 * Returns 0, or -1 without the memory for one row's codes. */
static inline int fdy_amx_pack(const void *src, size_t row_bytes, void *dst, int64_t n, int fmt,
                               fdy_to_i8_fn to_i8) {
    const int64_t nb = n / 32, nc = (nb + 1) / 2;
    const int cb = FDY_AMX_CB(fmt), co = FDY_AMX_CODES(fmt);
    int8_t *q = (int8_t *)malloc((size_t)n);
    float *sc = (float *)malloc((size_t)(n / 16) * sizeof(float));
    float *mn = (float *)malloc((size_t)(n / 16) * sizeof(float));
    const int rc = q && sc && mn ? 0 : -1;
    uint8_t *out = (uint8_t *)dst;
    if (rc == 0) {
        memset(out, 0, (size_t)(nc * cb)); /* an odd last block: zero codes and scales */
    }
    for (int r = 0; r < FDY_AMX_ROWS && rc == 0; r++) {
        to_i8((const uint8_t *)src + (size_t)r * row_bytes, q, sc, mn, n);
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *c = out + (b / 2) * cb;
            const int h = (int)(b & 1);
            const uint16_t d = fdy_float_to_half(sc[2 * b]);
            memcpy(c + 2 * (16 * h + r), &d, 2);
            if (fmt == FDY_AMX_Q4_1) {
                const uint16_t m = fdy_float_to_half(mn[2 * b]);
                memcpy(c + 64 + 2 * (16 * h + r), &m, 2);
            }
            for (int e = 0; e < 32; e++) {
                const int k = 32 * h + e; /* K position in the chunk */
                const int v = q[32 * b + e];
                if (fmt == FDY_AMX_Q8_0) {
                    c[co + 64 * (k / 4) + 4 * r + k % 4] = (uint8_t)(int8_t)v;
                } else {
                    /* k = 8 i + 4 t + j: byte 64 i + 4 r + j, low nibble for t = 0; q4_0's
                     * code - 8 as 4 bits (code ^ 8) */
                    const int i = k / 8, t = (k / 4) % 2, j = k % 4;
                    c[co + 64 * i + 4 * r + j] |= (uint8_t)((v & 15) << (4 * t));
                }
            }
        }
    }
    free(q);
    free(sc);
    free(mn);
    return rc;
}

#if defined(__x86_64__) && (defined(__clang__) || __GNUC__ >= 11)
#define FDY_HAVE_AMX 1
#include <immintrin.h>

#define FDY_AMX_TARGET                                                                  \
    __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512dq,avx2,fma," \
                          "f16c")))
#define FDY_AMX_INLINE static inline __attribute__((always_inline))

typedef struct fdy_amx_cfg {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} fdy_amx_cfg;

/* tiles 0, 1: C (8 x 16 int32); 2, 3: B (16 x 64 codes); 4 .. 7: A (8 x 64 digits) */
static const fdy_amx_cfg fdy_amx_tiles = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {8, 8, 16, 16, 8, 8, 8, 8},
};

/* the 16 f16 at p as floats */
FDY_AMX_TARGET FDY_AMX_INLINE __m512 fdy_amx_h16(const uint8_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

/* B rows 2 i, 2 i + 1 of one nibble chunk (codes at q) into scratch b */
FDY_AMX_TARGET FDY_AMX_INLINE void fdy_amx_form(const uint8_t *q, uint8_t *b) {
    const __m512i m = _mm512_set1_epi8((char)0xF0);
    for (int i = 0; i < 8; i++) {
        const __m512i v = _mm512_loadu_si512((const void *)(q + 64 * i));
        _mm512_store_si512((void *)(b + 128 * i), _mm512_and_si512(_mm512_slli_epi16(v, 4), m));
        _mm512_store_si512((void *)(b + 128 * i + 64), _mm512_and_si512(v, m));
    }
}

/* the stream prefetch of the layout (policy.h: fdy_stream_prefetch): every FDY_AMX_PF_STEP
 * bytes, the far request at fdy_stream_ahead and the near one at FDY_AMX_NEAR_X times
 * fdy_stream_near (the kernel forms a step ahead of its multiplies, so its loads come a step
 * earlier than the plain kernels').  On the AVX-512 Xeon of item 47, a single-thread pass over
 * 24 MB of q4_0 rows (L3) ran 1.25-1.85 ns per block with 1x, 1.17-1.22 with 2x and
 * 1.21-1.22 with 4x (noisy); one request per 64-byte line instead of per 256 bytes was no
 * faster in the model. */
#define FDY_AMX_PF_STEP 256
#define FDY_AMX_NEAR_X 2
/* stage 1 of step (g, q): prefetch the step's chunks and form the nibble codes into bs */
#define FDY_AMX_FORM(G, Q, NCH, BS)                                                       \
    do {                                                                                   \
        for (int t_ = 0; t_ < (NCH); t_++) {                                               \
            const uint8_t *u_ = w + (size_t)(G) * gb + (size_t)(4 * (Q) + t_) * CB;        \
            for (int l_ = 0; l_ < CB; l_ += FDY_AMX_PF_STEP) {                            \
                __builtin_prefetch(u_ + l_ + fdy_stream_ahead, 0, 2);                      \
                __builtin_prefetch(u_ + l_ + near_, 0, 3);                                 \
            }                                                                              \
            if (fmt != FDY_AMX_Q8_0) {                                                    \
                fdy_amx_form(u_ + CO, (BS)[t_]);                                          \
            }                                                                              \
        }                                                                                  \
    } while (0)

/* stage 2, one chunk: B from the scratch (or the weights), C = A x B, C to cs */
#define FDY_AMX_MUL1(T, TB, TC, TA, G, Q, BS, CS)                                         \
    do {                                                                                   \
        if (fmt == FDY_AMX_Q8_0) {                                                        \
            _tile_loadd(TB, w + (size_t)(G) * gb + (size_t)(4 * (Q) + (T)) * CB + CO, 64); \
        } else {                                                                           \
            _tile_loadd(TB, (BS)[T], 64);                                                  \
        }                                                                                  \
        _tile_zero(TC);                                                                    \
        if (fmt == FDY_AMX_Q4_1) {                                                        \
            _tile_dpbsud(TC, TA, TB);                                                      \
        } else {                                                                           \
            _tile_dpbssd(TC, TA, TB);                                                      \
        }                                                                                  \
        _tile_stored(TC, (CS)[T], 64);                                                     \
    } while (0)

#define FDY_AMX_MUL(G, Q, NCH, BS, CS)                                                    \
    do {                                                                                   \
        const int8_t *a_ = a->digits + (size_t)(4 * (Q)) * 512;                            \
        _tile_loadd(4, a_, 64);                                                            \
        FDY_AMX_MUL1(0, 2, 0, 4, G, Q, BS, CS);                                           \
        if ((NCH) > 1) {                                                                   \
            _tile_loadd(5, a_ + 512, 64);                                                  \
            FDY_AMX_MUL1(1, 3, 1, 5, G, Q, BS, CS);                                       \
        }                                                                                  \
        if ((NCH) > 2) {                                                                   \
            _tile_loadd(6, a_ + 1024, 64);                                                 \
            FDY_AMX_MUL1(2, 2, 0, 6, G, Q, BS, CS);                                       \
        }                                                                                  \
        if ((NCH) > 3) {                                                                   \
            _tile_loadd(7, a_ + 1536, 64);                                                 \
            FDY_AMX_MUL1(3, 3, 1, 7, G, Q, BS, CS);                                       \
        }                                                                                  \
    } while (0)

/* stage 3 of step (g, q): the digit sums of its chunks (in cs) into acc */
FDY_AMX_TARGET FDY_AMX_INLINE __m512 fdy_amx_extract(const uint8_t *w, size_t gb, int64_t g,
                                                        int64_t q, int nch, int32_t (*cs)[128],
                                                        const fdy_amx_act *a, __m512 acc,
                                                        int fmt) {
    const int CB = FDY_AMX_CB(fmt);
    for (int t = 0; t < nch; t++) {
        const int64_t c = 4 * q + t;
        const uint8_t *u = w + (size_t)g * gb + (size_t)c * (size_t)CB;
        for (int h = 0; h < 2; h++) {
            const int32_t *r = cs[t] + 16 * h;
            const __m512i c0 = _mm512_load_si512((const void *)r);
            const __m512i c1 = _mm512_load_si512((const void *)(r + 32));
            const __m512i c2 = _mm512_load_si512((const void *)(r + 64));
            const __m512i c3 = _mm512_load_si512((const void *)(r + 96));
            const __m512 lo = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(c1, 8), c0));
            const __m512 hi = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(c3, 8), c2));
            const __m512 f = _mm512_fmadd_ps(hi, _mm512_set1_ps(65536.0f), lo);
            const float *sc = fmt == FDY_AMX_Q8_0 ? a->scale : a->scale16;
            const __m512 ds = _mm512_mul_ps(fdy_amx_h16(u + 32 * h), _mm512_set1_ps(sc[2 * c + h]));
            acc = _mm512_fmadd_ps(f, ds, acc);
            if (fmt == FDY_AMX_Q4_1) {
                acc = _mm512_fmadd_ps(fdy_amx_h16(u + 64 + 32 * h),
                                      _mm512_set1_ps(a->sum[2 * c + h]), acc);
            }
        }
    }
    return acc;
}

/* out[16 g + r] for the n_groups groups at w (gb bytes apart) */
FDY_AMX_TARGET FDY_AMX_INLINE void fdy_amx_run(const uint8_t *w, size_t gb,
                                                 const fdy_amx_act *a, float *out,
                                                 int64_t n_groups, int fmt) {
    const int CB = FDY_AMX_CB(fmt), CO = FDY_AMX_CODES(fmt);
    const int64_t nc = a->n_chunks, nq = (nc + 3) / 4, steps = n_groups * nq;
    _Alignas(64) uint8_t bs[2][4][1024];
    _Alignas(64) int32_t cs[2][4][128];
#define FDY_AMX_NCH(S) (nc - 4 * ((S) % nq) < 4 ? (int)(nc - 4 * ((S) % nq)) : 4)
    _tile_loadconfig(&fdy_amx_tiles);
    const int64_t near_ = (int64_t)fdy_stream_near * FDY_AMX_NEAR_X;
    __m512 acc = _mm512_setzero_ps();
    if (steps > 0) {
        FDY_AMX_FORM(0, 0, FDY_AMX_NCH(0), bs[0]);
    }
    for (int64_t s = 0; s <= steps; s++) {
        if (s + 1 < steps) {
            FDY_AMX_FORM((s + 1) / nq, (s + 1) % nq, FDY_AMX_NCH(s + 1), bs[(s + 1) & 1]);
        }
        if (s < steps) {
            FDY_AMX_MUL(s / nq, s % nq, FDY_AMX_NCH(s), bs[s & 1], cs[s & 1]);
        }
        if (s > 0) {
            const int64_t p = s - 1;
            acc = fdy_amx_extract(w, gb, p / nq, p % nq, FDY_AMX_NCH(p), cs[p & 1], a, acc,
                                   fmt);
            if (p % nq == nq - 1) {
                _mm512_storeu_ps(out + 16 * (p / nq), acc);
                acc = _mm512_setzero_ps();
            }
        }
    }
#undef FDY_AMX_NCH
    _tile_release();
}

/* the hooks of format F (fmt one of FDY_AMX_*), for its FDY_POLICY_DEFINE via
 * FDY_AMX_FIELDS(F) */
#define FDY_AMX_KERNELS(F, FMT)                                                           \
    static int F##_pack_amx(const void *src, size_t row_bytes, void *dst, int64_t n) {     \
        return fdy_amx_pack(src, row_bytes, dst, n, FMT, F##_to_i8);                       \
    }                                                                                      \
    FDY_AMX_TARGET static void F##_vec_dot_f32_amx(const void *groups, size_t gb,         \
                                                     const fdy_amx_act *a, float *out,     \
                                                     int64_t n_groups) {                    \
        fdy_amx_run((const uint8_t *)groups, gb, a, out, n_groups, FMT);                  \
    }
#define FDY_AMX_FIELDS(F, FMT)                                                            \
    .amx_chunk_bytes = FDY_AMX_CB(FMT), .pack_amx = F##_pack_amx,                      \
    .vec_dot_f32_amx = F##_vec_dot_f32_amx
#else
#define FDY_AMX_KERNELS(F, FMT)
#define FDY_AMX_FIELDS(F, FMT) .amx_chunk_bytes = 0
#endif

#endif /* FDY_HOST */
#endif /* FDY_SIMD_AMX_H */
