"""Whole models: a JSON spec + a GGUF file compiled into a plan that the C core runs.

    model = pf.Model("model.gguf", variant="f32")          # or "q8"
    logits = model.forward([1, 15043, 3186])                # (3, vocab) float32
    logits, trace = model.forward(tokens, capture="all")    # trace[(layer, name)] -> array

A spec (``pyfoundry/specs/<arch>.json``) maps GGUF metadata keys to parameters, tensor-name
patterns to weights, declares the activation buffers, and lists the steps of one forward pass:
a prologue, a layer body repeated ``n_layers`` times, an epilogue.  :class:`Plan` resolves it
against a file; :class:`Model` hands the plan to the C executor (the token loop runs in C with
the GIL released) and :class:`pyfoundry.reference.Model` interprets the same plan in NumPy,
so both produce the same capture names and a drift report is a join on names.

Capture names (per layer unless noted): ``embeddings`` (global), ``attn_norm``, ``q`` and
``k`` (after bias and rope), ``v``, ``attn`` (attention output), ``attn_out`` (after the
output projection), ``attn_residual``, ``ffn_norm``, ``ffn_gate``, ``ffn_up``,
``ffn_hidden`` (swiglu), ``ffn_out``, ``residual`` (the layer's output), ``output_norm``
and ``logits`` (global).  Each captured array is ``(rows, width)`` float32.
"""
from __future__ import annotations

import ast
import json
import math
import operator
import os
import pathlib
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from . import _core
from ._errors import FoundryNotImplementedError, ShapeError
from .gguf import GGUFFile, Tensor, open as _open

SPEC_DIR = pathlib.Path(__file__).resolve().parent / "specs"

# ---- specs ------------------------------------------------------------------------------

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.FloorDiv: operator.floordiv, ast.Div: operator.truediv}


def _eval(expr, env: Dict[str, Any]):
    """Evaluate a spec expression: numbers, parameter names, + - * / //."""
    if isinstance(expr, (int, float)):
        return expr
    if not isinstance(expr, str):
        raise ShapeError(f"spec: cannot evaluate {expr!r}")

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in env:
                raise ShapeError(f"spec: unknown parameter {node.id!r} in {expr!r}")
            return env[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        raise ShapeError(f"spec: unsupported expression {expr!r}")
    return ev(ast.parse(expr, mode="eval"))


def load_spec(arch_or_path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The spec of an architecture name (``"llama"``) or a JSON file path."""
    p = pathlib.Path(arch_or_path)
    if not p.suffix == ".json":
        p = SPEC_DIR / f"{arch_or_path}.json"
    if not p.exists():
        known = sorted(x.stem for x in SPEC_DIR.glob("*.json"))
        raise FoundryNotImplementedError(
            f"no model spec for architecture {str(arch_or_path)!r}; known: {', '.join(known)}")
    with p.open() as f:
        return json.load(f)


def available_architectures() -> List[str]:
    return sorted(x.stem for x in SPEC_DIR.glob("*.json"))


# ---- plans ------------------------------------------------------------------------------

OPS = {"embedding": 1, "rmsnorm": 2, "matmul": 3, "rope": 4, "attention": 5, "swiglu": 6,
       "add": 7}
ACTS = {None: 0, "none": 0, "silu": 1, "gelu": 2, "relu": 3}

INSTR_DTYPE = np.dtype([(n, "<i4") for n in (
    "op", "layer", "in0", "in1", "in2", "out", "weight", "bias", "freq", "accumulate", "act",
    "n_heads", "n_kv_heads", "head_dim", "rot_dims", "neox")] +
    [("eps", "<f4"), ("theta", "<f4"), ("scale", "<f4"), ("capture", "<i4"), ("tail", "<i4")])


class Plan:
    """A spec resolved against one GGUF file: parameters, weights, buffers, instructions.

    Attributes: ``params`` (dict), ``weights`` (list of (name, Tensor-or-float-array)),
    ``buffers`` (dict name -> (index, width)), ``instructions`` (list of dicts, one per step,
    layers unrolled), ``captures`` (list of (layer or None, name, buffer, tail)).
    """

    def __init__(self, file: GGUFFile, spec: Optional[Dict[str, Any]] = None):
        self.file = file
        arch = file.architecture
        if spec is None:
            if not arch:
                raise ShapeError("the file has no general.architecture: pass spec=")
            spec = load_spec(arch)
        self.spec = spec
        arch = spec.get("architecture", arch)
        md = file.metadata
        # parameters
        params: Dict[str, Any] = {}
        for name, rule in spec["params"].items():
            if isinstance(rule, str):
                rule = {"key": rule}
            if "tensor_rows" in rule:
                tname = spec["tensors"][rule["tensor_rows"]]
                tname = tname if isinstance(tname, str) else tname["name"]
                if tname not in file.tensors:
                    raise ShapeError(f"model: tensor {tname!r} is missing")
                params[name] = file.tensors[tname].shape[0]
                continue
            key = rule["key"].replace("{arch}", arch)
            if key in md:
                v = md[key]
            elif "default" in rule:
                v = _eval(rule["default"], params)
            else:
                raise ShapeError(f"model: metadata key {key!r} is missing")
            params[name] = v
        self.params = params
        self.arch = arch
        self.n_layers = int(params["n_layers"])
        # weights
        self.weights: List[Tuple[str, Any]] = []
        self._widx: Dict[str, int] = {}

        def tensor(rule, i=None, kind="matrix"):
            if isinstance(rule, str):
                rule = {"name": rule}
            name = rule["name"].replace("{i}", str(i)) if i is not None else rule["name"]
            if name not in file.tensors and "fallback" in rule:
                name = rule["fallback"]
            if name not in file.tensors:
                if rule.get("optional"):
                    return -1
                raise ShapeError(f"model: tensor {name!r} is missing from the file")
            key = f"{name}:{kind}"
            if key in self._widx:
                return self._widx[key]
            t = file.tensors[name]
            if kind == "vector":  # norms, biases, rope factors: float32 rows for the core
                data = np.ascontiguousarray(t.dequantize().reshape(-1), np.float32)
                self.weights.append((name, data))
            else:
                if len(t.shape) != 2:
                    raise ShapeError(f"model: {name} has shape {t.shape}, expected 2-D")
                self.weights.append((name, t))
            self._widx[key] = len(self.weights) - 1
            return self._widx[key]

        # norms, biases and rope factors are used as float vectors, the rest as matrices
        steps = spec.get("prologue", []) + spec["layer"] + spec.get("epilogue", [])
        vectors = {s["weight"] for s in steps if s["op"] == "rmsnorm"}
        vectors |= {s["bias"] for s in steps if s["op"] == "matmul" and "bias" in s}
        if spec.get("rope", {}).get("freq_factors"):
            vectors.add(spec["rope"]["freq_factors"])
        gl = {k: tensor(r, kind="vector" if k in vectors else "matrix")
              for k, r in spec["tensors"].items()}
        lt = spec["layer_tensors"]
        layer_w = []
        for i in range(self.n_layers):
            layer_w.append({k: tensor(r, i, "vector" if k in vectors else "matrix")
                            for k, r in lt.items()})
        # buffers
        self.buffers: Dict[str, Tuple[int, int]] = {}
        for j, (b, expr) in enumerate(spec["buffers"].items()):
            self.buffers[b] = (j, int(_eval(expr, params)))
        rope = spec.get("rope", {})
        head_dim = int(params["head_dim"])
        rot_dims = int(_eval(rope.get("dims", "head_dim"), params))
        theta = float(_eval(rope.get("theta", 10000.0), params))
        neox = bool(rope.get("neox", False))
        ff_key = rope.get("freq_factors")
        freq = gl.get(ff_key, -1) if ff_key else -1
        # instructions
        self.instructions: List[Dict[str, Any]] = []
        self.captures: List[Tuple[Optional[int], str, str, bool]] = []

        def buf(name):
            if name not in self.buffers:
                raise ShapeError(f"spec: unknown buffer {name!r}")
            return self.buffers[name][0]

        def emit(step, layer, wmap):
            op = step["op"]
            if op not in OPS:
                raise ShapeError(f"spec: unknown op {op!r}")
            ins = {"op": op, "layer": -1 if layer is None else layer, "in0": -1, "in1": -1,
                   "in2": -1, "out": -1, "weight": -1, "bias": -1, "freq": -1,
                   "accumulate": int(bool(step.get("accumulate", False))),
                   "act": ACTS[step.get("activation")], "n_heads": 0, "n_kv_heads": 0,
                   "head_dim": 0, "rot_dims": 0, "neox": 0, "eps": 0.0, "theta": 0.0,
                   "scale": 0.0, "capture": -1, "tail": int(bool(step.get("tail", False)))}
            if op == "embedding":
                ins["weight"] = wmap[step["table"]]
                ins["out"] = buf(step["out"])
            elif op == "rmsnorm":
                ins["in0"], ins["out"] = buf(step["in"]), buf(step["out"])
                ins["weight"] = wmap[step["weight"]]
                ins["eps"] = float(_eval(step.get("eps", "eps"), params))
            elif op == "matmul":
                ins["in0"], ins["out"] = buf(step["in"]), buf(step["out"])
                ins["weight"] = wmap[step["weight"]]
                ins["bias"] = wmap.get(step["bias"], -1) if "bias" in step else -1
            elif op == "rope":
                ins["in0"] = buf(step["buf"])
                ins["n_heads"] = int(_eval(step["heads"], params))
                ins["head_dim"] = head_dim
                ins["rot_dims"] = rot_dims
                ins["theta"] = theta
                ins["neox"] = int(neox)
                ins["freq"] = freq
            elif op == "attention":
                ins["in0"], ins["in1"], ins["in2"] = buf(step["q"]), buf(step["k"]), buf(step["v"])
                ins["out"] = buf(step["out"])
                ins["n_heads"] = int(params["n_heads"])
                ins["n_kv_heads"] = int(params["n_kv_heads"])
                ins["head_dim"] = head_dim
                ins["scale"] = float(_eval(step.get("scale", 1.0 / math.sqrt(head_dim)), params))
            elif op == "swiglu":
                ins["in0"], ins["in1"], ins["out"] = buf(step["gate"]), buf(step["up"]), buf(step["out"])
            elif op == "add":
                ins["in0"], ins["in1"], ins["out"] = buf(step["a"]), buf(step["b"]), buf(step["out"])
            if "capture" in step:
                ins["capture"] = len(self.captures)
                target = step["buf"] if op == "rope" else step["out"]
                self.captures.append((layer, step["capture"], target, bool(step.get("tail"))))
            self.instructions.append(ins)

        for st in spec.get("prologue", []):
            emit(st, None, gl)
        for i in range(self.n_layers):
            for st in spec["layer"]:
                emit(st, i, {**gl, **layer_w[i]})
        for st in spec.get("epilogue", []):
            emit(st, None, gl)
        self.logits_buffer = spec.get("output", "logits")
        self.vocab_size = self.buffers[self.logits_buffer][1]
        self.kv_width = int(params["n_kv_heads"]) * head_dim
        self.context_length = int(params["context_length"])
        self.capture_names = list(dict.fromkeys(c[1] for c in self.captures))

    def program(self) -> np.ndarray:
        arr = np.zeros(len(self.instructions), INSTR_DTYPE)
        for j, ins in enumerate(self.instructions):
            for k, v in ins.items():
                arr[j][k] = OPS[v] if k == "op" else v
        return arr

    def core_weights(self):
        out = []
        for name, w in self.weights:
            if isinstance(w, Tensor):
                out.append((w.policy.gguf_type, w.raw.reshape(-1), w.shape[0], w.shape[1]))
            else:
                out.append((0, w, 1, w.shape[0]))
        return out

    def select_captures(self, capture) -> List[int]:
        """Capture slots for ``capture``: None, "all", names, or (layer, name) pairs."""
        if capture is None:
            return []
        if isinstance(capture, str):
            capture = self.capture_names if capture == "all" else [capture]
        slots = []
        for c in capture:
            if isinstance(c, tuple):
                layer, name = c
                found = [j for j, s in enumerate(self.captures) if s[0] == layer and s[1] == name]
            else:
                found = [j for j, s in enumerate(self.captures) if s[1] == c]
            if not found:
                raise ShapeError(f"unknown capture {c!r}; available: {', '.join(self.capture_names)}")
            slots += found
        return sorted(set(slots))


class Trace(dict):
    """Captured intermediates: ``trace[(layer, name)]`` -> (rows, width) float array; layer is
    None for global entries (embeddings, output_norm, logits)."""

    @property
    def names(self) -> List[str]:
        return list(dict.fromkeys(k[1] for k in self))

    @property
    def layers(self) -> List[Optional[int]]:
        return list(dict.fromkeys(k[0] for k in self))

    def __repr__(self) -> str:
        return f"<Trace {len(self)} arrays: names={self.names}>"


def _tokens(tokens) -> np.ndarray:
    t = np.asarray(tokens)
    if t.ndim == 0:
        t = t.reshape(1)
    if t.ndim != 1 or t.dtype.kind not in "iu" or t.size == 0:
        raise ShapeError(f"tokens must be a non-empty 1-D sequence of integers, got "
                         f"{t.dtype} {t.shape}")
    if t.min() < 0 or t.max() >= 2**31:
        raise ShapeError("tokens must be non-negative int32 values")
    return np.ascontiguousarray(t, np.int32)


class Model:
    """A model compiled for the CPU (or, ``backend="cuda"`` / ``"metal"``, the GPU through
    :mod:`pyfoundry.gpu_model`: weights uploaded once, activations and KV cache on the device,
    on CUDA the decode step replayed as a graph; variant "f32" only): ``forward`` runs tokens
    through the executor.

    ``source``: a path or an opened :class:`GGUFFile`.  ``variant``: "f32" (exact path) or
    "q8" (llama.cpp-style activation quantization and integer dots).  ``spec``: an
    architecture name, a JSON path or a dict (default: the file's architecture).
    ``context_length`` caps the KV cache (default: the model's).
    """

    def __init__(self, source: Union[str, os.PathLike, GGUFFile], backend: str = "cpu",
                 variant: str = "f32", spec=None, context_length: Optional[int] = None):
        if backend not in ("cpu", "cuda", "metal"):
            raise FoundryNotImplementedError(f"backend {backend!r} is not available in this "
                                             f"build; use 'cpu', 'cuda' or 'metal'")
        if variant not in ("f32", "q8"):
            raise ShapeError(f"unknown variant {variant!r}; use 'f32' or 'q8'")
        if backend != "cpu":
            from .gpu import get_backend
            # raises FoundryNotImplementedError without a device (or, for metal, off macOS)
            get_backend(backend).init()
        self.file = source if isinstance(source, GGUFFile) else _open(source)
        if isinstance(spec, (str, os.PathLike)):
            spec = load_spec(spec)
        self.plan = Plan(self.file, spec)
        self.backend = backend
        self.variant = variant
        self.params = self.plan.params
        self.n_layers = self.plan.n_layers
        self.vocab_size = self.plan.vocab_size
        ctx = self.plan.context_length if context_length is None else int(context_length)
        if ctx <= 0:
            raise ShapeError("context_length must be positive")
        self.context_length = ctx
        self._ctx = ctx
        self._core = self._new_core()

    def _new_core(self):
        if self.backend != "cpu":
            from .gpu_model import GpuCore
            return GpuCore(self.plan, self._ctx, self.backend)
        widths = [w for _, w in sorted(self.plan.buffers.values())]
        return _core.Model(self.plan.program().tobytes(), self.plan.core_weights(), widths,
                           self.n_layers, self.plan.kv_width, self._ctx,
                           self.plan.buffers[self.plan.logits_buffer][0],
                           len(self.plan.captures))

    def _new_executor(self) -> "Model":
        """A Model sharing this one's file and plan with a KV cache of its own."""
        m = object.__new__(Model)
        m.__dict__.update(self.__dict__)
        m._core = self._new_core()
        return m

    @property
    def tokenizer(self):
        """The tokenizer built from the file's metadata (see :class:`pyfoundry.Tokenizer`)."""
        return self.file.tokenizer

    def session(self, sampler=None, chat_template: Optional[str] = None,
                system: Optional[str] = None):
        """A generation / chat session with its own KV cache (see :mod:`pyfoundry.session`).
        ``chat_template`` overrides the file's template (source text)."""
        from .session import Session
        return Session(self, sampler=sampler, chat_template=chat_template, system=system)

    @property
    def capture_names(self) -> List[str]:
        return self.plan.capture_names

    @property
    def n_past(self) -> int:
        """Positions held in the KV cache."""
        return self._core.n_past

    @property
    def kv_bytes(self) -> int:
        return self._core.kv_bytes

    @property
    def packed_bytes(self) -> int:
        """Bytes of the copies of weights the CPU decode streams instead of the file's
        layout: the q8 variant's interleaved copies (Q4_0 and Q4_1 matmul weights on x86 CPUs
        with AVX2, FMA and F16C), made by the first q8-variant forward, and the f32 variant's
        tile copies (Q4_0, Q4_1 and Q8_0 matmul weights on CPUs with AMX, ``"amx"`` in
        :func:`pyfoundry.cpu_features`), made by the first one-token f32 forward.  0 before
        those, on other CPUs and with ``PYFOUNDRY_NO_PACK=1``."""
        return getattr(self._core, "packed_bytes", 0)

    def reset(self) -> None:
        """Forget the KV cache (the memory is kept for reuse)."""
        self._core.truncate(0)

    def truncate(self, n_past: int) -> None:
        self._core.truncate(int(n_past))

    def forward(self, tokens, start_pos: Optional[int] = None, capture=None,
                logits: str = "all"):
        """Run ``tokens`` at positions ``start_pos ..`` (default: after the cached ones).

        Returns logits ``(M, vocab)`` (``logits="last"``: ``(vocab,)``), or ``(logits,
        trace)`` when ``capture`` is given ("all", names, or (layer, name) pairs).
        """
        if type(tokens) is list and len(tokens) == 1 and type(tokens[0]) is int \
                and 0 <= tokens[0] < 2**31:  # one token: skip the array checks
            t = np.array(tokens, np.int32)
        else:
            t = _tokens(tokens)
        if start_pos is None:
            start_pos = self.n_past
        start_pos = int(start_pos)
        if start_pos < 0 or start_pos > self.n_past:
            raise ShapeError(f"start_pos {start_pos} must be in [0, {self.n_past}] (the "
                             f"cached positions)")
        if start_pos + t.size > self.context_length:
            raise ShapeError(f"{start_pos} + {t.size} tokens exceed the context length "
                             f"{self.context_length}")
        if int(t.max()) >= self.vocab_size:
            raise ShapeError(f"token id {int(t.max())} is outside the vocabulary of "
                             f"{self.vocab_size}")
        if logits not in ("all", "last"):
            raise ShapeError("logits must be 'all' or 'last'")
        last = logits == "last"
        M = t.size
        variant = 0 if self.variant == "f32" else 1
        out = np.empty((1 if last else M, self.vocab_size), np.float32)
        if capture is None:  # the decode loop's call: no per-call lists
            no_caps, widths = self._no_captures()
            self._core.forward(t, start_pos, variant, no_caps, widths, int(last), out)
            return out[0] if last else out
        slots = set(self.plan.select_captures(capture))
        caps: List[Optional[np.ndarray]] = []
        widths = []
        for j, (layer, name, b, tail) in enumerate(self.plan.captures):
            w = self.plan.buffers[b][1]
            widths.append(w)
            rows = 1 if (tail and last) else M
            caps.append(np.empty((rows, w), np.float32) if j in slots else None)
        self._core.forward(t, start_pos, variant, caps, widths, int(last), out)
        res = out[0] if last else out
        trace = Trace()
        for j in sorted(slots):
            layer, name = self.plan.captures[j][:2]
            trace[(layer, name)] = caps[j]
        return res, trace

    def _no_captures(self):
        """The capture arguments of a call without captures, built once."""
        nc = self.__dict__.get("_no_caps")
        if nc is None:
            n = len(self.plan.captures)
            nc = self._no_caps = ([None] * n, [self.plan.buffers[c[2]][1] for c in self.plan.captures])
        return nc

    def __repr__(self) -> str:
        pols = {}
        for _, w in self.plan.weights:
            if isinstance(w, Tensor):
                pols[w.policy.name] = pols.get(w.policy.name, 0) + 1
        return (f"<Model {self.plan.arch} {self.n_layers} layers dim={self.params['dim']} "
                f"vocab={self.vocab_size} variant={self.variant} backend={self.backend} "
                f"weights={pols}>")
