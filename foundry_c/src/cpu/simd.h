/* simd.h - float kernels with run-time SIMD dispatch (dot.c). */
#ifndef FDY_CPU_SIMD_H
#define FDY_CPU_SIMD_H

#include <stdint.h>

typedef float (*fdy_dot_f32_fn)(const float *a, const float *b, int64_t n);

/* the float dot product for the enabled CPU features (AVX-512, AVX2+FMA, portable) */
fdy_dot_f32_fn fdy_select_dot_f32(void);

/* a tile of float dot products: acc[r * as + t] += dot(w + r * ws, x + t * xs, n) for r < R,
 * t < T (1 <= R <= FDY_TILE_R, 1 <= T <= FDY_TILE_T).  Every (r, t) pair has the same
 * arithmetic whatever R and T are (one accumulator of 8 lanes over the multiples of 8, its
 * lanes summed in a fixed order, then the last n % 8 products one by one), so a result does
 * not depend on the tile it was computed in */
#define FDY_TILE_R 4
#define FDY_TILE_T 3
typedef void (*fdy_tile_f32_fn)(const float *w, int64_t ws, const float *x, int64_t xs,
                                int64_t n, int R, int T, float *acc, int64_t as);

/* the tile kernel for the enabled CPU features (AVX2+FMA, portable) */
fdy_tile_f32_fn fdy_select_tile_f32(void);

#endif
