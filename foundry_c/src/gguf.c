/* gguf.c - the GGUF reader (memory-mapped, lazy, hardened against malformed input) and the
 * GGUF writer.
 *
 * The reader maps the file and parses only the header: metadata, tensor infos and the data
 * section offset.  Every read is bounds-checked against the file size; every count is checked
 * against the bytes left before anything is allocated, so allocations stay proportional to
 * the file size; every size computation is overflow-checked.  Errors name the problem and the
 * byte offset where it was found.  Strings and numeric arrays point into the mapping; only
 * string tables, nested arrays and the lookup tables are allocated.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_MAX_DEPTH 8 /* nesting of arrays of arrays */

size_t fdy_gguf_type_size(int32_t type) {
    switch (type) {
    case FDY_GGUF_UINT8:
    case FDY_GGUF_INT8:
    case FDY_GGUF_BOOL:
        return 1;
    case FDY_GGUF_UINT16:
    case FDY_GGUF_INT16:
        return 2;
    case FDY_GGUF_UINT32:
    case FDY_GGUF_INT32:
    case FDY_GGUF_FLOAT32:
        return 4;
    case FDY_GGUF_UINT64:
    case FDY_GGUF_INT64:
    case FDY_GGUF_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

static const char *type_name(int32_t t) {
    static const char *names[] = {"uint8", "int8",   "uint16", "int16", "uint32",
                                  "int32", "float32", "bool",   "string", "array",
                                  "uint64", "int64",  "float64"};
    return (t >= 0 && t <= 12) ? names[t] : "unknown";
}

/* ---- arena: every allocation of a reader, freed together ------------------------------- */

typedef struct arena {
    void **ptrs;
    size_t n, cap;
} arena;

static void *arena_alloc(arena *a, size_t n, size_t size) {
    uint64_t bytes;
    if (!fdy_mul_ok(n, size, &bytes)) {
        return NULL;
    }
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        void **p = (void **)realloc(a->ptrs, cap * sizeof *p);
        if (!p) {
            return NULL;
        }
        a->ptrs = p;
        a->cap = cap;
    }
    void *m = calloc(bytes ? (size_t)bytes : 1, 1);
    if (m) {
        a->ptrs[a->n++] = m;
    }
    return m;
}

static void arena_free(arena *a) {
    for (size_t i = 0; i < a->n; i++) {
        free(a->ptrs[i]);
    }
    free(a->ptrs);
    a->ptrs = NULL;
    a->n = a->cap = 0;
}

/* ---- name lookup: open addressing over indices -------------------------------------------- */

static uint64_t hash_bytes(const char *p, uint64_t n) {
    uint64_t h = 1469598103934665603ull;
    for (uint64_t i = 0; i < n; i++) {
        h ^= (uint8_t)p[i];
        h *= 1099511628211ull;
    }
    return h;
}

typedef struct name_table {
    int64_t *slots; /* index + 1, 0 = empty */
    uint64_t mask;
} name_table;

static bool table_init(name_table *t, arena *a, int64_t n) {
    uint64_t cap = 16;
    while (cap < (uint64_t)n * 2) {
        cap *= 2;
    }
    t->slots = (int64_t *)arena_alloc(a, cap, sizeof(int64_t));
    t->mask = cap - 1;
    return t->slots != NULL;
}

/* find `name` among names[]; when insert_index >= 0 and absent, insert it.  Returns the index
 * found, or -1. */
static int64_t table_lookup(name_table *t, const fdy_str *names, size_t stride, const char *name,
                            uint64_t len, int64_t insert_index) {
    if (!t->slots) {
        return -1;
    }
    uint64_t h = hash_bytes(name, len) & t->mask;
    for (;;) {
        int64_t s = t->slots[h];
        if (s == 0) {
            if (insert_index >= 0) {
                t->slots[h] = insert_index + 1;
            }
            return -1;
        }
        const fdy_str *k = (const fdy_str *)((const char *)names + (size_t)(s - 1) * stride);
        if (k->len == len && memcmp(k->ptr, name, len) == 0) {
            return s - 1;
        }
        h = (h + 1) & t->mask;
    }
}

/* ---- the reader ------------------------------------------------------------------------- */

struct fdy_gguf {
    const uint8_t *base;
    uint64_t size;
    int mapped;
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;
    int64_t n_kv;
    fdy_str *keys;
    fdy_value *values;
    int64_t n_tensors;
    fdy_tensor_info *tensors;
    name_table kv_index;
    name_table tensor_index;
    arena mem;
};

typedef struct cursor {
    const uint8_t *base;
    uint64_t size;
    uint64_t pos;
} cursor;

static uint64_t left(const cursor *c) {
    return c->size - c->pos;
}

static fdy_status take(cursor *c, void *dst, uint64_t n, const char *what) {
    if (left(c) < n) {
        return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)c->pos,
                           "truncated file: %s needs %llu bytes but only %llu remain", what,
                           (unsigned long long)n, (unsigned long long)left(c));
    }
    memcpy(dst, c->base + c->pos, (size_t)n);
    c->pos += n;
    return FDY_OK;
}

static fdy_status take_u32(cursor *c, uint32_t *v, const char *what) {
    return take(c, v, 4, what);
}

static fdy_status take_u64(cursor *c, uint64_t *v, const char *what) {
    return take(c, v, 8, what);
}

static fdy_status take_str(cursor *c, fdy_str *s, const char *what) {
    uint64_t start = c->pos;
    uint64_t len = 0;
    fdy_status st = take_u64(c, &len, what);
    if (st) {
        return st;
    }
    if (len > left(c)) {
        return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)start,
                           "%s: string length %llu exceeds the %llu bytes left in the file",
                           what, (unsigned long long)len, (unsigned long long)left(c));
    }
    s->ptr = (const char *)(c->base + c->pos);
    s->len = len;
    c->pos += len;
    return FDY_OK;
}

static fdy_status read_value(fdy_gguf *g, cursor *c, int32_t type, fdy_value *out, int depth,
                             const char *what);

static fdy_status read_array(fdy_gguf *g, cursor *c, fdy_value *out, int depth,
                             const char *what) {
    uint64_t at = c->pos;
    uint32_t et = 0;
    uint64_t count = 0;
    fdy_status st = take_u32(c, &et, what);
    if (st || (st = take_u64(c, &count, what))) {
        return st;
    }
    out->type = FDY_GGUF_ARRAY;
    out->elem_type = (int32_t)et;
    out->count = count;
    if (et > 12) {
        return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)at, "%s: unknown array element type %u",
                           what, et);
    }
    size_t es = fdy_gguf_type_size((int32_t)et);
    if (es) {
        uint64_t bytes;
        if (!fdy_mul_ok(count, es, &bytes) || bytes > left(c)) {
            return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)at,
                               "%s: array of %llu %s needs more bytes than the %llu left", what,
                               (unsigned long long)count, type_name((int32_t)et),
                               (unsigned long long)left(c));
        }
        if (et == FDY_GGUF_BOOL) {
            for (uint64_t i = 0; i < count; i++) {
                if (c->base[c->pos + i] > 1) {
                    return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)(c->pos + i),
                                       "%s: bool array item %llu is %u, not 0 or 1", what,
                                       (unsigned long long)i, c->base[c->pos + i]);
                }
            }
        }
        out->v.data = c->base + c->pos;
        c->pos += bytes;
        return FDY_OK;
    }
    if (et == FDY_GGUF_STRING) {
        if (count > left(c) / 8) {
            return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)at,
                               "%s: array of %llu strings cannot fit in the %llu bytes left",
                               what, (unsigned long long)count, (unsigned long long)left(c));
        }
        fdy_str *items = (fdy_str *)arena_alloc(&g->mem, (size_t)count, sizeof(fdy_str));
        if (!items) {
            return fdy_fail(FDY_ERR_NOMEM, "out of memory reading %s", what);
        }
        for (uint64_t i = 0; i < count; i++) {
            if ((st = take_str(c, &items[i], what))) {
                return st;
            }
        }
        out->v.data = items;
        return FDY_OK;
    }
    /* nested arrays */
    if (depth >= GGUF_MAX_DEPTH) {
        return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)at, "%s: arrays nested deeper than %d",
                           what, GGUF_MAX_DEPTH);
    }
    if (count > left(c) / 12) {
        return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)at,
                           "%s: array of %llu arrays cannot fit in the %llu bytes left", what,
                           (unsigned long long)count, (unsigned long long)left(c));
    }
    fdy_value *items = (fdy_value *)arena_alloc(&g->mem, (size_t)count, sizeof(fdy_value));
    if (!items) {
        return fdy_fail(FDY_ERR_NOMEM, "out of memory reading %s", what);
    }
    for (uint64_t i = 0; i < count; i++) {
        if ((st = read_value(g, c, FDY_GGUF_ARRAY, &items[i], depth + 1, what))) {
            return st;
        }
    }
    out->v.data = items;
    return FDY_OK;
}

static fdy_status read_value(fdy_gguf *g, cursor *c, int32_t type, fdy_value *out, int depth,
                             const char *what) {
    memset(out, 0, sizeof *out);
    out->type = type;
    uint64_t at = c->pos;
    fdy_status st = FDY_OK;
    union {
        uint8_t u8;
        int8_t i8;
        uint16_t u16;
        int16_t i16;
        uint32_t u32;
        int32_t i32;
        float f32;
        uint64_t u64;
        int64_t i64;
        double f64;
    } b;
    size_t es = fdy_gguf_type_size(type);
    if (es && (st = take(c, &b, es, what))) {
        return st;
    }
    switch (type) {
    case FDY_GGUF_UINT8: out->v.u64 = b.u8; break;
    case FDY_GGUF_INT8: out->v.i64 = b.i8; break;
    case FDY_GGUF_UINT16: out->v.u64 = b.u16; break;
    case FDY_GGUF_INT16: out->v.i64 = b.i16; break;
    case FDY_GGUF_UINT32: out->v.u64 = b.u32; break;
    case FDY_GGUF_INT32: out->v.i64 = b.i32; break;
    case FDY_GGUF_FLOAT32: out->v.f64 = b.f32; break;
    case FDY_GGUF_UINT64: out->v.u64 = b.u64; break;
    case FDY_GGUF_INT64: out->v.i64 = b.i64; break;
    case FDY_GGUF_FLOAT64: out->v.f64 = b.f64; break;
    case FDY_GGUF_BOOL:
        if (b.u8 > 1) {
            return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)at, "%s: bool value %u is not 0 or 1",
                               what, b.u8);
        }
        out->v.u64 = b.u8;
        break;
    case FDY_GGUF_STRING:
        return take_str(c, &out->v.str, what);
    case FDY_GGUF_ARRAY:
        return read_array(g, c, out, depth, what);
    default:
        return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)at, "%s: unknown value type %d", what,
                           type);
    }
    return FDY_OK;
}

static fdy_status parse(fdy_gguf *g) {
    cursor c = {g->base, g->size, 0};
    char magic[4];
    uint32_t version = 0;
    uint64_t n_tensors = 0, n_kv = 0;
    fdy_status st;
    if (g->size < 4 || memcmp(g->base, GGUF_MAGIC, 4) != 0) {
        return fdy_fail_at(FDY_ERR_FORMAT, 0, "not a GGUF file: wrong magic (expected 'GGUF')");
    }
    if ((st = take(&c, magic, 4, "magic")) || (st = take_u32(&c, &version, "version"))) {
        return st;
    }
    if (version != 2 && version != 3) {
        if (version == 1) {
            return fdy_fail_at(FDY_ERR_FORMAT, 4,
                               "unsupported GGUF version 1 (pyfoundry reads versions 2 and 3)");
        }
        if ((version & 0xffffu) == 0 && version != 0) {
            return fdy_fail_at(FDY_ERR_FORMAT, 4,
                               "big-endian GGUF files are not supported (version field %08x)",
                               version);
        }
        return fdy_fail_at(FDY_ERR_FORMAT, 4,
                           "unsupported GGUF version %u (pyfoundry reads versions 2 and 3)",
                           version);
    }
    g->version = version;
    if ((st = take_u64(&c, &n_tensors, "tensor count")) ||
        (st = take_u64(&c, &n_kv, "metadata count"))) {
        return st;
    }
    /* a key-value pair takes at least 13 bytes, a tensor info at least 32 */
    if (n_kv > left(&c) / 13) {
        return fdy_fail_at(FDY_ERR_FORMAT, 16,
                           "metadata count %llu is absurd: the file has only %llu bytes left",
                           (unsigned long long)n_kv, (unsigned long long)left(&c));
    }
    if (n_tensors > left(&c) / 32) {
        return fdy_fail_at(FDY_ERR_FORMAT, 8,
                           "tensor count %llu is absurd: the file has only %llu bytes left",
                           (unsigned long long)n_tensors, (unsigned long long)left(&c));
    }
    g->n_kv = (int64_t)n_kv;
    g->n_tensors = (int64_t)n_tensors;
    g->keys = (fdy_str *)arena_alloc(&g->mem, (size_t)n_kv, sizeof(fdy_str));
    g->values = (fdy_value *)arena_alloc(&g->mem, (size_t)n_kv, sizeof(fdy_value));
    g->tensors = (fdy_tensor_info *)arena_alloc(&g->mem, (size_t)n_tensors,
                                                 sizeof(fdy_tensor_info));
    if (!g->keys || !g->values || !g->tensors || !table_init(&g->kv_index, &g->mem, g->n_kv) ||
        !table_init(&g->tensor_index, &g->mem, g->n_tensors)) {
        return fdy_fail(FDY_ERR_NOMEM, "out of memory reading the GGUF header");
    }

    /* ---- metadata ---- */
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (int64_t i = 0; i < g->n_kv; i++) {
        uint64_t at = c.pos;
        uint32_t type = 0;
        if ((st = take_str(&c, &g->keys[i], "metadata key"))) {
            return st;
        }
        if (table_lookup(&g->kv_index, g->keys, sizeof(fdy_str), g->keys[i].ptr, g->keys[i].len,
                         i) >= 0) {
            return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)at, "duplicate metadata key '%.*s'",
                               (int)(g->keys[i].len > 200 ? 200 : g->keys[i].len),
                               g->keys[i].ptr);
        }
        if ((st = take_u32(&c, &type, "metadata value type"))) {
            return st;
        }
        if (type > 12) {
            return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)(c.pos - 4),
                               "metadata '%.*s' has unknown value type %u",
                               (int)(g->keys[i].len > 200 ? 200 : g->keys[i].len),
                               g->keys[i].ptr, type);
        }
        if ((st = read_value(g, &c, (int32_t)type, &g->values[i], 0, "metadata value"))) {
            return st;
        }
        if (g->keys[i].len == 17 && memcmp(g->keys[i].ptr, "general.alignment", 17) == 0) {
            const fdy_value *v = &g->values[i];
            if (v->type != FDY_GGUF_UINT32) {
                return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)at,
                                   "general.alignment must be a uint32, not %s",
                                   type_name(v->type));
            }
            if (v->v.u64 == 0 || (v->v.u64 & (v->v.u64 - 1)) != 0) {
                return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)at,
                                   "general.alignment %llu is not a power of two",
                                   (unsigned long long)v->v.u64);
            }
            g->alignment = (uint32_t)v->v.u64;
        }
    }

    /* ---- tensor infos ---- */
    for (int64_t i = 0; i < g->n_tensors; i++) {
        fdy_tensor_info *t = &g->tensors[i];
        uint64_t at = c.pos;
        uint32_t n_dims = 0;
        int32_t type = 0;
        if ((st = take_str(&c, &t->name, "tensor name"))) {
            return st;
        }
        int nl = (int)(t->name.len > 200 ? 200 : t->name.len);
        if (table_lookup(&g->tensor_index, &g->tensors[0].name, sizeof(fdy_tensor_info),
                         t->name.ptr, t->name.len, i) >= 0) {
            return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)at, "duplicate tensor name '%.*s'", nl,
                               t->name.ptr);
        }
        if ((st = take_u32(&c, &n_dims, "tensor dimension count"))) {
            return st;
        }
        if (n_dims < 1 || n_dims > FDY_MAX_DIMS) {
            return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)(c.pos - 4),
                               "tensor '%.*s' has %u dimensions (1 to %d supported)", nl,
                               t->name.ptr, n_dims, FDY_MAX_DIMS);
        }
        t->n_dims = (int32_t)n_dims;
        uint64_t n_el = 1;
        for (int d = 0; d < FDY_MAX_DIMS; d++) {
            uint64_t ne = 1;
            if ((uint32_t)d < n_dims && (st = take_u64(&c, &ne, "tensor dimension"))) {
                return st;
            }
            if (ne > (uint64_t)INT64_MAX || !fdy_mul_ok(n_el, ne, &n_el) ||
                n_el > (uint64_t)INT64_MAX) {
                return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)(c.pos - 8),
                                   "tensor '%.*s': the product of its dimensions overflows", nl,
                                   t->name.ptr);
            }
            t->ne[d] = (int64_t)ne;
        }
        t->n_elements = (int64_t)n_el;
        if ((st = take(&c, &type, 4, "tensor type"))) {
            return st;
        }
        t->type = type;
        /* every registry format is readable: the GGUF ones and pyfoundry's own (ids >= 1000,
         * which the writer emits for Int8 / NF4 tensors) */
        t->policy = fdy_policy_by_type(type);
        if (!t->policy) {
            return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)(c.pos - 4),
                               "tensor '%.*s' has unknown or unsupported type id %d", nl,
                               t->name.ptr, type);
        }
        int64_t be = fdy_policy_block_elems(t->policy);
        if (t->ne[0] % be != 0) {
            return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)(c.pos - 4),
                               "tensor '%.*s': row length %lld is not a multiple of the %s block "
                               "size %lld",
                               nl, t->name.ptr, (long long)t->ne[0], fdy_policy_name(t->policy),
                               (long long)be);
        }
        uint64_t nbytes;
        if (!fdy_mul_ok(n_el / (uint64_t)be, (uint64_t)fdy_policy_block_bytes(t->policy),
                        &nbytes)) {
            return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)at,
                               "tensor '%.*s': its byte size overflows", nl, t->name.ptr);
        }
        t->nbytes = nbytes;
        if ((st = take_u64(&c, &t->offset, "tensor data offset"))) {
            return st;
        }
    }

    /* ---- data section ---- */
    uint64_t pad = (g->alignment - c.pos % g->alignment) % g->alignment;
    g->data_offset = c.pos + pad;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        fdy_tensor_info *t = &g->tensors[i];
        int nl = (int)(t->name.len > 200 ? 200 : t->name.len);
        uint64_t start, end;
        if (t->offset % g->alignment != 0) {
            return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)g->data_offset,
                               "tensor '%.*s': data offset %llu is not a multiple of the "
                               "alignment %u",
                               nl, t->name.ptr, (unsigned long long)t->offset, g->alignment);
        }
        if (!fdy_add_ok(g->data_offset, t->offset, &start) ||
            !fdy_add_ok(start, t->nbytes, &end) || end > g->size) {
            return fdy_fail_at(FDY_ERR_FORMAT, (int64_t)g->data_offset,
                               "tensor '%.*s': data [%llu, +%llu) lies outside the file (%llu "
                               "bytes)",
                               nl, t->name.ptr, (unsigned long long)t->offset,
                               (unsigned long long)t->nbytes, (unsigned long long)g->size);
        }
        t->data = g->base + start;
    }
    return FDY_OK;
}

static fdy_status open_common(fdy_gguf *g, fdy_gguf **out) {
    fdy_status st = parse(g);
    if (st) {
        fdy_gguf_close(g);
        *out = NULL;
        return st;
    }
    *out = g;
    return FDY_OK;
}

fdy_status fdy_gguf_open_memory(const void *data, size_t size, fdy_gguf **out) {
    if (!out) {
        return fdy_fail(FDY_ERR_INVALID, "fdy_gguf_open_memory: out is NULL");
    }
    *out = NULL;
    if (!data && size) {
        return fdy_fail(FDY_ERR_INVALID, "fdy_gguf_open_memory: data is NULL");
    }
    fdy_gguf *g = (fdy_gguf *)calloc(1, sizeof *g);
    if (!g) {
        return fdy_fail(FDY_ERR_NOMEM, "out of memory");
    }
    g->base = (const uint8_t *)data;
    g->size = size;
    return open_common(g, out);
}

fdy_status fdy_gguf_open(const char *path, fdy_gguf **out) {
    if (!out || !path) {
        return fdy_fail(FDY_ERR_INVALID, "fdy_gguf_open: path and out must not be NULL");
    }
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return fdy_fail(FDY_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return fdy_fail(FDY_ERR_IO, "cannot stat '%s': %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return fdy_fail(FDY_ERR_IO, "'%s' is not a regular file", path);
    }
    if (sb.st_size < 4) {
        close(fd);
        return fdy_fail_at(FDY_ERR_FORMAT, 0, "'%s' is too small to be a GGUF file (%lld bytes)",
                           path, (long long)sb.st_size);
    }
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED) {
        return fdy_fail(FDY_ERR_IO, "cannot map '%s': %s", path, strerror(e));
    }
    fdy_gguf *g = (fdy_gguf *)calloc(1, sizeof *g);
    if (!g) {
        munmap(m, (size_t)sb.st_size);
        return fdy_fail(FDY_ERR_NOMEM, "out of memory");
    }
    g->base = (const uint8_t *)m;
    g->size = (uint64_t)sb.st_size;
    g->mapped = 1;
    return open_common(g, out);
}

void fdy_gguf_close(fdy_gguf *g) {
    if (!g) {
        return;
    }
    if (g->mapped) {
        munmap((void *)g->base, (size_t)g->size);
    }
    arena_free(&g->mem);
    free(g);
}

uint32_t fdy_gguf_version(const fdy_gguf *g) { return g->version; }
uint32_t fdy_gguf_alignment(const fdy_gguf *g) { return g->alignment; }
uint64_t fdy_gguf_data_offset(const fdy_gguf *g) { return g->data_offset; }
const void *fdy_gguf_base(const fdy_gguf *g) { return g->base; }
uint64_t fdy_gguf_size(const fdy_gguf *g) { return g->size; }
int64_t fdy_gguf_n_kv(const fdy_gguf *g) { return g->n_kv; }
int64_t fdy_gguf_n_tensors(const fdy_gguf *g) { return g->n_tensors; }

fdy_str fdy_gguf_kv_key(const fdy_gguf *g, int64_t i) {
    fdy_str none = {"", 0};
    return (i >= 0 && i < g->n_kv) ? g->keys[i] : none;
}

const fdy_value *fdy_gguf_kv_value(const fdy_gguf *g, int64_t i) {
    return (i >= 0 && i < g->n_kv) ? &g->values[i] : NULL;
}

int64_t fdy_gguf_find_kv(const fdy_gguf *g, const char *key) {
    fdy_gguf *m = (fdy_gguf *)g;
    return table_lookup(&m->kv_index, g->keys, sizeof(fdy_str), key, strlen(key), -1);
}

const fdy_tensor_info *fdy_gguf_tensor(const fdy_gguf *g, int64_t i) {
    return (i >= 0 && i < g->n_tensors) ? &g->tensors[i] : NULL;
}

int64_t fdy_gguf_find_tensor(const fdy_gguf *g, const char *name) {
    fdy_gguf *m = (fdy_gguf *)g;
    if (g->n_tensors == 0) {
        return -1;
    }
    return table_lookup(&m->tensor_index, &g->tensors[0].name, sizeof(fdy_tensor_info), name,
                        strlen(name), -1);
}

/* ---- the writer ------------------------------------------------------------------------- */

typedef struct wtensor {
    char *name;
    int32_t n_dims;
    int64_t ne[FDY_MAX_DIMS];
    int32_t type;
    const void *data;
    uint64_t nbytes;
} wtensor;

struct fdy_gguf_writer {
    arena mem;
    int64_t n_kv, cap_kv;
    fdy_str *keys;
    fdy_value *values;
    int64_t n_t, cap_t;
    wtensor *tensors;
    uint32_t alignment;
};

fdy_status fdy_gguf_writer_new(fdy_gguf_writer **out) {
    if (!out) {
        return fdy_fail(FDY_ERR_INVALID, "fdy_gguf_writer_new: out is NULL");
    }
    *out = (fdy_gguf_writer *)calloc(1, sizeof **out);
    if (!*out) {
        return fdy_fail(FDY_ERR_NOMEM, "out of memory");
    }
    (*out)->alignment = GGUF_DEFAULT_ALIGNMENT;
    return FDY_OK;
}

void fdy_gguf_writer_free(fdy_gguf_writer *w) {
    if (!w) {
        return;
    }
    arena_free(&w->mem);
    free(w->keys);
    free(w->values);
    free(w->tensors);
    free(w);
}

static fdy_status copy_value(fdy_gguf_writer *w, fdy_value *dst, const fdy_value *src,
                             int depth) {
    *dst = *src;
    if (src->type < 0 || src->type > 12) {
        return fdy_fail(FDY_ERR_INVALID, "unknown metadata value type %d", src->type);
    }
    if (src->type == FDY_GGUF_BOOL && src->v.u64 > 1) {
        return fdy_fail(FDY_ERR_INVALID, "bool value must be 0 or 1");
    }
    if (src->type == FDY_GGUF_STRING) {
        char *s = (char *)arena_alloc(&w->mem, (size_t)src->v.str.len + 1, 1);
        if (!s) {
            return fdy_fail(FDY_ERR_NOMEM, "out of memory copying a string");
        }
        if (src->v.str.len) {
            memcpy(s, src->v.str.ptr, (size_t)src->v.str.len);
        }
        dst->v.str.ptr = s;
        return FDY_OK;
    }
    if (src->type != FDY_GGUF_ARRAY) {
        return FDY_OK;
    }
    if (depth >= GGUF_MAX_DEPTH) {
        return fdy_fail(FDY_ERR_INVALID, "arrays nested deeper than %d", GGUF_MAX_DEPTH);
    }
    int32_t et = src->elem_type;
    size_t es = fdy_gguf_type_size(et);
    if (es) {
        void *d = arena_alloc(&w->mem, (size_t)src->count, es);
        if (!d) {
            return fdy_fail(FDY_ERR_NOMEM, "out of memory copying an array");
        }
        if (src->count) {
            memcpy(d, src->v.data, (size_t)src->count * es);
        }
        dst->v.data = d;
        return FDY_OK;
    }
    if (et == FDY_GGUF_STRING) {
        fdy_str *d = (fdy_str *)arena_alloc(&w->mem, (size_t)src->count, sizeof(fdy_str));
        if (!d) {
            return fdy_fail(FDY_ERR_NOMEM, "out of memory copying an array");
        }
        const fdy_str *s = (const fdy_str *)src->v.data;
        for (uint64_t i = 0; i < src->count; i++) {
            char *p = (char *)arena_alloc(&w->mem, (size_t)s[i].len + 1, 1);
            if (!p) {
                return fdy_fail(FDY_ERR_NOMEM, "out of memory copying a string");
            }
            if (s[i].len) {
                memcpy(p, s[i].ptr, (size_t)s[i].len);
            }
            d[i].ptr = p;
            d[i].len = s[i].len;
        }
        dst->v.data = d;
        return FDY_OK;
    }
    if (et == FDY_GGUF_ARRAY) {
        fdy_value *d = (fdy_value *)arena_alloc(&w->mem, (size_t)src->count, sizeof(fdy_value));
        if (!d) {
            return fdy_fail(FDY_ERR_NOMEM, "out of memory copying an array");
        }
        const fdy_value *s = (const fdy_value *)src->v.data;
        for (uint64_t i = 0; i < src->count; i++) {
            if (s[i].type != FDY_GGUF_ARRAY) {
                return fdy_fail(FDY_ERR_INVALID, "nested array item %llu is not an array",
                                (unsigned long long)i);
            }
            fdy_status st = copy_value(w, &d[i], &s[i], depth + 1);
            if (st) {
                return st;
            }
        }
        dst->v.data = d;
        return FDY_OK;
    }
    return fdy_fail(FDY_ERR_INVALID, "unknown array element type %d", et);
}

fdy_status fdy_gguf_writer_add_kv(fdy_gguf_writer *w, const char *key, const fdy_value *value) {
    if (!w || !key || !value) {
        return fdy_fail(FDY_ERR_INVALID, "fdy_gguf_writer_add_kv: NULL argument");
    }
    size_t kl = strlen(key);
    for (int64_t i = 0; i < w->n_kv; i++) {
        if (w->keys[i].len == kl && memcmp(w->keys[i].ptr, key, kl) == 0) {
            return fdy_fail(FDY_ERR_INVALID, "duplicate metadata key '%s'", key);
        }
    }
    if (kl == 17 && memcmp(key, "general.alignment", 17) == 0) {
        if (value->type != FDY_GGUF_UINT32 || value->v.u64 == 0 || value->v.u64 > UINT32_MAX ||
            (value->v.u64 & (value->v.u64 - 1)) != 0) {
            return fdy_fail(FDY_ERR_INVALID,
                            "general.alignment must be a uint32 power of two");
        }
        w->alignment = (uint32_t)value->v.u64;
    }
    if (w->n_kv == w->cap_kv) {
        int64_t cap = w->cap_kv ? w->cap_kv * 2 : 32;
        fdy_str *k = (fdy_str *)realloc(w->keys, (size_t)cap * sizeof *k);
        if (!k) {
            return fdy_fail(FDY_ERR_NOMEM, "out of memory");
        }
        w->keys = k;
        fdy_value *v = (fdy_value *)realloc(w->values, (size_t)cap * sizeof *v);
        if (!v) {
            return fdy_fail(FDY_ERR_NOMEM, "out of memory");
        }
        w->values = v;
        w->cap_kv = cap;
    }
    char *kc = (char *)arena_alloc(&w->mem, kl + 1, 1);
    if (!kc) {
        return fdy_fail(FDY_ERR_NOMEM, "out of memory");
    }
    memcpy(kc, key, kl);
    fdy_status st = copy_value(w, &w->values[w->n_kv], value, 0);
    if (st) {
        return st;
    }
    w->keys[w->n_kv].ptr = kc;
    w->keys[w->n_kv].len = kl;
    w->n_kv++;
    return FDY_OK;
}

fdy_status fdy_gguf_writer_add_tensor(fdy_gguf_writer *w, const char *name, int32_t n_dims,
                                      const int64_t *ne, int32_t type, const void *data,
                                      uint64_t nbytes) {
    if (!w || !name || !ne || (!data && nbytes)) {
        return fdy_fail(FDY_ERR_INVALID, "fdy_gguf_writer_add_tensor: NULL argument");
    }
    if (n_dims < 1 || n_dims > FDY_MAX_DIMS) {
        return fdy_fail(FDY_ERR_INVALID, "tensor '%s': %d dimensions (1 to %d supported)", name,
                        n_dims, FDY_MAX_DIMS);
    }
    const fdy_policy *p = fdy_policy_by_type(type);
    if (!p) {
        return fdy_fail(FDY_ERR_INVALID, "tensor '%s': unknown type id %d", name, type);
    }
    uint64_t n = 1;
    for (int d = 0; d < n_dims; d++) {
        if (ne[d] < 0 || !fdy_mul_ok(n, (uint64_t)ne[d], &n) || n > (uint64_t)INT64_MAX) {
            return fdy_fail(FDY_ERR_INVALID, "tensor '%s': bad or overflowing dimensions", name);
        }
    }
    if (ne[0] % fdy_policy_block_elems(p) != 0) {
        return fdy_fail(FDY_ERR_INVALID,
                        "tensor '%s': row length %lld is not a multiple of the %s block size "
                        "%lld",
                        name, (long long)ne[0], fdy_policy_name(p),
                        (long long)fdy_policy_block_elems(p));
    }
    uint64_t need = n / (uint64_t)fdy_policy_block_elems(p) * (uint64_t)fdy_policy_block_bytes(p);
    if (need != nbytes) {
        return fdy_fail(FDY_ERR_INVALID, "tensor '%s': %llu bytes given, the shape needs %llu",
                        name, (unsigned long long)nbytes, (unsigned long long)need);
    }
    size_t nl = strlen(name);
    for (int64_t i = 0; i < w->n_t; i++) {
        if (strcmp(w->tensors[i].name, name) == 0) {
            return fdy_fail(FDY_ERR_INVALID, "duplicate tensor name '%s'", name);
        }
    }
    if (w->n_t == w->cap_t) {
        int64_t cap = w->cap_t ? w->cap_t * 2 : 32;
        wtensor *t = (wtensor *)realloc(w->tensors, (size_t)cap * sizeof *t);
        if (!t) {
            return fdy_fail(FDY_ERR_NOMEM, "out of memory");
        }
        w->tensors = t;
        w->cap_t = cap;
    }
    wtensor *t = &w->tensors[w->n_t];
    memset(t, 0, sizeof *t);
    t->name = (char *)arena_alloc(&w->mem, nl + 1, 1);
    if (!t->name) {
        return fdy_fail(FDY_ERR_NOMEM, "out of memory");
    }
    memcpy(t->name, name, nl);
    t->n_dims = n_dims;
    for (int d = 0; d < FDY_MAX_DIMS; d++) {
        t->ne[d] = d < n_dims ? ne[d] : 1;
    }
    t->type = type;
    t->data = data;
    t->nbytes = nbytes;
    w->n_t++;
    return FDY_OK;
}

typedef struct wout {
    FILE *f;
    uint64_t pos;
    int err;
} wout;

static void put(wout *o, const void *p, size_t n) {
    if (!o->err && n && fwrite(p, 1, n, o->f) != n) {
        o->err = errno ? errno : EIO;
    }
    o->pos += n;
}

static void put_u32(wout *o, uint32_t v) { put(o, &v, 4); }
static void put_u64(wout *o, uint64_t v) { put(o, &v, 8); }
static void put_str(wout *o, const char *p, uint64_t n) {
    put_u64(o, n);
    put(o, p, (size_t)n);
}

static void put_pad(wout *o, uint32_t align) {
    static const uint8_t zeros[256] = {0};
    uint64_t pad = (align - o->pos % align) % align;
    while (pad) {
        size_t k = pad > sizeof zeros ? sizeof zeros : (size_t)pad;
        put(o, zeros, k);
        pad -= k;
    }
}

static void put_value(wout *o, const fdy_value *v, int with_type) {
    if (with_type) {
        put_u32(o, (uint32_t)v->type);
    }
    union {
        uint8_t u8;
        uint16_t u16;
        uint32_t u32;
        float f32;
        uint64_t u64;
        double f64;
    } b;
    switch (v->type) {
    case FDY_GGUF_UINT8:
    case FDY_GGUF_INT8:
    case FDY_GGUF_BOOL: b.u8 = (uint8_t)v->v.u64; put(o, &b, 1); break;
    case FDY_GGUF_UINT16:
    case FDY_GGUF_INT16: b.u16 = (uint16_t)v->v.u64; put(o, &b, 2); break;
    case FDY_GGUF_UINT32:
    case FDY_GGUF_INT32: b.u32 = (uint32_t)v->v.u64; put(o, &b, 4); break;
    case FDY_GGUF_FLOAT32: b.f32 = (float)v->v.f64; put(o, &b, 4); break;
    case FDY_GGUF_UINT64:
    case FDY_GGUF_INT64: b.u64 = v->v.u64; put(o, &b, 8); break;
    case FDY_GGUF_FLOAT64: b.f64 = v->v.f64; put(o, &b, 8); break;
    case FDY_GGUF_STRING: put_str(o, v->v.str.ptr, v->v.str.len); break;
    case FDY_GGUF_ARRAY: {
        put_u32(o, (uint32_t)v->elem_type);
        put_u64(o, v->count);
        size_t es = fdy_gguf_type_size(v->elem_type);
        if (es) {
            put(o, v->v.data, (size_t)(v->count * es));
        } else if (v->elem_type == FDY_GGUF_STRING) {
            const fdy_str *s = (const fdy_str *)v->v.data;
            for (uint64_t i = 0; i < v->count; i++) {
                put_str(o, s[i].ptr, s[i].len);
            }
        } else {
            const fdy_value *s = (const fdy_value *)v->v.data;
            for (uint64_t i = 0; i < v->count; i++) {
                put_value(o, &s[i], 0);
            }
        }
        break;
    }
    default: break;
    }
}

fdy_status fdy_gguf_writer_write(fdy_gguf_writer *w, const char *path) {
    if (!w || !path) {
        return fdy_fail(FDY_ERR_INVALID, "fdy_gguf_writer_write: NULL argument");
    }
    FILE *f = fopen(path, "wb");
    if (!f) {
        return fdy_fail(FDY_ERR_IO, "cannot create '%s': %s", path, strerror(errno));
    }
    wout o = {f, 0, 0};
    put(&o, GGUF_MAGIC, 4);
    put_u32(&o, 3);
    put_u64(&o, (uint64_t)w->n_t);
    put_u64(&o, (uint64_t)w->n_kv);
    for (int64_t i = 0; i < w->n_kv; i++) {
        put_str(&o, w->keys[i].ptr, w->keys[i].len);
        put_value(&o, &w->values[i], 1);
    }
    uint64_t off = 0;
    for (int64_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->tensors[i];
        put_str(&o, t->name, strlen(t->name));
        put_u32(&o, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) {
            put_u64(&o, (uint64_t)t->ne[d]);
        }
        put_u32(&o, (uint32_t)t->type);
        put_u64(&o, off);
        off += t->nbytes;
        off += (w->alignment - off % w->alignment) % w->alignment;
    }
    put_pad(&o, w->alignment);
    for (int64_t i = 0; i < w->n_t; i++) {
        put(&o, w->tensors[i].data, (size_t)w->tensors[i].nbytes);
        put_pad(&o, w->alignment);
    }
    int e = o.err;
    if (fclose(f) != 0 && !e) {
        e = errno ? errno : EIO;
    }
    if (e) {
        return fdy_fail(FDY_ERR_IO, "cannot write '%s': %s", path, strerror(e));
    }
    return FDY_OK;
}
