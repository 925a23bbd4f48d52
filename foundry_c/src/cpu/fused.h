/* fused.h - internal interface of the fused CPU stages the model executor (model.c) runs for
 * decode: several matmuls of one input in one parallel region (Q/K/V, gate/up with swiglu),
 * residual adds folded into the matmul's store, rope from a per-call angle table, attention
 * over a cache of any layout.  Each keeps the arithmetic of the stages it replaces, value for
 * value, so fused and unfused runs give the same numbers. */
#ifndef FDY_CPU_FUSED_H
#define FDY_CPU_FUSED_H

#include <stddef.h>
#include <stdint.h>

#include "foundry.h"

/* a buffer grown on demand (64-byte aligned), never shrunk */
typedef struct fdy_buf {
    void *p;
    size_t size;
} fdy_buf;

fdy_status fdy_buf_reserve(fdy_buf *b, size_t bytes);
void fdy_buf_free(fdy_buf *b);

#define FDY_MM_MAX_PARTS 4

/* activations quantized per distinct dot type of a group, and their dequantized copies (for
 * formats without an integer kernel); the AMX form of the f32 activation */
typedef struct fdy_mm_ws {
    fdy_buf xq[FDY_MM_MAX_PARTS];
    fdy_buf xd[FDY_MM_MAX_PARTS];
    fdy_buf amx; /* the f32 activation for the AMX kernels (fdy_amx_prepare) */
} fdy_mm_ws;

void fdy_mm_ws_free(fdy_mm_ws *ws);

/* one matmul of a group: out (M, N) (+)= act(x @ w.T + bias); with res_out, also
 * res_out = res_in + out (an add stage folded in; res_in may equal res_out) */
typedef struct fdy_mm_part {
    const fdy_weight *w;
    const float *bias;
    float *out;
    int accumulate, act;
    const float *res_in;
    float *res_out;
} fdy_mm_part;

/* the parts' matmuls of x (M, K) in one parallel region, activations quantized once per dot
 * type.  swiglu_out != NULL: exactly two parts, gate and up of equal rows, and each row also
 * gets swiglu_out = silu(gate out) * up out as soon as both are stored (swiglu_out may be
 * the gate's output). */
fdy_status fdy_matmul_group(const float *x, int64_t M, int n_parts, const fdy_mm_part *parts,
                            float *swiglu_out, int variant, fdy_mm_ws *ws);

/* rope in three steps: base[i] = theta^(-2i/rot_dims) (once per model), the cos / sin table
 * cs (M, rot_dims/2, 2) of the positions (once per call), the rotation of x (M, H, D) into out
 * (may equal x); the same double arithmetic as fdy_rope */
void fdy_rope_base(int64_t rot_dims, float theta, double *base);
void fdy_rope_table(const int32_t *positions, int64_t M, int64_t rot_dims, const double *base,
                    const float *freq_factors, double *cs);
void fdy_rope_apply(const float *x, int64_t M, int64_t H, int64_t D, int64_t rot_dims,
                    const double *cs, int neox, float *out);

/* fdy_attention over caches whose rows of position p, kv head h start at
 * p * pos_stride + h * head_stride (floats); arguments not checked */
fdy_status fdy_attention_strided(const float *q, int64_t M, int64_t H, int64_t D,
                                 const float *k_cache, const float *v_cache, int64_t Hkv,
                                 int64_t start_pos, float scale, float *out, int64_t pos_stride,
                                 int64_t head_stride);

#endif
