"""The bodies of the API's answers, in OpenAI's shapes: completions and chat completions whole
or as stream chunks, usage and log probabilities."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from lmforge.data.tokenizer import Tokenizer
from lmforge.serve.choices import Sequence


@dataclass(frozen=True)
class Answer:
    """What the bodies of one request share."""

    kind: str  # "completion" or "chat"
    model: str
    id: str
    created: int

    @classmethod
    def new(cls, kind: str, model: str) -> Answer:
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        return cls(kind, model, f"{prefix}-{uuid.uuid4().hex}", int(time.time()))

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(self, sequences: list[Sequence], *, prompt_tokens: int, tokenizer: Tokenizer,
              logprobs: bool) -> dict[str, Any]:
        choices = []
        for seq in sequences:
            lp = _logprobs(seq, tokenizer, chat=self.kind == "chat") if logprobs else None
            choice: dict[str, Any] = {"index": seq.index, "logprobs": lp,
                                      "finish_reason": seq.finish_reason}
            if self.kind == "chat":
                choice["message"] = {"role": "assistant", "content": seq.text.text}
            else:
                choice["text"] = seq.text.text
            choices.append(choice)
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {**self._head(obj), "choices": choices,
                "usage": usage(prompt_tokens, sum(s.generated for s in sequences))}

    def chunk(self, index: int, text: str | None, finish_reason: str | None, *,
              role: bool = False) -> str:
        """One server-sent event of a stream; for a chat, `role` marks the first of a choice."""
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": None,
                      "finish_reason": finish_reason}
            return event({**self._head("chat.completion.chunk"), "choices": [choice]})
        choice = {"index": index, "text": text or "", "logprobs": None,
                  "finish_reason": finish_reason}
        return event({**self._head("text_completion"), "choices": [choice]})

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> str:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return event({**self._head(obj), "choices": [],
                      "usage": usage(prompt_tokens, completion_tokens)})


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"


def _logprobs(seq: Sequence, tokenizer: Tokenizer, *, chat: bool) -> dict[str, Any]:
    """The sampled tokens' log probabilities (the engine gives no alternatives: a completion's
    top_logprobs is null, a chat token's an empty list)."""
    kept = seq.text.kept_tokens()
    tokens = [tokenizer.decode([i]) for i in seq.text.ids[:kept]]
    values = seq.text.logprobs[:kept]
    if chat:
        return {"content": [{"token": t, "logprob": v, "bytes": list(t.encode()),
                             "top_logprobs": []} for t, v in zip(tokens, values, strict=True)]}
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": None,
            "text_offset": seq.text.offsets[:kept]}
