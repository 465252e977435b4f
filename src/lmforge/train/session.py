"""One training run from its plan to its end: what `lmforge train` and `lmforge compare` do
between planning a run and reporting on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lmforge import collector
from lmforge.console import log
from lmforge.distributed import env
from lmforge.interop.init_from import load_state
from lmforge.models import GPT, LanguageModel, RecurrentLM, TrainedModel
from lmforge.plan import RunPlan
from lmforge.rundir import write_config
from lmforge.train import preemption
from lmforge.train.objective import Objective
from lmforge.train.state import FitResult
from lmforge.train.trainer import Trainer


@dataclass(frozen=True)
class TrainOutcome:
    """How a run ended: the exit code for the process, the result of the loop (None when the
    run had already finished before this call), and what the run is made of."""

    exit_code: int
    fit: FitResult | None = None
    params: int = 0
    tokens: int = 0

    @property
    def trained(self) -> bool:
        """Whether the run trained to an end (not stopped by a signal, not already done)."""
        return self.fit is not None and not self.fit.signal


def train_run(plan: RunPlan, *, wrap: Callable[[LanguageModel], TrainedModel] | None = None,
              objective: Callable[[Trainer], Objective] | None = None) -> TrainOutcome:
    """Train the planned run: a new one from its first step (and --init-from's weights), or a
    resumed one from its checkpoint; then the samples of its end. A run already trained to
    train.max_steps says so and does nothing (exit 0); one stopped by a signal is saved and
    exits 128 + the signal's number, so no scheduler mistakes it for a finished run.
    A task (lmforge.tasks) gives its head (`wrap`) and `objective`, as Trainer takes them."""
    cfg, run = plan.cfg, plan.run
    if plan.resume_from is not None and plan.resume_step >= cfg.train.max_steps:
        log(f"{run} already finished at step {plan.resume_step} (train.max_steps="
            f"{cfg.train.max_steps}); raise --train.max_steps to train further")
        return TrainOutcome(exit_code=0)
    # rank 0 reads --init-from's weights; the other ranks receive them from it. A LoRA run's
    # checkpoints hold its adapters only, so a resumed one reads its base again.
    needs_base = plan.resume_from is None or cfg.lora.r > 0
    init_state = load_state(cfg) if cfg.run.init_from and needs_base and plan.is_main else None
    trainer = Trainer(plan, init_state=init_state, wrap=wrap, objective=objective)
    if plan.resume_from is not None:
        trainer.restore(plan.resume_from)
    else:
        if plan.restart:
            trainer.forget_after(0)
        if plan.is_main:
            trainer.start_files()
            write_config(cfg, run)
    collector.resume()  # start-up is over: the collector from here on (collector.py)
    result = trainer.fit()
    outcome = TrainOutcome(exit_code=0, fit=result, params=trainer.raw_model.num_params(),
                           tokens=trainer.counters.tokens)
    if result.signal:  # preempted: saved, and no time to spend on samples and reports
        trainer.trackers.close()
        env.barrier(plan.info)  # torchrun ends every rank once one exits: let all finish first
        return TrainOutcome(exit_code=preemption.exit_code(result.signal), fit=result,
                            params=outcome.params, tokens=outcome.tokens)
    generates = isinstance(trainer.raw_model, GPT | RecurrentLM)  # not a task's head
    texts = (trainer.samples(count=cfg.eval.samples, max_new_tokens=cfg.eval.sample_tokens)
             if generates else [])
    if texts:
        shown = "".join(f"\n----- sample {i + 1} -----\n{t}\n" for i, t in enumerate(texts))
        run.samples.write_text(shown.lstrip("\n"))
        print(shown)
    trainer.trackers.samples(texts, step=trainer.counters.step)
    trainer.trackers.close()
    return outcome
