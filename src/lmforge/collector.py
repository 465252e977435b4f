"""Python's cyclic garbage collector during a training command's start-up.

Importing torch and building a run allocate about a million objects that live as long as
the process. While they pile up, the collector's full passes over them ran three or four
times before the first training step: ~0.3 s of a 1.5 s start-up on 2 CPU cores, and
again ~0.13 s at the final save. So `lmforge train` pauses the collector while it starts
and, once the run is built, exempts what exists then from all later passes (gc.freeze, as
Python's documentation suggests for long-lived objects), which from there on look only at
what training allocates. A few reference cycles left unreachable during start-up stay in
memory; everything allocated later is collected as usual.
"""

from __future__ import annotations

import gc


def pause() -> None:
    """No collection until `resume`."""
    gc.disable()


def resume() -> None:
    """Collect again, past the objects that exist now (gc.freeze); idempotent."""
    gc.freeze()
    gc.enable()
