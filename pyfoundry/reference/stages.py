"""NumPy references of the inference stages: the executable specification of every kernel.

Each function is short, obvious NumPy.  Shapes are given in NumPy order.  Every function
takes ``dtype`` (the accumulation/compute dtype, ``np.float32`` or ``np.float64``; default
``np.float64``), converts its float inputs with ``np.asarray(x, dtype)`` and returns arrays of
that dtype.  Weights are plain float arrays: callers dequantize quantized weights first.

Stages:

- :func:`embedding`       table (V, K), ids (M,) -> (M, K)
- :func:`rmsnorm`         x (M, K) or (K,), weight (K,) -> same shape as x
- :func:`silu`, :func:`gelu` (tanh approximation, as ggml_gelu), :func:`relu`,
  :func:`activation` (by name)
- :func:`matmul`          act(x @ w.T + bias) [+ residual]; x (M, K) or (K,), w (N, K)
- :func:`rmsnorm_matmul`  matmul(rmsnorm(x), ...)
- :func:`rmsnorm_qkv`     one normalisation, 2 or 3 projections
- :func:`rope`            rotary position embedding, normal (llama) or NeoX (qwen2) layout
- :func:`softmax`         row-wise, along the last axis
- :func:`attention`       causal, grouped-query attention over a KV cache
- :func:`swiglu`          silu(gate) * up
- :func:`ffn`             x + swiglu(norm(x) @ w_gate.T, norm(x) @ w_up.T) @ w_down.T
- :func:`add`             a + b
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["embedding", "rmsnorm", "silu", "gelu", "relu", "activation", "matmul",
           "rmsnorm_matmul", "rmsnorm_qkv", "rope", "softmax", "attention", "swiglu", "ffn",
           "add", "ACTIVATIONS"]


def _check_dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


# ---------------------------------------------------------------------------------------------
# Embedding and normalisation


def embedding(table, ids, dtype=np.float64):
    """Rows of ``table`` (V, K) picked by ``ids`` (M,) ints -> (M, K)."""
    dtype = _check_dtype(dtype)
    table = np.asarray(table, dtype)
    ids = np.asarray(ids)
    if table.ndim != 2:
        raise ValueError(f"table must be 2-D (V, K), got shape {table.shape}")
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D integer array, got shape {ids.shape} "
                         f"dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise ValueError(f"ids out of range [0, {table.shape[0]})")
    return table[ids]


def rmsnorm(x, weight, eps=1e-5, dtype=np.float64):
    """x (M, K) or (K,), weight (K,) -> x / sqrt(mean(x**2, axis=-1) + eps) * weight."""
    dtype = _check_dtype(dtype)
    x = np.asarray(x, dtype)
    weight = np.asarray(weight, dtype)
    if x.ndim not in (1, 2):
        raise ValueError(f"x must be (M, K) or (K,), got shape {x.shape}")
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"weight must have shape ({x.shape[-1]},), got {weight.shape}")
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(ms + dtype.type(eps)) * weight).astype(dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# Activations


def silu(x, dtype=np.float64):
    """x * sigmoid(x), elementwise."""
    x = np.asarray(x, _check_dtype(dtype))
    with np.errstate(over="ignore"):          # exp(-x) -> inf gives x / inf = -0
        return x / (1 + np.exp(-x))


def gelu(x, dtype=np.float64):
    """The tanh approximation (as ggml_gelu):
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3))), elementwise."""
    dtype = _check_dtype(dtype)
    x = np.asarray(x, dtype)
    c = dtype.type(math.sqrt(2.0 / math.pi))
    return dtype.type(0.5) * x * (1 + np.tanh(c * (x + dtype.type(0.044715) * x ** 3)))


def relu(x, dtype=np.float64):
    """max(x, 0), elementwise."""
    x = np.asarray(x, _check_dtype(dtype))
    return np.maximum(x, x.dtype.type(0))


ACTIVATIONS = {None: None, "none": None, "silu": silu, "gelu": gelu, "relu": relu}


def activation(x, name, dtype=np.float64):
    """Apply the activation called ``name`` (None, "none", "silu", "gelu" or "relu")."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of None, 'none', 'silu', 'gelu', 'relu'; "
                         f"got {name!r}")
    x = np.asarray(x, _check_dtype(dtype))
    fn = ACTIVATIONS[name]
    return x if fn is None else fn(x, dtype)


# ---------------------------------------------------------------------------------------------
# Matrix products


def matmul(x, w, bias=None, activation=None, residual=None, dtype=np.float64):
    """x (M, K) or (K,), w (N, K), bias (N,) or None -> y = act(x @ w.T + bias), (M, N) or
    (N,); with ``residual`` (shape of y) the result is residual + y (the activation applies
    before the residual add)."""
    dtype = _check_dtype(dtype)
    x = np.asarray(x, dtype)
    w = np.asarray(w, dtype)
    if x.ndim not in (1, 2):
        raise ValueError(f"x must be (M, K) or (K,), got shape {x.shape}")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (N, K), got shape {w.shape}")
    if w.shape[1] != x.shape[-1]:
        raise ValueError(f"w must have K={x.shape[-1]} columns, got shape {w.shape}")
    y = x @ w.T
    if bias is not None:
        bias = np.asarray(bias, dtype)
        if bias.shape != (w.shape[0],):
            raise ValueError(f"bias must have shape ({w.shape[0]},), got {bias.shape}")
        y = y + bias
    y = _activation(y, activation, dtype)
    if residual is not None:
        residual = np.asarray(residual, dtype)
        if residual.shape != y.shape:
            raise ValueError(f"residual must have shape {y.shape}, got {residual.shape}")
        y = residual + y
    return y.astype(dtype, copy=False)


_activation = activation  # matmul's keyword argument shadows the function


def rmsnorm_matmul(x, norm_weight, w, eps=1e-5, bias=None, activation=None, residual=None,
                   dtype=np.float64):
    """matmul(rmsnorm(x, norm_weight, eps), w, bias, activation, residual): x (M, K) or (K,),
    norm_weight (K,), w (N, K) -> (M, N) or (N,)."""
    h = rmsnorm(x, norm_weight, eps, dtype)
    return matmul(h, w, bias=bias, activation=activation, residual=residual, dtype=dtype)


def rmsnorm_qkv(x, norm_weight, weights, eps=1e-5, biases=None, dtype=np.float64):
    """One normalisation, 2 or 3 projections: x (M, K) or (K,), norm_weight (K,), weights a
    list of (N_i, K) arrays, biases None or a list of the same length (entries may be None).
    Returns a tuple of (M, N_i) (or (N_i,)) arrays."""
    weights = list(weights)
    if len(weights) not in (2, 3):
        raise ValueError(f"weights must be a list of 2 or 3 arrays, got {len(weights)}")
    if biases is None:
        biases = [None] * len(weights)
    biases = list(biases)
    if len(biases) != len(weights):
        raise ValueError(f"biases must have {len(weights)} entries, got {len(biases)}")
    h = rmsnorm(x, norm_weight, eps, dtype)
    return tuple(matmul(h, w, bias=b, dtype=dtype) for w, b in zip(weights, biases))


# ---------------------------------------------------------------------------------------------
# Rotary position embedding


def rope(x, positions, theta=10000.0, rot_dims=None, neox=False, freq_factors=None,
         dtype=np.float64):
    """Rotary position embedding.  x (M, H, D), positions (M,) ints (any offset).

    The first ``rot_dims`` (even, <= D; default D) dims of each head are rotated, the rest
    copied.  Pair i in [0, rot_dims/2) turns by
    ``angle = pos * theta ** (-2*i/rot_dims) / freq_factors[i]`` (computed in float64;
    freq_factors (rot_dims/2,) or None).  Normal layout (llama): the pair is
    (x[..., 2i], x[..., 2i+1]); NeoX layout (qwen2, ``neox=True``): (x[..., i],
    x[..., i + rot_dims/2]).  (a, b) -> (a cos - b sin, a sin + b cos).  Returns (M, H, D).
    """
    dtype = _check_dtype(dtype)
    x = np.asarray(x, dtype)
    if x.ndim != 3:
        raise ValueError(f"x must be 3-D (M, H, D), got shape {x.shape}")
    M, H, D = x.shape
    positions = np.asarray(positions)
    if positions.shape != (M,) or not np.issubdtype(positions.dtype, np.integer):
        raise ValueError(f"positions must be ({M},) integers, got shape {positions.shape} "
                         f"dtype {positions.dtype}")
    if rot_dims is None:
        rot_dims = D
    if rot_dims % 2 or not 0 < rot_dims <= D:
        raise ValueError(f"rot_dims must be even and in (0, {D}], got {rot_dims}")
    half = rot_dims // 2
    inv_freq = float(theta) ** (-2.0 * np.arange(half, dtype=np.float64) / rot_dims)
    if freq_factors is not None:
        freq_factors = np.asarray(freq_factors, np.float64)
        if freq_factors.shape != (half,):
            raise ValueError(f"freq_factors must have shape ({half},), "
                             f"got {freq_factors.shape}")
        inv_freq = inv_freq / freq_factors
    ang = positions.astype(np.float64)[:, None] * inv_freq[None, :]      # (M, half)
    cos = np.cos(ang).astype(dtype)[:, None, :]                            # (M, 1, half)
    sin = np.sin(ang).astype(dtype)[:, None, :]
    if neox:
        ia, ib = np.arange(half), np.arange(half) + half
    else:
        ia, ib = np.arange(half) * 2, np.arange(half) * 2 + 1
    a, b = x[..., ia], x[..., ib]
    out = x.copy()
    out[..., ia] = a * cos - b * sin
    out[..., ib] = a * sin + b * cos
    return out


# ---------------------------------------------------------------------------------------------
# Attention


def softmax(x, dtype=np.float64):
    """Row-wise softmax along the last axis (max-subtracted); any shape."""
    x = np.asarray(x, _check_dtype(dtype))
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def attention(q, k_cache, v_cache, start_pos, scale=None, dtype=np.float64):
    """Causal grouped-query attention.

    q (M, H, D): queries at positions start_pos .. start_pos+M-1.  k_cache, v_cache (C, Hkv, D)
    with C >= start_pos + M (rows beyond start_pos+M are ignored); H a multiple of Hkv; query
    head h uses kv head h // (H // Hkv).  Query row i sees cache positions 0 .. start_pos+i.
    scale defaults to 1/sqrt(D).  Returns (M, H, D).
    """
    dtype = _check_dtype(dtype)
    q = np.asarray(q, dtype)
    k_cache = np.asarray(k_cache, dtype)
    v_cache = np.asarray(v_cache, dtype)
    if q.ndim != 3:
        raise ValueError(f"q must be 3-D (M, H, D), got shape {q.shape}")
    M, H, D = q.shape
    if k_cache.ndim != 3 or k_cache.shape[2] != D:
        raise ValueError(f"k_cache must be (C, Hkv, {D}), got shape {k_cache.shape}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache must have the shape of k_cache {k_cache.shape}, "
                         f"got {v_cache.shape}")
    C, Hkv, _ = k_cache.shape
    if Hkv == 0 or H % Hkv:
        raise ValueError(f"q heads H={H} must be a multiple of the k_cache heads Hkv={Hkv}")
    start_pos = int(start_pos)
    if start_pos < 0:
        raise ValueError(f"start_pos must be >= 0, got {start_pos}")
    T = start_pos + M
    if C < T:
        raise ValueError(f"k_cache has {C} rows, needs at least start_pos + M = {T}")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    group = H // Hkv
    k = np.repeat(k_cache[:T], group, axis=1)                  # (T, H, D)
    v = np.repeat(v_cache[:T], group, axis=1)
    s = np.einsum("mhd,thd->hmt", q, k) * dtype.type(scale)    # (H, M, T)
    allowed = np.arange(T)[None, :] <= (start_pos + np.arange(M))[:, None]   # (M, T)
    s = np.where(allowed[None], s, -np.inf)
    p = softmax(s, dtype)
    return np.einsum("hmt,thd->mhd", p, v).astype(dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# Feed-forward


def swiglu(gate, up, dtype=np.float64):
    """silu(gate) * up, elementwise; gate and up of equal shape."""
    gate = np.asarray(gate, _check_dtype(dtype))
    up = np.asarray(up, dtype)
    if gate.shape != up.shape:
        raise ValueError(f"up must have the shape of gate {gate.shape}, got {up.shape}")
    return silu(gate, dtype) * up


def ffn(x, norm_weight, w_gate, w_up, w_down, eps=1e-5, dtype=np.float64):
    """SwiGLU feed-forward block with its residual.  x (M, K), norm_weight (K,), w_gate and
    w_up (F, K), w_down (K, F) -> x + swiglu(h @ w_gate.T, h @ w_up.T) @ w_down.T, h =
    rmsnorm(x), (M, K)."""
    dtype = _check_dtype(dtype)
    x = np.asarray(x, dtype)
    w_gate = np.asarray(w_gate, dtype)
    w_up = np.asarray(w_up, dtype)
    w_down = np.asarray(w_down, dtype)
    if w_up.shape != w_gate.shape:
        raise ValueError(f"w_up must have the shape of w_gate {w_gate.shape}, got {w_up.shape}")
    if w_down.ndim != 2 or w_down.shape[1] != w_gate.shape[0]:
        raise ValueError(f"w_down must be (K, {w_gate.shape[0]}), got shape {w_down.shape}")
    gate, up = rmsnorm_qkv(x, norm_weight, [w_gate, w_up], eps, dtype=dtype)
    return matmul(swiglu(gate, up, dtype), w_down, residual=x, dtype=dtype)


def add(a, b, dtype=np.float64):
    """a + b, elementwise; equal shapes."""
    a = np.asarray(a, _check_dtype(dtype))
    b = np.asarray(b, dtype)
    if a.shape != b.shape:
        raise ValueError(f"b must have the shape of a {a.shape}, got {b.shape}")
    return a + b
