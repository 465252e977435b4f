"""Run reports: one HTML page that explains a run, or overlays several for comparison.

    lmforge report RUN              RUN/report.html and RUN/figures/*.png
    lmforge report RUN_A RUN_B …    compare-A-B…/report.html beside RUN_A, and its figures/
    … --out DIR                     DIR/report.html and DIR/figures/*.png

Training writes the single-run report when it ends (train.report). The page is
self-contained: the figures are PNGs embedded as base64 (and written beside it as files,
for slides and issues), the styles are inline, and there is no script and no link to
anything outside the file, so it opens offline, from an archive or an e-mail.

It shows: a summary table; loss and bits per byte against step and against wall time;
learning rate, gradient norm, throughput and MFU; the resolved config (for several runs, the
keys that differ); the dataset's report (what prepare read, dropped and wrote); the
samples at the end and at each evaluation; the checkpoints; and for a classification run
its test figures per label (report_task). Everything comes from files the run directory
already has (config.toml, metrics.jsonl, samples.txt, samples.jsonl, checkpoints/,
test_metrics.json) and from the dataset's manifest.json and report.json, so a report can be
made for a run that is still training. What is damaged is left out and named on the page; only a
config.toml that cannot be read stops the report.
"""

from __future__ import annotations

import base64
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge import rundir
from lmforge.errors import LmforgeError
from lmforge.files import write_text_atomic
from lmforge.rundir import FIGURES_DIR, REPORT_FILE, WEIGHTS_FILE, RunDir, read_run_config
from lmforge.runs import report_task
from lmforge.runs.page_text import escape, literal, png, pyplot


@dataclass
class RunData:
    """What a report needs from one run directory; what was damaged is left out, and noted."""

    path: Path
    name: str
    config: dict[str, Any]
    config_text: str
    train: list[dict[str, Any]] = field(default_factory=list)  # with "time_s": cumulative
    evals: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    data_report: dict[str, Any] | None = None
    samples: str = ""
    eval_samples: list[dict[str, Any]] = field(default_factory=list)  # {"step", "texts"}
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    params: int | None = None
    test: report_task.ClassifierResults | None = None  # a classification run's test figures
    notes: list[str] = field(default_factory=list)  # what was damaged and left out

    @property
    def train_bpb_factor(self) -> float:
        """Train loss (nats per token) x this = bits per byte of the train split."""
        split = _dict(_dict(_dict(self.manifest).get("splits")).get("train"))
        tokens, size = rundir.finite(split.get("tokens")), rundir.finite(split.get("bytes"))
        if not tokens or not size:
            return math.nan
        return tokens / (size * math.log(2))


# ---------------------------------------------------------------------------- reading

_NUMBERS = ("loss", "val_loss", "val_bpb", "val_ppl", "lr", "grad_norm", "tokens",
            "tokens_per_s", "mfu", "elapsed_s")
_PLOT_MAX = 1e100  # beyond, matplotlib cannot lay out an axis: such a value is no measurement


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _wall_clock(train: list[dict[str, Any]]) -> None:
    """Give each train record `time_s`: time in training since the run began. elapsed_s
    restarts at 0 when a run is resumed, so each restart continues from the last time."""
    offset = last = 0.0
    for r in train:
        t = float(r.get("elapsed_s", 0.0))
        if t + 1e-9 < last - offset:  # the clock went back: a resumed attempt
            offset = last
        last = offset + t
        r["time_s"] = last


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Linear interpolation, clamped at the ends."""
    if not xs:
        return math.nan
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True),
                                  strict=False):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / ((x1 - x0) or 1.0)
    return ys[-1]


def _checkpoints(run: RunDir) -> list[dict[str, Any]]:
    pointers = {"latest": run.pointer("latest"), "best": run.pointer("best")}
    out = []
    for path in (run.checkpoints / name for name in run.checkpoint_names()):
        meta = rundir.read_json_object(path / "meta.json", [])  # None: being written, damaged
        try:
            size: int | None = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        except OSError:
            size = None
        out.append({"name": path.name, "step": rundir.step_or_none((meta or {}).get("step")),
                    "bytes": size, "marks": [k for k, v in pointers.items() if v == path.name]})
    return out


def _samples(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"step": r["step"], "texts": [t for t in r["texts"] if isinstance(t, str)]}
            for r in records if isinstance(r.get("texts"), list)]


def load_run_data(run_dir: Path, *, name: str | None = None) -> RunData:
    """The run's files, checked. A run whose config.toml cannot be read is refused (one
    LmforgeError); any other damaged file is left out and named in RunData.notes."""
    run = RunDir(Path(run_dir))
    cfg = read_run_config(run)  # a missing, foreign or damaged run is a one-line error here
    text = run.config.read_text(encoding="utf-8")  # read_run_config checked it
    notes: list[str] = []
    records = rundir.read_records(run.metrics, notes, numbers=_NUMBERS)
    data = RunData(path=run.path, name=name or run.path.name, config=tomllib.loads(text),
                   config_text=text, notes=notes,
                   train=[r for r in records if r.get("kind") == "train"],
                   evals=[r for r in records if r.get("kind") == "eval"])
    _wall_clock(data.train)
    steps = [r["step"] for r in data.train]
    times = [r["time_s"] for r in data.train]
    for r in data.evals:  # an evaluation follows the train step of the same number
        r["time_s"] = _interp(r["step"], steps, times)
    data.manifest = rundir.read_json_object(Path(cfg.data.path) / "manifest.json", notes)
    data.data_report = rundir.read_json_object(Path(cfg.data.path) / "report.json", notes)
    data.samples = rundir.read_text_or_none(run.samples, notes) or ""
    data.eval_samples = _samples(rundir.read_records(run.eval_samples, notes))
    data.checkpoints = _checkpoints(run)
    data.test = report_task.read_test_metrics(run.path, data.config, notes)
    if data.checkpoints:
        data.params = rundir.weights_count(run.checkpoints / data.checkpoints[-1]["name"]
                                          / WEIGHTS_FILE)
    return data


# ---------------------------------------------------------------------------- figures

def _series(run: RunData, what: str, x: str) -> list[tuple[str, str, list[float], list[float]]]:
    """(label, style, xs, ys) lines of one run for figure `what` against `x` (step, time_s)."""
    tr = [r for r in run.train if x in r]
    ev = [r for r in run.evals if x in r]
    out: list[tuple[str, str, list[float], list[float]]] = []

    def add(label: str, style: str, rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> None:
        pts = [(r[x], r[key] * scale) for r in rows  # abs(NaN) < _PLOT_MAX is False
               if key in r and abs(r[key] * scale) < _PLOT_MAX and abs(r[x]) < _PLOT_MAX]
        if pts:
            out.append((label, style, [p[0] for p in pts], [p[1] for p in pts]))

    if what == "loss":
        add("train", "train", tr, "loss")
        add("validation", "val", ev, "val_loss")
    elif what == "bpb":
        add("train", "train", tr, "loss", run.train_bpb_factor)
        add("validation", "val", ev, "val_bpb")
    else:
        add(what, "train", tr, what)
    return out


FIGURE_SPECS = [  # file name, quantity, x, title, y label
    ("loss-step", "loss", "step", "Loss", "loss (nats per token)"),
    ("loss-time", "loss", "time_s", "Loss against wall time", "loss (nats per token)"),
    ("bpb-step", "bpb", "step", "Bits per byte", "bits per byte"),
    ("bpb-time", "bpb", "time_s", "Bits per byte against wall time", "bits per byte"),
    ("lr", "lr", "step", "Learning rate", "learning rate"),
    ("grad-norm", "grad_norm", "step", "Gradient norm (before clipping)", "global L2 norm"),
    ("throughput", "tokens_per_s", "step", "Throughput", "tokens per second"),
    ("mfu", "mfu", "step", "Model FLOPs utilization", "share of the device's peak"),
]


def _figure(runs: list[RunData], *, what: str, x: str, title: str, ylabel: str) -> bytes | None:
    """One PNG with every run's lines (one colour per run: train thin, validation with
    markers), or None when no run has data for it."""
    plt = pyplot()
    lines = [(i, run, s) for i, run in enumerate(runs) for s in _series(run, what, x)]
    if not lines:
        return None
    minutes = x == "time_s" and max(max(s[2]) for _, _, s in lines) > 120
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run, (label, style, xs, ys) in lines:
        name = f"{run.name} {label}" if len(runs) > 1 else label
        xs = [v / 60 for v in xs] if minutes else xs
        kw = ({"linewidth": 1.0, "alpha": 0.75} if style == "train"
              else {"marker": "o", "markersize": 3.5, "linewidth": 1.6})
        ax.plot(xs, ys, color=colors[i % len(colors)], label=literal(name), **kw)
    ax.set_xlabel({"step": "step", "time_s": "wall time in training (minutes)" if minutes
                   else "wall time in training (seconds)"}[x])
    ax.set_ylabel(literal(ylabel))
    if what == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.set_title(literal(title))
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


# ---------------------------------------------------------------------------- html

def _table(head: list[str], rows: list[list[Any]], *, cls: str = "") -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _num(x: Any, fmt: str = ",.4f") -> str:
    return "–" if rundir.finite(x) is None else format(x, fmt)


def _duration(seconds: Any) -> str:
    if rundir.finite(seconds) is None:
        return "–"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _summary(runs: list[RunData]) -> str:
    rows = []
    for run in runs:
        m, last = run.config.get("model", {}), (run.train[-1] if run.train else {})
        best = min((r for r in run.evals if "val_loss" in r), key=lambda r: r["val_loss"],
                   default={})
        speeds = sorted(r["tokens_per_s"] for r in run.train if "tokens_per_s" in r)
        utils = sorted(r["mfu"] for r in run.train if "mfu" in r)  # finite: checked
        shape = f"{m.get('arch')}, {m.get('n_layer')} layers × {m.get('n_embd')}"
        rows.append([run.name, shape + (f", {run.params:,} weights" if run.params else ""),
                     last.get("step", 0), _num(last.get("tokens"), ","),
                     _duration(last.get("time_s")), _num(last.get("loss")),
                     f"{_num(best.get('val_loss'))} @ {best['step']}" if best else "–",
                     _num(best.get("val_bpb")),
                     _num(speeds[len(speeds) // 2] if speeds else None, ",.0f"),
                     _num(utils[len(utils) // 2] if utils else None, ".1%")])
    return _table(["run", "model", "steps", "tokens", "time training", "last train loss",
                   "best val loss", "its bits/byte", "median tokens/s", "median MFU"], rows,
                  cls="num")


def _flatten(tree: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, values in tree.items() if isinstance(values, dict)
            for k, v in values.items()}


def _config_section(runs: list[RunData]) -> str:
    if len(runs) == 1:
        return f"<pre class=config>{escape(runs[0].config_text)}</pre>"
    flat = [_flatten(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f}, key=lambda k: list(flat[0]).index(k)
                  if k in flat[0] else len(flat[0]))
    skip = ("run.dir",)
    differ = [[k, *(f.get(k, "–") for f in flat)] for k in keys
              if k not in skip and len({json.dumps(f.get(k)) for f in flat}) > 1]
    table = (_table(["key", *(r.name for r in runs)], differ) if differ
             else "<p>The runs have the same config (apart from run.dir).</p>")
    full = "".join(f"<details><summary>{escape(r.name)}: config.toml</summary>"
                   f"<pre class=config>{escape(r.config_text)}</pre></details>" for r in runs)
    return f"<p>Keys whose values differ:</p>{table}{full}"


def _data_section(run: RunData) -> str:
    path = run.config.get("data", {}).get("path", "")
    if run.manifest is None:
        return f"<p>The dataset {escape(path)} is not on this machine (or its manifest is damaged).</p>"
    tok = _dict(run.manifest.get("tokenizer"))
    parts = [f"<p>Dataset <code>{escape(path)}</code>; {escape(tok.get('kind', '?'))} tokenizer, "
             f"{_num(tok.get('vocab_size'), ',')} tokens.</p>"]
    splits = {name: _dict(s) for name, s in _dict(run.manifest.get("splits")).items()}
    parts.append(_table(["split", "documents", "tokens", "bytes", "bytes per token"],
                        [[name, *(_num(s.get(k), ",") for k in ("documents", "tokens", "bytes")),
                          _num(_ratio(s.get("bytes"), s.get("tokens")), ".3f")]
                         for name, s in splits.items()], cls="num"))
    rep = run.data_report
    if rep is None:
        return "".join(parts) + "<p>No report.json beside the shards.</p>"
    sources = ", ".join(f"{k.replace('_', ' ')} {_num(v, ',') if isinstance(v, int) else v}"
                        for k, v in _dict(rep.get("sources")).items())
    if sources:
        parts.append(f"<p>Sources: {escape(sources)}.</p>")
    keys = ("docs_in", "docs_out", "bytes_in", "bytes_out")
    clean = [[step, *(_num(_dict(c).get(k), ",") for k in keys)]
             for step, c in _dict(rep.get("clean")).items()]
    if clean:
        parts.append(_table(["cleaning step", "documents in", "documents out", "bytes in",
                             "bytes out"], clean, cls="num"))
    tops = rep.get("top_tokens")
    top = [_dict(t) for t in tops] if isinstance(tops, list) else []
    if top:
        chips = " ".join(f"<code>{escape(repr(t.get('text')))}</code>&nbsp;"
                         f"{_num(t.get('share'), '.1%')}" for t in top[:20])
        parts.append(f"<p>Most frequent tokens: {chips}</p>")
    return "".join(parts)


def _ratio(a: Any, b: Any) -> float | None:
    x, y = rundir.finite(a), rundir.finite(b)
    return x / y if x is not None and y else None


def _checkpoint_section(run: RunData) -> str:
    if not run.checkpoints:
        return "<p>No checkpoint yet.</p>"
    rows = [[c["name"], _num(c["step"], ","), _num(_ratio(c["bytes"], 1e6), ",.1f") + " MB",
             ", ".join(c["marks"])] for c in run.checkpoints]
    return _table(["checkpoint", "step", "size", ""], rows)


def _samples_section(run: RunData) -> str:
    final = (f"<pre>{escape(run.samples)}</pre>" if run.samples
             else "<p>No samples at the end (eval.samples=0, or the run has not finished).</p>")
    if not run.eval_samples:
        return final
    val = {r["step"]: r for r in run.evals if "val_loss" in r}
    during = []
    for i, rec in enumerate(reversed(run.eval_samples)):  # newest first, and open
        ev = val.get(rec["step"])
        loss = f", val loss {_num(ev['val_loss'], '.4f')}" if ev else ""
        texts = "".join(f"<pre>{escape(t)}</pre>" for t in rec["texts"])
        during.append(f"<details{' open' * (i == 0)}><summary>step {rec['step']:,}{loss}"
                      f"</summary>{texts}</details>")
    return (f"{final}<p>At each evaluation (the same random draws each time, so only the "
            f"model differs):</p>{''.join(during)}")


def _per_run(runs: list[RunData], title: str, body: Any) -> str:
    if len(runs) == 1:
        return f"<h2>{escape(title)}</h2>{body(runs[0])}"
    return f"<h2>{escape(title)}</h2>" + "".join(
        f"<details><summary>{escape(r.name)}</summary>{body(r)}</details>" for r in runs)


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1180px;padding:1.5em 2em;color:#1f2328;background:#fff}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #d0d7de}
.sub{color:#59636e}table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa}table.num td:not(:first-child){text-align:right;font-variant-numeric:tabular-nums}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:1em}
figure{margin:0}figure img{width:100%;height:auto;border:1px solid #eaeef2}
figcaption{font-size:.85em;color:#59636e}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.85em;white-space:pre-wrap}
pre.config{column-width:24em;column-gap:2em}details{margin:.4em 0}summary{cursor:pointer;font-weight:600}code{font-size:.9em}
"""


def _page(runs: list[RunData], figures: list[tuple[str, str, bytes]], tests: list[list[Any]] | None = None) -> str:
    title = ("lmforge run " + runs[0].name if len(runs) == 1
             else "lmforge runs " + ", ".join(r.name for r in runs))
    figs = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
        f'alt="{escape(caption)}"><figcaption>{escape(caption)} ({FIGURES_DIR}/{name}.png)</figcaption></figure>'
        for name, caption, png in figures) or "<p>No metrics recorded yet.</p>"
    note = ("<p class=sub>Losses are per token, so they compare only between runs with the "
            "same tokenizer; bits per byte compares any two.</p>" if len(runs) > 1 else "")
    where = ", ".join(str(r.path) for r in runs)
    notes = "".join(f"<li>{escape(r.name)}: {escape(n)}</li>" for r in runs for n in r.notes)
    notes = f"<p class=sub>Left out of this report:</p><ul>{notes}</ul>" if notes else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{escape(title)}</h1><p class=sub>{escape(where)}</p>{notes}"
            f"{_summary(runs)}<h2>Curves</h2>{note}<div class=figs>{figs}</div>"
            f"{report_task.results_section([(r.name, r.test) for r in runs], tests or [], FIGURES_DIR)}"
            f"<h2>Config</h2>{_config_section(runs)}"
            f"{_per_run(runs, 'Data', _data_section)}"
            f"{_per_run(runs, 'Samples', _samples_section)}"
            f"{_per_run(runs, 'Checkpoints', _checkpoint_section)}"
            "</body></html>\n")


# ---------------------------------------------------------------------------- entry point

def default_out(runs: list[Path]) -> Path:
    """The run itself for one run; compare-A-B… beside the first run for several."""
    if len(runs) == 1:
        return Path(runs[0])
    names = [Path(r).resolve().name for r in runs]
    label = "-".join(names[:3]) + (f"-and-{len(names) - 3}-more" if len(names) > 3 else "")
    return Path(runs[0]).resolve().parent / f"compare-{label}"


def write_report(runs: list[Path], *, out: Path | None = None) -> str:
    """Write OUT/report.html and OUT/figures/*.png for `runs`; return a one-line summary."""
    if not runs:
        raise LmforgeError("give at least one run directory")
    paths = [Path(r) for r in runs]
    names = [p.resolve().name for p in paths]
    if len(set(names)) < len(names):  # runs/a/x and runs/b/x: tell them apart by path
        names = [str(p) for p in paths]
    data = [load_run_data(p, name=n) for p, n in zip(paths, names, strict=True)]
    out = Path(out) if out is not None else default_out(paths)
    if out.exists() and not out.is_dir():
        raise LmforgeError(f"--out {out} is a file; give a directory for report.html and its figures")
    figures = []
    for name, what, x, title, ylabel in FIGURE_SPECS:
        try:
            png = _figure(data, what=what, x=x, title=title, ylabel=ylabel)
        except (ValueError, OverflowError) as err:  # values matplotlib cannot lay out
            data[0].notes.append(f"the figure {title} could not be drawn ({err})")
            continue
        if png is not None:
            figures.append((name, title, png))
    tests = [report_task.task_figures(r.test, r.notes, prefix=f"run{i + 1}-" * (len(data) > 1))
             for i, r in enumerate(data)]
    (out / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    drawn = figures + [f for t in tests for f in t]
    for name, _, png in drawn:
        (out / FIGURES_DIR / f"{name}.png").write_bytes(png)
    write_text_atomic(out / REPORT_FILE, _page(data, figures, tests))
    left = sum(len(r.notes) for r in data)
    return (f"wrote {out / REPORT_FILE} ({len(drawn)} figures, also in {out / FIGURES_DIR}/)"
            + (f"; {left} thing(s) damaged or unreadable were left out, as the page says"
               if left else ""))
