/* tokenizer.c - the tokenizer built from a GGUF file's tokenizer.ggml.* metadata: vocabulary,
 * special-token parsing, SentencePiece-style and byte-level BPE encoding, pieces, decoding and
 * the streaming detokenizer.
 *
 * The algorithms are llama.cpp's, so that ids match it exactly.  SPM ("llama") replaces spaces
 * with U+2581, prefixes one, then repeatedly merges the adjacent pair whose joined text is the
 * vocabulary piece with the highest score (ties: leftmost) and falls back to <0xXX> byte tokens
 * for what is left.  BPE ("gpt2") splits the text with the pre-tokenizer tokenizer.ggml.pre
 * names (hand-written matchers over code points for the regexes llama.cpp uses, with the
 * Unicode classes of unicode_tables.h), reads every byte as its GPT-2 printable character and
 * applies merges by rank (ties: leftmost).  Special tokens are cut out of the text first,
 * longest first.  A tokenizer owns copies of everything it needs and is immutable afterwards.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "unicode_tables.h"

#define SPECIALISH (FDY_TOKEN_CONTROL | FDY_TOKEN_USER_DEFINED | FDY_TOKEN_UNKNOWN)
#define HIDDEN (FDY_TOKEN_CONTROL | FDY_TOKEN_UNKNOWN) /* not rendered unless asked */

/* ---- small growable buffers ------------------------------------------------------------ */

static bool grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) {
        return true;
    }
    size_t c = *cap ? *cap : 16;
    while (c < need) {
        if (c > SIZE_MAX / 2 / elem) {
            return false;
        }
        c *= 2;
    }
    void *q = realloc(*p, c * elem);
    if (!q) {
        return false;
    }
    *p = q;
    *cap = c;
    return true;
}

typedef struct ivec {
    int32_t *p;
    size_t n, cap;
} ivec;

static bool ivec_push(ivec *v, int32_t x) {
    if (!grow((void **)&v->p, &v->cap, v->n + 1, sizeof *v->p)) {
        return false;
    }
    v->p[v->n++] = x;
    return true;
}

typedef struct zvec {
    size_t *p;
    size_t n, cap;
} zvec;

static bool zvec_push(zvec *v, size_t x) {
    if (!grow((void **)&v->p, &v->cap, v->n + 1, sizeof *v->p)) {
        return false;
    }
    v->p[v->n++] = x;
    return true;
}

typedef struct bbuf {
    char *p;
    size_t n, cap;
} bbuf;

static bool bbuf_put(bbuf *b, const void *src, size_t n) {
    if (n > SIZE_MAX - b->n || !grow((void **)&b->p, &b->cap, b->n + n, 1)) {
        return false;
    }
    if (n) {
        memcpy(b->p + b->n, src, n);
    }
    b->n += n;
    return true;
}

/* ---- UTF-8 and Unicode classes --------------------------------------------------------- */

/* bytes of the character a lead byte starts, as llama.cpp counts them (no validation) */
static size_t utf8_len_lead(uint8_t b) {
    static const uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[b >> 4];
}

/* strict decoder (no overlong forms, surrogates or values past U+10FFFF): the length of the
 * character at p, or 0 when the bytes there do not start a valid one */
static size_t utf8_decode(const uint8_t *p, size_t n, uint32_t *cp) {
    uint8_t b = p[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    size_t len;
    uint32_t c, min;
    if (b >= 0xC2 && b <= 0xDF) {
        len = 2, c = b & 0x1Fu, min = 0x80;
    } else if (b >= 0xE0 && b <= 0xEF) {
        len = 3, c = b & 0x0Fu, min = 0x800;
    } else if (b >= 0xF0 && b <= 0xF4) {
        len = 4, c = b & 0x07u, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len) {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80) {
            return 0;
        }
        c = (c << 6) | (p[i] & 0x3Fu);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) {
        return 0;
    }
    *cp = c;
    return len;
}

static size_t utf8_encode(uint32_t c, uint8_t *out) {
    if (c < 0x80) {
        out[0] = (uint8_t)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (uint8_t)(0xC0 | (c >> 6));
        out[1] = (uint8_t)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (c >> 12));
        out[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (c >> 18));
    out[1] = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (c & 0x3F));
    return 4;
}

static bool utf8_valid(const char *s, size_t n) {
    const uint8_t *p = (const uint8_t *)s;
    uint32_t c;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_decode(p + i, n - i, &c);
        if (!k) {
            return false;
        }
        i += k;
    }
    return true;
}

/* general category class bits and White_Space of a code point */
static uint8_t uc_flags(uint32_t c) {
    if (c < 128) {
        return fdy_uc_ascii[c];
    }
    size_t lo = 0, hi = FDY_UC_N_RANGES; /* last run whose first code point is <= c */
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if ((fdy_uc_ranges[mid] >> 8) <= c) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    return (uint8_t)(fdy_uc_ranges[lo] & 0xFF);
}

static bool uc_ds_letter(uint32_t c) {
    size_t lo = 0, hi = FDY_UC_N_DS_LETTERS;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < fdy_uc_ds_letters[mid][0]) {
            hi = mid;
        } else if (c > fdy_uc_ds_letters[mid][1]) {
            lo = mid + 1;
        } else {
            return true;
        }
    }
    return false;
}

/* GPT-2's byte <-> printable character map: the printable Latin-1 bytes stand for themselves,
 * the other 68, in order, for U+0100..U+0143 */
#define GPT2_N_CHARS (256 + 68)

static bool gpt2_printable(uint32_t b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static void gpt2_tables(uint32_t byte_char[256], int16_t char_byte[GPT2_N_CHARS]) {
    uint32_t next = 256;
    for (uint32_t c = 0; c < GPT2_N_CHARS; c++) {
        char_byte[c] = -1;
    }
    for (uint32_t b = 0; b < 256; b++) {
        byte_char[b] = gpt2_printable(b) ? b : next++;
        char_byte[byte_char[b]] = (int16_t)b;
    }
}

/* ---- hashing ---------------------------------------------------------------------------- */

static uint64_t hash_bytes(const char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

typedef struct merge_slot {
    uint64_t key; /* (left id << 32) | right id; UINT64_MAX = empty */
    int32_t rank;
    int32_t result;
} merge_slot;

/* ---- the tokenizer ------------------------------------------------------------------------ */

enum { PRE_NONE, PRE_DEFAULT, PRE_GPT2, PRE_LLAMA3, PRE_QWEN2, PRE_STARCODER, PRE_FALCON,
       PRE_DEEPSEEK_LLM, PRE_DEEPSEEK_CODER };

typedef struct trie_node {
    int32_t child;   /* first child, -1 */
    int32_t sibling; /* next sibling, -1 */
    int32_t special; /* index into specials of the token ending here, -1 */
    uint8_t byte;
} trie_node;

struct fdy_tokenizer {
    int32_t type; /* FDY_VOCAB_* */
    int32_t pre;  /* PRE_* */
    int32_t n_vocab;
    char *pool;            /* token texts, then pieces */
    uint64_t *text_off;    /* (n_vocab) */
    uint32_t *text_len;    /* (n_vocab) */
    uint64_t *piece_off;   /* (n_vocab) */
    uint32_t *piece_len;   /* (n_vocab) */
    float *score;          /* (n_vocab) */
    uint32_t *attr;        /* (n_vocab) FDY_TOKEN_* */
    int32_t *slots;        /* text -> id + 1, open addressing, (mask + 1) */
    uint64_t mask;
    merge_slot *merges;    /* BPE: (mask + 1) */
    uint64_t merge_mask;
    int32_t byte_tok[256]; /* BPE: token of each byte's character; SPM: byte fallback */
    uint8_t byte_char[256][2]; /* BPE: UTF-8 of each byte's character */
    uint8_t byte_char_len[256];
    int32_t *specials;     /* control, user-defined, unknown ids, longest text first */
    int32_t n_specials;
    trie_node *trie;       /* over the specials' texts; node 0 is the root */
    int32_t n_trie;
    int32_t trie_root[256];
    int32_t special_id[7]; /* FDY_SPECIAL_* */
    int add_bos, add_eos, add_space_prefix, ignore_merges;
    int32_t *eog;
    int32_t n_eog;
    bbuf warnings;         /* NUL-terminated */
};

static fdy_str text_of(const fdy_tokenizer *t, int32_t id) {
    fdy_str s = {t->pool + t->text_off[id], t->text_len[id]};
    return s;
}

static int32_t find_id(const fdy_tokenizer *t, const char *p, size_t n) {
    uint64_t h = hash_bytes(p, n) & t->mask;
    for (;;) {
        int32_t s = t->slots[h];
        if (s == 0) {
            return -1;
        }
        if (t->text_len[s - 1] == n && memcmp(t->pool + t->text_off[s - 1], p, n) == 0) {
            return s - 1;
        }
        h = (h + 1) & t->mask;
    }
}

static const merge_slot *find_merge(const fdy_tokenizer *t, int32_t l, int32_t r) {
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    uint64_t h = hash_u64(key) & t->merge_mask;
    for (;;) {
        const merge_slot *s = &t->merges[h];
        if (s->key == key) {
            return s;
        }
        if (s->key == UINT64_MAX) {
            return NULL;
        }
        h = (h + 1) & t->merge_mask;
    }
}

static void warn(fdy_tokenizer *t, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void warn(fdy_tokenizer *t, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    size_t len = strlen(line);
    line[len++] = '\n';
    if (t->warnings.n) {
        t->warnings.n--; /* the NUL */
    }
    if (!bbuf_put(&t->warnings, line, len) || !bbuf_put(&t->warnings, "", 1)) {
        return; /* out of memory: the warning is lost, nothing else */
    }
}

void fdy_tokenizer_free(fdy_tokenizer *t) {
    if (!t) {
        return;
    }
    free(t->pool);
    free(t->text_off);
    free(t->text_len);
    free(t->piece_off);
    free(t->piece_len);
    free(t->score);
    free(t->attr);
    free(t->slots);
    free(t->merges);
    free(t->specials);
    free(t->trie);
    free(t->eog);
    free(t->warnings.p);
    free(t);
}

/* ---- metadata ------------------------------------------------------------------------------ */

static const fdy_value *kv(const fdy_gguf *g, const char *key) {
    int64_t i = fdy_gguf_find_kv(g, key);
    return i < 0 ? NULL : fdy_gguf_kv_value(g, i);
}

static bool is_int_type(int32_t type) {
    return type == FDY_GGUF_UINT8 || type == FDY_GGUF_INT8 || type == FDY_GGUF_UINT16 ||
           type == FDY_GGUF_INT16 || type == FDY_GGUF_UINT32 || type == FDY_GGUF_INT32 ||
           type == FDY_GGUF_UINT64 || type == FDY_GGUF_INT64;
}

static bool is_signed_type(int32_t type) {
    return type == FDY_GGUF_INT8 || type == FDY_GGUF_INT16 || type == FDY_GGUF_INT32 ||
           type == FDY_GGUF_INT64;
}

/* item i of a numeric array as int64 (unsigned values past INT64_MAX saturate) */
static int64_t array_int(const fdy_value *v, uint64_t i) {
    const uint8_t *p = (const uint8_t *)v->v.data + i * fdy_gguf_type_size(v->elem_type);
    switch (v->elem_type) {
    case FDY_GGUF_UINT8: return p[0];
    case FDY_GGUF_INT8: return (int8_t)p[0];
    case FDY_GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); return x; }
    case FDY_GGUF_INT16: { int16_t x; memcpy(&x, p, 2); return x; }
    case FDY_GGUF_UINT32: { uint32_t x; memcpy(&x, p, 4); return x; }
    case FDY_GGUF_INT32: { int32_t x; memcpy(&x, p, 4); return x; }
    case FDY_GGUF_UINT64: { uint64_t x; memcpy(&x, p, 8); return x > INT64_MAX ? INT64_MAX : (int64_t)x; }
    case FDY_GGUF_INT64: { int64_t x; memcpy(&x, p, 8); return x; }
    default: return 0;
    }
}

/* an integer key: *present = 0 when absent */
static fdy_status get_int(const fdy_gguf *g, const char *key, int64_t *out, int *present) {
    const fdy_value *v = kv(g, key);
    *present = v != NULL;
    if (!v) {
        return FDY_OK;
    }
    if (!is_int_type(v->type)) {
        return fdy_fail(FDY_ERR_FORMAT, "tokenizer: %s must be an integer", key);
    }
    if (is_signed_type(v->type)) {
        *out = v->v.i64;
    } else {
        *out = v->v.u64 > INT64_MAX ? INT64_MAX : (int64_t)v->v.u64;
    }
    return FDY_OK;
}

static fdy_status get_bool(const fdy_gguf *g, const char *key, int *out) {
    const fdy_value *v = kv(g, key);
    if (!v) {
        return FDY_OK;
    }
    if (v->type == FDY_GGUF_BOOL || (is_int_type(v->type) && !is_signed_type(v->type))) {
        *out = v->v.u64 != 0;
    } else if (is_int_type(v->type)) {
        *out = v->v.i64 != 0;
    } else {
        return fdy_fail(FDY_ERR_FORMAT, "tokenizer: %s must be a bool", key);
    }
    return FDY_OK;
}

static bool str_is(fdy_str s, const char *lit) {
    size_t n = strlen(lit);
    return s.len == n && memcmp(s.ptr, lit, n) == 0;
}

/* a token text of the form <0xXX>: the byte, else -1 */
static int parse_byte_token(const char *p, size_t n) {
    if (n != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>') {
        return -1;
    }
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = p[i];
        int d = (c >= '0' && c <= '9')   ? c - '0'
                : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                         : -1;
        if (d < 0) {
            return -1;
        }
        v = v * 16 + d;
    }
    return v;
}

/* ---- pre-tokenizer names ------------------------------------------------------------------- */

static const char *const PRE_RULE_NAMES[] = {
    [PRE_NONE] = "",          [PRE_DEFAULT] = "default",
    [PRE_GPT2] = "gpt2",      [PRE_LLAMA3] = "llama3",
    [PRE_QWEN2] = "qwen2",    [PRE_STARCODER] = "starcoder",
    [PRE_FALCON] = "falcon",  [PRE_DEEPSEEK_LLM] = "deepseek-llm",
    [PRE_DEEPSEEK_CODER] = "deepseek-coder",
};

/* tokenizer.ggml.pre values and the rules they use (llama.cpp's table, for these rules) */
static const struct {
    const char *name;
    int pre;
    int llama3_defaults; /* merges ignored for whole-word tokens; BOS added by default */
} PRE_NAMES[] = {
    {"default", PRE_DEFAULT, 0},
    {"llama3", PRE_LLAMA3, 1}, {"llama-v3", PRE_LLAMA3, 1}, {"llama-bpe", PRE_LLAMA3, 1},
    {"falcon3", PRE_LLAMA3, 1}, {"falcon-h1", PRE_LLAMA3, 1}, {"pixtral", PRE_LLAMA3, 1},
    {"midm-2.0", PRE_LLAMA3, 1}, {"lfm2", PRE_LLAMA3, 1},
    {"dbrx", PRE_LLAMA3, 0}, {"smaug-bpe", PRE_LLAMA3, 0},
    {"deepseek-llm", PRE_DEEPSEEK_LLM, 0},
    {"deepseek-coder", PRE_DEEPSEEK_CODER, 0},
    {"falcon", PRE_FALCON, 0},
    {"gpt-2", PRE_GPT2, 0}, {"mpt", PRE_GPT2, 0}, {"phi-2", PRE_GPT2, 0},
    {"jina-es", PRE_GPT2, 0}, {"jina-de", PRE_GPT2, 0}, {"jina-v2-es", PRE_GPT2, 0},
    {"jina-v2-de", PRE_GPT2, 0}, {"gigachat", PRE_GPT2, 0}, {"a.x-4.0", PRE_GPT2, 0},
    {"mellum", PRE_GPT2, 0}, {"modern-bert", PRE_GPT2, 0}, {"olmo", PRE_GPT2, 0},
    {"jais", PRE_GPT2, 0}, {"trillion", PRE_GPT2, 0}, {"granite-docling", PRE_GPT2, 0},
    {"exaone4", PRE_GPT2, 0},
    {"qwen2", PRE_QWEN2, 0}, {"deepseek-r1-qwen", PRE_QWEN2, 0}, {"megrez", PRE_QWEN2, 0},
    {"stablelm2", PRE_QWEN2, 0}, {"hunyuan", PRE_QWEN2, 0}, {"kormo", PRE_QWEN2, 0},
    {"solar-open", PRE_QWEN2, 0},
    {"starcoder", PRE_STARCODER, 0}, {"refact", PRE_STARCODER, 0},
    {"command-r", PRE_STARCODER, 0}, {"smollm", PRE_STARCODER, 0},
    {"codeshell", PRE_STARCODER, 0}, {"exaone", PRE_STARCODER, 0},
    {"minerva-7b", PRE_STARCODER, 0}, {"mellum2", PRE_STARCODER, 0},
};

/* texts of end-of-turn tokens, in the order an EOT id is picked from them, and of the other
 * tokens that end generation (llama.cpp's lists) */
static const char *const EOT_TEXTS[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>",
    "<end_of_utterance>",
};
static const char *const EOG_TEXTS[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
    "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>",
};

/* ---- building -------------------------------------------------------------------------------- */

static fdy_status build_vocab(fdy_tokenizer *t, const fdy_gguf *g) {
    const fdy_value *tok = kv(g, "tokenizer.ggml.tokens");
    if (!tok) {
        return fdy_fail(FDY_ERR_FORMAT, "tokenizer: tokenizer.ggml.tokens is missing");
    }
    if (tok->type != FDY_GGUF_ARRAY || tok->elem_type != FDY_GGUF_STRING) {
        return fdy_fail(FDY_ERR_FORMAT, "tokenizer: tokenizer.ggml.tokens must be an array of "
                                        "strings");
    }
    if (tok->count == 0 || tok->count > INT32_MAX - 1) {
        return fdy_fail(FDY_ERR_FORMAT, "tokenizer: %llu tokens (1 to %d supported)",
                        (unsigned long long)tok->count, INT32_MAX - 1);
    }
    int32_t n = (int32_t)tok->count;
    const fdy_str *texts = (const fdy_str *)tok->v.data;

    const fdy_value *scores = kv(g, "tokenizer.ggml.scores");
    if (scores && (scores->type != FDY_GGUF_ARRAY || (scores->elem_type != FDY_GGUF_FLOAT32 &&
                                                      scores->elem_type != FDY_GGUF_INT32))) {
        return fdy_fail(FDY_ERR_FORMAT, "tokenizer: tokenizer.ggml.scores must be an array of "
                                        "float32");
    }
    if (scores && scores->count != tok->count) {
        return fdy_fail(FDY_ERR_FORMAT, "tokenizer: %llu scores for %d tokens",
                        (unsigned long long)scores->count, n);
    }
    const fdy_value *types = kv(g, "tokenizer.ggml.token_type");
    if (types && (types->type != FDY_GGUF_ARRAY || !is_int_type(types->elem_type))) {
        return fdy_fail(FDY_ERR_FORMAT, "tokenizer: tokenizer.ggml.token_type must be an array "
                                        "of integers");
    }
    if (types && types->count != tok->count) {
        return fdy_fail(FDY_ERR_FORMAT, "tokenizer: %llu token types for %d tokens",
                        (unsigned long long)types->count, n);
    }

    uint64_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        if (texts[i].len > UINT32_MAX || !fdy_add_ok(total, texts[i].len, &total)) {
            return fdy_fail(FDY_ERR_FORMAT, "tokenizer: token %d is too long", i);
        }
        if (!utf8_valid(texts[i].ptr, (size_t)texts[i].len)) {
            return fdy_fail(FDY_ERR_FORMAT, "tokenizer: token %d is not valid UTF-8", i);
        }
    }
    if (total > SIZE_MAX / 2 - 1) {
        return fdy_fail(FDY_ERR_NOMEM, "tokenizer: vocabulary too large");
    }
    t->n_vocab = n;
    t->pool = (char *)malloc((size_t)total * 2 + 1); /* texts, then pieces (never longer) */
    t->text_off = (uint64_t *)calloc((size_t)n, sizeof(uint64_t));
    t->text_len = (uint32_t *)calloc((size_t)n, sizeof(uint32_t));
    t->piece_off = (uint64_t *)calloc((size_t)n, sizeof(uint64_t));
    t->piece_len = (uint32_t *)calloc((size_t)n, sizeof(uint32_t));
    t->score = (float *)calloc((size_t)n, sizeof(float));
    t->attr = (uint32_t *)calloc((size_t)n, sizeof(uint32_t));
    uint64_t cap = 16;
    while (cap < (uint64_t)n * 2) {
        cap *= 2;
    }
    t->slots = (int32_t *)calloc((size_t)cap, sizeof(int32_t));
    t->mask = cap - 1;
    if (!t->pool || !t->text_off || !t->text_len || !t->piece_off || !t->piece_len ||
        !t->score || !t->attr || !t->slots) {
        return fdy_fail(FDY_ERR_NOMEM, "tokenizer: out of memory for %d tokens", n);
    }
    uint64_t off = 0;
    int n_empty = 0;
    for (int32_t i = 0; i < n; i++) {
        memcpy(t->pool + off, texts[i].ptr, (size_t)texts[i].len);
        t->text_off[i] = off;
        t->text_len[i] = (uint32_t)texts[i].len;
        off += texts[i].len;
        if (scores) {
            float s;
            if (scores->elem_type == FDY_GGUF_FLOAT32) {
                memcpy(&s, (const uint8_t *)scores->v.data + (size_t)i * 4, 4);
            } else {
                s = (float)array_int(scores, (uint64_t)i);
            }
            t->score[i] = isnan(s) ? -INFINITY : s; /* NaN would break the merge order */
        }
        uint32_t a = FDY_TOKEN_NORMAL;
        if (types) {
            switch (array_int(types, (uint64_t)i)) {
            case 1: a = FDY_TOKEN_NORMAL; break;
            case 2: a = FDY_TOKEN_UNKNOWN; break;
            case 3: a = FDY_TOKEN_CONTROL; break;
            case 4: a = FDY_TOKEN_USER_DEFINED; break;
            case 5: a = FDY_TOKEN_UNUSED; break;
            case 6: a = FDY_TOKEN_BYTE; break;
            default: a = FDY_TOKEN_UNDEFINED; break;
            }
        } else if (t->type == FDY_VOCAB_SPM && parse_byte_token(texts[i].ptr, texts[i].len) >= 0) {
            a = FDY_TOKEN_BYTE; /* no types in the file: <0xXX> pieces are byte tokens */
        }
        if ((a & FDY_TOKEN_BYTE) && parse_byte_token(texts[i].ptr, texts[i].len) < 0) {
            return fdy_fail(FDY_ERR_FORMAT, "tokenizer: token %d has the byte type but its text "
                                            "is not <0xXX>", i);
        }
        t->attr[i] = a;
        if (texts[i].len == 0) {
            n_empty++; /* kept, but never matched */
            continue;
        }
        uint64_t h = hash_bytes(texts[i].ptr, (size_t)texts[i].len) & t->mask;
        for (;;) {
            int32_t s = t->slots[h];
            if (s == 0) {
                t->slots[h] = i + 1;
                break;
            }
            if (t->text_len[s - 1] == texts[i].len &&
                memcmp(t->pool + t->text_off[s - 1], texts[i].ptr, (size_t)texts[i].len) == 0) {
                return fdy_fail(FDY_ERR_FORMAT, "tokenizer: duplicate token text at ids %d and %d",
                                s - 1, i);
            }
            h = (h + 1) & t->mask;
        }
    }
    if (n_empty) {
        warn(t, "%d empty token(s) in the vocabulary", n_empty);
    }
    return FDY_OK;
}

static fdy_status build_merges(fdy_tokenizer *t, const fdy_gguf *g) {
    const fdy_value *m = kv(g, "tokenizer.ggml.merges");
    if (!m) {
        return fdy_fail(FDY_ERR_FORMAT, "tokenizer: a gpt2 tokenizer needs tokenizer.ggml.merges");
    }
    if (m->type != FDY_GGUF_ARRAY || m->elem_type != FDY_GGUF_STRING) {
        return fdy_fail(FDY_ERR_FORMAT, "tokenizer: tokenizer.ggml.merges must be an array of "
                                        "strings");
    }
    if (m->count > INT32_MAX) {
        return fdy_fail(FDY_ERR_FORMAT, "tokenizer: too many merges");
    }
    uint64_t cap = 16;
    while (cap < m->count * 2) {
        cap *= 2;
    }
    t->merges = (merge_slot *)malloc((size_t)cap * sizeof(merge_slot));
    if (!t->merges) {
        return fdy_fail(FDY_ERR_NOMEM, "tokenizer: out of memory for the merges");
    }
    for (uint64_t i = 0; i < cap; i++) {
        t->merges[i].key = UINT64_MAX;
    }
    t->merge_mask = cap - 1;
    const fdy_str *ms = (const fdy_str *)m->v.data;
    bbuf cat = {0};
    fdy_status st = FDY_OK;
    for (uint64_t i = 0; i < m->count; i++) {
        const char *p = ms[i].ptr;
        size_t n = (size_t)ms[i].len;
        const char *sp = n > 1 ? (const char *)memchr(p + 1, ' ', n - 1) : NULL;
        if (!sp) {
            st = fdy_fail(FDY_ERR_FORMAT, "tokenizer: merge %llu is not two tokens separated by "
                                          "a space", (unsigned long long)i);
            break;
        }
        size_t nl = (size_t)(sp - p), nr = n - nl - 1;
        int32_t l = find_id(t, p, nl), r = find_id(t, sp + 1, nr);
        if (l < 0 || r < 0) {
            st = fdy_fail(FDY_ERR_FORMAT, "tokenizer: merge %llu names a token that is not in the "
                                          "vocabulary", (unsigned long long)i);
            break;
        }
        cat.n = 0;
        if (!bbuf_put(&cat, p, nl) || !bbuf_put(&cat, sp + 1, nr)) {
            st = fdy_fail(FDY_ERR_NOMEM, "tokenizer: out of memory");
            break;
        }
        int32_t res = find_id(t, cat.p, cat.n);
        if (res < 0) {
            st = fdy_fail(FDY_ERR_FORMAT, "tokenizer: merge %llu makes a token that is not in "
                                          "the vocabulary", (unsigned long long)i);
            break;
        }
        uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
        uint64_t h = hash_u64(key) & t->merge_mask;
        while (t->merges[h].key != UINT64_MAX && t->merges[h].key != key) {
            h = (h + 1) & t->merge_mask;
        }
        if (t->merges[h].key == UINT64_MAX) { /* a repeated merge keeps its first rank */
            t->merges[h].key = key;
            t->merges[h].rank = (int32_t)i;
            t->merges[h].result = res;
        }
    }
    free(cat.p);
    return st;
}

static fdy_status build_specials(fdy_tokenizer *t) {
    int32_t n = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        n += (t->attr[i] & SPECIALISH) && t->text_len[i] > 0;
    }
    t->specials = (int32_t *)malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    if (!t->specials) {
        return fdy_fail(FDY_ERR_NOMEM, "tokenizer: out of memory");
    }
    n = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if ((t->attr[i] & SPECIALISH) && t->text_len[i] > 0) {
            t->specials[n++] = i;
        }
    }
    t->n_specials = n;
    /* longest text first, then by id: insertion sort on runs is fine for these sizes, but the
     * count can be large (reserved tokens), so merge sort by hand */
    int32_t *tmp = (int32_t *)malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    if (!tmp) {
        return fdy_fail(FDY_ERR_NOMEM, "tokenizer: out of memory");
    }
    for (int32_t w = 1; w < n; w *= 2) {
        for (int32_t lo = 0; lo < n; lo += 2 * w) {
            int32_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            int32_t a = lo, b = mid, k = lo;
            while (a < mid || b < hi) {
                bool take_a;
                if (a >= mid) {
                    take_a = false;
                } else if (b >= hi) {
                    take_a = true;
                } else {
                    uint32_t la = t->text_len[t->specials[a]], lb = t->text_len[t->specials[b]];
                    take_a = la > lb || (la == lb && t->specials[a] < t->specials[b]);
                }
                tmp[k++] = take_a ? t->specials[a++] : t->specials[b++];
            }
        }
        memcpy(t->specials, tmp, (size_t)n * sizeof(int32_t));
    }
    free(tmp);

    /* a trie of their texts finds which of them occur in a text in one pass */
    uint64_t nodes = 1;
    for (int32_t k = 0; k < n; k++) {
        nodes += t->text_len[t->specials[k]];
    }
    if (nodes > INT32_MAX) {
        return fdy_fail(FDY_ERR_FORMAT, "tokenizer: special token texts too long");
    }
    t->trie = (trie_node *)malloc((size_t)nodes * sizeof(trie_node));
    if (!t->trie) {
        return fdy_fail(FDY_ERR_NOMEM, "tokenizer: out of memory");
    }
    for (int b = 0; b < 256; b++) {
        t->trie_root[b] = -1;
    }
    t->trie[0] = (trie_node){-1, -1, -1, 0};
    t->n_trie = 1;
    for (int32_t k = 0; k < n; k++) {
        fdy_str s = text_of(t, t->specials[k]);
        int32_t node = 0;
        for (uint64_t j = 0; j < s.len; j++) {
            uint8_t b = (uint8_t)s.ptr[j];
            int32_t c = node == 0 ? t->trie_root[b] : t->trie[node].child;
            if (node != 0) {
                while (c >= 0 && t->trie[c].byte != b) {
                    c = t->trie[c].sibling;
                }
            }
            if (c < 0) {
                c = t->n_trie++;
                t->trie[c] = (trie_node){-1, -1, -1, b};
                if (node == 0) {
                    t->trie_root[b] = c;
                } else {
                    t->trie[c].sibling = t->trie[node].child;
                    t->trie[node].child = c;
                }
            }
            node = c;
        }
        t->trie[node].special = k;
    }
    return FDY_OK;
}

/* the bytes each token stands for, rendered once */
static void build_pieces(fdy_tokenizer *t) {
    uint64_t off = t->text_off[t->n_vocab - 1] + t->text_len[t->n_vocab - 1];
    static const char SPM_SPACE[3] = {'\xe2', '\x96', '\x81'}; /* U+2581 */
    uint32_t byte_char[256];
    int16_t char_byte[GPT2_N_CHARS];
    gpt2_tables(byte_char, char_byte);
    for (int32_t i = 0; i < t->n_vocab; i++) {
        fdy_str s = text_of(t, i);
        uint32_t a = t->attr[i];
        char *dst = t->pool + off;
        size_t n = 0;
        if (a & SPECIALISH) {
            memcpy(dst, s.ptr, (size_t)s.len);
            n = (size_t)s.len;
        } else if (a & FDY_TOKEN_NORMAL) {
            if (t->type == FDY_VOCAB_SPM) {
                for (size_t j = 0; j < s.len;) {
                    if (j + 3 <= s.len && memcmp(s.ptr + j, SPM_SPACE, 3) == 0) {
                        dst[n++] = ' ';
                        j += 3;
                    } else {
                        dst[n++] = s.ptr[j++];
                    }
                }
            } else { /* GPT-2 characters -> bytes; other characters stay as they are */
                for (size_t j = 0; j < s.len;) {
                    uint32_t c;
                    size_t k = utf8_decode((const uint8_t *)s.ptr + j, (size_t)s.len - j, &c);
                    int b = c < GPT2_N_CHARS ? char_byte[c] : -1;
                    if (b >= 0) {
                        dst[n++] = (char)b;
                    } else {
                        memcpy(dst + n, s.ptr + j, k);
                        n += k;
                    }
                    j += k;
                }
            }
        } else if (a & FDY_TOKEN_BYTE) {
            dst[n++] = (char)parse_byte_token(s.ptr, (size_t)s.len);
        }
        t->piece_off[i] = off;
        t->piece_len[i] = (uint32_t)n;
        off += n;
    }
}

fdy_status fdy_tokenizer_create(const fdy_gguf *g, fdy_tokenizer **out) {
    if (!g || !out) {
        return fdy_fail(FDY_ERR_INVALID, "fdy_tokenizer_create: NULL argument");
    }
    *out = NULL;
    const fdy_value *model = kv(g, "tokenizer.ggml.model");
    if (!model) {
        return fdy_fail(FDY_ERR_FORMAT, "no tokenizer in this file (tokenizer.ggml.model is "
                                        "missing)");
    }
    if (model->type != FDY_GGUF_STRING) {
        return fdy_fail(FDY_ERR_FORMAT, "tokenizer: tokenizer.ggml.model must be a string");
    }
    int32_t type;
    if (str_is(model->v.str, "llama")) {
        type = FDY_VOCAB_SPM;
    } else if (str_is(model->v.str, "gpt2")) {
        type = FDY_VOCAB_BPE;
    } else {
        int n = model->v.str.len > 64 ? 64 : (int)model->v.str.len;
        return fdy_fail(FDY_ERR_UNSUPPORTED, "tokenizer model '%.*s' is not supported (llama, "
                                             "gpt2)", n, model->v.str.ptr);
    }
    fdy_tokenizer *t = (fdy_tokenizer *)calloc(1, sizeof *t);
    if (!t) {
        return fdy_fail(FDY_ERR_NOMEM, "tokenizer: out of memory");
    }
    t->type = type;
    fdy_status st = FDY_OK;
    if (!bbuf_put(&t->warnings, "", 1)) {
        st = fdy_fail(FDY_ERR_NOMEM, "tokenizer: out of memory");
        goto fail;
    }

    /* defaults by model, then the pre-tokenizer, then what the metadata says */
    for (int i = 0; i < 7; i++) {
        t->special_id[i] = -1;
    }
    if (type == FDY_VOCAB_SPM) {
        t->pre = PRE_NONE;
        t->special_id[FDY_SPECIAL_BOS] = 1;
        t->special_id[FDY_SPECIAL_EOS] = 2;
        t->special_id[FDY_SPECIAL_UNK] = 0;
        t->add_bos = 1;
        t->add_space_prefix = 1;
    } else {
        const fdy_value *pre = kv(g, "tokenizer.ggml.pre");
        if (pre && pre->type != FDY_GGUF_STRING) {
            st = fdy_fail(FDY_ERR_FORMAT, "tokenizer: tokenizer.ggml.pre must be a string");
            goto fail;
        }
        if (!pre) {
            t->pre = PRE_DEFAULT;
            warn(t, "tokenizer.ggml.pre is missing: using llama.cpp's 'default' pre-tokenizer "
                    "(the text may be split differently from the original tokenizer)");
        } else {
            t->pre = -1;
            for (size_t i = 0; i < sizeof PRE_NAMES / sizeof PRE_NAMES[0]; i++) {
                if (str_is(pre->v.str, PRE_NAMES[i].name)) {
                    t->pre = PRE_NAMES[i].pre;
                    t->ignore_merges = t->add_bos = PRE_NAMES[i].llama3_defaults;
                    break;
                }
            }
            if (t->pre < 0) {
                int n = pre->v.str.len > 64 ? 64 : (int)pre->v.str.len;
                t->pre = PRE_GPT2;
                warn(t, "unknown pre-tokenizer '%.*s': using the GPT-2 rules (the text may be "
                        "split differently from the original tokenizer)", n, pre->v.str.ptr);
            }
        }
    }
    if ((st = build_vocab(t, g)) != FDY_OK) {
        goto fail;
    }
    if (type == FDY_VOCAB_BPE && (st = build_merges(t, g)) != FDY_OK) {
        goto fail;
    }

    static const char *const SPECIAL_KEYS[7] = {
        "tokenizer.ggml.bos_token_id",     "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.seperator_token_id", "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    };
    for (int i = 0; i < 7; i++) {
        if (t->special_id[i] >= t->n_vocab) {
            t->special_id[i] = -1; /* a default outside a small vocabulary */
        }
        int64_t v = 0;
        int present;
        if ((st = get_int(g, SPECIAL_KEYS[i], &v, &present)) != FDY_OK) {
            goto fail;
        }
        if (!present) {
            continue;
        }
        if (v >= 0 && v < t->n_vocab) {
            t->special_id[i] = (int32_t)v;
        } else if (v != -1 && v != 0xFFFFFFFFll) { /* -1 and ~0u mean "none": keep the default */
            warn(t, "%s = %lld is not a token id (vocabulary of %d): using %d", SPECIAL_KEYS[i],
                 (long long)v, t->n_vocab, t->special_id[i]);
        }
    }
    if ((st = get_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos)) != FDY_OK ||
        (st = get_bool(g, "tokenizer.ggml.add_eos_token", &t->add_eos)) != FDY_OK) {
        goto fail;
    }
    if (type == FDY_VOCAB_SPM &&
        (st = get_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix)) != FDY_OK) {
        goto fail;
    }
    if (t->add_bos && t->special_id[FDY_SPECIAL_BOS] < 0) {
        st = fdy_fail(FDY_ERR_FORMAT, "tokenizer: BOS is to be added but there is no BOS token");
        goto fail;
    }
    if (t->add_eos && t->special_id[FDY_SPECIAL_EOS] < 0) {
        st = fdy_fail(FDY_ERR_FORMAT, "tokenizer: EOS is to be added but there is no EOS token");
        goto fail;
    }

    /* end-of-turn and end-of-generation tokens found by their text become control tokens */
    if (t->special_id[FDY_SPECIAL_EOT] < 0) {
        for (size_t i = 0; i < sizeof EOT_TEXTS / sizeof EOT_TEXTS[0]; i++) {
            int32_t id = find_id(t, EOT_TEXTS[i], strlen(EOT_TEXTS[i]));
            if (id >= 0) {
                t->special_id[FDY_SPECIAL_EOT] = id;
                t->attr[id] |= FDY_TOKEN_CONTROL;
                break;
            }
        }
    }
    if (t->special_id[FDY_SPECIAL_EOM] < 0) {
        int32_t id = find_id(t, "<|eom_id|>", 10);
        if (id >= 0) {
            t->special_id[FDY_SPECIAL_EOM] = id;
            t->attr[id] |= FDY_TOKEN_CONTROL;
        }
    }
    {
        size_t n_texts = sizeof EOG_TEXTS / sizeof EOG_TEXTS[0];
        t->eog = (int32_t *)malloc((n_texts + 3) * sizeof(int32_t));
        if (!t->eog) {
            st = fdy_fail(FDY_ERR_NOMEM, "tokenizer: out of memory");
            goto fail;
        }
        int32_t cand[3 + sizeof EOG_TEXTS / sizeof EOG_TEXTS[0]];
        size_t nc = 0;
        cand[nc++] = t->special_id[FDY_SPECIAL_EOS];
        cand[nc++] = t->special_id[FDY_SPECIAL_EOT];
        cand[nc++] = t->special_id[FDY_SPECIAL_EOM];
        for (size_t i = 0; i < n_texts; i++) {
            int32_t id = find_id(t, EOG_TEXTS[i], strlen(EOG_TEXTS[i]));
            if (id >= 0) {
                t->attr[id] |= FDY_TOKEN_CONTROL;
            }
            cand[nc++] = id;
        }
        for (size_t i = 0; i < nc; i++) { /* sorted, unique */
            int32_t id = cand[i];
            if (id < 0) {
                continue;
            }
            int32_t k = t->n_eog;
            bool dup = false;
            for (int32_t j = 0; j < t->n_eog; j++) {
                dup |= t->eog[j] == id;
            }
            if (dup) {
                continue;
            }
            while (k > 0 && t->eog[k - 1] > id) {
                t->eog[k] = t->eog[k - 1];
                k--;
            }
            t->eog[k] = id;
            t->n_eog++;
        }
    }

    /* byte tables */
    uint32_t byte_char[256];
    int16_t char_byte[GPT2_N_CHARS];
    gpt2_tables(byte_char, char_byte);
    for (int b = 0; b < 256; b++) {
        t->byte_tok[b] = -1;
        if (type == FDY_VOCAB_BPE) {
            uint8_t u[4];
            size_t k = utf8_encode(byte_char[b], u);
            memcpy(t->byte_char[b], u, k);
            t->byte_char_len[b] = (uint8_t)k;
            t->byte_tok[b] = find_id(t, (const char *)u, k);
        } else {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", b);
            int32_t id = find_id(t, name, 6);
            if (id < 0) {
                char one = (char)b;
                id = find_id(t, &one, 1);
            }
            t->byte_tok[b] = id >= 0 ? id : t->special_id[FDY_SPECIAL_UNK];
        }
    }
    if ((st = build_specials(t)) != FDY_OK) {
        goto fail;
    }
    build_pieces(t);
    *out = t;
    return FDY_OK;
fail:
    fdy_tokenizer_free(t);
    return st;
}

/* ---- accessors ------------------------------------------------------------------------------ */

const char *fdy_tokenizer_warnings(const fdy_tokenizer *t) { return t->warnings.p; }
int32_t fdy_tokenizer_vocab_type(const fdy_tokenizer *t) { return t->type; }
const char *fdy_tokenizer_pre(const fdy_tokenizer *t) { return PRE_RULE_NAMES[t->pre]; }
int32_t fdy_tokenizer_n_vocab(const fdy_tokenizer *t) { return t->n_vocab; }
int fdy_tokenizer_add_bos(const fdy_tokenizer *t) { return t->add_bos; }
int fdy_tokenizer_add_eos(const fdy_tokenizer *t) { return t->add_eos; }
int fdy_tokenizer_add_space_prefix(const fdy_tokenizer *t) { return t->add_space_prefix; }
int32_t fdy_tokenizer_n_eog(const fdy_tokenizer *t) { return t->n_eog; }
const int32_t *fdy_tokenizer_eog(const fdy_tokenizer *t) { return t->eog; }

int32_t fdy_tokenizer_special(const fdy_tokenizer *t, int32_t which) {
    return which >= 0 && which < 7 ? t->special_id[which] : -1;
}

uint32_t fdy_tokenizer_token_attr(const fdy_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab ? t->attr[id] : 0;
}

fdy_str fdy_tokenizer_token_text(const fdy_tokenizer *t, int32_t id) {
    fdy_str none = {"", 0};
    return id >= 0 && id < t->n_vocab ? text_of(t, id) : none;
}

float fdy_tokenizer_token_score(const fdy_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab ? t->score[id] : 0.0f;
}

int32_t fdy_tokenizer_find(const fdy_tokenizer *t, const char *text, size_t len) {
    return text || !len ? find_id(t, text ? text : "", len) : -1;
}

/* ---- merge queue ------------------------------------------------------------------------------
 * A binary min-heap of candidate pairs: SPM keys are -score, BPE keys the merge rank; ties go
 * to the leftmost pair.  Doubles hold both exactly. */

typedef struct bigram {
    double key;
    int64_t left, right;
    int64_t aux; /* SPM: joined length; BPE: the right symbol's id when queued */
} bigram;

typedef struct heap {
    bigram *p;
    size_t n, cap;
} heap;

static bool bg_before(const bigram *a, const bigram *b) {
    return a->key < b->key || (a->key == b->key && a->left < b->left);
}

static bool heap_push(heap *h, bigram x) {
    if (!grow((void **)&h->p, &h->cap, h->n + 1, sizeof *h->p)) {
        return false;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!bg_before(&x, &h->p[parent])) {
            break;
        }
        h->p[i] = h->p[parent];
        i = parent;
    }
    h->p[i] = x;
    return true;
}

static bigram heap_pop(heap *h) {
    bigram top = h->p[0], x = h->p[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) {
            break;
        }
        if (c + 1 < h->n && bg_before(&h->p[c + 1], &h->p[c])) {
            c++;
        }
        if (!bg_before(&h->p[c], &x)) {
            break;
        }
        h->p[i] = h->p[c];
        i = c;
    }
    if (h->n) {
        h->p[i] = x;
    }
    return top;
}

typedef struct sym {
    int64_t start, n;  /* bytes of the text; n = 0 once merged into the left neighbour */
    int64_t prev, next;
    int32_t id;        /* BPE: the symbol's token */
} sym;

/* scratch of one encode call */
typedef struct work {
    ivec out;
    heap q;
    sym *syms;
    size_t syms_cap;
    bbuf text;     /* SPM: escaped text; BPE: text with invalid bytes replaced */
    bbuf word;     /* BPE: a word in GPT-2 characters */
    uint32_t *cps; /* BPE: code points (n) */
    uint8_t *fl;   /* BPE: their flags (n) */
    size_t *offs;  /* BPE: byte offset of each code point in text (n + 1) */
    size_t cps_cap;
    zvec cuts, cuts2; /* pre-tokenizer fragment ends */
} work;

static void work_free(work *w) {
    free(w->out.p);
    free(w->q.p);
    free(w->syms);
    free(w->text.p);
    free(w->word.p);
    free(w->cps);
    free(w->fl);
    free(w->offs);
    free(w->cuts.p);
    free(w->cuts2.p);
}

/* ---- SPM ------------------------------------------------------------------------------------ */

static bool spm_try_pair(const fdy_tokenizer *t, work *w, int64_t l, int64_t r) {
    if (l < 0 || r < 0) {
        return true;
    }
    const sym *a = &w->syms[l], *b = &w->syms[r];
    int32_t id = find_id(t, w->text.p + a->start, (size_t)(a->n + b->n));
    if (id < 0) {
        return true;
    }
    bigram g = {-(double)t->score[id], l, r, a->n + b->n};
    return heap_push(&w->q, g);
}

/* the escaped text in w->text -> ids */
static bool spm_tokenize(const fdy_tokenizer *t, work *w) {
    const char *s = w->text.p;
    int64_t len = (int64_t)w->text.n, n = 0;
    if (!len) {
        return true;
    }
    if (!grow((void **)&w->syms, &w->syms_cap, (size_t)len, sizeof(sym))) {
        return false;
    }
    for (int64_t off = 0; off < len; n++) { /* one symbol per character (lead-byte length) */
        int64_t k = (int64_t)utf8_len_lead((uint8_t)s[off]);
        if (k > len - off) {
            k = len - off;
        }
        /* a malformed sequence ends before the first byte that cannot continue it (llama.cpp
         * would swallow that byte too, and an escaped space in it would come back as U+2581):
         * the same symbols for valid UTF-8, every byte kept for invalid */
        for (int64_t j = 1; j < k; j++) {
            if (((uint8_t)s[off + j] & 0xC0) != 0x80) {
                k = j;
                break;
            }
        }
        w->syms[n] = (sym){off, k, n - 1, off + k == len ? -1 : n + 1, -1};
        off += k;
    }
    w->q.n = 0;
    for (int64_t i = 1; i < n; i++) {
        if (!spm_try_pair(t, w, i - 1, i)) {
            return false;
        }
    }
    while (w->q.n) {
        bigram g = heap_pop(&w->q);
        sym *a = &w->syms[g.left], *b = &w->syms[g.right];
        if (a->n == 0 || b->n == 0 || a->n + b->n != g.aux) {
            continue; /* one side changed since the pair was queued */
        }
        a->n += b->n;
        b->n = 0;
        a->next = b->next;
        if (b->next >= 0) {
            w->syms[b->next].prev = g.left;
        }
        if (!spm_try_pair(t, w, a->prev, g.left) || !spm_try_pair(t, w, g.left, a->next)) {
            return false;
        }
    }
    for (int64_t i = 0; i != -1; i = w->syms[i].next) {
        const sym *y = &w->syms[i];
        int32_t id = find_id(t, s + y->start, (size_t)y->n);
        if (id >= 0) {
            if (!ivec_push(&w->out, id)) {
                return false;
            }
            continue;
        }
        for (int64_t j = 0; j < y->n; j++) { /* byte fallback */
            int32_t b = t->byte_tok[(uint8_t)s[y->start + j]];
            if (b >= 0 && !ivec_push(&w->out, b)) {
                return false;
            }
        }
    }
    return true;
}

static bool spm_fragment(const fdy_tokenizer *t, work *w, const char *p, size_t n, bool prefix) {
    static const char SPACE[3] = {'\xe2', '\x96', '\x81'};
    w->text.n = 0;
    if (prefix && !bbuf_put(&w->text, SPACE, 3)) {
        return false;
    }
    size_t run = 0; /* copy runs without spaces at once */
    for (size_t i = 0; i <= n; i++) {
        if (i == n || p[i] == ' ') {
            if (!bbuf_put(&w->text, p + run, i - run) || (i < n && !bbuf_put(&w->text, SPACE, 3))) {
                return false;
            }
            run = i + 1;
        }
    }
    return spm_tokenize(t, w);
}

/* ---- pre-tokenizers ---------------------------------------------------------------------------
 * Each regex of llama.cpp's lists is a matcher: the length (in code points) of the match that
 * starts exactly at p within the fragment [.., end), following the regex's leftmost-first
 * alternation and greedy quantifiers, or 0 (and how far the search may skip ahead).  The
 * driver finds matches left to right like std::regex_iterator: the stretches between matches
 * become pieces too.  \s is White_Space; \p{X} the general category class. */

typedef struct pctx {
    const uint32_t *cp;
    const uint8_t *fl;
    size_t end;
} pctx;

typedef size_t (*match_fn)(const pctx *c, size_t p, size_t *skip);

static inline unsigned F(const pctx *c, size_t i) { return i < c->end ? c->fl[i] : 0u; }
static inline bool is_l(const pctx *c, size_t i) { return F(c, i) & FDY_UC_L; }
static inline bool is_n(const pctx *c, size_t i) { return F(c, i) & FDY_UC_N; }
static inline bool is_w(const pctx *c, size_t i) { return F(c, i) & FDY_UC_W; }
static inline bool is_p(const pctx *c, size_t i) { return F(c, i) & FDY_UC_P; }
/* [^\s\p{L}\p{N}] */
static inline bool is_o(const pctx *c, size_t i) {
    return i < c->end && !(c->fl[i] & (FDY_UC_W | FDY_UC_L | FDY_UC_N));
}
static inline uint32_t CP(const pctx *c, size_t i) { return i < c->end ? c->cp[i] : 0xFFFFFFFFu; }

static size_t run_of(const pctx *c, size_t i, bool (*pred)(const pctx *, size_t)) {
    size_t s = i;
    while (pred(c, i)) {
        i++;
    }
    return i - s;
}

static size_t run_crlf(const pctx *c, size_t i) {
    size_t s = i;
    while (CP(c, i) == '\r' || CP(c, i) == '\n') {
        i++;
    }
    return i - s;
}

/* 's|'t|'re|'ve|'m|'ll|'d, optionally case-insensitive */
static size_t contraction(const pctx *c, size_t p, bool fold) {
    if (c->cp[p] != '\'' || p + 1 >= c->end) {
        return 0;
    }
    uint32_t a = c->cp[p + 1], b = p + 2 < c->end ? c->cp[p + 2] : 0;
    if (fold) {
        a = a < 128 && a >= 'A' && a <= 'Z' ? a + 32 : a;
        b = b < 128 && b >= 'A' && b <= 'Z' ? b + 32 : b;
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') {
        return 2;
    }
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) {
        return 3;
    }
    return 0;
}

/* \s+(?!\S)|\s+ at a run of n white spaces */
static size_t trailing_space(const pctx *c, size_t p, size_t n) {
    return (p + n < c->end && n > 1) ? n - 1 : n;
}

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static size_t m_gpt2(const pctx *c, size_t p, size_t *skip) {
    size_t k = contraction(c, p, false);
    if (k) {
        return k;
    }
    size_t sp = c->cp[p] == ' ';
    if (sp && is_l(c, p + 1)) {
        return 1 + run_of(c, p + 1, is_l);
    }
    if (is_l(c, p)) {
        return run_of(c, p, is_l);
    }
    if (sp && is_n(c, p + 1)) {
        return 1 + run_of(c, p + 1, is_n);
    }
    if (is_n(c, p)) {
        return run_of(c, p, is_n);
    }
    if (sp && is_o(c, p + 1)) {
        return 1 + run_of(c, p + 1, is_o);
    }
    if (is_o(c, p)) {
        return run_of(c, p, is_o);
    }
    size_t n = run_of(c, p, is_w);
    return n ? trailing_space(c, p, n) : 0;
}

/* Llama 3 (digits 3) and Qwen2 (digits 1):
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,d}| ?[^\s\p{L}\p{N}]+[\r\n]*|
 * \s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t m_llama3_like(const pctx *c, size_t p, size_t max_digits) {
    size_t k = contraction(c, p, true);
    if (k) {
        return k;
    }
    uint32_t ch = c->cp[p];
    if (is_l(c, p)) {
        return run_of(c, p, is_l);
    }
    if (ch != '\r' && ch != '\n' && !is_n(c, p) && is_l(c, p + 1)) {
        return 1 + run_of(c, p + 1, is_l);
    }
    if (is_n(c, p)) {
        size_t n = run_of(c, p, is_n);
        return n < max_digits ? n : max_digits;
    }
    if (ch == ' ' && is_o(c, p + 1)) {
        size_t q = p + 1 + run_of(c, p + 1, is_o);
        return q + run_crlf(c, q) - p;
    }
    if (is_o(c, p)) {
        size_t q = p + run_of(c, p, is_o);
        return q + run_crlf(c, q) - p;
    }
    size_t n = 0, last_nl = 0;
    while (is_w(c, p + n)) {
        if (c->cp[p + n] == '\r' || c->cp[p + n] == '\n') {
            last_nl = n + 1;
        }
        n++;
    }
    if (last_nl) {
        return last_nl;
    }
    return n ? trailing_space(c, p, n) : 0;
}

static size_t m_llama3(const pctx *c, size_t p, size_t *skip) { return m_llama3_like(c, p, 3); }
static size_t m_qwen2(const pctx *c, size_t p, size_t *skip) { return m_llama3_like(c, p, 1); }

/* \p{N} */
static size_t m_digit(const pctx *c, size_t p, size_t *skip) { return is_n(c, p) ? 1 : 0; }

/* \p{N}+ */
static size_t m_digits(const pctx *c, size_t p, size_t *skip) { return run_of(c, p, is_n); }

/* [0-9][0-9][0-9] */
static size_t m_ascii_digits3(const pctx *c, size_t p, size_t *skip) {
    for (size_t i = 0; i < 3; i++) {
        uint32_t ch = CP(c, p + i);
        if (ch < '0' || ch > '9') {
            return 0;
        }
    }
    return 3;
}

/* [\p{P}\$\+<=>\^~\|]+ and, for Falcon, with ` too */
static bool is_punct_default(const pctx *c, size_t i) {
    uint32_t ch = CP(c, i);
    return is_p(c, i) || ch == '$' || ch == '+' || ch == '<' || ch == '=' || ch == '>' ||
           ch == '^' || ch == '~' || ch == '|';
}
static bool is_punct_falcon(const pctx *c, size_t i) {
    return is_punct_default(c, i) || CP(c, i) == '`';
}
static size_t m_punct_default(const pctx *c, size_t p, size_t *skip) {
    return run_of(c, p, is_punct_default);
}
static size_t m_punct_falcon(const pctx *c, size_t p, size_t *skip) {
    return run_of(c, p, is_punct_falcon);
}

/* [\r\n] */
static size_t m_crlf(const pctx *c, size_t p, size_t *skip) {
    return c->cp[p] == '\r' || c->cp[p] == '\n';
}

/* \s?X+ */
static size_t space_then_run(const pctx *c, size_t p, bool (*pred)(const pctx *, size_t)) {
    if (is_w(c, p) && pred(c, p + 1)) {
        return 1 + run_of(c, p + 1, pred);
    }
    return run_of(c, p, pred);
}

/* DeepSeek Coder: \s?\p{L}+ and \s?\p{P}+ */
static size_t m_space_letters(const pctx *c, size_t p, size_t *skip) {
    return space_then_run(c, p, is_l);
}
static size_t m_space_punct(const pctx *c, size_t p, size_t *skip) {
    return space_then_run(c, p, is_p);
}

/* llama.cpp runs the next regexes on code points with non-ASCII white space replaced by
 * U+000B, so white space never belongs to their character classes */

/* [一-龥ࠀ-一가-퟿]+ : U+0800..U+9FA5 and U+AC00..U+D7FF */
static bool is_cjk(const pctx *c, size_t i) {
    uint32_t ch = CP(c, i);
    return !is_w(c, i) && ((ch >= 0x0800 && ch <= 0x9FA5) || (ch >= 0xAC00 && ch <= 0xD7FF));
}
static size_t m_cjk(const pctx *c, size_t p, size_t *skip) { return run_of(c, p, is_cjk); }

/* DeepSeek LLM: \s?[A-Za-zµÀ-ÖØ-öø-ƺ...]+ */
static bool is_ds_letter(const pctx *c, size_t i) {
    return i < c->end && !is_w(c, i) && uc_ds_letter(c->cp[i]);
}
static size_t m_ds_letters(const pctx *c, size_t p, size_t *skip) {
    return space_then_run(c, p, is_ds_letter);
}

/* DeepSeek LLM: \s?[!-/:-~！-／：-～‘-‟　-。]+ */
static bool is_ds_punct(const pctx *c, size_t i) {
    uint32_t ch = CP(c, i);
    return !is_w(c, i) && ((ch >= 0x21 && ch <= 0x2F) || (ch >= 0x3A && ch <= 0x7E) ||
                           (ch >= 0xFF01 && ch <= 0xFF0F) || (ch >= 0xFF1A && ch <= 0xFF5E) ||
                           (ch >= 0x2018 && ch <= 0x201F) || (ch >= 0x3000 && ch <= 0x3002));
}
static size_t m_ds_punct(const pctx *c, size_t p, size_t *skip) {
    return space_then_run(c, p, is_ds_punct);
}

/* \s+$ */
static size_t m_space_at_end(const pctx *c, size_t p, size_t *skip) {
    size_t n = run_of(c, p, is_w);
    if (n && p + n == c->end) {
        return n;
    }
    *skip = n ? n : 1; /* no later start inside this run can reach the end either */
    return 0;
}

typedef struct pre_rules {
    match_fn m[6];
    int n;
} pre_rules;

/* llama.cpp's regex lists, applied one after the other, each to every piece of the last */
static const pre_rules PRE_RULES[] = {
    [PRE_NONE] = {{NULL}, 0},
    [PRE_DEFAULT] = {{m_punct_default, m_gpt2, m_digits, m_ascii_digits3}, 4},
    [PRE_GPT2] = {{m_gpt2}, 1},
    [PRE_LLAMA3] = {{m_llama3}, 1},
    [PRE_QWEN2] = {{m_qwen2}, 1},
    [PRE_STARCODER] = {{m_digit, m_gpt2}, 2},
    [PRE_FALCON] = {{m_punct_falcon, m_gpt2, m_ascii_digits3}, 3},
    [PRE_DEEPSEEK_LLM] = {{m_crlf, m_ds_letters, m_ds_punct, m_space_at_end, m_cjk, m_digits},
                          6},
    [PRE_DEEPSEEK_CODER] = {{m_crlf, m_space_letters, m_space_punct, m_cjk, m_digit}, 5},
};

/* split every piece ending at in->p[..] (code point indices) at the matches of m */
static bool split_pass(pctx *c, match_fn m, const zvec *in, zvec *out) {
    out->n = 0;
    size_t start = 0;
    for (size_t f = 0; f < in->n; f++) {
        size_t end = in->p[f], gap = start, p = start;
        c->end = end;
        while (p < end) {
            size_t skip = 1, k = m(c, p, &skip);
            if (k) {
                if ((gap < p && !zvec_push(out, p)) || !zvec_push(out, p + k)) {
                    return false;
                }
                p += k;
                gap = p;
            } else {
                p += skip;
            }
        }
        if (gap < end && !zvec_push(out, end)) {
            return false;
        }
        start = end;
    }
    return true;
}

/* ---- BPE ------------------------------------------------------------------------------------ */

static bool bpe_try_pair(const fdy_tokenizer *t, work *w, int64_t l, int64_t r) {
    if (l < 0 || r < 0 || w->syms[l].id < 0 || w->syms[r].id < 0) {
        return true;
    }
    const merge_slot *s = find_merge(t, w->syms[l].id, w->syms[r].id);
    if (!s) {
        return true;
    }
    bigram g = {(double)s->rank, l, r, w->syms[r].id};
    return heap_push(&w->q, g);
}

/* one pre-tokenized word (bytes of w->text) -> ids */
static bool bpe_word(const fdy_tokenizer *t, work *w, size_t b0, size_t b1) {
    const uint8_t *s = (const uint8_t *)w->text.p;
    int64_t n = (int64_t)(b1 - b0);
    if (t->ignore_merges) { /* the whole word is a token: take it as it is */
        w->word.n = 0;
        for (size_t i = b0; i < b1; i++) {
            if (!bbuf_put(&w->word, t->byte_char[s[i]], t->byte_char_len[s[i]])) {
                return false;
            }
        }
        int32_t id = find_id(t, w->word.p, w->word.n);
        if (id >= 0) {
            return ivec_push(&w->out, id);
        }
    }
    if (!grow((void **)&w->syms, &w->syms_cap, (size_t)n, sizeof(sym))) {
        return false;
    }
    for (int64_t i = 0; i < n; i++) { /* one symbol per byte: its GPT-2 character */
        w->syms[i] = (sym){(int64_t)b0 + i, 1, i - 1, i + 1 == n ? -1 : i + 1,
                           t->byte_tok[s[b0 + (size_t)i]]};
    }
    w->q.n = 0;
    for (int64_t i = 1; i < n; i++) {
        if (!bpe_try_pair(t, w, i - 1, i)) {
            return false;
        }
    }
    while (w->q.n) {
        bigram g = heap_pop(&w->q);
        sym *a = &w->syms[g.left], *b = &w->syms[g.right];
        if (a->n == 0 || b->n == 0 || a->next != g.right || b->id != (int32_t)g.aux) {
            continue; /* outdated: the right symbol grew or was merged away */
        }
        const merge_slot *m = find_merge(t, a->id, b->id);
        a->id = m->result;
        a->n += b->n;
        b->n = 0;
        a->next = b->next;
        if (b->next >= 0) {
            w->syms[b->next].prev = g.left;
        }
        if (!bpe_try_pair(t, w, a->prev, g.left) || !bpe_try_pair(t, w, g.left, a->next)) {
            return false;
        }
    }
    int32_t unk = t->special_id[FDY_SPECIAL_UNK];
    for (int64_t i = 0; i != -1 && n > 0; i = w->syms[i].next) {
        int32_t id = w->syms[i].id >= 0 ? w->syms[i].id : unk; /* a byte the vocab lacks */
        if (id >= 0 && !ivec_push(&w->out, id)) {
            return false;
        }
    }
    return true;
}

/* the text p[0..n) with invalid bytes read as U+FFFD into w->text, cut into words: w->cuts
 * holds the end of each word (code point indices), w->offs the byte offset of each code point */
static bool pre_split(const fdy_tokenizer *t, work *w, const char *p, size_t n) {
    /* code points, with every byte that does not start a valid character read as U+FFFD */
    static const char FFFD[3] = {'\xef', '\xbf', '\xbd'};
    if (n + 1 > w->cps_cap) {
        size_t cap = n + 1;
        uint32_t *cps = (uint32_t *)realloc(w->cps, cap * sizeof *cps);
        if (cps) {
            w->cps = cps;
        }
        uint8_t *fl = (uint8_t *)realloc(w->fl, cap);
        if (fl) {
            w->fl = fl;
        }
        size_t *offs = (size_t *)realloc(w->offs, cap * sizeof *offs);
        if (offs) {
            w->offs = offs;
        }
        if (!cps || !fl || !offs) {
            return false;
        }
        w->cps_cap = cap;
    }
    w->text.n = 0;
    size_t m = 0;
    for (size_t i = 0; i < n; m++) {
        uint32_t c;
        size_t k = utf8_decode((const uint8_t *)p + i, n - i, &c);
        w->offs[m] = w->text.n;
        if (k) {
            if (!bbuf_put(&w->text, p + i, k)) {
                return false;
            }
            i += k;
        } else {
            c = 0xFFFD;
            if (!bbuf_put(&w->text, FFFD, 3)) {
                return false;
            }
            i++;
        }
        w->cps[m] = c;
        w->fl[m] = uc_flags(c);
    }
    w->offs[m] = w->text.n;
    w->cuts.n = 0;
    if (m == 0) {
        return true;
    }
    if (!zvec_push(&w->cuts, m)) {
        return false;
    }
    pctx c = {w->cps, w->fl, m};
    const pre_rules *rules = &PRE_RULES[t->pre];
    for (int r = 0; r < rules->n; r++) {
        if (!split_pass(&c, rules->m[r], &w->cuts, &w->cuts2)) {
            return false;
        }
        zvec tmp = w->cuts;
        w->cuts = w->cuts2;
        w->cuts2 = tmp;
    }
    return true;
}

static bool bpe_fragment(const fdy_tokenizer *t, work *w, const char *p, size_t n) {
    if (!pre_split(t, w, p, n)) {
        return false;
    }
    size_t start = 0;
    for (size_t i = 0; i < w->cuts.n; i++) {
        if (!bpe_word(t, w, w->offs[start], w->offs[w->cuts.p[i]])) {
            return false;
        }
        start = w->cuts.p[i];
    }
    return true;
}

/* ---- special tokens in the text ---------------------------------------------------------------
 * llama.cpp's partition: for each special token, longest first, every text fragment is cut at
 * each of its occurrences.  Only the tokens that occur anywhere in the text (found with the
 * trie in one pass) take part. */

typedef struct frag {
    size_t start, len;
    int32_t token; /* -1: text */
    int64_t next;
} frag;

typedef struct fvec {
    frag *p;
    size_t n, cap;
} fvec;

static int64_t frag_add(fvec *v, frag f) {
    if (!grow((void **)&v->p, &v->cap, v->n + 1, sizeof *v->p)) {
        return -1;
    }
    v->p[v->n] = f;
    return (int64_t)v->n++;
}

static bool partition(const fdy_tokenizer *t, const char *text, size_t len, int parse_special,
                      fvec *fr) {
    fr->n = 0;
    if (frag_add(fr, (frag){0, len, -1, -1}) < 0) {
        return false;
    }
    if (!t->n_specials || !len) {
        return true;
    }
    uint8_t *found = (uint8_t *)calloc((size_t)t->n_specials, 1);
    if (!found) {
        return false;
    }
    int32_t n_found = 0;
    uint32_t allowed = parse_special ? SPECIALISH : FDY_TOKEN_USER_DEFINED;
    for (size_t i = 0; i < len; i++) {
        int32_t node = t->trie_root[(uint8_t)text[i]];
        for (size_t j = i + 1; node >= 0; j++) {
            int32_t k = t->trie[node].special;
            if (k >= 0 && !found[k]) {
                uint32_t a = t->attr[t->specials[k]];
                /* without parse_special only plain user-defined tokens count */
                if ((a & allowed) && (parse_special || !(a & HIDDEN))) {
                    found[k] = 1;
                    n_found++;
                }
            }
            if (j == len) {
                break;
            }
            int32_t ch = t->trie[node].child;
            while (ch >= 0 && t->trie[ch].byte != (uint8_t)text[j]) {
                ch = t->trie[ch].sibling;
            }
            node = ch;
        }
    }
    for (int32_t k = 0; k < t->n_specials && n_found; k++) {
        if (!found[k]) {
            continue;
        }
        int32_t id = t->specials[k];
        fdy_str s = text_of(t, id);
        for (int64_t f = 0; f >= 0; f = fr->p[f].next) {
            if (fr->p[f].token >= 0) {
                continue;
            }
            size_t pos = fr->p[f].start, end = pos + fr->p[f].len;
            for (;;) {
                const char *hit = (const char *)memmem(text + pos, end - pos, s.ptr, (size_t)s.len);
                if (!hit) {
                    break;
                }
                size_t at = (size_t)(hit - text), after = at + (size_t)s.len;
                int64_t next = fr->p[f].next;
                int64_t tok;
                if (at > pos) { /* f keeps the text on the left; the token follows it */
                    fr->p[f].len = at - pos;
                    tok = frag_add(fr, (frag){at, (size_t)s.len, id, next});
                    if (tok < 0) {
                        free(found);
                        return false;
                    }
                    fr->p[f].next = tok;
                } else {
                    fr->p[f] = (frag){at, (size_t)s.len, id, next};
                    tok = f;
                }
                f = tok;
                if (after == end) {
                    break;
                }
                int64_t rest = frag_add(fr, (frag){after, end - after, -1, next});
                if (rest < 0) {
                    free(found);
                    return false;
                }
                fr->p[tok].next = rest;
                f = rest;
                pos = after;
            }
        }
    }
    free(found);
    return true;
}

/* ---- encode ------------------------------------------------------------------------------- */

fdy_status fdy_tokenizer_encode(const fdy_tokenizer *t, const char *text, size_t len,
                                int add_special, int parse_special, int32_t *out, int64_t cap,
                                int64_t *n_out) {
    if (!t || !n_out || (!text && len) || cap < 0 || (!out && cap > 0)) {
        return fdy_fail(FDY_ERR_INVALID, "fdy_tokenizer_encode: bad arguments");
    }
    if (len > (size_t)INT64_MAX / 16) {
        return fdy_fail(FDY_ERR_INVALID, "fdy_tokenizer_encode: text too long");
    }
    *n_out = 0;
    work w = {0};
    fvec fr = {0};
    bool ok = partition(t, text ? text : "", len, parse_special, &fr);
    if (ok && add_special && t->add_bos) {
        ok = ivec_push(&w.out, t->special_id[FDY_SPECIAL_BOS]);
    }
    bool prev_special = true; /* SPM: a space goes before the text at the start and after a
                                 special token */
    for (int64_t f = 0; ok && f >= 0 && len > 0; f = fr.p[f].next) {
        const frag *x = &fr.p[f];
        if (x->token >= 0) {
            ok = ivec_push(&w.out, x->token);
            prev_special = true;
        } else if (t->type == FDY_VOCAB_SPM) {
            ok = spm_fragment(t, &w, text + x->start, x->len, t->add_space_prefix && prev_special);
            prev_special = false;
        } else {
            ok = bpe_fragment(t, &w, text + x->start, x->len);
        }
    }
    if (ok && add_special && t->add_eos) {
        ok = ivec_push(&w.out, t->special_id[FDY_SPECIAL_EOS]);
    }
    fdy_status st = FDY_OK;
    if (!ok) {
        st = fdy_fail(FDY_ERR_NOMEM, "fdy_tokenizer_encode: out of memory");
    } else {
        *n_out = (int64_t)w.out.n;
        if ((int64_t)w.out.n > cap) {
            st = fdy_fail(FDY_ERR_SPACE, "fdy_tokenizer_encode: %zu tokens, room for %lld",
                          w.out.n, (long long)cap);
        } else if (w.out.n) {
            memcpy(out, w.out.p, w.out.n * sizeof(int32_t));
        }
    }
    free(fr.p);
    work_free(&w);
    return st;
}

fdy_status fdy_tokenizer_pre_tokenize(const fdy_tokenizer *t, const char *text, size_t len,
                                      int64_t *ends, int64_t cap, int64_t *n_out) {
    if (!t || !n_out || (!text && len) || cap < 0 || (!ends && cap > 0)) {
        return fdy_fail(FDY_ERR_INVALID, "fdy_tokenizer_pre_tokenize: bad arguments");
    }
    *n_out = 0;
    if (!utf8_valid(text, len)) {
        return fdy_fail(FDY_ERR_INVALID, "fdy_tokenizer_pre_tokenize: text is not valid UTF-8");
    }
    if (t->type != FDY_VOCAB_BPE) {
        *n_out = len > 0;
        if (len > 0 && cap > 0) {
            ends[0] = (int64_t)len;
        }
        return len > 0 && cap < 1 ? fdy_fail(FDY_ERR_SPACE, "pre_tokenize: no room") : FDY_OK;
    }
    work w = {0};
    fdy_status st = FDY_OK;
    if (!pre_split(t, &w, text ? text : "", len)) {
        st = fdy_fail(FDY_ERR_NOMEM, "fdy_tokenizer_pre_tokenize: out of memory");
    } else {
        *n_out = (int64_t)w.cuts.n;
        for (size_t i = 0; i < w.cuts.n && (int64_t)i < cap; i++) {
            ends[i] = (int64_t)w.offs[w.cuts.p[i]];
        }
        if ((int64_t)w.cuts.n > cap) {
            st = fdy_fail(FDY_ERR_SPACE, "pre_tokenize: %zu words, room for %lld", w.cuts.n,
                          (long long)cap);
        }
    }
    work_free(&w);
    return st;
}

/* ---- pieces, decode, streaming ---------------------------------------------------------------- */

fdy_status fdy_tokenizer_token_to_piece(const fdy_tokenizer *t, int32_t id, int special,
                                        fdy_str *piece) {
    if (!t || !piece) {
        return fdy_fail(FDY_ERR_INVALID, "fdy_tokenizer_token_to_piece: NULL argument");
    }
    if (id < 0 || id >= t->n_vocab) {
        return fdy_fail(FDY_ERR_RANGE, "token id %d out of range (vocabulary of %d)", id,
                        t->n_vocab);
    }
    piece->ptr = t->pool + t->piece_off[id];
    piece->len = (t->attr[id] & HIDDEN) && !special ? 0 : t->piece_len[id];
    return FDY_OK;
}

/* the bytes one token adds to the text: `strip` is 1 where a leading space the SPM encoder
 * added is to be dropped (at the start and after a special token) */
static fdy_status render(const fdy_tokenizer *t, uint32_t flags, int *strip, int32_t id,
                         const char **p, size_t *n) {
    if (id < 0 || id >= t->n_vocab) {
        return fdy_fail(FDY_ERR_RANGE, "token id %d out of range (vocabulary of %d)", id,
                        t->n_vocab);
    }
    uint32_t a = t->attr[id];
    *p = t->pool + t->piece_off[id];
    *n = t->piece_len[id];
    if (a & SPECIALISH) {
        if ((a & HIDDEN) && !(flags & FDY_DECODE_SPECIAL)) {
            *n = 0;
        }
        *strip = t->add_space_prefix;
        return FDY_OK;
    }
    if (*strip && *n > 0 && (*p)[0] == ' ') {
        ++*p;
        --*n;
    }
    *strip = 0;
    return FDY_OK;
}

fdy_status fdy_tokenizer_decode(const fdy_tokenizer *t, const int32_t *ids, int64_t n,
                                uint32_t flags, char *out, size_t cap, size_t *n_out) {
    if (!t || !n_out || n < 0 || (!ids && n) || (!out && cap)) {
        return fdy_fail(FDY_ERR_INVALID, "fdy_tokenizer_decode: bad arguments");
    }
    *n_out = 0;
    int strip = t->add_space_prefix && !(flags & FDY_DECODE_CONTINUE);
    size_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        const char *p = NULL;
        size_t k = 0;
        fdy_status st = render(t, flags, &strip, ids[i], &p, &k);
        if (st) {
            return st;
        }
        if (total < cap) {
            memcpy(out + total, p, k < cap - total ? k : cap - total);
        }
        if (k > SIZE_MAX - total) {
            return fdy_fail(FDY_ERR_NOMEM, "fdy_tokenizer_decode: text too long");
        }
        total += k;
    }
    *n_out = total;
    if (total > cap) {
        return fdy_fail(FDY_ERR_SPACE, "fdy_tokenizer_decode: %zu bytes, room for %zu", total,
                        cap);
    }
    return FDY_OK;
}

struct fdy_detokenizer {
    const fdy_tokenizer *t;
    uint32_t flags;
    int strip;
    bbuf buf;    /* the bytes returned last (emitted), then the held-back ones */
    size_t emitted;
};

fdy_status fdy_detokenizer_create(const fdy_tokenizer *t, uint32_t flags, fdy_detokenizer **out) {
    if (!t || !out) {
        return fdy_fail(FDY_ERR_INVALID, "fdy_detokenizer_create: NULL argument");
    }
    fdy_detokenizer *d = (fdy_detokenizer *)calloc(1, sizeof *d);
    if (!d) {
        return fdy_fail(FDY_ERR_NOMEM, "fdy_detokenizer_create: out of memory");
    }
    d->t = t;
    d->flags = flags;
    d->strip = t->add_space_prefix && !(flags & FDY_DECODE_CONTINUE);
    *out = d;
    return FDY_OK;
}

void fdy_detokenizer_free(fdy_detokenizer *d) {
    if (d) {
        free(d->buf.p);
        free(d);
    }
}

/* length of the prefix of p that does not end inside a character: a lead byte in the last
 * three bytes whose character needs more bytes than follow it starts the held-back part */
static size_t complete_prefix(const uint8_t *p, size_t n) {
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        uint8_t b = p[n - k];
        if ((b & 0xC0) == 0x80) {
            continue;
        }
        if (b >= 0xC0 && utf8_len_lead(b) > k) {
            return n - k;
        }
        return n;
    }
    return n;
}

static void drop_emitted(fdy_detokenizer *d) {
    if (d->emitted) {
        memmove(d->buf.p, d->buf.p + d->emitted, d->buf.n - d->emitted);
        d->buf.n -= d->emitted;
        d->emitted = 0;
    }
}

fdy_status fdy_detokenizer_push(fdy_detokenizer *d, int32_t id, fdy_str *text) {
    if (!d || !text) {
        return fdy_fail(FDY_ERR_INVALID, "fdy_detokenizer_push: NULL argument");
    }
    text->ptr = "";
    text->len = 0;
    drop_emitted(d);
    const char *p = NULL;
    size_t n = 0;
    int strip = d->strip;
    fdy_status st = render(d->t, d->flags, &strip, id, &p, &n);
    if (st) {
        return st;
    }
    if (!bbuf_put(&d->buf, p, n)) {
        return fdy_fail(FDY_ERR_NOMEM, "fdy_detokenizer_push: out of memory");
    }
    d->strip = strip;
    d->emitted = complete_prefix((const uint8_t *)d->buf.p, d->buf.n);
    text->ptr = d->buf.p ? d->buf.p : "";
    text->len = d->emitted;
    return FDY_OK;
}

fdy_status fdy_detokenizer_flush(fdy_detokenizer *d, fdy_str *text) {
    if (!d || !text) {
        return fdy_fail(FDY_ERR_INVALID, "fdy_detokenizer_flush: NULL argument");
    }
    drop_emitted(d);
    d->emitted = d->buf.n;
    text->ptr = d->buf.p ? d->buf.p : "";
    text->len = d->buf.n;
    return FDY_OK;
}
