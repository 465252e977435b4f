"""The one training loop.

Every model family, recipe and (later) parallel strategy goes through `Trainer.fit`. All
state that decides what happens next (weights, optimizer, step, loader position, RNG,
best-validation record) is saved in each checkpoint, so `--resume` continues the run that
would have happened had it never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmforge import checkpoint
from lmforge.config import Config
from lmforge.data import shards
from lmforge.data.loader import RandomWindows
from lmforge.data.tokenizer import load_tokenizer
from lmforge.errors import ConfigError
from lmforge.evaluate import cross_entropy, mean_loss, summarize
from lmforge.generate import generate_tokens
from lmforge.models import build_model
from lmforge.train.metrics import MetricsLog, Progress, log, plot_losses
from lmforge.train.optim import build_optimizer, lr_at


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_for(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast where asked for, or by default on GPUs that support it. On CPUs bf16 is
    no faster than fp32 (REFERENCE.md), so 'auto' keeps fp32 there."""
    use_bf16 = precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if use_bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


@dataclasses.dataclass
class Counters:
    """The trainer's own progress; saved in every checkpoint."""

    step: int = 0
    tokens: int = 0
    best_val: float = math.inf
    best_step: int = -1
    evals_without_improvement: int = 0


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = resolve_device(cfg.train.device)
        self.autocast = autocast_for(cfg.train.precision, self.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.run.seed)

        data_dir = Path(cfg.data.path)
        self.manifest = shards.verify(data_dir)
        self.tokenizer = load_tokenizer(data_dir / self.manifest["tokenizer"]["dir"])
        self._fit_vocab(self.manifest["tokenizer"]["vocab_size"])
        self.model = build_model(cfg.model).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.optim, device_type=self.device.type)
        self.train_data = RandomWindows(shards.open_split(data_dir, "train"),
                                        batch_size=cfg.train.batch_size,
                                        block_size=cfg.model.block_size, seed=cfg.run.seed)
        self.val_tokens = shards.open_split(data_dir, "val")
        self.counters = Counters()
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")

    def _fit_vocab(self, data_vocab: int) -> None:
        if self.cfg.model.vocab_size == 0:
            self.cfg.model.vocab_size = data_vocab
        elif self.cfg.model.vocab_size < data_vocab:
            raise ConfigError(f"model.vocab_size={self.cfg.model.vocab_size} is smaller than the "
                              f"dataset's tokenizer ({data_vocab}); set it to 0 to take the tokenizer's")

    def start_files(self) -> None:
        """Files a new run keeps beside its checkpoints: the tokenizer it was trained with."""
        src = Path(self.cfg.data.path) / self.manifest["tokenizer"]["dir"]
        dst = self.run_dir / "tokenizer"
        if not dst.exists():
            shutil.copytree(src, dst)

    # --- checkpoints ---------------------------------------------------------------------

    def save(self, *, is_best: bool = False) -> Path:
        state = {"counters": dataclasses.asdict(self.counters),
                 "loader": self.train_data.state_dict(),
                 "rng": {"torch": torch.get_rng_state()}}
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        return checkpoint.save_checkpoint(
            self.run_dir, step=self.counters.step, model=self.model, optimizer=self.optimizer,
            trainer_state=state, model_config=dataclasses.asdict(self.cfg.model),
            keep_last=self.cfg.checkpoint.keep_last, is_best=is_best)

    def restore(self) -> Path:
        """Continue from the newest intact checkpoint of the run directory."""
        checkpoint.clean_partial(self.run_dir)
        path = checkpoint.find_checkpoint(self.run_dir, "latest")
        meta = checkpoint.verify(path)
        checkpoint.check_model_config(meta, dataclasses.asdict(self.cfg.model), path=path)
        checkpoint.load_weights(path, self.model)
        state = checkpoint.load_training_state(path, optimizer=self.optimizer)
        self.counters = Counters(**state["counters"])
        self.train_data.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.metrics.truncate_after(self.counters.step)
        log(f"resumed from {path} at step {self.counters.step}")
        return path

    # --- the loop ----------------------------------------------------------------------

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over train.grad_accum micro-batches: (mean loss, grad norm)."""
        cfg = self.cfg
        lr = lr_at(self.counters.step, cfg=cfg.optim, max_steps=cfg.train.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        accum = cfg.train.grad_accum
        total = torch.zeros((), device=self.device)
        for _ in range(accum):
            x, y = self.train_data.next_batch()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.autocast():
                logits, _ = self.model(x)
                loss = cross_entropy(logits, y)
            (loss / accum).backward()
            total += loss.detach()
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.counters.step += 1
        self.counters.tokens += accum * x.numel()
        return total / accum, norm

    def evaluate(self) -> float:
        e, t = self.cfg.eval, self.cfg.train
        batch_size = e.batch_size or t.batch_size
        return mean_loss(self.model, self.val_tokens, block_size=self.cfg.model.block_size,
                         batch_size=batch_size, max_windows=e.batches * batch_size,
                         device=self.device, autocast=self.autocast)

    def _after_eval(self, val_loss: float) -> bool:
        """Record an evaluation; save the best; True when early stopping says stop."""
        c, split = self.counters, self.manifest["splits"]["val"]
        figures = summarize(val_loss, tokens=split["tokens"], bytes_=split["bytes"])
        improved = val_loss < c.best_val
        if improved:
            c.best_val, c.best_step, c.evals_without_improvement = val_loss, c.step, 0
        else:
            c.evals_without_improvement += 1
        self.metrics.write({"kind": "eval", "step": c.step, "val_loss": val_loss,
                            "val_bpb": figures["bits_per_byte"], "val_ppl": figures["perplexity"]})
        log(f"step {c.step}: val loss {val_loss:.4f}, {figures['bits_per_byte']:.4f} bits/byte"
            + ("  (best)" if improved else ""))
        if improved and self.cfg.checkpoint.keep_best:
            self.save(is_best=True)
        patience = self.cfg.eval.early_stop_patience
        return patience > 0 and c.evals_without_improvement >= patience

    def fit(self) -> dict[str, Any]:
        cfg, c = self.cfg, self.counters
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size
        log(f"model: {cfg.model.arch}, {self.model.num_params():,} parameters; "
            f"{tokens_per_step:,} tokens per step; device {self.device}")
        if c.step >= cfg.train.max_steps:
            log(f"already trained to step {c.step}; raise --train.max_steps to continue")
            return {"step": c.step, "stopped": "max_steps", "best_val_loss": c.best_val}
        progress = Progress(total=cfg.train.max_steps, initial=c.step, enabled=cfg.train.progress,
                            every=cfg.train.log_every)
        start = time.perf_counter()
        deadline = start + cfg.train.max_minutes * 60 if cfg.train.max_minutes > 0 else math.inf
        first_step, stopped, last_eval = c.step, "max_steps", -1
        self.model.train()
        step_time = 0.0  # time in training steps only, so tokens/s leaves out evaluation and saves
        while c.step < cfg.train.max_steps:
            t0 = time.perf_counter()
            loss, norm = self.train_step()
            now = time.perf_counter()
            step_time += now - t0
            if c.step % cfg.train.log_every == 0 or c.step == cfg.train.max_steps:
                tok_s = (c.step - first_step) * tokens_per_step / max(step_time, 1e-9)
                record = {"kind": "train", "step": c.step, "loss": loss.item(),
                          "grad_norm": norm.item(), "lr": self.optimizer.param_groups[0]["lr"],
                          "tokens": c.tokens, "tokens_per_s": tok_s, "elapsed_s": now - start}
                self.metrics.write(record)
                progress.update(c.step, loss=record["loss"], tokens_per_s=tok_s, lr=record["lr"])
            if cfg.eval.every and c.step % cfg.eval.every == 0:
                last_eval = c.step
                if self._after_eval(self.evaluate()):
                    stopped = "early_stop"
                    break
            if cfg.checkpoint.every and c.step % cfg.checkpoint.every == 0:
                self.save()
            if now > deadline:
                stopped = "max_minutes"
                break
        progress.close()
        if last_eval != c.step:
            self._after_eval(self.evaluate())
        self.save()
        elapsed = time.perf_counter() - start
        plot_losses(self.metrics.read(), self.run_dir / "loss.png", title=str(self.run_dir))
        log(f"stopped at step {c.step} ({stopped}) after {elapsed:.1f}s; best val loss "
            f"{c.best_val:.4f} at step {c.best_step}; run saved in {self.run_dir}")
        return {"step": c.step, "stopped": stopped, "best_val_loss": c.best_val, "elapsed_s": elapsed,
                "tokens_per_s": (c.step - first_step) * tokens_per_step / max(step_time, 1e-9)}

    def samples(self, *, count: int, max_new_tokens: int) -> list[str]:
        """Texts generated from an end-of-text token, with a generator of their own so that
        sampling never moves the training RNG."""
        if count <= 0 or max_new_tokens <= 0:
            return []
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.run.seed)
        prompt = torch.full((count, 1), self.tokenizer.eot_id, dtype=torch.long, device=self.device)
        steps = list(generate_tokens(self.model, prompt, max_new_tokens=max_new_tokens,
                                     temperature=0.8, top_k=50, generator=gen))
        ids = torch.stack(steps, dim=1).tolist()
        self.model.train()
        return [self.tokenizer.decode(row) for row in ids]
