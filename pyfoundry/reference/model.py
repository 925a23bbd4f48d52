"""The NumPy reference forward pass: the same plan as :class:`pyfoundry.Model`, interpreted with
the stage references of :mod:`pyfoundry.reference.stages` over dequantized weights, in float32
or float64.  It produces the same capture names, so a drift report is a join on names.

    ref = pf.reference.Model("model.gguf", dtype=np.float64)
    logits, trace = ref.forward(tokens, capture="all")
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Union

import numpy as np

from . import stages as S
from .._errors import ShapeError
from ..gguf import GGUFFile, Tensor, open as _open


class Model:
    """NumPy forward pass over the dequantized weights of a GGUF model (see module docs)."""

    def __init__(self, source: Union[str, os.PathLike, GGUFFile], dtype=np.float64, spec=None,
                 context_length: Optional[int] = None):
        from ..model import Plan, load_spec
        if dtype not in (np.float32, np.float64):
            raise ShapeError("dtype must be np.float32 or np.float64")
        self.dtype = np.dtype(dtype).type
        self.file = source if isinstance(source, GGUFFile) else _open(source)
        if isinstance(spec, (str, os.PathLike)):
            spec = load_spec(spec)
        self.plan = Plan(self.file, spec)
        self.params = self.plan.params
        self.n_layers = self.plan.n_layers
        self.vocab_size = self.plan.vocab_size
        self.context_length = (self.plan.context_length if context_length is None
                               else int(context_length))
        self._w: Dict[int, np.ndarray] = {}
        self._k: List[np.ndarray] = [np.zeros((0, self.plan.kv_width), self.dtype)
                                     for _ in range(self.n_layers)]
        self._v: List[np.ndarray] = [np.zeros((0, self.plan.kv_width), self.dtype)
                                     for _ in range(self.n_layers)]
        self.n_past = 0

    @property
    def capture_names(self):
        return self.plan.capture_names

    def weight(self, idx: int) -> np.ndarray:
        """Weight `idx` of the plan, dequantized to the reference dtype (cached)."""
        if idx not in self._w:
            w = self.plan.weights[idx][1]
            a = w.dequantize() if isinstance(w, Tensor) else np.asarray(w)
            self._w[idx] = a.astype(self.dtype)
        return self._w[idx]

    def reset(self) -> None:
        self.n_past = 0

    def forward(self, tokens, start_pos: Optional[int] = None, capture=None, logits="all",
                progress: bool = False):
        """As :meth:`pyfoundry.Model.forward`; ``progress`` shows a tqdm bar over layers."""
        from ..model import Trace, _tokens
        t = _tokens(tokens)
        start = self.n_past if start_pos is None else int(start_pos)
        if start < 0 or start > self.n_past:
            raise ShapeError(f"start_pos {start} must be in [0, {self.n_past}]")
        if start + t.size > self.context_length:
            raise ShapeError("tokens exceed the context length")
        M = t.size
        last = logits == "last"
        dt = self.dtype
        bufs: Dict[int, np.ndarray] = {}
        pos = np.arange(start, start + M)
        slots = set(self.plan.select_captures(capture))
        trace = Trace()
        bar = None
        if progress and self.n_layers > 1:
            try:
                from tqdm import tqdm
                bar = tqdm(total=self.n_layers, desc=f"reference ({M} tokens)", unit="layer",
                           leave=False)
            except ImportError:
                bar = None
        last_layer = -1
        for ins in self.plan.instructions:
            if bar is not None and ins["layer"] != last_layer and ins["layer"] > 0:
                bar.update(1)
            last_layer = ins["layer"]
            op = ins["op"]
            tail = last and ins["tail"]
            rows = slice(M - 1, M) if tail else slice(0, M)

            def get(b):
                return bufs[b][rows]
            if op == "embedding":
                res = S.embedding(self.weight(ins["weight"]), t[rows], dtype=dt)
            elif op == "rmsnorm":
                res = S.rmsnorm(get(ins["in0"]), self.weight(ins["weight"]), eps=ins["eps"],
                                dtype=dt)
            elif op == "matmul":
                b = self.weight(ins["bias"]) if ins["bias"] >= 0 else None
                res = S.matmul(get(ins["in0"]), self.weight(ins["weight"]), bias=b,
                               activation=[None, "silu", "gelu", "relu"][ins["act"]],
                               residual=get(ins["out"]) if ins["accumulate"] else None,
                               dtype=dt)
            elif op == "rope":
                x = get(ins["in0"])
                ff = self.weight(ins["freq"])[: ins["rot_dims"] // 2] if ins["freq"] >= 0 else None
                res = S.rope(x.reshape(x.shape[0], ins["n_heads"], ins["head_dim"]), pos[rows],
                             theta=ins["theta"], rot_dims=ins["rot_dims"], neox=bool(ins["neox"]),
                             freq_factors=ff, dtype=dt).reshape(x.shape)
            elif op == "attention":
                L = ins["layer"]
                self._k[L] = np.concatenate([self._k[L][:start], bufs[ins["in1"]]])
                self._v[L] = np.concatenate([self._v[L][:start], bufs[ins["in2"]]])
                H, Hk, D = ins["n_heads"], ins["n_kv_heads"], ins["head_dim"]
                q = bufs[ins["in0"]].reshape(M, H, D)
                res = S.attention(q, self._k[L].reshape(-1, Hk, D), self._v[L].reshape(-1, Hk, D),
                                  start, scale=ins["scale"], dtype=dt).reshape(M, H * D)
            elif op == "swiglu":
                res = S.swiglu(get(ins["in0"]), get(ins["in1"]), dtype=dt)
            elif op == "add":
                res = S.add(get(ins["in0"]), get(ins["in1"]), dtype=dt)
            else:
                raise ShapeError(f"reference: unknown op {op!r}")
            target = ins["in0"] if op == "rope" else ins["out"]
            if tail:
                full = bufs.get(target)
                if full is None or full.shape[0] != M:
                    full = np.zeros((M, res.shape[-1]), dt)
                full = full.copy()
                full[M - 1:] = res
                bufs[target] = full
            else:
                bufs[target] = np.asarray(res, dt)
            if ins["capture"] in slots:
                layer, name = self.plan.captures[ins["capture"]][:2]
                trace[(layer, name)] = np.array(res, dt)
        if bar is not None:
            bar.update(bar.total - bar.n)
            bar.close()
        self.n_past = start + M
        out = bufs[self.plan.buffers[self.plan.logits_buffer][0]]
        out = out[M - 1] if last else out
        return out if capture is None else (out, trace)
