"""NumPy reference of the token sampler: the executable specification of
foundry_c/src/sampler.c (definitions also in foundry.h, section "sampler").

Every function takes logits (V,) and returns float64 logits (V,) in which a removed token is
-inf, except :func:`softmax` (probabilities) and :func:`probs` (the whole chain).  Orders are
by logit descending, ties to the lower id.

- :func:`apply_penalties`  repetition, frequency and presence penalties over recent tokens
- :func:`top_k`            keep the k largest
- :func:`top_p`            keep the smallest most-probable prefix of mass >= p
- :func:`min_p`            keep p >= min_p * max(p)
- :func:`temperature`      logits / t
- :func:`softmax`          max-subtracted softmax
- :func:`probs`            the chain, in llama.cpp's default order
"""
from __future__ import annotations

import numpy as np

__all__ = ["apply_penalties", "top_k", "top_p", "min_p", "temperature", "softmax", "probs"]


def _f64(logits):
    x = np.array(logits, np.float64)   # a copy
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"logits must be 1-D and non-empty, got shape {x.shape}")
    return x


def _rank(x):
    """Token ids, best first: logit descending, ties to the lower id."""
    return np.argsort(-x, kind="stable")


def apply_penalties(logits, history, repeat_penalty=1.0, presence_penalty=0.0,
                    frequency_penalty=0.0, penalty_last_n=64):
    """For every distinct token t among the last ``penalty_last_n`` of ``history`` (0: none,
    -1: all; ids >= V ignored), with c its count there: a positive logit is divided by
    ``repeat_penalty``, a negative one multiplied; then logit -= c * frequency_penalty +
    presence_penalty."""
    x = _f64(logits)
    history = list(history)
    window = [] if penalty_last_n == 0 else history if penalty_last_n < 0 else \
        history[-penalty_last_n:]
    ids, counts = np.unique([t for t in window if 0 <= t < x.size], return_counts=True)
    ids = ids.astype(np.int64)
    x[ids] = np.where(x[ids] > 0, x[ids] / repeat_penalty, x[ids] * repeat_penalty)
    x[ids] -= counts * frequency_penalty + presence_penalty
    return x


def top_k(logits, k):
    """Keep the k largest logits (ties to the lower id); k = 0 or k >= V: all."""
    x = _f64(logits)
    if 0 < k < x.size:
        x[_rank(x)[k:]] = -np.inf
    return x


def top_p(logits, p):
    """Keep the smallest prefix of the tokens by rank whose probabilities (softmax of
    ``logits``) sum to >= p; at least one token, all of them when rounding never gets there."""
    x = _f64(logits)
    order = _rank(x)
    cum = np.cumsum(softmax(x)[order])
    reached = np.nonzero(cum >= p)[0]
    if p < 1 and reached.size:
        x[order[reached[0] + 1:]] = -np.inf
    return x


def min_p(logits, p):
    """Keep the tokens whose probability is >= p * the largest probability."""
    x = _f64(logits)
    q = softmax(x)
    x[q < p * q.max()] = -np.inf
    return x


def temperature(logits, t):
    """logits / t, t > 0 (t = 0, greedy, is handled by :func:`probs`)."""
    if not t > 0:
        raise ValueError(f"temperature must be > 0 here, got {t}")
    return _f64(logits) / t


def softmax(logits):
    """exp(x - max(x)) / sum; -inf entries get 0."""
    x = _f64(logits)
    e = np.exp(x - x.max())
    return e / e.sum()


# the parameters of probs() shadow the functions
_top_k, _top_p, _min_p, _temperature = top_k, top_p, min_p, temperature


def probs(logits, history=(), temperature=0.8, top_k=40, top_p=0.95, min_p=0.05,
          repeat_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0, penalty_last_n=64):
    """The distribution the sampler draws from (V,): penalties -> top-k -> top-p -> min-p ->
    temperature -> softmax.  temperature = 0: one-hot at the argmax of the penalized logits
    (ties to the lower id)."""
    x = apply_penalties(logits, history, repeat_penalty, presence_penalty, frequency_penalty,
                        penalty_last_n)
    if temperature == 0:
        out = np.zeros_like(x)
        out[np.argmax(x)] = 1.0
        return out
    x = _min_p(_top_p(_top_k(x, top_k), top_p), min_p)
    return softmax(_temperature(x, temperature))
