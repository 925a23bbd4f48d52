/* common.h - what the binding files of the pyfoundry._core extension share: the module state
 * and the status -> exception translation.  Binding code only; all work is in foundry_c/. */
#ifndef FDY_EXT_COMMON_H
#define FDY_EXT_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "foundry.h"

typedef struct fdy_module_state {
    PyObject *FoundryError;  /* pyfoundry.FoundryError */
    PyObject *GGUFError;     /* pyfoundry.GGUFError (FoundryError, ValueError) */
    PyObject *ShapeError;    /* pyfoundry.ShapeError (FoundryError, ValueError) */
    PyObject *FoundryMemoryError;
    PyObject *FoundryIOError;
    PyObject *FoundryNotImplemented;
    PyObject *FoundryIndexError;
    PyObject *FoundryStateError;
    PyTypeObject *GGUFType;
    PyTypeObject *WriterType;
} fdy_module_state;

fdy_module_state *fdy_state_from_module(PyObject *module);
fdy_module_state *fdy_state_from_type(PyTypeObject *type);

/* raise the exception matching `status` with fdy_last_error(); always returns NULL */
PyObject *fdy_raise(fdy_module_state *st, fdy_status status);

/* the parsed file of a _core.GGUF object; NULL with an exception for anything else */
const fdy_gguf *fdy_gguf_handle(fdy_module_state *st, PyObject *obj);

int fdy_init_policy_bindings(PyObject *module);
int fdy_init_gguf_bindings(PyObject *module);
int fdy_init_ops_bindings(PyObject *module);
int fdy_init_model_bindings(PyObject *module);
int fdy_init_sampler_bindings(PyObject *module);
int fdy_init_tokenizer_bindings(PyObject *module);
int fdy_init_gpu_bindings(PyObject *module);
int fdy_init_metal_bindings(PyObject *module); /* macOS only (metal_bind.c) */

#endif
