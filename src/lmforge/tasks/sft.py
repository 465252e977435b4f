"""Instruction fine-tuning (sft) as a training objective: the language model itself learns to
answer prompts, on the one training loop, with the loss on the completion (or the
assistant's messages) alone.

The examples, their loss mask and their packing into windows are tasks/sft_data.py's; the
chat template is tasks/chat.py's. Each step reads global batches of packed windows from a
stream of epochs, each epoch the training examples in an order seeded by its number and
packed afresh, so the same windows come whatever the number of ranks, and the number of
global batches read is the whole data position (exact resume).

Evaluation: the completion loss (mean over completion tokens; what early stopping and the
best checkpoint follow) on the held-out examples, packed in their file order, and, on the
first few of them, greedy generation up to the reference's length plus a margin, scored by
exact match (after trimming whitespace), ROUGE-L (F1, Google's `rouge-score`, which
lowercases and keeps ASCII letters and digits only, as the summarization literature does)
and corpus BLEU (`sacrebleu`, its default 13a tokenization).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.tokenizer import Tokenizer
from lmforge.distributed.env import DistInfo
from lmforge.distributed.parallelize import TENSOR_PARALLEL, unwrap
from lmforge.generate import generate_tokens
from lmforge.tasks.chat import ChatTemplate, template_for
from lmforge.tasks.sft_data import (
    IGNORE,
    Encoded,
    SftExample,
    encode_example,
    fit_window,
    pack,
    prompt_ids,
    window_batch,
)
from lmforge.train.objective import Evaluation, Objective

_EPOCHS_CACHED = 2  # a batch spans at most two epochs unless an epoch is under one batch


@dataclass(frozen=True)
class GenerationScores:
    exact_match: float
    rouge_l: float  # mean ROUGE-L F1 over the examples
    bleu: float  # corpus BLEU, 0-100
    predictions: list[str]

    def figures(self) -> dict[str, float]:
        return {"exact_match": self.exact_match, "rouge_l": self.rouge_l, "bleu": self.bleu}


def text_scores(predictions: list[str], references: list[str]) -> GenerationScores:
    """Exact match, ROUGE-L and BLEU of predictions against one reference each."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(predictions) != len(references) or not references:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    exact = np.mean([p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)])
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = np.mean([scorer.score(r, p)["rougeL"].fmeasure
                     for p, r in zip(predictions, references, strict=True)])
    bleu = sacrebleu.corpus_bleu(predictions, [references]).score
    return GenerationScores(float(exact), float(rouge), float(bleu), predictions)


def generate_answers(model: nn.Module, examples: list[SftExample], *, tok: Tokenizer,
                     template: ChatTemplate, block_size: int, margin: int,
                     device: torch.device,
                     autocast: Callable[[], Any] | None = None) -> list[str]:
    """Each example's greedy answer, up to its reference's length + `margin` tokens or the
    end of the turn, one example at a time (prompts differ in length and generate pads none).
    A prompt is cut from the left so that the answer fits in the context."""
    answers = []
    for example in examples:
        budget = len(tok.encode(example.reference())) + margin + 1  # +1: the end of turn
        prompt = prompt_ids(example, tok=tok, template=template)
        if block_size:
            budget = min(budget, block_size - 1)
            prompt = prompt[-(block_size - budget):]
        ids = []
        with autocast() if autocast is not None else contextlib.nullcontext():
            x = torch.tensor([prompt], dtype=torch.long, device=device)
            for token in generate_tokens(model, x, max_new_tokens=budget, temperature=0.0):
                if int(token[0]) == template.end_of_turn:
                    break
                ids.append(int(token[0]))
        answers.append(tok.decode_after(prompt, ids))
    return answers


class Packer:
    """The training windows: a stream of epochs, each the examples in an order seeded by
    the epoch's number, packed (their number varies a little from epoch to epoch)."""

    def __init__(self, lengths: np.ndarray, capacity: int, seed: int) -> None:
        self.lengths, self.capacity, self.seed = lengths, capacity, seed
        self.counts: list[int] = []  # windows of each epoch computed so far
        self.cache: dict[int, list[np.ndarray]] = {}

    def epoch(self, e: int) -> list[np.ndarray]:
        if e not in self.cache:
            order = np.random.default_rng([self.seed, e]).permutation(len(self.lengths))
            self.cache[e] = pack(self.lengths, order, self.capacity)
            for old in sorted(self.cache)[:-_EPOCHS_CACHED]:
                del self.cache[old]
        return self.cache[e]

    def rows(self, first: int, count: int) -> list[np.ndarray]:
        """The windows at positions first .. first + count - 1 of the stream."""
        out: list[np.ndarray] = []
        e, start = 0, 0  # epoch e's first position
        while len(out) < count:
            while len(self.counts) <= e:
                self.counts.append(len(self.epoch(len(self.counts))))
            end = start + self.counts[e]
            if first + len(out) < end:
                rows = self.epoch(e)
                lo = first + len(out) - start
                out += rows[lo:lo + count - len(out)]
            e, start = e + 1, end
        return out


class SftObjective(Objective):
    """Completion loss on packed training windows; evaluation as the module says."""

    def __init__(self, train: list[Encoded], val: list[Encoded], probes: list[SftExample], *,
                 tok: Tokenizer, template: ChatTemplate, block_size: int, batch_size: int,
                 grad_accum: int, eval_batch_size: int, eval_rows: int, seed: int, margin: int,
                 info: DistInfo, device: torch.device, autocast: Callable[[], Any],
                 sampler: Callable[[nn.Module], nn.Module | None]) -> None:
        if not train or not val:
            raise ValueError("instruction tuning needs training and held-out examples")
        self.train, self.val, self.probes = train, val, probes
        self.tok, self.template, self.block_size, self.pad_id = tok, template, block_size, tok.eot_id
        self.batch_size, self.grad_accum, self.eval_batch_size = batch_size, grad_accum, eval_batch_size
        self.margin, self.info, self.device, self.autocast = margin, info, device, autocast
        self.sampler = sampler  # the model to generate with, or None (tensor parallel)
        self.packer = Packer(np.array([len(e) for e in train]), block_size + 1, seed)
        val_rows = pack(np.array([len(e) for e in val]), np.arange(len(val)), block_size + 1)
        self.val_rows = val_rows[:eval_rows] if eval_rows > 0 else val_rows
        self.global_batch = batch_size * grad_accum * info.dp_size
        self.tokens_per_step = self.global_batch * block_size
        self.step = 0  # global batches read so far: the data position

    def batch(self, rows: list[np.ndarray],
              examples: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = window_batch(examples, rows, block_size=self.block_size, pad_id=self.pad_id)
        return torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)

    def micro_loss(self, model: nn.Module, micro: int) -> tuple[torch.Tensor, int]:
        first = self.step * self.global_batch + (micro * self.info.dp_size
                                                 + self.info.dp_rank) * self.batch_size
        rows = self.packer.rows(first, self.batch_size)
        x, y = self.batch(rows, self.train)
        if micro == self.grad_accum - 1:
            self.step += 1
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1),
                               ignore_index=IGNORE)
        return loss, sum(len(self.train[i]) - 1 for row in rows for i in row)

    @torch.no_grad()
    def completion_loss(self, model: nn.Module) -> float:
        """Mean loss per completion token over the held-out windows (every rank all)."""
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for i in range(0, len(self.val_rows), self.eval_batch_size):
            x, y = self.batch(self.val_rows[i:i + self.eval_batch_size], self.val)
            with self.autocast():
                logits, _ = model(x)
            total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(),
                                           y.reshape(-1), ignore_index=IGNORE, reduction="sum"))
            count += int((y != IGNORE).sum())
        model.train(was_training)
        return total / count

    def evaluate(self, model: nn.Module) -> Evaluation:
        loss = self.completion_loss(model)
        figures = {"val_ppl": math.exp(min(loss, 50.0))}
        sampler = self.sampler(model) if self.probes else None
        if sampler is None:
            return Evaluation(loss, figures, f"completion perplexity {figures['val_ppl']:.2f}")
        was_training = model.training
        answers = generate_answers(sampler, self.probes, tok=self.tok, template=self.template,
                                   block_size=self.block_size, margin=self.margin,
                                   device=self.device, autocast=self.autocast)
        model.train(was_training)
        scores = text_scores(answers, [e.reference() for e in self.probes])
        figures.update(scores.figures())
        return Evaluation(loss, figures, f"exact match {scores.exact_match:.3f}, ROUGE-L "
                                         f"{scores.rouge_l:.4f}, BLEU {scores.bleu:.2f} on "
                                         f"{len(self.probes)} held-out examples")

    def state_dict(self) -> dict[str, Any]:
        # the global batch: a run resumed on other ranks must keep it to read the same order
        return {"step": self.step, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])

    def announce(self) -> list[str]:
        windows = len(self.packer.epoch(0))
        return [f"sft: {len(self.train):,} training examples packed into {windows:,} windows of "
                f"{self.block_size} tokens ({len(self.train) / windows:.1f} per window), "
                f"{len(self.val):,} held out; chat template: {self.template.name}; "
                f"{len(self.probes)} held-out examples generated at each evaluation"]


@dataclass(frozen=True)
class SftTask:
    """What `Trainer(plan, wrap=task.wrap, objective=task.objective)` needs to tune a
    language model on instructions: the examples, and how many held-out ones to generate
    at each evaluation (0: none), with how many tokens beyond their reference's length."""

    train: list[SftExample]
    val: list[SftExample]
    generate: int = 16
    margin: int = 8
    wrap: ClassVar[None] = None  # no head: the language model itself is tuned

    def objective(self, trainer: Any) -> SftObjective:
        cfg, tok = trainer.cfg, trainer.tokenizer
        template = template_for(tok)
        block = cfg.model.block_size

        def fitted(e: Encoded) -> Encoded:  # a bos that starts the example stays
            bos = tok.bos_id is not None and len(e) > 0 and int(e.ids[0]) == tok.bos_id
            return fit_window(e, block + 1, keep_first=bos)

        def encoded(examples: list[SftExample]) -> list[Encoded]:
            return [fitted(encode_example(e, tok=tok, template=template)) for e in examples]

        strategy, info = trainer.strategy, trainer.info

        def sampler(model: nn.Module) -> nn.Module | None:
            # as train/sampling.py: FSDP ranks generate together; tensor parallel cannot
            if strategy in TENSOR_PARALLEL:
                return None
            return model if strategy == "fsdp" else unwrap(model)

        eval_batch = cfg.eval.batch_size or cfg.train.batch_size
        return SftObjective(
            encoded(self.train), encoded(self.val), self.val[:self.generate], tok=tok,
            template=template, block_size=block, batch_size=cfg.train.batch_size,
            grad_accum=cfg.train.grad_accum, eval_batch_size=eval_batch,
            eval_rows=cfg.eval.batches * eval_batch, seed=cfg.run.seed, margin=self.margin,
            info=info, device=trainer.device, autocast=trainer.autocast, sampler=sampler)
