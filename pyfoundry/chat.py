"""Chat templates: the GGUF's ``tokenizer.chat_template`` rendered with jinja2 in a sandbox.

Templates are untrusted input (they come with the model file), so they run in jinja2's
``ImmutableSandboxedEnvironment``: no attribute access to Python internals, no file or
environment access, no mutation of the context.  A template that tries gets a
:class:`ChatTemplateError` (a ValueError) naming the problem.

The context is what Hugging Face templates expect: ``messages`` (list of ``{"role",
"content"}`` dicts), ``add_generation_prompt``, ``bos_token``, ``eos_token``,
``raise_exception(msg)``, ``strftime_now(fmt)``, ``tools`` (None or a list) and
``tools_in_user_message``/``date_string`` conveniences some templates use.

Models without a template use :data:`DEFAULT_TEMPLATE`, ChatML::

    <|im_start|>{role}\\n{content}<|im_end|>\\n ... <|im_start|>assistant\\n
"""
from __future__ import annotations

import datetime
from typing import Any, Dict, Optional, Sequence

from ._errors import FoundryError

DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class ChatTemplateError(FoundryError, ValueError):
    """A chat template that does not render: syntax errors, sandbox violations,
    ``raise_exception`` calls from the template itself."""


def _raise_exception(message):
    raise ChatTemplateError(f"the chat template raised: {message}")


def _strftime_now(fmt):
    return datetime.datetime.now().strftime(str(fmt))


class ChatTemplate:
    """A compiled, sandboxed chat template.

    ``ChatTemplate(source, bos_token="<s>", eos_token="</s>")``;
    ``render(messages, add_generation_prompt=True, tools=None, **extra) -> str``.
    """

    def __init__(self, source: Optional[str] = None, bos_token: str = "", eos_token: str = ""):
        try:
            from jinja2 import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError as e:  # pragma: no cover - jinja2 is a dependency
            raise FoundryError("chat templates need jinja2 (pip install jinja2)") from e
        self.source = DEFAULT_TEMPLATE if source is None else source
        self.is_default = source is None
        self.bos_token = bos_token
        self.eos_token = eos_token
        from jinja2.exceptions import SecurityError

        class _Sandbox(ImmutableSandboxedEnvironment):
            # the stock sandbox renders a forbidden attribute as undefined (empty text); a
            # template reaching for Python internals is hostile: fail loudly instead
            def unsafe_undefined(self, obj, attribute):
                raise SecurityError(f"access to attribute {attribute!r} of a "
                                    f"{type(obj).__name__} is not allowed")

        env = _Sandbox(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(self.source)
        except TemplateError as e:
            raise ChatTemplateError(f"the chat template does not compile: {e}") from None

    def render(self, messages: Sequence[Dict[str, Any]], add_generation_prompt: bool = True,
               tools: Optional[list] = None, **extra) -> str:
        from jinja2 import TemplateError
        from jinja2.exceptions import SecurityError
        msgs = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ChatTemplateError(f"message {i} must be a dict with 'role' and 'content'")
            msgs.append(dict(m))
        ctx = dict(messages=msgs, add_generation_prompt=add_generation_prompt,
                   bos_token=self.bos_token, eos_token=self.eos_token, tools=tools,
                   date_string=datetime.date.today().strftime("%d %b %Y"))
        ctx.update(extra)
        try:
            return self._template.render(**ctx)
        except ChatTemplateError:
            raise
        except SecurityError as e:
            raise ChatTemplateError(f"the chat template tried something the sandbox forbids: "
                                    f"{e}") from None
        except TemplateError as e:
            raise ChatTemplateError(f"the chat template failed: {e}") from None
        except RecursionError:
            raise ChatTemplateError("the chat template recursed too deeply") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError,
                ZeroDivisionError, MemoryError) as e:
            raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") \
                from None

    def render_turn(self, history: Sequence[Dict[str, Any]], message: Dict[str, Any],
                    add_generation_prompt: bool = True, **kw) -> str:
        """The text the new ``message`` adds after ``history``: the rendering of history +
        message minus the rendering of history alone (the common prefix)."""
        before = self.render(history, add_generation_prompt=False, **kw) if history else ""
        after = self.render(list(history) + [message], add_generation_prompt, **kw)
        if after.startswith(before):
            return after[len(before):]
        # templates that change earlier text when a message is added: keep the differing tail
        n = 0
        while n < min(len(before), len(after)) and before[n] == after[n]:
            n += 1
        return after[n:]


def _tojson(value, indent=None):
    import json
    return json.dumps(value, indent=indent, ensure_ascii=False)


def template_for(file, override: Optional[str] = None) -> ChatTemplate:
    """The chat template of an opened GGUF file (or ``override`` source text)."""
    md = file.metadata
    toks = md.get("tokenizer.ggml.tokens") or []

    def tok(key):
        i = md.get(key)
        return toks[i] if isinstance(i, int) and 0 <= i < len(toks) else ""
    src = override if override is not None else md.get("tokenizer.chat_template")
    return ChatTemplate(src, bos_token=tok("tokenizer.ggml.bos_token_id"),
                        eos_token=tok("tokenizer.ggml.eos_token_id"))
