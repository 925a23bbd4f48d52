/* sampler_bind.c - Python binding of the token sampler (foundry_c/src/sampler.c).
 *
 * _core.Sampler(temperature, top_k, top_p, min_p, repeat_penalty, presence_penalty,
 * frequency_penalty, penalty_last_n, seed): low level, wrapped by pyfoundry/sampler.py.
 * sample() and probs() take a 1-D float32 C-contiguous buffer of logits; probs() writes a
 * float32 buffer of the same length.  Buffers are checked before the GIL is released; while it
 * is released the object is marked busy, so a second thread using the same sampler gets a
 * FoundryStateError instead of a data race.
 */
#include "common.h"

#include <string.h>

typedef struct {
    PyObject_HEAD
    fdy_sampler *s;
    int busy;
} SamplerObject;

static int sampler_init(SamplerObject *self, PyObject *args, PyObject *kwds) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    static char *kwlist[] = {"temperature", "top_k", "top_p", "min_p", "repeat_penalty",
                             "presence_penalty", "frequency_penalty", "penalty_last_n", "seed",
                             NULL};
    fdy_sampler_params p = fdy_sampler_default_params();
    int top_k = p.top_k, last_n = p.penalty_last_n;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|didddddiK:Sampler", kwlist, &p.temperature,
                                     &top_k, &p.top_p, &p.min_p, &p.repeat_penalty,
                                     &p.presence_penalty, &p.frequency_penalty, &last_n,
                                     &seed)) {
        return -1;
    }
    if (self->s || self->busy) {
        PyErr_SetString(st->FoundryStateError, "Sampler already initialised");
        return -1;
    }
    p.top_k = top_k;
    p.penalty_last_n = last_n;
    p.seed = seed;
    fdy_status s = fdy_sampler_new(&p, &self->s);
    if (s) {
        fdy_raise(st, s);
        return -1;
    }
    return 0;
}

static void sampler_dealloc(SamplerObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    fdy_sampler_free(self->s);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int ready(fdy_module_state *st, SamplerObject *self) {
    if (!self->s) {
        PyErr_SetString(st->FoundryStateError, "Sampler is not initialised");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(st->FoundryStateError, "Sampler is in use by another thread");
        return -1;
    }
    return 0;
}

/* a 1-D float32 C-contiguous buffer; *n its length */
static int get_f32(fdy_module_state *st, PyObject *obj, Py_buffer *v, int writable,
                   const char *what, int64_t *n) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, v, flags) < 0) {
        return -1;
    }
    const char *f = v->format ? v->format : "B";
    if (f[0] == '<' || f[0] == '=' || f[0] == '@') {
        f++;
    }
    if (v->itemsize != 4 || strcmp(f, "f") != 0 || v->ndim != 1) {
        PyErr_Format(st->ShapeError, "Sampler.%s: expected a 1-D float32 buffer, got format "
                     "'%s' with %d dimensions", what, v->format ? v->format : "B", v->ndim);
        PyBuffer_Release(v);
        return -1;
    }
    *n = v->len / 4;
    if (*n == 0) {
        PyErr_Format(st->ShapeError, "Sampler.%s: logits are empty (vocab must be >= 1)", what);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

static PyObject *sampler_sample(SamplerObject *self, PyObject *arg) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    Py_buffer lg;
    int64_t n;
    if (get_f32(st, arg, &lg, 0, "sample", &n) < 0) {
        return NULL;
    }
    if (ready(st, self) < 0) { /* checked after the buffer calls, right before busy is set */
        PyBuffer_Release(&lg);
        return NULL;
    }
    fdy_status s;
    int32_t token = -1;
    fdy_sampler *smp = self->s;
    const float *logits = lg.buf;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    s = fdy_sampler_sample(smp, logits, n, &token);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    PyBuffer_Release(&lg);
    if (s) {
        return fdy_raise(st, s);
    }
    return PyLong_FromLong(token);
}

static PyObject *sampler_probs(SamplerObject *self, PyObject *args) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    PyObject *lo, *oo;
    if (!PyArg_ParseTuple(args, "OO:probs", &lo, &oo)) {
        return NULL;
    }
    Py_buffer lg, out;
    int64_t n, n_out;
    if (get_f32(st, lo, &lg, 0, "probs", &n) < 0) {
        return NULL;
    }
    if (get_f32(st, oo, &out, 1, "probs", &n_out) < 0) {
        PyBuffer_Release(&lg);
        return NULL;
    }
    int bad = n_out != n;
    if (bad) {
        PyErr_Format(st->ShapeError, "Sampler.probs: out has %lld elements, logits %lld",
                     (long long)n_out, (long long)n);
    }
    if (bad || ready(st, self) < 0) {
        PyBuffer_Release(&lg);
        PyBuffer_Release(&out);
        return NULL;
    }
    fdy_status s;
    fdy_sampler *smp = self->s;
    const float *logits = lg.buf;
    float *probs = out.buf;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    s = fdy_sampler_probs(smp, logits, n, probs);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    PyBuffer_Release(&lg);
    PyBuffer_Release(&out);
    if (s) {
        return fdy_raise(st, s);
    }
    Py_RETURN_NONE;
}

static PyObject *sampler_accept(SamplerObject *self, PyObject *arg) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    if (ready(st, self) < 0) {
        return NULL;
    }
    long long t = PyLong_AsLongLong(arg);
    if (t == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (t < 0 || t > INT32_MAX) {
        PyErr_Format(st->ShapeError, "Sampler.accept: token must be in [0, 2^31 - 1], got %lld",
                     t);
        return NULL;
    }
    fdy_status s = fdy_sampler_accept(self->s, (int32_t)t);
    if (s) {
        return fdy_raise(st, s);
    }
    Py_RETURN_NONE;
}

static PyObject *sampler_reset(SamplerObject *self, PyObject *noargs) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    if (ready(st, self) < 0) {
        return NULL;
    }
    fdy_sampler_reset(self->s);
    Py_RETURN_NONE;
}

static PyObject *sampler_history(SamplerObject *self, PyObject *noargs) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    if (ready(st, self) < 0) {
        return NULL;
    }
    int64_t n = fdy_sampler_n_history(self->s);
    const int32_t *h = fdy_sampler_history(self->s);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list) {
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) {
        PyObject *v = PyLong_FromLong(h[i]);
        if (!v) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, v);
    }
    return list;
}

static PyMethodDef sampler_methods[] = {
    {"sample", (PyCFunction)sampler_sample, METH_O,
     "sample(logits float32 (vocab,)) -> int: draw a token (not accepted)"},
    {"probs", (PyCFunction)sampler_probs, METH_VARARGS,
     "probs(logits float32 (vocab,), out float32 (vocab,)): the distribution sample() uses"},
    {"accept", (PyCFunction)sampler_accept, METH_O, "accept(token): record a token"},
    {"reset", (PyCFunction)sampler_reset, METH_NOARGS,
     "reset(): forget the history and restart the generator from the seed"},
    {"history", (PyCFunction)sampler_history, METH_NOARGS,
     "history() -> list[int]: the accepted tokens, oldest first"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot sampler_slots[] = {
    {Py_tp_init, sampler_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, sampler_dealloc},
    {Py_tp_methods, sampler_methods},
    {Py_tp_doc, "Sampler(temperature, top_k, top_p, min_p, repeat_penalty, presence_penalty, "
                "frequency_penalty, penalty_last_n, seed): the C token sampler (low level)"},
    {0, NULL},
};

static PyType_Spec sampler_spec = {
    .name = "pyfoundry._core.Sampler",
    .basicsize = sizeof(SamplerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = sampler_slots,
};

int fdy_init_sampler_bindings(PyObject *module) {
    PyObject *t = PyType_FromModuleAndSpec(module, &sampler_spec, NULL);
    if (!t) {
        return -1;
    }
    int r = PyModule_AddObjectRef(module, "Sampler", t);
    Py_DECREF(t);
    return r;
}
