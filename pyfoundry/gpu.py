"""GPU backends: kernel sources composed from metal/ and policies/, and the CUDA runner.

    pf.gpu.compose("matmul", ["q4_k"])            # the CUDA source of a GEMV/GEMM module
    pf.gpu.compose("qkv", ["q4_k", "q6_k", "q8_0"], target="metal")
    pf.cuda_available()                           # False without a driver or a device
    step = pf.compile("matmul", policy="q4_k", backend="cuda")
    step(x, w)                                    # NumPy in, NumPy out; w uploaded once

A source is the target's prelude, the device part of each policy (the same text the CPU
compiles), the common helpers, one weight slot per policy and the kernel template.  The CUDA
host (foundry_c/src/gpu/cuda.c) compiles it with NVRTC for the device's architecture and
caches the binary by content key in memory and on disk.

Device copies of weights are cached per host buffer (the tensor's blocks) and freed when that
buffer is; tensors are treated as immutable.  Activations go to fresh device buffers per call;
outputs are poisoned (NaN) on the device before each launch so an unwritten element shows.
"""
from __future__ import annotations

import threading
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _core
from ._errors import FoundryNotImplementedError
from .policy import Policy, policy as _policy

# how many weight slots each kernel template binds
TEMPLATE_SLOTS: Dict[str, int] = {"matmul": 1, "embedding": 1, "qkv": 3, "ffn": 2,
                                  "elementwise": 0, "rope": 0, "attention": 0}
GEMV_ROWS = 4          # SIMD groups (rows) per threadgroup of fdy_gemv / fdy_qkv / fdy_gateup
GEMV_BLOCK_ROWS, GEMV_THREADS = 8, 64   # CUDA fdy_gemv: 2 warps x 4 rows per block
ATT_THREADS = 512                       # fdy_attention: FDY_ATT_SIMDS (16) warps


def gemv_geometry(N: int):
    """(grid x, flags bits) of the CUDA fdy_gemv for N rows: 4 rows per warp when that still
    gives >= 4096 warps, else fewer (more warps in flight for small matrices)."""
    rpw = 4 if N >= 4 * 4096 else (2 if N >= 2 * 4096 else 1)
    return _cdiv(N, 2 * rpw), rpw << 8
GEMM_TM, GEMM_TN = 32, 64
NAN_BITS = 0x7FC00000


GEMV_DOTF_WARPS = 4                     # CUDA fdy_gemv_dotf<R>: 4 warps x R rows per block


def has_dotf(policy) -> bool:
    """Whether the policy's device code has a GEMV dot hook (FDY_<NAME>_DOTF_PARTS)."""
    name = _policy(policy).name
    v = _dotf_cache.get(name)
    if v is None:
        v = f"#define FDY_{name.upper()}_DOTF_PARTS" in compose("matmul", [name], "cuda")
        _dotf_cache[name] = v
    return v


_dotf_cache: Dict[str, bool] = {}


def launch_gemv(mod, policy, N: int, M: int, common: list, flags: int) -> None:
    """One GEMV launch (M rows of x, one grid row each): the policy's dot-hook kernel when it
    has one and no norm is fused, else the staged generic fdy_gemv.  common[7] is set here."""
    if not (flags & 4) and has_dotf(policy):
        r = 4 if N >= 4 * 4096 else (2 if N >= 2 * 4096 else 1)
        common[7] = I(flags)
        mod.launch(f"fdy_gemv_dotf{r}", (_cdiv(N, GEMV_DOTF_WARPS * r), M),
                   32 * GEMV_DOTF_WARPS, common)
        return
    gx, rbits = gemv_geometry(N)
    common[7] = I(flags | rbits)
    mod.launch("fdy_gemv", (gx, M), GEMV_THREADS, common)


def templates() -> List[str]:
    """Names of the kernel templates in metal/."""
    return list(_core.gpu_templates())


def _names(policies) -> List[str]:
    return [(_policy(p).name if not isinstance(p, Policy) else p.name) for p in policies]


def compose(template: str, policies: Sequence = (), target: str = "cuda",
            defines: Optional[str] = None) -> str:
    """The source of kernel template ``template`` for ``target`` ("cuda" or "metal"), weight
    slot i bound to ``policies[i]`` (names, ids or Policy objects)."""
    return _core.gpu_compose(target, template, _names(policies), defines)


# ---- CUDA availability ----------------------------------------------------------------------

_info: Optional[Tuple[str, int, int]] = None
_error: Optional[Exception] = None
_lock = threading.Lock()


def cuda_init() -> Tuple[str, int, int]:
    """(device name, compute capability, driver version); raises FoundryNotImplementedError
    when there is no driver or device."""
    global _info, _error
    with _lock:
        if _info is None and _error is None:
            try:
                _info = tuple(_core.cuda_init())
            except Exception as e:      # noqa: BLE001 - kept and re-raised on every call
                _error = e
    if _error is not None:
        raise _error
    return _info


def cuda_error() -> Optional[str]:
    """Why CUDA is unusable here, or None."""
    try:
        cuda_init()
        return None
    except Exception as e:               # noqa: BLE001
        return str(e)


def cuda_available() -> bool:
    """True when a CUDA driver, a device and NVRTC are usable."""
    try:
        cuda_init()
        return True
    except Exception:                    # noqa: BLE001
        return False


# ---- device memory --------------------------------------------------------------------------

class DeviceBuffer:
    """A block of device memory, freed when the object is."""

    __slots__ = ("ptr", "nbytes", "__weakref__")

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr = _core.cuda_malloc(max(self.nbytes, 4))

    @classmethod
    def from_array(cls, a: np.ndarray) -> "DeviceBuffer":
        a = np.ascontiguousarray(a)
        b = cls(a.nbytes)
        if a.nbytes:
            _core.cuda_upload(b.ptr, a)
        return b

    def poison(self) -> None:
        _core.cuda_fill(self.ptr, NAN_BITS, self.nbytes // 4)

    def download(self, out: np.ndarray) -> np.ndarray:
        if out.nbytes:
            _core.cuda_download(self.ptr, out)
        return out

    def __del__(self):
        ptr, self.ptr = getattr(self, "ptr", 0), 0
        if ptr:
            try:
                _core.cuda_free(ptr)
            except Exception:            # noqa: BLE001 - interpreter shutdown
                pass


_weights: Dict[Tuple[int, int, int], DeviceBuffer] = {}


def _owner(a: np.ndarray):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def device_weight(type_id: int, raw: np.ndarray) -> DeviceBuffer:
    """The device copy of a weight's blocks, uploaded on first use and kept while the host
    buffer lives."""
    raw = np.ascontiguousarray(raw)
    key = (raw.__array_interface__["data"][0], raw.nbytes, int(type_id))
    buf = _weights.get(key)
    if buf is None:
        buf = DeviceBuffer.from_array(raw)
        _weights[key] = buf
        owner = _owner(raw)
        try:
            weakref.finalize(owner, _weights.pop, key, None)
        except TypeError:                # not weak-referenceable: keep the host array alive
            _keep.append(owner)
    return buf


_keep: list = []


# ---- modules ----------------------------------------------------------------------------------

class Module:
    """A compiled kernel module: its source, content key and kernels."""

    def __init__(self, source: str):
        self.source = source
        self._mod, self.key = _core.cuda_module(source)

    def launch(self, name: str, grid, block: int, args) -> None:
        g = tuple(int(v) for v in grid) + (1,) * (3 - len(grid))
        _core.cuda_launch(self._mod, name, g, int(block), args)


_modules: Dict[str, Module] = {}


def module(template: str, policies: Sequence = ()) -> Module:
    src = compose(template, policies, "cuda")
    m = _modules.get(src)
    if m is None:
        cuda_init()
        m = Module(src)
        _modules[src] = m
    return m


def P(buf) -> tuple:
    return ("p", buf.ptr if buf is not None else 0)


def I(v) -> tuple:
    return ("i", int(v))


def F(v) -> tuple:
    return ("f", float(v))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---- the CUDA stages: the signatures of the CPU core's, so steps.py validates once ---------

class CudaOps:
    """Runs the stages on the GPU with the argument conventions of ``pyfoundry._core``:
    activations are NumPy float32 arrays, weights (type_id, raw, rows, cols) tuples."""

    def __init__(self):
        cuda_init()

    @staticmethod
    def _out(o: np.ndarray, accumulate: bool = False) -> DeviceBuffer:
        if accumulate:
            return DeviceBuffer.from_array(o)
        b = DeviceBuffer(o.nbytes)
        b.poison()
        return b

    @staticmethod
    def _in(a) -> Optional[DeviceBuffer]:
        return None if a is None else DeviceBuffer.from_array(np.ascontiguousarray(a))

    @staticmethod
    def _pol(wt) -> Policy:
        return _policy(int(wt[0]))

    def _mm(self, wt, xd, M, bd, od, nwd, eps, flags, act):
        p = self._pol(wt)
        N, K = int(wt[2]), int(wt[3])
        wd = device_weight(wt[0], wt[1])
        mod = module("matmul", [p])
        common = [P(wd), P(xd), P(bd), P(od), P(nwd), I(N), I(K), I(flags), I(act), F(eps)]
        if M == 1:
            launch_gemv(mod, p, N, M, common, flags)
        else:
            mod.launch("fdy_gemm", (_cdiv(N, GEMM_TN), _cdiv(M, GEMM_TM)), 256,
                       common + [I(M)])

    def matmul(self, wt, x2, M, b, o, accumulate, act, variant):
        self._check_variant(variant)
        xd, bd, od = self._in(x2), self._in(b), self._out(o, accumulate)
        flags = (1 if b is not None else 0) | (2 if accumulate else 0)
        self._mm(wt, xd, M, bd, od, None, 0.0, flags, act)
        od.download(o)

    def rmsnorm_matmul(self, x2, M, nw, eps, wt, b, o, accumulate, act, variant):
        self._check_variant(variant)
        xd, bd, od, nwd = self._in(x2), self._in(b), self._out(o, accumulate), self._in(nw)
        flags = (1 if b is not None else 0) | (2 if accumulate else 0) | 4
        self._mm(wt, xd, M, bd, od, nwd, eps, flags, act)
        od.download(o)

    def rmsnorm_qkv(self, x2, M, nw, eps, wts, bs, os_, variant):
        self._check_variant(variant)
        xd, nwd = self._in(x2), self._in(nw)
        bds = [self._in(b) for b in bs]
        ods = [self._out(o) for o in os_]
        K = int(wts[0][3])
        if M == 1:
            n = len(wts)
            pols = [self._pol(w) for w in wts]
            wds = [device_weight(w[0], w[1]) for w in wts]
            Ns = [int(w[2]) for w in wts] + [0] * (3 - n)
            wds += [None] * (3 - n)
            bds_ = bds + [None] * (3 - n)
            ods_ = ods + [None] * (3 - n)
            flags = sum(1 << i for i, b in enumerate(bs) if b is not None)
            module("qkv", pols).launch(
                "fdy_qkv", (_cdiv(sum(Ns), GEMV_ROWS), M), 32 * GEMV_ROWS,
                [P(w) for w in wds] + [P(xd), P(nwd)] + [P(b) for b in bds_] +
                [P(o) for o in ods_] + [I(v) for v in Ns] + [I(K), I(flags), F(eps)])
        else:
            for wt, bd, od in zip(wts, bds, ods):
                self._mm(wt, xd, M, bd, od, nwd, eps, (1 if bd is not None else 0) | 4, 0)
        for od, o in zip(ods, os_):
            od.download(o)

    def ffn(self, x2, M, nw, eps, g, u, d, o, variant):
        self._check_variant(variant)
        K, F_ = int(g[3]), int(g[2])
        xd, nwd = self._in(x2), self._in(nw)
        hd = DeviceBuffer(M * F_ * 4)
        hd.poison()
        if M == 1:
            module("ffn", [self._pol(g), self._pol(u)]).launch(
                "fdy_gateup", (_cdiv(F_, GEMV_ROWS), M), 32 * GEMV_ROWS,
                [P(device_weight(g[0], g[1])), P(device_weight(u[0], u[1])), P(xd), P(nwd),
                 P(hd), I(F_), I(K), F(eps)])
        else:
            gd, ud = DeviceBuffer(M * F_ * 4), DeviceBuffer(M * F_ * 4)
            self._mm(g, xd, M, None, gd, nwd, eps, 4, 0)
            self._mm(u, xd, M, None, ud, nwd, eps, 4, 0)
            n = M * F_
            module("elementwise").launch("fdy_swiglu", (_cdiv(n, 256),), 256,
                                         [P(gd), P(ud), P(hd), I(n)])
        od = DeviceBuffer.from_array(x2)          # residual: out = x + down(h)
        self._mm(d, hd, M, None, od, None, 0.0, 2, 0)
        od.download(o.reshape(x2.shape))

    def embedding(self, w, ids, M, o):
        K = int(w[3])
        idd, od = self._in(ids.astype(np.int32)), self._out(o)
        module("embedding", [self._pol(w)]).launch(
            "fdy_embedding", (M,), 128, [P(device_weight(w[0], w[1])), P(idd), P(od), I(K)])
        od.download(o)

    def rmsnorm(self, x2, M, K, w, eps, o):
        xd, wd, od = self._in(x2), self._in(w), self._out(o)
        module("elementwise").launch("fdy_rmsnorm", (M,), 256, [P(xd), P(wd), P(od), I(K),
                                                                F(eps)])
        od.download(o)

    def rope(self, x, M, H, D, pos, rot, theta, ff, neox, o):
        xd, pd, fd, od = self._in(x), self._in(pos), self._in(ff), self._out(o)
        flags = (1 if neox else 0) | (2 if ff is not None else 0)
        module("rope").launch("fdy_rope", (M * H,), 64,
                              [P(xd), P(pd), P(fd), P(od), P(None), P(None), I(H), I(D),
                               I(rot), F(theta), I(flags)])
        od.download(o)

    def attention(self, q, M, H, D, k, v, C, Hkv, start_pos, scale, o):
        if D > 256:
            raise FoundryNotImplementedError(f"attention on cuda: head size {D} > 256")
        qd, kd, vd, od = self._in(q), self._in(k), self._in(v), self._out(o)
        module("attention").launch("fdy_attention", (H, M), ATT_THREADS,
                                   [P(qd), P(kd), P(vd), P(od), I(H), I(D), I(Hkv),
                                    I(start_pos), F(scale), P(None)])
        od.download(o)

    def softmax(self, x2, M, N, o):
        xd, od = self._in(x2), self._out(o)
        module("elementwise").launch("fdy_softmax", (M,), 256, [P(xd), P(od), I(N)])
        od.download(o)

    def _binary(self, name, a, b, n, o):
        ad, bd, od = self._in(a), self._in(b), self._out(o)
        module("elementwise").launch(name, (_cdiv(n, 256),), 256, [P(ad), P(bd), P(od), I(n)])
        od.download(o)

    def swiglu(self, a, b, n, o):
        self._binary("fdy_swiglu", a, b, n, o)

    def add(self, a, b, n, o):
        self._binary("fdy_add", a, b, n, o)

    @staticmethod
    def _check_variant(variant):
        if variant != 0:
            raise FoundryNotImplementedError("the q8 variant is CPU-only; use variant='f32' "
                                             "on cuda")


def step_source(op: str, policies: Sequence[Policy]) -> str:
    """The composed CUDA source(s) a step of ``op`` runs."""
    ps = list(policies)
    if op in ("matmul", "rmsnorm_matmul"):
        return compose("matmul", ps[:1])
    if op == "rmsnorm_qkv":
        return compose("qkv", ps)
    if op == "ffn":
        return (compose("ffn", ps[:2]) + "\n/* ==== module 2: the down projection ==== */\n" +
                compose("matmul", ps[2:3]))
    if op == "embedding":
        return compose("embedding", ps[:1])
    if op in ("rope", "attention"):
        return compose(op)
    return compose("elementwise")
