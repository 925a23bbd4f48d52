"""GPU backends: kernel sources composed from metal/ and policies/, and the CUDA and Metal
runners.

    pf.gpu.compose("matmul", ["q4_k"])            # the CUDA source of a GEMV/GEMM module
    pf.gpu.compose("qkv", ["q4_k", "q6_k", "q8_0"], target="metal")
    pf.cuda_available()                           # False without a driver or a device
    step = pf.compile("matmul", policy="q4_k", backend="cuda")
    step(x, w)                                    # NumPy in, NumPy out; w uploaded once

A source is the target's prelude, the device part of each policy (the same text the CPU
compiles), the common helpers, one weight slot per policy and the kernel template.  The CUDA
host (foundry_c/src/gpu/cuda.c) compiles it with NVRTC for the device's architecture and
caches the binary by content key in memory and on disk.  The Metal host
(foundry_c/src/gpu/metal.m, built only on macOS) compiles the "metal" composition with
newLibraryWithSource and caches it by content key in memory only.

Both hosts are driven through a :class:`Backend` (``backend("cuda")``, ``backend("metal")``):
the same device calls under the same names, so one :class:`GpuOps` launches every stage on
either with the same grids and threadgroup sizes (SIMD groups of 32 on both).  What differs
is in the backend object: the target of the composition, fdy_gemv's geometry (the CUDA
template has its own), and graph capture (CUDA only).

Device copies of weights are cached per host buffer (the tensor's blocks) and freed when that
buffer is; tensors are treated as immutable.  Activations go to fresh device buffers per call;
outputs are poisoned (NaN) on the device before each launch so an unwritten element shows.
"""
from __future__ import annotations

import sys
import threading
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _core
from ._errors import FoundryNotImplementedError, ShapeError
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


GEMV_DOTF_WARPS = 4                     # CUDA fdy_gemv_dotf<R>: 4 warps (split K) x R rows


def _matmul_source(name: str) -> str:
    """The CUDA matmul composition of one policy (what the hook queries below read), kept."""
    src = _matmul_sources.get(name)
    if src is None:
        src = _matmul_sources[name] = compose("matmul", [name], "cuda")
    return src


_matmul_sources: Dict[str, str] = {}


def has_dotf(policy) -> bool:
    """Whether the policy's device code has a GEMV dot hook (FDY_<NAME>_DOTF_PARTS)."""
    name = _policy(policy).name
    return f"#define FDY_{name.upper()}_DOTF_PARTS" in _matmul_source(name)


def act_group(policy) -> Optional[int]:
    """Elements per scale of the q8 variant's device activations for ``policy`` (its dot_type's
    block: 32 for q8_0 / q8_1, 256 for q8_k), or None when the policy has no dot_type or the
    dot_type no device quantizer (FDY_<DT>_ACT_GROUP); the q8 variant then computes as f32."""
    p = _policy(policy)
    if not p.dot_type:
        return None
    src, dt = _matmul_source(p.name), p.dot_type.upper()
    if f"#define FDY_W0_ACT_GROUP FDY_{dt}_ACT_GROUP" in src and \
            f"#define FDY_{dt}_ACT_GROUP" in src:
        return _policy(p.dot_type).block_elems
    return None


def has_doti(policy) -> bool:
    """Whether the policy's device code has an integer GEMV hook for the q8 variant
    (FDY_<NAME>_DOTI, fdy_doti_calc_<name>) and its dot_type a device quantizer."""
    name = _policy(policy).name
    return (act_group(name) is not None and has_dotf(name) and
            f"#define FDY_{name.upper()}_DOTI " in _matmul_source(name))


def integer_gemv(be, policy, M: int) -> bool:
    """Whether a q8-variant matmul of M rows runs the integer GEMV (fdy_gemv_doti): one row,
    on CUDA, for a policy with an integer hook; otherwise the float kernels run on the
    dequantized activations."""
    return M == 1 and be.name == "cuda" and has_doti(policy)


def _hook_rows(N: int) -> int:
    """Rows per block of the dot-hook GEMV kernels (fdy_gemv_dotf<R>, fdy_gemv_doti<R>)."""
    return 4 if N >= 4 * 4096 else (2 if N >= 4096 else 1)


def launch_quantize_act(mod, xd, xq, xs, xf, M: int, K: int, G: int) -> None:
    """fdy_quantize_act of ``mod`` (a matmul module): x (M, K) on the device -> codes xq,
    group scales xs and, when xf is a buffer, the dequantized activations."""
    mod.launch("fdy_quantize_act", (_cdiv(K // G, 4), M), 128,
               [P(xd), P(xq), P(xs), P(xf), I(K), I(1 if xf is not None else 0)])


def launch_gemv_doti(mod, N: int, M: int, K: int, wd, xq, xs, bd, od, flags: int, act: int) -> None:
    """One q8-variant GEMV through the policy's integer hook (codes xq, scales xs from
    launch_quantize_act)."""
    r = _hook_rows(N)
    mod.launch(f"fdy_gemv_doti{r}", (_cdiv(N, r), M), 32 * GEMV_DOTF_WARPS,
               [P(wd), P(xq), P(bd), P(od), P(xs), I(N), I(K), I(flags), I(act), F(0.0)])


def launch_gemv(mod, policy, N: int, M: int, common: list, flags: int, be=None) -> None:
    """One GEMV launch (M rows of x, one grid row each): on CUDA the policy's dot-hook kernel
    when it has one and no norm is fused, else the generic fdy_gemv in the backend's geometry.
    common[7] is set here."""
    if be is not None and be.name != "cuda":
        gx, rbits, threads = be.gemv(N)
        common[7] = I(flags | rbits)
        mod.launch("fdy_gemv", (gx, M), threads, common)
        return
    if not (flags & 4) and has_dotf(policy):
        r = _hook_rows(N)
        common[7] = I(flags)
        mod.launch(f"fdy_gemv_dotf{r}", (_cdiv(N, r), M), 32 * GEMV_DOTF_WARPS, common)
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


# ---- backends: the device calls of one host ------------------------------------------------

class Backend:
    """The device calls of one GPU host (``_core.<name>_malloc``, ``_upload``, ``_launch`` ...)
    and what differs between hosts.  ``init()`` raises FoundryNotImplementedError when the host
    is not built or has no device; the outcome is kept and re-raised on every call."""

    CALLS = ("malloc", "free", "upload", "download", "copy", "fill", "module", "launch", "sync")

    def __init__(self, name: str, graphs: bool):
        self.name = name
        self.target = name            # the composition target of gpu_compose
        self.graphs = graphs          # capture_begin / capture_end / graph_launch / graph_free
        self._info: Optional[tuple] = None
        self._error: Optional[Exception] = None
        self._lock = threading.Lock()

    def _not_built(self) -> Optional[str]:
        if self.name == "metal" and not hasattr(_core, "metal_init"):
            return (f"the Metal host (foundry_c/src/gpu/metal.m) is built only on macOS; "
                    f"this build is for {sys.platform}")
        return None

    def init(self) -> tuple:
        with self._lock:
            if self._info is None and self._error is None:
                why = self._not_built()
                try:
                    if why:
                        raise FoundryNotImplementedError(why)
                    self._info = tuple(getattr(_core, self.name + "_init")())
                    for c in self.CALLS:
                        setattr(self, c, getattr(_core, f"{self.name}_{c}"))
                    if self.graphs:
                        for c in ("capture_begin", "capture_end", "graph_launch",
                                  "graph_free"):
                            setattr(self, c, getattr(_core, f"{self.name}_{c}"))
                except Exception as e:  # noqa: BLE001 - kept and re-raised on every call
                    self._error = e
        if self._error is not None:
            raise self._error
        return self._info

    def error(self) -> Optional[str]:
        """Why this backend is unusable here, or None."""
        try:
            self.init()
            return None
        except Exception as e:          # noqa: BLE001
            return str(e)

    def available(self) -> bool:
        return self.error() is None

    def gemv(self, N: int) -> Tuple[int, int, int]:
        """(grid x, flag bits, threads per threadgroup) of fdy_gemv for N rows."""
        if self.name == "cuda":
            gx, rbits = gemv_geometry(N)
            return gx, rbits, GEMV_THREADS
        return _cdiv(N, GEMV_ROWS), 0, 32 * GEMV_ROWS


_backends: Dict[str, Backend] = {"cuda": Backend("cuda", graphs=True),
                                 "metal": Backend("metal", graphs=False)}


def get_backend(name="cuda") -> Backend:
    """The :class:`Backend` called ``name`` ("cuda" or "metal"; a Backend is returned as is)."""
    if isinstance(name, Backend):
        return name
    try:
        return _backends[name]
    except KeyError:
        raise ShapeError(f"unknown GPU backend {name!r}; use 'cuda' or 'metal'") from None


def _be(b) -> Backend:
    return _backends["cuda"] if b is None else get_backend(b)


def cuda_init() -> Tuple[str, int, int]:
    """(device name, compute capability, driver version); raises FoundryNotImplementedError
    when there is no driver or device."""
    return _backends["cuda"].init()


def cuda_error() -> Optional[str]:
    """Why CUDA is unusable here, or None."""
    return _backends["cuda"].error()


def cuda_available() -> bool:
    """True when a CUDA driver, a device and NVRTC are usable."""
    return _backends["cuda"].available()


def metal_init() -> Tuple[str, str]:
    """(device name, OS version); raises FoundryNotImplementedError when this is not a macOS
    build or there is no Metal device."""
    return _backends["metal"].init()


def metal_error() -> Optional[str]:
    """Why Metal is unusable here (not macOS, no device), or None."""
    return _backends["metal"].error()


def metal_available() -> bool:
    """True on a macOS build with a Metal device."""
    return _backends["metal"].available()


# ---- device memory --------------------------------------------------------------------------

class DeviceBuffer:
    """A block of device memory of one backend (CUDA unless given), freed when the object is."""

    __slots__ = ("ptr", "nbytes", "be", "__weakref__")

    def __init__(self, nbytes: int, backend=None):
        self.be = _be(backend)
        self.be.init()
        self.nbytes = int(nbytes)
        self.ptr = self.be.malloc(max(self.nbytes, 4))

    @classmethod
    def from_array(cls, a: np.ndarray, backend=None) -> "DeviceBuffer":
        a = np.ascontiguousarray(a)
        b = cls(a.nbytes, backend)
        if a.nbytes:
            b.be.upload(b.ptr, a)
        return b

    def poison(self) -> None:
        self.be.fill(self.ptr, NAN_BITS, self.nbytes // 4)

    def download(self, out: np.ndarray) -> np.ndarray:
        if out.nbytes:
            self.be.download(self.ptr, out)
        return out

    def __del__(self):
        ptr, self.ptr = getattr(self, "ptr", 0), 0
        if ptr:
            try:
                self.be.free(ptr)
            except Exception:            # noqa: BLE001 - interpreter shutdown
                pass


_weights: Dict[Tuple[str, int, int, int], DeviceBuffer] = {}


def _owner(a: np.ndarray):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def device_weight(type_id: int, raw: np.ndarray, backend=None) -> DeviceBuffer:
    """The device copy of a weight's blocks, uploaded on first use and kept while the host
    buffer lives."""
    be = _be(backend)
    raw = np.ascontiguousarray(raw)
    key = (be.name, raw.__array_interface__["data"][0], raw.nbytes, int(type_id))
    buf = _weights.get(key)
    if buf is None:
        buf = DeviceBuffer.from_array(raw, be)
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
    """A compiled kernel module of one backend: its source, content key and kernels."""

    def __init__(self, source: str, backend=None):
        self.source = source
        self.be = _be(backend)
        self.be.init()
        self._mod, self.key = self.be.module(source)

    def launch(self, name: str, grid, block: int, args) -> None:
        g = tuple(int(v) for v in grid) + (1,) * (3 - len(grid))
        self.be.launch(self._mod, name, g, int(block), args)


_modules: Dict[Tuple[str, str], Module] = {}


def module(template: str, policies: Sequence = (), backend=None) -> Module:
    be = _be(backend)
    src = compose(template, policies, be.target)
    m = _modules.get((be.name, src))
    if m is None:
        be.init()
        m = Module(src, be)
        _modules[(be.name, src)] = m
    return m


def P(buf) -> tuple:
    return ("p", buf.ptr if buf is not None else 0)


def I(v) -> tuple:
    return ("i", int(v))


def F(v) -> tuple:
    return ("f", float(v))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---- the GPU stages: the signatures of the CPU core's, so steps.py validates once ----------

class GpuOps:
    """Runs the stages on a GPU backend ("cuda" or "metal") with the argument conventions of
    ``pyfoundry._core``: activations are NumPy float32 arrays, weights (type_id, raw, rows,
    cols) tuples.  Every launch goes through the backend object; grids and threadgroup sizes
    are the same on both (fdy_gemv's excepted: ``Backend.gemv``)."""

    def __init__(self, backend="cuda"):
        self.be = get_backend(backend)
        self.be.init()

    def _module(self, template: str, policies: Sequence = ()) -> Module:
        return module(template, policies, self.be)

    def _weight(self, wt) -> DeviceBuffer:
        return device_weight(wt[0], wt[1], self.be)

    def _out(self, o: np.ndarray, accumulate: bool = False) -> DeviceBuffer:
        if accumulate:
            return DeviceBuffer.from_array(o, self.be)
        b = DeviceBuffer(o.nbytes, self.be)
        b.poison()
        return b

    def _in(self, a) -> Optional[DeviceBuffer]:
        return None if a is None else DeviceBuffer.from_array(np.ascontiguousarray(a), self.be)

    @staticmethod
    def _pol(wt) -> Policy:
        return _policy(int(wt[0]))

    def _mm(self, wt, xd, M, bd, od, nwd, eps, flags, act, variant=0):
        p = self._pol(wt)
        N, K = int(wt[2]), int(wt[3])
        wd = self._weight(wt)
        mod = self._module("matmul", [p])
        G = act_group(p) if variant else None
        if G is not None and K % G == 0:
            # the q8 variant: the activations (normalised first when a norm is fused) quantized
            # on the device in the policy's dot_type, then the integer hook for M = 1 where the
            # policy has one, else the float kernels on the dequantized activations
            if flags & 4:
                xn = DeviceBuffer(M * K * 4, self.be)
                self._module("elementwise").launch("fdy_rmsnorm", (M,), 256,
                                                   [P(xd), P(nwd), P(xn), I(K), F(eps)])
                xd, nwd, flags = xn, None, flags & ~4
            integer = integer_gemv(self.be, p, M)
            xq = DeviceBuffer(M * K, self.be)
            xs = DeviceBuffer(M * (K // G) * 4, self.be)
            xf = None if integer else DeviceBuffer(M * K * 4, self.be)
            launch_quantize_act(mod, xd, xq, xs, xf, M, K, G)
            if integer:
                launch_gemv_doti(mod, N, M, K, wd, xq, xs, bd, od, flags, act)
                return
            xd = xf
        common = [P(wd), P(xd), P(bd), P(od), P(nwd), I(N), I(K), I(flags), I(act), F(eps)]
        if M == 1:
            launch_gemv(mod, p, N, M, common, flags, self.be)
        else:
            mod.launch("fdy_gemm", (_cdiv(N, GEMM_TN), _cdiv(M, GEMM_TM)), 256,
                       common + [I(M)])

    def matmul(self, wt, x2, M, b, o, accumulate, act, variant):
        xd, bd, od = self._in(x2), self._in(b), self._out(o, accumulate)
        flags = (1 if b is not None else 0) | (2 if accumulate else 0)
        self._mm(wt, xd, M, bd, od, None, 0.0, flags, act, variant)
        od.download(o)

    def rmsnorm_matmul(self, x2, M, nw, eps, wt, b, o, accumulate, act, variant):
        xd, bd, od, nwd = self._in(x2), self._in(b), self._out(o, accumulate), self._in(nw)
        flags = (1 if b is not None else 0) | (2 if accumulate else 0) | 4
        self._mm(wt, xd, M, bd, od, nwd, eps, flags, act, variant)
        od.download(o)

    def rmsnorm_qkv(self, x2, M, nw, eps, wts, bs, os_, variant):
        xd, nwd = self._in(x2), self._in(nw)
        bds = [self._in(b) for b in bs]
        ods = [self._out(o) for o in os_]
        K = int(wts[0][3])
        if variant:   # the q8 variant: one quantized matmul per weight (each its own dot_type)
            for wt, bd, od in zip(wts, bds, ods):
                self._mm(wt, xd, M, bd, od, nwd, eps, (1 if bd is not None else 0) | 4, 0,
                         variant)
        elif M == 1:
            n = len(wts)
            pols = [self._pol(w) for w in wts]
            wds = [self._weight(w) for w in wts]
            Ns = [int(w[2]) for w in wts] + [0] * (3 - n)
            wds += [None] * (3 - n)
            bds_ = bds + [None] * (3 - n)
            ods_ = ods + [None] * (3 - n)
            flags = sum(1 << i for i, b in enumerate(bs) if b is not None)
            self._module("qkv", pols).launch(
                "fdy_qkv", (_cdiv(sum(Ns), GEMV_ROWS), M), 32 * GEMV_ROWS,
                [P(w) for w in wds] + [P(xd), P(nwd)] + [P(b) for b in bds_] +
                [P(o) for o in ods_] + [I(v) for v in Ns] + [I(K), I(flags), F(eps)])
        else:
            for wt, bd, od in zip(wts, bds, ods):
                self._mm(wt, xd, M, bd, od, nwd, eps, (1 if bd is not None else 0) | 4, 0)
        for od, o in zip(ods, os_):
            od.download(o)

    def ffn(self, x2, M, nw, eps, g, u, d, o, variant):
        K, F_ = int(g[3]), int(g[2])
        xd, nwd = self._in(x2), self._in(nw)
        hd = DeviceBuffer(M * F_ * 4, self.be)
        hd.poison()
        if M == 1 and not variant:
            self._module("ffn", [self._pol(g), self._pol(u)]).launch(
                "fdy_gateup", (_cdiv(F_, GEMV_ROWS), M), 32 * GEMV_ROWS,
                [P(self._weight(g)), P(self._weight(u)), P(xd), P(nwd),
                 P(hd), I(F_), I(K), F(eps)])
        else:
            gd, ud = DeviceBuffer(M * F_ * 4, self.be), DeviceBuffer(M * F_ * 4, self.be)
            self._mm(g, xd, M, None, gd, nwd, eps, 4, 0, variant)
            self._mm(u, xd, M, None, ud, nwd, eps, 4, 0, variant)
            n = M * F_
            self._module("elementwise").launch("fdy_swiglu", (_cdiv(n, 256),), 256,
                                               [P(gd), P(ud), P(hd), I(n)])
        od = DeviceBuffer.from_array(x2, self.be)  # residual: out = x + down(h)
        self._mm(d, hd, M, None, od, None, 0.0, 2, 0, variant)
        od.download(o.reshape(x2.shape))

    def embedding(self, w, ids, M, o):
        K = int(w[3])
        idd, od = self._in(ids.astype(np.int32)), self._out(o)
        self._module("embedding", [self._pol(w)]).launch(
            "fdy_embedding", (M,), 128, [P(self._weight(w)), P(idd), P(od), I(K)])
        od.download(o)

    def rmsnorm(self, x2, M, K, w, eps, o):
        xd, wd, od = self._in(x2), self._in(w), self._out(o)
        self._module("elementwise").launch("fdy_rmsnorm", (M,), 256,
                                           [P(xd), P(wd), P(od), I(K), F(eps)])
        od.download(o)

    def rope(self, x, M, H, D, pos, rot, theta, ff, neox, o):
        xd, pd, fd, od = self._in(x), self._in(pos), self._in(ff), self._out(o)
        flags = (1 if neox else 0) | (2 if ff is not None else 0)
        self._module("rope").launch("fdy_rope", (M * H,), 64,
                                    [P(xd), P(pd), P(fd), P(od), P(None), P(None), I(H),
                                     I(D), I(rot), F(theta), I(flags)])
        od.download(o)

    def attention(self, q, M, H, D, k, v, C, Hkv, start_pos, scale, o):
        if D > 256:
            raise FoundryNotImplementedError(f"attention on {self.be.name}: head size {D} > 256")
        qd, kd, vd, od = self._in(q), self._in(k), self._in(v), self._out(o)
        self._module("attention").launch("fdy_attention", (H, M), ATT_THREADS,
                                         [P(qd), P(kd), P(vd), P(od), I(H), I(D), I(Hkv),
                                          I(start_pos), F(scale), P(None)])
        od.download(o)

    def softmax(self, x2, M, N, o):
        xd, od = self._in(x2), self._out(o)
        self._module("elementwise").launch("fdy_softmax", (M,), 256, [P(xd), P(od), I(N)])
        od.download(o)

    def _binary(self, name, a, b, n, o):
        ad, bd, od = self._in(a), self._in(b), self._out(o)
        self._module("elementwise").launch(name, (_cdiv(n, 256),), 256,
                                           [P(ad), P(bd), P(od), I(n)])
        od.download(o)

    def swiglu(self, a, b, n, o):
        self._binary("fdy_swiglu", a, b, n, o)

    def add(self, a, b, n, o):
        self._binary("fdy_add", a, b, n, o)


class CudaOps(GpuOps):
    """:class:`GpuOps` on the CUDA backend."""

    def __init__(self):
        super().__init__("cuda")


def step_source(op: str, policies: Sequence[Policy], target: str = "cuda") -> str:
    """The composed source(s) a step of ``op`` runs on ``target`` ("cuda" or "metal")."""
    ps = list(policies)
    if op in ("matmul", "rmsnorm_matmul"):
        return compose("matmul", ps[:1], target)
    if op == "rmsnorm_qkv":
        return compose("qkv", ps, target)
    if op == "ffn":
        return (compose("ffn", ps[:2], target) +
                "\n/* ==== module 2: the down projection ==== */\n" +
                compose("matmul", ps[2:3], target))
    if op == "embedding":
        return compose("embedding", ps[:1], target)
    if op in ("rope", "attention"):
        return compose(op, (), target)
    return compose("elementwise", (), target)
