/* prelude_cuda.h - the portable kernel dialect, CUDA C++ flavour.
 *
 * The GPU composer (foundry_c/src/gpu/compose.c) pastes this text first, then the device
 * part of each policy file, then the kernel templates (metal/NAME.metal), and the CUDA host
 * compiles the result with NVRTC.  It needs no header: NVRTC provides the built-in variables,
 * intrinsics and device math; the fixed-width integer types are declared here.  The names
 * are those of metal/dialect.h (the host flavour) plus what kernels need:
 *
 *   FDY_GLOBAL / FDY_THREAD / FDY_CONSTANT / FDY_FN / FDY_STATIC_ASSERT   as in dialect.h
 *   FDY_SHARED          threadgroup (shared) memory, declared in a kernel body
 *   FDY_SHARED_PTR      qualifier of a helper's pointer parameter into shared memory
 *   FDY_BARRIER()       threadgroup barrier with shared-memory ordering
 *   FDY_KERNEL          `FDY_KERNEL name(args FDY_KERNEL_INDICES)` opens a kernel
 *   FDY_BUFFER(decl, i) a pointer argument bound at slot i (decl carries FDY_GLOBAL)
 *   FDY_SCALAR(t, n, i) a by-value scalar argument bound at slot i
 *   FDY_GROUP_X/Y/Z     threadgroup (block) index;  FDY_LOCAL_X: thread index in the group
 *   FDY_GROUP_SIZE_X    threads per group (1-D groups only)
 *   FDY_SIMD_WIDTH, FDY_LANE, FDY_SIMD_ID   SIMD-group (warp) width, lane, index in group
 *   fdy_simd_sum / fdy_simd_max / fdy_simd_shuffle / fdy_simd_shuffle_xor
 *   fdy_half_to_float, fdy_bf16_to_float, fdy_as_float, fdy_float_bits
 *   fdy_load_u1, fdy_dp4a, fdy_round_away, fdy_rint, fdy_round_f16   (see dialect.h)
 *   fdy_real            the widest float type the target has (double here, float on Metal)
 */
#define FDY_DIALECT 1
#define FDY_CUDA 1

#ifdef __CUDACC_RTC__
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#else
#include <stdint.h>
#endif

#define FDY_GLOBAL
#define FDY_THREAD
#define FDY_CONSTANT static __device__ const
#define FDY_FN static __device__ __forceinline__
#define FDY_STATIC_ASSERT(cond, msg) static_assert(cond, msg)

#define FDY_SHARED __shared__
#define FDY_SHARED_PTR          /* a pointer to shared memory, as a helper's parameter */
#define FDY_BARRIER() __syncthreads()

#define FDY_KERNEL extern "C" __global__ void
#define FDY_BUFFER(decl, idx) decl
#define FDY_SCALAR(type, name, idx) type name
#define FDY_KERNEL_INDICES

#define FDY_GROUP_X ((int)blockIdx.x)
#define FDY_GROUP_Y ((int)blockIdx.y)
#define FDY_GROUP_Z ((int)blockIdx.z)
#define FDY_LOCAL_X ((int)threadIdx.x)
#define FDY_GROUP_SIZE_X ((int)blockDim.x)
#define FDY_SIMD_WIDTH 32
#define FDY_LANE ((int)threadIdx.x & 31)
#define FDY_SIMD_ID ((int)threadIdx.x >> 5)

typedef double fdy_real;

FDY_FN float fdy_as_float(uint32_t bits) {
    return __uint_as_float(bits);
}

FDY_FN uint32_t fdy_float_bits(float f) {
    return __float_as_uint(f);
}

/* IEEE half -> float: the hardware conversion, exact for every input */
FDY_FN float fdy_half_to_float(uint16_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

FDY_FN float fdy_bf16_to_float(uint16_t h) {
    return __uint_as_float((uint32_t)h << 16);
}

/* fused multiply-add (one rounding) on every target */
FDY_FN float fdy_fma(float a, float b, float c) {
    return fmaf(a, b, c);
}

/* the float value of a small unsigned integer code u (u < 2^23) minus `off`, exact: builds
 * 2^23 + u from the bits and subtracts 2^23 + off (a float add, no int -> float convert) */
#define fdy_code_f(u, off) (fdy_as_float(0x4B000000u | (uint32_t)(u)) - (8388608.0f + (float)(off)))

/* four consecutive floats (p 16-byte aligned): one 16-byte load */
struct fdy_float4 {
    float v[4];
};
FDY_FN fdy_float4 fdy_load4(FDY_GLOBAL const float *p) {
    const float4 t = *(const float4 *)p;
    fdy_float4 r = {{t.x, t.y, t.z, t.w}};
    return r;
}

/* four consecutive 32-bit words (p 16-byte aligned): one 16-byte load */
struct fdy_uint4 {
    uint32_t v[4];
};
FDY_FN fdy_uint4 fdy_load_u4(FDY_GLOBAL const uint8_t *p) {
    const uint4 t = *(const uint4 *)p;
    fdy_uint4 r = {{t.x, t.y, t.z, t.w}};
    return r;
}

/* one 32-bit word (p 4-byte aligned) */
FDY_FN uint32_t fdy_load_u1(FDY_GLOBAL const uint8_t *p) {
    return *(const uint32_t *)p;
}

/* c + the dot of the four signed bytes of a and b: one instruction (sm_61 and later) */
FDY_FN int fdy_dp4a(uint32_t a, uint32_t b, int c) {
    return __dp4a((int)a, (int)b, c);
}

FDY_FN float fdy_round_away(float x) {
    return roundf(x);
}

FDY_FN float fdy_rint(float x) {
    return rintf(x);
}

/* x rounded to the nearest half (ties to even) and back: the hardware conversions */
FDY_FN float fdy_round_f16(float x) {
    unsigned short h;
    float f;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

/* ---- SIMD-group (warp) collectives: every lane gets the result ---- */
FDY_FN float fdy_simd_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, o, 32);
    }
    return v;
}

FDY_FN float fdy_simd_max(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o, 32));
    }
    return v;
}

FDY_FN float fdy_simd_shuffle(float v, int lane) {
    return __shfl_sync(0xffffffffu, v, lane, 32);
}

FDY_FN float fdy_simd_shuffle_xor(float v, int mask) {
    return __shfl_xor_sync(0xffffffffu, v, mask, 32);
}
