/* dialect.h - the portable kernel dialect, host (C/C++) flavour.
 *
 * Policy decode code and GPU kernel templates are written against the macros below so that
 * one text compiles as C (the CPU core), as CUDA C++ (prelude_cuda.h) and as Metal Shading
 * Language (prelude_metal.h).  A GPU composer pastes its own prelude ahead of the policy
 * text; the prelude defines FDY_DIALECT, so the `#include "dialect.h"` guarded by
 * `#ifndef FDY_DIALECT` in each policy file is skipped there.
 *
 * The macros:
 *   FDY_GLOBAL        address space of device / weight memory   (Metal: device)
 *   FDY_THREAD        address space of per-thread arrays        (Metal: thread)
 *   FDY_CONSTANT      a file-scope lookup table                 (Metal: constant)
 *   FDY_FN            a helper function callable from kernels   (CUDA: __device__)
 *   FDY_STATIC_ASSERT a compile-time check (no-op where the target lacks it)
 *   fdy_half_to_float(uint16_t bits), fdy_bf16_to_float(uint16_t bits) -> float
 *   fdy_as_float(uint32_t bits)                                   bit cast
 *   fdy_fma(a, b, c)                                              fused multiply-add
 *   fdy_code_f(u, off)  float(u) - off for a small unsigned code u, without an int convert
 *   fdy_load_u1(p)      one 32-bit word at p (4-byte aligned bytes)
 *   fdy_dp4a(a, b, c)   c + the dot of the four signed bytes of a with those of b
 *   fdy_round_away(x), fdy_rint(x)   round half away from zero / half to even, as float
 *   fdy_round_f16(x)    x rounded to the nearest half (ties to even), as float
 * A policy may also give a GEMV dot hook (see metal/weights.metal): FDY_<NAME>_DOTF_PARTS
 * and fdy_dotf_<name>(block, part, x): the dot of part `part` of one block with x (the
 * block's BLOCK_ELEMS floats); the parts of a block together cover all its elements.
 * and an integer one for the q8 variant (fdy_doti_calc_<name>, activations quantized on the
 * device by the dot_type policy's fdy_actq_scale_<dt> / fdy_actq_code_<dt>).
 * Host-only code (quantizers, descriptors, SIMD) sits inside `#ifdef FDY_HOST`.
 */
#ifndef FDY_DIALECT
#define FDY_DIALECT 1
#define FDY_HOST 1

#include <math.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#define FDY_GLOBAL
#define FDY_THREAD
#define FDY_CONSTANT static const
#ifdef __cplusplus
#define FDY_FN static inline
#define FDY_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define FDY_FN static inline
#define FDY_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

FDY_FN float fdy_as_float(uint32_t bits) {
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

FDY_FN uint32_t fdy_float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* IEEE half -> float, exact for every input (subnormals, inf, nan). */
FDY_FN float fdy_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        /* subnormal: value = man * 2^-24, exact in float */
        float v = (float)man * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    return fdy_as_float(bits);
}

FDY_FN float fdy_bf16_to_float(uint16_t h) {
    return fdy_as_float((uint32_t)h << 16);
}

/* fused multiply-add (one rounding) on every target */
FDY_FN float fdy_fma(float a, float b, float c) {
    return fmaf(a, b, c);
}

/* the float value of a small unsigned integer code u (u < 2^23) minus `off`, exact: builds
 * 2^23 + u from the bits and subtracts 2^23 + off (a float add, no int -> float convert) */
#define fdy_code_f(u, off) (fdy_as_float(0x4B000000u | (uint32_t)(u)) - (8388608.0f + (float)(off)))

/* four consecutive floats (p 16-byte aligned): one wide load on the GPU targets */
typedef struct fdy_float4 {
    float v[4];
} fdy_float4;
FDY_FN fdy_float4 fdy_load4(FDY_GLOBAL const float *p) {
    fdy_float4 r;
    memcpy(r.v, p, sizeof r.v);
    return r;
}

/* four consecutive 32-bit words (p 16-byte aligned): one wide load on the GPU targets */
typedef struct fdy_uint4 {
    uint32_t v[4];
} fdy_uint4;
FDY_FN fdy_uint4 fdy_load_u4(FDY_GLOBAL const uint8_t *p) {
    fdy_uint4 r;
    memcpy(r.v, p, sizeof r.v);
    return r;
}

/* one 32-bit word (p 4-byte aligned) */
FDY_FN uint32_t fdy_load_u1(FDY_GLOBAL const uint8_t *p) {
    uint32_t r;
    memcpy(&r, p, 4);
    return r;
}

/* c + sum over i of (signed byte i of a) * (signed byte i of b): CUDA's dp4a */
FDY_FN int fdy_dp4a(uint32_t a, uint32_t b, int c) {
    for (int i = 0; i < 4; i++) {
        c += (int)(int8_t)(uint8_t)(a >> (8 * i)) * (int)(int8_t)(uint8_t)(b >> (8 * i));
    }
    return c;
}

/* round half away from zero (C roundf) and half to even (the default rounding mode) */
FDY_FN float fdy_round_away(float x) {
    return roundf(x);
}

FDY_FN float fdy_rint(float x) {
    return nearbyintf(x);
}

/* x rounded to the nearest IEEE half, ties to even (overflow gives inf), back as float */
FDY_FN float fdy_round_f16(float x) {
    const uint32_t b = fdy_float_bits(x), sign = b & 0x80000000u;
    uint32_t ax = b & 0x7fffffffu;
    if (ax >= 0x7f800000u) {
        return x;
    }
    if (ax >= 0x477ff000u) {
        return fdy_as_float(sign | 0x7f800000u);
    }
    if (ax < 0x38800000u) { /* half subnormals: multiples of 2^-24 */
        const float r = nearbyintf(fdy_as_float(ax) * 16777216.0f) * 5.9604644775390625e-08f;
        return sign ? -r : r;
    }
    ax += 0x0fffu + ((ax >> 13) & 1u);
    return fdy_as_float(sign | (ax & ~0x1fffu));
}

#endif /* FDY_DIALECT */
