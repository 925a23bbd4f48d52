/* gguf_bind.c - Python bindings of the GGUF reader and writer.
 *
 * _core.GGUF wraps one fdy_gguf (a mapped file, or a caller's buffer that it keeps alive) and
 * exports the whole file through the buffer protocol, read-only: tensor views in Python are
 * memoryview slices of it, so a view keeps the mapping alive after the Python file object is
 * closed.  _core.Writer wraps fdy_gguf_writer and keeps the tensor buffers alive until write.
 *
 * Value type descriptors: a scalar is its GGUF type number; an array is (9, element
 * descriptor); an empty nested array's element descriptor is (9, 0).
 */
#include "common.h"

#include <string.h>

/* ---- reader ---------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    fdy_gguf *g;
    Py_buffer source; /* when opened from a buffer */
    int has_source;
    Py_ssize_t exports;
} GGUFObject;

static PyObject *str_to_py(fdy_str s) {
    return PyUnicode_DecodeUTF8(s.ptr, (Py_ssize_t)s.len, "surrogateescape");
}

static PyObject *value_desc(const fdy_value *v) {
    if (v->type != FDY_GGUF_ARRAY) {
        return PyLong_FromLong(v->type);
    }
    if (v->elem_type == FDY_GGUF_ARRAY) {
        PyObject *inner;
        if (v->count > 0) {
            inner = value_desc(&((const fdy_value *)v->v.data)[0]);
        } else {
            inner = Py_BuildValue("(ii)", FDY_GGUF_ARRAY, 0);
        }
        if (!inner) {
            return NULL;
        }
        PyObject *r = Py_BuildValue("(iN)", FDY_GGUF_ARRAY, inner);
        return r;
    }
    return Py_BuildValue("(ii)", FDY_GGUF_ARRAY, v->elem_type);
}

static PyObject *scalar_to_py(int32_t type, const void *p) {
    switch (type) {
    case FDY_GGUF_UINT8: return PyLong_FromUnsignedLong(*(const uint8_t *)p);
    case FDY_GGUF_INT8: return PyLong_FromLong(*(const int8_t *)p);
    case FDY_GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); return PyLong_FromUnsignedLong(x); }
    case FDY_GGUF_INT16: { int16_t x; memcpy(&x, p, 2); return PyLong_FromLong(x); }
    case FDY_GGUF_UINT32: { uint32_t x; memcpy(&x, p, 4); return PyLong_FromUnsignedLong(x); }
    case FDY_GGUF_INT32: { int32_t x; memcpy(&x, p, 4); return PyLong_FromLong(x); }
    case FDY_GGUF_FLOAT32: { float x; memcpy(&x, p, 4); return PyFloat_FromDouble(x); }
    case FDY_GGUF_BOOL: return PyBool_FromLong(*(const uint8_t *)p);
    case FDY_GGUF_UINT64: { uint64_t x; memcpy(&x, p, 8); return PyLong_FromUnsignedLongLong(x); }
    case FDY_GGUF_INT64: { int64_t x; memcpy(&x, p, 8); return PyLong_FromLongLong(x); }
    case FDY_GGUF_FLOAT64: { double x; memcpy(&x, p, 8); return PyFloat_FromDouble(x); }
    default: PyErr_SetString(PyExc_ValueError, "bad scalar type"); return NULL;
    }
}

static PyObject *value_to_py(const fdy_value *v) {
    switch (v->type) {
    case FDY_GGUF_UINT8:
    case FDY_GGUF_UINT16:
    case FDY_GGUF_UINT32:
    case FDY_GGUF_UINT64: return PyLong_FromUnsignedLongLong(v->v.u64);
    case FDY_GGUF_INT8:
    case FDY_GGUF_INT16:
    case FDY_GGUF_INT32:
    case FDY_GGUF_INT64: return PyLong_FromLongLong(v->v.i64);
    case FDY_GGUF_FLOAT32:
    case FDY_GGUF_FLOAT64: return PyFloat_FromDouble(v->v.f64);
    case FDY_GGUF_BOOL: return PyBool_FromLong((long)v->v.u64);
    case FDY_GGUF_STRING: return str_to_py(v->v.str);
    case FDY_GGUF_ARRAY: break;
    default: PyErr_SetString(PyExc_ValueError, "bad value type"); return NULL;
    }
    if (v->count > (uint64_t)PY_SSIZE_T_MAX) {
        return PyErr_NoMemory();
    }
    PyObject *list = PyList_New((Py_ssize_t)v->count);
    if (!list) {
        return NULL;
    }
    size_t es = fdy_gguf_type_size(v->elem_type);
    for (uint64_t i = 0; i < v->count; i++) {
        PyObject *item;
        if (es) {
            item = scalar_to_py(v->elem_type, (const uint8_t *)v->v.data + i * es);
        } else if (v->elem_type == FDY_GGUF_STRING) {
            item = str_to_py(((const fdy_str *)v->v.data)[i]);
        } else {
            item = value_to_py(&((const fdy_value *)v->v.data)[i]);
        }
        if (!item) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

static int gguf_init(GGUFObject *self, PyObject *args, PyObject *kwds) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    PyObject *src;
    static char *kwlist[] = {"source", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:GGUF", kwlist, &src)) {
        return -1;
    }
    if (self->g) {
        PyErr_SetString(PyExc_RuntimeError, "GGUF object already initialised");
        return -1;
    }
    fdy_status s;
    fdy_gguf *g = NULL;
    if (PyObject_CheckBuffer(src)) {
        if (PyObject_GetBuffer(src, &self->source, PyBUF_C_CONTIGUOUS) < 0) {
            return -1;
        }
        self->has_source = 1;
        const void *buf = self->source.buf;
        size_t len = (size_t)self->source.len;
        Py_BEGIN_ALLOW_THREADS
        s = fdy_gguf_open_memory(buf, len, &g);
        Py_END_ALLOW_THREADS
    } else {
        PyObject *path = NULL;
        if (!PyUnicode_FSConverter(src, &path)) {
            return -1;
        }
        const char *p = PyBytes_AS_STRING(path);
        Py_BEGIN_ALLOW_THREADS
        s = fdy_gguf_open(p, &g);
        Py_END_ALLOW_THREADS
        Py_DECREF(path);
    }
    if (s) {
        fdy_raise(st, s);
        return -1;
    }
    self->g = g;
    return 0;
}

static void gguf_dealloc(GGUFObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    fdy_gguf_close(self->g);
    self->g = NULL;
    if (self->has_source) {
        PyBuffer_Release(&self->source);
        self->has_source = 0;
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int check_open(GGUFObject *self) {
    if (!self->g) {
        PyErr_SetString(PyExc_ValueError, "GGUF object is not initialised");
        return -1;
    }
    return 0;
}

const fdy_gguf *fdy_gguf_handle(fdy_module_state *st, PyObject *obj) {
    if (!PyObject_TypeCheck(obj, st->GGUFType)) {
        PyErr_Format(PyExc_TypeError, "expected a pyfoundry._core.GGUF, got %.100s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (check_open((GGUFObject *)obj) < 0) {
        return NULL;
    }
    return ((GGUFObject *)obj)->g;
}

static PyObject *gguf_metadata(GGUFObject *self, PyObject *noargs) {
    if (check_open(self) < 0) {
        return NULL;
    }
    int64_t n = fdy_gguf_n_kv(self->g);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list) {
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) {
        const fdy_value *v = fdy_gguf_kv_value(self->g, i);
        PyObject *k = str_to_py(fdy_gguf_kv_key(self->g, i));
        PyObject *d = k ? value_desc(v) : NULL;
        PyObject *val = d ? value_to_py(v) : NULL;
        if (!val) {
            Py_XDECREF(k);
            Py_XDECREF(d);
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, Py_BuildValue("(NNN)", k, d, val));
    }
    return list;
}

static PyObject *gguf_tensors(GGUFObject *self, PyObject *noargs) {
    if (check_open(self) < 0) {
        return NULL;
    }
    int64_t n = fdy_gguf_n_tensors(self->g);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list) {
        return NULL;
    }
    const uint8_t *base = (const uint8_t *)fdy_gguf_base(self->g);
    for (int64_t i = 0; i < n; i++) {
        const fdy_tensor_info *t = fdy_gguf_tensor(self->g, i);
        PyObject *ne = PyTuple_New(t->n_dims);
        if (!ne) {
            Py_DECREF(list);
            return NULL;
        }
        for (int d = 0; d < t->n_dims; d++) {
            PyTuple_SET_ITEM(ne, d, PyLong_FromLongLong(t->ne[d]));
        }
        PyObject *item = Py_BuildValue("(NNiKK)", str_to_py(t->name), ne, (int)t->type,
                                       (unsigned long long)((const uint8_t *)t->data - base),
                                       (unsigned long long)t->nbytes);
        if (!item) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

static PyObject *gguf_get_version(GGUFObject *self, void *c) {
    return check_open(self) < 0 ? NULL : PyLong_FromUnsignedLong(fdy_gguf_version(self->g));
}
static PyObject *gguf_get_alignment(GGUFObject *self, void *c) {
    return check_open(self) < 0 ? NULL : PyLong_FromUnsignedLong(fdy_gguf_alignment(self->g));
}
static PyObject *gguf_get_data_offset(GGUFObject *self, void *c) {
    return check_open(self) < 0 ? NULL
                                : PyLong_FromUnsignedLongLong(fdy_gguf_data_offset(self->g));
}
static PyObject *gguf_get_size(GGUFObject *self, void *c) {
    return check_open(self) < 0 ? NULL : PyLong_FromUnsignedLongLong(fdy_gguf_size(self->g));
}

static int gguf_getbuffer(GGUFObject *self, Py_buffer *view, int flags) {
    if (check_open(self) < 0) {
        view->obj = NULL;
        return -1;
    }
    if (flags & PyBUF_WRITABLE) {
        PyErr_SetString(PyExc_BufferError, "GGUF file buffers are read-only");
        view->obj = NULL;
        return -1;
    }
    int r = PyBuffer_FillInfo(view, (PyObject *)self, (void *)fdy_gguf_base(self->g),
                              (Py_ssize_t)fdy_gguf_size(self->g), 1, flags);
    if (r == 0) {
        self->exports++;
    }
    return r;
}

static void gguf_releasebuffer(GGUFObject *self, Py_buffer *view) {
    self->exports--;
}

static PyMethodDef gguf_methods[] = {
    {"metadata", (PyCFunction)gguf_metadata, METH_NOARGS,
     "metadata() -> list of (key, type descriptor, value)"},
    {"tensors", (PyCFunction)gguf_tensors, METH_NOARGS,
     "tensors() -> list of (name, ne (GGML order), type id, absolute offset, nbytes)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef gguf_getset[] = {
    {"version", (getter)gguf_get_version, NULL, "GGUF version", NULL},
    {"alignment", (getter)gguf_get_alignment, NULL, "data alignment in bytes", NULL},
    {"data_offset", (getter)gguf_get_data_offset, NULL, "start of the data section", NULL},
    {"size", (getter)gguf_get_size, NULL, "file size in bytes", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot gguf_slots[] = {
    {Py_tp_init, gguf_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, gguf_dealloc},
    {Py_tp_methods, gguf_methods},
    {Py_tp_getset, gguf_getset},
    {Py_bf_getbuffer, gguf_getbuffer},
    {Py_bf_releasebuffer, gguf_releasebuffer},
    {Py_tp_doc, "GGUF(path_or_buffer): a parsed, memory-mapped GGUF file (low level)"},
    {0, NULL},
};

static PyType_Spec gguf_spec = {
    .name = "pyfoundry._core.GGUF",
    .basicsize = sizeof(GGUFObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = gguf_slots,
};

/* ---- writer ----------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    fdy_gguf_writer *w;
    Py_buffer *bufs;
    Py_ssize_t n_bufs, cap_bufs;
} WriterObject;

/* temporaries of one Python -> fdy_value conversion */
typedef struct conv {
    PyObject *keep; /* list of bytes objects */
    void **ptrs;
    size_t n, cap;
} conv;

static void *conv_alloc(conv *c, size_t n, size_t size) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 16;
        void **p = PyMem_Realloc(c->ptrs, cap * sizeof *p);
        if (!p) {
            PyErr_NoMemory();
            return NULL;
        }
        c->ptrs = p;
        c->cap = cap;
    }
    void *m = PyMem_Calloc(n ? n : 1, size);
    if (!m) {
        PyErr_NoMemory();
        return NULL;
    }
    c->ptrs[c->n++] = m;
    return m;
}

static void conv_free(conv *c) {
    for (size_t i = 0; i < c->n; i++) {
        PyMem_Free(c->ptrs[i]);
    }
    PyMem_Free(c->ptrs);
    Py_XDECREF(c->keep);
}

static int py_to_str(conv *c, PyObject *obj, fdy_str *out) {
    PyObject *b;
    if (PyBytes_Check(obj)) {
        b = Py_NewRef(obj);
    } else if (PyUnicode_Check(obj)) {
        b = PyUnicode_AsEncodedString(obj, "utf-8", "surrogateescape");
        if (!b) {
            return -1;
        }
    } else {
        PyErr_Format(PyExc_TypeError, "expected a str, got %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (PyList_Append(c->keep, b) < 0) {
        Py_DECREF(b);
        return -1;
    }
    out->ptr = PyBytes_AS_STRING(b);
    out->len = (uint64_t)PyBytes_GET_SIZE(b);
    Py_DECREF(b);
    return 0;
}

static int py_to_scalar(int32_t type, PyObject *obj, void *dst, fdy_value *v) {
    /* writes the little-endian item to dst (arrays) or fills v (scalars) */
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
    if (type == FDY_GGUF_FLOAT32 || type == FDY_GGUF_FLOAT64) {
        double d = PyFloat_AsDouble(obj);
        if (d == -1.0 && PyErr_Occurred()) {
            return -1;
        }
        if (type == FDY_GGUF_FLOAT32) {
            b.f32 = (float)d;
        } else {
            b.f64 = d;
        }
        if (v) {
            v->v.f64 = type == FDY_GGUF_FLOAT32 ? (double)b.f32 : d;
        }
    } else if (type == FDY_GGUF_BOOL) {
        int t = PyObject_IsTrue(obj);
        if (t < 0) {
            return -1;
        }
        b.u8 = (uint8_t)t;
        if (v) {
            v->v.u64 = (uint64_t)t;
        }
    } else {
        int overflow = 0;
        PyObject *idx = PyNumber_Index(obj);
        if (!idx) {
            return -1;
        }
        long long sv = PyLong_AsLongLongAndOverflow(idx, &overflow);
        unsigned long long uv = 0;
        int neg = 0;
        if (overflow > 0) {
            uv = PyLong_AsUnsignedLongLong(idx);
            if (uv == (unsigned long long)-1 && PyErr_Occurred()) {
                Py_DECREF(idx);
                return -1;
            }
        } else if (overflow < 0) {
            Py_DECREF(idx);
            PyErr_SetString(PyExc_OverflowError, "integer too small for any GGUF type");
            return -1;
        } else if (sv == -1 && PyErr_Occurred()) {
            Py_DECREF(idx);
            return -1;
        } else {
            neg = sv < 0;
            uv = (unsigned long long)sv;
        }
        Py_DECREF(idx);
        int ok = 1;
        switch (type) {
        case FDY_GGUF_UINT8: ok = !neg && uv <= 0xff; b.u8 = (uint8_t)uv; break;
        case FDY_GGUF_INT8: ok = !overflow && sv >= -128 && sv <= 127; b.i8 = (int8_t)sv; break;
        case FDY_GGUF_UINT16: ok = !neg && uv <= 0xffff; b.u16 = (uint16_t)uv; break;
        case FDY_GGUF_INT16:
            ok = !overflow && sv >= -32768 && sv <= 32767;
            b.i16 = (int16_t)sv;
            break;
        case FDY_GGUF_UINT32: ok = !neg && uv <= 0xffffffffull; b.u32 = (uint32_t)uv; break;
        case FDY_GGUF_INT32:
            ok = !overflow && sv >= INT32_MIN && sv <= INT32_MAX;
            b.i32 = (int32_t)sv;
            break;
        case FDY_GGUF_UINT64: ok = !neg; b.u64 = uv; break;
        case FDY_GGUF_INT64: ok = !overflow; b.i64 = (int64_t)sv; break;
        default:
            PyErr_Format(PyExc_ValueError, "type %d is not a scalar type", type);
            return -1;
        }
        if (!ok) {
            PyErr_Format(PyExc_OverflowError, "value out of range for GGUF type %d", type);
            return -1;
        }
        if (v) {
            v->v.u64 = uv;
        }
    }
    if (dst) {
        memcpy(dst, &b, fdy_gguf_type_size(type));
    }
    return 0;
}

static int py_to_value(conv *c, PyObject *desc, PyObject *obj, fdy_value *v, int depth) {
    memset(v, 0, sizeof *v);
    if (depth > 8) {
        PyErr_SetString(PyExc_ValueError, "arrays nested too deeply");
        return -1;
    }
    if (PyLong_Check(desc)) {
        long t = PyLong_AsLong(desc);
        if (t < 0 || t > 12 || t == FDY_GGUF_ARRAY) {
            PyErr_Format(PyExc_ValueError, "bad scalar type descriptor %ld", t);
            return -1;
        }
        v->type = (int32_t)t;
        if (t == FDY_GGUF_STRING) {
            return py_to_str(c, obj, &v->v.str);
        }
        return py_to_scalar((int32_t)t, obj, NULL, v);
    }
    long et;
    PyObject *inner;
    if (!PyTuple_Check(desc) || PyTuple_GET_SIZE(desc) != 2 ||
        PyLong_AsLong(PyTuple_GET_ITEM(desc, 0)) != FDY_GGUF_ARRAY) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "bad type descriptor");
        }
        return -1;
    }
    inner = PyTuple_GET_ITEM(desc, 1);
    et = PyLong_Check(inner) ? PyLong_AsLong(inner) : FDY_GGUF_ARRAY;
    if (et < 0 || et > 12) {
        PyErr_Format(PyExc_ValueError, "bad array element type %ld", et);
        return -1;
    }
    PyObject *seq = PySequence_Fast(obj, "an array value must be a sequence");
    if (!seq) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    v->type = FDY_GGUF_ARRAY;
    v->elem_type = (int32_t)et;
    v->count = (uint64_t)n;
    int r = 0;
    size_t es = fdy_gguf_type_size((int32_t)et);
    if (es) {
        uint8_t *d = conv_alloc(c, (size_t)n, es);
        r = d ? 0 : -1;
        for (Py_ssize_t i = 0; r == 0 && i < n; i++) {
            r = py_to_scalar((int32_t)et, items[i], d + (size_t)i * es, NULL);
        }
        v->v.data = d;
    } else if (et == FDY_GGUF_STRING) {
        fdy_str *d = conv_alloc(c, (size_t)n, sizeof(fdy_str));
        r = d ? 0 : -1;
        for (Py_ssize_t i = 0; r == 0 && i < n; i++) {
            r = py_to_str(c, items[i], &d[i]);
        }
        v->v.data = d;
    } else {
        fdy_value *d = conv_alloc(c, (size_t)n, sizeof(fdy_value));
        r = d ? 0 : -1;
        for (Py_ssize_t i = 0; r == 0 && i < n; i++) {
            r = py_to_value(c, inner, items[i], &d[i], depth + 1);
        }
        v->v.data = d;
    }
    Py_DECREF(seq);
    return r;
}

static int writer_init(WriterObject *self, PyObject *args, PyObject *kwds) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    if (!PyArg_ParseTuple(args, ":Writer")) {
        return -1;
    }
    if (self->w) {
        return 0;
    }
    fdy_status s = fdy_gguf_writer_new(&self->w);
    if (s) {
        fdy_raise(st, s);
        return -1;
    }
    return 0;
}

static void writer_dealloc(WriterObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    fdy_gguf_writer_free(self->w);
    for (Py_ssize_t i = 0; i < self->n_bufs; i++) {
        PyBuffer_Release(&self->bufs[i]);
    }
    PyMem_Free(self->bufs);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *writer_add_kv(WriterObject *self, PyObject *args) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    const char *key;
    PyObject *desc, *value;
    if (!PyArg_ParseTuple(args, "sOO:add_kv", &key, &desc, &value)) {
        return NULL;
    }
    if (!self->w) {
        PyErr_SetString(PyExc_ValueError, "writer is not initialised");
        return NULL;
    }
    conv c = {PyList_New(0), NULL, 0, 0};
    if (!c.keep) {
        return NULL;
    }
    fdy_value v;
    if (py_to_value(&c, desc, value, &v, 0) < 0) {
        conv_free(&c);
        return NULL;
    }
    fdy_status s = fdy_gguf_writer_add_kv(self->w, key, &v);
    conv_free(&c);
    if (s) {
        return fdy_raise(st, s);
    }
    Py_RETURN_NONE;
}

static PyObject *writer_add_tensor(WriterObject *self, PyObject *args) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    const char *name;
    PyObject *ne_obj, *data;
    int type;
    if (!PyArg_ParseTuple(args, "sOiO:add_tensor", &name, &ne_obj, &type, &data)) {
        return NULL;
    }
    if (!self->w) {
        PyErr_SetString(PyExc_ValueError, "writer is not initialised");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(ne_obj, "ne must be a sequence of ints");
    if (!seq) {
        return NULL;
    }
    Py_ssize_t nd = PySequence_Fast_GET_SIZE(seq);
    int64_t ne[FDY_MAX_DIMS] = {1, 1, 1, 1};
    if (nd < 1 || nd > FDY_MAX_DIMS) {
        Py_DECREF(seq);
        PyErr_Format(st->ShapeError, "tensor '%s': %zd dimensions (1 to %d supported)", name,
                     nd, FDY_MAX_DIMS);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nd; i++) {
        ne[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (ne[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    if (self->n_bufs == self->cap_bufs) {
        Py_ssize_t cap = self->cap_bufs ? self->cap_bufs * 2 : 16;
        Py_buffer *b = PyMem_Realloc(self->bufs, (size_t)cap * sizeof *b);
        if (!b) {
            return PyErr_NoMemory();
        }
        self->bufs = b;
        self->cap_bufs = cap;
    }
    Py_buffer *view = &self->bufs[self->n_bufs];
    if (PyObject_GetBuffer(data, view, PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    fdy_status s = fdy_gguf_writer_add_tensor(self->w, name, (int32_t)nd, ne, type, view->buf,
                                              (uint64_t)view->len);
    if (s) {
        PyBuffer_Release(view);
        return fdy_raise(st, s);
    }
    self->n_bufs++;
    Py_RETURN_NONE;
}

static PyObject *writer_write(WriterObject *self, PyObject *arg) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    PyObject *path = NULL;
    if (!self->w) {
        PyErr_SetString(PyExc_ValueError, "writer is not initialised");
        return NULL;
    }
    if (!PyUnicode_FSConverter(arg, &path)) {
        return NULL;
    }
    fdy_status s;
    const char *p = PyBytes_AS_STRING(path);
    Py_BEGIN_ALLOW_THREADS
    s = fdy_gguf_writer_write(self->w, p);
    Py_END_ALLOW_THREADS
    Py_DECREF(path);
    if (s) {
        return fdy_raise(st, s);
    }
    Py_RETURN_NONE;
}

static PyMethodDef writer_methods[] = {
    {"add_kv", (PyCFunction)writer_add_kv, METH_VARARGS, "add_kv(key, type descriptor, value)"},
    {"add_tensor", (PyCFunction)writer_add_tensor, METH_VARARGS,
     "add_tensor(name, ne (GGML order), type id, buffer); the buffer is held until freed"},
    {"write", (PyCFunction)writer_write, METH_O, "write(path)"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot writer_slots[] = {
    {Py_tp_init, writer_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, writer_dealloc},
    {Py_tp_methods, writer_methods},
    {Py_tp_doc, "Writer(): builds a GGUF file (low level)"},
    {0, NULL},
};

static PyType_Spec writer_spec = {
    .name = "pyfoundry._core.Writer",
    .basicsize = sizeof(WriterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = writer_slots,
};

int fdy_init_gguf_bindings(PyObject *module) {
    fdy_module_state *st = fdy_state_from_module(module);
    st->GGUFType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &gguf_spec, NULL);
    if (!st->GGUFType || PyModule_AddObjectRef(module, "GGUF", (PyObject *)st->GGUFType) < 0) {
        return -1;
    }
    st->WriterType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &writer_spec, NULL);
    if (!st->WriterType ||
        PyModule_AddObjectRef(module, "Writer", (PyObject *)st->WriterType) < 0) {
        return -1;
    }
    return 0;
}
