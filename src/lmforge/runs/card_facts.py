"""The facts of an export's model card, gathered from the run: its config, the checkpoint
(step, global batch), metrics.jsonl (the evaluation at that step) and the dataset's manifest
(token counts), then written as DIR/README.md by runs/model_card.py.

A card describes what is known and says what is not: a dataset moved away since training,
or a run without evaluations, still gets a card.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import tomli_w

from lmforge import checkpoint
from lmforge.config import ModelConfig, to_dict
from lmforge.data import shards
from lmforge.errors import ConfigError, LmforgeError
from lmforge.interop.hf_layout import CLASSES, SEQUENCE_CLASSES, hf_family
from lmforge.runs.classifier import LoadedClassifier
from lmforge.runs.load import LoadedRun
from lmforge.runs.model_card import (
    DataFacts,
    EvalFacts,
    ModelCard,
    ModelFacts,
    TrainingFacts,
    render_card,
)
from lmforge.train.metrics import MetricsLog

CARD_FILE = "README.md"
_STYLES = {"gpt2": "GPT-2-style", "llama": "Llama-style", "qwen2": "Qwen2-style"}


def model_facts(loaded: LoadedRun | LoadedClassifier, *, export_format: str) -> ModelFacts:
    m, tokenizer = loaded.cfg.model, loaded.tokenizer
    description, family = _architecture(m)
    classes = SEQUENCE_CLASSES if isinstance(loaded, LoadedClassifier) else CLASSES
    return ModelFacts(architecture=description, family=family,
                      hf_class=classes.get(family, "") if export_format == "hf" else "",
                      parameters=loaded.model.num_params(), n_layer=m.n_layer, n_embd=m.n_embd,
                      n_head=m.n_head if m.arch == "gpt" else None, context=m.block_size,
                      vocab_size=m.vocab_size, tokenizer=_tokenizer(tokenizer.kind))


def _architecture(m: ModelConfig) -> tuple[str, str]:
    """(a description, the family's Hub tag)."""
    if m.arch != "gpt":
        return f"{m.arch.upper()} recurrent network", m.arch
    try:
        family = hf_family(m)
    except ConfigError:  # a combination no Hugging Face class computes
        family = "gpt"
    style = _STYLES.get(family, "GPT")
    return f"{style} Transformer: {m.norm}, {m.mlp}, {m.pos} positions", family


def _tokenizer(kind: str) -> str:
    return {"bpe": "byte-level BPE (Hugging Face tokenizers)", "char": "characters",
            "byte": "UTF-8 bytes", "hf": "the Hugging Face model's own (tokenizer.json)"
            }.get(kind, kind)


def data_facts(path: str) -> DataFacts:
    try:
        manifest = shards.read_manifest(Path(path))
    except LmforgeError:  # moved or deleted since training: the card says so
        return DataFacts(path=path, found=False)
    splits = manifest["splits"]
    return DataFacts(path=path, found=True,
                     tokens={s: int(e.get("tokens", 0)) for s, e in splits.items()},
                     bytes={s: int(e.get("bytes", 0)) for s, e in splits.items()})


def training_facts(loaded: LoadedRun | LoadedClassifier) -> TrainingFacts:
    try:
        state = checkpoint.read_trainer_state(loaded.checkpoint)
        batch: int | None = int(state["loader"]["global_batch"])
    except (LmforgeError, KeyError, TypeError, ValueError):  # an older or damaged trainer.pt
        batch = None
    return TrainingFacts(checkpoint=loaded.checkpoint.name, step=loaded.step, global_batch=batch,
                         block_size=loaded.cfg.model.block_size,
                         init_from=loaded.cfg.run.init_from)


def eval_facts(loaded: LoadedRun) -> EvalFacts:
    """The evaluation at the checkpoint's step, or the last one before it."""
    evals = [r for r in MetricsLog(loaded.run.metrics).read()
             if r.get("kind") == "eval" and r["step"] <= loaded.step]
    if not evals:
        return EvalFacts(batches=loaded.cfg.eval.batches)
    last = max(evals, key=lambda r: r["step"])
    return EvalFacts(step=last["step"], val_loss=_finite(last.get("val_loss")),
                     bits_per_byte=_finite(last.get("val_bpb")),
                     perplexity=_finite(last.get("val_ppl")), batches=loaded.cfg.eval.batches)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def model_card(loaded: LoadedRun, *, export_format: str, license: str = "unknown",
               files: tuple[str, ...] = ()) -> ModelCard:
    return ModelCard(name=loaded.run.path.resolve().name, export_format=export_format,
                     model=model_facts(loaded, export_format=export_format),
                     data=data_facts(loaded.cfg.data.path), training=training_facts(loaded),
                     evaluation=eval_facts(loaded),
                     config_toml=tomli_w.dumps(to_dict(loaded.cfg)), license=license,
                     files=files)


def write_model_card(loaded: LoadedRun, out_dir: Path, *, export_format: str,
                     license: str = "unknown") -> str:
    """DIR/README.md for the export of `loaded` in `out_dir`; a one-line summary."""
    files = tuple(sorted(p.name for p in Path(out_dir).iterdir() if p.suffix == ".gguf"))
    card = model_card(loaded, export_format=export_format, license=license, files=files)
    (Path(out_dir) / CARD_FILE).write_text(render_card(card), encoding="utf-8")
    return f"wrote the model card {Path(out_dir) / CARD_FILE}"
