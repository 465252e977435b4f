"""What lmforge tells the person at the terminal: one-line messages and progress.

Messages go to stderr, so stdout stays clean for samples, tables and --json. Under
torchrun every rank runs the same code; only rank 0 speaks, so a message is printed once.

Progress is a tqdm bar on a terminal. Elsewhere (CI logs, pipes, a scheduler's log file)
a bar would print thousands of carriage returns, so `Progress` writes a plain line every
`every_s` seconds instead, and the caller can add lines of its own at fixed steps.
"""

from __future__ import annotations

import math
import os
import sys
import time
import unicodedata
from typing import IO, Any

from tqdm import tqdm

from lmforge.errors import LmforgeError


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a process started on its own."""
    return os.environ.get("RANK", "0") == "0"


def log(message: str) -> None:
    """One line for the user, on stderr; said once under torchrun (by rank 0)."""
    if is_main_process():
        # one write with its newline: tqdm.write's two (text, then end) let a Ctrl-C between
        # them put "lmforge: interrupted" on the end of this line
        tqdm.write(message + "\n", file=sys.stderr, end="")


def one_line(text: str) -> str:
    """text with every character that would break or rewrite a terminal line (newlines,
    carriage returns, other controls, Unicode's line and paragraph separators) written as
    its escape: a message quotes what the user gave, and that may hold any of them."""
    return "".join(c.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)


def report_error(verb: str, err: LmforgeError) -> None:
    """`lmforge VERB: error: MESSAGE` on stderr, in one line, once: by rank 0 under torchrun
    (every rank stops alike), and not again for an error already reported."""
    if is_main_process() and not err.reported:
        print(f"lmforge {verb}: error: {one_line(str(err))}", file=sys.stderr, flush=True)
    err.reported = True


class Progress:
    """A bar on a terminal; a line every `every_s` seconds elsewhere (never both).

    `update(done, note)` sets the count reached (not an increment) and a short note shown
    after it; `total` may change on the way (`set_total`), as when a time limit will stop a
    run before its last step. Disabled (enabled=False) it says nothing at all.
    """

    def __init__(self, desc: str, *, total: float | None, enabled: bool, unit: str = "it",
                 unit_scale: bool = False, initial: float = 0, every_s: float = 10.0,
                 stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.desc, self.unit, self.unit_scale = desc, unit, unit_scale
        self.total, self.done, self.every_s = total, initial, every_s
        self.enabled = enabled and is_main_process()
        self.bar: Any = None
        self._started = self._last_line = time.monotonic()
        if self.enabled and self.stream.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                            unit_scale=unit_scale, dynamic_ncols=True, file=self.stream,
                            leave=False)

    @property
    def plain(self) -> bool:
        """Whether progress goes out as lines (no terminal) rather than as a bar."""
        return self.enabled and self.bar is None

    def set_total(self, total: float | None) -> None:
        self.total = total
        if self.bar is not None and total != self.bar.total:
            self.bar.total = total
            self.bar.refresh()

    def update(self, done: float, note: str = "") -> None:
        self.done = done
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            return
        now = time.monotonic()
        if self.plain and now - self._last_line >= self.every_s:
            self._last_line = now
            self.line(note)

    def advance(self, amount: float, note: str = "") -> None:
        self.update(self.done + amount, note)

    def line(self, note: str = "") -> None:
        """The progress so far as one plain line (what a log file sees every every_s)."""
        if not self.enabled:
            return
        done = _amount(self.done, self.unit, self.unit_scale)
        total = self.total
        share = (f"{done} of {_amount(total, self.unit, self.unit_scale)} "
                 f"({self.done / total:.0%})" if total and math.isfinite(total) else done)
        elapsed = time.monotonic() - self._started
        tqdm.write(f"{self.desc}: {share}, {elapsed:.0f}s" + (f"; {note}" if note else "")
                   + "\n", file=self.stream, end="")  # one write, as log's

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def _amount(n: float | None, unit: str, scale: bool) -> str:
    if n is None:
        return "?"
    if scale and n >= 1e6:
        return f"{n / 1e6:,.1f} M{unit}"
    return f"{n:,.0f} {unit}"
