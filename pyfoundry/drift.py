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
import json
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ._errors import FoundryNotImplementedError

__all__ = ["compare", "Comparison", "layerwise", "Report", "Row"]


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
# Layer-by-layer reports: one row per (layer, intermediate) of a forward pass.

METRICS = ("rel_l2", "max_abs", "cosine")


class Row:
    """One row of a :class:`Report`: the comparison of one intermediate of one layer."""

    __slots__ = ("layer", "name", "rel_l2", "max_abs", "cosine", "shape")

    def __init__(self, layer, name, c: Comparison):
        self.layer, self.name = layer, name
        self.rel_l2, self.max_abs, self.cosine = c.rel_l2, c.max_abs, c.cosine
        self.shape = tuple(c.shape)

    def as_dict(self):
        return {"layer": self.layer, "name": self.name, "rel_l2": self.rel_l2,
                "max_abs": self.max_abs, "cosine": self.cosine, "shape": list(self.shape)}


class Report:
    """A layer-by-layer drift report (see :func:`layerwise`).

    ``rows``: list of :class:`Row` in forward order.  Renders as a text table (``str``), as
    HTML in Jupyter (``_repr_html_``), as a plot (:meth:`plot`) and as JSON (:meth:`to_json`).
    ``first_exceeding(threshold)`` gives the first layer where an error crosses a threshold.
    ``logits``: the logits comparison (top-1/top-k/KL) when both traces hold logits.
    """

    def __init__(self, rows: List[Row], logits: Optional[Comparison] = None, title: str = ""):
        self.rows = rows
        self.logits = logits
        self.title = title

    # ---- queries ----
    def names(self):
        return list(dict.fromkeys(r.name for r in self.rows))

    def layers(self):
        return list(dict.fromkeys(r.layer for r in self.rows if r.layer is not None))

    def first_exceeding(self, threshold: float, metric: str = "rel_l2",
                        names: Optional[Sequence[str]] = None):
        """The first row (in forward order) whose ``metric`` crosses ``threshold`` (for
        cosine: falls below ``1 - threshold``), or None.  Returns the Row; ``row.layer`` is
        the layer (None for global entries)."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}")
        for r in self.rows:
            if names is not None and r.name not in names:
                continue
            v = getattr(r, metric)
            bad = (v < 1 - threshold) if metric == "cosine" else (v > threshold)
            if bad:
                return r
        return None

    def first_layer_exceeding(self, threshold: float, metric: str = "rel_l2", names=None):
        """The layer index of :meth:`first_exceeding` (None when no row crosses)."""
        r = self.first_exceeding(threshold, metric, names)
        return None if r is None else r.layer

    # ---- renderings ----
    def to_dict(self):
        d = {"title": self.title, "rows": [r.as_dict() for r in self.rows]}
        if self.logits is not None:
            d["logits"] = self.logits.as_dict()
        return d

    def to_json(self, **kw) -> str:
        def clean(o):
            if isinstance(o, dict):
                return {k: clean(v) for k, v in o.items()}
            if isinstance(o, (list, tuple)):
                return [clean(v) for v in o]
            if isinstance(o, (np.floating, float)):
                f = float(o)
                return f if np.isfinite(f) else str(f)
            if isinstance(o, np.integer):
                return int(o)
            return o
        return json.dumps(clean(self.to_dict()), **kw)

    def table(self) -> str:
        lines = []
        if self.title:
            lines.append(self.title)
        hdr = f"{'layer':>5}  {'intermediate':<14} {'rel L2':>10} {'max abs':>10} {'cosine':>12}"
        lines += [hdr, "-" * len(hdr)]
        for r in self.rows:
            layer = "-" if r.layer is None else str(r.layer)
            lines.append(f"{layer:>5}  {r.name:<14} {r.rel_l2:10.3e} {r.max_abs:10.3e} "
                         f"{r.cosine:12.9f}")
        if self.logits is not None and self.logits.has_logits:
            c = self.logits
            lines.append("")
            lines.append(f"logits: top-1 agreement {c.top1_agreement:.4f}, top-{c.k} agreement "
                         f"{c.topk_agreement:.4f}, KL(ref || run) {c.kl_divergence:.3e}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"<drift Report {len(self.rows)} rows, {len(self.layers())} layers>"

    def _repr_html_(self) -> str:
        import html
        worst = max((r.rel_l2 for r in self.rows), default=0.0) or 1.0
        out = [f"<div><b>{html.escape(self.title)}</b>" if self.title else "<div>",
               "<table><thead><tr><th>layer</th><th>intermediate</th><th>rel L2</th>"
               "<th>max abs</th><th>cosine</th></tr></thead><tbody>"]
        for r in self.rows:
            shade = 0 if not np.isfinite(r.rel_l2) else min(1.0, r.rel_l2 / worst)
            bg = f"rgba(255,0,0,{0.35 * shade:.2f})"
            layer = "-" if r.layer is None else r.layer
            out.append(f"<tr><td>{layer}</td><td>{html.escape(r.name)}</td>"
                       f"<td style='background:{bg}'>{r.rel_l2:.3e}</td><td>{r.max_abs:.3e}</td>"
                       f"<td>{r.cosine:.9f}</td></tr>")
        out.append("</tbody></table>")
        if self.logits is not None and self.logits.has_logits:
            c = self.logits
            out.append(f"<p>logits: top-1 agreement {c.top1_agreement:.4f}, top-{c.k} "
                       f"agreement {c.topk_agreement:.4f}, KL {c.kl_divergence:.3e}</p>")
        out.append("</div>")
        return "".join(out)

    def plot(self, metric: str = "rel_l2", ax=None, path=None):
        """Error against layer, one line per intermediate (matplotlib).  Returns the axes;
        saves a PNG when ``path`` is given."""
        try:
            import matplotlib
        except ImportError:
            raise FoundryNotImplementedError(
                "plots need matplotlib, which is not installed: pip install matplotlib "
                "(or pip install 'pyfoundry[plot]')") from None
        if ax is None and path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}")
        if ax is None:
            fig, ax = plt.subplots(figsize=(9, 5))
        for name in self.names():
            pts = [(r.layer, getattr(r, metric)) for r in self.rows
                   if r.name == name and r.layer is not None]
            if not pts:
                continue
            xs, ys = zip(*pts)
            y = np.array(ys, float)
            if metric == "cosine":
                y = 1 - y
            ax.plot(xs, np.maximum(y, 1e-17), marker="o", ms=3, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel("1 - cosine" if metric == "cosine" else metric.replace("_", " "))
        if self.title:
            ax.set_title(self.title)
        ax.legend(fontsize=7, ncol=2)
        ax.grid(True, which="both", alpha=0.3)
        if path is not None:
            ax.figure.tight_layout()
            ax.figure.savefig(path, dpi=100)
        return ax


def layerwise(trace: Mapping, reference_trace: Mapping, title: str = "", k: int = 5) -> Report:
    """Compare two traces (``{(layer, name): array}``, e.g. from ``Model.forward(...,
    capture=...)`` and ``pyfoundry.reference.Model``) on their common keys, in the order of
    ``trace``.  ``reference_trace`` is the reference (denominators of relative errors)."""
    rows = []
    logits = None
    for key, a in trace.items():
        if key not in reference_trace:
            continue
        b = reference_trace[key]
        layer, name = key
        c = compare(np.asarray(a), np.asarray(b))
        rows.append(Row(layer, name, c))
        if name == "logits":
            vocab = np.shape(a)[-1]
            logits = compare(np.asarray(a), np.asarray(b), logits=True, k=min(k, vocab))
    if not rows:
        raise ValueError("the traces have no intermediate in common")
    return Report(rows, logits, title)
