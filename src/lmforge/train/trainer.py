"""The one training loop.

Every model family, recipe and parallel strategy goes through `Trainer.fit`. All state
that decides what happens next (weights, optimizer, step, loader position, every rank's
RNG, best-validation record, recurrent streams' hidden state) is saved in each checkpoint,
so a resumed run continues the run that would have happened had it never stopped, on this
number of processes or another.

The trainer takes a `RunPlan` (lmforge.plan): the config, run directory, device,
precision and strategy are decided before it exists, and it changes none of them. Under
torchrun every rank runs this same loop; rank 0 alone prints and writes metrics.

What the model is trained to do is the run's `Objective` (train/objective.py): language
modeling by default, where recurrent models train by truncated backpropagation through
time on the same loop (the loader reads contiguous streams instead of random windows, and
`StreamStates` carries each stream's hidden state from one step to the next); a task
(lmforge.tasks) brings its own data, loss and metrics, and the loop stays this one.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmforge import STARTED_AT, checkpoint
from lmforge.console import log
from lmforge.data import shards
from lmforge.data.loader import RandomWindows, Streams
from lmforge.data.shards import Tokens
from lmforge.data.tokenizer import load_tokenizer
from lmforge.distributed import env
from lmforge.distributed.device import autocast_for, precision_name
from lmforge.distributed.parallelize import (
    SHARDED,
    clip_grad_norm,
    gradient_sync,
    model_state_bytes,
)
from lmforge.errors import CheckpointError, LmforgeError
from lmforge.interop import lora
from lmforge.interop.init_from import PretrainedWeights
from lmforge.models import GPT, LanguageModel, TrainedModel
from lmforge.models.rnn import RecurrentLM
from lmforge.plan import RunPlan
from lmforge.train import mfu
from lmforge.train.build import build_for_rank
from lmforge.train.metrics import MetricsLog, TrainProgress, plot_losses
from lmforge.train.objective import Evaluation, LanguageModeling, Objective, bits_per_byte_factor
from lmforge.train.optim import build_optimizer, lr_at, set_lr
from lmforge.train.preemption import Preemption
from lmforge.train.profiling import StepProfiler
from lmforge.train.ramps import Warmup
from lmforge.train.sampling import draw_samples
from lmforge.train.state import Clock, Counters, FitResult
from lmforge.train.trackers import Trackers


class Trainer:
    def __init__(self, plan: RunPlan, *, init_state: PretrainedWeights | None = None,
                 wrap: Callable[[LanguageModel], TrainedModel] | None = None,
                 objective: Callable[[Trainer], Objective] | None = None) -> None:
        """A task (lmforge.tasks) gives `wrap`, which puts its head on the (pretrained) model
        before it is parallelized, and `objective`, which makes what the run trains for from
        the built trainer (its model, device, ranks). Without them: language modeling on
        the prepared dataset (data.path)."""
        self.plan, self.cfg, self.run, self.info = plan, plan.cfg, plan.run, plan.info
        cfg, info = plan.cfg, plan.info
        self.device, self.strategy = plan.device, plan.strategy
        self._criterion = ("val loss", False)  # what "best" followed: name, not the loss
        self.compute_dtype = plan.compute_dtype
        self.autocast = autocast_for(self.compute_dtype, self.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        data_dir = Path(cfg.data.path)
        self.manifest = shards.verify(data_dir)
        self.tokenizer = load_tokenizer(data_dir / self.manifest["tokenizer"]["dir"])
        built = build_for_rank(plan, init_state=init_state, wrap=wrap)
        self.raw_model, self.model = built.raw, built.model
        self.lora_base = built.lora_base  # LoRA: the frozen base, which checkpoints leave out
        self.recurrent = isinstance(self.raw_model, RecurrentLM)
        self.flops_per_token = self.raw_model.flops_per_token()  # before sharding changes shapes
        self.optimizer = build_optimizer(self.model, cfg.optim, device_type=self.device.type,
                                         fused=self.strategy not in SHARDED)
        if info.distributed:  # dropout differs between data-parallel ranks, not within a TP group
            torch.manual_seed(cfg.run.seed + info.dp_rank)
        self.counters = Counters()
        self._start = time.perf_counter()  # of fit(); eval records give the time since
        self._last_eval = -1  # the step of the last evaluation in fit()
        self.trackers = Trackers(self.run, cfg, enabled=info.is_main,
                                 bpb_factor=bits_per_byte_factor(self.manifest))
        self.metrics = MetricsLog(self.run.metrics, trackers=self.trackers)
        # one record per data-parallel rank: the ranks of a tensor-parallel group share windows
        samples_log = (MetricsLog(self.run.rank_samples(info.rank))
                       if cfg.train.record_samples and info.tp_rank == 0 else None)
        self.objective = objective(self) if objective is not None else LanguageModeling(
            data_dir, self.manifest, model=self._language_model(), batch_size=cfg.train.batch_size,
            block_size=cfg.model.block_size, seed=cfg.run.seed, grad_accum=cfg.train.grad_accum,
            eval_batch_size=cfg.eval.batch_size or cfg.train.batch_size,
            eval_batches=cfg.eval.batches, info=info, device=self.device,
            autocast=self.autocast, samples_log=samples_log,
            warmup=Warmup.from_config(cfg))
        self.utilization = mfu.Utilization(
            device=self.device, dtype=self.compute_dtype, flops_per_token=self.flops_per_token,
            devices=info.world_size, configured_tflops=cfg.train.peak_tflops, report=info.is_main)

    def _language_model(self) -> LanguageModel:
        # a model with a task's head comes with the task's objective
        assert isinstance(self.raw_model, GPT | RecurrentLM), "a task brings its objective"
        return self.raw_model

    @property
    def train_data(self) -> RandomWindows | Streams:
        """Language modeling's loader (its position is the objective's state)."""
        assert isinstance(self.objective, LanguageModeling)
        return self.objective.train_data

    @property
    def val_tokens(self) -> Tokens:
        assert isinstance(self.objective, LanguageModeling)
        return self.objective.val_tokens

    def start_files(self) -> None:
        """Files a new run keeps beside its checkpoints: the tokenizer it was trained with."""
        src = Path(self.cfg.data.path) / self.manifest["tokenizer"]["dir"]
        if not self.run.tokenizer.exists():
            shutil.copytree(src, self.run.tokenizer)

    # --- checkpoints ---------------------------------------------------------------------

    def save(self, *, is_best: bool = False) -> Path:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state = {"counters": dataclasses.asdict(self.counters),
                 # the global batch with every objective's position: a resume on other
                 # ranks must keep it (plan.keep_global_batch)
                 "loader": {"global_batch": self.objective.global_batch,
                            **self.objective.state_dict()},
                 "rng": env.gather_objects(rng, self.info),  # one per rank, in rank order
                 "world_size": self.info.world_size,
                 **self.objective.extra_state()}
        return checkpoint.save_checkpoint(
            self.run, step=self.counters.step, model=self.model, optimizer=self.optimizer,
            trainer_state=state, model_config=dataclasses.asdict(self.cfg.model),
            keep_last=self.cfg.checkpoint.keep_last, is_best=is_best, info=self.info,
            lora=lora.record(self.cfg, self.lora_base) if self.lora_base else None)

    def restore(self, path: Path) -> None:
        """Continue from checkpoint `path` (the plan's resume point, checked by rank 0), which
        may have been written by another number of ranks or another strategy."""
        if self.lora_base is not None:
            self._check_lora_base(path, self.lora_base)
        state = checkpoint.load_training_state(path, model=self.model, optimizer=self.optimizer,
                                               adapters_only=self.lora_base is not None)
        self.counters = Counters(**state["counters"])
        self.objective.load_state_dict(state["loader"])
        self.objective.load_extra_state(state)
        rngs = state["rng"]
        if self.info.rank < len(rngs):  # a rank the saving run did not have keeps its seed
            torch.set_rng_state(rngs[self.info.rank]["torch"])
            if "cuda" in rngs[self.info.rank] and self.device.type == "cuda":
                torch.cuda.set_rng_state(rngs[self.info.rank]["cuda"], self.device)
        self.forget_after(self.counters.step)
        saved_on = state.get("world_size", 1)
        log(f"resumed from {path} at step {self.counters.step}"
            + (f" (saved on {saved_on} processes)" if saved_on != self.info.world_size else ""))

    def _check_lora_base(self, path: Path, base: lora.LoraBase) -> None:
        """Adapters continue only on the base they were trained on (rank 0 reads the record;
        every rank stops alike when it differs)."""
        problem = None
        if self.info.is_main:
            try:
                lora.check_base(checkpoint.verify(path).lora or {}, base, path=path)
            except LmforgeError as err:
                problem = str(err)
        problem = env.broadcast_object(problem, self.info)
        if problem:
            raise CheckpointError(problem)

    def forget_after(self, step: int) -> None:
        """Forget what an interrupted attempt recorded past `step` (0: all of it), since this
        one does those steps again."""
        if self.info.is_main:
            self.metrics.truncate_after(step)
            self.trackers.purge_after(step)
            for path in self.run.all_rank_samples():  # of every rank it had
                MetricsLog(path).truncate_after(step - 1)
            MetricsLog(self.run.eval_samples).truncate_after(step)
        env.barrier(self.info)

    # --- one step ------------------------------------------------------------------------

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over train.grad_accum micro-batches: (mean loss, grad norm),
        averaged over the data-parallel ranks."""
        cfg = self.cfg
        set_lr(self.optimizer, lr_at(self.counters.step, cfg=cfg.optim,
                                     max_steps=cfg.train.max_steps))
        accum = cfg.train.grad_accum
        total = torch.zeros((), device=self.device)
        for micro in range(accum):
            loss, tokens = self._micro_step(micro, last=micro == accum - 1)
            total += loss
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        norm = clip_grad_norm(list(self.model.parameters()), clip)
        loss = env.all_mean(total / accum, self.info)
        # A NaN or Inf skips the update, so the weights and the optimizer state stay as they
        # were. Loss and norm are the same on every rank (all-reduced), so every rank skips
        # alike. Deciding costs one host sync per step; an update cannot be undone afterwards.
        finite = bool(torch.isfinite(loss) & torch.isfinite(norm))
        if finite:
            self.optimizer.step()
        else:
            self.objective.after_nonfinite()
        self.optimizer.zero_grad(set_to_none=True)
        # A skipped step still counts and has consumed its data, so the step number, the
        # schedule and the data order go on exactly as they would have.
        c = self.counters
        c.step += 1
        c.tokens += accum * tokens * self.info.dp_size
        c.nonfinite_in_a_row = 0 if finite else c.nonfinite_in_a_row + 1
        c.skipped_steps += not finite
        return loss, norm

    def _micro_step(self, micro: int, *, last: bool) -> tuple[torch.Tensor, int]:
        """Forward and backward of one micro-batch: (its loss, detached; its tokens)."""
        accum = self.cfg.train.grad_accum
        # gradients are reduced across ranks once, on the last micro-batch
        with gradient_sync(self.model, last), self.autocast():
            loss, tokens = self.objective.micro_loss(self.model, micro)
            (loss / accum).backward()
        return loss.detach(), tokens

    def _check_nonfinite(self, loss: float, norm: float) -> None:
        """Say that this step was skipped; stop the run when too many were, in a row."""
        c, o = self.counters, self.cfg.optim
        log(f"step {c.step}: loss {loss:.4g}, gradient norm {norm:.4g}: not finite, optimizer "
            f"step skipped ({c.nonfinite_in_a_row} in a row; the run stops after "
            f"{o.max_nonfinite})")
        if c.nonfinite_in_a_row <= o.max_nonfinite:
            return
        clip = (f"lower --optim.grad_clip (now {o.grad_clip})" if o.grad_clip > 0
                else "enable gradient clipping (--optim.grad_clip=1.0)")
        where = (f"continue from the last checkpoint with `lmforge train --resume {self.run} "
                 f"--optim.lr=...`" if self.run.has_checkpoint() else "start a new run")
        raise LmforgeError(f"step {c.step}: {c.nonfinite_in_a_row} non-finite losses or gradient "
                           f"norms in a row (optim.max_nonfinite={o.max_nonfinite}); training "
                           f"diverged: lower --optim.lr (now {o.lr:g}) or {clip}, and {where}")

    # --- evaluation and samples ----------------------------------------------------------

    def evaluate(self) -> Evaluation:
        """The objective's evaluation of the model (language modeling: the mean loss on the
        fixed validation subset)."""
        return self.objective.evaluate(self.model)

    def _after_eval(self, evaluation: Evaluation) -> bool:
        """Record an evaluation; save the best; True when early stopping says stop."""
        c, val_loss = self.counters, evaluation.loss
        improved = evaluation.rank < c.best_val
        self._criterion = evaluation.criterion_name, evaluation.criterion is not None
        if improved:
            c.best_val, c.best_step, c.evals_without_improvement = evaluation.rank, c.step, 0
        else:
            c.evals_without_improvement += 1
        if self.info.is_main:
            self.metrics.write({"kind": "eval", "step": c.step, "val_loss": val_loss,
                                **evaluation.figures, "tokens": c.tokens,
                                "elapsed_s": time.perf_counter() - self._start})
        log(f"step {c.step}: val loss {val_loss:.4f}"
            + (f", {evaluation.shown}" if evaluation.shown else "")
            + ("  (best)" if improved else ""))
        self._eval_samples()
        if improved and self.cfg.checkpoint.keep_best:
            self.save(is_best=True)
        patience = self.cfg.eval.early_stop_patience
        return patience > 0 and c.evals_without_improvement >= patience

    def _eval_samples(self) -> None:
        """A few samples at each evaluation, to watch the text improve (RUN/samples.jsonl,
        the report and the trackers); each evaluation starts from the same random draws, so
        only the model differs."""
        texts = self.samples(count=self.cfg.eval.samples_at_eval,
                             max_new_tokens=self.cfg.eval.sample_tokens)
        if texts and self.info.is_main:
            MetricsLog(self.run.eval_samples).write({"step": self.counters.step, "texts": texts})
            self.trackers.samples(texts, step=self.counters.step, tag="samples/eval")

    def samples(self, *, count: int, max_new_tokens: int) -> list[str]:
        return draw_samples(self.model, strategy=self.strategy, info=self.info,
                            tokenizer=self.tokenizer, seed=self.cfg.run.seed,
                            device=self.device, count=count, max_new_tokens=max_new_tokens)

    # --- the loop ------------------------------------------------------------------------

    def fit(self) -> FitResult:
        c, t = self.counters, self.cfg.train
        if self.info.is_main:
            self.run.path.mkdir(parents=True, exist_ok=True)
        self._announce()
        if c.step >= t.max_steps:
            log(f"{self.run} already finished at step {c.step} (train.max_steps={t.max_steps}); "
                "raise --train.max_steps to train further")
            return FitResult(step=c.step, stopped="finished", signal=0, best_val_loss=c.best_val)
        peak = self.utilization.find_peak()
        if peak:
            log(peak)
        start = self._start = time.perf_counter()
        clock = Clock(first_step=c.step, first_tokens=c.tokens, start=start,
                      deadline=start + t.max_minutes * 60 if t.max_minutes > 0 else math.inf)
        progress = TrainProgress(max_steps=t.max_steps, first_step=c.step,
                                 max_minutes=t.max_minutes, log_every=t.log_every,
                                 enabled=t.progress)
        profiler = StepProfiler(self.run.profile, steps=t.profile, rank=self.info.rank,
                                device=self.device, log=log)
        self.model.train()
        with Preemption() as preemption:  # until the final checkpoint is written
            stopped, signum = self._steps(clock, progress, profiler, preemption)
            progress.close()
            profiler.close()
            if clock.last_recorded != c.step:  # a stop between two log_every steps
                self._write_train_record(clock, time.perf_counter())
            # No extra evaluation after a signal: it would cost the grace time, and change the
            # early-stopping record that the resumed run must continue unchanged.
            if self._last_eval != c.step and not signum:
                self._after_eval(self.evaluate())
            self.save()
        return self._finish(clock, stopped, signum)

    def _announce(self) -> None:
        cfg, info, o = self.cfg, self.info, self.objective
        t = cfg.train
        precision = "bf16 autocast" if self.compute_dtype == torch.bfloat16 else "fp32"
        log(f"model: {cfg.model.arch}, {self.raw_model.num_params():,} parameters; device "
            f"{self.device}, {precision}" + (f"; {info.world_size} processes, {self.strategy}"
                                             if info.distributed else ""))
        if self.lora_base is not None:
            trainable = lora.trainable_params(self.raw_model)
            log(f"LoRA r={cfg.lora.r}, alpha {cfg.lora.alpha:g}: {trainable:,} trainable "
                f"parameters ({trainable / self.raw_model.num_params():.2%}); frozen base "
                f"sha256 {self.lora_base.sha256[:12]}, {self.lora_base.origin}")
        log(f"global batch: {t.batch_size} sequences x {t.grad_accum} accumulation x "
            f"{info.dp_size} data-parallel = {o.global_batch} sequences, "
            f"{o.tokens_per_step:,} tokens per step")
        for line in o.announce():
            log(line)

    def _steps(self, clock: Clock, progress: TrainProgress, profiler: StepProfiler,
               preemption: Preemption) -> tuple[str, int]:
        """Train until a bound, early stopping or a signal: (why it stopped, the signal)."""
        c, cfg = self.counters, self.cfg
        self._last_eval = -1
        while c.step < cfg.train.max_steps:
            t0 = time.perf_counter()
            loss, norm = self.train_step()
            profiler.step()
            now = time.perf_counter()
            clock.step_time += now - t0
            clock.loss, clock.norm = loss.item(), norm.item()
            if c.step == clock.first_step + 1:  # start-up cost: from process start to one step
                clock.startup = now - STARTED_AT
                log(f"first step done {clock.startup:.1f}s after start")
            if c.step % cfg.train.log_every == 0 or c.step == cfg.train.max_steps \
                    or c.nonfinite_in_a_row:
                self._write_train_record(clock, now)
            tok_s = clock.tokens_per_s(c.tokens)
            progress.update(c.step, loss=clock.loss, elapsed=now - clock.start,
                            tokens_per_s=tok_s, lr=self.optimizer.param_groups[0]["lr"],
                            mfu=self.utilization.of(tok_s))
            if c.nonfinite_in_a_row:
                self._check_nonfinite(clock.loss, clock.norm)
            if cfg.eval.every and c.step % cfg.eval.every == 0:
                self._last_eval = c.step
                if self._after_eval(self.evaluate()):
                    return "early_stop", 0
            if cfg.checkpoint.every and c.step % cfg.checkpoint.every == 0:
                self.save()
            signum = preemption.stop_signal(self.info, self.device)  # on any rank: all stop here
            if signum:
                log(f"received {signal.Signals(signum).name}: saving a checkpoint at step "
                    f"{c.step}, then stopping; signal again to stop at once")
                return "signal", signum
            # every rank must stop at the same step: rank 0's clock decides
            if cfg.train.max_minutes > 0 and env.broadcast_object(now > clock.deadline, self.info):
                return "max_minutes", 0
        return "max_steps", 0

    def _write_train_record(self, clock: Clock, now: float) -> None:
        c = self.counters
        tok_s = clock.tokens_per_s(c.tokens)
        record: dict[str, Any] = {
            "kind": "train", "step": c.step, "loss": clock.loss, "grad_norm": clock.norm,
            "lr": self.optimizer.param_groups[0]["lr"], "tokens": c.tokens,
            "tokens_per_s": tok_s, "mfu": self.utilization.record(tok_s),
            "elapsed_s": now - clock.start, "skipped": c.nonfinite_in_a_row > 0,
            "skipped_steps": c.skipped_steps}
        if clock.startup is not None:  # in the first record written
            record["startup_s"], clock.startup = clock.startup, None
            record["precision"] = precision_name(self.compute_dtype)
        clock.last_recorded = c.step
        if self.info.is_main:
            self.metrics.write(record)

    def _finish(self, clock: Clock, stopped: str, signum: int) -> FitResult:
        c = self.counters
        elapsed = time.perf_counter() - clock.start
        self._record_memory()
        if self.info.is_main and self.cfg.train.report:  # matplotlib: ~0.7 s of the command
            plot_losses(self.metrics.read(), self.run.loss_plot, title=str(self.run))
        if signum:
            log(f"stopped at step {c.step} on {signal.Signals(signum).name} after "
                f"{elapsed:.1f}s; checkpoint saved; continue with "
                f"`lmforge train --resume {self.run}`")
        else:
            name, custom = self._criterion
            best = f"best {name}" if custom else f"best val loss {c.best_val:.4f}"
            log(f"stopped at step {c.step} ({stopped}) after {elapsed:.1f}s; {best} at step "
                f"{c.best_step}; run saved in {self.run}")
        tok_s = clock.tokens_per_s(c.tokens)
        note = self.utilization.check(tok_s)
        if note:
            log(note)
        return FitResult(step=c.step, stopped=stopped, signal=signum, best_val_loss=c.best_val,
                         elapsed_s=elapsed, tokens_per_s=tok_s, mfu=self.utilization.of(tok_s))

    def _record_memory(self) -> None:
        """What each rank held: parameters, gradients (as large as the parameters they belong
        to) and optimizer state, and the process's peak resident memory."""
        state = env.gather_objects(model_state_bytes(self.model, self.optimizer), self.info)
        rss = env.gather_objects(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                 self.info)
        if self.info.is_main:
            self.metrics.write({"kind": "state", "step": self.counters.step,
                                "state_bytes_per_rank": max(state), "peak_rss_mb_per_rank": rss})
