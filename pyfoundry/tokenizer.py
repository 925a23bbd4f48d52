"""Tokenizers built from a GGUF file's ``tokenizer.ggml.*`` metadata.

The work is done by the C core (foundry_c/src/tokenizer.c) with llama.cpp's algorithms, so
ids match llama.cpp's: SentencePiece-style vocabularies (``tokenizer.ggml.model == "llama"``)
and byte-level BPE (``"gpt2"``) with the pre-tokenizer ``tokenizer.ggml.pre`` names::

    import pyfoundry as pf
    tok = pf.open("model.gguf").tokenizer
    ids = tok.encode("Hello world")               # BOS first if the vocabulary asks for it
    tok.decode(ids)                               # 'Hello world'
    s = tok.stream()
    text = "".join(s.push(i) for i in ids) + s.flush()

Text is always UTF-8 underneath: ``encode`` takes str or bytes, ``token_to_piece`` returns
the bytes a token stands for (one token may hold part of a character), ``decode`` joins the
bytes and decodes them with ``errors="replace"``.
"""
from __future__ import annotations

import os
import warnings
from typing import FrozenSet, Iterable, List, Optional, Union

from . import _core

__all__ = ["Tokenizer", "TokenStream"]


class TokenStream:
    """Streaming detokenizer (see :meth:`Tokenizer.stream`).

    ``push(id)`` returns the text that is complete after that token: the bytes of a character
    split across tokens (byte-fallback tokens, byte-level BPE pieces) are held back until the
    character is whole, so a chunk never ends in part of a character.  ``flush()`` returns what
    is held back (an unfinished character becomes U+FFFD).  Joining every chunk gives exactly
    ``decode`` of the same ids.
    """

    __slots__ = ("_d", "_tokenizer")

    def __init__(self, tokenizer: "Tokenizer", skip_special: bool = True, start: bool = True):
        flags = (0 if skip_special else _core.DECODE_SPECIAL) | \
                (0 if start else _core.DECODE_CONTINUE)
        self._tokenizer = tokenizer
        self._d = _core.Detokenizer(tokenizer._core, flags)

    def push(self, token_id: int) -> str:
        """Feed one id; returns the text completed by it (often "", never half a character)."""
        return self._d.push(token_id).decode("utf-8", "replace")

    def push_bytes(self, token_id: int) -> bytes:
        """As :meth:`push`, the raw bytes (never ending inside a UTF-8 character)."""
        return self._d.push(token_id)

    def flush(self) -> str:
        """The held-back bytes of an unfinished character, as text (U+FFFD)."""
        return self._d.flush().decode("utf-8", "replace")

    def flush_bytes(self) -> bytes:
        return self._d.flush()


class Tokenizer:
    """The tokenizer of a GGUF file.

    ``source``: an opened :class:`pyfoundry.GGUFFile` (usually reached as
    ``GGUFFile.tokenizer`` or ``Model.tokenizer``), a path, or a bytes-like holding a whole
    file.  Everything needed is copied: the file may be closed afterwards.

    Raises :class:`pyfoundry.GGUFError` (a ValueError) for missing or malformed tokenizer
    metadata and :class:`pyfoundry.FoundryNotImplementedError` for a tokenizer model other
    than "llama" and "gpt2".  Fallbacks (an unknown ``tokenizer.ggml.pre``, a special id out
    of range) are reported with :func:`warnings.warn` and kept in :attr:`warnings`.
    """

    def __init__(self, source):
        from .gguf import GGUFFile

        if isinstance(source, GGUFFile):
            source._check()
            self._core = _core.Tokenizer(source._core)
        elif isinstance(source, _core.GGUF):
            self._core = _core.Tokenizer(source)
        else:  # a path or a buffer: parse the header only, without the Python metadata dict
            if isinstance(source, os.PathLike):
                source = os.fspath(source)
            self._core = _core.Tokenizer(_core.GGUF(source))
        self.warnings: List[str] = [w for w in self._core.warnings.splitlines() if w]
        for w in self.warnings:
            warnings.warn(f"tokenizer: {w}", stacklevel=3)

    # ---- vocabulary ----
    @property
    def vocab_size(self) -> int:
        """Number of tokens (ids are 0 .. vocab_size - 1)."""
        return self._core.n_vocab

    def __len__(self) -> int:
        return self._core.n_vocab

    @property
    def model(self) -> str:
        """``"llama"`` (SentencePiece-style) or ``"gpt2"`` (byte-level BPE)."""
        return "llama" if self._core.vocab_type == _core.VOCAB_SPM else "gpt2"

    @property
    def pre(self) -> Optional[str]:
        """The pre-tokenizer rules in use for BPE ("gpt2", "llama3", "qwen2", "starcoder",
        "falcon", "deepseek-llm", "deepseek-coder", "default"); None for SPM."""
        return self._core.pre or None

    def _special(self, which: int) -> Optional[int]:
        i = self._core.special(which)
        return None if i < 0 else i

    @property
    def bos_id(self) -> Optional[int]:
        return self._special(_core.SPECIAL_BOS)

    @property
    def eos_id(self) -> Optional[int]:
        return self._special(_core.SPECIAL_EOS)

    @property
    def unk_id(self) -> Optional[int]:
        return self._special(_core.SPECIAL_UNK)

    @property
    def pad_id(self) -> Optional[int]:
        return self._special(_core.SPECIAL_PAD)

    @property
    def eot_id(self) -> Optional[int]:
        """End of turn: ``tokenizer.ggml.eot_token_id``, else a token such as ``<|eot_id|>``
        or ``<|im_end|>`` found by its text (as llama.cpp does)."""
        return self._special(_core.SPECIAL_EOT)

    @property
    def eom_id(self) -> Optional[int]:
        return self._special(_core.SPECIAL_EOM)

    @property
    def eot_ids(self) -> FrozenSet[int]:
        """Ids that end a turn or generation: EOS, EOT, EOM and the other end-of-turn tokens
        llama.cpp recognises by their text (``<|endoftext|>``, ``<|im_end|>``, ...)."""
        return frozenset(self._core.eog)

    @property
    def add_bos(self) -> bool:
        """Whether ``encode(add_special=True)`` puts BOS first (SPM: yes unless the file says
        otherwise; BPE: as ``tokenizer.ggml.add_bos_token`` says, Llama 3 vocabularies yes)."""
        return self._core.add_bos

    @property
    def add_eos(self) -> bool:
        return self._core.add_eos

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary string of a token (``"▁the"``, ``"Ġthe"``, ``"<0x0A>"``, ...)."""
        return self._core.token_text(token_id).decode("utf-8", "surrogateescape")

    def token_to_id(self, text: Union[str, bytes]) -> Optional[int]:
        """The id whose vocabulary string is ``text``, or None."""
        i = self._core.find(text)
        return None if i < 0 else i

    def is_special(self, token_id: int) -> bool:
        """Control, unknown or user-defined tokens (those :meth:`encode` can cut out of text)."""
        a = self._core.token_attr(token_id)
        return bool(a & (_core.TOKEN_CONTROL | _core.TOKEN_UNKNOWN | _core.TOKEN_USER_DEFINED))

    # ---- encoding ----
    def encode(self, text: Union[str, bytes], add_special: bool = True,
               parse_special: bool = False) -> List[int]:
        """Text -> token ids.

        ``add_special``: add BOS/EOS as the vocabulary asks (:attr:`add_bos`,
        :attr:`add_eos`).  ``parse_special``: the texts of control tokens (``<s>``,
        ``<|im_start|>``...) become those tokens; otherwise they are ordinary text.
        User-defined tokens are always recognised, as in llama.cpp.  ``text`` may be bytes;
        invalid UTF-8 is kept byte for byte by SPM vocabularies (byte fallback) and read as
        U+FFFD by BPE ones, as llama.cpp does.
        """
        return self._core.encode(text, add_special, parse_special)

    def pre_tokenize(self, text: str) -> List[str]:
        """The words the pre-tokenizer cuts ``text`` into (BPE merges never cross them); the
        whole text for SPM vocabularies.  Special tokens are not looked for."""
        return self._core.pre_tokenize(text)

    # ---- decoding ----
    def token_to_piece(self, token_id: int, special: bool = False) -> bytes:
        """The bytes a token stands for: SPM ``▁`` -> space and ``<0xXX>`` -> that byte;
        byte-level BPE characters -> their bytes.  Control and unknown tokens give their text
        only when ``special`` is true (else ``b""``).  A piece may be part of a UTF-8
        character, hence bytes.  No leading space is dropped here (see :meth:`decode`)."""
        return self._core.token_to_piece(token_id, special)

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = True,
                     start: bool = True) -> bytes:
        """The pieces of ``ids`` joined.  For SPM vocabularies the space the encoder puts
        before text at the start and after a special token is dropped again (``start=False``:
        the ids continue earlier text, keep a leading space)."""
        flags = (0 if skip_special else _core.DECODE_SPECIAL) | \
                (0 if start else _core.DECODE_CONTINUE)
        return self._core.decode(_id_list(ids), flags)

    def decode(self, ids: Iterable[int], skip_special: bool = True, start: bool = True) -> str:
        """Token ids -> text: :meth:`decode_bytes` decoded as UTF-8 with ``errors="replace"``.
        ``skip_special``: control and unknown tokens (BOS, EOS, ``<|im_end|>``...) render as
        nothing; user-defined tokens always render as their text."""
        return self.decode_bytes(ids, skip_special, start).decode("utf-8", "replace")

    def stream(self, skip_special: bool = True, start: bool = True) -> TokenStream:
        """A streaming detokenizer (:class:`TokenStream`) with the rules of :meth:`decode`;
        for generated tokens that follow a prompt pass ``start=False``."""
        return TokenStream(self, skip_special, start)

    def __repr__(self) -> str:
        kind = "SPM" if self.model == "llama" else f"BPE/{self.pre}"
        return (f"<Tokenizer {kind} vocab={self.vocab_size} bos={self.bos_id} "
                f"eos={self.eos_id}>")


def _id_list(ids) -> list:
    if isinstance(ids, int):
        raise TypeError("decode: expected a sequence of token ids, got an int "
                        "(use token_to_piece for one id)")
    if hasattr(ids, "tolist"):  # NumPy arrays and scalars
        ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
    return ids if isinstance(ids, (list, tuple)) else list(ids)
