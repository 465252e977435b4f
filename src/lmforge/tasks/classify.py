"""Text classification as a training objective: labelled sequences read in a seeded order,
a cross-entropy loss (one label per text) or a per-label binary one (several labels per
text), and accuracy and F1 at each evaluation, on the one training loop.

The model is a `models.heads.SequenceClassifier` on a pretrained backbone. A text longer
than the context is cut to its first block_size tokens (a news story says what it is about
first). Several labels per text: rare labels get a positive weight of (negatives /
positives) in their loss, capped, so that a topic with ten stories is not learnt as
"never"; the decision threshold of each label is then tuned on the validation part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.distributed.env import DistInfo
from lmforge.models.heads import SequenceClassifier
from lmforge.train.objective import Evaluation, Objective

_MAX_POS_WEIGHT = 50.0  # a label seen once in 8,000 texts would otherwise weigh 8,000


@dataclass(frozen=True)
class LabelledTokens:
    """Token sequences and their targets: label indices (N,) for one label per text, or an
    indicator matrix (N, labels) for several."""

    sequences: list[np.ndarray]
    targets: np.ndarray

    @property
    def multi_label(self) -> bool:
        return self.targets.ndim == 2

    def __len__(self) -> int:
        return len(self.sequences)


def encode_texts(texts: list[str], encode: Any, *, block_size: int, pad_id: int) -> list[np.ndarray]:
    """Token ids of each text, cut to its first block_size tokens; an empty text is one
    padding token, so every sequence has a last position to pool."""
    out = []
    for ids in encode(texts):
        ids = ids[:block_size] or [pad_id]
        out.append(np.asarray(ids, dtype=np.int64))
    return out


def batch_of(data: LabelledTokens, index: np.ndarray, *, pad_id: int,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens (B, T) right-padded, lengths (B,), targets) of the examples at `index`."""
    seqs = [data.sequences[i] for i in index]
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    tokens = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for row, s in enumerate(seqs):
        tokens[row, :len(s)] = torch.from_numpy(s)
    targets = torch.from_numpy(data.targets[index])
    return tokens.to(device), lengths.to(device), targets.to(device)


def positive_weights(targets: np.ndarray) -> torch.Tensor:
    """Per label: negatives / positives among the training texts, at most _MAX_POS_WEIGHT."""
    pos = targets.sum(0)
    weight = (len(targets) - pos) / np.maximum(pos, 1)
    return torch.from_numpy(np.clip(weight, 1.0, _MAX_POS_WEIGHT).astype(np.float32))


class ClassifyObjective(Objective):
    """Classification on `train`, evaluated on `val` (the model: a SequenceClassifier)."""

    def __init__(self, train: LabelledTokens, val: LabelledTokens, *, batch_size: int,
                 grad_accum: int, eval_batch_size: int, seed: int, pad_id: int,
                 info: DistInfo, device: torch.device) -> None:
        if not len(train) or not len(val):
            raise ValueError("classification needs training and validation examples")
        self.train, self.val = train, val
        self.batch_size, self.grad_accum, self.eval_batch_size = batch_size, grad_accum, eval_batch_size
        self.seed, self.pad_id, self.info, self.device = seed, pad_id, info, device
        self.global_batch = batch_size * grad_accum * info.dp_size
        self.tokens_per_step = self.global_batch * int(np.mean([len(s) for s in train.sequences]))
        self.step = 0  # global batches read so far: the data position
        self.pos_weight = (positive_weights(train.targets).to(device)
                           if train.multi_label else None)

    def _indices(self, step: int, micro: int) -> np.ndarray:
        """This rank's share of global batch `step`, micro-batch `micro`: positions in the
        stream of epochs, each a permutation of the training examples seeded by its number,
        so the same global batches come whatever the number of ranks."""
        n, g = len(self.train), self.global_batch
        first = step * g + (micro * self.info.dp_size + self.info.dp_rank) * self.batch_size
        positions = np.arange(first, first + self.batch_size)
        out = np.empty(len(positions), dtype=np.int64)
        for epoch in np.unique(positions // n):
            order = np.random.default_rng([self.seed, int(epoch)]).permutation(n)
            here = positions // n == epoch
            out[here] = order[positions[here] % n]
        return out

    def loss(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.train.multi_label:
            return F.binary_cross_entropy_with_logits(scores.float(), targets.float(),
                                                      pos_weight=self.pos_weight)
        return F.cross_entropy(scores.float(), targets)

    def micro_loss(self, model: nn.Module, micro: int) -> tuple[torch.Tensor, int]:
        tokens, lengths, targets = batch_of(self.train, self._indices(self.step, micro),
                                            pad_id=self.pad_id, device=self.device)
        if micro == self.grad_accum - 1:
            self.step += 1
        return self.loss(model(tokens, lengths), targets), int(lengths.sum())

    @torch.no_grad()
    def scores(self, model: nn.Module, data: LabelledTokens) -> np.ndarray:
        """Scores of every example of `data` (each rank computes all: evaluation sets are small)."""
        was_training = model.training
        model.eval()
        out = []
        order = np.argsort([len(s) for s in data.sequences], kind="stable")  # less padding
        for i in range(0, len(data), self.eval_batch_size):
            index = order[i:i + self.eval_batch_size]
            tokens, lengths, _ = batch_of(data, index, pad_id=self.pad_id, device=self.device)
            out.append((index, model(tokens, lengths).float().cpu().numpy()))
        model.train(was_training)
        scores = np.empty((len(data), out[0][1].shape[1]), dtype=np.float32)
        for index, s in out:
            scores[index] = s
        return scores

    def evaluate(self, model: nn.Module) -> Evaluation:
        from sklearn.metrics import accuracy_score, average_precision_score, f1_score

        scores = self.scores(model, self.val)
        targets = self.val.targets
        loss = float(self.loss(torch.from_numpy(scores).to(self.device),
                               torch.from_numpy(targets).to(self.device)))
        if self.val.multi_label:
            predicted = (scores > 0).astype(np.int64)  # probability 1/2
        else:
            predicted = scores.argmax(1)
        figures = {"accuracy": float(accuracy_score(targets, predicted)),
                   "micro_f1": float(f1_score(targets, predicted, average="micro", zero_division=0)),
                   "macro_f1": float(f1_score(targets, predicted, average="macro", zero_division=0))}
        shown = (f"accuracy {figures['accuracy']:.4f}, micro-F1 {figures['micro_f1']:.4f}, "
                 f"macro-F1 {figures['macro_f1']:.4f}")
        if not self.val.multi_label:
            return Evaluation(loss, figures, shown)
        # Several labels: the thresholds are tuned after training, so what counts is how the
        # scores rank texts, not their calibration: the best checkpoint is the one of highest
        # micro average precision. (On Reuters the positive-weighted loss bottoms out after a
        # third of the steps while the ranking, and test micro-F1, keep improving.)
        figures["micro_ap"] = float(average_precision_score(targets, scores, average="micro"))
        return Evaluation(loss, figures, f"{shown}, micro-AP {figures['micro_ap']:.4f}",
                          criterion=-figures["micro_ap"], criterion_name="val micro-AP")

    def state_dict(self) -> dict[str, Any]:
        # the global batch: a run resumed on other ranks must keep it to read the same order
        return {"step": self.step, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])

    def announce(self) -> list[str]:
        kind = "labels per text" if self.train.multi_label else "one label per text"
        labels = self.train.targets.shape[1] if self.train.multi_label else int(self.train.targets.max()) + 1
        return [f"classify: {len(self.train):,} training and {len(self.val):,} validation texts, "
                f"{labels} labels ({kind})"]


@dataclass(frozen=True)
class ClassifyTask:
    """What `Trainer(plan, wrap=task.wrap, objective=task.objective)` needs to fine-tune a
    model to classify: the texts and their targets (label indices, or an indicator matrix
    for several labels per text), the number of labels and how the head pools."""

    train_texts: list[str]
    train_targets: np.ndarray
    val_texts: list[str]
    val_targets: np.ndarray
    n_labels: int
    pooling: str = "mean"

    def wrap(self, backbone: Any) -> SequenceClassifier:
        return SequenceClassifier(backbone, self.n_labels, pooling=self.pooling)

    def objective(self, trainer: Any) -> ClassifyObjective:
        cfg, tok = trainer.cfg, trainer.tokenizer
        block = cfg.model.block_size

        def encoded(texts: list[str]) -> list[np.ndarray]:
            return encode_texts(texts, tok.encode_batch, block_size=block, pad_id=tok.eot_id)

        return ClassifyObjective(
            LabelledTokens(encoded(self.train_texts), self.train_targets),
            LabelledTokens(encoded(self.val_texts), self.val_targets),
            batch_size=cfg.train.batch_size, grad_accum=cfg.train.grad_accum,
            eval_batch_size=cfg.eval.batch_size or cfg.train.batch_size, seed=cfg.run.seed,
            pad_id=tok.eot_id, info=trainer.info, device=trainer.device)
