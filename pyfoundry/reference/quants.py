"""NumPy references of the weight formats that have no outside oracle.

GGUF formats are checked against the gguf package and llama.cpp golden vectors; the formats
GGUF lacks are specified here, in plain float32 NumPy, and the C policies are held to these
bit for bit.  ``REFERENCE`` maps a policy name to an object with ``quantize(x) -> uint8
blocks (..., row_bytes)`` and ``dequantize(raw) -> float32 (..., row_elems)``.
"""
from __future__ import annotations

import numpy as np

REFERENCE = {}


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round float32 to nearest, halves away from zero (C ``roundf``), exactly.

    ``floor(a + 0.5)`` is wrong for 0.49999997 (the sum rounds up to 1), so the fraction is
    taken apart first: ``floor(a) + floor(2 * (a - floor(a)))`` is exact in float32.
    """
    x = np.asarray(x, dtype=np.float32)
    a = np.abs(x)
    f = np.floor(a)
    return (np.sign(x) * (f + np.floor(np.float32(2) * (a - f)))).astype(np.float32)


def _f16_roundtrip(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 -> (f16 bits as uint8 pairs, the f16 value back as float32)."""
    h = np.asarray(x, dtype=np.float32).astype(np.float16)
    return h.view(np.uint8), h.astype(np.float32)


def _blocks(x: np.ndarray, block: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] % block:
        raise ValueError(f"row of {x.shape[-1]} elements is not a multiple of {block}")
    return x.reshape(-1, block)


def _raw_blocks(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    raw = np.ascontiguousarray(raw).view(np.uint8)
    if raw.shape[-1] % block_bytes:
        raise ValueError(f"rows of {raw.shape[-1]} bytes are not whole {block_bytes}-byte blocks")
    return raw.reshape(-1, block_bytes)


class Int8:
    """Asymmetric 8-bit blocks of 128: | lo f16 | hi f16 | q[128] u8 | (132 bytes).

    lo, hi = f16(min + 0), f16(max + 0) (round to nearest even; + 0 makes a zero extreme +0); lo_f, hi_f are those f16 values as
    float32; d = (hi_f - lo_f) / 255; id = 1 / d (0 when d == 0);
    q = clip(round_half_away((x - lo_f) * id), 0, 255); w = lo_f + q * d.  All float32.
    """

    block_elems = 128
    block_bytes = 132

    @staticmethod
    def quantize(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        b = _blocks(x, 128)
        # + 0 turns a -0 extreme into +0 (NumPy's min/max of signed zeros is unspecified)
        lo, lo_f = _f16_roundtrip(b.min(axis=-1, keepdims=True) + np.float32(0))
        hi, hi_f = _f16_roundtrip(b.max(axis=-1, keepdims=True) + np.float32(0))
        d = (hi_f - lo_f) / np.float32(255)
        with np.errstate(divide="ignore"):
            id_ = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
        q = np.clip(round_half_away((b - lo_f) * id_), 0, 255).astype(np.uint8)
        out = np.concatenate([lo, hi, q], axis=-1)
        return out.reshape(x.shape[:-1] + (x.shape[-1] // 128 * 132,))

    @staticmethod
    def dequantize(raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw)
        b = _raw_blocks(raw, 132)
        lo_f = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        hi_f = b[:, 2:4].copy().view(np.float16).astype(np.float32)
        d = (hi_f - lo_f) / np.float32(255)
        w = lo_f + b[:, 4:].astype(np.float32) * d
        return w.reshape(raw.shape[:-1] + (raw.shape[-1] // 132 * 128,))


# The NormalFloat4 table of QLoRA (bitsandbytes), rounded to float32.
NF4_VALUES = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982694625854, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)


class NF4:
    """NormalFloat4 blocks of 64: | absmax f16 | qs[32] u8 | (34 bytes).

    absmax = f16(max |x|) (round to nearest even), a = that f16 value as float32;
    v = x / a (0 when a == 0); code = argmin_k |v - NF4_VALUES[k]| (lower index on ties);
    qs[j] = code[j] | code[j + 32] << 4; w = NF4_VALUES[code] * a.  All float32.
    """

    block_elems = 64
    block_bytes = 34

    @staticmethod
    def quantize(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        b = _blocks(x, 64)
        amax, a = _f16_roundtrip(np.abs(b).max(axis=-1, keepdims=True))
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(a != 0, b / a, np.float32(0)).astype(np.float32)
        code = np.argmin(np.abs(v[..., None] - NF4_VALUES), axis=-1).astype(np.uint8)
        qs = code[:, :32] | (code[:, 32:] << np.uint8(4))
        out = np.concatenate([amax, qs], axis=-1)
        return out.reshape(x.shape[:-1] + (x.shape[-1] // 64 * 34,))

    @staticmethod
    def dequantize(raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw)
        b = _raw_blocks(raw, 34)
        a = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        qs = b[:, 2:]
        code = np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)
        w = NF4_VALUES[code] * a
        return w.reshape(raw.shape[:-1] + (raw.shape[-1] // 34 * 64,))


REFERENCE["int8"] = Int8
REFERENCE["nf4"] = NF4
