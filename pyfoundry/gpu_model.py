"""The model executor on a GPU (CUDA, or Metal on macOS): runs a :class:`pyfoundry.model.Plan`
with the weights uploaded once, the activation buffers and the KV cache resident on the
device, and only the tokens and positions going up and the logits (and requested captures)
coming back.

:class:`GpuCore` has the interface of ``_core.Model`` (``forward``, ``truncate``, ``n_past``,
``kv_bytes``), so :class:`pyfoundry.Model` uses it unchanged with ``backend="cuda"`` or
``"metal"``; every device call goes through the :class:`pyfoundry.gpu.Backend` object.

Per instruction (rows = M, or 1 for a "tail" instruction when only the last logits are asked):
EMBED -> fdy_embedding, RMSNORM -> fdy_rmsnorm, MATMUL -> fdy_gemv (rows == 1) or fdy_gemm,
ROPE -> fdy_rope in place, ATTN -> fdy_rope with rot = 0 storing K and V at their positions
in the layer's cache (flags 4 | 8) then fdy_attention reading the positions from the device,
SWIGLU / ADD -> the elementwise kernels.  Every launch goes to the host's one stream, and
nothing in a step depends on a host value that changes from token to token (positions and
token ids live in device buffers), so a decode step (M = 1, no captures) is captured once as
a CUDA graph and replayed: one upload of (token, position), one graph launch, one download.
The graph is dropped when a buffer is reallocated (a larger batch, a longer KV cache).
Metal has no graphs here: every step's dispatches are encoded into one command buffer that is
committed when the logits are read.
"""
from __future__ import annotations

from typing import List

import numpy as np

from . import gpu as _gpu
from ._errors import FoundryNotImplementedError, ShapeError
from .gpu import DeviceBuffer, F, I, P, _cdiv, get_backend, module
from .gguf import Tensor
from .policy import policy as _policy

OP_EMBED, OP_RMSNORM, OP_MATMUL, OP_ROPE, OP_ATTN, OP_SWIGLU, OP_ADD = 1, 2, 3, 4, 5, 6, 7


class _Ptr:
    """A raw device address (an offset into a DeviceBuffer) for P()."""
    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr


class GpuCore:
    def __init__(self, plan, max_ctx: int, backend="cuda"):
        self.be = get_backend(backend)
        self.be.init()
        self.plan = plan
        self.prog = plan.program()
        self.widths = [w for _, w in sorted(plan.buffers.values())]
        self.n_layers = plan.n_layers
        self.kv_width = plan.kv_width
        self.max_ctx = int(max_ctx)
        self.logits_buf = plan.buffers[plan.logits_buffer][0]
        # weights: matrices as their blocks (type, device, rows, cols), vectors as float32
        shared = plan.__dict__.setdefault("_gpu_weights", {})   # by the executors of one plan
        self.w = shared.get(self.be.name)
        if self.w is None:
            self.w = shared[self.be.name] = self._upload(plan, self.be)
        for ins in self.prog:
            if ins["op"] == OP_ATTN and ins["head_dim"] > 256:
                raise FoundryNotImplementedError(
                    f"attention on {self.be.name}: head size {int(ins['head_dim'])} > 256")
        self._init_rest()

    @staticmethod
    def _upload(plan, be):
        ws = []
        for _, w in plan.weights:
            if isinstance(w, Tensor):
                raw = w.raw.reshape(-1)
                ws.append((w.policy.gguf_type, DeviceBuffer.from_array(raw, be),
                           int(w.shape[0]), int(w.shape[1])))
            else:
                a = np.ascontiguousarray(w, np.float32)
                ws.append((0, DeviceBuffer.from_array(a, be), 1, int(a.shape[0])))
        return ws

    def _init_rest(self):
        # modules, compiled up front (nothing compiles inside a graph capture)
        self._mods = {}
        for ins in self.prog:
            op = int(ins["op"])
            if op in (OP_EMBED, OP_MATMUL):
                self._mod("embedding" if op == OP_EMBED else "matmul", int(ins["weight"]))
        self.m_elem = module("elementwise", (), self.be)
        self.m_rope = module("rope", (), self.be)
        self.m_att = module("attention", (), self.be)
        self.cap_rows = 0
        self.bufs: List[DeviceBuffer] = []
        self.ids = self.pos = None
        self.kv_cap = 0
        self.kc: List[DeviceBuffer] = []
        self.vc: List[DeviceBuffer] = []
        self.n_past = 0
        self._graph = 0
        self._graph_variant = 0
        self.use_graph = self.be.graphs
        self.kmax = max([int(self.w[int(ins["weight"])][3]) for ins in self.prog
                         if int(ins["op"]) == OP_MATMUL] or [0])
        self.xq = self.xs = self.xf = None   # the q8 variant's activations (codes, scales, floats)

    def _mod(self, template, widx):
        key = (template, self.w[widx][0])
        m = self._mods.get(key)
        if m is None:
            m = module(template, [_policy(self.w[widx][0])], self.be)
            self._mods[key] = m
        return m

    # ---- memory ----
    def _drop_graph(self):
        if self._graph:
            g, self._graph = self._graph, 0
            self.be.graph_free(g)

    def _grow_rows(self, M):
        if M <= self.cap_rows:
            return
        cap = max(self.cap_rows, 1)
        while cap < M:
            cap *= 2
        self._drop_graph()
        self.bufs = [DeviceBuffer(cap * w * 4, self.be) for w in self.widths]
        self.ids = DeviceBuffer(cap * 4, self.be)
        self.pos = DeviceBuffer(cap * 4, self.be)
        self.xq = self.xs = self.xf = None
        self.cap_rows = cap

    def _q8_buffers(self):
        if self.xq is None:
            n = self.cap_rows * self.kmax
            self.xq = DeviceBuffer(n, self.be)
            self.xs = DeviceBuffer(n // 32 * 4 + 4, self.be)
            self.xf = DeviceBuffer(n * 4, self.be)

    def _grow_kv(self, need):
        if need <= self.kv_cap:
            return
        cap = self.kv_cap or 64
        while cap < need:
            cap *= 2
        cap = min(cap, self.max_ctx)
        self._drop_graph()
        nb = cap * self.kv_width * 4
        old = self.kv_cap * self.kv_width * 4
        kc, vc = [], []
        for l in range(self.n_layers):
            k, v = DeviceBuffer(nb, self.be), DeviceBuffer(nb, self.be)
            if old:
                self.be.copy(k.ptr, self.kc[l].ptr, old)
                self.be.copy(v.ptr, self.vc[l].ptr, old)
            kc.append(k)
            vc.append(v)
        self.kc, self.vc = kc, vc
        self.kv_cap = cap

    @property
    def kv_bytes(self) -> int:
        return self.kv_cap * self.kv_width * 4 * 2 * self.n_layers

    def truncate(self, n_past: int) -> None:
        if n_past < 0 or n_past > self.n_past:
            raise ShapeError(f"truncate: {n_past} is outside [0, {self.n_past}]")
        self.n_past = int(n_past)

    # ---- the program ----
    def _rows(self, b, r0):
        return _Ptr(self.bufs[b].ptr + r0 * self.widths[b] * 4)

    def _run(self, M, last_only, caps=None, only=None, variant=0):
        """Enqueue the whole program for M rows (positions and ids already on the device);
        ``only(ins)``, when given, selects the instructions (profiling).  variant 1 (q8): each
        matmul's input rows are quantized on the device in its weight's dot_type first
        (fdy_quantize_act), then the integer hook runs (rows == 1, where the policy has one)
        or the float kernels on the dequantized rows, as the stages do (pyfoundry.gpu)."""
        for ins in self.prog:
            op = int(ins["op"])
            if only is not None and not only(ins):
                continue
            tail = last_only and ins["tail"]
            rows = 1 if tail else M
            r0 = M - 1 if tail else 0
            if op == OP_EMBED:
                t, wd, _, K = self.w[ins["weight"]]
                self._mod("embedding", int(ins["weight"])).launch(
                    "fdy_embedding", (rows,), 128,
                    [P(wd), P(_Ptr(self.ids.ptr + 4 * r0)), P(self._rows(ins["out"], r0)),
                     I(K)])
            elif op == OP_RMSNORM:
                b = int(ins["in0"])
                self.m_elem.launch("fdy_rmsnorm", (rows,), 256,
                                   [P(self._rows(b, r0)), P(self.w[ins["weight"]][1]),
                                    P(self._rows(ins["out"], r0)), I(self.widths[b]),
                                    F(ins["eps"])])
            elif op == OP_MATMUL:
                t, wd, N, K = self.w[ins["weight"]]
                bias = self.w[ins["bias"]][1] if ins["bias"] >= 0 else None
                flags = (1 if bias is not None else 0) | (2 if ins["accumulate"] else 0)
                xin, out_rows = self._rows(ins["in0"], r0), self._rows(ins["out"], r0)
                common = [P(wd), P(xin), P(bias), P(out_rows), P(None), I(N), I(K), I(flags),
                          I(ins["act"]), F(0.0)]
                mod = self._mod("matmul", int(ins["weight"]))
                G = _gpu.act_group(int(t)) if variant else None
                integer = False
                if G is not None and K % G == 0:
                    self._q8_buffers()
                    integer = _gpu.integer_gemv(self.be, int(t), rows)
                    _gpu.launch_quantize_act(mod, xin, self.xq, self.xs,
                                             None if integer else self.xf, rows, K, G)
                    if integer:
                        _gpu.launch_gemv_doti(mod, N, 1, K, wd, self.xq, self.xs, bias,
                                              out_rows, flags, int(ins["act"]))
                    else:
                        common[1] = P(self.xf)
                if integer:
                    pass
                elif rows == 1:
                    _gpu.launch_gemv(mod, int(t), N, 1, common, flags, self.be)
                else:
                    mod.launch("fdy_gemm", (_cdiv(N, _gpu.GEMM_TN), _cdiv(rows, _gpu.GEMM_TM)),
                               256, common + [I(rows)])
            elif op == OP_ROPE:
                x = self._rows(ins["in0"], r0)
                H = int(ins["n_heads"])
                fr = self.w[ins["freq"]][1] if ins["freq"] >= 0 else None
                flags = (1 if ins["neox"] else 0) | (2 if fr is not None else 0)
                self.m_rope.launch("fdy_rope", (rows * H,), 64,
                                   [P(x), P(_Ptr(self.pos.ptr + 4 * r0)), P(fr), P(x), P(None),
                                    P(None), I(H), I(ins["head_dim"]), I(ins["rot_dims"]),
                                    F(ins["theta"]), I(flags)])
            elif op == OP_ATTN:
                l = int(ins["layer"])
                Hkv, D, H = int(ins["n_kv_heads"]), int(ins["head_dim"]), int(ins["n_heads"])
                # K and V rows to their positions in the cache (a copy: rot = 0)
                self.m_rope.launch("fdy_rope", (M * Hkv,), 64,
                                   [P(self.bufs[ins["in1"]]), P(self.pos), P(None),
                                    P(self.kc[l]), P(self.bufs[ins["in2"]]), P(self.vc[l]),
                                    I(Hkv), I(D), I(0), F(1.0), I(4 | 8)])
                self.m_att.launch("fdy_attention", (H, M), _gpu.ATT_THREADS,
                                  [P(self.bufs[ins["in0"]]), P(self.kc[l]), P(self.vc[l]),
                                   P(self.bufs[ins["out"]]), I(H), I(D), I(Hkv), I(0),
                                   F(ins["scale"]), P(self.pos)])
            elif op in (OP_SWIGLU, OP_ADD):
                n = rows * self.widths[ins["out"]]
                self.m_elem.launch("fdy_swiglu" if op == OP_SWIGLU else "fdy_add",
                                   (_cdiv(n, 256),), 256,
                                   [P(self._rows(ins["in0"], r0)), P(self._rows(ins["in1"], r0)),
                                    P(self._rows(ins["out"], r0)), I(n)])
            else:
                raise ShapeError(f"plan: unknown op {op}")
            c = int(ins["capture"])
            if caps is not None and 0 <= c < len(caps) and caps[c] is not None:
                b = int(ins["in0"]) if op == OP_ROPE else int(ins["out"])
                w = self.widths[b]
                tmp = np.empty((rows, w), np.float32)
                self.be.download(self.bufs[b].ptr + r0 * w * 4, tmp)
                caps[c][...] = tmp.reshape(caps[c].shape)

    def forward(self, tokens, start_pos, variant, caps, widths, last_only, out):
        variant = int(variant)
        M = int(tokens.size)
        start_pos = int(start_pos)
        if start_pos < 0 or start_pos > self.n_past:
            raise ShapeError(f"forward: start_pos {start_pos} is beyond the cached positions")
        if start_pos + M > self.max_ctx:
            raise ShapeError("forward: positions exceed the context length")
        vocab = self.widths[self.logits_buf]
        if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
            raise ShapeError("forward: token outside the vocabulary")
        self._grow_rows(M)
        self._grow_kv(start_pos + M)
        self.ids_host = np.ascontiguousarray(tokens, np.int32)
        self.pos_host = np.arange(start_pos, start_pos + M, dtype=np.int32)
        self.be.upload(self.ids.ptr, self.ids_host)
        self.be.upload(self.pos.ptr, self.pos_host)
        self.n_past = start_pos
        want = any(c is not None for c in caps)
        if M == 1 and not want and self.use_graph:
            if self._graph and self._graph_variant != variant:
                self._drop_graph()
            if not self._graph:
                self._q8_buffers() if variant else None    # allocated outside the capture
                self.be.capture_begin()
                try:
                    self._run(1, True, variant=variant)
                finally:
                    g = self.be.capture_end()
                self._graph, self._graph_variant = g, variant
            self.be.graph_launch(self._graph)
        else:
            self._run(M, bool(last_only), caps if want else None, variant=variant)
        self.n_past = start_pos + M
        lb = self.bufs[self.logits_buf]
        r = 1 if last_only else M
        off = (M - 1) * vocab * 4 if last_only else 0
        self.be.download(lb.ptr + off, out.reshape(r, vocab))

    def __del__(self):
        try:
            self._drop_graph()
        except Exception:               # noqa: BLE001 - interpreter shutdown
            pass


class CudaCore(GpuCore):
    """:class:`GpuCore` on the CUDA backend."""

    def __init__(self, plan, max_ctx: int):
        super().__init__(plan, max_ctx, "cuda")
