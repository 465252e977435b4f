"""The one training loop.

Every model family, recipe and parallel strategy goes through `Trainer.fit`. All state
that decides what happens next (weights, optimizer, step, loader position, every rank's
RNG, best-validation record) is saved in each checkpoint, so `--resume` continues the run
that would have happened had it never stopped, on this number of processes or another.

Under torchrun every rank runs this same loop; rank 0 alone prints and writes metrics.

Recurrent models (`model.recurrent`) train by truncated backpropagation through time on
the same loop: the loader reads contiguous streams instead of random windows, and the
trainer carries each row's hidden state from one step to the next, detached so that the
gradient stops at the chunk boundary, and zeroed where a stream starts again. The hidden
state of every stream is saved with the loader position, so their resume is exact too.
"""

from __future__ import annotations

import contextlib
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
from lmforge.config import Config
from lmforge.data import shards
from lmforge.data.loader import RandomWindows, Streams
from lmforge.data.tokenizer import load_tokenizer, tokenizer_digest
from lmforge.distributed import env
from lmforge.distributed.env import SINGLE, DistInfo
from lmforge.distributed.parallelize import (
    clip_grad_norm,
    gradient_sync,
    model_state_bytes,
    parallelize,
    resolve_strategy,
    unwrap,
)
from lmforge.errors import ConfigError, LmforgeError
from lmforge.evaluate import cross_entropy, mean_loss, stream_loss, summarize
from lmforge.generate import generate_tokens
from lmforge.init_from import load_into
from lmforge.models import build_model
from lmforge.train import mfu
from lmforge.train.metrics import MetricsLog, Progress, log, plot_losses
from lmforge.train.optim import build_optimizer, lr_at
from lmforge.train.preemption import Preemption
from lmforge.train.profiling import StepProfiler
from lmforge.train.tensorboard import TensorBoard

EVAL_SAMPLES = "samples.jsonl"  # the samples drawn at each evaluation


def resolve_device(name: str, *, local_rank: int = 0) -> torch.device:
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:  # torch's message lists every backend it knows; keep it to one line
            raise ConfigError(f"train.device: '{name}' is not a device; use auto, cpu, cuda, "
                              "cuda:N or mps") from None
        available = {"cpu": lambda: True, "cuda": torch.cuda.is_available,
                     "mps": torch.backends.mps.is_available}
        if device.type not in available or not available[device.type]():
            raise ConfigError(f"train.device={name}: no such device on this machine; use auto "
                              "or cpu")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"train.device={name}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s); use auto or cuda:0")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX).

    There bf16 matrix products run 3.5-4x faster than fp32 (benchmarks/results/), so
    autocast pays even for small models; without it bf16 is emulated and slower than fp32.
    The checks are private in torch, so their absence reads as "no".
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def uses_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast where asked for, or by default ('auto') where the hardware computes in
    bf16 natively: GPUs that support it and CPUs with AVX512-BF16 or AMX."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def _finite_state(state: Any) -> bool:
    """Whether a recurrent hidden state ([h] or (h, c)) holds only finite values."""
    parts = state if isinstance(state, tuple) else (state,)
    return all(bool(torch.isfinite(p).all()) for p in parts)


def autocast_for(dtype: torch.dtype, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if dtype == torch.bfloat16:
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
    nonfinite_in_a_row: int = 0  # steps skipped for a NaN/Inf loss or gradient norm, in a row
    skipped_steps: int = 0  # all the steps skipped so far


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, *, info: DistInfo = SINGLE,
                 init_state: dict[str, torch.Tensor] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.info = info
        self.log = log if info.is_main else (lambda message: None)
        self.device = resolve_device(cfg.train.device, local_rank=info.local_rank)
        # decided once: autocast, FSDP's gathered weights, the MFU peak and the log follow it
        bf16 = uses_bf16(cfg.train.precision, self.device)
        self.compute_dtype = torch.bfloat16 if bf16 else torch.float32
        self.autocast = autocast_for(self.compute_dtype, self.device)
        self.strategy = resolve_strategy(cfg.parallel.strategy, info)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank

        data_dir = Path(cfg.data.path)
        self.manifest = shards.verify(data_dir)
        self.tokenizer = load_tokenizer(data_dir / self.manifest["tokenizer"]["dir"])
        self._fit_vocab(self.manifest["tokenizer"]["vocab_size"])
        try:
            self.raw_model = build_model(cfg.model).to(self.device)
        except (MemoryError, torch.OutOfMemoryError, RuntimeError) as err:
            if not isinstance(err, MemoryError | torch.OutOfMemoryError) and "alloc" not in str(err):
                raise
            m = cfg.model
            raise ConfigError(f"the model ({m.n_layer} layers x {m.n_embd}, vocabulary "
                              f"{m.vocab_size:,}) does not fit in memory on {self.device}; "
                              "make it smaller (model.n_layer, model.n_embd)") from None
        if init_state is not None:  # --init-from: weights from elsewhere, before any sharding
            load_into(self.raw_model, init_state)
        self.recurrent = getattr(self.raw_model, "recurrent", False)
        self.flops_per_token = self.raw_model.flops_per_token()  # before sharding changes shapes
        self.peak, self.peak_source = math.nan, ""  # of one device, for MFU; set by fit()
        # DDP and FSDP2 both give one process's losses for recurrent models (tests/distributed/
        # test_recurrent_ddp.py): FSDP2 sets each gathered weight through the module's
        # __setattr__, which nn.RNNBase uses to keep its _flat_weights list current. On CUDA,
        # cuDNN then copies those weights into its own flat layout at every call (PyTorch
        # warns that they are not one contiguous chunk): correct, slower; prefer DDP there.
        if self.recurrent and self.strategy in ("tp", "fsdp+tp"):
            raise ConfigError(f"parallel.strategy={self.strategy}: tensor parallelism splits "
                              f"attention heads and MLPs, and model.arch={cfg.model.arch} has "
                              "neither; use parallel.strategy=ddp (or fsdp)")
        # FSDP gathers parameters in bf16 when the run computes in it (reductions stay fp32)
        param_dtype = torch.bfloat16 if self.compute_dtype == torch.bfloat16 else None
        self.model = parallelize(self.raw_model, cfg.parallel, info, strategy=self.strategy,
                                 device=self.device, param_dtype=param_dtype)
        self.optimizer = build_optimizer(self.model, cfg.optim, device_type=self.device.type,
                                         fused=self.strategy in ("single", "ddp"))
        if info.distributed:  # dropout differs between data-parallel ranks, not within a TP group
            torch.manual_seed(cfg.run.seed + info.dp_rank)
        loader = Streams if self.recurrent else RandomWindows
        self.train_data = loader(shards.open_split(data_dir, "train"),
                                 batch_size=cfg.train.batch_size,
                                 block_size=cfg.model.block_size, seed=cfg.run.seed,
                                 grad_accum=cfg.train.grad_accum, dp_rank=info.dp_rank,
                                 dp_size=info.dp_size)
        # recurrent models: the hidden state of this rank's streams, one per micro-batch
        self.states: list[Any] = [None] * cfg.train.grad_accum
        self.val_tokens = shards.open_split(data_dir, "val")
        self.counters = Counters()
        self._start = time.perf_counter()  # of fit(); eval records give the time since
        split = self.manifest["splits"]["train"]  # train loss → bits per byte, for TensorBoard
        self.tb = TensorBoard(self.run_dir, enabled=cfg.train.tensorboard and info.is_main,
                              bpb_factor=split["tokens"] / (split["bytes"] * math.log(2))
                              if split["bytes"] else math.nan)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", tensorboard=self.tb)
        # one record per data-parallel rank: the ranks of a tensor-parallel group share windows
        self.samples_log = (self.run_dir / f"samples-rank{info.rank}.jsonl"
                            if cfg.train.record_samples and info.tp_rank == 0 else None)

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
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state = {"counters": dataclasses.asdict(self.counters),
                 "loader": self.train_data.state_dict(),
                 "rng": env.gather_objects(rng, self.info),  # one per rank, in rank order
                 "world_size": self.info.world_size}
        if self.recurrent:
            state["streams"] = self._gather_streams()
        return checkpoint.save_checkpoint(
            self.run_dir, step=self.counters.step, model=self.model, optimizer=self.optimizer,
            trainer_state=state, model_config=dataclasses.asdict(self.cfg.model),
            keep_last=self.cfg.checkpoint.keep_last, is_best=is_best, info=self.info)

    def restore(self) -> Path:
        """Continue from the newest intact checkpoint of the run directory, which may have
        been written by another number of ranks or another strategy."""
        path = None
        if self.info.is_main:
            checkpoint.clean_partial(self.run_dir)
            path = checkpoint.find_checkpoint(self.run_dir, "latest")
            meta = checkpoint.verify(path)
            checkpoint.check_model_config(meta, dataclasses.asdict(self.cfg.model), path=path)
            self._check_tokenizer()
        path = env.broadcast_object(path, self.info)
        state = checkpoint.load_training_state(path, model=self.model, optimizer=self.optimizer)
        self.counters = Counters(**state["counters"])
        self.train_data.load_state_dict(state["loader"])
        if self.recurrent:
            self._scatter_streams(state["streams"])
        rngs = state["rng"]
        if self.info.rank < len(rngs):  # a rank the saving run did not have keeps its seed
            torch.set_rng_state(rngs[self.info.rank]["torch"])
            if "cuda" in rngs[self.info.rank] and self.device.type == "cuda":
                torch.cuda.set_rng_state(rngs[self.info.rank]["cuda"], self.device)
        if self.info.is_main:  # forget what the interrupted run did past its checkpoint
            self.metrics.truncate_after(self.counters.step)
            self.tb.purge_after(self.counters.step)
            for path in self.run_dir.glob("samples-rank*.jsonl"):  # of every rank it had
                MetricsLog(path).truncate_after(self.counters.step - 1)
            MetricsLog(self.run_dir / EVAL_SAMPLES).truncate_after(self.counters.step)
        env.barrier(self.info)
        saved_on = state.get("world_size", 1)
        self.log(f"resumed from {path} at step {self.counters.step}"
                 + (f" (saved on {saved_on} processes)" if saved_on != self.info.world_size else ""))
        return path

    def _check_tokenizer(self) -> None:
        """The dataset a run resumes on must have the tokenizer it was trained with: the same
        ids with other meanings would train on noise without any error."""
        ours = self.run_dir / "tokenizer"
        data = Path(self.cfg.data.path)
        theirs = data / self.manifest["tokenizer"]["dir"]
        if not ours.is_dir():  # a run from before runs kept their tokenizer
            return
        if tokenizer_digest(ours) != tokenizer_digest(theirs):
            raise ConfigError(f"the dataset at {data} has another tokenizer than the one "
                              f"{self.run_dir} was trained with ({ours}); resume with the run's "
                              "own data.path, or start a new run on this dataset")

    # --- hidden state of the streams (recurrent models) --------------------------------

    def _zero_state(self) -> Any:
        return self.raw_model.new_state(self.cfg.train.batch_size, device=self.device)

    def _stream_state(self, micro: int, starts: Any) -> Any:
        """The state to feed micro-batch `micro`: the one its streams ended the previous
        step with, zero in the rows that start their stream again."""
        state = self.states[micro]
        if state is None:
            return self._zero_state()
        restart = self.train_data.restarts(starts)
        if restart.any():
            state = self.raw_model.reset_state(state, torch.from_numpy(restart).to(self.device))
        return state

    def _gather_streams(self) -> list[torch.Tensor]:
        """Every stream's hidden state, all ranks together in the loader's lane order
        ((a*dp_size + r)*batch_size + row), on the CPU: [h] or [h, c], (L, global_batch, C)
        each. Lane order, not rank order, so a run resumed on another number of ranks
        hands each stream its own state."""
        mine = []
        for state in self.states:
            state = self._zero_state() if state is None else state
            parts = state if isinstance(state, tuple) else (state,)
            mine.append([p.detach().cpu() for p in parts])
        every = env.gather_objects((self.info.dp_rank, mine), self.info)
        by_dp = dict(every)  # ranks of one tensor-parallel group hold the same state
        order = [by_dp[r][a] for a in range(len(self.states)) for r in range(self.info.dp_size)]
        return [torch.cat(parts, dim=1) for parts in zip(*order, strict=True)]

    def _scatter_streams(self, saved: list[torch.Tensor]) -> None:
        """This rank's streams' hidden state, from every stream's (see _gather_streams)."""
        B, dp = self.cfg.train.batch_size, self.info.dp_size
        for a in range(len(self.states)):
            row = (a * dp + self.info.dp_rank) * B
            # as saved, dtype included (bf16 autocast may have made it bf16)
            parts = [p[:, row:row + B].to(self.device) for p in saved]
            self.states[a] = tuple(parts) if len(parts) == 2 else parts[0]

    # --- the loop ----------------------------------------------------------------------

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over train.grad_accum micro-batches: (mean loss, grad norm),
        averaged over the data-parallel ranks."""
        cfg = self.cfg
        lr = lr_at(self.counters.step, cfg=cfg.optim, max_steps=cfg.train.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        accum = cfg.train.grad_accum
        total = torch.zeros((), device=self.device)
        for micro in range(accum):
            step = self.train_data.step
            starts = self.train_data.next_starts()
            if self.samples_log is not None:
                MetricsLog(self.samples_log).write({"step": step, "micro": micro,
                                                    "starts": starts.tolist()})
            x, y = self.train_data.windows(starts)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            # gradients are reduced across ranks once, on the last micro-batch
            state = self._stream_state(micro, starts) if self.recurrent else None
            with gradient_sync(self.model, micro == accum - 1), self.autocast():
                if self.recurrent:
                    logits, state = self.model(x, state)
                    # truncated BPTT: the next step starts from here, without a graph
                    self.states[micro] = self.raw_model.detach_state(state)
                else:
                    logits, _ = self.model(x)
                loss = cross_entropy(logits, y)
                (loss / accum).backward()
            total += loss.detach()
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        norm = clip_grad_norm(list(self.model.parameters()), clip)
        loss = env.all_mean(total / accum, self.info)
        # A NaN or Inf skips the update, so the weights and the optimizer state stay as they
        # were. Loss and norm are the same on every rank (all-reduced), so every rank skips
        # alike. Deciding costs one host sync per step; an update cannot be undone afterwards.
        finite = bool(torch.isfinite(loss) & torch.isfinite(norm))
        if finite:
            self.optimizer.step()
        elif self.recurrent:  # a non-finite hidden state would poison all its stream's steps
            self.states = [s if s is None or _finite_state(s) else None for s in self.states]
        self.optimizer.zero_grad(set_to_none=True)
        # A skipped step still counts and has consumed its data, so the step number, the
        # schedule and the data order go on exactly as they would have.
        c = self.counters
        c.step += 1
        c.tokens += accum * x.numel() * self.info.dp_size
        c.nonfinite_in_a_row = 0 if finite else c.nonfinite_in_a_row + 1
        c.skipped_steps += not finite
        return loss, norm

    def _check_nonfinite(self, loss: torch.Tensor, norm: torch.Tensor) -> None:
        """Say that this step was skipped; stop the run when too many were, in a row."""
        c, o = self.counters, self.cfg.optim
        self.log(f"step {c.step}: loss {loss.item():.4g}, gradient norm {norm.item():.4g}: not "
                 f"finite, optimizer step skipped ({c.nonfinite_in_a_row} in a row; the run "
                 f"stops after {o.max_nonfinite})")
        if c.nonfinite_in_a_row <= o.max_nonfinite:
            return
        clip = (f"lower --optim.grad_clip (now {o.grad_clip})" if o.grad_clip > 0
                else "enable gradient clipping (--optim.grad_clip=1.0)")
        where = (f"continue from the last checkpoint with `lmforge train --resume {self.run_dir} "
                 f"--optim.lr=...`" if (checkpoint.checkpoints_dir(self.run_dir) / "latest").is_file()
                 else "start a new run")
        raise LmforgeError(f"step {c.step}: {c.nonfinite_in_a_row} non-finite losses or gradient "
                           f"norms in a row (optim.max_nonfinite={o.max_nonfinite}); training "
                           f"diverged: lower --optim.lr (now {o.lr:g}) or {clip}, and {where}")

    def evaluate(self) -> float:
        e, t = self.cfg.eval, self.cfg.train
        batch_size = e.batch_size or t.batch_size
        # the subset is as many windows as eval.batches global batches: the same windows
        # whatever the number of ranks sharing them
        if self.recurrent:  # as many streams, each e.batches chunks long
            return stream_loss(self.model, self.val_tokens, block_size=self.cfg.model.block_size,
                               lanes=batch_size * self.info.dp_size, max_chunks=e.batches,
                               device=self.device, autocast=self.autocast, info=self.info)
        windows = e.batches * batch_size * self.info.dp_size
        return mean_loss(self.model, self.val_tokens, block_size=self.cfg.model.block_size,
                         batch_size=batch_size, max_windows=windows,
                         device=self.device, autocast=self.autocast, info=self.info)

    def _after_eval(self, val_loss: float) -> bool:
        """Record an evaluation; save the best; True when early stopping says stop."""
        c, split = self.counters, self.manifest["splits"]["val"]
        figures = summarize(val_loss, tokens=split["tokens"], bytes_=split["bytes"])
        improved = val_loss < c.best_val
        if improved:
            c.best_val, c.best_step, c.evals_without_improvement = val_loss, c.step, 0
        else:
            c.evals_without_improvement += 1
        if self.info.is_main:
            self.metrics.write({"kind": "eval", "step": c.step, "val_loss": val_loss,
                                "val_bpb": figures["bits_per_byte"],
                                "val_ppl": figures["perplexity"], "tokens": c.tokens,
                                "elapsed_s": time.perf_counter() - self._start})
        self.log(f"step {c.step}: val loss {val_loss:.4f}, {figures['bits_per_byte']:.4f} bits/byte"
            + ("  (best)" if improved else ""))
        self._eval_samples()
        if improved and self.cfg.checkpoint.keep_best:
            self.save(is_best=True)
        patience = self.cfg.eval.early_stop_patience
        return patience > 0 and c.evals_without_improvement >= patience

    def _eval_samples(self) -> None:
        """A few samples at each evaluation, to watch the text improve (RUN/samples.jsonl,
        the report and TensorBoard); drawn with the run's seed, so each evaluation starts
        from the same random draws and only the model differs."""
        texts = self.samples(count=self.cfg.eval.samples_at_eval,
                             max_new_tokens=self.cfg.eval.sample_tokens)
        if texts and self.info.is_main:
            MetricsLog(self.run_dir / EVAL_SAMPLES).write({"step": self.counters.step,
                                                           "texts": texts})
            self.tb.samples(texts, step=self.counters.step, tag="samples/eval")

    def _peak_flops(self) -> float:
        """Peak FLOP/s of one device, for MFU (rank 0 alone reports it)."""
        if not self.info.is_main:
            return math.nan
        peak, source = mfu.peak_flops(self.device, self.compute_dtype,
                                      configured_tflops=self.cfg.train.peak_tflops)
        self.peak, self.peak_source = peak, source
        self.log(f"{self.flops_per_token / 1e6:,.1f} MFLOPs per token; device peak "
                 f"{peak / 1e12:,.3g} TFLOP/s ({source})")
        return peak

    def _check_peak(self, tokens_per_s: float) -> None:
        """A run faster than the probed peak shows the probe was taken on a busy machine: raise
        the cached figure to what this run reached, and say so."""
        achieved = tokens_per_s * self.flops_per_token / self.info.world_size
        if not (self.info.is_main and self.peak_source.startswith("matmul probe")
                and achieved > self.peak):
            return
        mfu.raise_cached_peak(self.device, self.compute_dtype, achieved)
        self.log(f"this run reached {achieved / 1e12:.3g} TFLOP/s per device, above the probed "
                 f"peak ({self.peak / 1e12:.3g}; measured while the machine was busy?), so MFU "
                 "above read high; the cached peak is raised, and `lmforge bench` measures it again")

    def fit(self) -> dict[str, Any]:
        cfg, c, info = self.cfg, self.counters, self.info
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        t = cfg.train
        tokens_per_step = self.train_data.global_batch * cfg.model.block_size
        precision = "bf16 autocast" if self.compute_dtype == torch.bfloat16 else "fp32"
        self.log(f"model: {cfg.model.arch}, {self.raw_model.num_params():,} parameters; device "
                 f"{self.device}, {precision}" + (f"; {info.world_size} processes, {self.strategy}"
                                     if info.distributed else ""))
        self.log(f"global batch: {t.batch_size} sequences x {t.grad_accum} accumulation x "
                 f"{info.dp_size} data-parallel = {self.train_data.global_batch} sequences, "
                 f"{tokens_per_step:,} tokens per step")
        if self.recurrent:
            d = self.train_data
            self.log(f"truncated BPTT: {d.global_batch} streams of {d.chunks} chunks x "
                     f"{d.block_size} tokens; one pass over the train split every {d.chunks} steps")
        if c.step >= t.max_steps:
            self.log(f"already trained to step {c.step}; raise --train.max_steps to continue")
            return {"step": c.step, "stopped": "max_steps", "best_val_loss": c.best_val}
        peak = self._peak_flops()

        def utilization(tokens_per_s: float) -> float:
            return mfu.mfu(tokens_per_s, flops_per_token=self.flops_per_token, peak=peak,
                           devices=info.world_size)

        progress = Progress(total=t.max_steps, initial=c.step, enabled=t.progress and info.is_main,
                            every=t.log_every, quiet=not info.is_main)
        profiler = StepProfiler(self.run_dir, steps=t.profile, rank=info.rank, device=self.device,
                                log=self.log)
        start = self._start = time.perf_counter()
        deadline = start + t.max_minutes * 60 if t.max_minutes > 0 else math.inf
        first_step, stopped, last_eval = c.step, "max_steps", -1
        startup: float | None = None
        self.model.train()
        step_time = 0.0  # time in training steps only, so tokens/s leaves out evaluation and saves
        signum = 0  # a SIGTERM or SIGINT that stops the run (train/preemption.py)
        with Preemption() as preemption:  # until the final checkpoint is written
            while c.step < t.max_steps:
                t0 = time.perf_counter()
                loss, norm = self.train_step()
                profiler.step()
                now = time.perf_counter()
                step_time += now - t0
                if c.step == first_step + 1:  # start-up cost: from process start to one step done
                    startup = now - STARTED_AT
                    self.log(f"first step done {startup:.1f}s after start")
                skipped = c.nonfinite_in_a_row > 0
                if c.step % t.log_every == 0 or c.step == t.max_steps or skipped:
                    tok_s = (c.step - first_step) * tokens_per_step / max(step_time, 1e-9)
                    record = {"kind": "train", "step": c.step, "loss": loss.item(),
                              "grad_norm": norm.item(), "lr": self.optimizer.param_groups[0]["lr"],
                              "tokens": c.tokens, "tokens_per_s": tok_s, "mfu": utilization(tok_s),
                              "elapsed_s": now - start, "skipped": skipped,
                              "skipped_steps": c.skipped_steps}
                    if startup is not None:  # in the first record written
                        record["startup_s"], startup = startup, None
                        record["precision"] = str(self.compute_dtype).removeprefix("torch.")
                    if info.is_main:
                        self.metrics.write(record)
                    progress.update(c.step, loss=record["loss"], tokens_per_s=tok_s,
                                    lr=record["lr"], mfu=record["mfu"])
                if skipped:
                    self._check_nonfinite(loss, norm)
                if cfg.eval.every and c.step % cfg.eval.every == 0:
                    last_eval = c.step
                    if self._after_eval(self.evaluate()):
                        stopped = "early_stop"
                        break
                if cfg.checkpoint.every and c.step % cfg.checkpoint.every == 0:
                    self.save()
                signum = preemption.stop_signal(info, self.device)  # on any rank: all stop here
                if signum:
                    stopped = "signal"
                    self.log(f"received {signal.Signals(signum).name}: saving a checkpoint at "
                             f"step {c.step}, then stopping; signal again to stop at once")
                    break
                # every rank must stop at the same step: rank 0's clock decides
                if t.max_minutes > 0 and env.broadcast_object(now > deadline, info):
                    stopped = "max_minutes"
                    break
            progress.close()
            profiler.close()
            # No extra evaluation after a signal: it would cost the grace time, and change the
            # early-stopping record that the resumed run must continue unchanged.
            if last_eval != c.step and not signum:
                self._after_eval(self.evaluate())
            self.save()
        elapsed = time.perf_counter() - start
        self._record_memory()
        if info.is_main:
            plot_losses(self.metrics.read(), self.run_dir / "loss.png", title=str(self.run_dir))
        if signum:
            self.log(f"stopped at step {c.step} on {signal.Signals(signum).name} after "
                     f"{elapsed:.1f}s; checkpoint saved; continue with "
                     f"`lmforge train --resume {self.run_dir}`")
        else:
            self.log(f"stopped at step {c.step} ({stopped}) after {elapsed:.1f}s; best val loss "
                     f"{c.best_val:.4f} at step {c.best_step}; run saved in {self.run_dir}")
        tok_s = (c.step - first_step) * tokens_per_step / max(step_time, 1e-9)
        self._check_peak(tok_s)
        return {"step": c.step, "stopped": stopped, "signal": signum, "best_val_loss": c.best_val,
                "elapsed_s": elapsed, "tokens_per_s": tok_s, "mfu": utilization(tok_s)}

    def _record_memory(self) -> None:
        """What each rank held: parameters, gradients (as large as the parameters they belong
        to) and optimizer state, and the process's peak resident memory."""
        state = env.gather_objects(model_state_bytes(self.model, self.optimizer), self.info)
        rss = env.gather_objects(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                 self.info)
        if self.info.is_main:
            self.metrics.write({"kind": "state", "step": self.counters.step,
                                "state_bytes_per_rank": max(state), "peak_rss_mb_per_rank": rss})

    def samples(self, *, count: int, max_new_tokens: int) -> list[str]:
        """Texts generated from an end-of-text token, with a generator of their own so that
        sampling never moves the training RNG. Under FSDP every rank takes part (the forward
        gathers parameters); under tensor parallelism the heads are split, which the KV
        cache does not follow, so there are no samples."""
        if count <= 0 or max_new_tokens <= 0 or self.strategy in ("tp", "fsdp+tp"):
            return []
        if self.strategy == "ddp" and not self.info.is_main:
            return []
        model = self.model if self.strategy == "fsdp" else unwrap(self.model)
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.run.seed)
        prompt = torch.full((count, 1), self.tokenizer.eot_id, dtype=torch.long, device=self.device)
        steps = list(generate_tokens(model, prompt, max_new_tokens=max_new_tokens,
                                     temperature=0.8, top_k=50, generator=gen))
        ids = torch.stack(steps, dim=1).tolist()
        self.model.train()
        return [self.tokenizer.decode(row) for row in ids] if self.info.is_main else []
