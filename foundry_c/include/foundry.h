/* foundry.h - the public C API of the pyfoundry core.
 *
 * Opaque handles, plain structs for read-only views, and status codes.  Nothing here
 * prints, aborts or exits: every function that can fail returns an fdy_status and leaves a
 * thread-local message (fdy_last_error) and, for file errors, the byte offset where the
 * problem was found (fdy_last_error_offset).  The header is plain C so that it can be used
 * from C, C++ and through cffi.
 */
#ifndef FOUNDRY_H
#define FOUNDRY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status ---------------------------------------------------------------------------- */

typedef enum fdy_status {
    FDY_OK = 0,
    FDY_ERR_INVALID = 1,     /* bad argument: shape, dtype, size, name (ValueError) */
    FDY_ERR_FORMAT = 2,      /* malformed or unsupported file contents (GGUFError) */
    FDY_ERR_IO = 3,          /* the operating system refused (OSError) */
    FDY_ERR_NOMEM = 4,       /* an allocation failed (MemoryError) */
    FDY_ERR_UNSUPPORTED = 5, /* valid request this build cannot do (NotImplementedError) */
    FDY_ERR_RANGE = 6,       /* index or key out of range (IndexError / KeyError) */
    FDY_ERR_STATE = 7        /* object used in the wrong state (RuntimeError) */
} fdy_status;

const char *fdy_last_error(void);        /* message of the last failure on this thread */
int64_t fdy_last_error_offset(void);     /* byte offset of a file error, or -1 */
const char *fdy_version(void);

/* ---- CPU features ------------------------------------------------------------------------ */

enum {
    FDY_CPU_AVX2 = 1u << 0,
    FDY_CPU_FMA = 1u << 1,
    FDY_CPU_F16C = 1u << 2,
    FDY_CPU_AVX512 = 1u << 3,     /* F + BW + VL + DQ */
    FDY_CPU_AVX512VNNI = 1u << 4,
    FDY_CPU_AVXVNNI = 1u << 5,
    FDY_CPU_NEON = 1u << 6,
    FDY_CPU_DOTPROD = 1u << 7
};
uint32_t fdy_cpu_features(void);          /* what the processor has */
uint32_t fdy_cpu_features_enabled(void);  /* what the kernels may use (detected & mask) */
void fdy_cpu_set_feature_mask(uint32_t mask); /* tests force paths with this */

/* ---- policies (weight formats) ------------------------------------------------------------ */

typedef struct fdy_policy fdy_policy;

int32_t fdy_policy_count(void);
const fdy_policy *fdy_policy_at(int32_t index);
const fdy_policy *fdy_policy_by_name(const char *name);   /* case-insensitive, NULL if none */
const fdy_policy *fdy_policy_by_type(int32_t type_id);    /* NULL if none */

const char *fdy_policy_name(const fdy_policy *p);
int32_t fdy_policy_type(const fdy_policy *p);        /* GGUF type id (>= 1000: not GGUF) */
int64_t fdy_policy_block_elems(const fdy_policy *p);
int64_t fdy_policy_block_bytes(const fdy_policy *p);
int64_t fdy_policy_sub_elems(const fdy_policy *p);   /* elements one decode call yields */
double fdy_policy_bits_per_weight(const fdy_policy *p);
int fdy_policy_can_quantize(const fdy_policy *p);
int fdy_policy_is_gguf(const fdy_policy *p);
int fdy_policy_is_activation(const fdy_policy *p); /* a q8-variant activation format */
const char *fdy_policy_dot_type(const fdy_policy *p); /* activation format of the q8 variant */
double fdy_policy_tolerance(const fdy_policy *p, const char *what);

/* bytes needed for n elements, or -1 with an error when n is not a multiple of the block */
int64_t fdy_policy_row_bytes(const fdy_policy *p, int64_t n);
/* n elements (a multiple of block_elems); src holds fdy_policy_row_bytes(p, n) bytes */
fdy_status fdy_policy_dequantize(const fdy_policy *p, const void *src, float *dst, int64_t n);
fdy_status fdy_policy_quantize(const fdy_policy *p, const float *src, void *dst, int64_t n);

/* ---- GGUF values ------------------------------------------------------------------------ */

typedef enum fdy_gguf_type {
    FDY_GGUF_UINT8 = 0,
    FDY_GGUF_INT8 = 1,
    FDY_GGUF_UINT16 = 2,
    FDY_GGUF_INT16 = 3,
    FDY_GGUF_UINT32 = 4,
    FDY_GGUF_INT32 = 5,
    FDY_GGUF_FLOAT32 = 6,
    FDY_GGUF_BOOL = 7,
    FDY_GGUF_STRING = 8,
    FDY_GGUF_ARRAY = 9,
    FDY_GGUF_UINT64 = 10,
    FDY_GGUF_INT64 = 11,
    FDY_GGUF_FLOAT64 = 12
} fdy_gguf_type;

typedef struct fdy_str {
    const char *ptr; /* not NUL-terminated */
    uint64_t len;
} fdy_str;

/* One metadata value.  Scalars: integers and bools in u64/i64, floats widened to f64.
 * Arrays: elem_type and count; `data` points to `count` little-endian items for numeric
 * element types, to fdy_str[count] for strings and to fdy_value[count] for nested arrays. */
typedef struct fdy_value {
    int32_t type;
    int32_t elem_type;
    uint64_t count;
    union {
        uint64_t u64;
        int64_t i64;
        double f64;
        fdy_str str;
        const void *data;
    } v;
} fdy_value;

size_t fdy_gguf_type_size(int32_t type); /* bytes of a numeric or bool scalar, 0 otherwise */

/* ---- GGUF reader ------------------------------------------------------------------------- */

#define FDY_MAX_DIMS 4

typedef struct fdy_tensor_info {
    fdy_str name;
    int32_t n_dims;
    int64_t ne[FDY_MAX_DIMS];  /* GGML order: ne[0] is the row length (innermost) */
    int32_t type;              /* GGUF type id */
    const fdy_policy *policy;
    uint64_t offset;           /* relative to the start of the data section */
    uint64_t nbytes;
    int64_t n_elements;
    const void *data;          /* inside the mapping */
} fdy_tensor_info;

typedef struct fdy_gguf fdy_gguf;

fdy_status fdy_gguf_open(const char *path, fdy_gguf **out);
/* parse a buffer the caller keeps alive and unchanged until fdy_gguf_close */
fdy_status fdy_gguf_open_memory(const void *data, size_t size, fdy_gguf **out);
void fdy_gguf_close(fdy_gguf *g);

uint32_t fdy_gguf_version(const fdy_gguf *g);
uint32_t fdy_gguf_alignment(const fdy_gguf *g);
uint64_t fdy_gguf_data_offset(const fdy_gguf *g);
const void *fdy_gguf_base(const fdy_gguf *g); /* first byte of the file */
uint64_t fdy_gguf_size(const fdy_gguf *g);

int64_t fdy_gguf_n_kv(const fdy_gguf *g);
fdy_str fdy_gguf_kv_key(const fdy_gguf *g, int64_t i);
const fdy_value *fdy_gguf_kv_value(const fdy_gguf *g, int64_t i);
int64_t fdy_gguf_find_kv(const fdy_gguf *g, const char *key); /* -1 if absent */

int64_t fdy_gguf_n_tensors(const fdy_gguf *g);
const fdy_tensor_info *fdy_gguf_tensor(const fdy_gguf *g, int64_t i);
int64_t fdy_gguf_find_tensor(const fdy_gguf *g, const char *name); /* -1 if absent */

/* ---- GGUF writer ------------------------------------------------------------------------- */

typedef struct fdy_gguf_writer fdy_gguf_writer;

fdy_status fdy_gguf_writer_new(fdy_gguf_writer **out);
void fdy_gguf_writer_free(fdy_gguf_writer *w);
/* the value is copied (deeply); a key "general.alignment" (uint32) sets the alignment */
fdy_status fdy_gguf_writer_add_kv(fdy_gguf_writer *w, const char *key, const fdy_value *value);
/* the data is NOT copied: it must stay valid until fdy_gguf_writer_write returns */
fdy_status fdy_gguf_writer_add_tensor(fdy_gguf_writer *w, const char *name, int32_t n_dims,
                                      const int64_t *ne, int32_t type, const void *data,
                                      uint64_t nbytes);
fdy_status fdy_gguf_writer_write(fdy_gguf_writer *w, const char *path);

/* ---- threads ------------------------------------------------------------------------------ */

fdy_status fdy_set_num_threads(int n); /* the pool size, caller included */
int fdy_get_num_threads(void);         /* default: PYFOUNDRY_NUM_THREADS, else online CPUs */

/* ---- CPU stages --------------------------------------------------------------------------
 * Activations are row-major float32, NumPy shapes in comments.  A weight is a view of `rows`
 * rows of `cols` weights in some policy: (rows, cols), the row being the reduction axis. */

typedef enum fdy_variant {
    FDY_VARIANT_F32 = 0, /* dequantize, accumulate in float */
    FDY_VARIANT_Q8 = 1   /* activations quantized to the policy's dot_type, integer dots */
} fdy_variant;

typedef enum fdy_activation {
    FDY_ACT_NONE = 0,
    FDY_ACT_SILU = 1,
    FDY_ACT_GELU = 2, /* tanh approximation */
    FDY_ACT_RELU = 3
} fdy_activation;

typedef struct fdy_weight {
    const fdy_policy *policy;
    const void *data;  /* rows * row_bytes(cols) bytes */
    int64_t rows;      /* N: output features */
    int64_t cols;      /* K: input features */
} fdy_weight;

/* out (M, N) = act(x (M, K) @ w.T + bias (N)), or out += that when accumulate != 0 */
fdy_status fdy_matmul(const fdy_weight *w, const float *x, int64_t M, const float *bias,
                      float *out, int accumulate, int activation, int variant);
/* out (M, K) = x / sqrt(mean(x^2) + eps) * weight (K); out may equal x */
fdy_status fdy_rmsnorm(const float *x, int64_t M, int64_t K, const float *weight, float eps,
                       float *out);
/* matmul of rmsnorm(x); the normalised rows live in a temporary */
fdy_status fdy_rmsnorm_matmul(const float *x, int64_t M, const float *norm_weight, float eps,
                              const fdy_weight *w, const float *bias, float *out,
                              int accumulate, int activation, int variant);
/* n_parts (2 or 3) matmuls of one rmsnorm(x): out[i] (M, w[i]->rows) */
fdy_status fdy_rmsnorm_qkv(const float *x, int64_t M, const float *norm_weight, float eps,
                           int n_parts, const fdy_weight *const *w, const float *const *bias,
                           float *const *out, int variant);
/* rotary embedding of x (M, H, D) at positions (M,) into out (may equal x) */
fdy_status fdy_rope(const float *x, int64_t M, int64_t H, int64_t D, const int32_t *positions,
                    int64_t rot_dims, float theta, const float *freq_factors, int neox,
                    float *out);
/* causal attention: q (M, H, D) at positions start_pos.., caches (C, Hkv, D), out (M, H, D) */
fdy_status fdy_attention(const float *q, int64_t M, int64_t H, int64_t D, const float *k_cache,
                         const float *v_cache, int64_t C, int64_t Hkv, int64_t start_pos,
                         float scale, float *out);
fdy_status fdy_softmax(const float *x, int64_t M, int64_t N, float *out);
fdy_status fdy_swiglu(const float *gate, const float *up, int64_t n, float *out);
fdy_status fdy_add(const float *a, const float *b, int64_t n, float *out);
/* out (M, K) = x + down(swiglu(gate(rmsnorm(x)), up(rmsnorm(x)))); out may equal x */
fdy_status fdy_ffn(const float *x, int64_t M, const float *norm_weight, float eps,
                   const fdy_weight *w_gate, const fdy_weight *w_up, const fdy_weight *w_down,
                   float *out, int variant);
/* out (M, K) = rows ids (M,) of table (V, K) */
fdy_status fdy_embedding(const fdy_weight *table, const int32_t *ids, int64_t M, float *out);

/* ---- GPU kernel sources -------------------------------------------------------------------
 * Kernels are composed from text: the target's prelude (metal/prelude_<target>.h), the device
 * part of each weight policy, and a kernel template of metal/ (see foundry_c/src/gpu/). */

/* the source of kernel template `kernel` for target "cuda" or "metal", weight slot i bound to
 * policies[i] (names), with `defines` (extra `#define` lines, may be NULL) placed before the
 * template; *out is allocated: release it with fdy_gpu_free */
fdy_status fdy_gpu_compose(const char *target, const char *kernel, const char *const *policies,
                           int32_t n_policies, const char *defines, char **out);
void fdy_gpu_free(void *p);
const char *fdy_gpu_template_name(int32_t i); /* i-th kernel template name, NULL past the end */

/* ---- CUDA ----------------------------------------------------------------------------------
 * libcuda and libnvrtc are opened with dlopen on first use: nothing CUDA is needed to build or
 * load the library.  One context on device 0 (PYFOUNDRY_CUDA_DEVICE picks another), one stream.
 * Device pointers are opaque 64-bit integers.  Modules are compiled with NVRTC for the device's
 * architecture and cached by a content key (source, options, driver and NVRTC versions) in
 * memory and on disk ($PYFOUNDRY_CACHE_DIR or $XDG_CACHE_HOME/pyfoundry or
 * ~/.cache/pyfoundry, subfolder cuda/). */

typedef struct fdy_cuda_module fdy_cuda_module;

fdy_status fdy_cuda_init(void);               /* FDY_ERR_UNSUPPORTED when no driver / GPU */
const char *fdy_cuda_device_name(void);
int fdy_cuda_arch(void);                      /* compute capability, e.g. 90 */
int fdy_cuda_driver_version(void);
/* compile (or fetch) the module of `source`; modules live until the process ends */
fdy_status fdy_cuda_module_get(const char *source, fdy_cuda_module **out);
const char *fdy_cuda_module_key(const fdy_cuda_module *m);   /* hex content key */
fdy_status fdy_cuda_malloc(size_t bytes, uint64_t *dptr);
fdy_status fdy_cuda_free(uint64_t dptr);
fdy_status fdy_cuda_upload(uint64_t dst, const void *src, size_t bytes);
fdy_status fdy_cuda_download(void *dst, uint64_t src, size_t bytes);
fdy_status fdy_cuda_copy(uint64_t dst, uint64_t src, size_t bytes);   /* device to device */
fdy_status fdy_cuda_fill(uint64_t dst, uint32_t value, size_t n_words); /* poison / zero */
/* launch kernel `name` of module m: args[i] points to the i-th argument, sizes[i] its size */
fdy_status fdy_cuda_launch(fdy_cuda_module *m, const char *name, const uint32_t grid[3],
                           uint32_t block, void *const *args, int32_t n_args);
fdy_status fdy_cuda_sync(void);
/* capture the launches made between begin and end as a graph; replay with graph_launch */
fdy_status fdy_cuda_capture_begin(void);
fdy_status fdy_cuda_capture_end(uint64_t *graph_exec);
fdy_status fdy_cuda_graph_launch(uint64_t graph_exec);
fdy_status fdy_cuda_graph_free(uint64_t graph_exec);
/* device milliseconds between two recorded points: event_record returns a handle */
fdy_status fdy_cuda_event_record(uint64_t *event);
fdy_status fdy_cuda_event_elapsed(uint64_t start, uint64_t end, float *ms);
fdy_status fdy_cuda_event_free(uint64_t event);

/* ---- model executor ----------------------------------------------------------------------
 * A plan is a flat program of instructions over activation buffers (each (M, width) floats)
 * and weights (views; norms, biases and rope frequency factors must be f32 rows).  It is built
 * from a model spec by pyfoundry/model.py; fdy_model_forward runs it for M tokens. */

typedef enum fdy_op {
    FDY_I_EMBED = 1,   /* out = table[tokens]                                  weight */
    FDY_I_RMSNORM = 2, /* out = rmsnorm(in0) * weight                        eps    */
    FDY_I_MATMUL = 3,  /* out (+)= act(in0 @ weight.T + bias)                       */
    FDY_I_ROPE = 4,    /* in0 rotated in place at the token positions               */
    FDY_I_ATTN = 5,    /* k=in1, v=in2 stored in the layer's cache; out = attn(q=in0) */
    FDY_I_SWIGLU = 6,  /* out = silu(in0) * in1                                     */
    FDY_I_ADD = 7      /* out = in0 + in1                                           */
} fdy_op;

typedef struct fdy_instr {
    int32_t op;
    int32_t layer;       /* -1 outside the layers */
    int32_t in0, in1, in2, out;
    int32_t weight, bias, freq;  /* weight indices, -1 = none */
    int32_t accumulate, act;
    int32_t n_heads, n_kv_heads, head_dim, rot_dims, neox;
    float eps, theta, scale;
    int32_t capture;     /* capture slot, -1 = none */
    int32_t tail;        /* runs on the last row only when only the last logits are asked */
} fdy_instr;

typedef struct fdy_model fdy_model;

fdy_status fdy_model_create(const fdy_instr *prog, int32_t n_instr, const fdy_weight *weights,
                            int32_t n_weights, const int64_t *widths, int32_t n_bufs,
                            int32_t n_layers, int64_t kv_width, int64_t max_ctx,
                            int32_t logits_buf, fdy_model **out);
void fdy_model_free(fdy_model *m);
/* run tokens (M,) at positions start_pos.. (start_pos <= n_past); captures[slot] receives
 * (rows, width) floats for every instruction whose capture slot is non-NULL; logits receives
 * (M or 1, vocab) */
fdy_status fdy_model_forward(fdy_model *m, const int32_t *tokens, int64_t M, int64_t start_pos,
                             int variant, float *const *captures, int32_t n_captures,
                             int last_only, float *logits);
fdy_status fdy_model_truncate(fdy_model *m, int64_t n_past);
int64_t fdy_model_n_past(const fdy_model *m);
int64_t fdy_model_kv_capacity(const fdy_model *m);
int64_t fdy_model_max_context(const fdy_model *m);
size_t fdy_model_kv_bytes(const fdy_model *m);

#ifdef __cplusplus
}
#endif

#endif /* FOUNDRY_H */
