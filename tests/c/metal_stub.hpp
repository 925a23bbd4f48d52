// metal_stub.hpp - declarations of the Metal Shading Language names the kernel templates and
// the Metal prelude use, so that a composed Metal source can be compiled as C++ on Linux (a
// syntax and type check, not a Metal compiler).  Included ahead of the composition with
// FDY_METAL_STUB defined, in place of <metal_stdlib>.
#define FDY_METAL_STUB 1
#include <cstdint>

#define device
#define thread
#define threadgroup
#define constant const
#define kernel

typedef unsigned int uint;
typedef unsigned short ushort;
struct float4 {
    float x, y, z, w;
};
struct uint4 {
    uint x, y, z, w;
};
struct uint3 {
    uint x, y, z;
};
struct half {
    ushort bits;
    half(float);
    operator float() const;
};
struct char4 {
    signed char x, y, z, w;
};

namespace metal {
template <typename T, typename U> T as_type(U v);
float simd_sum(float);
float simd_max(float);
float simd_shuffle(float, ushort);
float simd_shuffle_xor(float, ushort);
enum class mem_flags { mem_none, mem_device, mem_threadgroup };
void threadgroup_barrier(mem_flags);
float exp(float);
float sqrt(float);
float fabs(float);
float fmin(float, float);
float fmax(float, float);
float fma(float, float, float);
float round(float);
float rint(float);
float tanh(float);
float pow(float, float);
float cos(float);
float sin(float);
}  // namespace metal
