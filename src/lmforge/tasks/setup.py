"""A task run's task, made from its config alone ([task]), so that `lmforge finetune`,
`lmforge train --resume` and `lmforge eval` of a task run all rebuild the same one: the
labelled examples read again (deterministically), the training part split into what
trains and what validates during training, and targets in the label order of the set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.config import Config
from lmforge.tasks.classify import ClassifyTask
from lmforge.tasks.examples import Example, ExampleSet, is_reuters, read_examples, val_part
from lmforge.tasks.headlines import reuters_headlines
from lmforge.tasks.sft import SftTask
from lmforge.tasks.sft_data import SftExample, read_sft
from lmforge.tasks.tag import TagTask
from lmforge.tasks.tagged import (
    TaggedSet,
    hold_out,
    python_tokens_set,
    read_tagged,
    tagged_set,
)


@dataclass(frozen=True)
class ClassifyData:
    """The examples of a classification run, in its three parts, and its labels."""

    examples: ExampleSet
    train: list[Example]
    val: list[Example]

    @property
    def label_names(self) -> list[str]:
        return self.examples.label_names

    @property
    def multi_label(self) -> bool:
        return self.examples.multi_label

    def targets(self, examples: list[Example]) -> np.ndarray:
        """Label indices (N,), or an indicator matrix (N, labels) for several per text."""
        index = {name: i for i, name in enumerate(self.label_names)}
        if not self.multi_label:
            return np.array([index[e.labels[0]] for e in examples], dtype=np.int64)
        out = np.zeros((len(examples), len(index)), dtype=np.float32)
        for row, e in enumerate(examples):
            out[row, [index[label] for label in e.labels if label in index]] = 1.0
        return out


def classify_data(cfg: Config) -> ClassifyData:
    t = cfg.task
    examples = read_examples(t.source, labels=t.labels, split=t.split, text_field=t.text_field,
                             label_field=t.label_field, seed=cfg.run.seed)
    train, val = val_part(examples.train, t.val_fraction, seed=cfg.run.seed)
    return ClassifyData(examples, train, val)


def classify_task(cfg: Config, data: ClassifyData | None = None) -> ClassifyTask:
    data = data or classify_data(cfg)
    return ClassifyTask([e.text for e in data.train], data.targets(data.train),
                        [e.text for e in data.val], data.targets(data.val),
                        n_labels=len(data.label_names), pooling=cfg.task.pooling)


def sft_examples(cfg: Config) -> tuple[list[SftExample], list[SftExample]]:
    """(train, held out): Reuters-21578's headlines (ModApte: its test stories held out), or
    a JSONL file's examples (a part held out by their own split, else by hash)."""
    t = cfg.task
    if is_reuters(Path(t.source)):
        return reuters_headlines(t.source, body_words=t.body_words)
    return read_sft(t.source, val_fraction=t.val_fraction, seed=cfg.run.seed)


def example_text(example: SftExample) -> str:
    """All the text of an example, for preparing the tokenizer's dataset."""
    if example.chat:
        return "\n".join(m.content for m in example.messages)
    return example.prompt + example.completion


PYTHON = "python:"  # task.source python:PACKAGE: a standard-library package tagged by tokenize


def tagged_data(cfg: Config) -> TaggedSet:
    """The sentences of a tag run: python:PACKAGE (its last lines held out), or a CoNLL /
    CoNLL-U file with task.eval_source, or with a part held out by hash."""
    t = cfg.task
    if t.source.startswith(PYTHON):
        return python_tokens_set(t.source[len(PYTHON):], test_fraction=t.val_fraction)
    train = read_tagged(t.source, field=t.tag_field)
    if t.eval_source:
        return tagged_set(train, read_tagged(t.eval_source, field=t.tag_field))
    return hold_out(train, t.val_fraction)


def task_for(cfg: Config) -> ClassifyTask | TagTask | SftTask | None:
    """The task cfg.task names, or None for language modeling."""
    if cfg.task.kind == "classify":
        return classify_task(cfg)
    if cfg.task.kind == "tag":
        return TagTask.from_set(tagged_data(cfg))
    if cfg.task.kind == "sft":
        return SftTask(*sft_examples(cfg))
    return None
