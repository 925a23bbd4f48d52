"""Helpers for tests and demos: synthetic models written as real GGUF files.

``synthetic_model(path, arch="llama", policy="q4_k", ...)`` writes a llama- or qwen2-shaped
model with deterministic random weights whose dimensions are multiples of 256 (so every policy
applies), quantized to ``policy`` (matrices; norms and biases stay F32), with a byte-level
SentencePiece-style vocabulary (``<unk>``, ``<s>``, ``</s>``, the 256 ``<0xXX>`` byte tokens
and filler pieces).  No download is needed.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

from .gguf import Tensor, write_gguf
from .policy import policy as _policy


def random_blocks(p, rows: int, cols: int, rng: np.random.Generator,
                  max_abs: float = 4.0) -> Tensor:
    """A (rows, cols) Tensor of random blocks in policy ``p`` (for dequantize-only formats, which
    have no quantizer): random bytes, blocks re-drawn until they decode to finite values, then
    the block scales left as drawn; blocks whose values exceed ``max_abs`` are re-drawn too."""
    p = _policy(p)
    nb = rows * cols // p.block_elems
    raw = rng.integers(0, 256, (nb, p.block_bytes), dtype=np.uint8)
    for _ in range(1000):
        vals = p.dequantize(raw, (nb, p.block_elems))
        bad = ~np.isfinite(vals).all(axis=1) | (np.abs(vals).max(axis=1) > max_abs)
        if not bad.any():
            break
        raw[bad] = rng.integers(0, 256, (int(bad.sum()), p.block_bytes), dtype=np.uint8)
    else:
        raise RuntimeError(f"{p.name}: could not draw well-scaled random blocks")
    return Tensor("random", (rows, cols), p, raw.reshape(rows, -1))


def synthetic_model(path: Union[str, os.PathLike], arch: str = "llama", policy="q4_k",
                    dim: int = 256, n_layers: int = 2, n_heads: int = 4,
                    n_kv_heads: Optional[int] = 2, ffn_dim: int = 512, vocab_size: int = 512,
                    context_length: int = 1024, seed: int = 0, tied_embeddings: bool = False,
                    rope_theta: float = 10000.0, embedding_policy=None) -> str:
    """Write a synthetic ``arch`` ("llama" or "qwen2") model to ``path``; returns the path.

    Matrices are N(0, 1/fan_in) (embeddings N(0, 1)), norm weights 1 + N(0, 0.1); qwen2 gets
    Q/K/V biases N(0, 0.1).  ``policy`` is the format of every matrix; ``embedding_policy``
    (default: ``policy``) that of token_embd and output.
    """
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"arch must be 'llama' or 'qwen2', got {arch!r}")
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    if dim % n_heads or n_heads % n_kv_heads:
        raise ValueError("dim must be a multiple of n_heads, n_heads of n_kv_heads")
    if vocab_size < 259:
        raise ValueError("vocab_size must be at least 259 (3 specials + 256 byte tokens)")
    p = _policy(policy)
    pe = _policy(embedding_policy) if embedding_policy is not None else p
    head_dim = dim // n_heads
    rng = np.random.default_rng(seed)

    def mat(name, rows, cols, pol=p, scale=None):
        s = 1.0 / np.sqrt(cols) if scale is None else scale
        if not pol.can_quantize:  # dequantize-only formats: random blocks of moderate size
            t = random_blocks(pol, rows, cols, rng, max_abs=3.0 * s)
            return Tensor(name, t.shape, pol, t.raw)
        return Tensor.from_numpy((rng.standard_normal((rows, cols)) * s).astype(np.float32),
                                 pol, name)

    def vec(name, n, mean=1.0, sd=0.1):
        return Tensor.from_numpy((mean + sd * rng.standard_normal(n)).astype(np.float32), "f32",
                                 name)

    tensors = [mat("token_embd.weight", vocab_size, dim, pe, scale=1.0)]
    for i in range(n_layers):
        b = f"blk.{i}."
        tensors.append(vec(b + "attn_norm.weight", dim))
        tensors.append(mat(b + "attn_q.weight", n_heads * head_dim, dim))
        tensors.append(mat(b + "attn_k.weight", n_kv_heads * head_dim, dim))
        tensors.append(mat(b + "attn_v.weight", n_kv_heads * head_dim, dim))
        if arch == "qwen2":
            tensors.append(vec(b + "attn_q.bias", n_heads * head_dim, 0.0))
            tensors.append(vec(b + "attn_k.bias", n_kv_heads * head_dim, 0.0))
            tensors.append(vec(b + "attn_v.bias", n_kv_heads * head_dim, 0.0))
        tensors.append(mat(b + "attn_output.weight", dim, n_heads * head_dim))
        tensors.append(vec(b + "ffn_norm.weight", dim))
        tensors.append(mat(b + "ffn_gate.weight", ffn_dim, dim))
        tensors.append(mat(b + "ffn_up.weight", ffn_dim, dim))
        tensors.append(mat(b + "ffn_down.weight", dim, ffn_dim))
    tensors.append(vec("output_norm.weight", dim))
    if not tied_embeddings:
        tensors.append(mat("output.weight", vocab_size, dim, pe))
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"\u2581tok{i}" for i in range(vocab_size - len(tokens))]
    ttype = [2, 3, 3] + [6] * 256 + [1] * (vocab_size - 259)
    md = {
        "general.architecture": arch,
        "general.name": f"synthetic-{arch}-{p.name}",
        f"{arch}.context_length": context_length,
        f"{arch}.embedding_length": dim,
        f"{arch}.block_count": n_layers,
        f"{arch}.feed_forward_length": ffn_dim,
        f"{arch}.attention.head_count": n_heads,
        f"{arch}.attention.head_count_kv": n_kv_heads,
        f"{arch}.rope.dimension_count": head_dim,
        f"{arch}.rope.freq_base": rope_theta,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-6 if arch == "qwen2" else 1e-5,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * vocab_size,
        "tokenizer.ggml.token_type": ttype,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    types = {k: "uint32" for k in md if k.endswith(("_length", "_count", "count_kv", "_id"))}
    types["tokenizer.ggml.token_type"] = "array[int32]"
    write_gguf(path, tensors, metadata=md, types=types)
    return os.fspath(path)


def requantize_model(src: Union[str, os.PathLike], dst: Union[str, os.PathLike], policy,
                     min_elements: int = 0) -> str:
    """Copy a GGUF model to ``dst`` with every 2-D weight matrix requantized to ``policy`` (rows
    whose length the format cannot tile, and 1-D tensors such as norms, are kept as they are).
    Metadata is copied unchanged."""
    from .gguf import open as _open
    p = _policy(policy)
    with _open(src) as f:
        out = []
        for t in f.tensors.values():
            if len(t.shape) == 2 and t.shape[1] % p.block_elems == 0 and t.size >= min_elements:
                out.append(Tensor.from_numpy(t.dequantize(), p, t.name))
            else:
                out.append(t)
        md = dict(f.metadata)
        md.pop("general.file_type", None)
        types = {k: v for k, v in f.metadata_types.items() if k in md}
        write_gguf(dst, out, metadata=md, types=types)
    return os.fspath(dst)
