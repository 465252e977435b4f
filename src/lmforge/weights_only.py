"""torch.load of a pickle lmforge may not have written (a downloaded pytorch_model.bin, a
run's trainer.pt), with weights_only=True: one that would build anything but tensors and
plain data is refused, never run. Damaged bytes make the unpickler raise almost anything
(IndexError, KeyError, struct.error, UnicodeDecodeError, ...) and warn ("Detected pickle
protocol 138"); since it runs no code, every such failure means the same: not loaded."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch


class NotLoaded(Exception):
    """The file is damaged or hostile; the message is the unpickler's first line."""


def load(path: Path) -> Any:
    """What `path` holds, on the CPU; NotLoaded where it cannot be read as plain data."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - see the module's docstring
        first = " ".join(str(err).strip().split("\n", 1)[0].split())
        raise NotLoaded(first[:160] or type(err).__name__) from None
