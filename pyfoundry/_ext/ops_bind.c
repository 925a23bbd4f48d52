/* ops_bind.c - Python bindings of the CPU stages (foundry_c/src/cpu/ops.c) and the thread pool.
 *
 * Low level: callers (pyfoundry/steps.py) pass float32 C-contiguous buffers, int32 id and
 * position buffers, and weights as (type_id, buffer, rows, cols) tuples.  Every buffer's
 * length is checked against the shape it is used with before the GIL is released, so a wrong
 * call raises instead of touching memory it does not own.
 */
#include "common.h"

#include <string.h>

typedef struct bufs {
    Py_buffer b[24];
    int n;
} bufs;

static void bufs_release(bufs *B) {
    for (int i = 0; i < B->n; i++) {
        PyBuffer_Release(&B->b[i]);
    }
    B->n = 0;
}

/* borrow a buffer of exactly `bytes` bytes; NULL/None allowed when optional */
static int get_buf(bufs *B, PyObject *obj, int64_t bytes, int writable, int optional,
                   const char *name, void **out) {
    *out = NULL;
    if (obj == Py_None && optional) {
        return 0;
    }
    if (B->n >= (int)(sizeof B->b / sizeof B->b[0])) {
        PyErr_SetString(PyExc_RuntimeError, "too many buffers");
        return -1;
    }
    Py_buffer *v = &B->b[B->n];
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        return -1;
    }
    B->n++;
    if (v->len != bytes) {
        PyErr_Format(PyExc_ValueError, "%s: buffer has %zd bytes, the shape needs %lld", name,
                     v->len, (long long)bytes);
        return -1;
    }
    *out = v->buf;
    return 0;
}

static int get_weight(fdy_module_state *st, bufs *B, PyObject *obj, fdy_weight *w,
                      const char *name) {
    int type;
    PyObject *data;
    long long rows, cols;
    if (!PyArg_ParseTuple(obj, "iOLL", &type, &data, &rows, &cols)) {
        return -1;
    }
    memset(w, 0, sizeof *w);
    w->policy = fdy_policy_by_type(type);
    if (!w->policy) {
        PyErr_Format(st->ShapeError, "%s: unknown policy type id %d", name, type);
        return -1;
    }
    if (rows <= 0 || cols <= 0) {
        PyErr_Format(st->ShapeError, "%s: weight shape (%lld, %lld) must be positive", name,
                     rows, cols);
        return -1;
    }
    int64_t rb = fdy_policy_row_bytes(w->policy, cols);
    if (rb < 0) {
        fdy_raise(st, FDY_ERR_INVALID);
        return -1;
    }
    if (rows > INT64_MAX / (rb ? rb : 1)) {
        PyErr_Format(st->ShapeError, "%s: weight too large", name);
        return -1;
    }
    void *p;
    if (get_buf(B, data, rows * rb, 0, 0, name, &p) < 0) {
        return -1;
    }
    w->data = p;
    w->rows = rows;
    w->cols = cols;
    return 0;
}

static int pos_size(long long v, const char *name) {
    if (v <= 0) {
        PyErr_Format(PyExc_ValueError, "%s must be positive, got %lld", name, v);
        return -1;
    }
    return 0;
}

#define F32 ((int64_t)sizeof(float))
#define FINISH(call)                      \
    do {                                  \
        fdy_status s_;                    \
        Py_BEGIN_ALLOW_THREADS            \
        s_ = (call);                      \
        Py_END_ALLOW_THREADS              \
        bufs_release(&B);                 \
        if (s_) {                         \
            return fdy_raise(st, s_);     \
        }                                 \
        Py_RETURN_NONE;                   \
    } while (0)
#define FAIL()              \
    do {                    \
        bufs_release(&B);   \
        return NULL;        \
    } while (0)

static PyObject *b_matmul(PyObject *module, PyObject *args) {
    fdy_module_state *st = fdy_state_from_module(module);
    PyObject *wo, *xo, *bo, *oo;
    long long M;
    int acc, act, variant;
    if (!PyArg_ParseTuple(args, "OOLOOiii:matmul", &wo, &xo, &M, &bo, &oo, &acc, &act, &variant)) {
        return NULL;
    }
    bufs B = {.n = 0};
    fdy_weight w;
    void *x, *b, *o;
    if (pos_size(M, "M") < 0 || get_weight(st, &B, wo, &w, "weight") < 0 ||
        get_buf(&B, xo, M * w.cols * F32, 0, 0, "x", &x) < 0 ||
        get_buf(&B, bo, w.rows * F32, 0, 1, "bias", &b) < 0 ||
        get_buf(&B, oo, M * w.rows * F32, 1, 0, "out", &o) < 0) {
        FAIL();
    }
    FINISH(fdy_matmul(&w, x, M, b, o, acc, act, variant));
}

static PyObject *b_rmsnorm(PyObject *module, PyObject *args) {
    fdy_module_state *st = fdy_state_from_module(module);
    PyObject *xo, *wo, *oo;
    long long M, K;
    float eps;
    if (!PyArg_ParseTuple(args, "OLLOfO:rmsnorm", &xo, &M, &K, &wo, &eps, &oo)) {
        return NULL;
    }
    bufs B = {.n = 0};
    void *x, *w, *o;
    if (pos_size(M, "M") < 0 || pos_size(K, "K") < 0 ||
        get_buf(&B, xo, M * K * F32, 0, 0, "x", &x) < 0 ||
        get_buf(&B, wo, K * F32, 0, 0, "weight", &w) < 0 ||
        get_buf(&B, oo, M * K * F32, 1, 0, "out", &o) < 0) {
        FAIL();
    }
    FINISH(fdy_rmsnorm(x, M, K, w, eps, o));
}

static PyObject *b_rmsnorm_matmul(PyObject *module, PyObject *args) {
    fdy_module_state *st = fdy_state_from_module(module);
    PyObject *xo, *nwo, *wo, *bo, *oo;
    long long M;
    float eps;
    int acc, act, variant;
    if (!PyArg_ParseTuple(args, "OLOfOOOiii:rmsnorm_matmul", &xo, &M, &nwo, &eps, &wo, &bo, &oo,
                          &acc, &act, &variant)) {
        return NULL;
    }
    bufs B = {.n = 0};
    fdy_weight w;
    void *x, *nw, *b, *o;
    if (pos_size(M, "M") < 0 || get_weight(st, &B, wo, &w, "weight") < 0 ||
        get_buf(&B, xo, M * w.cols * F32, 0, 0, "x", &x) < 0 ||
        get_buf(&B, nwo, w.cols * F32, 0, 0, "norm_weight", &nw) < 0 ||
        get_buf(&B, bo, w.rows * F32, 0, 1, "bias", &b) < 0 ||
        get_buf(&B, oo, M * w.rows * F32, 1, 0, "out", &o) < 0) {
        FAIL();
    }
    FINISH(fdy_rmsnorm_matmul(x, M, nw, eps, &w, b, o, acc, act, variant));
}

static PyObject *b_rmsnorm_qkv(PyObject *module, PyObject *args) {
    fdy_module_state *st = fdy_state_from_module(module);
    PyObject *xo, *nwo, *wl, *bl, *ol;
    long long M;
    float eps;
    int variant;
    if (!PyArg_ParseTuple(args, "OLOfO!O!O!i:rmsnorm_qkv", &xo, &M, &nwo, &eps, &PyTuple_Type,
                          &wl, &PyTuple_Type, &bl, &PyTuple_Type, &ol, &variant)) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(wl);
    if (n < 2 || n > 3 || PyTuple_GET_SIZE(bl) != n || PyTuple_GET_SIZE(ol) != n) {
        PyErr_SetString(st->ShapeError, "rmsnorm_qkv: 2 or 3 weights, biases and outputs");
        return NULL;
    }
    bufs B = {.n = 0};
    fdy_weight w[3];
    const fdy_weight *wp[3];
    const float *bp[3];
    float *op[3];
    void *x, *nw;
    if (pos_size(M, "M") < 0) {
        FAIL();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        void *b, *o;
        if (get_weight(st, &B, PyTuple_GET_ITEM(wl, i), &w[i], "weight") < 0 ||
            get_buf(&B, PyTuple_GET_ITEM(bl, i), w[i].rows * F32, 0, 1, "bias", &b) < 0 ||
            get_buf(&B, PyTuple_GET_ITEM(ol, i), M * w[i].rows * F32, 1, 0, "out", &o) < 0) {
            FAIL();
        }
        if (w[i].cols != w[0].cols) {
            PyErr_SetString(st->ShapeError, "rmsnorm_qkv: weights differ in columns");
            FAIL();
        }
        wp[i] = &w[i];
        bp[i] = b;
        op[i] = o;
    }
    if (get_buf(&B, xo, M * w[0].cols * F32, 0, 0, "x", &x) < 0 ||
        get_buf(&B, nwo, w[0].cols * F32, 0, 0, "norm_weight", &nw) < 0) {
        FAIL();
    }
    FINISH(fdy_rmsnorm_qkv(x, M, nw, eps, (int)n, wp, bp, op, variant));
}

static PyObject *b_rope(PyObject *module, PyObject *args) {
    fdy_module_state *st = fdy_state_from_module(module);
    PyObject *xo, *po, *fo, *oo;
    long long M, H, D, rot;
    float theta;
    int neox;
    if (!PyArg_ParseTuple(args, "OLLLOLfOiO:rope", &xo, &M, &H, &D, &po, &rot, &theta, &fo,
                          &neox, &oo)) {
        return NULL;
    }
    bufs B = {.n = 0};
    void *x, *p, *f, *o;
    if (pos_size(M, "M") < 0 || pos_size(H, "H") < 0 || pos_size(D, "D") < 0 ||
        pos_size(rot, "rot_dims") < 0 || get_buf(&B, xo, M * H * D * F32, 0, 0, "x", &x) < 0 ||
        get_buf(&B, po, M * 4, 0, 0, "positions", &p) < 0 ||
        get_buf(&B, fo, rot / 2 * F32, 0, 1, "freq_factors", &f) < 0 ||
        get_buf(&B, oo, M * H * D * F32, 1, 0, "out", &o) < 0) {
        FAIL();
    }
    FINISH(fdy_rope(x, M, H, D, p, rot, theta, f, neox, o));
}

static PyObject *b_attention(PyObject *module, PyObject *args) {
    fdy_module_state *st = fdy_state_from_module(module);
    PyObject *qo, *ko, *vo, *oo;
    long long M, H, D, C, Hkv, start;
    float scale;
    if (!PyArg_ParseTuple(args, "OLLLOOLLLfO:attention", &qo, &M, &H, &D, &ko, &vo, &C, &Hkv,
                          &start, &scale, &oo)) {
        return NULL;
    }
    bufs B = {.n = 0};
    void *q, *k, *v, *o;
    if (pos_size(M, "M") < 0 || pos_size(H, "H") < 0 || pos_size(D, "D") < 0 ||
        pos_size(C, "cache length") < 0 || pos_size(Hkv, "kv heads") < 0 ||
        get_buf(&B, qo, M * H * D * F32, 0, 0, "q", &q) < 0 ||
        get_buf(&B, ko, C * Hkv * D * F32, 0, 0, "k_cache", &k) < 0 ||
        get_buf(&B, vo, C * Hkv * D * F32, 0, 0, "v_cache", &v) < 0 ||
        get_buf(&B, oo, M * H * D * F32, 1, 0, "out", &o) < 0) {
        FAIL();
    }
    FINISH(fdy_attention(q, M, H, D, k, v, C, Hkv, start, scale, o));
}

static PyObject *b_softmax(PyObject *module, PyObject *args) {
    fdy_module_state *st = fdy_state_from_module(module);
    PyObject *xo, *oo;
    long long M, N;
    if (!PyArg_ParseTuple(args, "OLLO:softmax", &xo, &M, &N, &oo)) {
        return NULL;
    }
    bufs B = {.n = 0};
    void *x, *o;
    if (pos_size(M, "M") < 0 || pos_size(N, "N") < 0 ||
        get_buf(&B, xo, M * N * F32, 0, 0, "x", &x) < 0 ||
        get_buf(&B, oo, M * N * F32, 1, 0, "out", &o) < 0) {
        FAIL();
    }
    FINISH(fdy_softmax(x, M, N, o));
}

static PyObject *b_binary(PyObject *module, PyObject *args, int which) {
    fdy_module_state *st = fdy_state_from_module(module);
    PyObject *ao, *bo, *oo;
    long long n;
    if (!PyArg_ParseTuple(args, "OOLO", &ao, &bo, &n, &oo)) {
        return NULL;
    }
    bufs B = {.n = 0};
    void *a, *b, *o;
    if (n < 0 || get_buf(&B, ao, n * F32, 0, 0, "a", &a) < 0 ||
        get_buf(&B, bo, n * F32, 0, 0, "b", &b) < 0 ||
        get_buf(&B, oo, n * F32, 1, 0, "out", &o) < 0) {
        if (n < 0 && !PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "negative size");
        }
        FAIL();
    }
    FINISH(which ? fdy_add(a, b, n, o) : fdy_swiglu(a, b, n, o));
}

static PyObject *b_swiglu(PyObject *module, PyObject *args) {
    return b_binary(module, args, 0);
}

static PyObject *b_add(PyObject *module, PyObject *args) {
    return b_binary(module, args, 1);
}

static PyObject *b_ffn(PyObject *module, PyObject *args) {
    fdy_module_state *st = fdy_state_from_module(module);
    PyObject *xo, *nwo, *go, *uo, *dov, *oo;
    long long M;
    float eps;
    int variant;
    if (!PyArg_ParseTuple(args, "OLOfOOOOi:ffn", &xo, &M, &nwo, &eps, &go, &uo, &dov, &oo,
                          &variant)) {
        return NULL;
    }
    bufs B = {.n = 0};
    fdy_weight g, u, d;
    void *x, *nw, *o;
    if (pos_size(M, "M") < 0 || get_weight(st, &B, go, &g, "w_gate") < 0 ||
        get_weight(st, &B, uo, &u, "w_up") < 0 || get_weight(st, &B, dov, &d, "w_down") < 0 ||
        get_buf(&B, xo, M * g.cols * F32, 0, 0, "x", &x) < 0 ||
        get_buf(&B, nwo, g.cols * F32, 0, 0, "norm_weight", &nw) < 0 ||
        get_buf(&B, oo, M * g.cols * F32, 1, 0, "out", &o) < 0) {
        FAIL();
    }
    FINISH(fdy_ffn(x, M, nw, eps, &g, &u, &d, o, variant));
}

static PyObject *b_embedding(PyObject *module, PyObject *args) {
    fdy_module_state *st = fdy_state_from_module(module);
    PyObject *to, *io, *oo;
    long long M;
    if (!PyArg_ParseTuple(args, "OOLO:embedding", &to, &io, &M, &oo)) {
        return NULL;
    }
    bufs B = {.n = 0};
    fdy_weight t;
    void *ids, *o;
    if (pos_size(M, "M") < 0 || get_weight(st, &B, to, &t, "table") < 0 ||
        get_buf(&B, io, M * 4, 0, 0, "ids", &ids) < 0 ||
        get_buf(&B, oo, M * t.cols * F32, 1, 0, "out", &o) < 0) {
        FAIL();
    }
    FINISH(fdy_embedding(&t, ids, M, o));
}

static PyObject *b_set_num_threads(PyObject *module, PyObject *arg) {
    fdy_module_state *st = fdy_state_from_module(module);
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (n < 1 || n > 256) {
        PyErr_Format(st->ShapeError, "number of threads must be in [1, 256], got %ld", n);
        return NULL;
    }
    fdy_status s;
    Py_BEGIN_ALLOW_THREADS
    s = fdy_set_num_threads((int)n);
    Py_END_ALLOW_THREADS
    if (s) {
        return fdy_raise(st, s);
    }
    Py_RETURN_NONE;
}

static PyObject *b_get_num_threads(PyObject *module, PyObject *noargs) {
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = fdy_get_num_threads();
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(n);
}

static PyObject *b_bench_read(PyObject *module, PyObject *arg) {
    Py_buffer v;
    if (PyObject_GetBuffer(arg, &v, PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    uint64_t r;
    Py_BEGIN_ALLOW_THREADS
    r = fdy_bench_read(v.buf, (size_t)v.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&v);
    return PyLong_FromUnsignedLongLong(r);
}

static PyMethodDef ops_methods[] = {
    {"bench_read", b_bench_read, METH_O,
     "bench_read(buffer) -> checksum: streams the buffer on the thread pool (bandwidth probe)"},
    {"matmul", b_matmul, METH_VARARGS, "matmul(w, x, M, bias, out, accumulate, act, variant)"},
    {"rmsnorm", b_rmsnorm, METH_VARARGS, "rmsnorm(x, M, K, weight, eps, out)"},
    {"rmsnorm_matmul", b_rmsnorm_matmul, METH_VARARGS,
     "rmsnorm_matmul(x, M, norm_weight, eps, w, bias, out, accumulate, act, variant)"},
    {"rmsnorm_qkv", b_rmsnorm_qkv, METH_VARARGS,
     "rmsnorm_qkv(x, M, norm_weight, eps, weights, biases, outs, variant)"},
    {"rope", b_rope, METH_VARARGS,
     "rope(x, M, H, D, positions, rot_dims, theta, freq_factors, neox, out)"},
    {"attention", b_attention, METH_VARARGS,
     "attention(q, M, H, D, k_cache, v_cache, C, Hkv, start_pos, scale, out)"},
    {"softmax", b_softmax, METH_VARARGS, "softmax(x, M, N, out)"},
    {"swiglu", b_swiglu, METH_VARARGS, "swiglu(gate, up, n, out)"},
    {"add", b_add, METH_VARARGS, "add(a, b, n, out)"},
    {"ffn", b_ffn, METH_VARARGS, "ffn(x, M, norm_weight, eps, w_gate, w_up, w_down, out, variant)"},
    {"embedding", b_embedding, METH_VARARGS, "embedding(table, ids, M, out)"},
    {"set_num_threads", b_set_num_threads, METH_O, "set_num_threads(n)"},
    {"get_num_threads", b_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {NULL, NULL, 0, NULL},
};

int fdy_init_ops_bindings(PyObject *module) {
    return PyModule_AddFunctions(module, ops_methods);
}
