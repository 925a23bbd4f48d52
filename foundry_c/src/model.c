/* model.c - the model executor: runs a plan (a flat program of stage instructions bound to
 * weights and activation buffers) over a batch of tokens, keeps the KV cache, and copies the
 * intermediates the caller asked for.
 *
 * The plan is built from a model spec (pyfoundry/specs/<arch>.json) by the Python layer; the
 * token loop runs here, with no Python in it.  State by lifetime:
 *   plan      instructions, weight views (into the mapped file), buffer widths (immutable)
 *   buffers   activations, (M, width) each, grown when a larger batch arrives
 *   kv cache  per layer (n_kv_heads, capacity, head_dim) for K and V -- head-major, so that
 *             attention streams one kv head's rows contiguously -- grown on demand up to max_ctx
 *
 * Two ways through the plan.  With captures or several tokens, instruction by instruction.
 * Decoding one token without captures, by a schedule fused at creation: runs of matmuls over
 * one input become one parallel region sharing one quantized copy of the input (Q/K/V,
 * gate/up), a swiglu after gate/up is applied per row inside that region, and an add of a
 * matmul's output is folded into its store.  Fused steps keep each stage's arithmetic, so
 * both ways give the same numbers.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"
#include "policy.h"
#include "cpu/fused.h"

/* a step of the fused schedule: one instruction, or a matmul group covering the
 * instructions first .. first + count - 1 */
typedef struct fdy_step {
    int32_t first, count;
    int32_t n_mm;                      /* 0: a single instruction */
    int32_t mm[FDY_MM_MAX_PARTS];      /* the group's matmul instructions */
    int32_t swiglu;                    /* swiglu instruction over mm[0], mm[1], or -1 */
    int32_t add;                       /* add instruction folded into mm[0], or -1 */
} fdy_step;

#define FDY_MAX_ROPE_CFG 8

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
    int64_t kv_heads, kv_dim;  /* the cache layout: kv_heads blocks of (kv_cap, kv_dim) */
    int64_t max_ctx;
    int32_t logits_buf;
    fdy_step *steps;           /* (n_steps) the fused schedule of one-token calls */
    int32_t n_steps;
    /* rope: distinct (rot_dims, theta, freq) of the plan, base frequencies computed once */
    int32_t n_rope;
    int32_t *rope_cfg;         /* (n_instr) config of each rope instruction, -1 otherwise */
    int64_t rope_dims[FDY_MAX_ROPE_CFG];
    float rope_theta[FDY_MAX_ROPE_CFG];
    int32_t rope_freq[FDY_MAX_ROPE_CFG];
    double *rope_base[FDY_MAX_ROPE_CFG];
    fdy_buf rope_cs[FDY_MAX_ROPE_CFG]; /* (M, rot_dims / 2, 2) cos / sin of this call */
    fdy_mm_ws ws;              /* quantized activations of the matmul groups */
    int packed_done;           /* the q8 variant's interleaved weight copies are made */
    int amx_done;              /* the f32 variant's AMX weight copies are made */
    size_t packed_bytes;       /* the bytes of both (fdy_weight_pack_size, _amx_size) */
    uint8_t *packed_arena;     /* the interleaved copies (make_copies) */
    uint8_t *amx_arena;        /* the AMX copies */
    uint8_t *weight_used;      /* (n_weights) 1: a matmul instruction reads the weight */
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
    for (int32_t i = 0; i < m->n_rope; i++) {
        free(m->rope_base[i]);
        fdy_buf_free(&m->rope_cs[i]);
    }
    fdy_mm_ws_free(&m->ws);
    free(m->packed_arena);
    free(m->amx_arena);
    free(m->weight_used);
    free(m->steps);
    free(m->rope_cfg);
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

/* may matmul instruction j join a group whose first matmul is i and whose outputs so far are
 * those of i .. j-1 */
static int joins_group(const fdy_model *m, int32_t i, int32_t j) {
    const fdy_instr *a = &m->prog[i], *b = &m->prog[j];
    if (b->op != FDY_I_MATMUL || b->in0 != a->in0 || b->tail != a->tail) {
        return 0;
    }
    for (int32_t k = i; k < j; k++) {
        if (m->prog[k].out == b->out) {
            return 0;
        }
    }
    return 1;
}

static fdy_status build_schedule(fdy_model *m) {
    m->steps = (fdy_step *)calloc((size_t)m->n_instr, sizeof *m->steps);
    if (!m->steps) {
        return fdy_fail(FDY_ERR_NOMEM, "out of memory");
    }
    int32_t n = 0;
    for (int32_t i = 0; i < m->n_instr;) {
        fdy_step *st = &m->steps[n++];
        st->first = i;
        st->count = 1;
        st->swiglu = st->add = -1;
        const fdy_instr *in = &m->prog[i];
        if (in->op != FDY_I_MATMUL) {
            i++;
            continue;
        }
        st->mm[st->n_mm++] = i;
        while (st->n_mm < FDY_MM_MAX_PARTS && i + st->n_mm < m->n_instr &&
               joins_group(m, i, i + st->n_mm)) {
            st->mm[st->n_mm] = i + st->n_mm;
            st->n_mm++;
        }
        int32_t next = i + st->n_mm;
        const fdy_instr *nx = next < m->n_instr ? &m->prog[next] : NULL;
        if (nx && nx->tail == in->tail && st->n_mm == 2 && nx->op == FDY_I_SWIGLU &&
            nx->in0 == m->prog[st->mm[0]].out && nx->in1 == m->prog[st->mm[1]].out &&
            nx->out != in->in0) {
            /* gate, up -> swiglu: rows of both, then the product, per row */
            st->swiglu = next++;
        } else if (nx && nx->tail == in->tail && st->n_mm == 1 && nx->op == FDY_I_ADD &&
                   (nx->in0 == in->out) != (nx->in1 == in->out) && nx->out != in->out &&
                   nx->out != in->in0 && nx->in0 != in->in0 && nx->in1 != in->in0) {
            /* out = matmul; res_out = res_in + out in the same store */
            st->add = next++;
        }
        st->count = next - i;
        i = next;
    }
    m->n_steps = n;
    return FDY_OK;
}

/* the cache layout, the rope configurations and the fused schedule */
static fdy_status prepare(fdy_model *m) {
    m->kv_heads = 1;
    m->kv_dim = m->kv_width;
    int have_attn = 0;
    m->rope_cfg = (int32_t *)malloc((size_t)m->n_instr * sizeof(int32_t));
    if (!m->rope_cfg) {
        return fdy_fail(FDY_ERR_NOMEM, "out of memory");
    }
    for (int32_t i = 0; i < m->n_instr; i++) {
        const fdy_instr *in = &m->prog[i];
        m->rope_cfg[i] = -1;
        if (in->op == FDY_I_ATTN) {
            if (!have_attn) {
                m->kv_heads = in->n_kv_heads;
                m->kv_dim = in->head_dim;
                have_attn = 1;
            }
            CHECK(in->n_kv_heads == m->kv_heads && in->head_dim == m->kv_dim,
                  "plan[%d]: attention layers differ in kv heads or head_dim", i);
        }
        if (in->op == FDY_I_ROPE) {
            int32_t c = 0;
            while (c < m->n_rope &&
                   !(m->rope_dims[c] == in->rot_dims && m->rope_theta[c] == in->theta &&
                     m->rope_freq[c] == in->freq)) {
                c++;
            }
            if (c == m->n_rope) {
                CHECK(c < FDY_MAX_ROPE_CFG, "plan: more than %d rope configurations",
                      FDY_MAX_ROPE_CFG);
                m->rope_dims[c] = in->rot_dims;
                m->rope_theta[c] = in->theta;
                m->rope_freq[c] = in->freq;
                m->rope_base[c] = (double *)malloc((size_t)(in->rot_dims / 2) * sizeof(double));
                if (!m->rope_base[c]) {
                    return fdy_fail(FDY_ERR_NOMEM, "out of memory");
                }
                m->n_rope++;
                fdy_rope_base(in->rot_dims, in->theta, m->rope_base[c]);
            }
            m->rope_cfg[i] = c;
        }
    }
    return build_schedule(m);
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
    m->weight_used = (uint8_t *)calloc((size_t)(n_weights ? n_weights : 1), 1);
    if (!m->prog || !m->weights || !m->widths || !m->bufs || !m->k_cache || !m->v_cache ||
        !m->weight_used) {
        fdy_model_free(m);
        return fdy_fail(FDY_ERR_NOMEM, "out of memory");
    }
    memcpy(m->prog, prog, (size_t)n_instr * sizeof *prog);
    memcpy(m->weights, weights, (size_t)n_weights * sizeof *weights);
    for (int32_t i = 0; i < n_weights; i++) {
        m->weights[i].packed = NULL; /* made by the first q8 forward (make_copies) */
        m->weights[i].amx = NULL;    /* made by the first f32 decode forward */
    }
    for (int32_t i = 0; i < n_instr; i++) {
        if (prog[i].op == FDY_I_MATMUL && prog[i].weight >= 0 && prog[i].weight < n_weights) {
            m->weight_used[prog[i].weight] = 1;
        }
    }
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
    fdy_status s = prepare(m);
    if (s) {
        fdy_model_free(m);
        return s;
    }
    *out = m;
    return FDY_OK;
}

int64_t fdy_model_n_past(const fdy_model *m) { return m->n_past; }
int64_t fdy_model_kv_capacity(const fdy_model *m) { return m->kv_cap; }
int64_t fdy_model_max_context(const fdy_model *m) { return m->max_ctx; }

size_t fdy_model_packed_bytes(const fdy_model *m) { return m->packed_bytes; }

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
    /* both caches of every layer first: a failure leaves the old layout in place */
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
    /* head-major: head h moves from h * old_cap to h * cap rows (last head first) */
    const int64_t old = m->kv_cap, D = m->kv_dim;
    for (int32_t l = 0; old > 0 && l < m->n_layers; l++) {
        for (int64_t h = m->kv_heads - 1; h > 0; h--) {
            memmove(m->k_cache[l] + h * cap * D, m->k_cache[l] + h * old * D,
                    (size_t)(old * D) * sizeof(float));
            memmove(m->v_cache[l] + h * cap * D, m->v_cache[l] + h * old * D,
                    (size_t)(old * D) * sizeof(float));
        }
    }
    m->kv_cap = cap;
    return FDY_OK;
}

/* the rope tables of this call's positions */
static fdy_status rope_tables(fdy_model *m, int64_t M) {
    for (int32_t c = 0; c < m->n_rope; c++) {
        CHECK(m->rope_theta[c] > 0.0f, "rope: theta must be positive");
        const int64_t half = m->rope_dims[c] / 2;
        fdy_status s = fdy_buf_reserve(&m->rope_cs[c], (size_t)(M * half * 2) * sizeof(double));
        if (s) {
            return s;
        }
        fdy_rope_table(m->positions, M, m->rope_dims[c], m->rope_base[c],
                       wf32(m, m->rope_freq[c]), (double *)m->rope_cs[c].p);
    }
    return FDY_OK;
}

/* one instruction over rows r0 .. r0 + rows - 1 of the batch */
static fdy_status run_instr(fdy_model *m, const fdy_instr *in, int32_t i, const int32_t *tokens,
                            int64_t M, int64_t r0, int64_t rows, int64_t start_pos,
                            int variant) {
#define ROWS(b) (m->bufs[b] + r0 * m->widths[b])
    switch (in->op) {
    case FDY_I_EMBED:
        return fdy_embedding(&m->weights[in->weight], tokens + r0, rows, ROWS(in->out));
    case FDY_I_RMSNORM:
        return fdy_rmsnorm(ROWS(in->in0), rows, m->widths[in->in0], wf32(m, in->weight), in->eps,
                           ROWS(in->out));
    case FDY_I_MATMUL:
        return fdy_matmul(&m->weights[in->weight], ROWS(in->in0), rows, wf32(m, in->bias),
                          ROWS(in->out), in->accumulate, in->act, variant);
    case FDY_I_ROPE: {
        const int32_t c = m->rope_cfg[i];
        const double *cs = (const double *)m->rope_cs[c].p + r0 * (in->rot_dims / 2) * 2;
        fdy_rope_apply(ROWS(in->in0), rows, in->n_heads, in->head_dim, in->rot_dims, cs,
                       in->neox, ROWS(in->in0));
        return FDY_OK;
    }
    case FDY_I_ATTN: {
        /* attention always runs on the whole batch: its K / V rows are all needed */
        float *kc = m->k_cache[in->layer], *vc = m->v_cache[in->layer];
        const int64_t D = m->kv_dim, hs = m->kv_cap * D;
        const float *kb = m->bufs[in->in1], *vb = m->bufs[in->in2];
        for (int64_t t = 0; t < M; t++) {
            for (int64_t h = 0; h < m->kv_heads; h++) {
                memcpy(kc + h * hs + (start_pos + t) * D, kb + t * m->kv_width + h * D,
                       (size_t)D * sizeof(float));
                memcpy(vc + h * hs + (start_pos + t) * D, vb + t * m->kv_width + h * D,
                       (size_t)D * sizeof(float));
            }
        }
        return fdy_attention_strided(m->bufs[in->in0], M, in->n_heads, in->head_dim, kc, vc,
                                     in->n_kv_heads, start_pos, in->scale, m->bufs[in->out], D,
                                     hs);
    }
    case FDY_I_SWIGLU:
        return fdy_swiglu(ROWS(in->in0), ROWS(in->in1), rows * m->widths[in->out],
                          ROWS(in->out));
    case FDY_I_ADD:
        return fdy_add(ROWS(in->in0), ROWS(in->in1), rows * m->widths[in->out], ROWS(in->out));
    default:
        return fdy_fail(FDY_ERR_INVALID, "plan[%d]: unknown op", i);
    }
#undef ROWS
}

/* one token (M == 1), no captures: the fused schedule */
static fdy_status run_fused(fdy_model *m, const int32_t *tokens, int64_t start_pos,
                            int variant) {
    for (int32_t k = 0; k < m->n_steps; k++) {
        const fdy_step *st = &m->steps[k];
        fdy_status s;
        if (st->n_mm == 0) {
            s = run_instr(m, &m->prog[st->first], st->first, tokens, 1, 0, 1, start_pos,
                          variant);
        } else {
            fdy_mm_part parts[FDY_MM_MAX_PARTS];
            for (int32_t j = 0; j < st->n_mm; j++) {
                const fdy_instr *in = &m->prog[st->mm[j]];
                parts[j] = (fdy_mm_part){&m->weights[in->weight], wf32(m, in->bias),
                                         m->bufs[in->out], in->accumulate, in->act, NULL, NULL};
            }
            float *sw = NULL;
            if (st->swiglu >= 0) {
                sw = m->bufs[m->prog[st->swiglu].out];
            }
            if (st->add >= 0) {
                const fdy_instr *ad = &m->prog[st->add];
                const int32_t res = ad->in0 == m->prog[st->mm[0]].out ? ad->in1 : ad->in0;
                parts[0].res_in = m->bufs[res];
                parts[0].res_out = m->bufs[ad->out];
            }
            s = fdy_matmul_group(m->bufs[m->prog[st->first].in0], 1, st->n_mm, parts, sw,
                                 variant, &m->ws);
        }
        if (s) {
            return s;
        }
    }
    return FDY_OK;
}

/* one allocation for a model's copies of one kind, 2 MiB-aligned and advised for
 * transparent huge pages: the decode streams every copy once per token, and with 4 KB pages
 * each page cost a TLB miss (docs/CPU_NOTES.md item 47: the GEMV kernels 5-15% faster).
 * Each copy starts on a page, as the sizes are whole pages (a copy 16 bytes past a page start
 * measured slower, item 32).  Freed with free(). */
static uint8_t *arena_alloc(size_t bytes) {
    const size_t huge = (size_t)2 << 20;
    const size_t n = (bytes + huge - 1) / huge * huge;
    uint8_t *p = (uint8_t *)aligned_alloc(huge, n);
#if defined(MADV_HUGEPAGE)
    if (p) {
        (void)madvise(p, n, MADV_HUGEPAGE);
    }
#endif
    return p;
}

/* the copies of one kind of the matmul weights that have one, made once, in one arena:
 * the interleaved layout of the q8 decode GEMV (fdy_weight_pack_into, at the first q8
 * forward) or the AMX layout of the f32 decode GEMV (fdy_weight_pack_amx_into, at the first
 * f32 forward of one token).  Memory: one more copy of those weights' bytes.  A weight
 * without a copy (no layout, not used on this CPU, or no memory) keeps the plain kernels;
 * PYFOUNDRY_NO_PACK=1 makes none (a debugging and timing switch). */
static void make_copies(fdy_model *m, int amx) {
    const char *np = getenv("PYFOUNDRY_NO_PACK");
    if (np && *np && *np != '0') {
        return;
    }
    size_t (*size)(const fdy_weight *) = amx ? fdy_weight_amx_size : fdy_weight_pack_size;
    int (*into)(const fdy_weight *, void *) = amx ? fdy_weight_pack_amx_into : fdy_weight_pack_into;
    size_t total = 0;
    for (int32_t i = 0; i < m->n_weights; i++) {
        if (m->weight_used[i]) {
            total += size(&m->weights[i]);
        }
    }
    uint8_t *arena = total ? arena_alloc(total) : NULL;
    if (!arena) {
        return;
    }
    size_t off = 0;
    for (int32_t i = 0; i < m->n_weights; i++) {
        fdy_weight *w = &m->weights[i];
        const size_t sz = m->weight_used[i] ? size(w) : 0;
        if (sz && into(w, arena + off)) {
            if (amx) {
                w->amx = arena + off;
            } else {
                w->packed = arena + off;
            }
            off += sz;
        }
    }
    m->packed_bytes += off;
    if (amx) {
        m->amx_arena = arena;
    } else {
        m->packed_arena = arena;
    }
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
    if (variant == FDY_VARIANT_Q8 && !m->packed_done) {
        m->packed_done = 1;
        make_copies(m, 0);
    }
    if (variant == FDY_VARIANT_F32 && M == 1 && !m->amx_done) {
        m->amx_done = 1;
        make_copies(m, 1);
    }
    for (int64_t t = 0; t < M; t++) {
        m->positions[t] = (int32_t)(start_pos + t);
    }
    if ((s = rope_tables(m, M))) {
        return s;
    }
    /* positions start_pos.. are being rewritten: the cache is valid up to start_pos */
    m->n_past = start_pos;
    int any_capture = 0;
    for (int32_t c = 0; captures && c < n_captures; c++) {
        any_capture |= captures[c] != NULL;
    }
    /* PYFOUNDRY_NO_FUSE=1: the plain way for every call (a debugging and timing switch) */
    const char *nf = getenv("PYFOUNDRY_NO_FUSE");
    const int plain = M > 1 || any_capture || (nf && *nf && *nf != '0');
    if (!plain) {
        if ((s = run_fused(m, tokens, start_pos, variant))) {
            return s;
        }
    }
    for (int32_t i = 0; plain && i < m->n_instr; i++) {
        const fdy_instr *in = &m->prog[i];
        /* "tail" instructions (final norm, logits) run on the last row only when asked */
        const int tail = last_only && in->tail;
        const int64_t rows = tail ? 1 : M;
        const int64_t r0 = tail ? M - 1 : 0;
        if ((s = run_instr(m, in, i, tokens, M, r0, rows, start_pos, variant))) {
            return s;
        }
        if (in->capture >= 0 && in->capture < n_captures && captures && captures[in->capture]) {
            int32_t b = in->op == FDY_I_ROPE ? in->in0 : in->out;
            memcpy(captures[in->capture], m->bufs[b] + r0 * m->widths[b],
                   (size_t)(rows * m->widths[b]) * sizeof(float));
        }
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
