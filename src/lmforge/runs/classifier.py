"""A classification run (`lmforge finetune classify`), loaded to label texts and to be
measured on its test examples.

Beside its checkpoints a classification run keeps `labels.json`: the label names in the
order of the head's outputs, whether a text has one label or several, and, for several,
the decision threshold of each label, tuned on the validation part after training (a
label is predicted where its probability reaches its threshold)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge import checkpoint
from lmforge.config import Config
from lmforge.data.tokenizer import Tokenizer, load_tokenizer
from lmforge.errors import CheckpointError, ConfigError
from lmforge.files import write_text_atomic
from lmforge.models import build_model
from lmforge.models.heads import SequenceClassifier
from lmforge.rundir import RunDir, read_run_config
from lmforge.tasks.classify import LabelledTokens, batch_of, encode_texts
from lmforge.tasks.metrics import (
    ClassificationMetrics,
    classification_metrics,
    format_table,
    top_k_classes,
    tune_thresholds,
)
from lmforge.tasks.setup import ClassifyData, classify_data

LABELS_FILE = "labels.json"
# A label gets a decision threshold of its own when the validation part has this many of its
# texts; rarer labels share the one best for micro-F1 (metrics.tune_thresholds). Measured on
# Reuters topics (992 validation stories, a mean-pooled classifier): every label's own cut
# gave test micro-F1 0.544 and macro-F1 0.231; own cuts from 10 positives up, 0.734 and 0.183.
OWN_THRESHOLD_POSITIVES = 10


@dataclass(frozen=True)
class Labels:
    names: list[str]
    multi_label: bool
    thresholds: list[float] | None = None  # several labels per text: one per label

    def write(self, run: RunDir) -> None:
        write_text_atomic(run.path / LABELS_FILE, json.dumps(
            {"names": self.names, "multi_label": self.multi_label,
             "thresholds": self.thresholds}, indent=1) + "\n")

    @staticmethod
    def read(run: RunDir) -> Labels:
        path = run.path / LABELS_FILE
        try:
            raw: Any = json.loads(path.read_bytes())
            names, multi = raw["names"], raw["multi_label"]
            thresholds = raw.get("thresholds")
            ok = (isinstance(names, list) and all(isinstance(n, str) for n in names)
                  and isinstance(multi, bool)
                  and (thresholds is None or (isinstance(thresholds, list) and len(thresholds)
                                              == len(names))))
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            ok = False
        if not ok:
            raise CheckpointError(f"{path} is missing or damaged; it names the run's labels: "
                                  "train the run again")
        return Labels(names, multi, thresholds)


@dataclass(frozen=True)
class LoadedClassifier:
    run: RunDir
    cfg: Config
    model: SequenceClassifier
    tokenizer: Tokenizer
    labels: Labels
    step: int
    checkpoint: Path  # the checkpoint loaded

    def probabilities(self, texts: list[str], *, batch_size: int = 32) -> np.ndarray:
        """(N, labels): a softmax over the labels, or each label's own sigmoid."""
        tok = self.tokenizer
        seqs = encode_texts(texts, tok.encode_batch, block_size=self.cfg.model.block_size,
                            pad_id=tok.eot_id)
        data = LabelledTokens(seqs, np.zeros(len(seqs), dtype=np.int64))
        out = []
        with torch.no_grad():
            for i in range(0, len(seqs), batch_size):
                index = np.arange(i, min(i + batch_size, len(seqs)))
                tokens, lengths, _ = batch_of(data, index, pad_id=tok.eot_id,
                                              device=torch.device("cpu"))
                scores = self.model(tokens, lengths).float()
                out.append(torch.sigmoid(scores) if self.labels.multi_label
                           else torch.softmax(scores, dim=-1))
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.labels.names)))

    def predict(self, probabilities: np.ndarray) -> np.ndarray:
        """Label indices (N,), or an indicator matrix for several labels per text."""
        if not self.labels.multi_label:
            return probabilities.argmax(1)
        thresholds = np.asarray(self.labels.thresholds or [0.5] * len(self.labels.names))
        return (probabilities >= thresholds).astype(np.int8)


def load_classifier(run_dir: Path, *, which: str = "best") -> LoadedClassifier:
    """The classifier of a run `lmforge finetune classify` trained: its best checkpoint (or
    `which`: latest, step_N)."""
    run = RunDir(Path(run_dir))
    cfg = read_run_config(run)
    if cfg.task.kind != "classify":
        raise ConfigError(f"{run} is a {cfg.task.kind} run, not a classifier; predict takes a "
                          "run made by `lmforge finetune classify`")
    labels = Labels.read(run)
    if which == "best" and run.pointer("best") is None:
        which = "latest"
    path = checkpoint.find_checkpoint(run, which)
    meta = checkpoint.verify(path)
    model = SequenceClassifier(build_model(cfg.model), len(labels.names),
                               pooling=cfg.task.pooling)
    checkpoint.load_weights(path, model)
    return LoadedClassifier(run, cfg, model.eval(), load_tokenizer(run.tokenizer), labels,
                            meta.step, path)


@dataclass(frozen=True)
class ClassifierReport:
    """A classifier measured on its run's test examples: all labels, and the k most frequent
    training labels (the 10 Reuters results are usually given for)."""

    metrics: ClassificationMetrics
    top: ClassificationMetrics
    text: str  # the per-label table and the summary lines, for the terminal


def evaluate_classifier(run_dir: Path, *, val_texts: list[str], val_targets: np.ndarray,
                        test_texts: list[str], test_targets: np.ndarray,
                        train_targets: np.ndarray, top_k: int = 10) -> ClassifierReport:
    """Tune each label's threshold on the validation part (several labels per text), save
    them in labels.json, then measure the best checkpoint on the test examples; the figures
    go to RUN/test_metrics.json as well."""
    loaded = load_classifier(run_dir)
    labels = loaded.labels
    if labels.multi_label:
        val_probabilities = loaded.probabilities(val_texts)
        thresholds = tune_thresholds(val_probabilities, val_targets,
                                     min_positives=OWN_THRESHOLD_POSITIVES)
        # A label no validation text has gives its threshold nothing to learn from; its loss
        # weighs positives up, so 1/2 fires on many texts: predict it only above every
        # validation score it reached, that is, never where it would have been wrong there.
        unseen = np.asarray(val_targets).sum(0) == 0
        if unseen.any():
            highest = val_probabilities[:, unseen].max(0) + 1e-6
            thresholds[unseen] = np.maximum(thresholds[unseen], highest)
        labels = Labels(labels.names, True, [float(t) for t in thresholds])
        labels.write(loaded.run)
        loaded = dataclasses.replace(loaded, labels=labels)
    predicted = loaded.predict(loaded.probabilities(test_texts))
    metrics = classification_metrics(test_targets, predicted, labels.names)
    top = top_k_classes(train_targets, test_targets, predicted, labels.names, k=top_k)
    write_text_atomic(loaded.run.path / "test_metrics.json", json.dumps(
        {"step": loaded.step, "all": metrics.as_dict(), f"top{top_k}": top.as_dict()},
        indent=1) + "\n")
    text = "\n".join([
        format_table(metrics),
        f"test, step {loaded.step}: {len(test_texts):,} texts, {len(labels.names)} labels: "
        f"micro-F1 {metrics.micro_f1:.4f}, macro-F1 {metrics.macro_f1:.4f}, accuracy "
        f"{metrics.accuracy:.4f}; the {top_k} most frequent labels: micro-F1 "
        f"{top.micro_f1:.4f}, macro-F1 {top.macro_f1:.4f}"])
    return ClassifierReport(metrics, top, text)


def measure_run(run_dir: Path, data: ClassifyData | None = None) -> ClassifierReport:
    """`evaluate_classifier` on the examples the run was fine-tuned on (read again from its
    [task] config unless `data` is given)."""
    if data is None:
        run = RunDir(Path(run_dir))
        cfg = read_run_config(run)
        if cfg.task.kind != "classify":
            raise ConfigError(f"{run} is a {cfg.task.kind} run, not a classifier")
        data = classify_data(cfg)
    return evaluate_classifier(
        run_dir, val_texts=[e.text for e in data.val], val_targets=data.targets(data.val),
        test_texts=[e.text for e in data.examples.test],
        test_targets=data.targets(data.examples.test), train_targets=data.targets(data.train))
