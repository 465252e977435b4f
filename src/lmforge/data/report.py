"""The data report (what each stage of prepare read, dropped and wrote) and provenance
(where the data came from and what made it), saved beside the shards."""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.files import sha256_file

_PACKAGES = ("lmforge", "tokenizers", "numpy", "pyarrow", "datasketch", "nltk", "zstandard",
             "datasets", "jieba")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def file_checksums(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        out.append({"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return out


def top_tokens(counts: np.ndarray | None, tokenizer: Any, *, n: int = 20) -> list[dict[str, Any]]:
    if counts is None or not counts.sum():
        return []
    total = int(counts.sum())
    order = np.argsort(-counts, kind="stable")[:n]
    return [{"id": int(i), "text": tokenizer.decode([int(i)]), "count": int(counts[i]),
             "share": round(int(counts[i]) / total, 5)} for i in order if counts[i]]


def build_report(*, sources: Any, clean: dict[str, dict[str, int]], splits: dict[str, Any],
                 tokens: list[dict[str, Any]], timing: dict[str, float],
                 pos: dict[str, Any] | None) -> dict[str, Any]:
    total_tokens = sum(s["tokens"] for s in splits.values())
    total_bytes = sum(s["bytes"] for s in splits.values())
    report = {
        "sources": (dataclasses.asdict(sources)
                    if dataclasses.is_dataclass(sources) and not isinstance(sources, type)
                    else sources),
        "clean": clean,
        "splits": {k: {"documents": v["documents"], "tokens": v["tokens"], "bytes": v["bytes"]}
                   for k, v in splits.items()},
        "bytes_per_token": round(total_bytes / total_tokens, 4) if total_tokens else None,
        "top_tokens": tokens,
        "timing_s": {k: round(v, 3) for k, v in timing.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if pos is not None:
        report["pos"] = pos
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The report as a few lines for the terminal."""
    lines = []
    src = report["sources"]
    extra = [f"{src[k]:,} {label}" for k, label in (("binary_skipped", "binary files skipped"),
                                                     ("invalid_utf8_docs", "with invalid UTF-8 replaced"))
             if src.get(k)]
    if extra:
        lines.append("sources: " + ", ".join(extra))
    for step, c in report["clean"].items():
        if c["docs_in"] != c["docs_out"] or c["bytes_in"] != c["bytes_out"]:
            dropped = c["docs_in"] - c["docs_out"]
            rate = f" ({dropped / c['docs_in']:.1%} dropped)" if dropped and c["docs_in"] else ""
            lines.append(f"  {step}: {c['docs_in']:,} → {c['docs_out']:,} documents{rate}, "
                         f"{_mb(c['bytes_in'])} → {_mb(c['bytes_out'])}")
    top = ", ".join(repr(t["text"]) for t in report["top_tokens"][:8])
    if top:
        lines.append(f"most frequent tokens: {top}")
    for tally in report.get("pos", {}).values():  # one tagger's counts each: tag sets differ
        if tally["tokens"]:
            tags = ", ".join(f"{tag} {n / tally['tokens']:.0%}"
                             for tag, n in list(tally["tags"].items())[:6])
            docs = tally["documents"]
            lines.append(f"parts of speech ({tally['tagger']}, {docs:,} document"
                         f"{'s' * (docs != 1)}, {tally['tokens']:,} tokens): {tags}")
    return lines


def save_report(directory: Path, report: dict[str, Any]) -> None:
    (Path(directory) / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
