"""The model card of a classifier's export (`lmforge export` of a `finetune classify` run):
its labels and decision thresholds, its figures on the run's test examples
(RUN/test_metrics.json, when they were measured at the exported checkpoint) and how to load
it: transformers' AutoModelForSequenceClassification for --format hf, lmforge for
safetensors. The model, the data, the config and all escaping are shared with a language
model's card (card_facts.py gathers, model_card.py renders)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from lmforge.config import to_dict
from lmforge.interop.hf_classifier_export import THRESHOLDS_KEY
from lmforge.runs.card_facts import CARD_FILE, data_facts, model_facts, training_facts
from lmforge.runs.classifier import LoadedClassifier
from lmforge.runs.model_card import (
    FORMATS,
    EvalFacts,
    ModelCard,
    code,
    data_section,
    fenced,
    md_text,
    model_section,
    number,
    table,
    yaml_str,
)

TEST_FILE = "test_metrics.json"  # written by runs/classifier.evaluate_classifier
# (key in test_metrics.json's "all"/"top10", the Hub's metric type, its name in words)
FIGURES = [("micro_f1", "f1", "micro-F1"), ("macro_f1", "f1", "macro-F1"),
           ("accuracy", "accuracy", "accuracy")]


@dataclass(frozen=True)
class ClassifierFacts:
    labels: list[str]
    multi_label: bool
    thresholds: list[float] | None  # several labels per text, once tuned
    pooling: str
    examples: str  # task.source: the labelled examples it was fine-tuned on
    global_batch: int | None  # texts per optimizer step
    test_step: int | None = None  # the checkpoint test_metrics.json measured, if any
    test: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # all, top10


def classifier_facts(loaded: LoadedClassifier, *, global_batch: int | None) -> ClassifierFacts:
    labels, step, test = loaded.labels, None, {}
    raw = _read_json(loaded.run.path / TEST_FILE)
    if raw is not None and isinstance(raw.get("step"), int):
        step = raw["step"]
        for part in ("all", "top10"):
            figures = raw.get(part)
            if isinstance(figures, dict):
                test[part] = {k: float(figures[k]) for k, _, _ in FIGURES
                              if _finite(figures.get(k))}
    return ClassifierFacts(labels=labels.names, multi_label=labels.multi_label,
                           thresholds=labels.thresholds, pooling=loaded.cfg.task.pooling,
                           examples=loaded.cfg.task.source, global_batch=global_batch,
                           test_step=step, test=test)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):  # not measured, or damaged: no figures
        return None
    return value if isinstance(value, dict) else None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------------------ rendering

def _measured(card: ModelCard, facts: ClassifierFacts) -> bool:
    return facts.test_step == card.training.step and bool(facts.test.get("all"))


def front_matter(card: ModelCard, facts: ClassifierFacts) -> str:
    library = "transformers" if card.export_format == "hf" else "lmforge"
    tags = ["lmforge", card.model.family, "safetensors", "text-classification"]
    lines = ["---", f"library_name: {library}", f"license: {yaml_str(card.license)}",
             "pipeline_tag: text-classification", "tags:"]
    lines += [f"- {yaml_str(t)}" for t in dict.fromkeys(tags)]
    if _measured(card, facts):
        dataset = facts.examples.rstrip("/").rsplit("/", 1)[-1] or facts.examples or "examples"
        lines += ["model-index:", f"- name: {yaml_str(card.name)}", "  results:",
                  "  - task:", "      type: text-classification",
                  "      name: Text Classification", "    dataset:",
                  f"      type: {yaml_str(dataset)}", f"      name: {yaml_str(dataset)}",
                  "      split: test", "    metrics:"]
        for key, kind, name in FIGURES:
            if key in facts.test["all"]:
                lines += [f"    - type: {kind}", f"      name: {yaml_str('test ' + name)}",
                          f"      value: {number(facts.test['all'][key])}"]
    return "\n".join([*lines, "---"])


def labels_section(card: ModelCard, facts: ClassifierFacts) -> str:
    how = ("several per text: each label's own sigmoid, predicted where it reaches its "
           "threshold" if facts.multi_label else
           "one per text: a softmax over the labels, the highest predicted")
    rows = [("labels", f"{len(facts.labels):,} ({how})"),
            ("pooling", f"{code(facts.pooling)}: the head reads "
                        + ("the last real token's state" if facts.pooling == "last"
                           else "the mean of the tokens' states"))]
    if facts.examples:
        rows.append(("examples", code(facts.examples)))
    if facts.global_batch is not None:
        rows.append(("trained", f"{card.training.step:,} steps × {facts.global_batch} texts"))
    parts = ["## Labels\n\n" + table(rows)]
    if facts.multi_label:
        tuned = ("tuned on held-out training examples after training" if facts.thresholds
                 else "not tuned (the run ended before): lmforge predicts at 0.5")
        where = (f", kept in config.json as {code(THRESHOLDS_KEY)} (no transformers field "
                 "holds them; transformers keeps it as an attribute of the config)"
                 if card.export_format == "hf" else ", kept in labels.json")
        chosen = facts.thresholds or [0.5] * len(facts.labels)
        parts.append(f"Decision thresholds, {tuned}{where}:\n\n"
                     + "\n".join(["| label | threshold |", "|---|---|"]
                                 + [f"| {_cell(code(n))} | {t:.4f} |"
                                    for n, t in zip(facts.labels, chosen, strict=True)]))
    else:
        parts.append("Labels, in the order of the scores: "
                     + ", ".join(code(n) for n in facts.labels) + ".")
    return "\n\n".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a | ends a table cell even inside a code span (GFM)


def results_section(card: ModelCard, facts: ClassifierFacts) -> str:
    if facts.test_step is None or not facts.test.get("all"):
        return ("## Results\n\nNo test figures were recorded (`lmforge eval RUN` measures the "
                "run's test examples).")
    if not _measured(card, facts):
        return (f"## Results\n\nThe run's test figures are of step {facts.test_step:,}, not of "
                f"this checkpoint (step {card.training.step:,}); `lmforge eval RUN` measures "
                "the run's best checkpoint.")
    rows = [(f"{name}, all labels", number(facts.test["all"][key]))
            for key, _, name in FIGURES if key in facts.test["all"]]
    if len(facts.labels) > 10:  # else the same figures again
        rows += [(f"{name}, the 10 most frequent labels", number(facts.test["top10"][key]))
                 for key, _, name in FIGURES if key in facts.test.get("top10", {})]
    subset = " (accuracy: all of a text's labels right)" if facts.multi_label else ""
    return (f"## Results\n\nOn the run's test examples, at step {facts.test_step:,}{subset}:"
            "\n\n" + table(rows))


def how_to_load(card: ModelCard, facts: ClassifierFacts) -> str:
    if card.export_format == "hf":
        tail = MULTI_TAIL if facts.multi_label else SINGLE_TAIL
        snippet = HF_SNIPPET.replace("CONTEXT", str(card.model.context)) + tail
    else:
        snippet = LMFORGE_SNIPPET.replace("POOLING", facts.pooling)
    return "## How to load\n\n" + fenced(snippet, "python")


HF_SNIPPET = '''import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

path = "."  # this directory (or its copy on the Hugging Face Hub)
model = AutoModelForSequenceClassification.from_pretrained(path).eval()
tokenizer = AutoTokenizer.from_pretrained(path)
# as lmforge encodes a text: no added specials, its first CONTEXT tokens, padded on the right
# with end-of-text, where the model reads the last real token
tokenizer.pad_token_id = model.config.pad_token_id
tokenizer.padding_side = "right"
texts = ["Crude oil prices rose", "def main():"]
batch = tokenizer(texts, add_special_tokens=False, padding=True, truncation=True,
                  max_length=CONTEXT, return_token_type_ids=False, return_tensors="pt")
batch["attention_mask"][:, 0] = 1  # an empty text is one end-of-text token to lmforge
with torch.no_grad():
    scores = model(**batch).logits
'''

SINGLE_TAIL = '''probabilities = scores.softmax(-1)
labels = [model.config.id2label[int(i)] for i in probabilities.argmax(-1)]
print(labels)'''

MULTI_TAIL = f'''probabilities = scores.sigmoid()
thresholds = torch.tensor(list(model.config.{THRESHOLDS_KEY}.values()))
labels = [[model.config.id2label[int(j)] for j in row.nonzero()]
          for row in probabilities >= thresholds]
print(labels)'''

LMFORGE_SNIPPET = '''import json

import torch
from safetensors.torch import load_model

from lmforge.data.tokenizer import load_tokenizer
from lmforge.interop.hf_import import read_model_config
from lmforge.models import build_model
from lmforge.models.heads import SequenceClassifier

path = "."  # this directory
cfg = read_model_config(path)
labels = json.load(open(f"{path}/labels.json"))  # names, multi_label, thresholds
model = SequenceClassifier(build_model(cfg), len(labels["names"]), pooling="POOLING")
load_model(model, f"{path}/model.safetensors")
tokenizer = load_tokenizer(path)
ids = tokenizer.encode("Crude oil prices rose")[:cfg.block_size] or [tokenizer.eot_id]
with torch.no_grad():
    scores = model.eval()(torch.tensor([ids]), torch.tensor([len(ids)]))
print(scores)'''


def render_classifier_card(card: ModelCard, facts: ClassifierFacts) -> str:
    m, n = card.model, len(facts.labels)
    what = "several per text" if facts.multi_label else "one per text"
    intro = (f"# {md_text(card.name)}\n\nA text classifier of {m.parameters:,} parameters "
             f"({m.architecture}) with {n:,} labels, {what}, fine-tuned with lmforge (run "
             f"{code(card.name)}), exported as "
             f"{FORMATS.get(card.export_format, card.export_format)}.")
    config = "## Config\n\nThe run's resolved config:\n\n" + fenced(card.config_toml, "toml")
    parts = [front_matter(card, facts), intro, model_section(card), labels_section(card, facts),
             data_section(card), results_section(card, facts), config,
             how_to_load(card, facts)]
    return "\n\n".join(parts) + "\n"


def write_classifier_card(loaded: LoadedClassifier, out_dir: Path, *, export_format: str,
                          license: str = "unknown") -> str:
    """DIR/README.md for the export of a classifier in `out_dir`; a one-line summary."""
    training = training_facts(loaded)
    card = ModelCard(name=loaded.run.path.resolve().name, export_format=export_format,
                     model=model_facts(loaded, export_format=export_format),
                     data=data_facts(loaded.cfg.data.path),
                     # texts are shorter than the context: no tokens-seen figure
                     training=dataclasses.replace(training, global_batch=None),
                     evaluation=EvalFacts(), config_toml=tomli_w.dumps(to_dict(loaded.cfg)),
                     license=license)
    facts = classifier_facts(loaded, global_batch=training.global_batch)
    (Path(out_dir) / CARD_FILE).write_text(render_classifier_card(card, facts),
                                           encoding="utf-8")
    return f"wrote the model card {Path(out_dir) / CARD_FILE}"
