/* ops.c - the CPU stages: matmul (GEMV / GEMM, every policy, both compute variants), rmsnorm,
 * the fused rmsnorm+matmul and Q/K/V forms, rope, attention, softmax, swiglu, the fused FFN,
 * add and embedding.
 *
 * The drivers are generic over the policy: the f32 variant decodes weight rows with the
 * policy's decode code and accumulates in float; the q8 variant quantizes the activations to
 * the policy's dot_type once per call and runs the policy's integer vec_dot (falling back to
 * float dots over the dequantized activations for policies without one).  No kernel switches
 * on a format.  Most of the time of a decode step is spent in matmul_task.
 */
#include <math.h>
#include <stddef.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "dialect.h"
#include "internal.h"
#include "policy.h"
#include "threadpool.h"
#include "cpu/gemm.h"
#include "cpu/fused.h"
#include "cpu/simd.h"

/* ---- argument checks ------------------------------------------------------------------- */

#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (!(cond)) {                                     \
            return fdy_fail(FDY_ERR_INVALID, __VA_ARGS__); \
        }                                                  \
    } while (0)

static fdy_status check_weight(const fdy_weight *w, const char *what) {
    CHECK(w && w->policy && w->data, "%s: missing weight", what);
    CHECK(w->rows > 0 && w->cols > 0, "%s: weight shape (%lld, %lld) must be positive", what,
          (long long)w->rows, (long long)w->cols);
    CHECK(w->cols % w->policy->block_elems == 0,
          "%s: %s weight rows of %lld are not a multiple of the block size %d", what,
          w->policy->name, (long long)w->cols, w->policy->block_elems);
    return FDY_OK;
}

static float apply_act(float v, int act) {
    switch (act) {
    case FDY_ACT_SILU: return v / (1.0f + expf(-v));
    case FDY_ACT_GELU: {
        const float c = 0.7978845608028654f; /* sqrt(2/pi) */
        return 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v)));
    }
    case FDY_ACT_RELU: return v > 0.0f ? v : 0.0f;
    default: return v;
    }
}

/* ---- matmul ------------------------------------------------------------------------------ */

typedef struct mm_ctx {
    const fdy_weight *w;
    int64_t M, K, N;
    const float *x;       /* (M, K) float activations (f32 path) */
    const uint8_t *xq;    /* (M, xq_row) quantized activations (vec_dot path) */
    int64_t xq_row;
    int64_t w_row;        /* bytes per weight row */
    const float *bias;
    float *out;
    int accumulate, act;
    const float *res_in;  /* fused residual add (matmul groups): res_out = res_in + out */
    float *res_out;
    int64_t rows_per_task;
    fdy_dot_f32_fn dot;
    fdy_tile_f32_fn tile; /* the f32 GEMM's tile kernel */
    const fdy_amx_act *amx; /* M = 1, f32: the activation for w->amx's kernel, else NULL */
} mm_ctx;

static inline void mm_store(const mm_ctx *c, int64_t m, int64_t n, float v) {
    if (c->bias) {
        v += c->bias[n];
    }
    v = apply_act(v, c->act);
    float *o = &c->out[m * c->N + n];
    if (c->accumulate) {
        *o += v;
    } else {
        *o = v;
    }
    if (c->res_out) { /* the add stage's arithmetic: res + out */
        c->res_out[m * c->N + n] = c->res_in[m * c->N + n] + *o;
    }
}

/* up to this many activation rows the f32 variant runs the policy's fused decode + dot kernel
 * (vec_dot_f32) once per (row, token); above it the float GEMM (mm_rows_f32_gemm) */
#define FDY_VEC_DOT_F32_MAX_M 4

/* the tasks of a matmul region: about FDY_MM_TASK_BYTES of weights each, between 8 and 32
 * per thread.  A region ends when its last task does, so a thread that finishes its lane
 * waits up to one task's time: 64 KB is a few microseconds of streaming, where 8 tasks per
 * thread of a 9 MB matrix were ~45 us each.  Small matrices keep 8 per thread (smaller tasks
 * cost more in hand-out than they save).  docs/CPU_NOTES.md item 31. */
#define FDY_MM_TASK_BYTES 65536

static int64_t mm_task_count(int64_t weight_bytes, int threads) {
    int64_t n = weight_bytes / FDY_MM_TASK_BYTES;
    const int64_t lo = (int64_t)threads * 8, hi = (int64_t)threads * 32;
    return n < lo ? lo : n > hi ? hi : n;
}

/* ---- grown buffers: no allocation per call ---------------------------------------------- */

fdy_status fdy_buf_reserve(fdy_buf *b, size_t bytes) {
    if (b->size >= bytes) {
        return FDY_OK;
    }
    size_t sz = b->size ? b->size : 4096;
    while (sz < bytes) {
        sz *= 2;
    }
    void *m = NULL;
    if (posix_memalign(&m, 64, sz) != 0) {
        return fdy_fail(FDY_ERR_NOMEM, "cannot allocate %zu bytes of activations", bytes);
    }
    free(b->p);
    b->p = m;
    b->size = sz;
    return FDY_OK;
}

void fdy_buf_free(fdy_buf *b) {
    free(b->p);
    b->p = NULL;
    b->size = 0;
}

void fdy_mm_ws_free(fdy_mm_ws *ws) {
    for (int i = 0; i < FDY_MM_MAX_PARTS; i++) {
        fdy_buf_free(&ws->xq[i]);
        fdy_buf_free(&ws->xd[i]);
    }
    fdy_buf_free(&ws->amx);
}

/* the calling thread's workspace for the stand-alone stages (fdy_matmul, the fused rmsnorm
 * and FFN forms, rope): kept between calls, freed when the thread exits */
typedef struct thread_bufs {
    fdy_mm_ws mm;      /* first: thread_ws() hands out this member */
    fdy_buf norm;      /* normalised activations of fdy_rmsnorm_matmul / _qkv */
    fdy_buf gate, up;  /* fdy_ffn */
    fdy_buf rope;      /* fdy_rope's base frequencies and table */
} thread_bufs;

static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

static void tls_free(void *p) {
    thread_bufs *t = (thread_bufs *)p;
    fdy_mm_ws_free(&t->mm);
    fdy_buf_free(&t->norm);
    fdy_buf_free(&t->gate);
    fdy_buf_free(&t->up);
    fdy_buf_free(&t->rope);
    free(p);
}

static void tls_init(void) {
    (void)pthread_key_create(&tls_key, tls_free);
}

static thread_bufs *thread_bufs_get(void) {
    pthread_once(&tls_once, tls_init);
    thread_bufs *t = (thread_bufs *)pthread_getspecific(tls_key);
    if (!t) {
        t = (thread_bufs *)calloc(1, sizeof *t);
        if (t && pthread_setspecific(tls_key, t) != 0) {
            free(t);
            t = NULL;
        }
    }
    return t;
}

static fdy_mm_ws *thread_ws(void) {
    thread_bufs *t = thread_bufs_get();
    return t ? &t->mm : NULL;
}

/* a grown per-thread buffer of at least `bytes` */
static float *thread_buf(size_t which, size_t bytes, fdy_status *s) {
    thread_bufs *t = thread_bufs_get();
    if (!t) {
        *s = fdy_fail(FDY_ERR_NOMEM, "cannot allocate the thread's workspace");
        return NULL;
    }
    fdy_buf *b = (fdy_buf *)((char *)t + which);
    if ((*s = fdy_buf_reserve(b, bytes))) {
        return NULL;
    }
    return (float *)b->p;
}
#define THREAD_BUF(field, bytes, s) thread_buf(offsetof(thread_bufs, field), (bytes), (s))

/* out[n0 .. n0 + nr) of activation row m from v (a kernel's results for those rows) */
static void mm_store_rows(const mm_ctx *c, int64_t m, int64_t n0, const float *v, int64_t nr) {
    if (!c->bias && c->act == FDY_ACT_NONE && !c->accumulate) { /* mm_store's plain case */
        float *o = c->out + m * c->N + n0;
        memcpy(o, v, (size_t)nr * sizeof(float));
        if (c->res_out) {
            const float *ri = c->res_in + m * c->N + n0;
            float *ro = c->res_out + m * c->N + n0;
            for (int64_t i = 0; i < nr; i++) {
                ro[i] = ri[i] + o[i];
            }
        }
        return;
    }
    for (int64_t i = 0; i < nr; i++) {
        mm_store(c, m, n0 + i, v[i]);
    }
}

/* the float GEMM of the f32 variant for more than FDY_VEC_DOT_F32_MAX_M activation rows: per
 * panel of FDY_F32_PANEL weight rows, the rows are dequantized one K slice (FDY_F32_KC
 * elements, whole blocks) at a time into scratch, and each slice's dot products with every
 * activation row are added into the panel's sums by the tile kernel (fdy_select_tile_f32: 4
 * rows x 3 tokens per call, each dequantized value and each x value loaded once per tile).
 * A (row, token) result is the sum over the slices, in order, of the tile kernel's dot over
 * the slice, the same arithmetic whichever tile holds it, so the bits depend neither on how
 * the rows are split into tasks nor on which tokens share a tile (docs/CPU_NOTES.md item 38) */
#define FDY_F32_PANEL 32
#define FDY_F32_KC 512

/* elements per K slice of policy p: FDY_F32_KC rounded down to whole blocks (one block if
 * longer) */
static int64_t f32_slice(const fdy_policy *p) {
    const int64_t be = p->block_elems > 0 ? p->block_elems : 1;
    return FDY_F32_KC >= be ? FDY_F32_KC / be * be : be;
}

/* floats of per-thread scratch mm_rows_f32 needs for M activation rows of length K (the f32
 * GEMM's panel and sums, or one dequantized row) */
static size_t f32_scratch_floats(const fdy_policy *p, int64_t M, int64_t K) {
    const size_t g = (size_t)(FDY_F32_PANEL * (f32_slice(p) + M));
    return g > (size_t)K ? g : (size_t)K;
}

static void mm_rows_f32_gemm(const mm_ctx *c, int64_t r0, int64_t r1, float *scratch) {
    const uint8_t *wd = (const uint8_t *)c->w->data;
    const fdy_policy *p = c->w->policy;
    const int64_t kcb = f32_slice(p), be = p->block_elems > 0 ? p->block_elems : 1;
    const int64_t bb = p->block_bytes, M = c->M, K = c->K;
    float *panel = scratch, *acc = scratch + FDY_F32_PANEL * kcb;
    for (int64_t n0 = r0; n0 < r1; n0 += FDY_F32_PANEL) {
        const int64_t nr = r1 - n0 < FDY_F32_PANEL ? r1 - n0 : FDY_F32_PANEL;
        memset(acc, 0, (size_t)(nr * M) * sizeof(float));
        for (int64_t k0 = 0; k0 < K; k0 += kcb) {
            const int64_t kc = K - k0 < kcb ? K - k0 : kcb;
            for (int64_t r = 0; r < nr; r++) {
                const uint8_t *src = wd + (n0 + r) * c->w_row + k0 / be * bb;
                if (p->dequantize_fast) { /* kc is whole blocks */
                    p->dequantize_fast(src, panel + r * kcb, kc);
                } else {
                    fdy_policy_dequantize(p, src, panel + r * kcb, kc);
                }
            }
            for (int64_t t = 0; t < M; t += FDY_TILE_T) {
                const int T = M - t < FDY_TILE_T ? (int)(M - t) : FDY_TILE_T;
                for (int64_t r = 0; r < nr; r += FDY_TILE_R) {
                    const int R = nr - r < FDY_TILE_R ? (int)(nr - r) : FDY_TILE_R;
                    c->tile(panel + r * kcb, kcb, c->x + t * K + k0, K, kc, R, T, acc + r * M + t,
                            M);
                }
            }
        }
        for (int64_t r = 0; r < nr; r++) {
            for (int64_t m = 0; m < M; m++) {
                mm_store(c, m, n0 + r, acc[r * M + m]);
            }
        }
    }
}

/* rows r0 .. r1 of the f32 variant: up to FDY_VEC_DOT_F32_MAX_M activation rows through the
 * policy's fused kernels (fdy_policy_dot_f32_rows, 64 rows per call) or, for a format without
 * them, one dequantized row at a time (in L1) and the float dot per token; more through the
 * float GEMM (scratch: f32_scratch_floats) */
static void mm_rows_f32(const mm_ctx *c, int64_t r0, int64_t r1, float *scratch);

/* rows r0 .. r1 of the f32 variant (M = 1) from the AMX copy: the whole groups of 16 rows
 * through the policy's vec_dot_f32_amx, the rows before and after them the plain way */
static void mm_rows_f32_amx(const mm_ctx *c, int64_t r0, int64_t r1, float *scratch) {
    const fdy_policy *p = c->w->policy;
    const int64_t R = FDY_AMX_ROWS, g0 = (r0 + R - 1) / R, g1 = r1 / R;
    mm_ctx plain = *c;
    plain.amx = NULL;
    if (g1 <= g0) {
        mm_rows_f32(&plain, r0, r1, scratch);
        return;
    }
    if (r0 < g0 * R) {
        mm_rows_f32(&plain, r0, g0 * R, scratch);
    }
    const size_t gb = (size_t)(c->amx->n_chunks * p->amx_chunk_bytes);
    float v[256];
    const int64_t step = 256 / R;
    for (int64_t g = g0; g < g1; g += step) {
        const int64_t ng = g1 - g < step ? g1 - g : step;
        p->vec_dot_f32_amx((const uint8_t *)c->w->amx + (size_t)g * gb, gb, c->amx, v, ng);
        mm_store_rows(c, 0, g * R, v, ng * R);
    }
    if (g1 * R < r1) {
        mm_rows_f32(&plain, g1 * R, r1, scratch);
    }
}

static void mm_rows_f32(const mm_ctx *c, int64_t r0, int64_t r1, float *scratch) {
    const uint8_t *wd = (const uint8_t *)c->w->data;
    const fdy_policy *p = c->w->policy;
    if (c->amx) {
        mm_rows_f32_amx(c, r0, r1, scratch);
        return;
    }
    if (c->M > FDY_VEC_DOT_F32_MAX_M) {
        mm_rows_f32_gemm(c, r0, r1, scratch);
        return;
    }
    if (p->vec_dot_f32) {
        float v[64];
        for (int64_t n = r0; n < r1; n += 64) {
            const int64_t nr = r1 - n < 64 ? r1 - n : 64;
            for (int64_t m = 0; m < c->M; m++) {
                fdy_policy_dot_f32_rows(p, wd + n * c->w_row, (size_t)c->w_row, c->x + m * c->K,
                                        c->K, v, nr);
                mm_store_rows(c, m, n, v, nr);
            }
        }
        return;
    }
    for (int64_t n = r0; n < r1; n++) {
        if (p->dequantize_fast) { /* the row length is checked */
            p->dequantize_fast(wd + n * c->w_row, scratch, c->K);
        } else {
            fdy_policy_dequantize(p, wd + n * c->w_row, scratch, c->K);
        }
        for (int64_t m = 0; m < c->M; m++) {
            mm_store(c, m, n, c->dot(scratch, c->x + m * c->K, c->K));
        }
    }
}

static void mm_task_f32(void *vctx, int64_t task, int thread) {
    const mm_ctx *c = (const mm_ctx *)vctx;
    int64_t r0 = task * c->rows_per_task;
    int64_t r1 = r0 + c->rows_per_task < c->N ? r0 + c->rows_per_task : c->N;
    mm_rows_f32(c, r0, r1, (float *)fdy_scratch(thread));
}

/* rows r0 .. r1 of the q8 variant: one activation row through the policy's vec_dot_rows (64
 * rows per call, the same bits as vec_dot), else vec_dot row by row and token by token */
static void mm_rows_q8_plain(const mm_ctx *c, int64_t r0, int64_t r1);

/* rows r0 .. r1 of the q8 variant (M = 1) from the interleaved copy: the whole groups through
 * the policy's vec_dot_packed, the rows before and after them the plain way */
static void mm_rows_q8_packed(const mm_ctx *c, int64_t r0, int64_t r1) {
    const fdy_policy *p = c->w->policy;
    const int64_t R = p->pack_rows;
    const int64_t g0 = (r0 + R - 1) / R, g1 = r1 / R;
    if (g1 <= g0) {
        mm_rows_q8_plain(c, r0, r1);
        return;
    }
    if (r0 < g0 * R) {
        mm_rows_q8_plain(c, r0, g0 * R);
    }
    const size_t gb = (size_t)(R * c->w_row);
    float v[64];
    const int64_t step = 64 / R;
    for (int64_t g = g0; g < g1; g += step) {
        const int64_t ng = g1 - g < step ? g1 - g : step;
        p->vec_dot_packed((const uint8_t *)c->w->packed + (size_t)g * gb, gb, c->xq, c->K, v, ng);
        mm_store_rows(c, 0, g * R, v, ng * R);
    }
    if (g1 * R < r1) {
        mm_rows_q8_plain(c, g1 * R, r1);
    }
}

static void mm_rows_q8(const mm_ctx *c, int64_t r0, int64_t r1) {
    if (c->M == 1 && c->w->packed && c->w->policy->vec_dot_packed) {
        mm_rows_q8_packed(c, r0, r1);
        return;
    }
    mm_rows_q8_plain(c, r0, r1);
}

static void mm_rows_q8_plain(const mm_ctx *c, int64_t r0, int64_t r1) {
    const uint8_t *wd = (const uint8_t *)c->w->data;
    const fdy_vec_dot_rows_fn vr = c->w->policy->vec_dot_rows;
    if (c->M == 1 && vr) {
        float v[64];
        for (int64_t n = r0; n < r1; n += 64) {
            const int64_t nr = r1 - n < 64 ? r1 - n : 64;
            vr(wd + n * c->w_row, (size_t)c->w_row, c->xq, c->K, v, nr);
            mm_store_rows(c, 0, n, v, nr);
        }
        return;
    }
    const fdy_vec_dot_fn vd = c->w->policy->vec_dot;
    for (int64_t n = r0; n < r1; n++) {
        const uint8_t *wr = wd + n * c->w_row;
        for (int64_t m = 0; m < c->M; m++) {
            mm_store(c, m, n, vd(wr, c->xq + m * c->xq_row, c->K));
        }
    }
}

static void mm_task_q8(void *vctx, int64_t task, int thread) {
    const mm_ctx *c = (const mm_ctx *)vctx;
    int64_t r0 = task * c->rows_per_task;
    int64_t r1 = r0 + c->rows_per_task < c->N ? r0 + c->rows_per_task : c->N;
    mm_rows_q8(c, r0, r1);
}

/* where the interleaved q8 kernel runs: its AVX2 tier (AVX-512 CPUs too: on an AVX-512 Xeon
 * the packed kernel beat the AVX-512 rows kernels 1.2-1.8x, docs/CPU_NOTES.md item 39) */
static int pack_wanted(const fdy_weight *w) {
    const uint32_t base = FDY_CPU_AVX2 | FDY_CPU_FMA | FDY_CPU_F16C;
    return w && w->policy && w->policy->pack && w->policy->vec_dot_packed &&
           w->policy->pack_rows > 0 && w->rows >= w->policy->pack_rows &&
           (fdy_cpu_features_enabled() & base) == base;
}

size_t fdy_weight_pack_size(const fdy_weight *w) {
    if (!pack_wanted(w)) {
        return 0;
    }
    const int64_t rb = fdy_policy_row_bytes(w->policy, w->cols);
    if (rb <= 0) {
        return 0;
    }
    const size_t bytes = (size_t)(w->rows / w->policy->pack_rows * w->policy->pack_rows * rb);
    return (bytes + 4095) / 4096 * 4096;
}

int fdy_weight_pack_into(const fdy_weight *w, void *dst) {
    if (!w || !w->data || !dst || !fdy_weight_pack_size(w)) {
        return 0;
    }
    const int64_t rb = fdy_policy_row_bytes(w->policy, w->cols);
    const int64_t R = w->policy->pack_rows, ng = w->rows / R;
    for (int64_t g = 0; g < ng; g++) {
        w->policy->pack((const uint8_t *)w->data + (size_t)(g * R * rb), (size_t)rb,
                        (uint8_t *)dst + (size_t)(g * R * rb), w->cols);
    }
    return 1;
}

size_t fdy_weight_amx_size(const fdy_weight *w) {
    if (!w || !w->policy || fdy_policy_amx_chunk_bytes(w->policy) <= 0 ||
        w->rows < FDY_AMX_ROWS || w->cols <= 0 || w->cols % 32 != 0 ||
        w->policy->block_elems != 32 || !(fdy_cpu_features_enabled() & FDY_CPU_AMX)) {
        return 0;
    }
    const int64_t nc = (w->cols / 32 + 1) / 2;
    const size_t bytes = (size_t)(w->rows / FDY_AMX_ROWS) * (size_t)nc *
                         (size_t)w->policy->amx_chunk_bytes;
    return (bytes + 4095) / 4096 * 4096;
}

int fdy_weight_pack_amx_into(const fdy_weight *w, void *dst) {
    if (!w || !w->data || !dst || !fdy_weight_amx_size(w)) {
        return 0;
    }
    const int64_t rb = fdy_policy_row_bytes(w->policy, w->cols);
    const int64_t ng = w->rows / FDY_AMX_ROWS, nc = (w->cols / 32 + 1) / 2;
    const size_t gb = (size_t)nc * (size_t)w->policy->amx_chunk_bytes;
    for (int64_t g = 0; g < ng; g++) {
        if (w->policy->pack_amx((const uint8_t *)w->data + (size_t)(g * FDY_AMX_ROWS * rb),
                                (size_t)rb, (uint8_t *)dst + (size_t)g * gb, w->cols) != 0) {
            return 0;
        }
    }
    return 1;
}

/* r rows rounded up to whole groups of w's interleaved and AMX copies (r itself when it has
 * none), so that a task's rows are whole groups */
static int64_t whole_groups(const fdy_weight *w, int64_t r) {
    if (w->packed && w->policy->pack_rows > 1) {
        const int64_t R = w->policy->pack_rows;
        r = (r + R - 1) / R * R;
    }
    if (w->amx) { /* 16 rows: a multiple of the interleaved layouts' 8 */
        r = (r + FDY_AMX_ROWS - 1) / FDY_AMX_ROWS * FDY_AMX_ROWS;
    }
    return r;
}

/* the AMX activation of x (one row of K) in buf when some weight of the call has an AMX copy
 * and AMX is enabled: a, else NULL (then the plain kernels run) */
static const fdy_amx_act *amx_activation(const float *x, int64_t K, fdy_buf *buf,
                                         fdy_amx_act *a, fdy_status *s) {
    *s = FDY_OK;
    if (!(fdy_cpu_features_enabled() & FDY_CPU_AMX)) {
        return NULL;
    }
    if ((*s = fdy_buf_reserve(buf, fdy_amx_bytes(K)))) {
        return NULL;
    }
    return fdy_amx_prepare(x, K, buf->p, a) == 0 ? a : NULL;
}

/* quantize activation rows to the policy's dot_type into the grown buffer buf */
static fdy_status quantize_activations(const fdy_policy *dot, const float *x, int64_t M,
                                       int64_t K, fdy_buf *buf, uint8_t **out,
                                       int64_t *row_bytes) {
    int64_t rb = fdy_policy_row_bytes(dot, K);
    if (rb < 0) {
        return FDY_ERR_INVALID;
    }
    fdy_status s = fdy_buf_reserve(buf, (size_t)(rb * M) + 64);
    if (s) {
        return s;
    }
    uint8_t *q = (uint8_t *)buf->p;
    fdy_quant_fn qf = dot->quantize_act ? dot->quantize_act : dot->quantize;
    for (int64_t m = 0; m < M; m++) {
        qf(x + m * K, q + m * rb, K);
    }
    *out = q;
    *row_bytes = rb;
    return FDY_OK;
}

fdy_status fdy_matmul(const fdy_weight *w, const float *x, int64_t M, const float *bias,
                      float *out, int accumulate, int activation, int variant) {
    fdy_status s = check_weight(w, "matmul");
    if (s) {
        return s;
    }
    CHECK(x && out, "matmul: missing input or output");
    CHECK(M > 0, "matmul: M must be positive, got %lld", (long long)M);
    CHECK(activation >= FDY_ACT_NONE && activation <= FDY_ACT_RELU,
          "matmul: unknown activation %d", activation);
    CHECK(variant == FDY_VARIANT_F32 || variant == FDY_VARIANT_Q8, "matmul: unknown variant %d",
          variant);
    mm_ctx c = {0};
    c.w = w;
    c.M = M;
    c.K = w->cols;
    c.N = w->rows;
    c.x = x;
    c.w_row = fdy_policy_row_bytes(w->policy, w->cols);
    c.bias = bias;
    c.out = out;
    c.accumulate = accumulate;
    c.act = activation;
    c.dot = fdy_select_dot_f32();
    c.tile = fdy_select_tile_f32();
    int threads = fdy_get_num_threads();
    int64_t n_tasks = mm_task_count(c.N * c.w_row, threads);
    if (n_tasks > c.N) {
        n_tasks = c.N;
    }
    c.rows_per_task = whole_groups(w, (c.N + n_tasks - 1) / n_tasks);
    n_tasks = (c.N + c.rows_per_task - 1) / c.rows_per_task;

    const fdy_policy *dot = NULL;
    if (variant == FDY_VARIANT_Q8 && w->policy->dot_type) {
        dot = fdy_policy_by_name(w->policy->dot_type);
        if (!dot || !dot->quantize || c.K % dot->block_elems != 0) {
            dot = NULL; /* rows that the activation format cannot tile: exact f32 path */
        }
    }
    if (dot && M >= FDY_GEMM_MIN_M) { /* prefill: cpu/gemm.c when the policies can unpack */
        int handled = 0;
        s = fdy_gemm_q8(w, x, M, bias, out, accumulate, activation, &handled);
        if (s || handled) {
            return s;
        }
    }
    fdy_mm_ws *ws = dot ? thread_ws() : NULL;
    if (dot && !ws) {
        return fdy_fail(FDY_ERR_NOMEM, "cannot allocate the activation workspace");
    }
    if (dot && w->policy->vec_dot) {
        uint8_t *xq = NULL;
        if ((s = quantize_activations(dot, x, M, c.K, &ws->xq[0], &xq, &c.xq_row))) {
            return s;
        }
        c.xq = xq;
        fdy_parallel(mm_task_q8, &c, n_tasks);
        return FDY_OK;
    }
    if (dot) {
        /* no integer kernel for this format: float dots over the quantized activations, the
         * same numbers up to float rounding */
        uint8_t *xq = NULL;
        if ((s = quantize_activations(dot, x, M, c.K, &ws->xq[0], &xq, &c.xq_row)) ||
            (s = fdy_buf_reserve(&ws->xd[0], (size_t)(M * c.K) * sizeof(float)))) {
            return s;
        }
        float *xd = (float *)ws->xd[0].p;
        for (int64_t m = 0; m < M; m++) {
            fdy_policy_dequantize(dot, xq + m * c.xq_row, xd + m * c.K, c.K);
        }
        c.x = xd;
    }
    fdy_amx_act amx;
    if (!dot && M == 1 && w->amx) {
        fdy_mm_ws *aws = thread_ws();
        if (!aws) {
            return fdy_fail(FDY_ERR_NOMEM, "cannot allocate the activation workspace");
        }
        c.amx = amx_activation(x, c.K, &aws->amx, &amx, &s);
        if (s) {
            return s;
        }
    }
    if ((s = fdy_scratch_reserve(f32_scratch_floats(w->policy, M, c.K) * sizeof(float)))) {
        return s;
    }
    fdy_parallel(mm_task_f32, &c, n_tasks);
    return FDY_OK;
}

/* ---- matmul groups: several weights over one input in one parallel region ----------------- */

typedef struct group_ctx {
    mm_ctx part[FDY_MM_MAX_PARTS];
    int q8[FDY_MM_MAX_PARTS];          /* integer vec_dot over part[i].xq, else float dots */
    int64_t first_task[FDY_MM_MAX_PARTS + 1];
    int n_parts;
    float *swiglu_out;                 /* parts 0 and 1 are gate and up: tasks over their rows */
} group_ctx;

static void group_task(void *vctx, int64_t task, int thread) {
    const group_ctx *g = (const group_ctx *)vctx;
    int p = 0;
    while (task >= g->first_task[p + 1]) {
        p++;
    }
    float *scratch = (float *)fdy_scratch(thread);
    const int np = g->swiglu_out ? 2 : 1; /* parts computed over the task's rows */
    const mm_ctx *c0 = &g->part[p];
    const int64_t r0 = (task - g->first_task[p]) * c0->rows_per_task;
    const int64_t r1 = r0 + c0->rows_per_task < c0->N ? r0 + c0->rows_per_task : c0->N;
    /* part by part over the task's rows: one weight stream at a time */
    for (int i = 0; i < np; i++) {
        const mm_ctx *c = &g->part[p + i];
        if (g->q8[p + i]) {
            mm_rows_q8(c, r0, r1);
            continue;
        }
        mm_rows_f32(c, r0, r1, scratch);
    }
    if (g->swiglu_out) { /* the swiglu stage's arithmetic on the stored gate and up rows */
        const mm_ctx *cg = &g->part[0], *cu = &g->part[1];
        for (int64_t m = 0; m < cg->M; m++) {
            for (int64_t n = r0; n < r1; n++) {
                const float gv = cg->out[m * cg->N + n];
                g->swiglu_out[m * cg->N + n] = (gv / (1.0f + expf(-gv))) * cu->out[m * cg->N + n];
            }
        }
    }
}

fdy_status fdy_matmul_group(const float *x, int64_t M, int n_parts, const fdy_mm_part *parts,
                            float *swiglu_out, int variant, fdy_mm_ws *ws) {
    CHECK(x && parts && ws && n_parts >= 1 && n_parts <= FDY_MM_MAX_PARTS,
          "matmul group: bad arguments");
    CHECK(M > 0, "matmul group: M must be positive");
    CHECK(!swiglu_out || (n_parts == 2 && parts[0].w->rows == parts[1].w->rows),
          "matmul group: swiglu needs two parts of equal rows");
    fdy_status s;
    group_ctx g;
    memset(&g, 0, sizeof g);
    g.n_parts = n_parts;
    g.swiglu_out = swiglu_out;
    const fdy_policy *dots[FDY_MM_MAX_PARTS];
    int n_dots = 0;
    int64_t total_rows = 0, total_bytes = 0;
    size_t max_scratch = 0; /* floats */
    for (int i = 0; i < n_parts; i++) {
        const fdy_mm_part *pp = &parts[i];
        if ((s = check_weight(pp->w, "matmul group"))) {
            return s;
        }
        CHECK(pp->w->cols == parts[0].w->cols && pp->out, "matmul group: part %d shape", i);
        mm_ctx *c = &g.part[i];
        c->w = pp->w;
        c->M = M;
        c->K = pp->w->cols;
        c->N = pp->w->rows;
        c->x = x;
        c->w_row = fdy_policy_row_bytes(pp->w->policy, pp->w->cols);
        c->bias = pp->bias;
        c->out = pp->out;
        c->accumulate = pp->accumulate;
        c->act = pp->act;
        c->res_in = pp->res_in;
        c->res_out = pp->res_out;
        c->dot = fdy_select_dot_f32();
        c->tile = fdy_select_tile_f32();
        total_rows += c->N;
        total_bytes += c->N * c->w_row;
        const size_t fl = f32_scratch_floats(pp->w->policy, M, c->K);
        max_scratch = fl > max_scratch ? fl : max_scratch;
        /* the activations in this part's dot type: quantized once per distinct type */
        const fdy_policy *dot = NULL;
        if (variant == FDY_VARIANT_Q8 && pp->w->policy->dot_type) {
            dot = fdy_policy_by_name(pp->w->policy->dot_type);
            if (!dot || !dot->quantize || c->K % dot->block_elems != 0) {
                dot = NULL;
            }
        }
        if (!dot) {
            continue;
        }
        int d = 0;
        while (d < n_dots && dots[d] != dot) {
            d++;
        }
        if (d == n_dots) {
            dots[n_dots++] = dot;
            uint8_t *xq = NULL;
            int64_t rb = 0;
            if ((s = quantize_activations(dot, x, M, c->K, &ws->xq[d], &xq, &rb))) {
                return s;
            }
        }
        c->xq = (const uint8_t *)ws->xq[d].p;
        c->xq_row = fdy_policy_row_bytes(dot, c->K);
        g.q8[i] = pp->w->policy->vec_dot != NULL;
        if (!g.q8[i]) { /* float dots over the dequantized quantized activations */
            if ((s = fdy_buf_reserve(&ws->xd[d], (size_t)(M * c->K) * sizeof(float)))) {
                return s;
            }
            float *xd = (float *)ws->xd[d].p;
            for (int64_t m = 0; m < M; m++) {
                fdy_policy_dequantize(dot, c->xq + m * c->xq_row, xd + m * c->K, c->K);
            }
            c->x = xd;
        }
    }
    /* the f32 parts with an AMX copy at M = 1: the activation in AMX form, once */
    fdy_amx_act amx;
    const fdy_amx_act *pa = NULL;
    int prepared = 0;
    for (int i = 0; i < n_parts; i++) {
        mm_ctx *c = &g.part[i];
        if (M != 1 || g.q8[i] || c->x != x || !c->w->amx) {
            continue;
        }
        if (!prepared) {
            prepared = 1;
            pa = amx_activation(x, c->K, &ws->amx, &amx, &s);
            if (s) {
                return s;
            }
        }
        c->amx = pa;
    }
    if ((s = fdy_scratch_reserve(max_scratch * sizeof(float)))) {
        return s;
    }
    /* mm_task_count tasks over all the rows, each within one part */
    const int threads = fdy_get_num_threads();
    const int64_t n_tasks = mm_task_count(total_bytes, threads);
    int64_t rpt = (total_rows + n_tasks - 1) / n_tasks;
    rpt = rpt < 1 ? 1 : rpt;
    for (int i = 0; i < n_parts; i++) {
        rpt = whole_groups(parts[i].w, rpt);
    }
    const int task_parts = swiglu_out ? 1 : n_parts;
    g.first_task[0] = 0;
    for (int i = 0; i < task_parts; i++) {
        g.part[i].rows_per_task = rpt;
        g.first_task[i + 1] = g.first_task[i] + (g.part[i].N + rpt - 1) / rpt;
    }
    if (swiglu_out) {
        g.part[1].rows_per_task = rpt;
    }
    fdy_parallel(group_task, &g, g.first_task[task_parts]);
    return FDY_OK;
}

/* ---- rmsnorm ----------------------------------------------------------------------------- */

static void rmsnorm_row(const float *x, int64_t K, const float *w, float eps, float *out) {
    double ss = 0.0;
    for (int64_t k = 0; k < K; k++) {
        ss += (double)x[k] * (double)x[k];
    }
    const float scale = (float)(1.0 / sqrt(ss / (double)K + (double)eps));
    for (int64_t k = 0; k < K; k++) {
        out[k] = (x[k] * scale) * w[k];
    }
}

fdy_status fdy_rmsnorm(const float *x, int64_t M, int64_t K, const float *weight, float eps,
                       float *out) {
    CHECK(x && weight && out, "rmsnorm: missing argument");
    CHECK(M > 0 && K > 0, "rmsnorm: shape (%lld, %lld) must be positive", (long long)M,
          (long long)K);
    CHECK(eps >= 0.0f, "rmsnorm: eps must be >= 0");
    for (int64_t m = 0; m < M; m++) {
        rmsnorm_row(x + m * K, K, weight, eps, out + m * K);
    }
    return FDY_OK;
}

fdy_status fdy_rmsnorm_matmul(const float *x, int64_t M, const float *norm_weight, float eps,
                              const fdy_weight *w, const float *bias, float *out,
                              int accumulate, int activation, int variant) {
    fdy_status s = check_weight(w, "rmsnorm_matmul");
    if (s) {
        return s;
    }
    CHECK(M > 0, "rmsnorm_matmul: M must be positive");
    float *xn = THREAD_BUF(norm, (size_t)(M * w->cols) * sizeof(float), &s);
    if (!xn) {
        return s;
    }
    s = fdy_rmsnorm(x, M, w->cols, norm_weight, eps, xn);
    if (!s) {
        s = fdy_matmul(w, xn, M, bias, out, accumulate, activation, variant);
    }
    return s;
}

fdy_status fdy_rmsnorm_qkv(const float *x, int64_t M, const float *norm_weight, float eps,
                           int n_parts, const fdy_weight *const *w, const float *const *bias,
                           float *const *out, int variant) {
    CHECK(n_parts == 2 || n_parts == 3, "rmsnorm_qkv: 2 or 3 weights, got %d", n_parts);
    CHECK(w && out, "rmsnorm_qkv: missing weights or outputs");
    fdy_status s;
    for (int i = 0; i < n_parts; i++) {
        if ((s = check_weight(w[i], "rmsnorm_qkv"))) {
            return s;
        }
        CHECK(w[i]->cols == w[0]->cols, "rmsnorm_qkv: weight %d has %lld columns, weight 0 %lld",
              i, (long long)w[i]->cols, (long long)w[0]->cols);
        CHECK(out[i], "rmsnorm_qkv: missing output %d", i);
    }
    CHECK(M > 0, "rmsnorm_qkv: M must be positive");
    float *xn = THREAD_BUF(norm, (size_t)(M * w[0]->cols) * sizeof(float), &s);
    if (!xn) {
        return s;
    }
    s = fdy_rmsnorm(x, M, w[0]->cols, norm_weight, eps, xn);
    for (int i = 0; !s && i < n_parts; i++) {
        s = fdy_matmul(w[i], xn, M, bias ? bias[i] : NULL, out[i], 0, FDY_ACT_NONE, variant);
    }
    return s;
}

/* ---- rope -------------------------------------------------------------------------------- */

void fdy_rope_base(int64_t rot_dims, float theta, double *base) {
    for (int64_t i = 0; i < rot_dims / 2; i++) {
        base[i] = pow((double)theta, -2.0 * (double)i / (double)rot_dims);
    }
}

void fdy_rope_table(const int32_t *positions, int64_t M, int64_t rot_dims, const double *base,
                    const float *freq_factors, double *cs) {
    const int64_t half = rot_dims / 2;
    for (int64_t m = 0; m < M; m++) {
        const double pos = (double)positions[m];
        double *c = cs + m * 2 * half;
        for (int64_t i = 0; i < half; i++) {
            double a = pos * base[i];
            if (freq_factors) {
                a /= (double)freq_factors[i];
            }
            c[2 * i] = cos(a);
            c[2 * i + 1] = sin(a);
        }
    }
}

void fdy_rope_apply(const float *x, int64_t M, int64_t H, int64_t D, int64_t rot_dims,
                    const double *cs, int neox, float *out) {
    const int64_t half = rot_dims / 2;
    for (int64_t m = 0; m < M; m++) {
        const double *cm = cs + m * 2 * half;
        for (int64_t h = 0; h < H; h++) {
            const float *xr = x + (m * H + h) * D;
            float *o = out + (m * H + h) * D;
            for (int64_t i = 0; i < half; i++) {
                int64_t i0 = neox ? i : 2 * i;
                int64_t i1 = neox ? i + half : 2 * i + 1;
                double a = xr[i0], b = xr[i1];
                double c = cm[2 * i], s = cm[2 * i + 1];
                o[i0] = (float)(a * c - b * s);
                o[i1] = (float)(a * s + b * c);
            }
            if (o != xr) {
                for (int64_t d = rot_dims; d < D; d++) {
                    o[d] = xr[d];
                }
            }
        }
    }
}

fdy_status fdy_rope(const float *x, int64_t M, int64_t H, int64_t D, const int32_t *positions,
                    int64_t rot_dims, float theta, const float *freq_factors, int neox,
                    float *out) {
    CHECK(x && out && positions, "rope: missing argument");
    CHECK(M > 0 && H > 0 && D > 0, "rope: shape (%lld, %lld, %lld) must be positive",
          (long long)M, (long long)H, (long long)D);
    CHECK(rot_dims > 0 && rot_dims <= D && rot_dims % 2 == 0,
          "rope: rot_dims %lld must be even and in (0, %lld]", (long long)rot_dims,
          (long long)D);
    CHECK(theta > 0.0f, "rope: theta must be positive");
    const int64_t half = rot_dims / 2;
    fdy_status s;
    double *base = (double *)THREAD_BUF(rope, (size_t)half * 3 * sizeof(double), &s);
    if (!base) {
        return s;
    }
    double *cs = base + half;
    fdy_rope_base(rot_dims, theta, base);
    for (int64_t m = 0; m < M; m++) { /* one position at a time: no table of M rows */
        fdy_rope_table(positions + m, 1, rot_dims, base, freq_factors, cs);
        fdy_rope_apply(x + m * H * D, 1, H, D, rot_dims, cs, neox, out + m * H * D);
    }
    return FDY_OK;
}

/* ---- attention --------------------------------------------------------------------------- */

/* One task is a group of g query heads of one token that share a kv head (GQA): the scores of
 * all g heads are computed in one pass over the K rows and the weighted sums in one pass over
 * the V rows.  Every head's arithmetic is the same whatever g is (scores: one dot of length D
 * each; softmax in float; output accumulated over positions in order), so decode and prefill
 * rows agree and the task split is free to follow the thread count. */
typedef struct attn_ctx {
    const float *q, *k, *v;
    float *out;
    int64_t M, H, D, Hkv, start_pos;
    int64_t ld, hs;       /* cache strides (floats) between positions and between kv heads */
    int64_t g;            /* query heads per task: H / Hkv */
    float scale;
    int simd;             /* 2: the AVX-512 kernels, 1: AVX2 + FMA, 0: portable */
} attn_ctx;

/* scores -> probabilities in place, per head: s[i*n + j] for i < g, j < n */
static void attn_softmax(float *s, int64_t g, int64_t n) {
    for (int64_t i = 0; i < g; i++) {
        float *si = s + i * n;
        float mx = -INFINITY;
        for (int64_t j = 0; j < n; j++) {
            mx = si[j] > mx ? si[j] : mx;
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < n; j++) {
            si[j] = expf(si[j] - mx);
            sum += si[j];
        }
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j < n; j++) {
            si[j] *= inv;
        }
    }
}

static void attn_group_portable(const attn_ctx *c, const float *q, int64_t hk, int64_t n,
                                float *s, float *o) {
    const int64_t D = c->D, g = c->g, ld = c->ld;
    for (int64_t j = 0; j < n; j++) {
        const float *kr = c->k + j * ld + hk * c->hs;
        for (int64_t i = 0; i < g; i++) {
            const float *qi = q + i * D;
            float acc[8] = {0};
            int64_t d = 0;
            for (; d + 8 <= D; d += 8) {
                for (int e = 0; e < 8; e++) {
                    acc[e] += qi[d + e] * kr[d + e];
                }
            }
            float dot = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
            for (; d < D; d++) {
                dot += qi[d] * kr[d];
            }
            s[i * n + j] = dot * c->scale;
        }
    }
    attn_softmax(s, g, n);
    float *acc_base = s + g * n; /* private sums, as in the AVX-512 kernel */
    for (int64_t d = 0; d < g * D; d++) {
        acc_base[d] = 0.0f;
    }
    for (int64_t j = 0; j < n; j++) {
        const float *vr = c->v + j * ld + hk * c->hs;
        for (int64_t i = 0; i < g; i++) {
            const float p = s[i * n + j];
            float *oi = acc_base + i * D;
            for (int64_t d = 0; d < D; d++) {
                oi[d] += p * vr[d];
            }
        }
    }
    memcpy(o, acc_base, (size_t)(g * D) * sizeof(float));
}

#if defined(__x86_64__)
#include <immintrin.h>

/* the weighted sums of the AVX-512 kernel for head_dim 16 * FULL, HC heads at a time in
 * registers (the same fused multiply-adds in the same order as the general loop) */
#define FDY_ATTN_PV(FULL, HC)                                                                 \
    __attribute__((target("avx512f"), always_inline)) static inline void attn_pv_##FULL(      \
        const attn_ctx *c, int64_t hk, int64_t n, const float *s, float *o) {                \
        const int64_t D = 16 * FULL, g = c->g, ld = c->ld;                                   \
        for (int64_t i0 = 0; i0 < g; i0 += HC) {                                             \
            const int64_t hc = g - i0 < HC ? g - i0 : HC;                                    \
            __m512 acc[HC][FULL];                                                            \
            _Pragma("GCC unroll 16") for (int ii = 0; ii < HC; ii++) {                       \
                _Pragma("GCC unroll 16") for (int b = 0; b < FULL; b++) {                    \
                    acc[ii][b] = _mm512_setzero_ps();                                        \
                }                                                                            \
            }                                                                                \
            for (int64_t j = 0; j < n; j++) {                                                \
                const float *vr = c->v + j * ld + hk * c->hs;                                \
                if (j + 8 < n) {                                                             \
                    _Pragma("GCC unroll 16") for (int b = 0; b < FULL; b++) {                \
                        _mm_prefetch((const char *)(vr + 8 * ld + 16 * b), _MM_HINT_T0);     \
                    }                                                                        \
                }                                                                            \
                __m512 v[FULL];                                                              \
                _Pragma("GCC unroll 16") for (int b = 0; b < FULL; b++) {                    \
                    v[b] = _mm512_loadu_ps(vr + 16 * b);                                     \
                }                                                                            \
                _Pragma("GCC unroll 16") for (int ii = 0; ii < HC; ii++) {                   \
                    if (ii < hc) {                                                           \
                        const __m512 p = _mm512_set1_ps(s[(i0 + ii) * n + j]);               \
                        _Pragma("GCC unroll 16") for (int b = 0; b < FULL; b++) {            \
                            acc[ii][b] = _mm512_fmadd_ps(p, v[b], acc[ii][b]);               \
                        }                                                                    \
                    }                                                                        \
                }                                                                            \
            }                                                                                \
            _Pragma("GCC unroll 16") for (int ii = 0; ii < HC; ii++) {                       \
                if (ii < hc) {                                                               \
                    _Pragma("GCC unroll 16") for (int b = 0; b < FULL; b++) {                \
                        _mm512_storeu_ps(o + (i0 + ii) * D + 16 * b, acc[ii][b]);            \
                    }                                                                        \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }
FDY_ATTN_PV(4, 4)
FDY_ATTN_PV(8, 2)

__attribute__((target("avx512f"))) static void attn_group_avx512(const attn_ctx *c,
                                                                 const float *q, int64_t hk,
                                                                 int64_t n, float *s, float *o) {
    const int64_t D = c->D, g = c->g, ld = c->ld;
    const int64_t full = D / 16;
    const __mmask16 tm = (__mmask16)((1u << (D % 16)) - 1u);
    const int64_t pf = 8; /* rows ahead: the cache rows of one kv head are strided */
    for (int64_t j = 0; j < n; j++) {
        const float *kr = c->k + j * ld + hk * c->hs;
        if (j + pf < n) {
            for (int64_t d = 0; d < D; d += 16) {
                _mm_prefetch((const char *)(kr + pf * ld + d), _MM_HINT_T0);
            }
        }
        for (int64_t i = 0; i < g; i++) {
            const float *qi = q + i * D;
            __m512 acc = _mm512_setzero_ps();
            for (int64_t b = 0; b < full; b++) {
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(qi + 16 * b), _mm512_loadu_ps(kr + 16 * b),
                                      acc);
            }
            if (tm) {
                acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tm, qi + 16 * full),
                                      _mm512_maskz_loadu_ps(tm, kr + 16 * full), acc);
            }
            s[i * n + j] = _mm512_reduce_add_ps(acc) * c->scale;
        }
    }
    attn_softmax(s, g, n);
    if (D == 64) {
        attn_pv_4(c, hk, n, s, o);
        return;
    }
    if (D == 128) {
        attn_pv_8(c, hk, n, s, o);
        return;
    }
    /* the sums accumulate in the thread's scratch (g rows of D), not in the output rows that
     * other threads' tasks share cache lines with */
    float *acc_base = s + g * n;
    for (int64_t d = 0; d < g * D; d++) {
        acc_base[d] = 0.0f;
    }
    for (int64_t j = 0; j < n; j++) {
        const float *vr = c->v + j * ld + hk * c->hs;
        if (j + pf < n) {
            for (int64_t d = 0; d < D; d += 16) {
                _mm_prefetch((const char *)(vr + pf * ld + d), _MM_HINT_T0);
            }
        }
        for (int64_t i = 0; i < g; i++) {
            const __m512 p = _mm512_set1_ps(s[i * n + j]);
            float *oi = acc_base + i * D;
            for (int64_t b = 0; b < full; b++) {
                _mm512_storeu_ps(oi + 16 * b, _mm512_fmadd_ps(p, _mm512_loadu_ps(vr + 16 * b),
                                                              _mm512_loadu_ps(oi + 16 * b)));
            }
            if (tm) {
                _mm512_mask_storeu_ps(
                    oi + 16 * full, tm,
                    _mm512_fmadd_ps(p, _mm512_maskz_loadu_ps(tm, vr + 16 * full),
                                    _mm512_maskz_loadu_ps(tm, oi + 16 * full)));
            }
        }
    }
    memcpy(o, acc_base, (size_t)(g * D) * sizeof(float));
}

/* AVX2 + FMA: the AVX-512 kernel's structure in 8-float vectors (dots of length D with a
 * masked tail; the weighted sums 64 columns at a time, one head at a time, in registers) */
#define FDY_ATTN_AVX2 __attribute__((target("avx2,fma")))

FDY_ATTN_AVX2 static inline __m256i attn_tail_mask8(int64_t r) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

FDY_ATTN_AVX2 static inline float attn_hsum8(__m256 v) {
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

FDY_ATTN_AVX2 static void attn_group_avx2(const attn_ctx *c, const float *q, int64_t hk,
                                          int64_t n, float *s, float *o) {
    const int64_t D = c->D, g = c->g, ld = c->ld;
    const int64_t full = D / 8;
    const __m256i tm = attn_tail_mask8(D % 8);
    for (int64_t j = 0; j < n; j++) {
        const float *kr = c->k + j * ld + hk * c->hs;
        for (int64_t i = 0; i < g; i++) {
            const float *qi = q + i * D;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0;
            int64_t b = 0;
            for (; b + 2 <= full; b += 2) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qi + 8 * b), _mm256_loadu_ps(kr + 8 * b), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qi + 8 * b + 8),
                                     _mm256_loadu_ps(kr + 8 * b + 8), a1);
            }
            if (b < full) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qi + 8 * b), _mm256_loadu_ps(kr + 8 * b), a0);
            }
            if (D % 8) {
                a1 = _mm256_fmadd_ps(_mm256_maskload_ps(qi + 8 * full, tm),
                                     _mm256_maskload_ps(kr + 8 * full, tm), a1);
            }
            s[i * n + j] = attn_hsum8(_mm256_add_ps(a0, a1)) * c->scale;
        }
    }
    attn_softmax(s, g, n);
    /* columns c0 .. c0 + 63 of one head: 8 accumulators over the positions in order */
    for (int64_t i = 0; i < g; i++) {
        const float *si = s + i * n;
        float *oi = o + i * D;
        for (int64_t c0 = 0; c0 < D; c0 += 64) {
            const int64_t w = D - c0 < 64 ? D - c0 : 64;
            const int64_t nf = w / 8;
            const __m256i cm = attn_tail_mask8(w % 8);
            __m256 acc[9];
            for (int b = 0; b < 9; b++) {
                acc[b] = _mm256_setzero_ps();
            }
            if (nf == 8) {
                for (int64_t j = 0; j < n; j++) {
                    const float *vr = c->v + j * ld + hk * c->hs + c0;
                    const __m256 p = _mm256_set1_ps(si[j]);
#pragma GCC unroll 8
                    for (int b = 0; b < 8; b++) {
                        acc[b] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 8 * b), acc[b]);
                    }
                }
            } else {
                for (int64_t j = 0; j < n; j++) {
                    const float *vr = c->v + j * ld + hk * c->hs + c0;
                    const __m256 p = _mm256_set1_ps(si[j]);
                    for (int64_t b = 0; b < nf; b++) {
                        acc[b] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 8 * b), acc[b]);
                    }
                    if (w % 8) {
                        acc[nf] = _mm256_fmadd_ps(p, _mm256_maskload_ps(vr + 8 * nf, cm), acc[nf]);
                    }
                }
            }
            for (int64_t b = 0; b < nf; b++) {
                _mm256_storeu_ps(oi + c0 + 8 * b, acc[b]);
            }
            if (w % 8) {
                _mm256_maskstore_ps(oi + c0 + 8 * nf, cm, acc[nf]);
            }
        }
    }
}
#endif

static void attn_task(void *vctx, int64_t task, int thread) {
    const attn_ctx *c = (const attn_ctx *)vctx;
    const int64_t per_tok = c->H / c->g;
    const int64_t m = task / per_tok, h0 = task % per_tok * c->g;
    const int64_t hk = h0 / (c->H / c->Hkv);
    const int64_t n = c->start_pos + m + 1; /* causal: positions 0 .. start_pos + m */
    const float *q = c->q + (m * c->H + h0) * c->D;
    float *o = c->out + (m * c->H + h0) * c->D;
    float *s = (float *)fdy_scratch(thread);
#if defined(__x86_64__)
    if (c->simd == 2) {
        attn_group_avx512(c, q, hk, n, s, o);
        return;
    }
    if (c->simd == 1) {
        attn_group_avx2(c, q, hk, n, s, o);
        return;
    }
#endif
    attn_group_portable(c, q, hk, n, s, o);
}

fdy_status fdy_attention_strided(const float *q, int64_t M, int64_t H, int64_t D,
                                 const float *k_cache, const float *v_cache, int64_t Hkv,
                                 int64_t start_pos, float scale, float *out, int64_t pos_stride,
                                 int64_t head_stride) {
    /* one task per GQA group: K and V are read once per group (the cache is read once per
     * token, the bulk of attention's cost).  Decode with fewer groups than threads leaves
     * threads idle, which costs less than splitting a group: every part of a split group
     * would have to compute (and read K for) all of its scores. */
    const int64_t G = H / Hkv;
    attn_ctx c = {q, k_cache, v_cache, out, M, H, D, Hkv, start_pos, pos_stride, head_stride,
                  G, scale, 0};
#if defined(__x86_64__)
    {
        const uint32_t f = fdy_cpu_features_enabled();
        c.simd = (f & FDY_CPU_AVX512) ? 2
                 : (f & (FDY_CPU_AVX2 | FDY_CPU_FMA)) == (FDY_CPU_AVX2 | FDY_CPU_FMA) ? 1 : 0;
    }
#endif
    fdy_status s = fdy_scratch_reserve((size_t)(G * (start_pos + M + D) + 16) * sizeof(float));
    if (s) {
        return s;
    }
    fdy_parallel(attn_task, &c, M * Hkv);
    return FDY_OK;
}

fdy_status fdy_attention(const float *q, int64_t M, int64_t H, int64_t D, const float *k_cache,
                         const float *v_cache, int64_t C, int64_t Hkv, int64_t start_pos,
                         float scale, float *out) {
    CHECK(q && k_cache && v_cache && out, "attention: missing argument");
    CHECK(M > 0 && H > 0 && D > 0 && Hkv > 0, "attention: shapes must be positive");
    CHECK(H % Hkv == 0, "attention: %lld heads is not a multiple of %lld kv heads",
          (long long)H, (long long)Hkv);
    CHECK(start_pos >= 0, "attention: start_pos must be >= 0");
    CHECK(start_pos + M <= C, "attention: positions up to %lld do not fit a cache of %lld",
          (long long)(start_pos + M), (long long)C);
    return fdy_attention_strided(q, M, H, D, k_cache, v_cache, Hkv, start_pos, scale, out,
                                 Hkv * D, D);
}

/* ---- elementwise ------------------------------------------------------------------------- */

fdy_status fdy_softmax(const float *x, int64_t M, int64_t N, float *out) {
    CHECK(x && out, "softmax: missing argument");
    CHECK(M > 0 && N > 0, "softmax: shape must be positive");
    for (int64_t m = 0; m < M; m++) {
        const float *r = x + m * N;
        float *o = out + m * N;
        float mx = -INFINITY;
        for (int64_t i = 0; i < N; i++) {
            mx = r[i] > mx ? r[i] : mx;
        }
        double sum = 0.0;
        for (int64_t i = 0; i < N; i++) {
            o[i] = expf(r[i] - mx);
            sum += o[i];
        }
        const float inv = (float)(1.0 / sum);
        for (int64_t i = 0; i < N; i++) {
            o[i] *= inv;
        }
    }
    return FDY_OK;
}

fdy_status fdy_swiglu(const float *gate, const float *up, int64_t n, float *out) {
    CHECK(gate && up && out, "swiglu: missing argument");
    CHECK(n >= 0, "swiglu: negative size");
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        out[i] = (g / (1.0f + expf(-g))) * up[i];
    }
    return FDY_OK;
}

fdy_status fdy_add(const float *a, const float *b, int64_t n, float *out) {
    CHECK(a && b && out, "add: missing argument");
    CHECK(n >= 0, "add: negative size");
    for (int64_t i = 0; i < n; i++) {
        out[i] = a[i] + b[i];
    }
    return FDY_OK;
}

fdy_status fdy_ffn(const float *x, int64_t M, const float *norm_weight, float eps,
                   const fdy_weight *w_gate, const fdy_weight *w_up, const fdy_weight *w_down,
                   float *out, int variant) {
    fdy_status s;
    if ((s = check_weight(w_gate, "ffn gate")) || (s = check_weight(w_up, "ffn up")) ||
        (s = check_weight(w_down, "ffn down"))) {
        return s;
    }
    const int64_t K = w_gate->cols, F = w_gate->rows;
    CHECK(w_up->cols == K && w_up->rows == F, "ffn: up weight shape differs from gate");
    CHECK(w_down->cols == F && w_down->rows == K,
          "ffn: down weight must be (%lld, %lld), got (%lld, %lld)", (long long)K, (long long)F,
          (long long)w_down->rows, (long long)w_down->cols);
    CHECK(M > 0, "ffn: M must be positive");
    float *g = THREAD_BUF(gate, (size_t)(M * F) * sizeof(float), &s);
    float *u = g ? THREAD_BUF(up, (size_t)(M * F) * sizeof(float), &s) : NULL;
    if (!g || !u) {
        return s;
    }
    const fdy_weight *gu[2] = {w_gate, w_up};
    float *go[2] = {g, u};
    s = fdy_rmsnorm_qkv(x, M, norm_weight, eps, 2, gu, NULL, go, variant);
    if (!s) {
        fdy_swiglu(g, u, M * F, g);
        if (out != x) {
            memcpy(out, x, (size_t)(M * K) * sizeof(float));
        }
        s = fdy_matmul(w_down, g, M, NULL, out, 1, FDY_ACT_NONE, variant);
    }
    return s;
}

fdy_status fdy_embedding(const fdy_weight *table, const int32_t *ids, int64_t M, float *out) {
    fdy_status s = check_weight(table, "embedding");
    if (s) {
        return s;
    }
    CHECK(ids && out, "embedding: missing argument");
    const int64_t rb = fdy_policy_row_bytes(table->policy, table->cols);
    for (int64_t m = 0; m < M; m++) {
        CHECK(ids[m] >= 0 && ids[m] < table->rows, "embedding: token id %d out of range [0, %lld)",
              ids[m], (long long)table->rows);
    }
    for (int64_t m = 0; m < M; m++) {
        fdy_policy_dequantize(table->policy, (const uint8_t *)table->data + ids[m] * rb,
                              out + m * table->cols, table->cols);
    }
    return FDY_OK;
}
