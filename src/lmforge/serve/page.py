"""The page at `/`: page.html (one self-contained file, shipped as package data) with the
served model's facts put in as JSON, and the Content-Security-Policy under which only the
page's own inline script and style run and it talks to this server alone.

The model's name is the run directory's name, which anyone who can name a directory
chooses: it reaches the page only as JSON inside a <script type="application/json"> block,
escaped so that nothing in it can end that block, and the page reads it with JSON.parse and
shows it as text.
"""

from __future__ import annotations

import functools
import json
import math
import secrets
from dataclasses import asdict, dataclass
from importlib import resources

PAGE_FILE = "page.html"
FACTS_SLOT = "{{facts}}"
NONCE_SLOT = "{{nonce}}"
# `<`, `>` and `&` as JSON escapes, so that no string can close the block (`</script>`) or
# open a comment in it (`<!--`); U+2028 and U+2029 too, which older JavaScript parsers take
# for line ends
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                              "\u2028": "\\u2028", "\u2029": "\\u2029"})


@dataclass(frozen=True)
class PageFacts:
    """What the page says about the model: its name (the one requests must give), its size
    in parameters, the step of its checkpoint and the run's validation loss at that step
    (None: no evaluation). Size and step are None where the caller does not know them."""

    name: str
    parameters: int | None = None
    step: int | None = None
    val_loss: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"the model's name must be a non-empty string, got {self.name!r}")
        for field, value in (("parameters", self.parameters), ("step", self.step)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise ValueError(f"{field} must be a whole number of at least 0, got {value!r}")
        loss = self.val_loss
        if loss is not None and (isinstance(loss, bool) or not isinstance(loss, int | float)
                                 or not math.isfinite(loss)):
            raise ValueError(f"val_loss must be a finite number or None, got {loss!r}")


@dataclass(frozen=True)
class Page:
    """One rendering: the HTML and the Content-Security-Policy header that must go with it
    (its nonce is the one in the HTML)."""

    html: str
    csp: str


def render(facts: PageFacts, *, max_tokens: int, nonce: str | None = None) -> Page:
    """The page for `facts`; `max_tokens`: the most new tokens a request may ask for on this
    server (the page's limit and default for its max tokens field). A fresh nonce per page
    unless one is given."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a whole number of at least 1, got {max_tokens!r}")
    nonce = secrets.token_urlsafe(18) if nonce is None else nonce
    if not nonce or not all(c.isascii() and (c.isalnum() or c in "-_+/=") for c in nonce):
        raise ValueError(f"a nonce is base64 characters, got {nonce!r}")
    shown = {**asdict(facts), "max_tokens": max_tokens}
    data = json.dumps(shown, ensure_ascii=False, allow_nan=False).translate(_SCRIPT_SAFE)
    html = _template().replace(NONCE_SLOT, nonce).replace(FACTS_SLOT, data)
    return Page(html, content_security_policy(nonce))


def content_security_policy(nonce: str) -> str:
    """Only the page's own inline script and style (by nonce), requests to this server only,
    no plugins, frames, base or form targets; `data:` images for the empty favicon."""
    return "; ".join((
        "default-src 'none'",
        f"script-src 'nonce-{nonce}'",
        f"style-src 'nonce-{nonce}'",
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ))


@functools.cache
def _template() -> str:
    text = resources.files(__package__).joinpath(PAGE_FILE).read_text(encoding="utf-8")
    # the facts go in once, after every nonce: a name holding "{{nonce}}" stays text
    if text.count(FACTS_SLOT) != 1 or NONCE_SLOT not in text:
        raise RuntimeError(f"lmforge's {PAGE_FILE} is damaged: it needs one {FACTS_SLOT} and "
                           f"a {NONCE_SLOT}; reinstall lmforge")
    return text
