/* policy_bind.c - Python bindings of the policy registry: descriptor info, quantize and
 * dequantize of flat buffers.  Shapes and friendly checks live in pyfoundry/policy.py. */
#include "common.h"

#define NPY_NO_DEPRECATED_API NPY_1_20_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL fdy_ARRAY_API
#define NO_IMPORT_ARRAY
#include <numpy/arrayobject.h>

#include "dialect.h"
#include "policy.h"

static const fdy_policy *policy_arg(fdy_module_state *st, PyObject *arg) {
    long t = PyLong_AsLong(arg);
    if (t == -1 && PyErr_Occurred()) {
        return NULL;
    }
    const fdy_policy *p = fdy_policy_by_type((int32_t)t);
    if (!p) {
        PyErr_Format(st->ShapeError, "unknown policy type id %ld", t);
    }
    return p;
}

static PyObject *policy_info(PyObject *module, PyObject *noargs) {
    int32_t n = fdy_policy_count();
    PyObject *list = PyList_New(n);
    if (!list) {
        return NULL;
    }
    for (int32_t i = 0; i < n; i++) {
        const fdy_policy *p = fdy_policy_at(i);
        const char *dot = fdy_policy_dot_type(p);
        PyObject *d = Py_BuildValue(
            "{s:s,s:i,s:L,s:L,s:L,s:d,s:O,s:O,s:O,s:z,s:d,s:d,s:d,s:O,s:O,s:O,s:i,s:O,s:i}", "name", fdy_policy_name(p),
            "type", (int)fdy_policy_type(p), "block_elems", (long long)fdy_policy_block_elems(p),
            "block_bytes", (long long)fdy_policy_block_bytes(p), "sub_elems",
            (long long)fdy_policy_sub_elems(p), "bits_per_weight", fdy_policy_bits_per_weight(p),
            "can_quantize", fdy_policy_can_quantize(p) ? Py_True : Py_False, "is_gguf",
            fdy_policy_is_gguf(p) ? Py_True : Py_False, "is_activation",
            fdy_policy_is_activation(p) ? Py_True : Py_False, "dot_type", dot, "tol_roundtrip",
            fdy_policy_tolerance(p, "roundtrip"), "tol_f32", fdy_policy_tolerance(p, "f32"),
            "tol_q8", fdy_policy_tolerance(p, "q8"), "has_to_i8",
            fdy_policy_has_to_i8(p) ? Py_True : Py_False, "has_vec_dot_f32",
            fdy_policy_has_vec_dot_f32(p) ? Py_True : Py_False, "has_vec_dot_rows",
            fdy_policy_has_vec_dot_rows(p) ? Py_True : Py_False, "pack_rows",
            (int)fdy_policy_pack_rows(p), "has_vec_dot_f32_rows",
            fdy_policy_has_vec_dot_f32_rows(p) ? Py_True : Py_False, "amx_chunk_bytes",
            (int)fdy_policy_amx_chunk_bytes(p));
        if (!d) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, d);
    }
    return list;
}

/* dequantize(type_id, raw, n) -> float32 ndarray of n elements */
static PyObject *dequantize(PyObject *module, PyObject *args) {
    fdy_module_state *st = fdy_state_from_module(module);
    PyObject *type_obj, *raw_obj;
    long long n;
    Py_buffer view = {0};
    PyObject *out = NULL;
    if (!PyArg_ParseTuple(args, "OOL:dequantize", &type_obj, &raw_obj, &n)) {
        return NULL;
    }
    const fdy_policy *p = policy_arg(st, type_obj);
    if (!p) {
        return NULL;
    }
    int64_t need = fdy_policy_row_bytes(p, n);
    if (need < 0) {
        return fdy_raise(st, FDY_ERR_INVALID);
    }
    if (PyObject_GetBuffer(raw_obj, &view, PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    if (view.len != need) {
        PyErr_Format(st->ShapeError,
                     "dequantize(%s): raw data has %zd bytes, %lld elements need %lld",
                     fdy_policy_name(p), view.len, n, (long long)need);
        goto fail;
    }
    npy_intp dims[1] = {(npy_intp)n};
    out = PyArray_SimpleNew(1, dims, NPY_FLOAT32);
    if (!out) {
        goto fail;
    }
    fdy_status s;
    float *dst = (float *)PyArray_DATA((PyArrayObject *)out);
    Py_BEGIN_ALLOW_THREADS
    s = fdy_policy_dequantize(p, view.buf, dst, n);
    Py_END_ALLOW_THREADS
    if (s) {
        fdy_raise(st, s);
        goto fail;
    }
    PyBuffer_Release(&view);
    return out;
fail:
    Py_XDECREF(out);
    PyBuffer_Release(&view);
    return NULL;
}

/* quantize(type_id, float32 C-contiguous ndarray) -> uint8 ndarray of the blocks */
static PyObject *quantize(PyObject *module, PyObject *args) {
    fdy_module_state *st = fdy_state_from_module(module);
    PyObject *type_obj, *arr_obj;
    PyArrayObject *arr = NULL;
    PyObject *out = NULL;
    if (!PyArg_ParseTuple(args, "OO:quantize", &type_obj, &arr_obj)) {
        return NULL;
    }
    const fdy_policy *p = policy_arg(st, type_obj);
    if (!p) {
        return NULL;
    }
    arr = (PyArrayObject *)PyArray_FROMANY(arr_obj, NPY_FLOAT32, 0, 0, NPY_ARRAY_IN_ARRAY);
    if (!arr) {
        return NULL;
    }
    int64_t n = (int64_t)PyArray_SIZE(arr);
    int64_t need = fdy_policy_row_bytes(p, n);
    if (need < 0) {
        fdy_raise(st, FDY_ERR_INVALID);
        goto fail;
    }
    npy_intp dims[1] = {(npy_intp)need};
    out = PyArray_SimpleNew(1, dims, NPY_UINT8);
    if (!out) {
        goto fail;
    }
    fdy_status s;
    const float *src = (const float *)PyArray_DATA(arr);
    void *dst = PyArray_DATA((PyArrayObject *)out);
    Py_BEGIN_ALLOW_THREADS
    s = fdy_policy_quantize(p, src, dst, n);
    Py_END_ALLOW_THREADS
    if (s) {
        fdy_raise(st, s);
        goto fail;
    }
    Py_DECREF(arr);
    return out;
fail:
    Py_XDECREF(arr);
    Py_XDECREF(out);
    return NULL;
}

/* to_i8(type_id, raw, n) -> (int8 codes [n], float32 scale [n/16], float32 min [n/16]): the
 * policy's to_i8 hook (the prefill GEMM's unpacking), for tests */
static PyObject *to_i8(PyObject *module, PyObject *args) {
    fdy_module_state *st = fdy_state_from_module(module);
    PyObject *type_obj, *raw_obj;
    long long n;
    Py_buffer view = {0};
    PyObject *q = NULL, *sc = NULL, *mn = NULL;
    if (!PyArg_ParseTuple(args, "OOL:to_i8", &type_obj, &raw_obj, &n)) {
        return NULL;
    }
    const fdy_policy *p = policy_arg(st, type_obj);
    if (!p) {
        return NULL;
    }
    int64_t need = fdy_policy_row_bytes(p, n);
    if (need < 0) {
        return fdy_raise(st, FDY_ERR_INVALID);
    }
    if (PyObject_GetBuffer(raw_obj, &view, PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    if (view.len != need) {
        PyErr_Format(st->ShapeError, "to_i8(%s): raw data has %zd bytes, %lld elements need %lld",
                     fdy_policy_name(p), view.len, n, (long long)need);
        goto fail;
    }
    npy_intp dq[1] = {(npy_intp)n}, ds[1] = {(npy_intp)(n / 16)};
    q = PyArray_SimpleNew(1, dq, NPY_INT8);
    sc = PyArray_SimpleNew(1, ds, NPY_FLOAT32);
    mn = PyArray_SimpleNew(1, ds, NPY_FLOAT32);
    if (!q || !sc || !mn) {
        goto fail;
    }
    fdy_status s;
    Py_BEGIN_ALLOW_THREADS
    s = fdy_policy_to_i8(p, view.buf, (int8_t *)PyArray_DATA((PyArrayObject *)q),
                         (float *)PyArray_DATA((PyArrayObject *)sc),
                         (float *)PyArray_DATA((PyArrayObject *)mn), n);
    Py_END_ALLOW_THREADS
    if (s) {
        fdy_raise(st, s);
        goto fail;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(NNN)", q, sc, mn);
fail:
    Py_XDECREF(q);
    Py_XDECREF(sc);
    Py_XDECREF(mn);
    PyBuffer_Release(&view);
    return NULL;
}

/* vec_dot_f32(type_id, raw, x) -> float: the policy's fused f32 GEMV kernel on one weight row
 * (raw: the blocks of len(x) weights) and float32 x, for tests */
static PyObject *vec_dot_f32(PyObject *module, PyObject *args) {
    fdy_module_state *st = fdy_state_from_module(module);
    PyObject *type_obj, *raw_obj, *x_obj;
    Py_buffer view = {0};
    PyArrayObject *x = NULL;
    if (!PyArg_ParseTuple(args, "OOO:vec_dot_f32", &type_obj, &raw_obj, &x_obj)) {
        return NULL;
    }
    const fdy_policy *p = policy_arg(st, type_obj);
    if (!p) {
        return NULL;
    }
    x = (PyArrayObject *)PyArray_FROMANY(x_obj, NPY_FLOAT32, 1, 1, NPY_ARRAY_IN_ARRAY);
    if (!x) {
        return NULL;
    }
    const int64_t n = (int64_t)PyArray_SIZE(x);
    const int64_t need = fdy_policy_row_bytes(p, n);
    if (need < 0) {
        Py_DECREF(x);
        return fdy_raise(st, FDY_ERR_INVALID);
    }
    if (PyObject_GetBuffer(raw_obj, &view, PyBUF_C_CONTIGUOUS) < 0) {
        Py_DECREF(x);
        return NULL;
    }
    if (view.len != need) {
        PyErr_Format(st->ShapeError,
                     "vec_dot_f32(%s): raw data has %zd bytes, %lld elements need %lld",
                     fdy_policy_name(p), view.len, (long long)n, (long long)need);
        PyBuffer_Release(&view);
        Py_DECREF(x);
        return NULL;
    }
    float out = 0.0f;
    fdy_status s = fdy_policy_vec_dot_f32(p, view.buf, (const float *)PyArray_DATA(x), n, &out);
    PyBuffer_Release(&view);
    Py_DECREF(x);
    if (s) {
        return fdy_raise(st, s);
    }
    return PyFloat_FromDouble((double)out);
}

/* vec_dot_f32_rows(type_id, raw, x) -> float32 array: the f32 GEMV over the rows of raw (a
 * C-contiguous 2-D uint8 array, one weight row of len(x) weights per row) as the matmul stages
 * run it (the policy's row-range kernel, else vec_dot_f32 row by row), for tests */
static PyObject *vec_dot_f32_rows(PyObject *module, PyObject *args) {
    fdy_module_state *st = fdy_state_from_module(module);
    PyObject *type_obj, *raw_obj, *x_obj, *out = NULL;
    PyArrayObject *x = NULL, *raw = NULL;
    if (!PyArg_ParseTuple(args, "OOO:vec_dot_f32_rows", &type_obj, &raw_obj, &x_obj)) {
        return NULL;
    }
    const fdy_policy *p = policy_arg(st, type_obj);
    if (!p) {
        return NULL;
    }
    x = (PyArrayObject *)PyArray_FROMANY(x_obj, NPY_FLOAT32, 1, 1, NPY_ARRAY_IN_ARRAY);
    raw = (PyArrayObject *)PyArray_FROMANY(raw_obj, NPY_UINT8, 2, 2, NPY_ARRAY_IN_ARRAY);
    if (!x || !raw) {
        goto done;
    }
    const int64_t n = (int64_t)PyArray_SIZE(x);
    const int64_t need = fdy_policy_row_bytes(p, n);
    if (need < 0) {
        fdy_raise(st, FDY_ERR_INVALID);
        goto done;
    }
    const int64_t rows = (int64_t)PyArray_DIM(raw, 0);
    if ((int64_t)PyArray_DIM(raw, 1) != need) {
        PyErr_Format(st->ShapeError,
                     "vec_dot_f32_rows(%s): rows of %lld bytes, %lld elements need %lld",
                     fdy_policy_name(p), (long long)PyArray_DIM(raw, 1), (long long)n,
                     (long long)need);
        goto done;
    }
    npy_intp dims[1] = {(npy_intp)rows};
    out = PyArray_SimpleNew(1, dims, NPY_FLOAT32);
    if (!out) {
        goto done;
    }
    fdy_status s;
    Py_BEGIN_ALLOW_THREADS
    s = fdy_policy_vec_dot_f32_rows(p, PyArray_DATA(raw), (size_t)need,
                                    (const float *)PyArray_DATA(x), n,
                                    (float *)PyArray_DATA((PyArrayObject *)out), rows);
    Py_END_ALLOW_THREADS
    if (s) {
        Py_CLEAR(out);
        fdy_raise(st, s);
    }
done:
    Py_XDECREF(x);
    Py_XDECREF(raw);
    return out;
}

static PyMethodDef policy_methods[] = {
    {"policy_info", policy_info, METH_NOARGS, "policy_info() -> list of descriptor dicts"},
    {"dequantize", dequantize, METH_VARARGS,
     "dequantize(type_id, raw, n) -> float32 array of n elements"},
    {"quantize", quantize, METH_VARARGS,
     "quantize(type_id, float32 array) -> uint8 array of blocks"},
    {"to_i8", to_i8, METH_VARARGS,
     "to_i8(type_id, raw, n) -> (int8 codes, float32 scale per 16, float32 min per 16)"},
    {"vec_dot_f32", vec_dot_f32, METH_VARARGS,
     "vec_dot_f32(type_id, raw, float32 x) -> float: the fused f32 GEMV kernel on one row"},
    {"vec_dot_f32_rows", vec_dot_f32_rows, METH_VARARGS,
     "vec_dot_f32_rows(type_id, raw rows, float32 x) -> float32 array: the f32 GEMV over rows"},
    {NULL, NULL, 0, NULL},
};

int fdy_init_policy_bindings(PyObject *module) {
    return PyModule_AddFunctions(module, policy_methods);
}
