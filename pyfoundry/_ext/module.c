/* module.c - entry point of the pyfoundry._core extension: multi-phase init, module state
 * (exception classes from pyfoundry._errors, heap types) and the status -> exception map.
 * Each binding area (policies, GGUF, ops, models, tokenizers) is one file with one init
 * function called from here. */
#include "common.h"

#define NPY_NO_DEPRECATED_API NPY_1_20_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL fdy_ARRAY_API
#include <numpy/arrayobject.h>

fdy_module_state *fdy_state_from_module(PyObject *module) {
    return (fdy_module_state *)PyModule_GetState(module);
}

fdy_module_state *fdy_state_from_type(PyTypeObject *type) {
    return (fdy_module_state *)PyType_GetModuleState(type);
}

PyObject *fdy_raise(fdy_module_state *st, fdy_status status) {
    PyObject *exc = st->FoundryError;
    switch (status) {
    case FDY_ERR_INVALID: exc = st->ShapeError; break;
    case FDY_ERR_FORMAT: exc = st->GGUFError; break;
    case FDY_ERR_IO: exc = st->FoundryIOError; break;
    case FDY_ERR_NOMEM: exc = st->FoundryMemoryError; break;
    case FDY_ERR_UNSUPPORTED: exc = st->FoundryNotImplemented; break;
    case FDY_ERR_RANGE: exc = st->FoundryIndexError; break;
    case FDY_ERR_STATE: exc = st->FoundryStateError; break;
    default: break;
    }
    int64_t off = fdy_last_error_offset();
    if (status == FDY_ERR_FORMAT) {
        PyObject *args = Py_BuildValue("(sL)", fdy_last_error(), (long long)off);
        if (args) {
            PyErr_SetObject(exc, args);
            Py_DECREF(args);
        }
    } else {
        PyErr_SetString(exc, fdy_last_error());
    }
    return NULL;
}

static PyObject *cpu_features(PyObject *self, PyObject *noargs) {
    uint32_t f = fdy_cpu_features(), e = fdy_cpu_features_enabled();
    return Py_BuildValue("(IIii)", f, e, (int)fdy_cpu_prefetch_ahead(),
                         (int)fdy_cpu_prefetch_near());
}

static PyObject *set_cpu_feature_mask(PyObject *self, PyObject *arg) {
    unsigned long m = PyLong_AsUnsignedLongMask(arg);
    if (m == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    fdy_cpu_set_feature_mask((uint32_t)m);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"cpu_features", cpu_features, METH_NOARGS,
     "cpu_features() -> (detected, enabled, prefetch_ahead, prefetch_near): bit sets of\n"
     "FDY_CPU_* flags, and the decode kernels' two prefetch distances in bytes"},
    {"set_cpu_feature_mask", set_cpu_feature_mask, METH_O,
     "set_cpu_feature_mask(mask): restrict the SIMD paths kernels may use (tests)"},
    {NULL, NULL, 0, NULL},
};

static int load_errors(PyObject *module) {
    fdy_module_state *st = fdy_state_from_module(module);
    PyObject *errors = PyImport_ImportModule("pyfoundry._errors");
    if (!errors) {
        return -1;
    }
    struct {
        PyObject **slot;
        const char *name;
    } items[] = {
        {&st->FoundryError, "FoundryError"},
        {&st->GGUFError, "GGUFError"},
        {&st->ShapeError, "ShapeError"},
        {&st->FoundryMemoryError, "FoundryMemoryError"},
        {&st->FoundryIOError, "FoundryIOError"},
        {&st->FoundryNotImplemented, "FoundryNotImplementedError"},
        {&st->FoundryIndexError, "FoundryIndexError"},
        {&st->FoundryStateError, "FoundryStateError"},
    };
    for (size_t i = 0; i < sizeof items / sizeof items[0]; i++) {
        *items[i].slot = PyObject_GetAttrString(errors, items[i].name);
        if (!*items[i].slot) {
            Py_DECREF(errors);
            return -1;
        }
    }
    Py_DECREF(errors);
    return 0;
}

static int module_exec(PyObject *module) {
    if (PyArray_ImportNumPyAPI() < 0) {
        return -1;
    }
    if (load_errors(module) < 0) {
        return -1;
    }
    if (fdy_init_policy_bindings(module) < 0 || fdy_init_gguf_bindings(module) < 0 ||
        fdy_init_ops_bindings(module) < 0 || fdy_init_model_bindings(module) < 0 ||
        fdy_init_sampler_bindings(module) < 0 || fdy_init_tokenizer_bindings(module) < 0 ||
        fdy_init_gpu_bindings(module) < 0) {
        return -1;
    }
#ifdef __APPLE__
    if (fdy_init_metal_bindings(module) < 0) { /* the Metal host is built only on macOS */
        return -1;
    }
#endif
#ifndef FDY_BUILD_ID
#define FDY_BUILD_ID "unknown"
#endif
    if (PyModule_AddStringConstant(module, "build_id", FDY_BUILD_ID) < 0) {
        return -1;
    }
    if (PyModule_AddStringConstant(module, "version", fdy_version()) < 0) {
        return -1;
    }
    return 0;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg) {
    fdy_module_state *st = fdy_state_from_module(module);
    Py_VISIT(st->FoundryError);
    Py_VISIT(st->GGUFError);
    Py_VISIT(st->ShapeError);
    Py_VISIT(st->FoundryMemoryError);
    Py_VISIT(st->FoundryIOError);
    Py_VISIT(st->FoundryNotImplemented);
    Py_VISIT(st->FoundryIndexError);
    Py_VISIT(st->FoundryStateError);
    Py_VISIT(st->GGUFType);
    Py_VISIT(st->WriterType);
    return 0;
}

static int module_clear(PyObject *module) {
    fdy_module_state *st = fdy_state_from_module(module);
    Py_CLEAR(st->FoundryError);
    Py_CLEAR(st->GGUFError);
    Py_CLEAR(st->ShapeError);
    Py_CLEAR(st->FoundryMemoryError);
    Py_CLEAR(st->FoundryIOError);
    Py_CLEAR(st->FoundryNotImplemented);
    Py_CLEAR(st->FoundryIndexError);
    Py_CLEAR(st->FoundryStateError);
    Py_CLEAR(st->GGUFType);
    Py_CLEAR(st->WriterType);
    return 0;
}

static void module_free(void *module) {
    module_clear((PyObject *)module);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pyfoundry._core",
    .m_doc = "The pyfoundry C core: GGUF files, weight-format policies, kernels.",
    .m_size = sizeof(fdy_module_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__core(void) {
    return PyModuleDef_Init(&module_def);
}
