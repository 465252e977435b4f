"""`lmforge compare`: several recipes on the same prepared data for the same budget, one
table and one plot: the measured answer to "which architecture?".

Each recipe trains in a normal run directory, OUT/<recipe>, so every run can be evaluated,
sampled, resumed or exported afterwards like any other. The budget is either

- wall-clock minutes: each recipe trains until its own train.max_steps or for that many
  minutes, whichever comes first (train.max_minutes; the recipe's schedule is left as it
  was tuned), or
- tokens: each recipe trains for the number of steps that reads that many tokens with its
  own batch and context, and its learning-rate schedule is fitted to those steps.

After training, each run's best checkpoint is evaluated on the whole validation split
(Transformers in windows, recurrent models as streams; see evaluate.py). The table goes to
stdout, and OUT/compare.json and OUT/compare.png (validation bits per byte against time and
against tokens, from the periodic evaluations) beside the runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.config import Config, load_config
from lmforge.data.shards import MANIFEST
from lmforge.errors import ConfigError
from lmforge.recipes import recipe_path
from lmforge.rundir import RunDir
from lmforge.train.ramps import Warmup, steps_for_tokens

DEFAULT_RECIPES = ("shakespeare_char", "lstm_char")
EVAL_POINTS = 10  # periodic evaluations per run under a token budget, for the curves


@dataclasses.dataclass
class Budget:
    minutes: float = 0.0
    tokens: int = 0

    def describe(self) -> str:
        return f"{self.minutes:g} minutes" if self.minutes else f"{self.tokens:,} tokens"


def check_budget(minutes: float | None, tokens: int | None) -> Budget:
    """One budget: --minutes or --tokens (5 minutes when neither is given)."""
    if minutes is not None and tokens is not None:
        raise ConfigError("give --minutes or --tokens as the budget, not both")
    if minutes is not None and not (minutes > 0 and math.isfinite(minutes)):
        raise ConfigError(f"--minutes must be a positive number, got {minutes}")
    if tokens is not None and tokens < 1:
        raise ConfigError(f"--tokens must be a positive number of tokens, got {tokens}")
    return Budget(tokens=tokens) if tokens is not None else Budget(minutes=minutes or 5.0)


def plan(recipes: list[str], *, data: Path, out: Path, budget: Budget,
         overrides: dict[str, str]) -> list[tuple[str, Config]]:
    """(name, config) of every run, each checked before anything trains."""
    names = [recipe_path(r).stem for r in recipes]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"recipe '{twice[0]}' is given twice; each recipe trains once")
    runs = []
    for recipe, name in zip(recipes, names, strict=True):
        fixed = {"data.path": str(data), "data.source": "", "run.dir": str(out / name)}
        cfg = load_config(recipe, {**overrides, **fixed})
        t = cfg.train
        if budget.minutes:
            t.max_minutes = budget.minutes
        else:
            t.max_steps = steps_for_tokens(Warmup.from_config(cfg), budget.tokens,
                                           grad_accum=t.grad_accum)
            t.max_minutes = 0.0
            cfg.optim.decay_steps = 0  # the schedule ends with the budget
            cfg.optim.warmup_steps = min(cfg.optim.warmup_steps, t.max_steps // 10)
            if "eval.every" not in overrides:
                cfg.eval.every = max(1, t.max_steps // EVAL_POINTS)
        if "eval.samples" not in overrides:
            cfg.eval.samples = 0
        runs.append((name, cfg))
    return runs


def out_dir(out: Path | None) -> Path:
    """An explicit --out must not hold a comparison yet; the default runs/compare is
    numbered (-2, -3, …) instead, so no earlier comparison is overwritten."""
    if out is not None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"--out {out} already exists and is not empty; choose another --out")
        return out
    path, n = Path("runs") / "compare", 1
    while path.exists():
        n += 1
        path = path.with_name(f"compare-{n}")
    return path


def dataset(data: str, *, out: Path, tokenizer: str, overrides: dict[str, str],
            log: Callable[[str], None]) -> Path:
    """A prepared dataset: `data` itself, or `data` prepared into OUT/data as `lmforge train`
    prepares a recipe's data.source (the --clean.* and --data.* overrides apply)."""
    path = Path(data)
    if (path / MANIFEST).is_file():
        return path.resolve()
    from lmforge.data.prepare import ensure_dataset

    fixed = {"data.path": str(out / "data"), "data.source": data, "tokenizer.kind": tokenizer,
             "train.progress": "false"}
    ensure_dataset(load_config(None, {**overrides, **fixed}), log=log)
    return (out / "data").resolve()


@dataclasses.dataclass(frozen=True)
class Row:
    """One recipe's line of the table (and of compare.json)."""

    recipe: str
    arch: str
    run: str
    params: int
    steps: int
    tokens: int
    tokens_per_s: float
    time_s: float
    stopped: str
    best_val_loss: float
    val_loss: float  # of the evaluated checkpoint, on the whole validation split
    bits_per_byte: float
    checkpoint_step: int
    curve: list[dict[str, Any]]  # the periodic evaluations: step, tokens, elapsed_s, val_loss, val_bpb


def train_one(name: str, cfg: Config, *, log: Callable[[str], None]) -> Row:
    """Train one recipe in its run directory, as `lmforge train` does; its row of the table."""
    from lmforge.data import shards
    from lmforge.evaluate import split_loss, summarize
    from lmforge.plan import local_plan
    from lmforge.runs.load import load_run
    from lmforge.train.metrics import MetricsLog
    from lmforge.train.session import train_run

    run = RunDir(Path(cfg.run.dir))
    log(f"=== {name}: {cfg.model.arch}, training in {run}")
    outcome = train_run(local_plan(cfg, run))
    if outcome.fit is None or outcome.exit_code:  # stopped by a signal: saved (resumable),
        raise KeyboardInterrupt  # and a stop request stops the comparison too
    result = outcome.fit
    loaded = load_run(run, which="best" if run.pointer("best") else "latest")
    data = Path(cfg.data.path)
    split = shards.verify(data)["splits"]["val"]
    t0 = time.perf_counter()
    loss = split_loss(loaded.model, shards.open_split(data, "val"),
                      block_size=cfg.model.block_size, batch_size=16, batches=0)
    log(f"{name}: full validation split, {loaded.checkpoint.name} (step {loaded.step}): loss "
        f"{loss:.4f} ({time.perf_counter() - t0:.1f}s)")
    records = MetricsLog(run.metrics).read()  # what a full disk or a crash cut short is left out
    curve = [{k: r[k] for k in ("step", "tokens", "elapsed_s", "val_loss", "val_bpb")}
             for r in records if r["kind"] == "eval"]
    return Row(recipe=name, arch=cfg.model.arch, run=str(run), params=outcome.params,
               steps=result.step, tokens=outcome.tokens, tokens_per_s=result.tokens_per_s,
               time_s=result.elapsed_s, stopped=result.stopped,
               best_val_loss=result.best_val_loss, val_loss=loss,
               bits_per_byte=summarize(loss, tokens=split["tokens"],
                                       bytes_=split["bytes"]).bits_per_byte,
               checkpoint_step=loaded.step, curve=curve)


def table(rows: list[Row]) -> str:
    """The rows as aligned text; val loss and bits/byte are on the whole validation split."""
    head = ["recipe", "arch", "params", "tokens/s", "tokens", "time s", "best val loss",
            "full val loss", "bits/byte"]
    body = [[r.recipe, r.arch, f"{r.params:,}", f"{r.tokens_per_s:,.0f}", f"{r.tokens:,}",
             f"{r.time_s:.1f}", f"{r.best_val_loss:.4f}", f"{r.val_loss:.4f}",
             f"{r.bits_per_byte:.4f}"] for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def fmt(line: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(line, widths, strict=True)))

    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *map(fmt, body)])


def plot(rows: list[Row], path: Path, *, title: str) -> None:
    """Validation bits per byte against training time and against tokens, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_time, by_tokens) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, sharey=True)
    for r in rows:
        curve = r.curve
        label = f"{r.recipe} ({r.arch}, {r.params / 1e6:.2f}M)"
        by_time.plot([p["elapsed_s"] for p in curve], [p["val_bpb"] for p in curve], "o-",
                     label=label, markersize=3)
        by_tokens.plot([p["tokens"] for p in curve], [p["val_bpb"] for p in curve], "o-",
                       label=label, markersize=3)
    by_time.set_xlabel("wall-clock time (s)")
    by_tokens.set_xlabel("training tokens")
    by_time.set_ylabel("validation bits per byte")
    for ax in (by_time, by_tokens):
        ax.grid(alpha=0.3)
    by_tokens.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def compare(recipes: list[str], *, data: str, out: Path | None, budget: Budget,
            tokenizer: str, overrides: dict[str, str],
            log: Callable[[str], None]) -> tuple[Path, list[Row]]:
    """Train every recipe, write OUT/compare.json and OUT/compare.png; (OUT, rows)."""
    recipes = list(recipes) or list(DEFAULT_RECIPES)
    for recipe in recipes:
        recipe_path(recipe)  # an unknown recipe fails before any data is prepared
    out = out_dir(out)
    plan(recipes, data=Path(data), out=out, budget=budget, overrides=overrides)  # check first
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        data_dir = dataset(data, out=out, tokenizer=tokenizer, overrides=overrides, log=log)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # a bad --data leaves nothing behind
        raise
    runs = plan(recipes, data=data_dir, out=out, budget=budget, overrides=overrides)
    log(f"comparing {', '.join(name for name, _ in runs)} on {data_dir} for {budget.describe()} each")
    rows = [train_one(name, cfg, log=log) for name, cfg in runs]
    title = f"{Path(data).name}, {budget.describe()} per run"
    plot(rows, out / "compare.png", title=title)
    (out / "compare.json").write_text(json.dumps(
        {"data": str(data_dir), "budget": dataclasses.asdict(budget),
         "runs": [dataclasses.asdict(r) for r in rows]}, indent=2))
    return out, rows
