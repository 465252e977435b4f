"""Sequence tagging as a training objective: a tag for every word (part of speech, named
entities), on the one training loop.

Words become subword tokens the way the text is written: the words of a sentence joined by
single spaces, so each word but the first is encoded with its leading space (BPE then gives
the ids it gives in running text; a char or byte tokenizer gives the space a token of its
own, which is not the word's). A word's tag is the target of its FIRST token; its other
tokens, the spaces and the padding are ignored by the loss (-100, cross-entropy's
ignore_index). A sentence longer than model.block_size tokens is cut there; the words past
the cut are neither trained on nor scored.

The model is a `models.heads.TokenTagger`. A causal GPT tags a word from the words before
it and its own first token only; a bidirectional recurrent backbone (model.bidirectional)
reads the whole sentence.

Metrics at each evaluation, on the validation sentences: token accuracy (over words), and
- for BIO tag sets (every tag `O`, `B-TYPE` or `I-TYPE`: named entities, chunks) span-level
  precision, recall and F1 by `seqeval` (micro-averaged over entity types; an entity counts
  when its type and both ends are right, as conlleval counts it);
- for other tag sets (parts of speech) macro-F1 over the tags, by scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.distributed.env import DistInfo
from lmforge.errors import DataError
from lmforge.models.heads import TokenTagger
from lmforge.tasks.tagged import TaggedSentence, TaggedSet
from lmforge.train.objective import Evaluation, Objective

IGNORE = -100  # the target of positions that carry no tag: F.cross_entropy's ignore_index


def is_bio(tag_names: tuple[str, ...] | list[str]) -> bool:
    """Whether the tags mark spans, BIO style: `O`, `B-TYPE`, `I-TYPE` and at least one B-."""
    spans = [t for t in tag_names if t != "O"]
    return (any(t.startswith("B-") for t in spans)
            and all(t[:2] in ("B-", "I-") and len(t) > 2 for t in spans))


@dataclass(frozen=True)
class TaggedTokens:
    """Token ids of each sentence and, at the same positions, the tag index of the word a
    position starts or IGNORE; `words` counts the sentences' words, those cut off included."""

    sequences: list[np.ndarray]
    labels: list[np.ndarray]
    words: int

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def scored_words(self) -> int:
        return int(sum((lab != IGNORE).sum() for lab in self.labels))


def word_texts(sentences: list[TaggedSentence]) -> list[str]:
    """Each word as it is written in its sentence: with the space before it, but the first."""
    return [w if i == 0 else " " + w for s in sentences for i, w in enumerate(s.words)]


def align(sentences: list[TaggedSentence], tag_index: dict[str, int],
          encode_batch: Callable[[list[str]], list[list[int]]], *, block_size: int,
          bos_id: int | None = None) -> TaggedTokens:
    """The sentences as token ids, each word's tag on its first token (after the tokens of its
    leading space, where the tokenizer gives the space tokens of its own), cut to block_size
    tokens; bos first where the tokenizer starts a text with it."""
    space = encode_batch([" "])[0]
    pieces = iter(encode_batch(word_texts(sentences)))
    sequences, labels = [], []
    for s in sentences:
        ids: list[int] = [] if bos_id is None else [bos_id]
        targets: list[int] = [IGNORE] * len(ids)
        for word, tag in zip(s.words, s.tags, strict=True):
            piece = next(pieces)
            if not piece:
                raise DataError(f"the word {word!r} encodes to no tokens; tagging needs one")
            lead = len(space) if len(piece) > len(space) and piece[:len(space)] == space else 0
            if tag not in tag_index:
                raise DataError(f"the tag {tag!r} of {word!r} is not one of the task's "
                                f"{len(tag_index)} tags")
            first = [IGNORE] * len(piece)
            first[lead] = tag_index[tag]
            ids += piece
            targets += first
        sequences.append(np.asarray(ids[:block_size], dtype=np.int64))
        labels.append(np.asarray(targets[:block_size], dtype=np.int64))
    return TaggedTokens(sequences, labels, words=sum(len(s.words) for s in sentences))


def batch_of(data: TaggedTokens, index: np.ndarray, *, pad_id: int,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens (B, T) right-padded, lengths (B,), labels (B, T) with IGNORE on the padding)."""
    lengths = torch.tensor([len(data.sequences[i]) for i in index], dtype=torch.long)
    width = int(lengths.max())
    tokens = torch.full((len(index), width), pad_id, dtype=torch.long)
    labels = torch.full((len(index), width), IGNORE, dtype=torch.long)
    for row, i in enumerate(index):
        n = len(data.sequences[i])
        tokens[row, :n] = torch.from_numpy(data.sequences[i])
        labels[row, :n] = torch.from_numpy(data.labels[i])
    return tokens.to(device), lengths.to(device), labels.to(device)


def epoch_positions(step: int, micro: int, *, n: int, global_batch: int, batch_size: int,
                    info: DistInfo, seed: int) -> np.ndarray:
    """This rank's share of global batch `step`, micro-batch `micro`: positions in the stream
    of epochs, each a permutation of the n training examples seeded by its number, so the
    same global batches come whatever the number of ranks (as tasks.classify reads)."""
    first = step * global_batch + (micro * info.dp_size + info.dp_rank) * batch_size
    positions = np.arange(first, first + batch_size)
    out = np.empty(len(positions), dtype=np.int64)
    for epoch in np.unique(positions // n):
        order = np.random.default_rng([seed, int(epoch)]).permutation(n)
        here = positions // n == epoch
        out[here] = order[positions[here] % n]
    return out


def tag_loss(scores: torch.Tensor, labels: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of scores (B, T, tags) against labels (B, T), IGNORE positions left out."""
    return F.cross_entropy(scores.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                           reduction=reduction)


def tag_figures(truth: list[list[str]], predicted: list[list[str]], *,
                bio: bool) -> dict[str, float]:
    """Token accuracy, and span precision/recall/F1 (seqeval) for BIO tags or macro-F1 over
    the tags (scikit-learn) for others, of per-sentence tag lists."""
    flat_true = [t for s in truth for t in s]
    flat_pred = [t for s in predicted for t in s]
    correct = sum(a == b for a, b in zip(flat_true, flat_pred, strict=True))
    figures = {"accuracy": correct / max(1, len(flat_true))}
    if bio:
        from seqeval.metrics import f1_score, precision_score, recall_score

        figures["span_precision"] = float(precision_score(truth, predicted, zero_division=0))
        figures["span_recall"] = float(recall_score(truth, predicted, zero_division=0))
        figures["span_f1"] = float(f1_score(truth, predicted, zero_division=0))
    else:
        from sklearn.metrics import f1_score as sk_f1

        figures["macro_f1"] = float(sk_f1(flat_true, flat_pred, average="macro", zero_division=0))
    return figures


class TagObjective(Objective):
    """Tagging on `train`, evaluated on `val` (the model: a TokenTagger)."""

    def __init__(self, train: TaggedTokens, val: TaggedTokens, tag_names: tuple[str, ...], *,
                 batch_size: int, grad_accum: int, eval_batch_size: int, seed: int, pad_id: int,
                 info: DistInfo, device: torch.device) -> None:
        if not len(train) or not len(val):
            raise ValueError("tagging needs training and validation sentences")
        self.train, self.val, self.tag_names = train, val, tag_names
        self.bio = is_bio(tag_names)
        self.batch_size, self.grad_accum, self.eval_batch_size = batch_size, grad_accum, eval_batch_size
        self.seed, self.pad_id, self.info, self.device = seed, pad_id, info, device
        self.global_batch = batch_size * grad_accum * info.dp_size
        self.tokens_per_step = self.global_batch * int(np.mean([len(s) for s in train.sequences]))
        self.step = 0  # global batches read so far: the data position

    def micro_loss(self, model: nn.Module, micro: int) -> tuple[torch.Tensor, int]:
        index = epoch_positions(self.step, micro, n=len(self.train), global_batch=self.global_batch,
                                batch_size=self.batch_size, info=self.info, seed=self.seed)
        tokens, lengths, labels = batch_of(self.train, index, pad_id=self.pad_id, device=self.device)
        if micro == self.grad_accum - 1:
            self.step += 1
        return tag_loss(model(tokens, lengths), labels), int(lengths.sum())

    @torch.no_grad()
    def predict(self, model: nn.Module, data: TaggedTokens) -> tuple[list[np.ndarray], float]:
        """The predicted tag index of every scored word of each sentence of `data`, and the
        mean loss over those words (each rank computes all: evaluation sets are small)."""
        was_training = model.training
        model.eval()
        out: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(data)
        total = 0.0
        order = np.argsort([len(s) for s in data.sequences], kind="stable")  # less padding
        for i in range(0, len(data), self.eval_batch_size):
            index = order[i:i + self.eval_batch_size]
            tokens, lengths, labels = batch_of(data, index, pad_id=self.pad_id, device=self.device)
            scores = model(tokens, lengths)
            total += float(tag_loss(scores, labels, reduction="sum"))
            best = scores.argmax(-1).cpu().numpy()
            for row, j in enumerate(index):
                out[j] = best[row, :len(data.labels[j])][data.labels[j] != IGNORE]
        model.train(was_training)
        return out, total / max(1, data.scored_words)

    def evaluate(self, model: nn.Module) -> Evaluation:
        predicted, loss = self.predict(model, self.val)
        names = self.tag_names
        truth = [[names[t] for t in lab[lab != IGNORE]] for lab in self.val.labels]
        guess = [[names[t] for t in p] for p in predicted]
        figures = tag_figures(truth, guess, bio=self.bio)
        shown = f"accuracy {figures['accuracy']:.4f}, " + (
            f"span F1 {figures['span_f1']:.4f}" if self.bio else f"macro-F1 {figures['macro_f1']:.4f}")
        return Evaluation(loss, figures, shown)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])

    def announce(self) -> list[str]:
        metric = "span F1 by seqeval" if self.bio else "macro-F1 over tags"
        lines = [f"tag: {len(self.train):,} training and {len(self.val):,} validation sentences, "
                 f"{len(self.tag_names)} tags ({metric})"]
        for name, data in (("training", self.train), ("validation", self.val)):
            cut = data.words - data.scored_words
            if cut:
                lines.append(f"tag: {cut:,} of {data.words:,} {name} words lie past "
                             "model.block_size and are left out")
        return lines


@dataclass(frozen=True)
class TagTask:
    """What `Trainer(plan, wrap=task.wrap, objective=task.objective)` needs to fine-tune a
    model to tag: the training and validation sentences and the tag names (their order is
    the head's)."""

    train: list[TaggedSentence]
    val: list[TaggedSentence]
    tag_names: tuple[str, ...]

    @classmethod
    def from_set(cls, tagged: TaggedSet) -> TagTask:
        """Trained on the set's training part, evaluated on its test part."""
        return cls(tagged.train, tagged.test, tagged.tag_names)

    def wrap(self, backbone: Any) -> TokenTagger:
        return TokenTagger(backbone, len(self.tag_names))

    def objective(self, trainer: Any) -> TagObjective:
        cfg, tok = trainer.cfg, trainer.tokenizer
        index = {name: i for i, name in enumerate(self.tag_names)}

        def aligned(sentences: list[TaggedSentence]) -> TaggedTokens:
            return align(sentences, index, tok.encode_batch, block_size=cfg.model.block_size,
                         bos_id=tok.bos_id)

        return TagObjective(
            aligned(self.train), aligned(self.val), self.tag_names,
            batch_size=cfg.train.batch_size, grad_accum=cfg.train.grad_accum,
            eval_batch_size=cfg.eval.batch_size or cfg.train.batch_size, seed=cfg.run.seed,
            pad_id=tok.eot_id, info=trainer.info, device=trainer.device)
