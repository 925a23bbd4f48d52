"""Drift metrics: how far a result is from its reference.

:func:`compare` measures one array against a reference (the NumPy stages of
:mod:`pyfoundry.reference.stages`, or a float64 run) and returns a :class:`Comparison`::

    from pyfoundry.drift import compare
    c = compare(y_engine, y_reference)              # max_abs, rel_l2, cosine, max_ulp
    c = compare(logits, ref_logits, logits=True)    # + top1/topk agreement, KL divergence
    print(c); c.as_dict()

A layer-by-layer report over a whole forward pass (``layerwise``) belongs in this module too.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np

__all__ = ["compare", "Comparison"]


@dataclasses.dataclass(frozen=True, repr=False)
class Comparison:
    """The result of :func:`compare` (``b`` is the reference).

    - ``shape``: the common shape of both arrays.
    - ``max_abs``: max |a - b|.
    - ``rel_l2``: ||a - b|| / ||b|| (float64; 0 when both are zero, inf when only b is).
    - ``cosine``: cosine similarity (float64; 1 when both are zero, 0 when only one is).
    - ``max_ulp``: the largest distance in float32 units in the last place, both arrays cast
      to float32 (-0.0 and +0.0 are 0 apart; the smallest subnormals of both signs are 2 apart).

    Infinite inputs are allowed (equal infinities are 0 apart); the norm-based metrics may then
    be inf or nan, ``max_ulp`` stays exact.

    With ``logits=True`` also (``None`` otherwise):

    - ``top1_agreement``: the fraction of rows whose argmax agrees.
    - ``topk_agreement``: the mean over rows of |topk(a) ∩ topk(b)| / k.
    - ``kl_divergence``: the mean over rows of KL(softmax(b) || softmax(a)), float64.
    - ``k``: the k used.
    """
    shape: Tuple[int, ...]
    max_abs: float
    rel_l2: float
    cosine: float
    max_ulp: int
    top1_agreement: Optional[float] = None
    topk_agreement: Optional[float] = None
    kl_divergence: Optional[float] = None
    k: Optional[int] = None

    @property
    def has_logits(self):
        """Whether the logits metrics were computed."""
        return self.top1_agreement is not None

    def as_dict(self):
        """The metrics as a plain dict (the logits entries only when computed)."""
        d = {"shape": tuple(self.shape), "max_abs": self.max_abs, "rel_l2": self.rel_l2,
             "cosine": self.cosine, "max_ulp": self.max_ulp}
        if self.has_logits:
            d.update(top1_agreement=self.top1_agreement, topk_agreement=self.topk_agreement,
                     kl_divergence=self.kl_divergence, k=self.k)
        return d

    def __repr__(self):
        parts = [f"shape={tuple(self.shape)}", f"max_abs={self.max_abs:.3g}",
                 f"rel_l2={self.rel_l2:.3g}", f"cosine={self.cosine:.9f}",
                 f"max_ulp={self.max_ulp}"]
        if self.has_logits:
            parts += [f"top1={self.top1_agreement:.4f}",
                      f"top{self.k}={self.topk_agreement:.4f}",
                      f"kl={self.kl_divergence:.3g}"]
        return f"Comparison({', '.join(parts)})"


def _ordered_f32(x):
    """float32 bit patterns mapped onto a monotonic integer line (int64): consecutive floats
    are consecutive integers, -0.0 and +0.0 both map to 0."""
    with np.errstate(over="ignore"):
        bits = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def _log_softmax(x):
    m = np.max(x, axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def compare(a, b, *, logits=False, k=5):
    """Compare ``a`` with the reference ``b`` (equal shapes); returns a :class:`Comparison`.

    With ``logits=True`` the last axis is the vocabulary (a 1-D array is one row) and the
    top-1 / top-``k`` agreement and KL(softmax(b) || softmax(a)) are added.  Raises ValueError
    for unequal shapes, NaN in either array, or a bad ``k``.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have equal shapes, got a {a.shape} and b {b.shape}")
    for name, x in (("a", a), ("b", b)):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
                or x.dtype == np.bool_):
            raise ValueError(f"{name} must be a real numeric array, got dtype {x.dtype}")
        if np.isnan(x.astype(np.float64)).any():
            raise ValueError(f"{name} contains NaN")
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)

    if a.size == 0:
        max_abs, rel_l2, cosine, max_ulp = 0.0, 0.0, 1.0, 0
    else:
        with np.errstate(invalid="ignore"):                # equal infinities are 0 apart
            d = np.where(a64 == b64, 0.0, a64 - b64)
        max_abs = float(np.max(np.abs(d)))
        na, nb, nd = (float(np.linalg.norm(v.ravel())) for v in (a64, b64, d))
        if nb == 0.0:
            rel_l2 = 0.0 if nd == 0.0 else float("inf")
        else:
            rel_l2 = nd / nb
        if na == 0.0 and nb == 0.0:
            cosine = 1.0
        elif na == 0.0 or nb == 0.0:
            cosine = 0.0
        else:
            with np.errstate(invalid="ignore"):                # infinities: nan
                cosine = float(np.clip(np.dot(a64.ravel() / na, b64.ravel() / nb), -1.0, 1.0))
        max_ulp = int(np.max(np.abs(_ordered_f32(a) - _ordered_f32(b))))

    extra = {}
    if logits:
        if a.ndim == 0:
            raise ValueError("a must have at least one axis (the vocabulary) with logits=True")
        V = a.shape[-1]
        k = int(k)
        if not 1 <= k <= V:
            raise ValueError(f"k must be in [1, {V}] (the vocabulary size), got {k}")
        ra = a64.reshape(-1, V)
        rb = b64.reshape(-1, V)
        if ra.shape[0] == 0:
            raise ValueError("a has no rows of logits")
        top1 = float(np.mean(np.argmax(ra, axis=-1) == np.argmax(rb, axis=-1)))
        ta = np.argsort(-ra, axis=-1, kind="stable")[:, :k]
        tb = np.argsort(-rb, axis=-1, kind="stable")[:, :k]
        inter = [len(np.intersect1d(x, y)) for x, y in zip(ta, tb)]
        topk = float(np.mean(inter)) / k
        lpa = _log_softmax(ra)
        lpb = _log_softmax(rb)
        pb = np.exp(lpb)
        with np.errstate(invalid="ignore"):
            terms = np.where(pb > 0, pb * (lpb - lpa), 0.0)
        kl = float(np.mean(np.sum(terms, axis=-1)))
        extra = dict(top1_agreement=top1, topk_agreement=topk, kl_divergence=kl, k=k)

    return Comparison(shape=tuple(a.shape), max_abs=max_abs, rel_l2=rel_l2, cosine=cosine,
                      max_ulp=max_ulp, **extra)


# ---------------------------------------------------------------------------------------------
# Layer-by-layer reports (``layerwise``) go here: a Comparison per stage of a forward pass.
