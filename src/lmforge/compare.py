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

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.config import Config, load_config, recipe_path
from lmforge.errors import ConfigError

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
            tokens_per_step = t.batch_size * t.grad_accum * cfg.model.block_size
            t.max_steps = max(1, math.ceil(budget.tokens / tokens_per_step))
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


def dataset(data: str, *, out: Path, tokenizer: str, log: Callable[[str], None]) -> Path:
    """A prepared dataset: `data` itself, or `data` prepared into OUT/data."""
    path = Path(data)
    if (path / "manifest.json").is_file():
        return path.resolve()
    from lmforge.data.prepare import prepare

    target = out / "data"
    prepare([data], target, tokenizer=tokenizer, log=log, progress=False)
    return target.resolve()


def train_one(name: str, cfg: Config, *, log: Callable[[str], None]) -> dict[str, Any]:
    """Train one recipe in its run directory; its row of the table."""
    from lmforge.data import shards
    from lmforge.evaluate import split_loss, summarize
    from lmforge.rundir import load_run, write_config
    from lmforge.train.trainer import Trainer

    run_dir = Path(cfg.run.dir)
    log(f"=== {name}: {cfg.model.arch}, training in {run_dir}")
    trainer = Trainer(cfg, run_dir)
    trainer.start_files()
    write_config(cfg, run_dir)
    result = trainer.fit()
    trainer.tb.close()
    if result["signal"]:  # the run is saved (resumable); a stop request stops the comparison too
        raise KeyboardInterrupt
    params, tokens = trainer.raw_model.num_params(), trainer.counters.tokens
    del trainer
    which = "best" if (run_dir / "checkpoints" / "best").is_file() else "latest"
    run = load_run(run_dir, which=which)
    data = Path(cfg.data.path)
    split = shards.verify(data)["splits"]["val"]
    t0 = time.perf_counter()
    loss = split_loss(run.model, shards.open_split(data, "val"), block_size=cfg.model.block_size,
                      batch_size=16, batches=0)
    log(f"{name}: full validation split, {which} checkpoint (step {run.step}): loss {loss:.4f} "
        f"({time.perf_counter() - t0:.1f}s)")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [{k: r[k] for k in ("step", "tokens", "elapsed_s", "val_loss", "val_bpb")}
             for r in records if r["kind"] == "eval"]
    return {"recipe": name, "arch": cfg.model.arch, "run": str(run_dir), "params": params,
            "steps": result["step"], "tokens": tokens,
            "tokens_per_s": result["tokens_per_s"], "time_s": result["elapsed_s"],
            "stopped": result["stopped"], "best_val_loss": result["best_val_loss"],
            "val_loss": loss, "bits_per_byte": summarize(loss, tokens=split["tokens"],
                                                         bytes_=split["bytes"])["bits_per_byte"],
            "checkpoint_step": run.step, "curve": curve}


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as aligned text; val loss and bits/byte are on the whole validation split."""
    head = ["recipe", "arch", "params", "tokens/s", "tokens", "time s", "best val loss",
            "full val loss", "bits/byte"]
    body = [[r["recipe"], r["arch"], f"{r['params']:,}", f"{r['tokens_per_s']:,.0f}",
             f"{r['tokens']:,}", f"{r['time_s']:.1f}", f"{r['best_val_loss']:.4f}",
             f"{r['val_loss']:.4f}", f"{r['bits_per_byte']:.4f}"] for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def fmt(line: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(line, widths, strict=True)))

    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *map(fmt, body)])


def plot(rows: list[dict[str, Any]], path: Path, *, title: str) -> None:
    """Validation bits per byte against training time and against tokens, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_time, by_tokens) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, sharey=True)
    for r in rows:
        curve = r["curve"]
        label = f"{r['recipe']} ({r['arch']}, {r['params'] / 1e6:.2f}M)"
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
            log: Callable[[str], None]) -> tuple[Path, list[dict[str, Any]]]:
    """Train every recipe, write OUT/compare.json and OUT/compare.png; (OUT, rows)."""
    recipes = list(recipes) or list(DEFAULT_RECIPES)
    for recipe in recipes:
        recipe_path(recipe)  # an unknown recipe fails before any data is prepared
    out = out_dir(out)
    plan(recipes, data=Path(data), out=out, budget=budget, overrides=overrides)  # check first
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        data_dir = dataset(data, out=out, tokenizer=tokenizer, log=log)
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
        {"data": str(data_dir), "budget": dataclasses.asdict(budget), "runs": rows}, indent=2))
    return out, rows


def compare_command(args: argparse.Namespace, *, overrides: dict[str, str]) -> int:
    """`lmforge compare`: the table on stdout, the progress of each run on stderr."""
    from lmforge.train.metrics import log

    budget = check_budget(args.minutes, args.tokens)
    out, rows = compare(args.recipes, data=args.data, out=args.out, budget=budget,
                        tokenizer=args.tokenizer, overrides=overrides, log=log)
    print(table(rows))
    print(f"\nruns, compare.json and compare.png in {out}")
    sys.stdout.flush()
    return 0
