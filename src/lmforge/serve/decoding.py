"""One choice's text, decoded as its tokens arrive, with stop strings found as they appear.

Text is shown only where it can no longer change: a character cut between two tokens (a
trailing U+FFFD) waits for the next token, so does a trailing space of a segmented tokenizer
(the next token may show it to be a segmentation space, which decoding removes), and so does
an end of the text that could be the start of a stop string. When a stop string appears the
text ends just before it and the choice is done: the caller cancels its request."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.data.tokenizer import Tokenizer


@dataclass
class TextStream:
    tokenizer: Tokenizer
    context: list[int]  # the prompt's ids, which the new text is decoded after
    stops: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # where each token's text starts
    logprobs: list[float | None] = field(default_factory=list)
    text: str = ""  # all decoded so far (trimmed at a stop string once one appears)
    shown: int = 0  # characters of `text` handed out
    stopped: bool = False  # a stop string appeared

    def push(self, token: int, logprob: float | None = None) -> str:
        """Add one token; the text that became safe to show ("" for none yet)."""
        if self.stopped:
            return ""
        self.offsets.append(len(self.text))
        self.ids.append(token)
        self.logprobs.append(logprob)
        self.text = self.tokenizer.decode_after(self.context, self.ids)
        if self.stops:
            longest = max(map(len, self.stops))
            start = max(0, self.shown - longest + 1)
            found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if found:
                self.text, self.stopped = self.text[:min(found)], True
                return self._show(len(self.text))
        return self._show(self._stable())

    def finish(self) -> str:
        """The text held back, now that no token follows."""
        return self._show(len(self.text))

    def _stable(self) -> int:
        """How much of `text` no later token can change or turn into a stop string."""
        end = len(self.text.rstrip("\ufffd"))
        if self.tokenizer.segmented:
            end = len(self.text[:end].rstrip(" "))
        held = max((k for stop in self.stops for k in range(1, min(len(stop), end + 1))
                    if self.text[end - k:end] == stop[:k]), default=0)
        return max(end - held, self.shown)  # held: the longest end that begins a stop string

    def _show(self, end: int) -> str:
        new = self.text[self.shown:end]
        self.shown = max(self.shown, end)
        return new

    def kept_tokens(self) -> int:
        """The tokens whose text starts before the end of the (trimmed) text: those a stop
        string cut off are not part of the answer's log probabilities."""
        if not self.stopped:
            return len(self.ids)
        return sum(1 for o in self.offsets if o < len(self.text))
