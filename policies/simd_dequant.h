/* simd_dequant.h - host-only helpers of the whole-row dequantizers (dequantize_fast).
 *
 * A format file writes its row loop once, as an always-inline function F_rows(src, dst, n)
 * whose inner loops the compiler vectorizes, and instantiates it with
 *
 *     FDY_DEQ_DISPATCH(F_dequantize, F_rows)
 *
 * which compiles the same loop three times: for AVX-512 (F+BW+VL+DQ), for AVX2 and for the
 * baseline (SSE2 on x86-64, NEON on aarch64, anything else), and defines F_dequantize choosing
 * one from fdy_cpu_features_enabled() on each call.  No global -m flag: each copy carries its
 * own target attribute.  The arithmetic is the C of F_rows in every copy (the core compiles
 * with -ffp-contract=off, so no multiply-add is fused), hence bit-identical results.
 */
#ifndef FDY_SIMD_DEQUANT_H
#define FDY_SIMD_DEQUANT_H
#ifdef FDY_HOST

#include <stdint.h>

#include "foundry.h"

#define FDY_DEQ_INLINE static inline __attribute__((always_inline))

#if defined(__x86_64__)
#define FDY_DEQ_TARGET_AVX2 __attribute__((target("avx2")))
#define FDY_DEQ_TARGET_AVX512 \
    __attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512dq,prefer-vector-width=512")))

#define FDY_DEQ_DISPATCH(NAME, ROWS)                                                  \
    FDY_DEQ_TARGET_AVX512 static void NAME##_avx512(const void *src, float *dst,      \
                                                    int64_t n) {                      \
        ROWS(src, dst, n);                                                            \
    }                                                                                 \
    FDY_DEQ_TARGET_AVX2 static void NAME##_avx2(const void *src, float *dst, int64_t n) { \
        ROWS(src, dst, n);                                                            \
    }                                                                                 \
    static void NAME(const void *src, float *dst, int64_t n) {                        \
        const uint32_t f = fdy_cpu_features_enabled();                                \
        if ((f & (FDY_CPU_AVX512 | FDY_CPU_AVX2)) == (FDY_CPU_AVX512 | FDY_CPU_AVX2)) {    \
            NAME##_avx512(src, dst, n);                                               \
        } else if (f & FDY_CPU_AVX2) {                                                \
            NAME##_avx2(src, dst, n);                                                 \
        } else {                                                                      \
            ROWS(src, dst, n);                                                        \
        }                                                                             \
    }
#else
#define FDY_DEQ_DISPATCH(NAME, ROWS)                               \
    static void NAME(const void *src, float *dst, int64_t n) {     \
        ROWS(src, dst, n);                                         \
    }
#endif

#endif /* FDY_HOST */
#endif /* FDY_SIMD_DEQUANT_H */
