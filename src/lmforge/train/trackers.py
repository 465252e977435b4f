"""Experiment trackers for a run: TensorBoard, Weights & Biases and MLflow (log.to).

Rank 0 alone tracks. Each tracker gets the resolved config as hyper-parameters, flattened
to `section.field`, and the scalars of every metrics.jsonl record under the same names:

    train/loss  train/bpb  train/grad_norm  train/lr  train/tokens_per_s  train/mfu
    val/loss    val/bpb    val/perplexity
    samples     (text: the samples at the end of training)
    samples/eval  (text: the samples drawn at each evaluation)

so TensorBoard, W&B, MLflow and the run report show the same numbers. The trainer talks to
one `Trackers`, which fans each call out to the trackers log.to names:

    tensorboard  RUN/tb/ event files (`tensorboard --logdir runs/`); the config as hparams
                 and as text
    wandb        an offline run in RUN/wandb/ (`wandb sync` uploads it) unless WANDB_MODE
                 says otherwise; project WANDB_PROJECT or lmforge
    mlflow       RUN/mlruns (`mlflow ui --backend-store-uri RUN/mlruns`) unless
                 MLFLOW_TRACKING_URI is set; experiment MLFLOW_EXPERIMENT_NAME or lmforge

Trackers are opened on the first record, not before: importing them takes a second or two
each, which a run that fails at start-up should not pay. A resumed run redoes the steps
after its checkpoint: TensorBoard hides the first attempt's events from there on, and W&B
and MLflow, whose steps cannot go back, get a new run per attempt, named after the run
directory (W&B groups them under it).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from lmforge.config import Config, require_trackers, to_dict
from lmforge.console import log
from lmforge.rundir import RunDir

# metrics.jsonl field → tracker tag, per kind of record
TAGS = {
    "train": {"loss": "train/loss", "bpb": "train/bpb", "grad_norm": "train/grad_norm",
              "lr": "train/lr", "tokens_per_s": "train/tokens_per_s", "mfu": "train/mfu"},
    "eval": {"val_loss": "val/loss", "val_bpb": "val/bpb", "val_ppl": "val/perplexity"},
}
_MLFLOW_PARAM_CHARS = 6000  # MLflow refuses longer parameter values
_MLFLOW_BATCH = 100  # parameters per log_batch call, MLflow's limit


@dataclass(frozen=True)
class TrackedRun:
    """What every tracker is told about the run it tracks."""

    dir: RunDir
    config: Config
    first_step: int = 0  # the step this attempt starts after (a resumed run's checkpoint)

    @property
    def name(self) -> str:
        return self.dir.path.resolve().name

    def hparams(self) -> dict[str, Any]:
        """The resolved config as `section.field` → value (str, int, float or bool)."""
        return {f"{section}.{name}": value for section, fields in to_dict(self.config).items()
                for name, value in fields.items()}

    def config_toml(self) -> str:
        return tomli_w.dumps(to_dict(self.config))


class Tracker(ABC):
    """One experiment tracker; constructed open, with the config already logged."""

    @abstractmethod
    def scalars(self, values: dict[str, float], *, step: int) -> None:
        """Tag → value at `step`."""

    @abstractmethod
    def samples(self, tag: str, texts: list[str], *, step: int) -> None:
        """Generated texts at `step` (at least one)."""

    @abstractmethod
    def flush(self) -> None:
        """Make what was logged visible now (after each evaluation)."""

    @abstractmethod
    def close(self) -> None: ...


class TensorBoardTracker(Tracker):
    def __init__(self, run: TrackedRun) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # purge_step: a resumed run redoes the steps after its checkpoint; TensorBoard
        # hides the first attempt's events from there on instead of showing both
        purge = run.first_step + 1 if run.first_step else None
        self.writer = SummaryWriter(str(run.dir.tensorboard), purge_step=purge, flush_secs=10)
        # hparams into this run's own event file (add_hparams would make a sub-run), with
        # the validation scalars as its metrics, so the HPARAMS tab lines runs up by them
        metrics = dict.fromkeys([*TAGS["eval"].values(), "train/loss"], math.nan)
        for summary in hparams(run.hparams(), metrics):
            self.writer._get_file_writer().add_summary(summary)
        self.writer.add_text("config", _markdown_code(run.config_toml()), run.first_step)

    def scalars(self, values: dict[str, float], *, step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def samples(self, tag: str, texts: list[str], *, step: int) -> None:
        # TensorBoard renders text as markdown: one code block per sample
        shown = "\n\n".join(f"**sample {i + 1}**\n\n{_markdown_code(t)}"
                            for i, t in enumerate(texts))
        self.writer.add_text(tag, shown, step)
        self.writer.flush()

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, run: TrackedRun) -> None:
        import wandb

        self.wandb = wandb
        resumed = f" (resumed at step {run.first_step})" if run.first_step else ""
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "lmforge"), name=run.name + resumed,
            group=run.name, config=run.hparams(),
            dir=str(run.dir.path),  # W&B writes into RUN/wandb/
            job_type="resume" if run.first_step else "train",
            # offline unless the user chose a mode: no account and no network needed
            mode=None if os.environ.get("WANDB_MODE") else "offline",
            # console off: W&B would otherwise wrap stdout, and the progress bar with it
            settings=wandb.Settings(silent=True, console="off"))
        if self.run.offline:  # run.dir is the run's files/ folder
            log(f"wandb: offline run in {Path(self.run.dir).parent}; `wandb sync` uploads it")
        else:
            log(f"wandb: {self.run.url}")

    def scalars(self, values: dict[str, float], *, step: int) -> None:
        self.run.log(values, step=step)

    def samples(self, tag: str, texts: list[str], *, step: int) -> None:
        table = self.wandb.Table(columns=["sample"], data=[[t] for t in texts])
        self.run.log({tag: table}, step=step)

    def flush(self) -> None:
        pass  # W&B's service process writes as records arrive

    def close(self) -> None:
        self.run.finish()


class MlflowTracker(Tracker):
    def __init__(self, run: TrackedRun) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = run.dir.mlruns.resolve().as_uri()
            # MLflow 3 keeps its file store in maintenance mode behind this switch; a
            # directory in the run needs no server and no database package
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = _mlflow_experiment(self.client,
                                        os.environ.get("MLFLOW_EXPERIMENT_NAME", "lmforge"))
        resumed = f" (resumed at step {run.first_step})" if run.first_step else ""
        self.run_id = self.client.create_run(
            experiment, run_name=run.name + resumed,
            tags={"lmforge.run_dir": str(run.dir.path.resolve())}).info.run_id
        params = [Param(key, str(value)[:_MLFLOW_PARAM_CHARS])
                  for key, value in run.hparams().items()]
        for i in range(0, len(params), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + _MLFLOW_BATCH])
        self.client.log_text(self.run_id, run.config_toml(), "config.toml")

    def scalars(self, values: dict[str, float], *, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(tag, value, now, step)
                                                    for tag, value in values.items()])

    def samples(self, tag: str, texts: list[str], *, step: int) -> None:
        text = "".join(f"----- sample {i + 1} -----\n{t}\n" for i, t in enumerate(texts))
        self.client.log_text(self.run_id, text, f"{tag}/step_{step:08d}.txt")

    def flush(self) -> None:
        pass  # every MlflowClient call has written its files when it returns

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _mlflow_experiment(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:  # another run created it in the meantime
        return str(client.get_experiment_by_name(name).experiment_id)


OPENERS: dict[str, Callable[[TrackedRun], Tracker]] = {
    "tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


class Trackers:
    """The trackers of log.to, as one: what the trainer and the metrics log call. Empty (and
    a no-op) on ranks other than 0, or with log.to=none."""

    def __init__(self, run: RunDir, cfg: Config, *, enabled: bool,
                 bpb_factor: float = math.nan) -> None:
        """bpb_factor: train loss (nats per token) times this is bits per byte, that is
        tokens / (bytes x ln 2) of the train split; NaN leaves train/bpb out."""
        self.names = cfg.log.trackers if enabled else ()
        if self.names:
            require_trackers(cfg.log)  # a run planned in code (tests, bench) skipped the plan
        self.run = TrackedRun(dir=run, config=cfg)
        self.bpb_factor = bpb_factor
        self._open: list[Tracker] | None = None

    def _trackers(self) -> list[Tracker]:
        if self._open is None:
            self._open = [OPENERS[name](self.run) for name in self.names]
        return self._open

    def purge_after(self, step: int) -> None:
        """This attempt redoes the steps after `step` (a resumed run's checkpoint)."""
        self.run = dataclasses.replace(self.run, first_step=step)

    def write(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record ({"kind": "train" | "eval", "step": ..., ...})."""
        tags = TAGS.get(record.get("kind", ""))
        if not self.names or tags is None:
            return
        values = dict(record)
        if record["kind"] == "train" and not math.isnan(self.bpb_factor):
            values["bpb"] = record["loss"] * self.bpb_factor
        scalars = {tag: float(values[key]) for key, tag in tags.items()
                   if values.get(key) is not None}  # null: no figure (an MFU above 100%)
        for tracker in self._trackers():
            tracker.scalars(scalars, step=record["step"])
            if record["kind"] == "eval":
                tracker.flush()

    def samples(self, texts: list[str], *, step: int, tag: str = "samples") -> None:
        if not self.names or not texts:
            return
        for tracker in self._trackers():
            tracker.samples(tag, texts, step=step)

    def close(self) -> None:
        for tracker in self._open or []:
            tracker.close()
        self._open = None


def _markdown_code(text: str) -> str:
    """`text` as a fenced code block that no run of backticks inside it can end early."""
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"
