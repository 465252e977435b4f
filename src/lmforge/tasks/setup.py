"""A task run's task, made from its config alone ([task]), so that `lmforge finetune`,
`lmforge train --resume` and `lmforge eval` of a task run all rebuild the same one: the
labelled examples read again (deterministically), the training part split into what
trains and what validates during training, and targets in the label order of the set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmforge.config import Config
from lmforge.tasks.classify import ClassifyTask
from lmforge.tasks.examples import Example, ExampleSet, read_examples, val_part


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


def task_for(cfg: Config) -> ClassifyTask | None:
    """The task cfg.task names, or None for language modeling."""
    return classify_task(cfg) if cfg.task.kind == "classify" else None
