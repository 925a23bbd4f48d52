"""GGUF files and tensors.

``pyfoundry.open(path)`` parses a GGUF file (v2 or v3) without reading tensor data: the file
is memory-mapped and tensors are views into it.  :class:`Tensor` is also how arrays enter
the library (``Tensor.from_numpy(array, policy="q4_k")``) and how files are written
(:func:`write_gguf`).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Dict, Iterable, Mapping, Optional, Union

import numpy as np

from . import _core
from ._errors import FoundryStateError, ShapeError
from .policy import Policy, policy as _policy

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

# ---- metadata value types ---------------------------------------------------------------

_TYPE_NAMES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool",
               "string", "array", "uint64", "int64", "float64"]
_TYPE_IDS = {n: i for i, n in enumerate(_TYPE_NAMES)}
_ARRAY = 9


def _desc_to_str(desc) -> str:
    if isinstance(desc, int):
        return _TYPE_NAMES[desc]
    return f"array[{_desc_to_str(desc[1])}]"


def _str_to_desc(s: str):
    s = s.strip()
    if s.startswith("array[") and s.endswith("]"):
        return (_ARRAY, _str_to_desc(s[6:-1]))
    if s in _TYPE_IDS and s != "array":
        return _TYPE_IDS[s]
    raise ShapeError(f"unknown GGUF value type {s!r}; use one of "
                     + ", ".join(n for n in _TYPE_NAMES if n != "array") + " or array[...]")


_NP_TYPES = {np.dtype(np.uint8): "uint8", np.dtype(np.int8): "int8",
             np.dtype(np.uint16): "uint16", np.dtype(np.int16): "int16",
             np.dtype(np.uint32): "uint32", np.dtype(np.int32): "int32",
             np.dtype(np.float32): "float32", np.dtype(np.bool_): "bool",
             np.dtype(np.uint64): "uint64", np.dtype(np.int64): "int64",
             np.dtype(np.float64): "float64"}


def infer_type(value) -> str:
    """The GGUF type a Python value is written as when no type is given.

    bool -> bool, int -> int32 (int64 / uint64 when it does not fit), float -> float32,
    str -> string, a sequence -> array[...] of its items' common type, a NumPy array or
    scalar -> its dtype.
    """
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "US":
            return "array[string]"
        if value.dtype not in _NP_TYPES:
            raise ShapeError(f"cannot store a {value.dtype} array in GGUF metadata")
        inner = _NP_TYPES[value.dtype]
        return "array[" * value.ndim + inner + "]" * value.ndim
    if isinstance(value, np.generic):
        if value.dtype in _NP_TYPES:
            return _NP_TYPES[value.dtype]
        value = value.item()
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        if -2**31 <= value < 2**31:
            return "int32"
        if -2**63 <= value < 2**63:
            return "int64"
        return "uint64"
    if isinstance(value, float):
        return "float32"
    if isinstance(value, (str, bytes)):
        return "string"
    if isinstance(value, (list, tuple)):
        if not value:
            return "array[int32]"
        kinds = {infer_type(v) for v in value}
        if len(kinds) == 1:
            return f"array[{kinds.pop()}]"
        if kinds <= {"int32", "int64", "uint64", "float32", "bool"}:
            if "float32" in kinds:
                return "array[float32]"
            return "array[int64]" if "uint64" not in kinds else "array[uint64]"
        if all(k.startswith("array[") for k in kinds):
            return f"array[{sorted(kinds)[0]}]"
        raise ShapeError(f"cannot infer one GGUF type for a list of {sorted(kinds)}")
    raise ShapeError(f"cannot store a {type(value).__name__} in GGUF metadata")


# ---- tensors ------------------------------------------------------------------------------

class Tensor:
    """A tensor in some weight format: a name, a shape (NumPy order) and raw blocks.

    ``shape`` is in NumPy order: a weight is ``(out_features, in_features)`` and the last
    axis is the row that blocks run along.  ``raw`` is a uint8 array of the blocks, shape
    ``(..., row_bytes)``; for a tensor of an opened file it is a read-only view into the
    mapping, which it keeps alive.
    """

    __slots__ = ("name", "shape", "policy", "raw", "_owner")

    def __init__(self, name: str, shape, policy: Union[str, int, Policy], raw, _owner=None):
        self.name = str(name)
        self.shape = tuple(int(s) for s in shape)
        self.policy = _policy(policy)
        bshape = self.policy.byte_shape(self.shape) if self.shape else (0,)
        raw = np.asarray(raw)
        if raw.dtype != np.uint8:
            raw = np.ascontiguousarray(raw).view(np.uint8)
        need = int(np.prod(bshape, dtype=np.int64))
        if raw.size != need:
            raise ShapeError(f"tensor {self.name!r}: {raw.size} bytes of data, shape "
                             f"{self.shape} in {self.policy.name} needs {need}")
        self.raw = raw.reshape(bshape)
        self._owner = _owner

    # ---- construction ----
    @classmethod
    def from_numpy(cls, array, policy: Union[str, int, Policy] = "f32",
                   name: str = "tensor") -> "Tensor":
        """Quantize a float array into ``policy``; the last axis is the row."""
        p = _policy(policy)
        a = np.asarray(array)
        if a.ndim < 1 or a.ndim > 4:
            raise ShapeError(f"tensor {name!r}: {a.ndim} dimensions (1 to 4 supported)")
        if a.dtype.kind not in "fiub":
            raise ShapeError(f"tensor {name!r}: cannot quantize an array of dtype {a.dtype}")
        return cls(name, a.shape, p, p.quantize(a))

    # ---- properties ----
    @property
    def nbytes(self) -> int:
        """Bytes of the raw blocks."""
        return int(self.raw.size)

    @property
    def size(self) -> int:
        """Number of weights."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self):
        """The NumPy dtype of the zero-copy view (float formats) or float32."""
        return {"f32": np.dtype(np.float32), "f16": np.dtype(np.float16)}.get(
            self.policy.name, np.dtype(np.float32))

    # ---- data ----
    def dequantize(self) -> np.ndarray:
        """Decode to a new float32 array of ``shape``."""
        return self.policy.dequantize(self.raw.reshape(-1), self.shape)

    def view(self) -> np.ndarray:
        """Zero-copy, read-only-if-mapped view of a float tensor (F32 as float32, F16 as
        float16).  Raises for quantized formats: use :meth:`dequantize`."""
        if self.policy.name == "f32":
            return self.raw.reshape(-1).view("<f4").reshape(self.shape)
        if self.policy.name == "f16":
            return self.raw.reshape(-1).view("<f2").reshape(self.shape)
        raise ShapeError(f"tensor {self.name!r} is {self.policy.name}: only f32 and f16 "
                         f"have zero-copy views; use dequantize()")

    def __array__(self, dtype=None, copy=None):
        if self.policy.name in ("f32", "f16"):
            a = self.view()
            if dtype is not None and np.dtype(dtype) != a.dtype:
                if copy is False:
                    raise ValueError("a dtype conversion needs a copy")
                return a.astype(dtype)
            return a.copy() if copy else a
        if copy is False:
            raise ValueError(f"tensor {self.name!r} is {self.policy.name}: converting it to "
                             f"an array dequantizes (a copy)")
        a = self.dequantize()
        return a if dtype is None else a.astype(dtype, copy=False)

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.shape)
        return (f"<Tensor {self.name!r} {self.policy.name} ({shape}) "
                f"{_fmt_bytes(self.nbytes)}>")


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# ---- files --------------------------------------------------------------------------------

class GGUFFile:
    """An opened GGUF file (see :func:`pyfoundry.open`).

    Attributes: ``path``, ``version``, ``alignment``, ``metadata`` (dict of plain Python
    values, file order), ``metadata_types`` (dict key -> GGUF type string such as
    ``"uint32"`` or ``"array[string]"``), ``architecture``, ``tensors`` (dict name ->
    :class:`Tensor`, file order).  Tensors and their views keep the mapping alive after
    :meth:`close`.
    """

    def __init__(self, source: Union[str, os.PathLike, bytes, bytearray, memoryview]):
        if isinstance(source, (str, os.PathLike)):
            self.path: Optional[str] = os.fspath(source)
        else:
            self.path = None
        self._core = _core.GGUF(source)
        self.version: int = self._core.version
        self.alignment: int = self._core.alignment
        self.data_offset: int = self._core.data_offset
        self.file_size: int = self._core.size
        md: Dict[str, Any] = {}
        types: Dict[str, str] = {}
        for key, desc, value in self._core.metadata():
            md[key] = value
            types[key] = _desc_to_str(desc)
        self.metadata = md
        self.metadata_types = types
        ts: "OrderedDict[str, Tensor]" = OrderedDict()
        for name, ne, type_id, offset, nbytes in self._core.tensors():
            raw = np.frombuffer(self._core, dtype=np.uint8, count=nbytes, offset=offset)
            shape = tuple(reversed(ne))
            ts[name] = Tensor(name, shape, type_id, raw, _owner=self._core)
        self._tensors = ts
        self._closed = False

    # ---- access ----
    def _check(self):
        if self._closed:
            raise FoundryStateError("the GGUF file is closed")

    @property
    def tensors(self) -> "Mapping[str, Tensor]":
        self._check()
        return self._tensors

    @property
    def tokenizer(self) -> "Tokenizer":
        """The :class:`pyfoundry.Tokenizer` described by this file's ``tokenizer.ggml.*``
        metadata, built on first use."""
        self._check()
        tok = getattr(self, "_tokenizer", None)
        if tok is None:
            from .tokenizer import Tokenizer
            tok = self._tokenizer = Tokenizer(self)
        return tok

    @property
    def architecture(self) -> Optional[str]:
        return self.metadata.get("general.architecture")

    @property
    def closed(self) -> bool:
        return self._closed

    def __getitem__(self, name: str) -> Tensor:
        self._check()
        try:
            return self._tensors[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in this file") from None

    def __contains__(self, name) -> bool:
        return name in self._tensors

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    # ---- lifetime ----
    def close(self) -> None:
        """Drop this object's hold on the mapping; tensors still in use keep it alive."""
        if not self._closed:
            self._closed = True
            self._tensors = OrderedDict()
            self._core = None

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.path if self.path is not None else "<buffer>"
        if self._closed:
            return f"<GGUFFile {where!r} (closed)>"
        counts: Dict[str, int] = {}
        for t in self._tensors.values():
            counts[t.policy.name] = counts.get(t.policy.name, 0) + 1
        fmts = ", ".join(f"{k}:{v}" for k, v in counts.items())
        return (f"<GGUFFile {where!r} v{self.version} arch={self.architecture!r} "
                f"{len(self.metadata)} metadata keys, {len(self._tensors)} tensors ({fmts}), "
                f"{_fmt_bytes(self.file_size)}>")


def open(path: Union[str, os.PathLike, bytes, bytearray, memoryview]) -> GGUFFile:  # noqa: A001
    """Open a GGUF file (a path, or a bytes-like holding a whole file).

    Raises :class:`pyfoundry.GGUFError` (a ValueError) for a malformed file, naming the
    problem and the byte offset.
    """
    return GGUFFile(path)


def write_gguf(path: Union[str, os.PathLike],
               tensors: Union[Iterable[Tensor], Mapping[str, Tensor]] = (),
               metadata: Optional[Mapping[str, Any]] = None,
               types: Optional[Mapping[str, str]] = None) -> None:
    """Write a GGUF v3 file.

    ``tensors``: :class:`Tensor` objects (or a mapping name -> Tensor, the key being the name
    written), written in order.  ``metadata``: key -> plain value; ``types``: key -> GGUF type
    string for keys whose type should not be inferred (see :func:`infer_type`).  Passing an
    opened file's ``metadata`` and ``metadata_types`` reproduces its metadata exactly.  A
    ``general.alignment`` key (uint32, a power of two) sets the data alignment.
    """
    w = _core.Writer()
    types = dict(types or {})
    for key, value in (metadata or {}).items():
        t = types.get(key)
        if t is None:
            t = "uint32" if key == "general.alignment" else infer_type(value)
        if isinstance(value, np.ndarray):
            value = value.tolist()
        w.add_kv(str(key), _str_to_desc(t), value)
    items = tensors.items() if isinstance(tensors, Mapping) else ((None, t) for t in tensors)
    for name, t in items:
        if not isinstance(t, Tensor):
            raise ShapeError(f"write_gguf: expected Tensor objects, got {type(t).__name__}")
        w.add_tensor(name if name is not None else t.name, tuple(reversed(t.shape)),
                     t.policy.gguf_type, np.ascontiguousarray(t.raw).reshape(-1))
    w.write(os.fspath(path))
