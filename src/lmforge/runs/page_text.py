"""Text and figures for the report's page, shared by its parts: strings from run files made
safe for HTML and for matplotlib (whose `$` would start mathtext), and figures drawn off
screen and returned as PNG bytes."""

from __future__ import annotations

import html
import io
from typing import Any


def printable(text: str) -> str:
    """A lone surrogate (a file name's stray byte, a "\\ud800" in JSON) as "?": UTF-8 has none."""
    return text.encode("utf-8", errors="replace").decode("utf-8")


def escape(value: Any) -> str:
    """`value` as HTML text or attribute value."""
    return html.escape(printable(str(value)), quote=True)


def cut(text: str, chars: int) -> str:
    text = printable(text)
    return text if len(text) <= chars else text[:chars - 1] + "…"


def literal(text: str, chars: int | None = None) -> str:
    """`text` as matplotlib shows it: on one line, cut to `chars` when given, each $ escaped
    (no mathtext is parsed, and TeX is off)."""
    one_line = "".join(c if c.isprintable() else " " for c in printable(text))
    return (cut(one_line, chars) if chars else one_line).replace("$", r"\$")


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, labels literal (TeX off, in this process alone)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["text.usetex"] = False
    return plt


def png(fig: Any) -> bytes:
    """`fig` as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()
