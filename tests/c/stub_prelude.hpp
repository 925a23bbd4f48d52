// stub_prelude.hpp - a minimal kernel-dialect prelude for checking, on any machine with a C++
// compiler, that the device part of each policy file is portable: it is compiled as C++ with
// only what the CUDA and Metal preludes also provide.  No libc: a memcpy or fabsf in device
// code fails here as it would on the GPU.
#define FDY_DIALECT 1
#include <cstdint>
#define FDY_GLOBAL
#define FDY_THREAD
#define FDY_CONSTANT static const
#define FDY_FN static inline
#define FDY_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
float fdy_half_to_float(uint16_t h);
float fdy_bf16_to_float(uint16_t h);
float fdy_as_float(uint32_t bits);
uint32_t fdy_float_bits(float f);
float fdy_fma(float a, float b, float c);
#define fdy_code_f(u, off) (fdy_as_float(0x4B000000u | (uint32_t)(u)) - (8388608.0f + (float)(off)))
struct fdy_float4 {
    float v[4];
};
fdy_float4 fdy_load4(FDY_GLOBAL const float *p);
struct fdy_uint4 {
    uint32_t v[4];
};
fdy_uint4 fdy_load_u4(FDY_GLOBAL const uint8_t *p);
uint32_t fdy_load_u1(FDY_GLOBAL const uint8_t *p);
int fdy_dp4a(uint32_t a, uint32_t b, int c);
float fdy_round_away(float x);
float fdy_rint(float x);
float fdy_round_f16(float x);
// the math functions every target has (Metal: metal_stdlib, CUDA: device math)
float fabs(float);
float fmin(float, float);
float fmax(float, float);
float exp(float);
float sqrt(float);
