"""`lmforge predict`: label texts with a classifier `lmforge finetune classify` trained."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lmforge.console import log
from lmforge.errors import LmforgeError

HELP = "label texts with a fine-tuned classifier (a run of `lmforge finetune classify`)"
OVERRIDES = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="a classification run")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", action="append", help="a text to label (repeatable)")
    source.add_argument("--data", type=Path, help="texts to label: JSONL with a text field")
    p.add_argument("--text-field", default="text", help="the JSONL field that holds the text")
    p.add_argument("--out", type=Path, help="with --data: write one JSON line per text here "
                                            "(a new file; default: print them)")
    p.add_argument("--top", type=int, default=3, help="scores shown per text (default: 3)")
    p.add_argument("--checkpoint", default="best", help="best (default), latest or step_N")
    p.add_argument("--json", action="store_true", help="print JSON lines")


def _texts(args: argparse.Namespace) -> list[str]:
    if args.text is not None:
        return list(args.text)
    try:
        lines = args.data.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise LmforgeError(f"cannot read --data {args.data} ({err}); give a UTF-8 JSONL "
                           "file") from None
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            texts.append(record[args.text_field])
        except (ValueError, KeyError, TypeError, RecursionError):
            raise LmforgeError(f"{args.data}:{number} is not a JSON object with a "
                               f"'{args.text_field}' string; fix the line or pass "
                               "--text-field") from None
        if not isinstance(texts[-1], str):
            raise LmforgeError(f"{args.data}:{number}: '{args.text_field}' is not a string")
    return texts


def run(args: argparse.Namespace) -> int:
    if args.out is not None and (args.data is None or args.out.exists()):
        raise LmforgeError(f"--out {args.out}: give it with --data, and a file that does not "
                           "exist yet (nothing was written)")
    if args.top < 1:
        raise LmforgeError(f"--top must be 1 or more, got {args.top}")
    from lmforge.runs.classifier import load_classifier

    texts = _texts(args)
    loaded = load_classifier(args.run, which=args.checkpoint)
    probabilities = loaded.probabilities(texts)
    predicted = loaded.predict(probabilities)
    names = loaded.labels.names
    rows: list[dict[str, Any]] = []
    for text, p, pred in zip(texts, probabilities, predicted, strict=True):
        labels = ([names[int(pred)]] if not loaded.labels.multi_label
                  else [names[i] for i in range(len(names)) if pred[i]])
        top = sorted(range(len(names)), key=lambda i: -p[i])[:args.top]
        scores = {names[i]: round(float(p[i]), 4) for i in top}
        rows.append({"text": text, "labels": labels, "scores": scores})
    if args.out is not None:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        log(f"wrote {len(rows):,} predictions to {args.out}")
    elif args.json:
        print("".join(json.dumps(r) + "\n" for r in rows), end="")
    else:
        for r in rows:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in r["scores"].items())
            print(f"{', '.join(r['labels']) or '(none)'}\t{shown}\t{r['text'][:60]!r}")
    return 0
