"""Chat templates: a conversation as token ids, with the assistant's tokens marked, so that
instruction tuning (tasks/sft.py) trains on what the assistant says and nothing else.

Two templates. A tokenizer lmforge trained (bpe, char, byte) has no chat format of its own,
so lmforge writes one in plain text, which any of them can encode:

    <|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n{assistant}<eot><|user|>\\n...

Each marker ends with a newline, each system or user message with one, and each assistant
message with the end-of-text token (the id, not its text), which is where generation stops.
The markers are ordinary text to these tokenizers, not special tokens. A Hugging Face
model's tokenizer ("hf" kind) that carries a chat template (chat_template.jinja, or
`chat_template` in tokenizer_config.json) is rendered with it, as the model was tuned with;
one without falls back to lmforge's, its eos as the end of a turn.

A template file comes from someone else: it is rendered in jinja2's
ImmutableSandboxedEnvironment (never a plain Environment), which refuses Python internals
(`''.__class__`), mutating the messages and ranges past 100,000; here, reaching an unsafe
attribute fails at once rather than rendering as empty, and multiplying a string or a list,
or a power, past a size limit is refused too. Every failure is one DataError.

The assistant's part of a rendered conversation is found by rendering twice per assistant
message: the conversation before it with the generation prompt, then with the message; what
the second adds to the first is the assistant's (its end-of-turn token included).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from lmforge.data import hf_files
from lmforge.data.tokenizer import HfTokenizer, Tokenizer
from lmforge.errors import DataError

ROLES = ("system", "user", "assistant")
MARKERS = {role: f"<|{role}|>\n" for role in ROLES}
_MAX_PRODUCT = 1 << 20  # items a template's `*` may make (a string of a megabyte)
_MAX_EXPONENT = 64


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str


@dataclass(frozen=True)
class Segment:
    """A run of token ids, trained (the assistant's) or not (everything else)."""

    ids: list[int]
    trained: bool


class ChatTemplate(ABC):
    name: str
    end_of_turn: int  # the token that ends an assistant message: generation stops there

    @abstractmethod
    def segments(self, messages: tuple[Message, ...]) -> list[Segment]:
        """The conversation as ids, each assistant message a trained segment."""

    @abstractmethod
    def prompt(self, messages: tuple[Message, ...]) -> list[int]:
        """The ids a model continues to answer after `messages` (with the assistant's cue)."""


class LmforgeTemplate(ChatTemplate):
    """lmforge's own plain-text template (the module's docstring shows it)."""

    name = "lmforge"

    def __init__(self, tok: Tokenizer) -> None:
        self.tok, self.end_of_turn = tok, tok.eot_id
        self.start = [tok.bos_id] if tok.bos_id is not None else []

    def segments(self, messages: tuple[Message, ...]) -> list[Segment]:
        out: list[Segment] = []
        pending = ""  # text not yet encoded: markers and non-assistant messages
        for m in messages:
            if m.role != "assistant":
                pending += f"{MARKERS[m.role]}{m.content}\n"
                continue
            out.append(Segment(self.start * (not out) + self.tok.encode(pending + MARKERS[m.role]),
                               trained=False))
            out.append(Segment([*self.tok.encode(m.content), self.end_of_turn], trained=True))
            pending = ""
        if pending:
            out.append(Segment(self.start * (not out) + self.tok.encode(pending), trained=False))
        return out

    def prompt(self, messages: tuple[Message, ...]) -> list[int]:
        # the ids training saw before an assistant message, encoded the same way
        cued = self.segments((*messages, Message("assistant", "")))
        return [i for s in cued[:-1] for i in s.ids]


class JinjaTemplate(ChatTemplate):
    """A Hugging Face tokenizer's own template, rendered in the sandbox."""

    name = "the tokenizer's own"

    def __init__(self, source: str, tok: HfTokenizer) -> None:
        self.tok = tok
        self.template = _compiled(source)
        self.context = {"bos_token": _token_text(tok, tok.bos_id),
                        "eos_token": _token_text(tok, tok.eot_id)}
        self.end_of_turn = self._end_of_turn()

    def render(self, messages: tuple[Message, ...], *, add_generation_prompt: bool) -> str:
        listed = [{"role": m.role, "content": m.content} for m in messages]
        return _render(self.template, messages=listed, add_generation_prompt=add_generation_prompt,
                       **self.context)

    def segments(self, messages: tuple[Message, ...]) -> list[Segment]:
        out, done = self._turns(messages)
        rest = self.render(messages, add_generation_prompt=False) if messages else ""
        if rest.startswith(done) and rest != done:
            out.append(Segment(self.tok.encode_with_specials(rest[len(done):]), trained=False))
        return out

    def prompt(self, messages: tuple[Message, ...]) -> list[int]:
        # the ids training saw before an assistant message, encoded the same way
        out, done = self._turns(messages)
        cue = self._before(messages, done)
        return [i for s in out for i in s.ids] + self.tok.encode_with_specials(cue[len(done):])

    def _turns(self, messages: tuple[Message, ...]) -> tuple[list[Segment], str]:
        """The segments up to the end of the last assistant message, and their text."""
        out: list[Segment] = []
        done = ""
        for i, m in enumerate(messages):
            if m.role != "assistant":
                continue
            before = self._before(messages[:i], done)
            full = self.render(messages[:i + 1], add_generation_prompt=False)
            if not full.startswith(before) or full == before:
                raise _not_appending()
            out += [Segment(self.tok.encode_with_specials(before[len(done):]), trained=False),
                    Segment(self.tok.encode_with_specials(full[len(before):]), trained=True)]
            done = full
        return out, done

    def _before(self, messages: tuple[Message, ...], done: str) -> str:
        """The conversation so far with the generation prompt; it must extend `done`."""
        before = self.render(messages, add_generation_prompt=True)
        if not before.startswith(done):
            raise _not_appending()
        return before

    def _end_of_turn(self) -> int:
        """The first token after an assistant message's text (<|im_end|>, <|eot_id|>), where
        that is a token of its own; else eos."""
        probe = (Message("user", "x"), Message("assistant", "y"))
        before = self.render(probe[:1], add_generation_prompt=True)
        after = self.render(probe, add_generation_prompt=False)[len(before):]
        tail = after.partition("y")[2]
        ids = self.tok.encode_with_specials(tail) if tail else []
        return ids[0] if ids and self.tok.decode(ids[:1]) == "" else self.tok.eot_id


def _not_appending() -> DataError:
    return DataError("the chat template renders a conversation's earlier turns differently "
                     "once later ones follow, so the assistant's tokens cannot be told apart; "
                     "use a template that only appends")


def template_for(tok: Tokenizer) -> ChatTemplate:
    """The tokenizer's own template where it has one (hf kind), else lmforge's."""
    source = chat_template_source(tok) if isinstance(tok, HfTokenizer) else None
    if source is None:
        return LmforgeTemplate(tok)
    assert isinstance(tok, HfTokenizer)
    return JinjaTemplate(source, tok)


def chat_template_source(tok: HfTokenizer) -> str | None:
    """chat_template.jinja, else tokenizer_config.json's chat_template (a string, or a list of
    named templates: the one named "default")."""
    if hf_files.CHAT_TEMPLATE in tok.files:
        return tok.files[hf_files.CHAT_TEMPLATE].decode("utf-8", errors="replace")
    raw = tok.files.get(hf_files.CONFIG)
    value = json.loads(raw).get("chat_template") if raw else None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return value if isinstance(value, str) and value else None


def _token_text(tok: HfTokenizer, i: int | None) -> str:
    return (tok.token(i) or "") if i is not None else ""


# ---------------------------------------------------------------- the sandbox

def _sandbox() -> Any:
    from jinja2.exceptions import SecurityError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            # jinja2 returns an Undefined that renders as ""; a template that reaches for
            # internals is hostile or broken either way, so say so
            raise SecurityError(f"access to attribute {attribute!r} of a "
                                f"{type(obj).__name__!r} object is unsafe")

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _check_size(operator, left, right)
            return super().call_binop(context, operator, left, right)

    # HF renders templates with trim_blocks and lstrip_blocks, and loop controls
    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    return env


def _check_size(operator: str, left: Any, right: Any) -> None:
    from jinja2.exceptions import SecurityError

    if operator == "**" and isinstance(right, int | float) and abs(right) > _MAX_EXPONENT:
        raise SecurityError(f"a power of {right} is refused in a chat template")
    if operator == "*":
        sizes = [len(x) for x in (left, right) if isinstance(x, str | list | tuple)]
        counts = [x for x in (left, right) if isinstance(x, int) and not isinstance(x, bool)]
        if sizes and counts and sizes[0] * max(counts[0], 0) > _MAX_PRODUCT:
            raise SecurityError(f"a repetition of {sizes[0] * counts[0]:,} items is refused in "
                                "a chat template")


def _tojson(value: Any, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # jinja2's own tojson escapes <, > and & for HTML; chat templates want plain JSON
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _compiled(source: str) -> Any:
    from jinja2.exceptions import TemplateError

    try:
        return _sandbox().from_string(source)
    except TemplateError as err:
        raise DataError(f"the tokenizer's chat template does not compile ({_reason(err)}); "
                        "fix or remove chat_template.jinja") from None


def _render(template: Any, **context: Any) -> str:
    from jinja2.exceptions import SecurityError, TemplateError

    try:
        return str(template.render(**context))
    except SecurityError as err:
        raise DataError(f"the chat template was refused by the sandbox ({_reason(err)}); it "
                        "reaches for what a chat template never needs (Python internals, huge "
                        "strings): do not use this tokenizer's template") from None
    except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError) as err:
        raise DataError(f"the chat template failed on a conversation ({_reason(err)}); check "
                        "the roles and order of its messages") from None


def _reason(err: BaseException) -> str:
    return " ".join(str(err).split())[:160] or type(err).__name__
