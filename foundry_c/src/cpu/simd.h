/* simd.h - float kernels with run-time SIMD dispatch (dot.c). */
#ifndef FDY_CPU_SIMD_H
#define FDY_CPU_SIMD_H

#include <stdint.h>

typedef float (*fdy_dot_f32_fn)(const float *a, const float *b, int64_t n);

/* the float dot product for the enabled CPU features (AVX-512, AVX2+FMA, portable) */
fdy_dot_f32_fn fdy_select_dot_f32(void);

#endif
