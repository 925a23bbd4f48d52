"""Weight formats ("policies"): the registry of the C core, seen from Python.

Every format the core knows is one :class:`Policy`; ``pyfoundry.policies`` lists them in
registry order and ``pyfoundry.policy(name)`` looks one up.  A policy quantizes float arrays
into its blocks and dequantizes blocks back to float32; shapes follow NumPy order, the last
axis is the row (``(out_features, in_features)`` for a weight) and must be a multiple of
``block_elems``.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from . import _core
from ._errors import ShapeError


class Policy:
    """One weight format: its block layout, its quantizer and its dequantizer.

    Attributes
    ----------
    name : str                 user-facing name, e.g. ``"q4_k"``
    gguf_type : int            GGUF on-disk type id (>= 1000: a format GGUF lacks)
    block_elems : int          weights per block
    block_bytes : int          bytes per block
    sub_elems : int            weights one decode call of the kernels yields
    bits_per_weight : float    ``8 * block_bytes / block_elems``
    can_quantize : bool        False for dequantize-only formats
    is_gguf : bool             True when GGUF files can carry it
    is_activation : bool       an activation format of the q8 variant (Q8_1, Q8_K)
    dot_type : str | None      activation format of the ``q8`` compute variant
    has_to_i8 : bool           rows unpack exactly to int8 codes + per-16 scale and min (the
                               prefill GEMM of the ``q8`` variant uses it)
    has_vec_dot_f32 : bool     the ``f32`` variant's GEMV (M <= 4) runs a fused decode + dot
                               kernel for this format (see :meth:`vec_dot_f32`)
    has_vec_dot_f32_rows : bool  the ``f32`` variant's GEMV runs a row-range kernel that
                               rearranges the activation once per call (see
                               :meth:`vec_dot_f32_rows`)
    has_vec_dot_rows : bool    the ``q8`` variant's decode GEMV (M = 1) runs a row-range kernel
                               that computes the activation's terms once per 64 rows (the same
                               bits as the one-row kernel)
    pack_rows : int            rows per group of the format's interleaved layout for the ``q8``
                               variant's decode GEMV (0: none).  pf.Model makes the interleaved
                               copy of each matmul weight at its first ``q8`` forward, on CPUs
                               whose legacy kernels run their AVX2 tier (not with AVX-512), and
                               the decode GEMV streams it: the same integer block sums, float
                               accumulation in block order
    amx_chunk_bytes : int      bytes per 16 rows x 64 elements of the format's AMX layout for
                               the ``f32`` variant's decode GEMV (0: none).  On CPUs with AMX
                               (``"amx"`` in :func:`pyfoundry.cpu_features`) pf.Model makes
                               that copy of each matmul weight at its first one-token ``f32``
                               forward; the kernel multiplies the weight codes with x as exact
                               integers (a 32-bit fixed point per block of 32), within the
                               format's ``f32`` tolerance
    tolerances : dict          test tolerances (relative L2): roundtrip, f32, q8
    """

    __slots__ = ("name", "gguf_type", "block_elems", "block_bytes", "sub_elems",
                 "bits_per_weight", "can_quantize", "is_gguf", "is_activation", "dot_type",
                 "has_to_i8", "has_vec_dot_f32", "has_vec_dot_f32_rows", "has_vec_dot_rows",
                 "pack_rows", "amx_chunk_bytes", "tolerances")

    def __init__(self, info: dict):
        self.name = info["name"]
        self.gguf_type = info["type"]
        self.block_elems = info["block_elems"]
        self.block_bytes = info["block_bytes"]
        self.sub_elems = info["sub_elems"]
        self.bits_per_weight = info["bits_per_weight"]
        self.can_quantize = info["can_quantize"]
        self.is_gguf = info["is_gguf"]
        self.is_activation = info["is_activation"]
        self.dot_type = info["dot_type"]
        self.has_to_i8 = info["has_to_i8"]
        self.has_vec_dot_f32 = info["has_vec_dot_f32"]
        self.has_vec_dot_f32_rows = info["has_vec_dot_f32_rows"]
        self.has_vec_dot_rows = info["has_vec_dot_rows"]
        self.pack_rows = info["pack_rows"]
        self.amx_chunk_bytes = info["amx_chunk_bytes"]
        self.tolerances = {"roundtrip": info["tol_roundtrip"], "f32": info["tol_f32"],
                           "q8": info["tol_q8"]}

    def __repr__(self) -> str:
        return (f"Policy({self.name!r}, gguf_type={self.gguf_type}, block={self.block_elems} "
                f"elems/{self.block_bytes} bytes, {self.bits_per_weight:.4g} bits/weight)")

    def __eq__(self, other) -> bool:
        return isinstance(other, Policy) and other.gguf_type == self.gguf_type

    def __hash__(self) -> int:
        return hash(self.gguf_type)

    # ---- sizes ----
    def row_bytes(self, n: int) -> int:
        """Bytes that a row of ``n`` weights takes; raises ShapeError unless n % block_elems == 0."""
        n = int(n)
        if n < 0 or n % self.block_elems:
            raise ShapeError(f"{self.name}: a row of {n} elements is not a multiple of the "
                             f"block size {self.block_elems}")
        return n // self.block_elems * self.block_bytes

    def byte_shape(self, shape) -> Tuple[int, ...]:
        """Shape of the raw uint8 blocks for a float array of ``shape``."""
        shape = tuple(int(s) for s in shape)
        if not shape:
            raise ShapeError(f"{self.name}: a scalar cannot be quantized")
        return shape[:-1] + (self.row_bytes(shape[-1]),)

    # ---- conversions ----
    def quantize(self, array) -> np.ndarray:
        """Quantize ``array`` (any float dtype, shape ``(..., K)``) into blocks.

        Returns a uint8 array of shape ``(..., K // block_elems * block_bytes)``.
        """
        if not self.can_quantize:
            raise NotImplementedError(f"{self.name} is a dequantize-only format")
        a = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
        bshape = self.byte_shape(a.shape)
        return _core.quantize(self.gguf_type, a).reshape(bshape)

    def vec_dot_f32(self, raw, x) -> float:
        """The fused f32-variant GEMV kernel on one weight row: ``raw`` holds the blocks of
        ``len(x)`` weights, ``x`` is converted to float32.  Raises FoundryNotImplementedError
        when the format has no such kernel (``has_vec_dot_f32``).  For tests and benchmarks."""
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1))
        buf = np.ascontiguousarray(np.asarray(raw).view(np.uint8)).reshape(-1)
        self.row_bytes(x.size)
        return _core.vec_dot_f32(self.gguf_type, buf, x)

    def vec_dot_f32_rows(self, raw, x) -> np.ndarray:
        """The f32-variant GEMV over several weight rows, as the matmul stages run it for up to
        4 activation rows: ``raw`` holds one row of ``len(x)`` weights per leading index (shape
        ``(rows, row_bytes)`` or anything reshapeable to it), ``x`` is converted to float32.
        Runs the format's row-range kernel (``has_vec_dot_f32_rows``), else
        :meth:`vec_dot_f32` row by row; raises FoundryNotImplementedError when the format has
        neither.  Returns float32 of shape ``(rows,)``.  For tests and benchmarks."""
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1))
        rb = self.row_bytes(x.size)
        buf = np.ascontiguousarray(np.asarray(raw).view(np.uint8))
        if rb == 0 or buf.size % rb:
            raise ShapeError(f"{self.name}: {buf.size} bytes are not whole rows of {rb} bytes "
                             f"({x.size} elements)")
        return _core.vec_dot_f32_rows(self.gguf_type, buf.reshape(-1, rb), x)

    def dequantize(self, raw, shape=None) -> np.ndarray:
        """Decode blocks to float32.

        ``raw`` is bytes-like (uint8 blocks); ``shape`` is the float shape (NumPy order).  When
        ``shape`` is omitted, a uint8 array's leading axes are kept and its last axis is
        converted; anything else decodes to a flat array.
        """
        if (shape is None and type(raw) is np.ndarray and raw.dtype == np.uint8
                and raw.ndim >= 1 and raw.flags.c_contiguous):
            # the common case (rows of blocks, as quantize returns them) without the general
            # path's shape arithmetic: the call costs the decode, not the bookkeeping
            rb = raw.shape[-1]
            if rb % self.block_bytes == 0:
                cols = rb // self.block_bytes * self.block_elems
                out = _core.dequantize(self.gguf_type, raw, raw.size // rb * cols if rb else 0)
                return out.reshape(raw.shape[:-1] + (cols,))
        if isinstance(raw, np.ndarray):
            buf = np.ascontiguousarray(raw).view(np.uint8)
        else:
            buf = np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8)
        if shape is None:
            if buf.ndim >= 1 and isinstance(raw, np.ndarray) and raw.dtype == np.uint8:
                rb = buf.shape[-1]
                if rb % self.block_bytes:
                    raise ShapeError(f"{self.name}: rows of {rb} bytes are not a whole number "
                                     f"of {self.block_bytes}-byte blocks")
                shape = buf.shape[:-1] + (rb // self.block_bytes * self.block_elems,)
            else:
                if buf.size % self.block_bytes:
                    raise ShapeError(f"{self.name}: {buf.size} bytes are not a whole number "
                                     f"of {self.block_bytes}-byte blocks")
                shape = (buf.size // self.block_bytes * self.block_elems,)
        shape = tuple(int(s) for s in shape)
        need = int(np.prod(self.byte_shape(shape), dtype=np.int64))
        if buf.size != need:
            raise ShapeError(f"{self.name}: raw data has {buf.size} bytes, shape {shape} "
                             f"needs {need}")
        n = int(np.prod(shape, dtype=np.int64))
        return _core.dequantize(self.gguf_type, buf.reshape(-1), n).reshape(shape)


def _load_registry() -> Tuple[Tuple[Policy, ...], Dict[str, Policy], Dict[int, Policy]]:
    ps = tuple(Policy(d) for d in _core.policy_info())
    return ps, {p.name: p for p in ps}, {p.gguf_type: p for p in ps}


policies, _by_name, _by_type = _load_registry()


def policy(name_or_type) -> Policy:
    """Look up a policy by name (``"q4_k"``, case-insensitive), GGUF type id, or Policy."""
    if isinstance(name_or_type, Policy):
        return name_or_type
    if isinstance(name_or_type, (int, np.integer)):
        p = _by_type.get(int(name_or_type))
        if p is None:
            raise ShapeError(f"unknown policy type id {int(name_or_type)}")
        return p
    if isinstance(name_or_type, str):
        p = _by_name.get(name_or_type.lower())
        if p is None:
            raise ShapeError(f"unknown policy {name_or_type!r}; known: "
                             + ", ".join(_by_name))
        return p
    raise TypeError(f"policy must be a name, a type id or a Policy, not "
                    f"{type(name_or_type).__name__}")
