/* model.c - the model executor: runs a plan (a flat program of stage instructions bound to
 * weights and activation buffers) over a batch of tokens, keeps the KV cache, and copies the
 * intermediates the caller asked for.
 *
 * The plan is built from a model spec (pyfoundry/specs/<arch>.json) by the Python layer; the
 * token loop runs here, with no Python in it.  State by lifetime:
 *   plan      instructions, weight views (into the mapped file), buffer widths (immutable)
 *   buffers   activations, (M, width) each, grown when a larger batch arrives
 *   kv cache  per layer (capacity, kv_width) for K and V, grown on demand up to max_ctx
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "policy.h"

struct fdy_model {
    /* plan */
    fdy_instr *prog;           /* (n_instr) */
    int32_t n_instr;
    fdy_weight *weights;       /* (n_weights) views; norms, biases and freq factors are f32 */
    int32_t n_weights;
    int64_t *widths;           /* (n_bufs) floats per token of each buffer */
    int32_t n_bufs;
    int32_t n_layers;
    int64_t kv_width;          /* n_kv_heads * head_dim */
    int64_t max_ctx;
    int32_t logits_buf;
    /* buffers */
    float **bufs;              /* (n_bufs) each (cap_rows, width) */
    int64_t cap_rows;
    /* kv cache */
    float **k_cache, **v_cache;  /* (n_layers) each (kv_cap, kv_width) */
    int64_t kv_cap;
    int64_t n_past;            /* positions 0 .. n_past-1 hold valid K/V */
    int32_t *positions;        /* (cap_rows) */
};

static const float *wf32(const fdy_model *m, int32_t idx) {
    return idx >= 0 ? (const float *)m->weights[idx].data : NULL;
}

void fdy_model_free(fdy_model *m) {
    if (!m) {
        return;
    }
    for (int32_t i = 0; m->bufs && i < m->n_bufs; i++) {
        free(m->bufs[i]);
    }
    for (int32_t l = 0; m->k_cache && l < m->n_layers; l++) {
        free(m->k_cache[l]);
        free(m->v_cache[l]);
    }
    free(m->bufs);
    free(m->k_cache);
    free(m->v_cache);
    free(m->positions);
    free(m->prog);
    free(m->weights);
    free(m->widths);
    free(m);
}

#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (!(cond)) {                                     \
            return fdy_fail(FDY_ERR_INVALID, __VA_ARGS__); \
        }                                                  \
    } while (0)

static fdy_status check_instr(const fdy_model *m, const fdy_instr *in, int32_t i) {
    const int32_t nb = m->n_bufs, nw = m->n_weights;
#define BUF_OK(b) ((b) >= 0 && (b) < nb)
#define W_OK(w) ((w) >= 0 && (w) < nw)
#define WOPT_OK(w) ((w) == -1 || W_OK(w))
    CHECK(in->layer >= -1 && in->layer < m->n_layers, "plan[%d]: bad layer %d", i, in->layer);
    switch (in->op) {
    case FDY_I_EMBED:
        CHECK(BUF_OK(in->out) && W_OK(in->weight), "plan[%d]: bad embedding operands", i);
        CHECK(m->weights[in->weight].cols == m->widths[in->out],
              "plan[%d]: embedding width mismatch", i);
        break;
    case FDY_I_RMSNORM:
        CHECK(BUF_OK(in->in0) && BUF_OK(in->out) && W_OK(in->weight),
              "plan[%d]: bad rmsnorm operands", i);
        CHECK(m->widths[in->in0] == m->widths[in->out] &&
                  m->weights[in->weight].cols == m->widths[in->in0] &&
                  m->weights[in->weight].policy->type == FDY_TYPE_f32,
              "plan[%d]: rmsnorm shapes", i);
        break;
    case FDY_I_MATMUL:
        CHECK(BUF_OK(in->in0) && BUF_OK(in->out) && W_OK(in->weight) && WOPT_OK(in->bias),
              "plan[%d]: bad matmul operands", i);
        CHECK(in->in0 != in->out, "plan[%d]: matmul input and output must differ", i);
        CHECK(m->weights[in->weight].cols == m->widths[in->in0] &&
                  m->weights[in->weight].rows == m->widths[in->out],
              "plan[%d]: matmul weight (%lld, %lld) does not map width %lld to %lld", i,
              (long long)m->weights[in->weight].rows, (long long)m->weights[in->weight].cols,
              (long long)m->widths[in->in0], (long long)m->widths[in->out]);
        CHECK(in->bias == -1 || (m->weights[in->bias].cols == m->widths[in->out] &&
                                 m->weights[in->bias].policy->type == FDY_TYPE_f32),
              "plan[%d]: bias shape", i);
        break;
    case FDY_I_ROPE:
        CHECK(BUF_OK(in->in0) && WOPT_OK(in->freq), "plan[%d]: bad rope operands", i);
        CHECK(in->n_heads > 0 && in->head_dim > 0 &&
                  (int64_t)in->n_heads * in->head_dim == m->widths[in->in0],
              "plan[%d]: rope heads x head_dim != width", i);
        CHECK(in->rot_dims > 0 && in->rot_dims <= in->head_dim && in->rot_dims % 2 == 0,
              "plan[%d]: rope dims", i);
        CHECK(in->freq == -1 || (m->weights[in->freq].cols >= in->rot_dims / 2 &&
                                 m->weights[in->freq].policy->type == FDY_TYPE_f32),
              "plan[%d]: rope frequency factors", i);
        break;
    case FDY_I_ATTN:
        CHECK(BUF_OK(in->in0) && BUF_OK(in->in1) && BUF_OK(in->in2) && BUF_OK(in->out),
              "plan[%d]: bad attention operands", i);
        CHECK(in->layer >= 0, "plan[%d]: attention needs a layer", i);
        CHECK(in->n_heads > 0 && in->n_kv_heads > 0 && in->n_heads % in->n_kv_heads == 0 &&
                  in->head_dim > 0,
              "plan[%d]: attention heads", i);
        CHECK((int64_t)in->n_heads * in->head_dim == m->widths[in->in0] &&
                  (int64_t)in->n_heads * in->head_dim == m->widths[in->out] &&
                  (int64_t)in->n_kv_heads * in->head_dim == m->kv_width &&
                  m->widths[in->in1] == m->kv_width && m->widths[in->in2] == m->kv_width,
              "plan[%d]: attention widths", i);
        break;
    case FDY_I_SWIGLU:
    case FDY_I_ADD:
        CHECK(BUF_OK(in->in0) && BUF_OK(in->in1) && BUF_OK(in->out),
              "plan[%d]: bad operands", i);
        CHECK(m->widths[in->in0] == m->widths[in->out] &&
                  m->widths[in->in1] == m->widths[in->out],
              "plan[%d]: elementwise widths differ", i);
        break;
    default:
        return fdy_fail(FDY_ERR_INVALID, "plan[%d]: unknown op %d", i, in->op);
    }
    return FDY_OK;
#undef BUF_OK
#undef W_OK
#undef WOPT_OK
}

fdy_status fdy_model_create(const fdy_instr *prog, int32_t n_instr, const fdy_weight *weights,
                            int32_t n_weights, const int64_t *widths, int32_t n_bufs,
                            int32_t n_layers, int64_t kv_width, int64_t max_ctx,
                            int32_t logits_buf, fdy_model **out) {
    CHECK(out, "fdy_model_create: out is NULL");
    *out = NULL;
    CHECK(prog && n_instr > 0 && weights && n_weights > 0 && widths && n_bufs > 0,
          "fdy_model_create: empty plan");
    CHECK(n_layers >= 0 && kv_width > 0 && max_ctx > 0, "fdy_model_create: bad dimensions");
    CHECK(logits_buf >= 0 && logits_buf < n_bufs, "fdy_model_create: bad logits buffer");
    for (int32_t i = 0; i < n_bufs; i++) {
        CHECK(widths[i] > 0 && widths[i] < ((int64_t)1 << 40), "buffer %d: bad width", i);
    }
    for (int32_t i = 0; i < n_weights; i++) {
        CHECK(weights[i].policy && weights[i].data && weights[i].rows > 0 && weights[i].cols > 0 &&
                  weights[i].cols % weights[i].policy->block_elems == 0,
              "weight %d: bad view", i);
    }
    fdy_model *m = (fdy_model *)calloc(1, sizeof *m);
    if (!m) {
        return fdy_fail(FDY_ERR_NOMEM, "out of memory");
    }
    m->prog = (fdy_instr *)malloc((size_t)n_instr * sizeof *prog);
    m->weights = (fdy_weight *)malloc((size_t)n_weights * sizeof *weights);
    m->widths = (int64_t *)malloc((size_t)n_bufs * sizeof *widths);
    m->bufs = (float **)calloc((size_t)n_bufs, sizeof(float *));
    m->k_cache = (float **)calloc((size_t)(n_layers ? n_layers : 1), sizeof(float *));
    m->v_cache = (float **)calloc((size_t)(n_layers ? n_layers : 1), sizeof(float *));
    if (!m->prog || !m->weights || !m->widths || !m->bufs || !m->k_cache || !m->v_cache) {
        fdy_model_free(m);
        return fdy_fail(FDY_ERR_NOMEM, "out of memory");
    }
    memcpy(m->prog, prog, (size_t)n_instr * sizeof *prog);
    memcpy(m->weights, weights, (size_t)n_weights * sizeof *weights);
    memcpy(m->widths, widths, (size_t)n_bufs * sizeof *widths);
    m->n_instr = n_instr;
    m->n_weights = n_weights;
    m->n_bufs = n_bufs;
    m->n_layers = n_layers;
    m->kv_width = kv_width;
    m->max_ctx = max_ctx;
    m->logits_buf = logits_buf;
    for (int32_t i = 0; i < n_instr; i++) {
        fdy_status s = check_instr(m, &m->prog[i], i);
        if (s) {
            fdy_model_free(m);
            return s;
        }
    }
    *out = m;
    return FDY_OK;
}

int64_t fdy_model_n_past(const fdy_model *m) { return m->n_past; }
int64_t fdy_model_kv_capacity(const fdy_model *m) { return m->kv_cap; }
int64_t fdy_model_max_context(const fdy_model *m) { return m->max_ctx; }

size_t fdy_model_kv_bytes(const fdy_model *m) {
    return (size_t)m->kv_cap * (size_t)m->kv_width * sizeof(float) * 2u * (size_t)m->n_layers;
}

static fdy_status grow_rows(fdy_model *m, int64_t M) {
    if (M <= m->cap_rows) {
        return FDY_OK;
    }
    int64_t cap = m->cap_rows ? m->cap_rows : 1;
    while (cap < M) {
        cap *= 2;
    }
    for (int32_t i = 0; i < m->n_bufs; i++) {
        float *b = (float *)realloc(m->bufs[i], (size_t)(cap * m->widths[i]) * sizeof(float));
        if (!b) {
            return fdy_fail(FDY_ERR_NOMEM, "cannot grow activation buffers to %lld rows",
                            (long long)cap);
        }
        m->bufs[i] = b;
    }
    int32_t *p = (int32_t *)realloc(m->positions, (size_t)cap * sizeof(int32_t));
    if (!p) {
        return fdy_fail(FDY_ERR_NOMEM, "out of memory");
    }
    m->positions = p;
    m->cap_rows = cap;
    return FDY_OK;
}

/* the KV cache grows on demand (doubling) up to the model's context length */
static fdy_status grow_kv(fdy_model *m, int64_t need) {
    if (need <= m->kv_cap) {
        return FDY_OK;
    }
    int64_t cap = m->kv_cap ? m->kv_cap : 64;
    while (cap < need) {
        cap *= 2;
    }
    if (cap > m->max_ctx) {
        cap = m->max_ctx;
    }
    for (int32_t l = 0; l < m->n_layers; l++) {
        size_t bytes = (size_t)(cap * m->kv_width) * sizeof(float);
        float *k = (float *)realloc(m->k_cache[l], bytes);
        if (!k) {
            return fdy_fail(FDY_ERR_NOMEM, "cannot grow the KV cache to %lld positions",
                            (long long)cap);
        }
        m->k_cache[l] = k;
        float *v = (float *)realloc(m->v_cache[l], bytes);
        if (!v) {
            return fdy_fail(FDY_ERR_NOMEM, "cannot grow the KV cache to %lld positions",
                            (long long)cap);
        }
        m->v_cache[l] = v;
    }
    m->kv_cap = cap;
    return FDY_OK;
}

fdy_status fdy_model_forward(fdy_model *m, const int32_t *tokens, int64_t M, int64_t start_pos,
                             int variant, float *const *captures, int32_t n_captures,
                             int last_only, float *logits) {
    CHECK(m && tokens && logits, "fdy_model_forward: missing argument");
    CHECK(M > 0, "forward: no tokens");
    CHECK(start_pos >= 0 && start_pos <= m->n_past,
          "forward: start_pos %lld is beyond the %lld cached positions", (long long)start_pos,
          (long long)m->n_past);
    CHECK(start_pos + M <= m->max_ctx,
          "forward: positions up to %lld exceed the context length %lld",
          (long long)(start_pos + M), (long long)m->max_ctx);
    CHECK(variant == FDY_VARIANT_F32 || variant == FDY_VARIANT_Q8, "forward: bad variant");
    const int64_t vocab = m->widths[m->logits_buf];
    for (int64_t t = 0; t < M; t++) {
        CHECK(tokens[t] >= 0 && (int64_t)tokens[t] < vocab,
              "forward: token %d at index %lld is outside the vocabulary [0, %lld)", tokens[t],
              (long long)t, (long long)vocab);
    }
    fdy_status s;
    if ((s = grow_rows(m, M)) || (s = grow_kv(m, start_pos + M))) {
        return s;
    }
    for (int64_t t = 0; t < M; t++) {
        m->positions[t] = (int32_t)(start_pos + t);
    }
    /* positions start_pos.. are being rewritten: the cache is valid up to start_pos */
    m->n_past = start_pos;
    for (int32_t i = 0; i < m->n_instr; i++) {
        const fdy_instr *in = &m->prog[i];
        /* "tail" instructions (final norm, logits) run on the last row only when asked */
        const int tail = last_only && in->tail;
        const int64_t rows = tail ? 1 : M;
        const int64_t r0 = tail ? M - 1 : 0;
#define ROWS(b) (m->bufs[b] + r0 * m->widths[b])
        switch (in->op) {
        case FDY_I_EMBED:
            s = fdy_embedding(&m->weights[in->weight], tokens + r0, rows, ROWS(in->out));
            break;
        case FDY_I_RMSNORM:
            s = fdy_rmsnorm(ROWS(in->in0), rows, m->widths[in->in0], wf32(m, in->weight), in->eps,
                            ROWS(in->out));
            break;
        case FDY_I_MATMUL:
            s = fdy_matmul(&m->weights[in->weight], ROWS(in->in0), rows, wf32(m, in->bias),
                           ROWS(in->out), in->accumulate, in->act, variant);
            break;
        case FDY_I_ROPE:
            s = fdy_rope(ROWS(in->in0), rows, in->n_heads, in->head_dim, m->positions + r0,
                         in->rot_dims, in->theta, wf32(m, in->freq), in->neox, ROWS(in->in0));
            break;
        case FDY_I_ATTN: {
            float *kc = m->k_cache[in->layer], *vc = m->v_cache[in->layer];
            memcpy(kc + start_pos * m->kv_width, m->bufs[in->in1],
                   (size_t)(M * m->kv_width) * sizeof(float));
            memcpy(vc + start_pos * m->kv_width, m->bufs[in->in2],
                   (size_t)(M * m->kv_width) * sizeof(float));
            s = fdy_attention(m->bufs[in->in0], M, in->n_heads, in->head_dim, kc, vc, m->kv_cap,
                              in->n_kv_heads, start_pos, in->scale, m->bufs[in->out]);
            break;
        }
        case FDY_I_SWIGLU:
            s = fdy_swiglu(ROWS(in->in0), ROWS(in->in1), rows * m->widths[in->out],
                           ROWS(in->out));
            break;
        case FDY_I_ADD:
            s = fdy_add(ROWS(in->in0), ROWS(in->in1), rows * m->widths[in->out], ROWS(in->out));
            break;
        default:
            s = fdy_fail(FDY_ERR_INVALID, "plan[%d]: unknown op", i);
        }
        if (s) {
            return s;
        }
        if (in->capture >= 0 && in->capture < n_captures && captures && captures[in->capture]) {
            int32_t b = in->op == FDY_I_ROPE ? in->in0 : in->out;
            memcpy(captures[in->capture], ROWS(b), (size_t)(rows * m->widths[b]) * sizeof(float));
        }
#undef ROWS
    }
    m->n_past = start_pos + M;
    const int64_t out_rows = last_only ? 1 : M;
    memcpy(logits, m->bufs[m->logits_buf] + (last_only ? (M - 1) * vocab : 0),
           (size_t)(out_rows * vocab) * sizeof(float));
    return FDY_OK;
}

fdy_status fdy_model_truncate(fdy_model *m, int64_t n_past) {
    CHECK(m, "fdy_model_truncate: NULL model");
    CHECK(n_past >= 0 && n_past <= m->n_past, "truncate: %lld is outside [0, %lld]",
          (long long)n_past, (long long)m->n_past);
    m->n_past = n_past;
    return FDY_OK;
}
