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
    FDY_ERR_STATE = 7,       /* object used in the wrong state (RuntimeError) */
    FDY_ERR_SPACE = 8        /* an output buffer is too small; the size needed was returned */
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
    FDY_CPU_DOTPROD = 1u << 7,
    FDY_CPU_AMX = 1u << 8         /* AMX-TILE + AMX-INT8 with AVX-512, the OS permitting */
};
uint32_t fdy_cpu_features(void);          /* what the processor has */
uint32_t fdy_cpu_features_enabled(void);  /* what the kernels may use (detected & mask) */
void fdy_cpu_set_feature_mask(uint32_t mask); /* tests force paths with this */
/* bytes ahead of the block it reads that a streaming decode kernel prefetches to the L2 (the far
 * distance; 0: none): 16384 on Intel CPUs, 4096 elsewhere, or PYFOUNDRY_PREFETCH_AHEAD /
 * PYFOUNDRY_NO_PREFETCH as read at the first feature detection */
int32_t fdy_cpu_prefetch_ahead(void);
/* bytes ahead that it prefetches to the L1 (the near distance): 2048 on Intel CPUs, the far
 * distance elsewhere, or PYFOUNDRY_PREFETCH_NEAR / PYFOUNDRY_NO_PREFETCH */
int32_t fdy_cpu_prefetch_near(void);

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
/* benchmarks: stream `bytes` of `data` on the thread pool with wide loads (read bandwidth) */
uint64_t fdy_bench_read(const void *data, size_t bytes);

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
    /* optional: rows 0 .. rows / R * R - 1 again in the policy's interleaved layout (R =
     * its pack_rows; see fdy_weight_pack_into), used by the q8 decode GEMV; NULL: none */
    const void *packed;
    /* optional: rows 0 .. rows / 16 * 16 - 1 in the policy's AMX layout (see
     * fdy_weight_pack_amx_into), used by the f32 decode GEMV on CPUs with AMX; NULL: none */
    const void *amx;
} fdy_weight;
/* the bytes of w's interleaved copy (its whole groups of pack_rows rows in its policy's
 * layout, rounded up to whole pages): 0 when the policy has no such layout, this CPU would not
 * use it (no AVX2 + FMA + F16C), or w has fewer rows than one group */
size_t fdy_weight_pack_size(const fdy_weight *w);
/* writes that copy to dst (fdy_weight_pack_size(w) bytes): 1, or 0 when there is none */
int fdy_weight_pack_into(const fdy_weight *w, void *dst);
/* the bytes of w's AMX copy (its whole groups of 16 rows in its policy's AMX layout, whole
 * pages), for the f32 variant's decode GEMV: 0 when the policy has no such layout, AMX is not
 * enabled, or w has fewer than 16 rows */
size_t fdy_weight_amx_size(const fdy_weight *w);
/* writes that copy to dst (fdy_weight_amx_size(w) bytes): 1, or 0 when there is none */
int fdy_weight_pack_amx_into(const fdy_weight *w, void *dst);

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
/* bytes of the weight copies the model holds: the interleaved ones (made by its first q8
 * forward) and the AMX ones (made by its first f32 forward of one token) */
size_t fdy_model_packed_bytes(const fdy_model *m);

/* ---- sampler -----------------------------------------------------------------------------
 * Picks the next token from one row of logits (vocab,).  The chain, in llama.cpp's default
 * order (each step sees only the tokens the previous steps kept; removed tokens get
 * probability 0):
 *
 *   penalties  over the window W = the last penalty_last_n accepted tokens (0: none, -1: the
 *              whole history; ids >= vocab are ignored).  For each distinct token t in W with
 *              c = its count in W: logit /= repeat_penalty when logit > 0, else
 *              logit *= repeat_penalty; then logit -= c * frequency_penalty + presence_penalty.
 *   greedy     temperature == 0: the argmax of the penalized logits (ties: the lowest id);
 *              the distribution is one-hot and no random number is drawn.
 *   top-k      (top_k > 0) keep the k largest logits, ties broken by the lower id.
 *   top-p      (top_p < 1) p = softmax of the kept logits (temperature 1); sort by logit
 *              descending, ties by lower id; keep the smallest prefix whose sum of p is
 *              >= top_p (at least one token).
 *   min-p      (min_p > 0) p as above over the tokens still kept; keep p >= min_p * max(p).
 *   temperature + softmax: p = softmax(logit / temperature) over the kept tokens.
 *   draw       u = the next uniform double in [0, 1) of the sampler's own generator
 *              (splitmix64 seeded with `seed`; no libc randomness); the token is the lowest id
 *              whose cumulative probability, summed in id order, exceeds u.  One u per draw.
 *
 * Logits may hold -inf (a banned token) but not NaN or +inf, and not only -inf.  Arithmetic
 * is in double.  A sampler is not thread-safe: one caller at a time. */

typedef struct fdy_sampler_params {
    double temperature;       /* >= 0; 0 = greedy */
    int32_t top_k;            /* >= 0; 0 = off */
    double top_p;             /* in (0, 1]; 1 = off */
    double min_p;             /* in [0, 1]; 0 = off */
    double repeat_penalty;    /* > 0; 1 = off */
    double presence_penalty;  /* finite; 0 = off */
    double frequency_penalty; /* finite; 0 = off */
    int32_t penalty_last_n;   /* >= -1; 0 = no penalties, -1 = the whole history */
    uint64_t seed;
} fdy_sampler_params;

typedef struct fdy_sampler fdy_sampler;

/* temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, no penalties (window 64), seed 0 */
fdy_sampler_params fdy_sampler_default_params(void);
/* FDY_ERR_INVALID naming the first parameter out of range */
fdy_status fdy_sampler_new(const fdy_sampler_params *params, fdy_sampler **out);
void fdy_sampler_free(fdy_sampler *s);
const fdy_sampler_params *fdy_sampler_get_params(const fdy_sampler *s);
/* record a token (>= 0) the caller appended to the sequence */
fdy_status fdy_sampler_accept(fdy_sampler *s, int32_t token);
/* forget the history and restart the generator from the seed */
void fdy_sampler_reset(fdy_sampler *s);
int64_t fdy_sampler_n_history(const fdy_sampler *s);
/* the accepted tokens, oldest first; valid until the next accept, reset or free */
const int32_t *fdy_sampler_history(const fdy_sampler *s);
/* draw a token from logits (vocab,); does not accept it */
fdy_status fdy_sampler_sample(fdy_sampler *s, const float *logits, int64_t vocab,
                              int32_t *token);
/* the distribution sample() draws from: probs_out (vocab,) (no draw, generator untouched) */
fdy_status fdy_sampler_probs(fdy_sampler *s, const float *logits, int64_t vocab,
                             float *probs_out);

/* ---- tokenizer ----------------------------------------------------------------------------
 * Built from a GGUF file's tokenizer.ggml.* metadata, with llama.cpp's algorithms so that ids
 * match it: SentencePiece-style ("llama") and byte-level BPE ("gpt2", its pre-tokenizer chosen
 * by tokenizer.ggml.pre).  A tokenizer copies what it needs (the file may be closed after
 * creation), is immutable and may be used from several threads at once.  Functions that fill
 * a caller's buffer return FDY_ERR_SPACE with the size needed in *n_out when `cap` is too
 * small (pass cap 0 to ask for the size).  A detokenizer belongs to one thread and must not
 * outlive its tokenizer. */

typedef struct fdy_tokenizer fdy_tokenizer;
typedef struct fdy_detokenizer fdy_detokenizer;

typedef enum fdy_vocab_type {
    FDY_VOCAB_SPM = 1, /* tokenizer.ggml.model "llama" */
    FDY_VOCAB_BPE = 2  /* tokenizer.ggml.model "gpt2" */
} fdy_vocab_type;

/* token attributes, a bit set: from tokenizer.ggml.token_type (1 normal, 2 unknown, 3 control,
 * 4 user-defined, 5 unused, 6 byte, others undefined); end-of-turn tokens found by their text
 * also get CONTROL, as llama.cpp does */
enum {
    FDY_TOKEN_NORMAL = 1u << 0,
    FDY_TOKEN_UNKNOWN = 1u << 1,
    FDY_TOKEN_CONTROL = 1u << 2,
    FDY_TOKEN_USER_DEFINED = 1u << 3,
    FDY_TOKEN_UNUSED = 1u << 4,
    FDY_TOKEN_BYTE = 1u << 5,
    FDY_TOKEN_UNDEFINED = 1u << 6
};

typedef enum fdy_special {
    FDY_SPECIAL_BOS = 0,
    FDY_SPECIAL_EOS = 1,
    FDY_SPECIAL_UNK = 2,
    FDY_SPECIAL_PAD = 3,
    FDY_SPECIAL_SEP = 4,
    FDY_SPECIAL_EOT = 5, /* end of turn: tokenizer.ggml.eot_token_id, else found by its text */
    FDY_SPECIAL_EOM = 6  /* end of message: tokenizer.ggml.eom_token_id or <|eom_id|> */
} fdy_special;

/* flags of fdy_tokenizer_decode and fdy_detokenizer_create */
enum {
    FDY_DECODE_SPECIAL = 1u << 0, /* render control and unknown tokens as their text */
    FDY_DECODE_CONTINUE = 1u << 1 /* the ids continue earlier text: never drop a leading space */
};

/* FDY_ERR_FORMAT for missing or malformed metadata (lengths, types, unknown merge parts,
 * duplicate tokens, invalid UTF-8), FDY_ERR_UNSUPPORTED for other tokenizer models */
fdy_status fdy_tokenizer_create(const fdy_gguf *g, fdy_tokenizer **out);
void fdy_tokenizer_free(fdy_tokenizer *t);
/* what was accepted with a fallback (an unknown pre-tokenizer, a bad special id): "" or
 * lines that each end in '\n' */
const char *fdy_tokenizer_warnings(const fdy_tokenizer *t);
int32_t fdy_tokenizer_vocab_type(const fdy_tokenizer *t);
/* the pre-tokenizer rules in use ("gpt2", "llama3", "qwen2", ...; "" for SPM) */
const char *fdy_tokenizer_pre(const fdy_tokenizer *t);
int32_t fdy_tokenizer_n_vocab(const fdy_tokenizer *t);
int32_t fdy_tokenizer_special(const fdy_tokenizer *t, int32_t which); /* id, or -1 if none */
int fdy_tokenizer_add_bos(const fdy_tokenizer *t);          /* encode with add_special adds */
int fdy_tokenizer_add_eos(const fdy_tokenizer *t);
int fdy_tokenizer_add_space_prefix(const fdy_tokenizer *t); /* SPM: " " before the text */
/* ids that end generation (EOS, EOT, EOM and the end-of-turn texts llama.cpp knows),
 * ascending */
int32_t fdy_tokenizer_n_eog(const fdy_tokenizer *t);
const int32_t *fdy_tokenizer_eog(const fdy_tokenizer *t);
uint32_t fdy_tokenizer_token_attr(const fdy_tokenizer *t, int32_t id); /* 0 if out of range */
fdy_str fdy_tokenizer_token_text(const fdy_tokenizer *t, int32_t id);  /* the vocab string */
float fdy_tokenizer_token_score(const fdy_tokenizer *t, int32_t id);
int32_t fdy_tokenizer_find(const fdy_tokenizer *t, const char *text, size_t len); /* or -1 */

/* text (len bytes, any bytes) -> ids.  add_special: BOS/EOS as the vocabulary asks;
 * parse_special: control and unknown token texts in the text become those tokens (user-defined
 * ones always do, as in llama.cpp).  Invalid UTF-8: SPM encodes the bytes through byte
 * fallback; BPE reads each invalid byte as U+FFFD (as llama.cpp does). */
fdy_status fdy_tokenizer_encode(const fdy_tokenizer *t, const char *text, size_t len,
                                int add_special, int parse_special, int32_t *out, int64_t cap,
                                int64_t *n_out);
/* BPE: the words the pre-tokenizer cuts a valid UTF-8 text into, as byte offsets of their ends
 * (no special tokens are looked for); SPM: the whole text.  FDY_ERR_INVALID for invalid UTF-8. */
fdy_status fdy_tokenizer_pre_tokenize(const fdy_tokenizer *t, const char *text, size_t len,
                                      int64_t *ends, int64_t cap, int64_t *n_out);
/* the bytes a token stands for, a view valid as long as the tokenizer: SPM U+2581 -> " ",
 * <0xXX> -> the byte; BPE characters -> bytes; control and unknown tokens: their text when
 * `special`, else empty; unused tokens: empty.  FDY_ERR_RANGE for a bad id. */
fdy_status fdy_tokenizer_token_to_piece(const fdy_tokenizer *t, int32_t id, int special,
                                        fdy_str *piece);
/* ids -> bytes (the pieces joined; for SPM vocabularies the leading space the encoder adds at
 * the start and after special tokens is dropped).  flags: FDY_DECODE_*. */
fdy_status fdy_tokenizer_decode(const fdy_tokenizer *t, const int32_t *ids, int64_t n,
                                uint32_t flags, char *out, size_t cap, size_t *n_out);

/* streaming decode: push ids one at a time; each call yields the bytes that are now complete,
 * holding back the start of a UTF-8 character that later tokens may finish.  The views stay
 * valid until the next call on the detokenizer. */
fdy_status fdy_detokenizer_create(const fdy_tokenizer *t, uint32_t flags, fdy_detokenizer **out);
void fdy_detokenizer_free(fdy_detokenizer *d);
fdy_status fdy_detokenizer_push(fdy_detokenizer *d, int32_t id, fdy_str *text);
/* the held-back bytes (an incomplete character), emptying the buffer */
fdy_status fdy_detokenizer_flush(fdy_detokenizer *d, fdy_str *text);

#ifdef __cplusplus
}
#endif

#endif /* FOUNDRY_H */
