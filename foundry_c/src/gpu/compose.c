/* compose.c - builds the source of one GPU kernel module: the target's prelude, the device
 * part of each weight policy the module needs (the same text the CPU compiles), the common
 * helpers, one copy of metal/weights.metal per weight slot (slot i bound to its policy by
 * FDY_W<i>_* defines), the caller's constants, then the kernel template.  Templates never name
 * a format: the slot defines do.  Owns nothing beyond the returned string.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu.h"
#include "internal.h"
#include "policy.h"

const char *fdy_gpu_text_find(const char *name) {
    for (const fdy_gpu_text *t = fdy_gpu_texts; t->name; t++) {
        if (strcmp(t->name, name) == 0) {
            return t->text;
        }
    }
    return NULL;
}

const char *fdy_gpu_template_name(int32_t i) {
    int32_t k = 0;
    for (const fdy_gpu_text *t = fdy_gpu_texts; t->name; t++) {
        if (strncmp(t->name, "template:", 9) == 0 && strcmp(t->name + 9, "common") != 0 &&
            strcmp(t->name + 9, "weights") != 0) {
            if (k++ == i) {
                return t->name + 9;
            }
        }
    }
    return NULL;
}

/* ---- a growing string ---- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int failed;
} sbuf;

static void sb_add(sbuf *b, const char *s) {
    size_t n = strlen(s);
    if (b->failed) {
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        char *p = (char *)realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n + 1);
    b->len += n;
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    sb_add(b, tmp);
}

/* ---- the composer ---- */

#define MAX_SLOTS 4

/* a policy name in capitals, as in its FDY_<NAME>_* macros */
static void upper(const char *s, char *out, size_t cap) {
    size_t k = 0;
    for (; s[k] && k + 1 < cap; k++) {
        out[k] = (char)(s[k] >= 'a' && s[k] <= 'z' ? s[k] - 32 : s[k]);
    }
    out[k] = 0;
}

fdy_status fdy_gpu_compose(const char *target, const char *kernel, const char *const *policies,
                           int32_t n_policies, const char *defines, char **out) {
    if (!out) {
        return fdy_fail(FDY_ERR_INVALID, "gpu_compose: missing output");
    }
    *out = NULL;
    if (!target || (strcmp(target, "cuda") != 0 && strcmp(target, "metal") != 0)) {
        return fdy_fail(FDY_ERR_INVALID, "gpu_compose: target must be 'cuda' or 'metal'");
    }
    if (!kernel || strlen(kernel) > 64) {
        return fdy_fail(FDY_ERR_INVALID, "gpu_compose: missing kernel template name");
    }
    if (n_policies < 0 || n_policies > MAX_SLOTS || (n_policies && !policies)) {
        return fdy_fail(FDY_ERR_INVALID, "gpu_compose: 0 to %d policies, got %d", MAX_SLOTS,
                        (int)n_policies);
    }
    char name[96];
    snprintf(name, sizeof name, "template:%s", kernel);
    const char *tmpl = fdy_gpu_text_find(name);
    if (!tmpl || strcmp(kernel, "common") == 0 || strcmp(kernel, "weights") == 0) {
        return fdy_fail(FDY_ERR_INVALID, "gpu_compose: no kernel template '%s'", kernel);
    }
    snprintf(name, sizeof name, "prelude:%s", target);
    const char *prelude = fdy_gpu_text_find(name);
    const char *common = fdy_gpu_text_find("template:common");
    const char *weights = fdy_gpu_text_find("template:weights");
    const fdy_policy *pol[MAX_SLOTS];
    for (int i = 0; i < n_policies; i++) {
        pol[i] = policies[i] ? fdy_policy_by_name(policies[i]) : NULL;
        if (!pol[i]) {
            return fdy_fail(FDY_ERR_INVALID, "gpu_compose: unknown policy '%s'",
                            policies[i] ? policies[i] : "(null)");
        }
    }
    if (!prelude || !common || !weights) {
        return fdy_fail(FDY_ERR_STATE, "gpu_compose: kernel texts missing from the build");
    }

    sbuf b = {0};
    sb_printf(&b, "/* pyfoundry kernel module: target %s, template %s, policies", target,
              kernel);
    for (int i = 0; i < n_policies; i++) {
        sb_printf(&b, " %s", pol[i]->name);
    }
    sb_add(&b, " */\n");
    sb_add(&b, prelude);
    /* the device part of each slot's policy, then of its dot_type (the q8 variant's activation
     * quantizer), each once */
    const fdy_policy *pasted[2 * MAX_SLOTS];
    int n_pasted = 0;
    for (int k = 0; k < 2 * n_policies; k++) {
        const fdy_policy *p = k < n_policies ? pol[k] : NULL;
        if (k >= n_policies) {
            const char *dt = pol[k - n_policies]->dot_type;
            p = dt ? fdy_policy_by_name(dt) : NULL;
        }
        int seen = p == NULL;
        for (int j = 0; j < n_pasted && !seen; j++) {
            seen = pasted[j] == p;
        }
        if (seen) {
            continue;
        }
        pasted[n_pasted++] = p;
        snprintf(name, sizeof name, "policy:%s", p->name);
        const char *text = fdy_gpu_text_find(name);
        if (!text) {
            free(b.p);
            return fdy_fail(FDY_ERR_STATE, "gpu_compose: no device code for policy %s", p->name);
        }
        sb_printf(&b, "\n/* ---- policy %s (policies/%s.c, device part) ---- */\n", p->name,
                  p->name);
        sb_add(&b, text);
    }
    sb_add(&b, "\n/* ---- metal/common.metal ---- */\n");
    sb_add(&b, common);
    for (int i = 0; i < n_policies; i++) {
        const fdy_policy *p = pol[i];
        sb_printf(&b, "\n/* ---- weight slot %d: %s ---- */\n", i, p->name);
        sb_printf(&b, "#define FDY_W%d_DECODE fdy_decode_%s\n", i, p->name);
        sb_printf(&b, "#define FDY_W%d_BLOCK_ELEMS %d\n", i, (int)p->block_elems);
        sb_printf(&b, "#define FDY_W%d_BLOCK_BYTES %d\n", i, (int)p->block_bytes);
        sb_printf(&b, "#define FDY_W%d_SUB_ELEMS %d\n", i, (int)p->sub_elems);
        {   /* the policy's optional GEMV dot hooks (FDY_<NAME>_DOTF_PARTS, fdy_dotf_<name>; the
             * integer one FDY_<NAME>_DOTI, fdy_doti_calc_<name>) and its dot_type's activation
             * quantizer (FDY_<DT>_ACT_GROUP, fdy_actq_scale_<dt>, fdy_actq_code_<dt>) */
            char up[64], dup[64];
            upper(p->name, up, sizeof up);
            sb_printf(&b, "#ifdef FDY_%s_DOTF_PARTS\n#define FDY_W%d_DOTF_PARTS FDY_%s_DOTF_PARTS\n"
                          "#define FDY_W%d_DOTF_WORDS FDY_%s_DOTF_WORDS\n",
                      up, i, up, i, up);
            sb_printf(&b, "#define FDY_W%d_DOTF_LOAD fdy_dotf_load_%s\n"
                          "#define FDY_W%d_DOTF_CALC fdy_dotf_calc_%s\n",
                      i, p->name, i, p->name);
            sb_printf(&b, "#ifdef FDY_%s_DOTF_U\n#define FDY_W%d_DOTF_U FDY_%s_DOTF_U\n#endif\n#endif\n",
                      up, i, up);
            if (p->dot_type) {
                upper(p->dot_type, dup, sizeof dup);
                sb_printf(&b, "#ifdef FDY_%s_ACT_GROUP\n#define FDY_W%d_ACT_GROUP FDY_%s_ACT_GROUP\n"
                              "#define FDY_W%d_ACT_SCALE fdy_actq_scale_%s\n"
                              "#define FDY_W%d_ACT_CODE fdy_actq_code_%s\n#endif\n",
                          dup, i, dup, i, p->dot_type, i, p->dot_type);
                sb_printf(&b, "#if defined(FDY_%s_DOTI) && defined(FDY_W%d_DOTF_PARTS) && "
                              "defined(FDY_W%d_ACT_GROUP)\n#define FDY_W%d_DOTI_CALC fdy_doti_calc_%s\n"
                              "#ifdef FDY_%s_DOTI_U\n#define FDY_W%d_DOTI_U FDY_%s_DOTI_U\n#endif\n#endif\n",
                          up, i, i, i, p->name, up, i, up);
            }
        }
        sb_printf(&b, "#define FDY_W_DECODE FDY_W%d_DECODE\n", i);
        sb_printf(&b, "#define FDY_W_BLOCK_ELEMS FDY_W%d_BLOCK_ELEMS\n", i);
        sb_printf(&b, "#define FDY_W_BLOCK_BYTES FDY_W%d_BLOCK_BYTES\n", i);
        sb_printf(&b, "#define FDY_W_SUB_ELEMS FDY_W%d_SUB_ELEMS\n", i);
        sb_printf(&b, "#define FDY_SLOT(name) name##_w%d\n", i);
        sb_add(&b, weights);
        sb_add(&b, "#undef FDY_W_DECODE\n#undef FDY_W_BLOCK_ELEMS\n#undef FDY_W_BLOCK_BYTES\n"
                   "#undef FDY_W_SUB_ELEMS\n#undef FDY_SLOT\n");
    }
    if (defines && *defines) {
        sb_add(&b, "\n/* ---- constants ---- */\n");
        sb_add(&b, defines);
        sb_add(&b, "\n");
    }
    sb_printf(&b, "\n/* ---- metal/%s.metal ---- */\n", kernel);
    sb_add(&b, tmpl);
    if (b.failed) {
        free(b.p);
        return fdy_fail(FDY_ERR_NOMEM, "gpu_compose: out of memory");
    }
    *out = b.p;
    return FDY_OK;
}

void fdy_gpu_free(void *p) {
    free(p);
}
