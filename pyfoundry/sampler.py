"""Token sampling: the C sampler (foundry_c/src/sampler.c) seen from Python.

    s = pf.Sampler(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=1)
    tok = s.sample(logits)        # logits (vocab,) -> int
    s.accept(tok)                 # record it: the penalties look at the accepted tokens
    p = s.probs(logits)           # (vocab,) float32: the distribution sample() draws from

The chain, in llama.cpp's default order: penalties (repetition, frequency, presence over the
last ``penalty_last_n`` accepted tokens) -> top-k -> top-p -> min-p -> temperature -> softmax
-> draw; ``temperature=0`` is greedy (argmax after the penalties, ties to the lowest id).  The
exact definitions are in foundry_c/include/foundry.h and, executable, in
:mod:`pyfoundry.reference.sampling`.  Draws come from the sampler's own generator, so a seed
gives the same tokens on every platform.
"""
from __future__ import annotations

import operator
import secrets
from typing import List, Optional

import numpy as np

from . import _core
from ._errors import ShapeError

__all__ = ["Sampler"]


def _logits(x, fn) -> np.ndarray:
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 1:
        raise ShapeError(f"Sampler.{fn}: logits must be 1-D (vocab,), got shape {a.shape}")
    return a


def _int(v, name) -> int:
    try:
        return operator.index(v)
    except TypeError:
        raise ShapeError(f"Sampler: {name} must be an integer, got {v!r}") from None


class Sampler:
    """A configured token sampler with its own token history and random generator.

    Parameters
    ----------
    temperature : float        >= 0; 0 = greedy (argmax after the penalties)
    top_k : int                >= 0; keep the k largest logits (0 = off)
    top_p : float              in (0, 1]; keep the smallest most-probable prefix whose mass
                               reaches top_p (1 = off)
    min_p : float              in [0, 1]; keep p >= min_p * max(p) (0 = off)
    repeat_penalty : float     > 0; positive logits of recent tokens divided, negative ones
                               multiplied (1 = off)
    presence_penalty : float   subtracted once from the logit of every recent token
    frequency_penalty : float  subtracted once per occurrence of a recent token
    penalty_last_n : int       window of accepted tokens the penalties look at (0 = off,
                               -1 = the whole history)
    seed : int or None         in [0, 2**64); None draws one at random (kept in ``.seed``)

    Bad values raise :class:`ValueError` (:class:`pyfoundry.ShapeError`) naming the parameter.
    """

    def __init__(self, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, repeat_penalty: float = 1.0,
                 presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 penalty_last_n: int = 64, seed: Optional[int] = None):
        if seed is None:
            seed = secrets.randbits(64)
        seed = _int(seed, "seed")
        if not 0 <= seed < 2 ** 64:
            raise ShapeError(f"Sampler: seed must be in [0, 2**64), got {seed}")
        top_k = _int(top_k, "top_k")
        penalty_last_n = _int(penalty_last_n, "penalty_last_n")
        for name, v in (("top_k", top_k), ("penalty_last_n", penalty_last_n)):
            if not -2 ** 31 <= v < 2 ** 31:
                raise ShapeError(f"Sampler: {name} out of the int32 range, got {v}")
        self.params = dict(temperature=float(temperature), top_k=top_k, top_p=float(top_p),
                           min_p=float(min_p), repeat_penalty=float(repeat_penalty),
                           presence_penalty=float(presence_penalty),
                           frequency_penalty=float(frequency_penalty),
                           penalty_last_n=penalty_last_n)
        self.seed = seed
        self._s = _core.Sampler(**self.params, seed=seed)

    @classmethod
    def greedy(cls, repeat_penalty: float = 1.0, presence_penalty: float = 0.0,
               frequency_penalty: float = 0.0, penalty_last_n: int = 64) -> "Sampler":
        """The argmax of the (penalized) logits, ties to the lowest id; no randomness."""
        return cls(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
                   repeat_penalty=repeat_penalty, presence_penalty=presence_penalty,
                   frequency_penalty=frequency_penalty, penalty_last_n=penalty_last_n, seed=0)

    def sample(self, logits) -> int:
        """Draw a token id from ``logits`` (vocab,).  The token is not recorded: call
        :meth:`accept` with the token actually appended to the sequence."""
        return self._s.sample(_logits(logits, "sample"))

    def probs(self, logits) -> np.ndarray:
        """The distribution :meth:`sample` draws from: (vocab,) float32, zero for the tokens
        the chain removed (one-hot when greedy).  Draws nothing."""
        x = _logits(logits, "probs")
        out = np.empty_like(x)
        self._s.probs(x, out)
        return out

    def accept(self, token: int) -> None:
        """Record ``token`` (>= 0) in the history the penalties look at."""
        self._s.accept(_int(token, "token"))

    def reset(self) -> None:
        """Forget the history and restart the generator from ``seed``: the same calls then
        give the same tokens again."""
        self._s.reset()

    @property
    def history(self) -> List[int]:
        """The accepted tokens, oldest first (a copy)."""
        return self._s.history()

    def __repr__(self):
        kw = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"Sampler({kw}, seed={self.seed})"
