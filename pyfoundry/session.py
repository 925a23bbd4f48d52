"""Sessions: text generation and multi-turn chat on top of a model's KV cache.

    s = model.session(sampler=pf.Sampler(temperature=0.7, seed=1))
    for piece in s.generate("Once upon a time", max_tokens=64):
        print(piece, end="")
    reply = s.chat("What is the capital of France?", stream=False)

A session owns its own KV cache (the model's weights are shared) and the list of tokens in it
(``session.tokens``).  ``chat`` renders the conversation with the model's chat template
(:mod:`pyfoundry.chat`) and prefills only the text the new turn adds, batched, on top of the
cached history.  Generation stops at the model's end-of-generation tokens (EOS / end of turn
from the metadata), at a stop string, after ``max_tokens``, or when the context is full; the
reason is in ``session.stop_reason`` ("eos", "stop", "length", "context", "interrupted").
"""
from __future__ import annotations

import time
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from ._errors import ShapeError


class Session:
    """See the module docs.  Created by :meth:`pyfoundry.Model.session`."""

    def __init__(self, model, sampler=None, chat_template: Optional[str] = None,
                 system: Optional[str] = None):
        from .chat import template_for
        from .sampler import Sampler
        self.model = model
        self._exec = model._new_executor()
        self.tokenizer = model.tokenizer
        self.sampler = sampler if sampler is not None else Sampler.greedy()
        self.template = template_for(model.file, chat_template)
        self.system = system
        self.tokens: List[int] = []
        self.messages: List[Dict[str, str]] = []
        self._rendered = ""          # the chat text the cached tokens stand for
        self.stop_reason: Optional[str] = None
        self.stats = {"prefill_tokens": 0, "prefill_seconds": 0.0, "decode_tokens": 0,
                      "decode_seconds": 0.0}
        self.last_logits: Optional[np.ndarray] = None

    # ---- state ----
    @property
    def n_past(self) -> int:
        return len(self.tokens)

    @property
    def context_length(self) -> int:
        return self.model.context_length

    def reset(self) -> None:
        """Forget the conversation and the cache."""
        self._exec.truncate(0)
        self.tokens = []
        self.messages = []
        self._rendered = ""
        self.sampler.reset()
        self.stop_reason = None

    def eog_ids(self) -> set:
        """End-of-generation ids: EOS and the end-of-turn tokens from the metadata."""
        return set(self.tokenizer.eot_ids)

    # ---- core loop ----
    def _prefill(self, ids: Sequence[int]) -> bool:
        if not ids:
            return True
        if len(self.tokens) + len(ids) > self.context_length:
            self.stop_reason = "context"
            return False
        t0 = time.perf_counter()
        self.last_logits = self._exec.forward(list(ids), len(self.tokens), logits="last")
        self.stats["prefill_seconds"] += time.perf_counter() - t0
        self.stats["prefill_tokens"] += len(ids)
        self.tokens += list(ids)
        for t in ids:
            self.sampler.accept(int(t))
        return True

    def _generate_ids(self, max_tokens: int, feed_eog: bool) -> Iterator[int]:
        """Sample from the last logits, feed each token back; yields the tokens."""
        eog = self.eog_ids()
        for i in range(max_tokens):
            if self.last_logits is None:
                raise ShapeError("nothing to continue from: prefill a prompt first")
            tok = int(self.sampler.sample(self.last_logits))
            self.sampler.accept(tok)
            if tok in eog:
                self.stop_reason = "eos"
                if feed_eog and len(self.tokens) < self.context_length:
                    self._feed(tok)
                return
            yield tok
            if i == max_tokens - 1:
                self.stop_reason = "length"
                # the last token is in the output; put it in the cache so the history is
                # exactly the transcript
                if len(self.tokens) < self.context_length:
                    self._feed(tok)
                else:
                    self.stop_reason = "context"
                return
            if len(self.tokens) >= self.context_length:
                self.stop_reason = "context"
                return
            self._feed(tok)

    def _feed(self, tok: int) -> None:
        t0 = time.perf_counter()
        self.last_logits = self._exec.forward([tok], len(self.tokens), logits="last")
        self.stats["decode_seconds"] += time.perf_counter() - t0
        self.stats["decode_tokens"] += 1
        self.tokens.append(tok)

    def _stream_text(self, ids: Iterator[int], stop: Sequence[str]) -> Iterator[str]:
        """Detokenize a token stream, yielding only complete UTF-8 and holding back text that
        could be the start of a stop string."""
        # the first piece of a text (nothing, or only BOS, before it) drops its leading space
        bos = self.tokenizer.bos_id
        start = not self.tokens or (len(self.tokens) == 1 and self.tokens[0] == bos)
        det = self.tokenizer.stream(start=start)
        pending = ""
        try:
            for tok in ids:
                pending += det.push(tok)
                if stop:
                    hit = [pending.find(s) for s in stop if s and s in pending]
                    if hit:
                        cut = min(hit)
                        if pending[:cut]:
                            yield pending[:cut]
                        self.stop_reason = "stop"
                        return
                    keep = max((len(s) - 1 for s in stop if s), default=0)
                    # hold back a tail that could still grow into a stop string
                    safe = len(pending)
                    for k in range(min(keep, len(pending)), 0, -1):
                        if any(s.startswith(pending[-k:]) for s in stop if s):
                            safe = len(pending) - k
                            break
                    if safe:
                        yield pending[:safe]
                        pending = pending[safe:]
                elif pending:
                    yield pending
                    pending = ""
            pending += det.flush()
            if pending:
                yield pending
        except KeyboardInterrupt:
            self.stop_reason = "interrupted"
            if pending:
                yield pending

    # ---- public ----
    def generate(self, prompt: Union[str, Sequence[int]] = "", max_tokens: int = 128,
                 stop: Sequence[str] = (), stream: bool = True, add_special: Optional[bool] = None,
                 parse_special: bool = False):
        """Continue the cached text with ``prompt`` (a string, or token ids) and generate.

        Yields text pieces (``stream=True``) or returns the whole text.  BOS is added when the
        cache is empty (``add_special`` overrides)."""
        if isinstance(prompt, str):
            if add_special is None:
                add_special = not self.tokens
            ids = self.tokenizer.encode(prompt, add_special=add_special,
                                        parse_special=parse_special)
        else:
            ids = [int(t) for t in prompt]
        if isinstance(stop, str):
            stop = [stop]
        if max_tokens < 0:
            raise ShapeError("max_tokens must be >= 0")
        self.stop_reason = None
        gen = self._run(ids, max_tokens, stop, feed_eog=False)
        return gen if stream else "".join(gen)

    def _run(self, ids, max_tokens, stop, feed_eog):
        if not self._prefill(ids):
            return
        if max_tokens == 0:
            self.stop_reason = "length"
            return
        yield from self._stream_text(self._generate_ids(max_tokens, feed_eog), stop)

    def chat(self, message: str, max_tokens: int = 512, stop: Sequence[str] = (),
             stream: bool = True, role: str = "user"):
        """Add a ``role`` message, prefill what the template adds for it (batched, on top of
        the cached history) and generate the assistant's reply (streamed text pieces, or the
        whole reply with ``stream=False``)."""
        if not self.messages and self.system:
            self.messages.append({"role": "system", "content": self.system})
        msgs = self.messages + [{"role": role, "content": str(message)}]
        full = self.template.render(msgs, add_generation_prompt=True)
        if full.startswith(self._rendered):
            new_text = full[len(self._rendered):]
        else:  # the template rewrote earlier text: re-prefill from scratch
            self._exec.truncate(0)
            self.tokens = []
            self._rendered = ""
            new_text = full
        first = not self.tokens
        bos_text = self.template.bos_token
        add_bos = first and not (bos_text and new_text.startswith(bos_text))
        ids = self.tokenizer.encode(new_text, add_special=add_bos, parse_special=True)
        self.stop_reason = None
        self.messages = msgs
        gen = self._chat_run(ids, new_text, max_tokens, stop)
        return gen if stream else "".join(gen)

    def _chat_run(self, ids, new_text, max_tokens, stop):
        n0 = len(self.tokens)
        reply = []
        for piece in self._run(ids, max_tokens, stop, feed_eog=True):
            reply.append(piece)
            yield piece
        text = "".join(reply)
        self.messages.append({"role": "assistant", "content": text})
        # the chat text the cache now stands for: the turn, the reply and, when the reply
        # ended on an end-of-turn token, that token's text.  A later render that starts with
        # it reuses the cache; one that does not is re-prefilled from scratch.
        tail = ""
        if self.stop_reason == "eos" and len(self.tokens) > n0 + len(ids):
            tail = self.tokenizer.token_to_piece(self.tokens[-1], special=True).decode(
                "utf-8", "replace")
        self._rendered += new_text + text + tail

    def __repr__(self) -> str:
        return (f"<Session {len(self.tokens)} cached tokens, {len(self.messages)} messages, "
                f"stop_reason={self.stop_reason!r}>")
