"""Compiled steps: one stage bound to its policies, compute variant, backend and constants.

    step = pf.compile("rmsnorm_matmul", policy="q4_k", eps=1e-5)
    y = step(x, norm_weight, w)            # NumPy in, NumPy out
    step.key                               # content key: sha256 of everything that
                                           # determines the code (op, policies, constants,
                                           # variant, backend, source of the core)

Steps are cached under their key: compiling the same thing twice returns the same object,
and steps that differ in anything never share an entry.

The stages (NumPy shapes; M rows of activations, K input features, N output features):

=================  =========================================================================
op                 call
=================  =========================================================================
embedding          step(table (V, K), ids (M,)) -> (M, K)
rmsnorm            step(x (M, K), weight (K,)) -> (M, K)                  [eps]
matmul             step(x (M, K), w (N, K), bias=None) -> (M, N)         [activation,
                                                                          accumulate]
rmsnorm_matmul     step(x, norm_weight (K,), w (N, K), bias=None)        [eps, activation,
                                                                          accumulate]
rmsnorm_qkv        step(x, norm_weight, wq, wk, wv=None, bq=None, bk=None, bv=None)
                   -> tuple of (M, N_i); policy = [p_q, p_k(, p_v)]      [eps]
rope               step(x (M, H, D), positions (M,), freq_factors=None)  [theta, rot_dims,
                                                                          neox]
attention          step(q (M, H, D), k_cache (C, Hkv, D), v_cache, start_pos) -> (M, H, D)
                                                                         [scale]
softmax            step(x (M, N)) -> (M, N)
swiglu             step(gate, up) -> silu(gate) * up
ffn                step(x (M, K), norm_weight, w_gate (F, K), w_up (F, K), w_down (K, F))
                   -> x + down(swiglu(gate(n), up(n))), n = rmsnorm(x)   [eps]
add                step(a, b) -> a + b
=================  =========================================================================

Every call accepts ``out=`` (a float32 C-contiguous array of the result's shape; for
``accumulate=True`` steps, ``out`` holds the residual and receives ``out += result``).
Activations must be float32 and C-contiguous; weights are :class:`pyfoundry.Tensor` objects
of the compiled policy or float arrays (quantized on the fly).  Anything else raises an error
that names the argument.

Compute variants: ``"f32"`` (default) dequantizes weights and accumulates in float;
``"q8"`` quantizes activations to the policy's ``dot_type`` (Q8_0, Q8_1 or Q8_K, as
llama.cpp's CPU backend pairs them) and uses integer dot products where the policy has them.
On a GPU backend the activations are quantized on the device (the same values as the CPU's
quantizer) and the GEMV (M = 1) runs the policy's integer hook where it has one (q4_0, q4_1,
q8_0, q4_k, q6_k: ``pyfoundry.gpu.has_doti``); otherwise the float kernels run on the
dequantized activations, so every policy computes the same function as on the CPU.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from . import _core
from ._errors import FoundryNotImplementedError, ShapeError
from .gguf import Tensor
from .policy import Policy, policy as _policy

VARIANTS = ("f32", "q8")
BACKENDS = ("cpu", "cuda", "metal")
ACTIVATIONS = {None: 0, "none": 0, "silu": 1, "gelu": 2, "relu": 3}

# op -> (number of weight policies (0: none, -1: 2 or 3), default static parameters)
OPS: Dict[str, Tuple[int, Dict[str, Any]]] = {
    "embedding": (1, {}),
    "rmsnorm": (0, {"eps": 1e-5}),
    "matmul": (1, {"activation": None, "accumulate": False}),
    "rmsnorm_matmul": (1, {"eps": 1e-5, "activation": None, "accumulate": False}),
    "rmsnorm_qkv": (-1, {"eps": 1e-5}),
    "rope": (0, {"theta": 10000.0, "rot_dims": None, "neox": False}),
    "attention": (0, {"scale": None}),
    "softmax": (0, {}),
    "swiglu": (0, {}),
    "ffn": (3, {"eps": 1e-5}),
    "add": (0, {}),
}

_cache: Dict[str, "Step"] = {}


# ---- argument normalisation ---------------------------------------------------------------

def _f32(a, name: str, op: str, ndim: Optional[Sequence[int]] = None) -> np.ndarray:
    if isinstance(a, Tensor):
        raise ShapeError(f"{op}: {name} must be a float32 array, not a Tensor")
    if not isinstance(a, np.ndarray):
        raise ShapeError(f"{op}: {name} must be a NumPy float32 array, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise ShapeError(f"{op}: {name} must be float32, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ShapeError(f"{op}: {name} must be C-contiguous "
                         f"(use np.ascontiguousarray)")
    if ndim is not None and a.ndim not in ndim:
        raise ShapeError(f"{op}: {name} must have {' or '.join(map(str, ndim))} dimensions, "
                         f"got shape {a.shape}")
    return a


def _ints(a, name: str, op: str, n: int) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise ShapeError(f"{op}: {name} must be a 1-D integer array, got {a.dtype} {a.shape}")
    if a.shape[0] != n:
        raise ShapeError(f"{op}: {name} has {a.shape[0]} entries, expected {n}")
    if a.size and (a.min() < -2**31 or a.max() >= 2**31):
        raise ShapeError(f"{op}: {name} values do not fit int32")
    return np.ascontiguousarray(a, dtype=np.int32)


def _out(out, shape, name: str, op: str) -> np.ndarray:
    if out is None:
        return np.empty(shape, np.float32)
    out = _f32(out, name, op)
    if out.shape != tuple(shape):
        raise ShapeError(f"{op}: {name} has shape {out.shape}, expected {tuple(shape)}")
    if not out.flags.writeable:
        raise ShapeError(f"{op}: {name} is read-only")
    return out


def _weight(w, p: Policy, name: str, op: str):
    """(type_id, raw, rows, cols) for the core from a Tensor or a float array."""
    if isinstance(w, Tensor):
        if w.policy != p:
            raise ShapeError(f"{op}: {name} is a {w.policy.name} tensor but the step was "
                             f"compiled for {p.name}")
        t = w
    elif isinstance(w, np.ndarray):
        if w.dtype.kind != "f":
            raise ShapeError(f"{op}: {name} must be a Tensor or a float array, got {w.dtype}")
        if w.ndim != 2:
            raise ShapeError(f"{op}: {name} must be 2-D (out_features, in_features), got "
                             f"shape {w.shape}")
        if w.shape[1] % p.block_elems:
            raise ShapeError(f"{op}: {name} rows of {w.shape[1]} are not a multiple of the "
                             f"{p.name} block size {p.block_elems}")
        t = Tensor.from_numpy(w, p, name=name)
    else:
        raise ShapeError(f"{op}: {name} must be a pyfoundry.Tensor or a NumPy array, got "
                         f"{type(w).__name__}")
    if len(t.shape) != 2:
        raise ShapeError(f"{op}: {name} must be 2-D (out_features, in_features), got shape "
                         f"{t.shape}")
    return (p.gguf_type, t.raw.reshape(-1), t.shape[0], t.shape[1])


def _rows(x: np.ndarray):
    """(M, K) view of a 1-D or 2-D activation, and whether it was 1-D."""
    if x.ndim == 1:
        return x.reshape(1, -1), True
    return x, False


def _vec(v, n: int, name: str, op: str, optional: bool = False):
    if v is None:
        if optional:
            return None
        raise ShapeError(f"{op}: {name} is required")
    v = _f32(v, name, op, (1,))
    if v.shape[0] != n:
        raise ShapeError(f"{op}: {name} has {v.shape[0]} entries, expected {n}")
    return v


# ---- the step ---------------------------------------------------------------------------

class Step:
    """A compiled stage.  Call it with NumPy arrays; see the module docs for each op."""

    def __init__(self, op: str, policies: Tuple[Policy, ...], variant: str, backend: str,
                 params: Dict[str, Any], key: str):
        self.op = op
        self.policies = policies
        self.variant = variant
        self.backend = backend
        self.params = dict(params)
        self.key = key
        self._variant = VARIANTS.index(variant)
        self._impl = _core
        if backend in ("cuda", "metal"):
            from . import gpu
            self._impl = gpu.GpuOps(backend)

    @property
    def policy(self) -> Optional[Policy]:
        return self.policies[0] if len(self.policies) == 1 else None

    @property
    def source(self) -> Optional[str]:
        """The composed kernel source on GPU backends; None on the CPU, whose kernels are
        the compiled core (their identity is part of the key)."""
        if self.backend in ("cuda", "metal"):
            from . import gpu
            return gpu.step_source(self.op, self.policies, self.backend)
        return None

    def __repr__(self) -> str:
        ps = ",".join(p.name for p in self.policies) or "-"
        extra = " ".join(f"{k}={v!r}" for k, v in self.params.items())
        return (f"<Step {self.op} policy={ps} variant={self.variant} backend={self.backend}"
                f"{' ' + extra if extra else ''} key={self.key[:12]}>")

    def __call__(self, *args, **kwargs):
        return getattr(self, "_run_" + self.op)(*args, **kwargs)

    # ---- ops ----
    def _run_embedding(self, table, ids, out=None):
        op = "embedding"
        w = _weight(table, self.policies[0], "table", op)
        ids = _ints(ids, "ids", op, np.asarray(ids).size)
        if ids.size and (ids.min() < 0 or ids.max() >= w[2]):
            raise ShapeError(f"{op}: ids must be in [0, {w[2]}), got range "
                             f"[{ids.min()}, {ids.max()}]")
        o = _out(out, (ids.size, w[3]), "out", op)
        if ids.size:
            self._impl.embedding(w, ids, ids.size, o)
        return o

    def _run_rmsnorm(self, x, weight, out=None):
        op = "rmsnorm"
        x2, flat = _rows(_f32(x, "x", op, (1, 2)))
        M, K = x2.shape
        w = _vec(weight, K, "weight", op)
        o = _out(out, x.shape, "out", op)
        self._impl.rmsnorm(x2, M, K, w, float(self.params["eps"]), o)
        return o

    def _mm_common(self, op, x, w, bias, out):
        x2, flat = _rows(_f32(x, "x", op, (1, 2)))
        wt = _weight(w, self.policies[0], "w", op)
        M, K = x2.shape
        if K != wt[3]:
            raise ShapeError(f"{op}: x has {K} features but w has {wt[3]} columns")
        b = _vec(bias, wt[2], "bias", op, optional=True)
        shape = (wt[2],) if flat else (M, wt[2])
        if self.params["accumulate"] and out is None:
            raise ShapeError(f"{op}: accumulate=True needs out= (the residual to add into)")
        o = _out(out, shape, "out", op)
        return x2, M, K, wt, b, o

    def _run_matmul(self, x, w, bias=None, out=None):
        x2, M, K, wt, b, o = self._mm_common("matmul", x, w, bias, out)
        self._impl.matmul(wt, x2, M, b, o, int(bool(self.params["accumulate"])),
                     ACTIVATIONS[self.params["activation"]], self._variant)
        return o

    def _run_rmsnorm_matmul(self, x, norm_weight, w, bias=None, out=None):
        op = "rmsnorm_matmul"
        x2, M, K, wt, b, o = self._mm_common(op, x, w, bias, out)
        nw = _vec(norm_weight, K, "norm_weight", op)
        self._impl.rmsnorm_matmul(x2, M, nw, float(self.params["eps"]), wt, b, o,
                             int(bool(self.params["accumulate"])),
                             ACTIVATIONS[self.params["activation"]], self._variant)
        return o

    def _run_rmsnorm_qkv(self, x, norm_weight, wq, wk, wv=None, bq=None, bk=None, bv=None,
                         out=None):
        op = "rmsnorm_qkv"
        x2, flat = _rows(_f32(x, "x", op, (1, 2)))
        M, K = x2.shape
        ws = [wq, wk] + ([wv] if wv is not None else [])
        if len(ws) != len(self.policies):
            raise ShapeError(f"{op}: compiled for {len(self.policies)} weights, got {len(ws)}")
        names = ["wq", "wk", "wv"]
        wts = tuple(_weight(w, p, n, op) for w, p, n in zip(ws, self.policies, names))
        for wt, n in zip(wts, names):
            if wt[3] != K:
                raise ShapeError(f"{op}: x has {K} features but {n} has {wt[3]} columns")
        bs = tuple(_vec(b, wt[2], n, op, optional=True)
                   for b, wt, n in zip((bq, bk, bv), wts, ("bq", "bk", "bv")))
        outs = out if out is not None else (None,) * len(wts)
        if len(outs) != len(wts):
            raise ShapeError(f"{op}: out must be a tuple of {len(wts)} arrays")
        os_ = tuple(_out(o, (wt[2],) if flat else (M, wt[2]), f"out[{i}]", op)
                    for i, (o, wt) in enumerate(zip(outs, wts)))
        nw = _vec(norm_weight, K, "norm_weight", op)
        self._impl.rmsnorm_qkv(x2, M, nw, float(self.params["eps"]), wts, bs, os_, self._variant)
        return os_

    def _run_rope(self, x, positions, freq_factors=None, out=None):
        op = "rope"
        x = _f32(x, "x", op, (3,))
        M, H, D = x.shape
        rot = self.params["rot_dims"] or D
        if rot % 2 or rot > D or rot <= 0:
            raise ShapeError(f"{op}: rot_dims {rot} must be even and at most the head size {D}")
        pos = _ints(positions, "positions", op, M)
        ff = _vec(freq_factors, rot // 2, "freq_factors", op, optional=True)
        o = _out(out, x.shape, "out", op)
        self._impl.rope(x, M, H, D, pos, rot, float(self.params["theta"]), ff,
                   int(bool(self.params["neox"])), o)
        return o

    def _run_attention(self, q, k_cache, v_cache, start_pos, out=None):
        op = "attention"
        q = _f32(q, "q", op, (3,))
        k = _f32(k_cache, "k_cache", op, (3,))
        v = _f32(v_cache, "v_cache", op, (3,))
        M, H, D = q.shape
        C, Hkv, Dk = k.shape
        if v.shape != k.shape:
            raise ShapeError(f"{op}: v_cache shape {v.shape} differs from k_cache {k.shape}")
        if Dk != D:
            raise ShapeError(f"{op}: k_cache head size {Dk} differs from q's {D}")
        if H % Hkv:
            raise ShapeError(f"{op}: {H} query heads is not a multiple of {Hkv} kv heads")
        start_pos = int(start_pos)
        if start_pos < 0 or start_pos + M > C:
            raise ShapeError(f"{op}: start_pos {start_pos} + {M} rows exceed the cache of {C}")
        scale = self.params["scale"]
        scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
        o = _out(out, q.shape, "out", op)
        self._impl.attention(q, M, H, D, k, v, C, Hkv, start_pos, scale, o)
        return o

    def _run_softmax(self, x, out=None):
        op = "softmax"
        x2, flat = _rows(_f32(x, "x", op, (1, 2)))
        o = _out(out, x.shape, "out", op)
        self._impl.softmax(x2, x2.shape[0], x2.shape[1], o)
        return o

    def _binary(self, op, a, b, out, fn, names):
        a = _f32(a, names[0], op)
        b = _f32(b, names[1], op)
        if a.shape != b.shape:
            raise ShapeError(f"{op}: {names[0]} {a.shape} and {names[1]} {b.shape} differ")
        o = _out(out, a.shape, "out", op)
        fn(a, b, a.size, o)
        return o

    def _run_swiglu(self, gate, up, out=None):
        return self._binary("swiglu", gate, up, out, self._impl.swiglu, ("gate", "up"))

    def _run_add(self, a, b, out=None):
        return self._binary("add", a, b, out, self._impl.add, ("a", "b"))

    def _run_ffn(self, x, norm_weight, w_gate, w_up, w_down, out=None):
        op = "ffn"
        x2, flat = _rows(_f32(x, "x", op, (1, 2)))
        M, K = x2.shape
        g = _weight(w_gate, self.policies[0], "w_gate", op)
        u = _weight(w_up, self.policies[1], "w_up", op)
        d = _weight(w_down, self.policies[2], "w_down", op)
        if g[3] != K or u[3] != K:
            raise ShapeError(f"{op}: x has {K} features but w_gate/w_up have {g[3]}/{u[3]}")
        if u[2] != g[2] or d[3] != g[2] or d[2] != K:
            raise ShapeError(f"{op}: weight shapes do not chain: gate {g[2:]}, up {u[2:]}, "
                             f"down {d[2:]}")
        nw = _vec(norm_weight, K, "norm_weight", op)
        o = _out(out, x.shape, "out", op)
        self._impl.ffn(x2, M, nw, float(self.params["eps"]), g, u, d, o, self._variant)
        return o


# ---- compile ----------------------------------------------------------------------------

def _key(op, policies, variant, backend, params) -> str:
    doc = {"op": op, "policies": [[p.name, p.gguf_type] for p in policies],
           "variant": variant, "backend": backend,
           "params": {k: params[k] for k in sorted(params)},
           "core": _core.build_id}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=repr).encode()).hexdigest()


def compile(op: str, policy=None, *, variant: str = "f32", backend: str = "cpu",
            **params) -> Step:  # noqa: A001
    """Compile (or fetch from the cache) the step for ``op`` with ``policy``.

    ``policy``: a name, type id or Policy for ops with one weight; a list of 2 or 3 for
    ``rmsnorm_qkv``; one or a list of 3 (gate, up, down) for ``ffn``; None for ops without
    weights.  ``variant``: ``"f32"`` or ``"q8"``.  Other keyword arguments are the op's static
    parameters (see the module docs); unknown ones raise.
    """
    if op not in OPS:
        raise ShapeError(f"unknown op {op!r}; known: {', '.join(OPS)}")
    if variant not in VARIANTS:
        raise ShapeError(f"unknown variant {variant!r}; use one of {VARIANTS}")
    if backend not in BACKENDS:
        raise ShapeError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    if backend in ("cuda", "metal"):
        from . import gpu
        why = gpu.get_backend(backend).error()
        if why is not None:
            raise FoundryNotImplementedError(f"backend {backend!r} is not available here: "
                                             f"{why}")
    n_pol, defaults = OPS[op]
    unknown = set(params) - set(defaults)
    if unknown:
        raise ShapeError(f"{op}: unknown parameter(s) {sorted(unknown)}; "
                         f"known: {sorted(defaults) or 'none'}")
    full = dict(defaults)
    full.update(params)
    if "activation" in full and full["activation"] not in ACTIVATIONS:
        raise ShapeError(f"{op}: unknown activation {full['activation']!r}; use one of "
                         "None, 'silu', 'gelu', 'relu'")
    if "activation" in full and full["activation"] == "none":
        full["activation"] = None
    for k in ("eps", "theta", "scale"):
        if full.get(k) is not None:
            full[k] = float(full[k])
    if full.get("rot_dims") is not None:
        full["rot_dims"] = int(full["rot_dims"])
    for k in ("accumulate", "neox"):
        if k in full:
            full[k] = bool(full[k])
    if n_pol == 0:
        if policy is not None:
            raise ShapeError(f"{op} has no weights: policy must be None")
        pols: Tuple[Policy, ...] = ()
    else:
        if policy is None:
            raise ShapeError(f"{op} needs policy= (the weight format)")
        if isinstance(policy, (list, tuple)):
            pols = tuple(_policy(p) for p in policy)
        else:
            pols = (_policy(policy),) * (3 if n_pol == 3 else 1)
        if n_pol == -1 and len(pols) not in (2, 3):
            raise ShapeError(f"{op}: give 2 or 3 policies (one per weight), got {len(pols)}")
        if n_pol > 0 and len(pols) != n_pol:
            raise ShapeError(f"{op}: give {n_pol} policies, got {len(pols)}")
    key = _key(op, pols, variant, backend, full)
    step = _cache.get(key)
    if step is None:
        step = Step(op, pols, variant, backend, full, key)
        _cache[key] = step
    return step


def cache_info() -> Dict[str, int]:
    """Number of compiled steps in the cache."""
    return {"steps": len(_cache)}


def clear_cache() -> None:
    _cache.clear()
