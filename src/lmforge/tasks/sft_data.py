"""Instruction-tuning examples: read from JSONL, encoded with their loss mask, and packed
into fixed windows.

A JSONL line is `{"prompt": ..., "completion": ...}` or `{"messages": [{"role": "system" |
"user" | "assistant", "content": ...}, ...]}`, with an optional `id` and `split` ("train" or
"test"). A prompt and its completion are plain text, no template: the prompt (after bos
where the tokenizer starts texts with it), the completion, then end-of-text, so the prompt
should end with whatever separates it from the answer ("...\\nAnswer:\\n"). A conversation
goes through the chat template (tasks/chat.py). Only the completion, or the assistant's
messages, are trained, each with the token that ends it.

Packing: windows of block_size + 1 tokens (block_size inputs and as many targets) are filled
with whole examples in the epoch's seeded order, each example starting a new window when it
does not fit in what is left; the rest of a window is padding, which is never a target. An
example never crosses a window boundary: one longer than a window loses the left of its
prompt (the end of a prompt says most about what comes next), and a completion that alone
fills a window keeps its beginning. Examples in one window attend to the ones before them
(there is no per-example attention mask): their loss only covers their own completion.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.data.formats import open_stream
from lmforge.data.stages import hash_fraction
from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import DataError
from lmforge.tasks.chat import ROLES, ChatTemplate, Message

IGNORE = -100  # a target the loss skips (F.cross_entropy's ignore_index)
TRAIN, TEST = "train", "test"


@dataclass(frozen=True)
class SftExample:
    """A prompt and its completion, or a conversation (`messages`, the last assistant
    message being the reference an evaluation generates)."""

    prompt: str = ""
    completion: str = ""
    messages: tuple[Message, ...] = ()
    id: str = ""

    @property
    def chat(self) -> bool:
        return bool(self.messages)

    def reference(self) -> str:
        """What the model should write: the completion, or the last assistant message."""
        if not self.chat:
            return self.completion
        return next(m.content for m in reversed(self.messages) if m.role == "assistant")

    def context(self) -> tuple[Message, ...]:
        """The messages before the last assistant message (what generation answers)."""
        last = max(i for i, m in enumerate(self.messages) if m.role == "assistant")
        return self.messages[:last]


@dataclass(frozen=True)
class Encoded:
    ids: np.ndarray  # (n,) int64
    trained: np.ndarray  # (n,) bool: the loss predicts this token (completion, assistant)

    def __len__(self) -> int:
        return len(self.ids)


# ---------------------------------------------------------------- reading

def read_sft(path: str | Path, *, val_fraction: float = 0.1,
             seed: int = 0) -> tuple[list[SftExample], list[SftExample]]:
    """(train, held out) examples of a JSONL file: a record's own `split` where it gives one,
    else a hash of its id (or its content), so an example lands on the same side every run."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is not a file; pass a JSONL file of {{\"prompt\": ..., "
                        "\"completion\": ...}} or {\"messages\": [...]} records")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"the held-out fraction is {val_fraction}; it must lie strictly "
                        "between 0 and 1, e.g. 0.1")
    train: list[SftExample] = []
    val: list[SftExample] = []
    for where, record in _records(path):
        example, split = parse_record(record, where=where)
        if split is None:
            key = example.id or json.dumps(record.get("messages") or
                                           [record.get("prompt"), record.get("completion")])
            split = TEST if hash_fraction(f"{seed}\0{key}") < val_fraction else TRAIN
        (train if split == TRAIN else val).append(example)
    if not train or not val:
        side = "training" if not train else "held-out"
        raise DataError(f"{path} gives no {side} examples ({len(train)} train, {len(val)} "
                        "held out); add examples or fix their 'split' field")
    return train, val


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with open_stream(path) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig")
        try:
            for number, line in enumerate(text, 1):
                if line.strip():
                    yield f"{path} line {number}", _json_object(line, f"{path} line {number}")
        except UnicodeDecodeError as err:
            raise DataError(f"{path} is not UTF-8 text ({err.reason}); save it as UTF-8") from None


def _json_object(line: str, where: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        raise DataError(f"{where} is not valid JSON; write one JSON object per line") from None
    if not isinstance(record, dict):
        raise DataError(f"{where} is a JSON {type(record).__name__}, not an object; write "
                        "{\"prompt\": ..., \"completion\": ...} or {\"messages\": [...]}")
    return record


def parse_record(record: dict[str, Any], *, where: str) -> tuple[SftExample, str | None]:
    """The example a record holds and its own split (None: not given)."""
    given_id = record.get("id")
    example_id = "" if given_id in (None, "") else str(given_id)
    split = record.get("split")
    if split not in (None, "", TRAIN, TEST):
        raise DataError(f"{where}: split {split!r} is neither 'train' nor 'test'; use one of "
                        "those, or drop the field to split by hash")
    split = split or None
    if "messages" in record:
        if "prompt" in record or "completion" in record:
            raise DataError(f"{where} has both 'messages' and 'prompt'/'completion'; give one "
                            "form per record")
        return SftExample(messages=_messages(record["messages"], where), id=example_id), split
    if "prompt" not in record or "completion" not in record:
        fields = ", ".join(sorted(record)) or "none"
        raise DataError(f"{where} has neither 'prompt' and 'completion' nor 'messages' "
                        f"(fields: {fields})")
    for name in ("prompt", "completion"):
        if not isinstance(record[name], str):
            raise DataError(f"{where}: {name!r} is a {type(record[name]).__name__}, not a "
                            "string; write it as a string")
    return SftExample(prompt=record["prompt"], completion=record["completion"],
                      id=example_id), split


def _messages(value: Any, where: str) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: 'messages' must be a non-empty list of "
                        "{\"role\": ..., \"content\": ...} objects")
    out = []
    for n, m in enumerate(value, 1):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {n} is not a {{\"role\": "
                            f"{'|'.join(ROLES)}, \"content\": string}} object")
        out.append(Message(m["role"], m["content"]))
    if not any(m.role == "assistant" for m in out):
        raise DataError(f"{where} has no assistant message: nothing to train on")
    return tuple(out)


# ---------------------------------------------------------------- encoding

def encode_example(example: SftExample, *, tok: Tokenizer, template: ChatTemplate) -> Encoded:
    """The example's ids and which of them are trained (never the first: nothing in the
    example predicts it, and in a packed window the example before must not learn to)."""
    if example.chat:
        segments = [(s.ids, s.trained) for s in template.segments(example.messages)]
    else:
        segments = [(tok.encode_prompt(example.prompt), False),
                    ([*tok.encode(example.completion), tok.eot_id], True)]
    ids = np.fromiter((i for ids, _ in segments for i in ids), dtype=np.int64)
    trained = np.fromiter((t for ids, t in segments for _ in ids), dtype=bool, count=len(ids))
    if len(trained):
        trained[0] = False
    return Encoded(ids, trained)


def prompt_ids(example: SftExample, *, tok: Tokenizer, template: ChatTemplate) -> list[int]:
    """What generation continues: the ids before the reference, as training encoded them."""
    if example.chat:
        return template.prompt(example.context())
    return tok.encode_prompt(example.prompt)


def fit_window(e: Encoded, capacity: int, *, keep_first: bool) -> Encoded:
    """`e` cut to at most `capacity` tokens: the left of the prompt goes (its first token
    stays where `keep_first`: a bos), and a last completion longer than the window keeps
    its beginning after one prompt token."""
    if len(e) <= capacity:
        return e
    last = _last_trained_run(e.trained)
    head = 1 if keep_first else 0
    room = capacity - head - (len(e) - last)  # prompt tokens that fit before the completion
    if room >= 1:
        keep = np.r_[np.arange(head), np.arange(last - room, len(e))]
    else:
        start = max(last - 1, head)
        keep = np.r_[np.arange(head), np.arange(start, start + capacity - head)]
    trained = e.trained[keep]
    trained[0] = False
    return Encoded(e.ids[keep], trained)


def _last_trained_run(trained: np.ndarray) -> int:
    """Where the last run of trained tokens starts (len when none: all is prompt)."""
    where = np.flatnonzero(trained)
    if not len(where):
        return len(trained)
    gaps = np.flatnonzero(np.diff(where) > 1)
    return int(where[gaps[-1] + 1]) if len(gaps) else int(where[0])


def pack(lengths: np.ndarray, order: np.ndarray, capacity: int) -> list[np.ndarray]:
    """Windows of example indices: the examples in `order`, each in the current window when
    it fits in what is left (lengths at most `capacity`), else in a new one."""
    rows: list[np.ndarray] = []
    start, used = 0, 0
    for n, i in enumerate(order):
        if used + lengths[i] > capacity and n > start:
            rows.append(order[start:n])
            start, used = n, 0
        used += lengths[i]
    if len(order) > start:
        rows.append(order[start:])
    return rows


def window_batch(examples: list[Encoded], rows: list[np.ndarray], *, block_size: int,
                 pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each (len(rows), block_size): a window's examples one after the
    other, targets IGNORE where a token is not trained and in the padding."""
    x = np.full((len(rows), block_size), pad_id, dtype=np.int64)
    y = np.full((len(rows), block_size), IGNORE, dtype=np.int64)
    for r, row in enumerate(rows):
        ids = np.concatenate([examples[i].ids for i in row])
        trained = np.concatenate([examples[i].trained for i in row])
        n = len(ids) - 1
        x[r, :n] = ids[:-1]
        y[r, :n] = np.where(trained[1:], ids[1:], IGNORE)
    return x, y
