/* tokenizer_bind.c - Python bindings of the tokenizer (foundry_c/src/tokenizer.c).
 *
 * _core.Tokenizer(gguf) builds an fdy_tokenizer from a _core.GGUF object (the tokenizer keeps
 * copies: the file may be closed afterwards); encode releases the GIL.  Texts are str (UTF-8)
 * or bytes-like; pieces and decoded text come back as bytes, the Python layer
 * (pyfoundry/tokenizer.py) turns them into str.  _core.Detokenizer(tokenizer, flags) is the
 * streaming decoder; it holds a reference to its tokenizer.
 */
#include "common.h"

#include <string.h>

/* ---- Tokenizer -------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    fdy_tokenizer *t;
} TokenizerObject;

static void tok_dealloc(TokenizerObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    fdy_tokenizer_free(self->t);
    self->t = NULL;
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int tok_init(TokenizerObject *self, PyObject *args, PyObject *kwds) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    static char *kwlist[] = {"gguf", NULL};
    PyObject *src;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Tokenizer", kwlist, &src)) {
        return -1;
    }
    if (self->t) {
        PyErr_SetString(PyExc_RuntimeError, "Tokenizer already initialised");
        return -1;
    }
    const fdy_gguf *g = fdy_gguf_handle(st, src);
    if (!g) {
        return -1;
    }
    fdy_tokenizer *t = NULL;
    fdy_status s;
    Py_BEGIN_ALLOW_THREADS
    s = fdy_tokenizer_create(g, &t);
    Py_END_ALLOW_THREADS
    if (s) {
        fdy_raise(st, s);
        return -1;
    }
    self->t = t;
    return 0;
}

static int check_tok(TokenizerObject *self) {
    if (!self->t) {
        PyErr_SetString(PyExc_ValueError, "Tokenizer is not initialised");
        return -1;
    }
    return 0;
}

/* a token id argument: int32 range, else IndexError */
static int id_arg(fdy_module_state *st, PyObject *obj, int32_t *id) {
    long long v = PyLong_AsLongLong(obj);
    if (v == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
            return -1;
        }
        PyErr_Clear();
        v = INT64_MIN;
    }
    if (v < INT32_MIN || v > INT32_MAX) {
        PyErr_Format(st->FoundryIndexError, "token id %lld out of range", v);
        return -1;
    }
    *id = (int32_t)v;
    return 0;
}

/* text argument: str (as UTF-8) or a bytes-like object; release with text_release */
typedef struct text_arg {
    const char *p;
    Py_ssize_t n;
    Py_buffer view;
    int has_view;
} text_arg;

static int text_get(PyObject *obj, text_arg *a, const char *fn) {
    memset(a, 0, sizeof *a);
    if (PyUnicode_Check(obj)) {
        a->p = PyUnicode_AsUTF8AndSize(obj, &a->n);
        return a->p ? 0 : -1;
    }
    if (PyObject_CheckBuffer(obj)) {
        if (PyObject_GetBuffer(obj, &a->view, PyBUF_C_CONTIGUOUS) < 0) {
            return -1;
        }
        a->has_view = 1;
        a->p = (const char *)a->view.buf;
        a->n = a->view.len;
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "%s: text must be str or bytes, not %.100s", fn,
                 Py_TYPE(obj)->tp_name);
    return -1;
}

static void text_release(text_arg *a) {
    if (a->has_view) {
        PyBuffer_Release(&a->view);
    }
}

static PyObject *tok_encode(TokenizerObject *self, PyObject *args, PyObject *kwds) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    static char *kwlist[] = {"text", "add_special", "parse_special", NULL};
    PyObject *text_obj;
    int add_special = 1, parse_special = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|pp:encode", kwlist, &text_obj, &add_special,
                                     &parse_special) ||
        check_tok(self) < 0) {
        return NULL;
    }
    text_arg text;
    if (text_get(text_obj, &text, "encode") < 0) {
        return NULL;
    }
    PyObject *list = NULL;
    int64_t cap = (int64_t)text.n + 16, n = 0;
    int32_t *ids = NULL;
    fdy_status s = FDY_ERR_SPACE;
    for (int attempt = 0; attempt < 2 && s == FDY_ERR_SPACE; attempt++) {
        PyMem_Free(ids);
        ids = (int32_t *)PyMem_Malloc((size_t)cap * sizeof(int32_t));
        if (!ids) {
            PyErr_NoMemory();
            goto done;
        }
        Py_BEGIN_ALLOW_THREADS
        s = fdy_tokenizer_encode(self->t, text.p, (size_t)text.n, add_special, parse_special, ids,
                                 cap, &n);
        Py_END_ALLOW_THREADS
        cap = n;
    }
    if (s) {
        fdy_raise(st, s);
        goto done;
    }
    list = PyList_New((Py_ssize_t)n);
    for (int64_t i = 0; list && i < n; i++) {
        PyObject *v = PyLong_FromLong(ids[i]);
        if (!v) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, v);
    }
done:
    PyMem_Free(ids);
    text_release(&text);
    return list;
}

static PyObject *tok_pre_tokenize(TokenizerObject *self, PyObject *arg) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    if (check_tok(self) < 0) {
        return NULL;
    }
    if (!PyUnicode_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "pre_tokenize: text must be str, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    Py_ssize_t len;
    const char *p = PyUnicode_AsUTF8AndSize(arg, &len);
    if (!p) {
        return NULL;
    }
    int64_t n = 0, cap = (int64_t)len + 1;
    int64_t *ends = (int64_t *)PyMem_Malloc((size_t)cap * sizeof(int64_t));
    if (!ends) {
        return PyErr_NoMemory();
    }
    fdy_status s;
    Py_BEGIN_ALLOW_THREADS
    s = fdy_tokenizer_pre_tokenize(self->t, p, (size_t)len, ends, cap, &n);
    Py_END_ALLOW_THREADS
    PyObject *list = s ? fdy_raise(st, s) : PyList_New((Py_ssize_t)n);
    int64_t start = 0;
    for (int64_t i = 0; list && i < n; i++) {
        PyObject *w = PyUnicode_DecodeUTF8(p + start, (Py_ssize_t)(ends[i] - start), "strict");
        if (!w) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, w);
        start = ends[i];
    }
    PyMem_Free(ends);
    return list;
}

static PyObject *tok_decode(TokenizerObject *self, PyObject *args) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    PyObject *ids_obj;
    unsigned int flags = 0;
    if (!PyArg_ParseTuple(args, "O|I:decode", &ids_obj, &flags) || check_tok(self) < 0) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(ids_obj, "decode: ids must be a sequence of ints");
    if (!seq) {
        return NULL;
    }
    PyObject *out = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int32_t *ids = (int32_t *)PyMem_Malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    if (!ids) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (id_arg(st, PySequence_Fast_GET_ITEM(seq, i), &ids[i]) < 0) {
            goto done;
        }
    }
    size_t need = 0;
    fdy_status s = fdy_tokenizer_decode(self->t, ids, (int64_t)n, flags, NULL, 0, &need);
    if (s && s != FDY_ERR_SPACE) {
        fdy_raise(st, s);
        goto done;
    }
    if (need > (size_t)PY_SSIZE_T_MAX) {
        PyErr_NoMemory();
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)need);
    if (!out) {
        goto done;
    }
    s = fdy_tokenizer_decode(self->t, ids, (int64_t)n, flags, PyBytes_AS_STRING(out), need,
                             &need);
    if (s) {
        Py_CLEAR(out);
        fdy_raise(st, s);
    }
done:
    PyMem_Free(ids);
    Py_DECREF(seq);
    return out;
}

static PyObject *tok_token_to_piece(TokenizerObject *self, PyObject *args) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    PyObject *id_obj;
    int special = 0;
    int32_t id;
    if (!PyArg_ParseTuple(args, "O|p:token_to_piece", &id_obj, &special) ||
        check_tok(self) < 0 || id_arg(st, id_obj, &id) < 0) {
        return NULL;
    }
    fdy_str piece;
    fdy_status s = fdy_tokenizer_token_to_piece(self->t, id, special, &piece);
    if (s) {
        return fdy_raise(st, s);
    }
    return PyBytes_FromStringAndSize(piece.ptr, (Py_ssize_t)piece.len);
}

static int id_in_range(TokenizerObject *self, fdy_module_state *st, PyObject *obj, int32_t *id) {
    if (id_arg(st, obj, id) < 0) {
        return -1;
    }
    if (*id < 0 || *id >= fdy_tokenizer_n_vocab(self->t)) {
        PyErr_Format(st->FoundryIndexError, "token id %d out of range (vocabulary of %d)", *id,
                     fdy_tokenizer_n_vocab(self->t));
        return -1;
    }
    return 0;
}

static PyObject *tok_token_text(TokenizerObject *self, PyObject *arg) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    int32_t id;
    if (check_tok(self) < 0 || id_in_range(self, st, arg, &id) < 0) {
        return NULL;
    }
    fdy_str s = fdy_tokenizer_token_text(self->t, id);
    return PyBytes_FromStringAndSize(s.ptr, (Py_ssize_t)s.len);
}

static PyObject *tok_token_attr(TokenizerObject *self, PyObject *arg) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    int32_t id;
    if (check_tok(self) < 0 || id_in_range(self, st, arg, &id) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(fdy_tokenizer_token_attr(self->t, id));
}

static PyObject *tok_token_score(TokenizerObject *self, PyObject *arg) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    int32_t id;
    if (check_tok(self) < 0 || id_in_range(self, st, arg, &id) < 0) {
        return NULL;
    }
    return PyFloat_FromDouble(fdy_tokenizer_token_score(self->t, id));
}

static PyObject *tok_find(TokenizerObject *self, PyObject *arg) {
    if (check_tok(self) < 0) {
        return NULL;
    }
    text_arg text;
    if (text_get(arg, &text, "find") < 0) {
        return NULL;
    }
    int32_t id = fdy_tokenizer_find(self->t, text.p, (size_t)text.n);
    text_release(&text);
    return PyLong_FromLong(id);
}

static PyObject *tok_special(TokenizerObject *self, PyObject *arg) {
    long which = PyLong_AsLong(arg);
    if ((which == -1 && PyErr_Occurred()) || check_tok(self) < 0) {
        return NULL;
    }
    return PyLong_FromLong(fdy_tokenizer_special(self->t, (int32_t)which));
}

static PyObject *tok_get_n_vocab(TokenizerObject *self, void *c) {
    return check_tok(self) < 0 ? NULL : PyLong_FromLong(fdy_tokenizer_n_vocab(self->t));
}
static PyObject *tok_get_vocab_type(TokenizerObject *self, void *c) {
    return check_tok(self) < 0 ? NULL : PyLong_FromLong(fdy_tokenizer_vocab_type(self->t));
}
static PyObject *tok_get_pre(TokenizerObject *self, void *c) {
    return check_tok(self) < 0 ? NULL : PyUnicode_FromString(fdy_tokenizer_pre(self->t));
}
static PyObject *tok_get_warnings(TokenizerObject *self, void *c) {
    if (check_tok(self) < 0) {
        return NULL;
    }
    const char *w = fdy_tokenizer_warnings(self->t);
    return PyUnicode_DecodeUTF8(w, (Py_ssize_t)strlen(w), "replace");
}
static PyObject *tok_get_add_bos(TokenizerObject *self, void *c) {
    return check_tok(self) < 0 ? NULL : PyBool_FromLong(fdy_tokenizer_add_bos(self->t));
}
static PyObject *tok_get_add_eos(TokenizerObject *self, void *c) {
    return check_tok(self) < 0 ? NULL : PyBool_FromLong(fdy_tokenizer_add_eos(self->t));
}
static PyObject *tok_get_add_space_prefix(TokenizerObject *self, void *c) {
    return check_tok(self) < 0 ? NULL
                               : PyBool_FromLong(fdy_tokenizer_add_space_prefix(self->t));
}
static PyObject *tok_get_eog(TokenizerObject *self, void *c) {
    if (check_tok(self) < 0) {
        return NULL;
    }
    int32_t n = fdy_tokenizer_n_eog(self->t);
    const int32_t *ids = fdy_tokenizer_eog(self->t);
    PyObject *tup = PyTuple_New(n);
    for (int32_t i = 0; tup && i < n; i++) {
        PyObject *v = PyLong_FromLong(ids[i]);
        if (!v) {
            Py_CLEAR(tup);
            break;
        }
        PyTuple_SET_ITEM(tup, i, v);
    }
    return tup;
}

static PyMethodDef tok_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))tok_encode, METH_VARARGS | METH_KEYWORDS,
     "encode(text, add_special=True, parse_special=False) -> list of ids"},
    {"decode", (PyCFunction)tok_decode, METH_VARARGS,
     "decode(ids, flags=0) -> bytes (flags: 1 render special tokens, 2 continue)"},
    {"pre_tokenize", (PyCFunction)tok_pre_tokenize, METH_O,
     "pre_tokenize(text) -> the words BPE merges within"},
    {"token_to_piece", (PyCFunction)tok_token_to_piece, METH_VARARGS,
     "token_to_piece(id, special=False) -> bytes"},
    {"token_text", (PyCFunction)tok_token_text, METH_O, "token_text(id) -> the vocab bytes"},
    {"token_attr", (PyCFunction)tok_token_attr, METH_O, "token_attr(id) -> FDY_TOKEN_* bits"},
    {"token_score", (PyCFunction)tok_token_score, METH_O, "token_score(id) -> float"},
    {"find", (PyCFunction)tok_find, METH_O, "find(text) -> id, or -1"},
    {"special", (PyCFunction)tok_special, METH_O, "special(which) -> id, or -1"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef tok_getset[] = {
    {"n_vocab", (getter)tok_get_n_vocab, NULL, "number of tokens", NULL},
    {"vocab_type", (getter)tok_get_vocab_type, NULL, "1 SPM, 2 BPE", NULL},
    {"pre", (getter)tok_get_pre, NULL, "pre-tokenizer rules in use", NULL},
    {"warnings", (getter)tok_get_warnings, NULL, "fallbacks taken, one per line", NULL},
    {"add_bos", (getter)tok_get_add_bos, NULL, "BOS added by encode(add_special)", NULL},
    {"add_eos", (getter)tok_get_add_eos, NULL, "EOS added by encode(add_special)", NULL},
    {"add_space_prefix", (getter)tok_get_add_space_prefix, NULL, "SPM space prefix", NULL},
    {"eog", (getter)tok_get_eog, NULL, "ids that end generation, ascending", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot tok_slots[] = {
    {Py_tp_init, tok_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, tok_dealloc},
    {Py_tp_methods, tok_methods},
    {Py_tp_getset, tok_getset},
    {Py_tp_doc, "Tokenizer(gguf): the tokenizer of a _core.GGUF file (low level)"},
    {0, NULL},
};

static PyType_Spec tok_spec = {
    .name = "pyfoundry._core.Tokenizer",
    .basicsize = sizeof(TokenizerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = tok_slots,
};

/* ---- Detokenizer ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    fdy_detokenizer *d;
    PyObject *tokenizer; /* keeps the fdy_tokenizer alive (holds no references: no cycles) */
} DetokObject;

static void detok_dealloc(DetokObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    fdy_detokenizer_free(self->d);
    self->d = NULL;
    Py_CLEAR(self->tokenizer);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int detok_init(DetokObject *self, PyObject *args, PyObject *kwds) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    static char *kwlist[] = {"tokenizer", "flags", NULL};
    PyObject *tok;
    unsigned int flags = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|I:Detokenizer", kwlist, &tok, &flags)) {
        return -1;
    }
    if (self->d) {
        PyErr_SetString(PyExc_RuntimeError, "Detokenizer already initialised");
        return -1;
    }
    if (Py_TYPE(tok)->tp_dealloc != (destructor)tok_dealloc) {
        PyErr_Format(PyExc_TypeError, "Detokenizer: expected a pyfoundry._core.Tokenizer, got "
                     "%.100s", Py_TYPE(tok)->tp_name);
        return -1;
    }
    if (check_tok((TokenizerObject *)tok) < 0) {
        return -1;
    }
    fdy_status s = fdy_detokenizer_create(((TokenizerObject *)tok)->t, flags, &self->d);
    if (s) {
        fdy_raise(st, s);
        return -1;
    }
    self->tokenizer = Py_NewRef(tok);
    return 0;
}

static int check_detok(DetokObject *self) {
    if (!self->d) {
        PyErr_SetString(PyExc_ValueError, "Detokenizer is not initialised");
        return -1;
    }
    return 0;
}

static PyObject *detok_push(DetokObject *self, PyObject *arg) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    int32_t id;
    if (check_detok(self) < 0 || id_arg(st, arg, &id) < 0) {
        return NULL;
    }
    fdy_str text;
    fdy_status s = fdy_detokenizer_push(self->d, id, &text);
    if (s) {
        return fdy_raise(st, s);
    }
    return PyBytes_FromStringAndSize(text.ptr, (Py_ssize_t)text.len);
}

static PyObject *detok_flush(DetokObject *self, PyObject *noargs) {
    fdy_module_state *st = fdy_state_from_type(Py_TYPE(self));
    if (check_detok(self) < 0) {
        return NULL;
    }
    fdy_str text;
    fdy_status s = fdy_detokenizer_flush(self->d, &text);
    if (s) {
        return fdy_raise(st, s);
    }
    return PyBytes_FromStringAndSize(text.ptr, (Py_ssize_t)text.len);
}

static PyMethodDef detok_methods[] = {
    {"push", (PyCFunction)detok_push, METH_O,
     "push(id) -> bytes that are complete now (no character cut in two)"},
    {"flush", (PyCFunction)detok_flush, METH_NOARGS, "flush() -> the held-back bytes"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot detok_slots[] = {
    {Py_tp_init, detok_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, detok_dealloc},
    {Py_tp_methods, detok_methods},
    {Py_tp_doc, "Detokenizer(tokenizer, flags=0): streaming decode (low level)"},
    {0, NULL},
};

static PyType_Spec detok_spec = {
    .name = "pyfoundry._core.Detokenizer",
    .basicsize = sizeof(DetokObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = detok_slots,
};

int fdy_init_tokenizer_bindings(PyObject *module) {
    PyObject *specs[2] = {NULL, NULL};
    specs[0] = PyType_FromModuleAndSpec(module, &tok_spec, NULL);
    specs[1] = specs[0] ? PyType_FromModuleAndSpec(module, &detok_spec, NULL) : NULL;
    int r = -1;
    if (specs[1] && PyModule_AddObjectRef(module, "Tokenizer", specs[0]) == 0 &&
        PyModule_AddObjectRef(module, "Detokenizer", specs[1]) == 0) {
        r = 0;
    }
    Py_XDECREF(specs[0]);
    Py_XDECREF(specs[1]);
    if (r == 0) {
        static const struct {
            const char *name;
            long value;
        } consts[] = {
            {"VOCAB_SPM", FDY_VOCAB_SPM},
            {"VOCAB_BPE", FDY_VOCAB_BPE},
            {"TOKEN_NORMAL", FDY_TOKEN_NORMAL},
            {"TOKEN_UNKNOWN", FDY_TOKEN_UNKNOWN},
            {"TOKEN_CONTROL", FDY_TOKEN_CONTROL},
            {"TOKEN_USER_DEFINED", FDY_TOKEN_USER_DEFINED},
            {"TOKEN_UNUSED", FDY_TOKEN_UNUSED},
            {"TOKEN_BYTE", FDY_TOKEN_BYTE},
            {"TOKEN_UNDEFINED", FDY_TOKEN_UNDEFINED},
            {"SPECIAL_BOS", FDY_SPECIAL_BOS},
            {"SPECIAL_EOS", FDY_SPECIAL_EOS},
            {"SPECIAL_UNK", FDY_SPECIAL_UNK},
            {"SPECIAL_PAD", FDY_SPECIAL_PAD},
            {"SPECIAL_SEP", FDY_SPECIAL_SEP},
            {"SPECIAL_EOT", FDY_SPECIAL_EOT},
            {"SPECIAL_EOM", FDY_SPECIAL_EOM},
            {"DECODE_SPECIAL", FDY_DECODE_SPECIAL},
            {"DECODE_CONTINUE", FDY_DECODE_CONTINUE},
        };
        for (size_t i = 0; r == 0 && i < sizeof consts / sizeof consts[0]; i++) {
            r = PyModule_AddIntConstant(module, consts[i].name, consts[i].value);
        }
    }
    return r;
}
