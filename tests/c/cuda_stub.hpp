// cuda_stub.hpp - declarations of the CUDA built-ins, intrinsics and device math the CUDA
// prelude and the kernel templates use, so that a composed CUDA source can be compiled as C++
// on any machine (a syntax and type check; the real compiler is NVRTC).  Defines
// __CUDACC_RTC__ as NVRTC does, so the prelude declares its own fixed-width integer types.
#define __CUDACC_RTC__ 1
#define __device__
#define __global__
#define __shared__
#define __forceinline__ inline

struct float4 {
    float x, y, z, w;
};
struct uint4 {
    unsigned int x, y, z, w;
};
struct uint3 {
    unsigned int x, y, z;
};
extern uint3 threadIdx, blockIdx, blockDim, gridDim;
void __syncthreads();
float __shfl_xor_sync(unsigned int mask, float v, int lane_mask, int width);
float __shfl_sync(unsigned int mask, float v, int lane, int width);
float __uint_as_float(unsigned int);
unsigned int __float_as_uint(float);
float fmaxf(float, float);
int __dp4a(int, int, int);
float roundf(float);
float rintf(float);
float fmaf(float, float, float);
float exp(float);
float sqrt(float);
float fabs(float);
float fmin(float, float);
float fmax(float, float);
float tanh(float);
float pow(float, float);
float cos(float);
float sin(float);
double exp(double);
double sqrt(double);
double fabs(double);
double fmin(double, double);
double fmax(double, double);
double tanh(double);
double pow(double, double);
double cos(double);
double sin(double);
