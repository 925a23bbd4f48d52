/* model_bind.c - Python binding of the model executor (foundry_c/src/model.c).
 *
 * _core.Model(program, weights, widths, n_layers, kv_width, max_ctx, logits_buf): program is
 * a bytes-like array of fdy_instr structs (built by pyfoundry/model.py with a matching NumPy
 * dtype, size _core.instr_size); weights are (type_id, buffer, rows, cols) tuples whose
 * buffers the object holds for its lifetime (views into the mapped file stay mapped).
 * forward() releases the GIL for the whole token batch.
 */
#include "common.h"

#include <string.h>

typedef struct {
    PyObject_HEAD
    fdy_model *m;
    Py_buffer *wbufs;
    Py_ssize_t n_wbufs;
    int32_t n_captures;
    int64_t vocab;
} ModelObject;

static int model_init(ModelObject *self, PyObject *args, PyObject *kwds) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    PyObject *prog_obj, *wlist, *wid_obj;
    int n_layers, logits_buf, n_captures;
    long long kv_width, max_ctx;
    if (!PyArg_ParseTuple(args, "OO!OiLLii:Model", &prog_obj, &PyList_Type, &wlist, &wid_obj,
                          &n_layers, &kv_width, &max_ctx, &logits_buf, &n_captures)) {
        return -1;
    }
    if (self->m) {
        PyErr_SetString(PyExc_RuntimeError, "Model already initialised");
        return -1;
    }
    Py_buffer prog = {0};
    fdy_weight *ws = NULL;
    int64_t *widths = NULL;
    PyObject *wid = NULL;
    int rc = -1;
    if (PyObject_GetBuffer(prog_obj, &prog, PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    if (prog.len == 0 || prog.len % (Py_ssize_t)sizeof(fdy_instr) != 0) {
        PyErr_Format(st->ShapeError, "program: %zd bytes is not a whole number of %zu-byte "
                     "instructions", prog.len, sizeof(fdy_instr));
        goto done;
    }
    Py_ssize_t nw = PyList_GET_SIZE(wlist);
    ws = PyMem_Calloc((size_t)(nw ? nw : 1), sizeof *ws);
    self->wbufs = PyMem_Calloc((size_t)(nw ? nw : 1), sizeof(Py_buffer));
    if (!ws || !self->wbufs) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < nw; i++) {
        int type;
        PyObject *data;
        long long rows, cols;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(wlist, i), "iOLL", &type, &data, &rows, &cols)) {
            goto done;
        }
        memset(&ws[i], 0, sizeof ws[i]);
        ws[i].policy = fdy_policy_by_type(type);
        if (!ws[i].policy || rows <= 0 || cols <= 0) {
            PyErr_Format(st->ShapeError, "weight %zd: bad type or shape", i);
            goto done;
        }
        int64_t rb = fdy_policy_row_bytes(ws[i].policy, cols);
        if (rb < 0) {
            fdy_raise(st, FDY_ERR_INVALID);
            goto done;
        }
        if (PyObject_GetBuffer(data, &self->wbufs[i], PyBUF_C_CONTIGUOUS) < 0) {
            goto done;
        }
        self->n_wbufs = i + 1;
        if (self->wbufs[i].len != rows * rb) {
            PyErr_Format(st->ShapeError, "weight %zd: %zd bytes, shape needs %lld", i,
                         self->wbufs[i].len, (long long)(rows * rb));
            goto done;
        }
        ws[i].data = self->wbufs[i].buf;
        ws[i].rows = rows;
        ws[i].cols = cols;
    }
    wid = PySequence_Fast(wid_obj, "widths must be a sequence");
    if (!wid) {
        goto done;
    }
    Py_ssize_t nb = PySequence_Fast_GET_SIZE(wid);
    widths = PyMem_Calloc((size_t)(nb ? nb : 1), sizeof *widths);
    if (!widths) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < nb; i++) {
        widths[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(wid, i));
        if (widths[i] == -1 && PyErr_Occurred()) {
            goto done;
        }
    }
    if (n_captures < 0) {
        PyErr_SetString(st->ShapeError, "negative capture count");
        goto done;
    }
    const fdy_instr *ins = (const fdy_instr *)prog.buf;
    int32_t ni = (int32_t)(prog.len / (Py_ssize_t)sizeof(fdy_instr));
    for (int32_t i = 0; i < ni; i++) {
        if (ins[i].capture >= n_captures) {
            PyErr_Format(st->ShapeError, "program[%d]: capture slot %d >= %d", i,
                         ins[i].capture, n_captures);
            goto done;
        }
    }
    fdy_status s = fdy_model_create(ins, ni, ws, (int32_t)nw, widths, (int32_t)nb, n_layers,
                                    kv_width, max_ctx, logits_buf, &self->m);
    if (s) {
        fdy_raise(st, s);
        goto done;
    }
    self->n_captures = n_captures;
    self->vocab = widths[logits_buf];
    rc = 0;
done:
    PyBuffer_Release(&prog);
    Py_XDECREF(wid);
    PyMem_Free(ws);
    PyMem_Free(widths);
    return rc;
}

static void model_dealloc(ModelObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    fdy_model_free(self->m);
    for (Py_ssize_t i = 0; i < self->n_wbufs; i++) {
        PyBuffer_Release(&self->wbufs[i]);
    }
    PyMem_Free(self->wbufs);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int ready(ModelObject *self) {
    if (!self->m) {
        PyErr_SetString(PyExc_ValueError, "Model is not initialised");
        return -1;
    }
    return 0;
}

/* forward(tokens int32, start_pos, variant, captures (list of float32 arrays or None),
 *         capture_widths, last_only, logits out) */
static PyObject *model_forward(ModelObject *self, PyObject *args) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    PyObject *tok_obj, *cap_list, *cap_widths, *logits_obj;
    long long start;
    int variant, last_only;
    if (ready(self) < 0 ||
        !PyArg_ParseTuple(args, "OLiO!O!iO:forward", &tok_obj, &start, &variant, &PyList_Type,
                          &cap_list, &PyList_Type, &cap_widths, &last_only, &logits_obj)) {
        return NULL;
    }
    Py_buffer tok = {0}, lg = {0};
    Py_buffer *cb = NULL;
    float **cp = NULL;
    Py_ssize_t ncb = 0;
    PyObject *ret = NULL;
    if (PyObject_GetBuffer(tok_obj, &tok, PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    int64_t M = tok.len / 4;
    if (tok.len % 4 || M <= 0) {
        PyErr_SetString(st->ShapeError, "tokens: expected a non-empty int32 buffer");
        goto done;
    }
    if (PyObject_GetBuffer(logits_obj, &lg, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        goto done;
    }
    if (lg.len != (last_only ? 1 : M) * self->vocab * 4) {
        PyErr_SetString(st->ShapeError, "logits: wrong buffer size");
        goto done;
    }
    Py_ssize_t n = PyList_GET_SIZE(cap_list);
    if (n != self->n_captures || PyList_GET_SIZE(cap_widths) != n) {
        PyErr_Format(st->ShapeError, "captures: expected %d slots", self->n_captures);
        goto done;
    }
    cb = PyMem_Calloc((size_t)(n ? n : 1), sizeof *cb);
    cp = PyMem_Calloc((size_t)(n ? n : 1), sizeof *cp);
    if (!cb || !cp) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PyList_GET_ITEM(cap_list, i);
        if (o == Py_None) {
            continue;
        }
        /* slot i: the caller sized it (rows, width) with rows = M, or 1 for tail captures */
        long long width = PyLong_AsLongLong(PyList_GET_ITEM(cap_widths, i));
        if (width == -1 && PyErr_Occurred()) {
            goto done;
        }
        if (PyObject_GetBuffer(o, &cb[ncb], PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
            goto done;
        }
        ncb++;
        if (cb[ncb - 1].len != M * width * 4 && cb[ncb - 1].len != width * 4) {
            PyErr_Format(st->ShapeError, "capture slot %zd: wrong buffer size", i);
            goto done;
        }
        if (cb[ncb - 1].len != M * width * 4 && !last_only) {
            PyErr_Format(st->ShapeError, "capture slot %zd: wrong buffer size", i);
            goto done;
        }
        cp[i] = cb[ncb - 1].buf;
    }
    fdy_status s;
    const int32_t *tokens = tok.buf;
    float *logits = lg.buf;
    Py_BEGIN_ALLOW_THREADS
    s = fdy_model_forward(self->m, tokens, M, start, variant, cp, (int32_t)n, last_only, logits);
    Py_END_ALLOW_THREADS
    if (s) {
        fdy_raise(st, s);
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; i < ncb; i++) {
        PyBuffer_Release(&cb[i]);
    }
    PyMem_Free(cb);
    PyMem_Free(cp);
    PyBuffer_Release(&tok);
    PyBuffer_Release(&lg);
    return ret;
}

static PyObject *model_truncate(ModelObject *self, PyObject *arg) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    long long n = PyLong_AsLongLong(arg);
    if (ready(self) < 0 || (n == -1 && PyErr_Occurred())) {
        return NULL;
    }
    fdy_status s = fdy_model_truncate(self->m, n);
    if (s) {
        return fdy_raise(st, s);
    }
    Py_RETURN_NONE;
}

static PyObject *model_get_n_past(ModelObject *self, void *c) {
    return ready(self) < 0 ? NULL : PyLong_FromLongLong(fdy_model_n_past(self->m));
}
static PyObject *model_get_kv_capacity(ModelObject *self, void *c) {
    return ready(self) < 0 ? NULL : PyLong_FromLongLong(fdy_model_kv_capacity(self->m));
}
static PyObject *model_get_kv_bytes(ModelObject *self, void *c) {
    return ready(self) < 0 ? NULL : PyLong_FromSize_t(fdy_model_kv_bytes(self->m));
}
static PyObject *model_get_packed_bytes(ModelObject *self, void *c) {
    return ready(self) < 0 ? NULL : PyLong_FromSize_t(fdy_model_packed_bytes(self->m));
}

static PyMethodDef model_methods[] = {
    {"forward", (PyCFunction)model_forward, METH_VARARGS,
     "forward(tokens, start_pos, variant, captures, capture_widths, last_only, logits)"},
    {"truncate", (PyCFunction)model_truncate, METH_O, "truncate(n_past)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef model_getset[] = {
    {"n_past", (getter)model_get_n_past, NULL, "positions held in the KV cache", NULL},
    {"kv_capacity", (getter)model_get_kv_capacity, NULL, "allocated KV positions", NULL},
    {"kv_bytes", (getter)model_get_kv_bytes, NULL, "bytes of the KV cache", NULL},
    {"packed_bytes", (getter)model_get_packed_bytes, NULL,
     "bytes of the interleaved weight copies (made by the first q8 forward)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot model_slots[] = {
    {Py_tp_init, model_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, model_dealloc},
    {Py_tp_methods, model_methods},
    {Py_tp_getset, model_getset},
    {Py_tp_doc, "Model(program, weights, widths, n_layers, kv_width, max_ctx, logits_buf, "
                "n_captures): a compiled plan (low level)"},
    {0, NULL},
};

static PyType_Spec model_spec = {
    .name = "pyfoundry._core.Model",
    .basicsize = sizeof(ModelObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = model_slots,
};

int fdy_init_model_bindings(PyObject *module) {
    PyObject *t = PyType_FromModuleAndSpec(module, &model_spec, NULL);
    if (!t) {
        return -1;
    }
    int r = PyModule_AddObjectRef(module, "Model", t);
    Py_DECREF(t);
    if (r < 0) {
        return -1;
    }
    return PyModule_AddIntConstant(module, "instr_size", (long)sizeof(fdy_instr));
}
