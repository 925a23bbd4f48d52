/* policy.h - the descriptor every weight-format file in policies/ fills in, and the frozen
 * type enum generated from policies/policies.def.
 *
 * A policy file has two parts.  Its device part (block struct, constants, decode function)
 * is written in the dialect of metal/dialect.h so that the CPU, CUDA and Metal all compile
 * the same text.  Its host part, inside `#ifdef FDY_HOST`, holds the reference quantizer,
 * optional fast paths and one FDY_POLICY_DEFINE(...) descriptor.
 *
 * Decode contract: fdy_decode_<name>(blk, sub, out) writes the `sub_elems` floats of
 * sub-block `sub` (elements [sub*sub_elems, (sub+1)*sub_elems) of the block) to out.
 */
#ifndef FDY_POLICY_H
#define FDY_POLICY_H

#include <stdint.h>

#include "foundry.h"

/* frozen type ids: FDY_TYPE_q4_0 == 2 etc. (the GGUF on-disk numbers) */
enum fdy_type_id {
#define FDY_POLICY(name, id) FDY_TYPE_##name = id,
#include "policies.def"
#undef FDY_POLICY
};

enum {
    FDY_POLICY_GGUF = 1u << 0,    /* a format GGUF files carry (type id < 1000) */
    FDY_POLICY_FLOAT = 1u << 1,   /* a plain float format: F32 / F16 / BF16 */
    FDY_POLICY_ACT = 1u << 2      /* an activation format of the q8 variant (Q8_1, Q8_K) */
};

typedef void (*fdy_decode_fn)(const uint8_t *blk, int sub, float *out);
typedef void (*fdy_row_fn)(const void *src, float *dst, int64_t n);
typedef void (*fdy_quant_fn)(const float *src, void *dst, int64_t n);
/* dot product of one weight row (n weights in this format) with one activation row of n
 * values quantized in the policy's dot_type (the q8 variant's integer kernels) */
typedef float (*fdy_vec_dot_fn)(const void *w, const void *a, int64_t n);
/* vec_dot of `rows` consecutive weight rows (row_bytes apart) with one activation row: out[r]
 * is bit-identical to vec_dot(w + r * row_bytes, a, n).  One call per row range lets a kernel
 * set up its constants and pick its tier once (a decode GEMV's rows are short) */
typedef void (*fdy_vec_dot_rows_fn)(const void *w, size_t row_bytes, const void *a, int64_t n,
                                    float *out, int64_t rows);
/* one row of n elements (a multiple of block_elems) as int8 codes q[n] with a float scale and
 * a float min per 16 elements (scale[n / 16], min[n / 16]): element i is
 * scale[i / 16] * q[i] + min[i / 16].  Each policy states whether that is bit-exact against
 * its decode (the same float operations) or equal up to float rounding.  The prefill GEMM
 * (cpu/gemm.c) unpacks weights and activations with it; activation formats write min = 0. */
typedef void (*fdy_to_i8_fn)(const void *src, int8_t *q, float *scale, float *min, int64_t n);
/* float dot product of one weight row (n weights in this format, n a multiple of block_elems)
 * with n floats x: the f32 variant's fused decode + multiply-add GEMV kernel.  Equal to
 * dequantize + float dot up to float rounding (within the float32 dot-product bound). */
typedef float (*fdy_vec_dot_f32_fn)(const void *w, const float *x, int64_t n);
/* vec_dot_f32 over `rows` consecutive weight rows (row_bytes apart) with one float row x:
 * out[r] within the same float32 dot-product bound as vec_dot_f32 (each weight formed as the
 * decode forms it), but not necessarily its bits: a kernel may rearrange x once per call and
 * sum in another order.  A row's result depends only on the row, x, n and the CPU tier, never
 * on the other rows of the call */
typedef void (*fdy_vec_dot_f32_rows_fn)(const void *w, size_t row_bytes, const float *x,
                                        int64_t n, float *out, int64_t rows);
/* the optional row-interleaved layout of the q8 decode GEMV.  pack writes pack_rows
 * consecutive rows (row_bytes apart, n elements each) as one group of pack_rows * row_bytes
 * bytes in the policy's own interleaved order; vec_dot_packed computes the dots of n_groups
 * consecutive groups (group_bytes apart) with one activation row in the dot_type, out[g *
 * pack_rows + r] for row r of group g: the same integer block sums as vec_dot, the float
 * accumulation in block order (equal to vec_dot up to float rounding), the same bits on every
 * CPU tier */
typedef void (*fdy_pack_fn)(const void *src, size_t row_bytes, void *dst, int64_t n);
typedef void (*fdy_vec_dot_packed_fn)(const void *groups, size_t group_bytes, const void *a,
                                      int64_t n, float *out, int64_t n_groups);
/* the optional AMX layout of the f32 decode GEMV on CPUs with AMX (int8 tile multiplies):
 * the float activation row x as exact integers, 32-bit fixed point per block of 32 elements
 * (X_k = x_k * 2^S_b rounded to an integer, |X_k| < 2^30, S_b from the block's largest
 * |x|), written as four signed base-256 digits; the weight codes as int8; the tile unit
 * multiplies and sums them exactly as integers, so the only roundings are the fixed point of
 * x (at most 2^-30 of the block's largest |x| per element; for blocks below 2^-90, S_b stops
 * at 120 and the error at 2^-121) and the float steps that apply the scales.
 * fdy_amx_prepare (cpu/amx.c) writes the activation once per GEMV:
 *   digits  per chunk of 64 elements (two blocks, K positions 0..31 and 32..63), an 8 x 64
 *           int8 tile: row 2 p + h holds digit p (p = 0 lowest) of block h's 32 elements at
 *           K positions 32 h .. 32 h + 31 and zeros at the other block's positions
 *   scale   per block, 2^-S_b; scale16 = scale / 16 (the nibble formats' codes are x16)
 *   sum     per block, sum_k X_k * 2^-S_b (the exact integer sum, rounded once to float):
 *           the sum of x of the formats with a min
 * An odd last block is padded with zero digits.  The layout of a weight (pack_amx): per
 * group of 16 rows, per chunk, amx_chunk_bytes in the policy's order (its scales, then its
 * codes as the tile unit reads them, or packed so that a few operations form them);
 * vec_dot_f32_amx computes n_groups groups (group_bytes apart) into out[16 g + r].  The
 * results are within the float32 dot-product bound of the other f32 kernels (tests hold them
 * to it), not their bits. */
typedef struct fdy_amx_act {
    const int8_t *digits;
    const float *scale, *scale16, *sum;
    int64_t n_chunks;
} fdy_amx_act;
#define FDY_AMX_ROWS 16
#define FDY_AMX_CHUNK 64
/* 0, or -1 when it could not (no memory): the copy is then not used */
typedef int (*fdy_pack_amx_fn)(const void *src, size_t row_bytes, void *dst, int64_t n);
typedef void (*fdy_vec_dot_f32_amx_fn)(const void *groups, size_t group_bytes,
                                        const fdy_amx_act *a, float *out, int64_t n_groups);

struct fdy_policy {
    const char *name;        /* lower case, as users type it: "q4_k" */
    int32_t type;            /* FDY_TYPE_<name> */
    int32_t block_elems;
    int32_t block_bytes;
    int32_t sub_elems;       /* elements one decode call writes; divides block_elems */
    uint32_t flags;
    const char *dot_type;    /* activation format the q8 variant pairs with, NULL for floats */
    /* test tolerances, relative L2 errors:
     *   roundtrip: dequantize(quantize(x)) vs x for x ~ N(0, 1) rows
     *   f32:       f32-variant kernels vs the float64 reference on the dequantized weights
     *   q8:        q8-variant kernels vs the float64 reference on the dequantized weights */
    float tol_roundtrip;
    float tol_f32;
    float tol_q8;
    fdy_decode_fn decode;        /* the portable decode, compiled for the host */
    fdy_row_fn dequantize_fast;  /* optional: whole rows, may use SIMD; must be bit-exact */
    fdy_quant_fn quantize;       /* reference quantizer; NULL for dequantize-only formats */
    fdy_vec_dot_fn vec_dot;      /* optional q8-variant kernel: weight row x dot_type row */
    fdy_quant_fn quantize_act;   /* optional fast activation quantizer (this is a dot_type);
                                    must give the bytes of `quantize` */
    fdy_to_i8_fn to_i8;          /* optional: rows as int8 codes + per-16 scale and min */
    fdy_vec_dot_f32_fn vec_dot_f32; /* optional f32-variant GEMV kernel: weight row x floats */
    fdy_vec_dot_rows_fn vec_dot_rows; /* optional: vec_dot over consecutive rows */
    int32_t pack_rows;                /* rows per group of the interleaved layout, 0: none */
    fdy_pack_fn pack;                 /* optional, with vec_dot_packed */
    fdy_vec_dot_packed_fn vec_dot_packed;
    fdy_vec_dot_f32_rows_fn vec_dot_f32_rows; /* optional: the f32 GEMV over a row range */
    int32_t amx_chunk_bytes;                 /* bytes per 16 rows x 64 elements, 0: none */
    fdy_pack_amx_fn pack_amx;               /* optional, with vec_dot_f32_amx */
    fdy_vec_dot_f32_amx_fn vec_dot_f32_amx;
};

#define FDY_POLICY_DEFINE(pname, ...) \
    const struct fdy_policy fdy_policy_##pname = {.name = #pname, .type = FDY_TYPE_##pname, \
                                                  __VA_ARGS__}

/* the registry, in policies.def order */
#define FDY_POLICY(name, id) extern const struct fdy_policy fdy_policy_##name;
#include "policies.def"
#undef FDY_POLICY

/* the policy's to_i8 hook (FDY_ERR_UNSUPPORTED when it has none) */
int fdy_policy_has_to_i8(const fdy_policy *p);
fdy_status fdy_policy_to_i8(const fdy_policy *p, const void *src, int8_t *q, float *scale,
                            float *min, int64_t n);
/* the policy's vec_dot_f32 hook (FDY_ERR_UNSUPPORTED when it has none) */
int fdy_policy_has_vec_dot_f32(const fdy_policy *p);
/* whether the policy has the vec_dot_rows hook (the q8 decode GEMV's row-range kernel) */
int fdy_policy_has_vec_dot_rows(const fdy_policy *p);
/* rows per group of the policy's interleaved decode layout (pack / vec_dot_packed), 0: none */
int fdy_policy_pack_rows(const fdy_policy *p);
/* bytes per chunk of the policy's AMX layout (pack_amx / vec_dot_f32_amx), 0: none */
int fdy_policy_amx_chunk_bytes(const fdy_policy *p);
/* the AMX activation of x (n floats) in buf (fdy_amx_bytes(n) bytes, 64-byte aligned):
 * 0, or -1 when x holds a value that is not finite (the plain kernels then run: they carry
 * infinities and NaNs as float arithmetic does) */
size_t fdy_amx_bytes(int64_t n);
int fdy_amx_prepare(const float *x, int64_t n, void *buf, fdy_amx_act *a);
fdy_status fdy_policy_vec_dot_f32(const fdy_policy *p, const void *w, const float *x, int64_t n,
                                  float *out);
/* whether the policy has the vec_dot_f32_rows hook (the f32 decode GEMV's row-range kernel) */
int fdy_policy_has_vec_dot_f32_rows(const fdy_policy *p);
/* the f32 GEMV over `rows` rows as the matmul stages run it: the policy's vec_dot_f32_rows,
 * else vec_dot_f32 row by row (FDY_ERR_UNSUPPORTED when it has neither) */
fdy_status fdy_policy_vec_dot_f32_rows(const fdy_policy *p, const void *w, size_t row_bytes,
                                       const float *x, int64_t n, float *out, int64_t rows);
/* the same without the checks, for the matmul drivers: p has vec_dot_f32, n is a whole number
 * of blocks and row_bytes at least a row's bytes */
void fdy_policy_dot_f32_rows(const fdy_policy *p, const void *w, size_t row_bytes,
                             const float *x, int64_t n, float *out, int64_t rows);

/* ---- helpers for host-side quantizers (reference rounding of llama.cpp and gguf-py) ---- */
#ifdef FDY_HOST
#include <math.h>
#include <stdatomic.h>

/* fdy_cpu_features_enabled() for the kernels that choose their tier on every row: the value
 * cached by features.c in a library-internal variable, read inline (no call through the PLT
 * per row); UINT32_MAX until the features are first detected */
extern _Atomic uint32_t fdy_cpu_enabled_bits
#if defined(__GNUC__)
    __attribute__((visibility("hidden")))
#endif
    ;
static inline uint32_t fdy_cpu_enabled(void) {
    const uint32_t f = atomic_load_explicit(&fdy_cpu_enabled_bits, memory_order_relaxed);
    return f != UINT32_MAX ? f : fdy_cpu_features_enabled();
}

/* fdy_f16_table[h]: the f16 with bits h as float (fdy_half_to_float), filled at the first
 * feature detection, so before any kernel that reads fdy_cpu_enabled() runs.  A kernel that
 * needs one scale per block as a broadcast vector reads it here: a load and a broadcast from
 * memory, no vector ALU operation (converting it in a register costs a shuffle-port micro-op
 * or three; docs/CPU_NOTES.md item 41).  256 KB; the scales of one tensor touch few of its
 * lines */
extern float fdy_f16_table[65536]
#if defined(__GNUC__)
    __attribute__((visibility("hidden")))
#endif
    ;

/* Software prefetch for the kernels that stream weight rows at M = 1 (decode): the hardware
 * prefetchers alone hold those kernels at 70-80% of the read bandwidth on some cores, so each
 * block also asks for the bytes fdy_stream_ahead past it into the L2 (prefetcht1) and those
 * fdy_stream_near past it into the L1 (prefetcht0): `lines` 64-byte lines each, enough to
 * cover one block.  The far request takes the line from memory or the L3 early; the near one
 * moves it to the L1 from the L2, so the L1's few miss buffers are not held for a memory
 * latency.  The distances are set at the first feature detection: far 16384 bytes on Intel
 * CPUs and FDY_STREAM_AHEAD elsewhere, near 2048 on Intel CPUs and the far distance elsewhere
 * (both requests on one line, so the L1 request decides: the form items 28-32 measured on a
 * Zen 3, where the two-level one was not measured); PYFOUNDRY_PREFETCH_AHEAD / PYFOUNDRY_PREFETCH_NEAR when the environment
 * gives them, both 0 (the block itself, a no-op) with PYFOUNDRY_NO_PREFETCH=1
 * (fdy_cpu_prefetch_ahead / fdy_cpu_prefetch_near read them).  Past the end of the weights it
 * touches memory the kernel does not own: a prefetch never faults, and the address is formed
 * as an integer.  docs/CPU_NOTES.md items 28, 42, 46. */
#define FDY_STREAM_AHEAD 4096
extern int32_t fdy_stream_ahead
#if defined(__GNUC__)
    __attribute__((visibility("hidden")))
#endif
    ;
extern int32_t fdy_stream_near
#if defined(__GNUC__)
    __attribute__((visibility("hidden")))
#endif
    ;
static inline void fdy_stream_prefetch(const void *p, int lines) {
    const uintptr_t a = (uintptr_t)p + (uintptr_t)fdy_stream_ahead;
    const uintptr_t b = (uintptr_t)p + (uintptr_t)fdy_stream_near;
    for (int i = 0; i < lines; i++) {
        __builtin_prefetch((const void *)(a + 64 * (uintptr_t)i), 0, 2); /* prefetcht1 */
        __builtin_prefetch((const void *)(b + 64 * (uintptr_t)i), 0, 3); /* prefetcht0 */
    }
}

/* round half away from zero, as C roundf and gguf-py's np_roundf */
static inline float fdy_roundf(float x) {
    return roundf(x);
}

/* llama.cpp nearest_int: round to nearest with ties to even via the 1.5*2^23 trick */
static inline int fdy_nearest_int(float fval) {
    float val = fval + 12582912.f;
    int i;
    memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

/* float -> IEEE half bits, round to nearest even (numpy's astype(float16)) */
uint16_t fdy_float_to_half(float f);
/* float -> bf16 bits, as gguf-py: round to nearest even, NaN kept quiet */
uint16_t fdy_float_to_bf16(float f);
#endif

#endif
