"""What the benchmarks on character-level tinyshakespeare share: the repository root, the
default corpus, running the lmforge CLI as a subprocess, and preparing a corpus once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def lmforge(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    """`python -m lmforge ARGS` from the repository root; a failure ends the benchmark."""
    cmd = [sys.executable, "-m", "lmforge", *args]
    proc = subprocess.run(cmd, text=True, capture_output=capture, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode})" + (f":\n{proc.stderr}" if capture else ""))
    return proc


def prepare_char(data: Path, out: Path) -> Path:
    """tinyshakespeare at `data`, prepared at character level into OUT/shakespeare_char."""
    if not data.is_file():
        sys.exit(f"tinyshakespeare.txt not found at {data}; pass --data PATH")
    return prepare_char_text(data, out, "shakespeare_char")


def prepare_char_text(text_file: Path, out: Path, name: str) -> Path:
    """One text file prepared at character level into OUT/NAME (a single file is split by
    position, first 90% train, as nanoGPT does)."""
    dataset = out / name
    lmforge("prepare", "--data", str(text_file), "--tokenizer", "char", "--out", str(dataset),
            "--no-progress", capture=True)
    return dataset
