/* gemm.h - the q8 variant's prefill matmul (gemm.c). */
#ifndef FDY_CPU_GEMM_H
#define FDY_CPU_GEMM_H

#include <stdint.h>

#include "foundry.h"

/* fewest tokens for which fdy_matmul's q8 variant takes fdy_gemm_q8 (measured: see
 * docs/CPU_NOTES.md, "Prefill GEMM") */
#define FDY_GEMM_MIN_M 4

/* out (M, N) = act(x (M, K) . w^T + bias) (+= with accumulate), the q8 variant: the activation
 * rows are quantized by the dot_type's quantizer to the bytes the vec_dot path uses, weights and
 * activations unpacked with the policies' to_i8 hooks and multiplied as int8 with per-16 float
 * scales.  *handled = 0 (and nothing written) when the weight policy or its dot_type lacks the
 * hook or K does not tile into the dot_type's blocks: the caller then takes its own path. */
fdy_status fdy_gemm_q8(const fdy_weight *w, const float *x, int64_t M, const float *bias,
                       float *out, int accumulate, int act, int *handled);

#endif
