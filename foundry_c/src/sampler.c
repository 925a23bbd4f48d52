/* sampler.c - the token sampler: penalties, top-k, top-p, min-p, temperature, softmax and the
 * draw (definitions in foundry.h, section "sampler"), its generator and its token history.
 *
 * One call works on a candidate list (logit, id) of the whole vocabulary and shrinks it step
 * by step; nothing is sorted in full.  top-k and top-p are selections (quickselect by rank, by
 * count or by probability mass; a sort takes over after 2 log2(V) + 8 rounds), so a call
 * costs O(V) expected and O(V log V) at worst, plus O(window) for the penalties.
 */
#include <math.h>
#include <string.h>

#include "internal.h"

typedef struct cand {
    double logit;
    double p; /* scratch: unnormalized probability */
    int32_t id;
} cand;

struct fdy_sampler {
    fdy_sampler_params p;
    uint64_t rng;       /* splitmix64 state */
    int32_t *hist;      /* (n_hist,) accepted tokens, oldest first */
    int64_t n_hist, cap_hist;
    int64_t cap_vocab;  /* size of the work buffers below */
    cand *cand;         /* (cap_vocab,) candidates of the current call */
    double *w;          /* (cap_vocab,) unnormalized final weights, dense by id */
    int32_t *count;     /* (cap_vocab,) penalty counts; all zero between calls */
};

// ---- parameters -------------------------------------------------------------------------

fdy_sampler_params fdy_sampler_default_params(void) {
    return (fdy_sampler_params){
        .temperature = 0.8,
        .top_k = 40,
        .top_p = 0.95,
        .min_p = 0.05,
        .repeat_penalty = 1.0,
        .presence_penalty = 0.0,
        .frequency_penalty = 0.0,
        .penalty_last_n = 64,
        .seed = 0,
    };
}

static fdy_status check_params(const fdy_sampler_params *p) {
    if (!(isfinite(p->temperature) && p->temperature >= 0)) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: temperature must be finite and >= 0 "
                        "(0 = greedy), got %g", p->temperature);
    }
    if (p->top_k < 0) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: top_k must be >= 0 (0 = off), got %d",
                        (int)p->top_k);
    }
    if (!(p->top_p > 0 && p->top_p <= 1)) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: top_p must be in (0, 1] (1 = off), got %g",
                        p->top_p);
    }
    if (!(p->min_p >= 0 && p->min_p <= 1)) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: min_p must be in [0, 1] (0 = off), got %g",
                        p->min_p);
    }
    if (!(isfinite(p->repeat_penalty) && p->repeat_penalty > 0)) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: repeat_penalty must be finite and > 0 "
                        "(1 = off), got %g", p->repeat_penalty);
    }
    if (!isfinite(p->presence_penalty)) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: presence_penalty must be finite, got %g",
                        p->presence_penalty);
    }
    if (!isfinite(p->frequency_penalty)) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: frequency_penalty must be finite, got %g",
                        p->frequency_penalty);
    }
    if (p->penalty_last_n < -1) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: penalty_last_n must be >= -1 (0 = off, "
                        "-1 = whole history), got %d", (int)p->penalty_last_n);
    }
    return FDY_OK;
}

// ---- generator: splitmix64 --------------------------------------------------------------

static uint64_t next_u64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double next_uniform(uint64_t *state) { /* [0, 1), 53 random bits */
    return (double)(next_u64(state) >> 11) * 0x1.0p-53;
}

// ---- object -----------------------------------------------------------------------------

fdy_status fdy_sampler_new(const fdy_sampler_params *params, fdy_sampler **out) {
    if (!out) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: out is NULL");
    }
    *out = NULL;
    fdy_sampler_params p = params ? *params : fdy_sampler_default_params();
    fdy_status st = check_params(&p);
    if (st) {
        return st;
    }
    fdy_sampler *s = calloc(1, sizeof *s);
    if (!s) {
        return fdy_fail(FDY_ERR_NOMEM, "sampler: out of memory");
    }
    s->p = p;
    s->rng = p.seed;
    *out = s;
    return FDY_OK;
}

void fdy_sampler_free(fdy_sampler *s) {
    if (!s) {
        return;
    }
    free(s->hist);
    free(s->cand);
    free(s->w);
    free(s->count);
    free(s);
}

const fdy_sampler_params *fdy_sampler_get_params(const fdy_sampler *s) {
    return s ? &s->p : NULL;
}

fdy_status fdy_sampler_accept(fdy_sampler *s, int32_t token) {
    if (!s) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: NULL sampler");
    }
    if (token < 0) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: accepted token must be >= 0, got %d",
                        (int)token);
    }
    if (s->n_hist == s->cap_hist) {
        int64_t cap = s->cap_hist ? 2 * s->cap_hist : 256;
        int32_t *h = realloc(s->hist, (size_t)cap * sizeof *h);
        if (!h) {
            return fdy_fail(FDY_ERR_NOMEM, "sampler: out of memory for the history");
        }
        s->hist = h;
        s->cap_hist = cap;
    }
    s->hist[s->n_hist++] = token;
    return FDY_OK;
}

void fdy_sampler_reset(fdy_sampler *s) {
    if (s) {
        s->n_hist = 0;
        s->rng = s->p.seed;
    }
}

int64_t fdy_sampler_n_history(const fdy_sampler *s) {
    return s ? s->n_hist : 0;
}

const int32_t *fdy_sampler_history(const fdy_sampler *s) {
    return s ? s->hist : NULL;
}

static fdy_status reserve(fdy_sampler *s, int64_t vocab) {
    if (vocab <= s->cap_vocab) {
        return FDY_OK;
    }
    free(s->cand);
    free(s->w);
    free(s->count);
    s->cand = malloc((size_t)vocab * sizeof *s->cand);
    s->w = malloc((size_t)vocab * sizeof *s->w);
    s->count = calloc((size_t)vocab, sizeof *s->count);
    if (!s->cand || !s->w || !s->count) {
        free(s->cand);
        free(s->w);
        free(s->count);
        s->cand = NULL;
        s->w = NULL;
        s->count = NULL;
        s->cap_vocab = 0;
        return fdy_fail(FDY_ERR_NOMEM, "sampler: out of memory for a vocabulary of %lld",
                        (long long)vocab);
    }
    s->cap_vocab = vocab;
    return FDY_OK;
}

// ---- transformations --------------------------------------------------------------------

/* a ranks before b: larger logit, then lower id */
static inline int better(const cand *a, const cand *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cmp_rank(const void *a, const void *b) {
    const cand *x = a, *y = b;
    return better(x, y) ? -1 : better(y, x) ? 1 : 0;
}

/* cand is indexed by id here; counts live in s->count and are zeroed again on the way out;
 * *n_finite drops for every logit the penalties push to -inf */
static fdy_status apply_penalties(fdy_sampler *s, cand *c, int64_t vocab, int64_t *n_finite) {
    const fdy_sampler_params *p = &s->p;
    if (p->penalty_last_n == 0 || s->n_hist == 0 ||
        (p->repeat_penalty == 1 && p->presence_penalty == 0 && p->frequency_penalty == 0)) {
        return FDY_OK;
    }
    int64_t n = p->penalty_last_n < 0 ? s->n_hist
                : (p->penalty_last_n < s->n_hist ? p->penalty_last_n : s->n_hist);
    const int32_t *win = s->hist + (s->n_hist - n);
    for (int64_t i = 0; i < n; i++) {
        if (win[i] < vocab) {
            s->count[win[i]]++;
        }
    }
    fdy_status st = FDY_OK;
    for (int64_t i = 0; i < n; i++) {
        int32_t t = win[i];
        if (t >= vocab || s->count[t] == 0) {
            continue;
        }
        double cnt = s->count[t];
        s->count[t] = 0;
        double l = c[t].logit;
        int was_finite = l != -INFINITY;
        l = l > 0 ? l / p->repeat_penalty : l * p->repeat_penalty;
        l -= cnt * p->frequency_penalty + p->presence_penalty;
        if (isnan(l) || l == INFINITY) {
            st = fdy_fail(FDY_ERR_INVALID, "sampler: the penalties turn logit %d into %g",
                          (int)t, l);
        }
        *n_finite -= was_finite && l == -INFINITY;
        c[t].logit = l;
    }
    return st;
}

static inline void swap_cand(cand *a, cand *b) {
    cand t = *a;
    *a = *b;
    *b = t;
}

/* Partition c[lo..hi) (hi - lo >= 2) around a median-of-three pivot: better candidates
 * before it, worse after.  Returns the pivot's index. */
static int64_t partition(cand *c, int64_t lo, int64_t hi) {
    int64_t a = lo, b = lo + (hi - lo) / 2, d = hi - 1, m;
    if (better(&c[a], &c[b])) {
        m = better(&c[b], &c[d]) ? b : (better(&c[a], &c[d]) ? d : a);
    } else {
        m = better(&c[a], &c[d]) ? a : (better(&c[b], &c[d]) ? d : b);
    }
    swap_cand(&c[m], &c[hi - 1]);
    const cand pivot = c[hi - 1];
    int64_t j = lo;
    for (int64_t i = lo; i < hi - 1; i++) {
        if (better(&c[i], &pivot)) {
            swap_cand(&c[i], &c[j++]);
        }
    }
    swap_cand(&c[j], &c[hi - 1]);
    return j;
}

/* partitions allowed before falling back to a sort: O(n) expected, O(n log n) at worst */
static int select_budget(int64_t n) {
    int b = 8;
    for (; n > 1; n >>= 1) {
        b += 2;
    }
    return b;
}

/* top-k: move the k best of c[0..n) (0 < k < n) to c[0..k), in no particular order */
static void select_count(cand *c, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n; /* c[0..lo) beat c[lo..n); c[hi..n) lose to c[0..hi); lo<=k<=hi */
    for (int budget = select_budget(n); hi - lo > 1; budget--) {
        if (budget == 0) {
            qsort(c + lo, (size_t)(hi - lo), sizeof *c, cmp_rank);
            return;
        }
        int64_t p = partition(c, lo, hi);
        if (p == k || p == k - 1) {
            return;
        }
        if (p > k) {
            hi = p;
        } else {
            lo = p + 1;
        }
    }
}

/* top-p: the smallest k such that the k best of c[0..n) hold a total weight .p >= target,
 * moved to c[0..k) in no particular order; 0 when rounding keeps the total below target */
static int64_t select_mass(cand *c, int64_t n, double target) {
    int64_t lo = 0, hi = n; /* as in select_count; acc = weight of c[0..lo) < target */
    double acc = 0;
    for (int budget = select_budget(n); lo < hi; budget--) {
        if (budget == 0 || hi - lo == 1) {
            qsort(c + lo, (size_t)(hi - lo), sizeof *c, cmp_rank);
            for (int64_t i = lo; i < hi; i++) {
                acc += c[i].p;
                if (acc >= target) {
                    return i + 1;
                }
            }
            return 0;
        }
        int64_t p = partition(c, lo, hi);
        double left = 0;
        for (int64_t i = lo; i < p; i++) {
            left += c[i].p;
        }
        if (acc + left >= target) {
            hi = p;
        } else if (acc + left + c[p].p >= target) {
            return p + 1;
        } else {
            acc += left + c[p].p;
            lo = p + 1;
        }
    }
    return 0;
}

static double max_logit(const cand *c, int64_t n) {
    double m = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        m = c[i].logit > m ? c[i].logit : m;
    }
    return m;
}

static void top_p(cand *c, int64_t *n, double top_p) {
    double m = max_logit(c, *n), z = 0;
    for (int64_t i = 0; i < *n; i++) {
        c[i].p = exp(c[i].logit - m);
        z += c[i].p;
    }
    int64_t keep = select_mass(c, *n, top_p * z);
    if (keep) {
        *n = keep;
    }
}

/* keep p >= min_p * p_max, i.e. exp(logit - max) >= min_p; order preserved */
static void min_p(cand *c, int64_t *n, double min_p) {
    double m = max_logit(c, *n);
    int64_t j = 0;
    for (int64_t i = 0; i < *n; i++) {
        if (exp(c[i].logit - m) >= min_p) {
            c[j++] = c[i];
        }
    }
    *n = j;
}

/* Runs the chain; leaves in s->w (vocab,) the unnormalized final weights (zero for removed
 * tokens) and returns their sum in *z_out, or for greedy sets *greedy_id. */
static fdy_status run_chain(fdy_sampler *s, const float *logits, int64_t vocab, double *z_out,
                            int32_t *greedy_id) {
    *greedy_id = -1;
    if (!s) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: NULL sampler");
    }
    if (vocab <= 0 || vocab > INT32_MAX) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: vocab must be in [1, 2^31 - 1], got %lld",
                        (long long)vocab);
    }
    if (!logits) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: logits is NULL");
    }
    fdy_status st = reserve(s, vocab);
    if (st) {
        return st;
    }
    cand *c = s->cand;
    int64_t n_finite = 0;
    for (int64_t i = 0; i < vocab; i++) {
        float l = logits[i];
        if (isnan(l) || l == INFINITY) {
            return fdy_fail(FDY_ERR_INVALID, "sampler: logits[%lld] is %s", (long long)i,
                            isnan(l) ? "NaN" : "+inf");
        }
        n_finite += l != -INFINITY;
        c[i].logit = l;
        c[i].id = (int32_t)i;
    }
    if (n_finite == 0) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: every logit is -inf");
    }
    if ((st = apply_penalties(s, c, vocab, &n_finite))) {
        return st;
    }
    if (n_finite == 0) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: the penalties push every logit to -inf");
    }
    const fdy_sampler_params *p = &s->p;
    if (p->temperature == 0) {
        int64_t best = 0;
        for (int64_t i = 1; i < vocab; i++) {
            best = c[i].logit > c[best].logit ? i : best;
        }
        *greedy_id = (int32_t)best;
        return FDY_OK;
    }
    int64_t n = vocab;
    if (p->top_k > 0 && p->top_k < n) {
        select_count(c, n, p->top_k);
        n = p->top_k;
    }
    if (p->top_p < 1) {
        top_p(c, &n, p->top_p);
    }
    if (p->min_p > 0) {
        min_p(c, &n, p->min_p);
    }
    double m = max_logit(c, n), z = 0;
    memset(s->w, 0, (size_t)vocab * sizeof *s->w);
    for (int64_t i = 0; i < n; i++) {
        double e = exp((c[i].logit - m) / p->temperature);
        s->w[c[i].id] = e;
        z += e;
    }
    *z_out = z;
    return FDY_OK;
}

// ---- sampling ---------------------------------------------------------------------------

fdy_status fdy_sampler_probs(fdy_sampler *s, const float *logits, int64_t vocab,
                             float *probs_out) {
    double z;
    int32_t g;
    if (!probs_out) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: probs_out is NULL");
    }
    fdy_status st = run_chain(s, logits, vocab, &z, &g);
    if (st) {
        return st;
    }
    if (g >= 0) {
        memset(probs_out, 0, (size_t)vocab * sizeof *probs_out);
        probs_out[g] = 1;
        return FDY_OK;
    }
    for (int64_t i = 0; i < vocab; i++) {
        probs_out[i] = (float)(s->w[i] / z);
    }
    return FDY_OK;
}

fdy_status fdy_sampler_sample(fdy_sampler *s, const float *logits, int64_t vocab,
                              int32_t *token) {
    double z;
    int32_t g;
    if (!token) {
        return fdy_fail(FDY_ERR_INVALID, "sampler: token is NULL");
    }
    fdy_status st = run_chain(s, logits, vocab, &z, &g);
    if (st) {
        return st;
    }
    if (g >= 0) {
        *token = g;
        return FDY_OK;
    }
    double target = next_uniform(&s->rng) * z, cum = 0;
    int64_t last = -1;
    for (int64_t i = 0; i < vocab; i++) {
        if (s->w[i] > 0) {
            cum += s->w[i];
            last = i;
            if (cum > target) {
                break;
            }
        }
    }
    *token = (int32_t)last; /* the last positive weight when rounding kept cum <= target */
    return FDY_OK;
}
