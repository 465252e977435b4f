"""A conversation with a model, turn by turn, through the serving engine: what `lmforge chat`
holds between the lines a person types.

Each turn renders the whole history (an optional system message, then user and assistant
messages in turn) through the run's chat template, as `lmforge serve`'s chat endpoint does,
and streams the reply as text while the engine samples it. The reply ends at the
end-of-text token, the template's end-of-turn token or the turn's token limit. A history
that no longer fits the model's context beside the reply loses its oldest exchanges first
(the system message stays); a recurrent model has no window, so it keeps them all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from lmforge.data.tokenizer import Tokenizer
from lmforge.serve.decoding import TextStream
from lmforge.serve.engine import Engine, SamplingParams
from lmforge.tasks.chat import ChatTemplate, Message, template_for


@dataclass
class Turn:
    """What one reply came to, once its text has been read."""

    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None  # "stop", "length", "cancelled", "error"
    error: str | None = None
    dropped: int = 0  # the oldest exchanges left out of this turn's prompt to fit


@dataclass
class Conversation:
    engine: Engine
    tokenizer: Tokenizer
    system: str | None = None
    history: list[Message] = field(default_factory=list)
    template: ChatTemplate = field(init=False)

    def __post_init__(self) -> None:
        self.template = template_for(self.tokenizer)
        self._ends = frozenset({self.tokenizer.eot_id, self.template.end_of_turn})

    def reset(self) -> None:
        """Forget the exchanges (the system message stays)."""
        self.history.clear()

    def reply(self, text: str, sampling: SamplingParams, turn: Turn) -> Iterator[str]:
        """Ask `text`; yield the reply's text as it becomes safe to show. `turn` is filled in
        as it goes; when the reply ends, the question and the reply join the history (a
        reply that failed leaves the history as it was)."""
        asked = [*self.history, Message("user", text)]
        prompt, turn.dropped = self._fitted(asked, sampling.max_tokens)
        handle = self.engine.submit(prompt, sampling)
        stream = TextStream(self.tokenizer, prompt)
        try:
            for event in handle:
                if event.token_id is not None and event.token_id in self._ends:
                    handle.cancel()  # the end of the turn: the rest is not the reply
                    turn.finish_reason = "stop"
                    break
                if event.token_id is not None:
                    turn.tokens += 1
                    piece = stream.push(event.token_id)
                    if piece:
                        turn.text += piece
                        yield piece
                if event.finish_reason is not None:
                    turn.finish_reason = event.finish_reason
                    turn.error = handle.error
        finally:
            handle.cancel()  # a caller that stopped reading (Ctrl-C) frees the slot
        rest = stream.finish()
        if rest:
            turn.text += rest
            yield rest
        if turn.finish_reason in ("stop", "length"):
            self.history[:] = [*asked, Message("assistant", turn.text)]

    def _fitted(self, messages: list[Message], max_tokens: int) -> tuple[list[int], int]:
        """The prompt's ids, after dropping the oldest exchanges that would leave less than
        max_tokens of the context for the reply; and how many were dropped."""
        head = [Message("system", self.system)] if self.system else []
        budget = self.engine.prompt_limit(max_tokens)
        dropped = 0
        while True:
            ids = self.template.prompt(tuple(head + messages))
            if budget is None or len(ids) <= budget or len(messages) <= 1:
                return ids, dropped  # a last message still too long: the engine crops it
            messages = messages[2:] if len(messages) > 2 else messages[-1:]
            dropped += 1
