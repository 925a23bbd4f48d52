/* metal_bind.c - Python bindings of the Metal host (foundry_c/src/gpu/metal.m), built and
 * registered only on macOS.  The same calls as the CUDA ones in gpu_bind.c with a metal_
 * prefix, so pyfoundry/gpu.py drives either through one backend object: device addresses are
 * ints, modules are capsules, launch arguments are ("p", int), ("i", int) or ("f", float).
 * The GIL is released around compilation, copies and syncs.
 *
 * On Linux, tests/test_metal_host.py compiles this file with FDY_METAL_SYNTAX_CHECK defined
 * (-fsyntax-only) so that it is at least type-checked against metal.h.
 */
#if defined(__APPLE__) || defined(FDY_METAL_SYNTAX_CHECK)

#include "common.h"
#include "metal.h"

#define MODULE_CAPSULE "pyfoundry.metal_module"

static fdy_module_state *state(PyObject *self) {
    return fdy_state_from_module(self);
}

static PyObject *metal_init(PyObject *self, PyObject *noargs) {
    fdy_status s;
    Py_BEGIN_ALLOW_THREADS
    s = fdy_metal_init();
    Py_END_ALLOW_THREADS
    if (s) {
        return fdy_raise(state(self), s);
    }
    return Py_BuildValue("(ss)", fdy_metal_device_name(), fdy_metal_os_version());
}

static PyObject *metal_module(PyObject *self, PyObject *arg) {
    const char *src = PyUnicode_AsUTF8(arg);
    if (!src) {
        return NULL;
    }
    fdy_metal_module *m = NULL;
    fdy_status s;
    Py_BEGIN_ALLOW_THREADS
    s = fdy_metal_module_get(src, &m);
    Py_END_ALLOW_THREADS
    if (s) {
        return fdy_raise(state(self), s);
    }
    /* modules live until the process ends: the capsule has no destructor */
    PyObject *cap = PyCapsule_New(m, MODULE_CAPSULE, NULL);
    if (!cap) {
        return NULL;
    }
    PyObject *res = Py_BuildValue("(Os)", cap, fdy_metal_module_key(m));
    Py_DECREF(cap);
    return res;
}

static PyObject *metal_malloc(PyObject *self, PyObject *arg) {
    unsigned long long n = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) {
        return NULL;
    }
    uint64_t p = 0;
    fdy_status s = fdy_metal_malloc((size_t)n, &p);
    if (s) {
        return fdy_raise(state(self), s);
    }
    return PyLong_FromUnsignedLongLong(p);
}

static PyObject *metal_free(PyObject *self, PyObject *arg) {
    unsigned long long p = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) {
        return NULL;
    }
    fdy_status s = fdy_metal_free(p);
    if (s) {
        return fdy_raise(state(self), s);
    }
    Py_RETURN_NONE;
}

/* upload(addr, buffer) / download(addr, writable buffer): the whole buffer */
static PyObject *metal_copy_host(PyObject *self, PyObject *args, int up) {
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
    s = up ? fdy_metal_upload(p, v.buf, (size_t)v.len)
           : fdy_metal_download(v.buf, p, (size_t)v.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&v);
    if (s) {
        return fdy_raise(state(self), s);
    }
    Py_RETURN_NONE;
}

static PyObject *metal_upload(PyObject *self, PyObject *args) {
    return metal_copy_host(self, args, 1);
}

static PyObject *metal_download(PyObject *self, PyObject *args) {
    return metal_copy_host(self, args, 0);
}

static PyObject *metal_copy(PyObject *self, PyObject *args) {
    unsigned long long d, s_, n;
    if (!PyArg_ParseTuple(args, "KKK", &d, &s_, &n)) {
        return NULL;
    }
    fdy_status s = fdy_metal_copy(d, s_, (size_t)n);
    if (s) {
        return fdy_raise(state(self), s);
    }
    Py_RETURN_NONE;
}

static PyObject *metal_fill(PyObject *self, PyObject *args) {
    unsigned long long d, n;
    unsigned int v;
    if (!PyArg_ParseTuple(args, "KIK", &d, &v, &n)) {
        return NULL;
    }
    fdy_status s;
    Py_BEGIN_ALLOW_THREADS
    s = fdy_metal_fill(d, v, (size_t)n);
    Py_END_ALLOW_THREADS
    if (s) {
        return fdy_raise(state(self), s);
    }
    Py_RETURN_NONE;
}

/* launch(module, name, (gx, gy, gz), block, args): args a sequence of ("p", int),
 * ("i", int) or ("f", float); argument i is bound at index i */
static PyObject *metal_launch(PyObject *self, PyObject *args) {
    PyObject *cap, *kargs;
    const char *name;
    unsigned int g[3], block;
    if (!PyArg_ParseTuple(args, "Os(III)IO", &cap, &name, &g[0], &g[1], &g[2], &block,
                          &kargs)) {
        return NULL;
    }
    fdy_metal_module *m = (fdy_metal_module *)PyCapsule_GetPointer(cap, MODULE_CAPSULE);
    if (!m) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(kargs, "launch: args must be a sequence");
    if (!seq) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    fdy_metal_arg vals[31];
    if (n > 31) {
        Py_DECREF(seq);
        return PyErr_Format(state(self)->ShapeError, "launch: at most 31 arguments on metal");
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *kind;
        PyObject *val;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "sO", &kind, &val)) {
            Py_DECREF(seq);
            return NULL;
        }
        if (kind[0] == 'p') {
            vals[i].kind = FDY_METAL_ARG_BUFFER;
            vals[i].v.ptr = PyLong_AsUnsignedLongLong(val);
        } else if (kind[0] == 'i') {
            vals[i].kind = FDY_METAL_ARG_INT;
            vals[i].v.i = (int32_t)PyLong_AsLong(val);
        } else if (kind[0] == 'f') {
            vals[i].kind = FDY_METAL_ARG_FLOAT;
            vals[i].v.f = (float)PyFloat_AsDouble(val);
        } else {
            Py_DECREF(seq);
            return PyErr_Format(state(self)->ShapeError, "launch: unknown argument kind %s",
                                kind);
        }
        if (PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    fdy_status s = fdy_metal_launch(m, name, g, block, vals, (int32_t)n);
    if (s) {
        return fdy_raise(state(self), s);
    }
    Py_RETURN_NONE;
}

static PyObject *metal_sync(PyObject *self, PyObject *noargs) {
    fdy_status s;
    Py_BEGIN_ALLOW_THREADS
    s = fdy_metal_sync();
    Py_END_ALLOW_THREADS
    if (s) {
        return fdy_raise(state(self), s);
    }
    Py_RETURN_NONE;
}

static PyMethodDef metal_methods[] = {
    {"metal_init", metal_init, METH_NOARGS, "metal_init() -> (device name, OS version)"},
    {"metal_module", metal_module, METH_O, "metal_module(source) -> (module, key)"},
    {"metal_malloc", metal_malloc, METH_O, "metal_malloc(bytes) -> device address"},
    {"metal_free", metal_free, METH_O, "metal_free(addr)"},
    {"metal_upload", metal_upload, METH_VARARGS, "metal_upload(addr, buffer)"},
    {"metal_download", metal_download, METH_VARARGS, "metal_download(addr, writable buffer)"},
    {"metal_copy", metal_copy, METH_VARARGS, "metal_copy(dst, src, bytes)"},
    {"metal_fill", metal_fill, METH_VARARGS, "metal_fill(addr, u32 value, n_words)"},
    {"metal_launch", metal_launch, METH_VARARGS,
     "metal_launch(module, name, grid, block, args)"},
    {"metal_sync", metal_sync, METH_NOARGS, "commit the open command buffer and wait"},
    {NULL, NULL, 0, NULL},
};

int fdy_init_metal_bindings(PyObject *module) {
    return PyModule_AddFunctions(module, metal_methods);
}

#else
/* not macOS: no Metal host, nothing to bind (ISO C wants a declaration in every file) */
typedef int fdy_metal_bind_unused;
#endif
