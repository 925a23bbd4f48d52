/* prelude_metal.h - the portable kernel dialect, Metal Shading Language flavour.
 *
 * Same names as prelude_cuda.h (see there for the list); the Metal host pastes this text
 * ahead of the policy device parts and the kernel templates and compiles the result with
 * newLibraryWithSource.  Apple GPUs have 32-wide SIMD groups, which the templates assume.
 * On Linux the tests compile compositions with a C++ compiler against tests/c/metal_stub.hpp
 * (defining FDY_METAL_STUB) instead of <metal_stdlib>, as a syntax and type check.
 */
#define FDY_DIALECT 1
#define FDY_METAL 1

#ifndef FDY_METAL_STUB
#include <metal_stdlib>
#endif
using namespace metal;

#define FDY_GLOBAL device
#define FDY_THREAD thread
#define FDY_CONSTANT constant
#define FDY_FN static inline
#define FDY_STATIC_ASSERT(cond, msg) static_assert(cond, msg)

#define FDY_SHARED threadgroup
#define FDY_SHARED_PTR threadgroup
#define FDY_BARRIER() threadgroup_barrier(mem_flags::mem_threadgroup)

#define FDY_KERNEL kernel void
#define FDY_BUFFER(decl, idx) decl [[buffer(idx)]]
#define FDY_SCALAR(type, name, idx) constant type &name [[buffer(idx)]]
#define FDY_KERNEL_INDICES                                                      \
    , uint3 fdy_tgid [[threadgroup_position_in_grid]],                         \
      uint3 fdy_tid [[thread_position_in_threadgroup]],                        \
      uint3 fdy_tgsize [[threads_per_threadgroup]]

#define FDY_GROUP_X ((int)fdy_tgid.x)
#define FDY_GROUP_Y ((int)fdy_tgid.y)
#define FDY_GROUP_Z ((int)fdy_tgid.z)
#define FDY_LOCAL_X ((int)fdy_tid.x)
#define FDY_GROUP_SIZE_X ((int)fdy_tgsize.x)
#define FDY_SIMD_WIDTH 32
#define FDY_LANE ((int)fdy_tid.x & 31)
#define FDY_SIMD_ID ((int)fdy_tid.x >> 5)

typedef float fdy_real;   /* Metal has no double */

FDY_FN float fdy_as_float(uint32_t bits) {
    return as_type<float>(bits);
}

FDY_FN uint32_t fdy_float_bits(float f) {
    return as_type<uint32_t>(f);
}

FDY_FN float fdy_half_to_float(uint16_t h) {
    return float(as_type<half>(h));
}

FDY_FN float fdy_bf16_to_float(uint16_t h) {
    return as_type<float>((uint32_t)h << 16);
}

/* fused multiply-add (one rounding) on every target */
FDY_FN float fdy_fma(float a, float b, float c) {
    return fma(a, b, c);
}

/* the float value of a small unsigned integer code u (u < 2^23) minus `off`, exact: builds
 * 2^23 + u from the bits and subtracts 2^23 + off (a float add, no int -> float convert) */
#define fdy_code_f(u, off) (fdy_as_float(0x4B000000u | (uint32_t)(u)) - (8388608.0f + (float)(off)))

/* four consecutive floats (p 16-byte aligned): one 16-byte load */
struct fdy_float4 {
    float v[4];
};
FDY_FN fdy_float4 fdy_load4(FDY_GLOBAL const float *p) {
    const float4 t = *(FDY_GLOBAL const float4 *)p;
    fdy_float4 r = {{t.x, t.y, t.z, t.w}};
    return r;
}

/* four consecutive 32-bit words (p 16-byte aligned): one 16-byte load */
struct fdy_uint4 {
    uint32_t v[4];
};
FDY_FN fdy_uint4 fdy_load_u4(FDY_GLOBAL const uint8_t *p) {
    const uint4 t = *(FDY_GLOBAL const uint4 *)p;
    fdy_uint4 r = {{t.x, t.y, t.z, t.w}};
    return r;
}

/* one 32-bit word (p 4-byte aligned) */
FDY_FN uint32_t fdy_load_u1(FDY_GLOBAL const uint8_t *p) {
    return *(FDY_GLOBAL const uint32_t *)p;
}

/* c + the dot of the four signed bytes of a and b */
FDY_FN int fdy_dp4a(uint32_t a, uint32_t b, int c) {
    const char4 x = as_type<char4>(a), y = as_type<char4>(b);
    return c + (int)x.x * (int)y.x + (int)x.y * (int)y.y + (int)x.z * (int)y.z +
           (int)x.w * (int)y.w;
}

FDY_FN float fdy_round_away(float x) {
    return round(x);
}

FDY_FN float fdy_rint(float x) {
    return rint(x);
}

/* x rounded to the nearest half (ties to even, the default conversion) and back */
FDY_FN float fdy_round_f16(float x) {
    return float(half(x));
}

/* ---- SIMD-group collectives: every lane gets the result ---- */
FDY_FN float fdy_simd_sum(float v) {
    return simd_sum(v);
}

FDY_FN float fdy_simd_max(float v) {
    return simd_max(v);
}

FDY_FN float fdy_simd_shuffle(float v, int lane) {
    return simd_shuffle(v, (ushort)lane);
}

FDY_FN float fdy_simd_shuffle_xor(float v, int mask) {
    return simd_shuffle_xor(v, (ushort)mask);
}
