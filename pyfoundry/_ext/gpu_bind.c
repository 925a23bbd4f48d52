/* gpu_bind.c - Python bindings of the GPU composer (foundry_c/src/gpu/compose.c) and the CUDA
 * host (foundry_c/src/gpu/cuda.c).  Low level: device pointers are ints, modules are
 * capsules; pyfoundry/gpu.py wraps them (buffers that free themselves, weight upload cache,
 * kernel launches of each step).  The GIL is released around compilation, copies and syncs.
 */
#include "common.h"

#include <string.h>

#define MODULE_CAPSULE "pyfoundry.cuda_module"

static fdy_module_state *state(PyObject *self) {
    return fdy_state_from_module(self);
}

static PyObject *gpu_compose(PyObject *self, PyObject *args) {
    const char *target, *kernel, *defines = NULL;
    PyObject *pols;
    if (!PyArg_ParseTuple(args, "ssO|z", &target, &kernel, &pols, &defines)) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(pols, "gpu_compose: policies must be a sequence of names");
    if (!seq) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    const char *names[8];
    if (n > 8) {
        Py_DECREF(seq);
        return PyErr_Format(state(self)->ShapeError, "gpu_compose: at most 8 policies");
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        names[i] = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(seq, i));
        if (!names[i]) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    char *src = NULL;
    fdy_status s = fdy_gpu_compose(target, kernel, names, (int32_t)n, defines, &src);
    Py_DECREF(seq);
    if (s) {
        return fdy_raise(state(self), s);
    }
    PyObject *res = PyUnicode_FromString(src);
    fdy_gpu_free(src);
    return res;
}

static PyObject *gpu_templates(PyObject *self, PyObject *noargs) {
    PyObject *list = PyList_New(0);
    for (int32_t i = 0; list && fdy_gpu_template_name(i); i++) {
        PyObject *s = PyUnicode_FromString(fdy_gpu_template_name(i));
        if (!s || PyList_Append(list, s) < 0) {
            Py_XDECREF(s);
            Py_CLEAR(list);
            break;
        }
        Py_DECREF(s);
    }
    return list;
}

static PyObject *cuda_init(PyObject *self, PyObject *noargs) {
    fdy_status s;
    Py_BEGIN_ALLOW_THREADS
    s = fdy_cuda_init();
    Py_END_ALLOW_THREADS
    if (s) {
        return fdy_raise(state(self), s);
    }
    return Py_BuildValue("(sii)", fdy_cuda_device_name(), fdy_cuda_arch(),
                         fdy_cuda_driver_version());
}

static PyObject *cuda_module(PyObject *self, PyObject *arg) {
    const char *src = PyUnicode_AsUTF8(arg);
    if (!src) {
        return NULL;
    }
    fdy_cuda_module *m = NULL;
    fdy_status s;
    Py_BEGIN_ALLOW_THREADS
    s = fdy_cuda_module_get(src, &m);
    Py_END_ALLOW_THREADS
    if (s) {
        return fdy_raise(state(self), s);
    }
    /* modules live until the process ends: the capsule has no destructor */
    PyObject *cap = PyCapsule_New(m, MODULE_CAPSULE, NULL);
    if (!cap) {
        return NULL;
    }
    PyObject *res = Py_BuildValue("(Os)", cap, fdy_cuda_module_key(m));
    Py_DECREF(cap);
    return res;
}

static PyObject *cuda_malloc(PyObject *self, PyObject *arg) {
    unsigned long long n = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) {
        return NULL;
    }
    uint64_t p = 0;
    fdy_status s = fdy_cuda_malloc((size_t)n, &p);
    if (s) {
        return fdy_raise(state(self), s);
    }
    return PyLong_FromUnsignedLongLong(p);
}

static PyObject *cuda_free(PyObject *self, PyObject *arg) {
    unsigned long long p = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) {
        return NULL;
    }
    fdy_status s = fdy_cuda_free(p);
    if (s) {
        return fdy_raise(state(self), s);
    }
    Py_RETURN_NONE;
}

/* upload(dptr, buffer) / download(dptr, writable buffer): the whole buffer */
static PyObject *cuda_copy_host(PyObject *self, PyObject *args, int up) {
    unsigned long long p;
    PyObject *obj;
    if (!PyArg_ParseTuple(args, "KO", &p, &obj)) {
        return NULL;
    }
    Py_buffer v;
    if (PyObject_GetBuffer(obj, &v, PyBUF_C_CONTIGUOUS | (up ? 0 : PyBUF_WRITABLE)) < 0) {
        return NULL;
    }
    fdy_status s;
    Py_BEGIN_ALLOW_THREADS
    s = up ? fdy_cuda_upload(p, v.buf, (size_t)v.len)
           : fdy_cuda_download(v.buf, p, (size_t)v.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&v);
    if (s) {
        return fdy_raise(state(self), s);
    }
    Py_RETURN_NONE;
}

static PyObject *cuda_upload(PyObject *self, PyObject *args) {
    return cuda_copy_host(self, args, 1);
}

static PyObject *cuda_download(PyObject *self, PyObject *args) {
    return cuda_copy_host(self, args, 0);
}

static PyObject *cuda_copy(PyObject *self, PyObject *args) {
    unsigned long long d, s_, n;
    if (!PyArg_ParseTuple(args, "KKK", &d, &s_, &n)) {
        return NULL;
    }
    fdy_status s = fdy_cuda_copy(d, s_, (size_t)n);
    if (s) {
        return fdy_raise(state(self), s);
    }
    Py_RETURN_NONE;
}

static PyObject *cuda_fill(PyObject *self, PyObject *args) {
    unsigned long long d, n;
    unsigned int v;
    if (!PyArg_ParseTuple(args, "KIK", &d, &v, &n)) {
        return NULL;
    }
    fdy_status s = fdy_cuda_fill(d, v, (size_t)n);
    if (s) {
        return fdy_raise(state(self), s);
    }
    Py_RETURN_NONE;
}

/* launch(module, name, (gx, gy, gz), block, args): args a sequence of ("p", int),
 * ("i", int) or ("f", float) */
static PyObject *cuda_launch(PyObject *self, PyObject *args) {
    PyObject *cap, *kargs;
    const char *name;
    unsigned int g[3], block;
    if (!PyArg_ParseTuple(args, "Os(III)IO", &cap, &name, &g[0], &g[1], &g[2], &block,
                          &kargs)) {
        return NULL;
    }
    fdy_cuda_module *m = (fdy_cuda_module *)PyCapsule_GetPointer(cap, MODULE_CAPSULE);
    if (!m) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(kargs, "launch: args must be a sequence");
    if (!seq) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    union {
        uint64_t p;
        int32_t i;
        float f;
    } vals[32];
    void *ptrs[32];
    if (n > 32) {
        Py_DECREF(seq);
        return PyErr_Format(state(self)->ShapeError, "launch: at most 32 arguments");
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *kind;
        PyObject *val;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "sO", &kind, &val)) {
            Py_DECREF(seq);
            return NULL;
        }
        if (kind[0] == 'p') {
            vals[i].p = PyLong_AsUnsignedLongLong(val);
        } else if (kind[0] == 'i') {
            vals[i].i = (int32_t)PyLong_AsLong(val);
        } else if (kind[0] == 'f') {
            vals[i].f = (float)PyFloat_AsDouble(val);
        } else {
            Py_DECREF(seq);
            return PyErr_Format(state(self)->ShapeError, "launch: unknown argument kind %s",
                                kind);
        }
        if (PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
        ptrs[i] = &vals[i];
    }
    Py_DECREF(seq);
    fdy_status s = fdy_cuda_launch(m, name, g, block, ptrs, (int32_t)n);
    if (s) {
        return fdy_raise(state(self), s);
    }
    Py_RETURN_NONE;
}

static PyObject *cuda_sync(PyObject *self, PyObject *noargs) {
    fdy_status s;
    Py_BEGIN_ALLOW_THREADS
    s = fdy_cuda_sync();
    Py_END_ALLOW_THREADS
    if (s) {
        return fdy_raise(state(self), s);
    }
    Py_RETURN_NONE;
}

static PyObject *cuda_capture_begin(PyObject *self, PyObject *noargs) {
    fdy_status s = fdy_cuda_capture_begin();
    if (s) {
        return fdy_raise(state(self), s);
    }
    Py_RETURN_NONE;
}

static PyObject *cuda_capture_end(PyObject *self, PyObject *noargs) {
    uint64_t g = 0;
    fdy_status s = fdy_cuda_capture_end(&g);
    if (s) {
        return fdy_raise(state(self), s);
    }
    return PyLong_FromUnsignedLongLong(g);
}

/* graph_launch / graph_free / event_free take one handle */
static PyObject *handle_call(PyObject *self, PyObject *arg, fdy_status (*fn)(uint64_t)) {
    unsigned long long h = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) {
        return NULL;
    }
    fdy_status s = fn(h);
    if (s) {
        return fdy_raise(state(self), s);
    }
    Py_RETURN_NONE;
}

static PyObject *cuda_graph_launch(PyObject *self, PyObject *arg) {
    return handle_call(self, arg, fdy_cuda_graph_launch);
}

static PyObject *cuda_graph_free(PyObject *self, PyObject *arg) {
    return handle_call(self, arg, fdy_cuda_graph_free);
}

static PyObject *cuda_event_free(PyObject *self, PyObject *arg) {
    return handle_call(self, arg, fdy_cuda_event_free);
}

static PyObject *cuda_event_record(PyObject *self, PyObject *noargs) {
    uint64_t e = 0;
    fdy_status s = fdy_cuda_event_record(&e);
    if (s) {
        return fdy_raise(state(self), s);
    }
    return PyLong_FromUnsignedLongLong(e);
}

static PyObject *cuda_event_elapsed(PyObject *self, PyObject *args) {
    unsigned long long a, b;
    if (!PyArg_ParseTuple(args, "KK", &a, &b)) {
        return NULL;
    }
    float ms = 0.0f;
    fdy_status s;
    Py_BEGIN_ALLOW_THREADS
    s = fdy_cuda_event_elapsed(a, b, &ms);
    Py_END_ALLOW_THREADS
    if (s) {
        return fdy_raise(state(self), s);
    }
    return PyFloat_FromDouble(ms);
}

static PyMethodDef gpu_methods[] = {
    {"gpu_compose", gpu_compose, METH_VARARGS,
     "gpu_compose(target, kernel, policies, defines=None) -> composed kernel source"},
    {"gpu_templates", gpu_templates, METH_NOARGS, "names of the kernel templates"},
    {"cuda_init", cuda_init, METH_NOARGS, "cuda_init() -> (device name, arch, driver)"},
    {"cuda_module", cuda_module, METH_O, "cuda_module(source) -> (module, key)"},
    {"cuda_malloc", cuda_malloc, METH_O, "cuda_malloc(bytes) -> device pointer"},
    {"cuda_free", cuda_free, METH_O, "cuda_free(dptr)"},
    {"cuda_upload", cuda_upload, METH_VARARGS, "cuda_upload(dptr, buffer)"},
    {"cuda_download", cuda_download, METH_VARARGS, "cuda_download(dptr, writable buffer)"},
    {"cuda_copy", cuda_copy, METH_VARARGS, "cuda_copy(dst, src, bytes)"},
    {"cuda_fill", cuda_fill, METH_VARARGS, "cuda_fill(dptr, u32 value, n_words)"},
    {"cuda_launch", cuda_launch, METH_VARARGS,
     "cuda_launch(module, name, grid, block, args)"},
    {"cuda_sync", cuda_sync, METH_NOARGS, "wait for the stream"},
    {"cuda_capture_begin", cuda_capture_begin, METH_NOARGS, "start capturing a graph"},
    {"cuda_capture_end", cuda_capture_end, METH_NOARGS, "end the capture -> graph handle"},
    {"cuda_graph_launch", cuda_graph_launch, METH_O, "replay a captured graph"},
    {"cuda_graph_free", cuda_graph_free, METH_O, "free a captured graph"},
    {"cuda_event_record", cuda_event_record, METH_NOARGS, "record an event -> handle"},
    {"cuda_event_elapsed", cuda_event_elapsed, METH_VARARGS, "ms between two events"},
    {"cuda_event_free", cuda_event_free, METH_O, "free an event"},
    {NULL, NULL, 0, NULL},
};

int fdy_init_gpu_bindings(PyObject *module) {
    return PyModule_AddFunctions(module, gpu_methods);
}
