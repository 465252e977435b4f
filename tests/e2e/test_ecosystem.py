"""Export, --init-from, TensorBoard and the run report, as a user runs them: real
subprocesses and real files, each output checked against the numbers it must carry."""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import QUIET, TINY_MODEL, json_corpus, lmforge, options, records, rewind

SETTINGS = {
    "train.log_every": "1", "optim.warmup_steps": "5", "data.path": "data/json",
    # one thread: a tiny model gains nothing from two, and loses much when the cores are busy
    "train.threads": "1",
    "train.precision": "fp32"}  # float32: these tests compare code paths at tight tolerances (bf16 has its own test)
TINY = options(TINY_MODEL, QUIET, SETTINGS)
NO_FILES = {"log.to": "none", "train.report": "false"}
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A char-level corpus and one trained run, runs/src, with samples and evaluations."""
    work = json_corpus(tmp_path_factory, "eco")
    lmforge("train", *options(TINY_MODEL, QUIET, SETTINGS, {
        "train.max_steps": "24", "eval.every": "8", "eval.batches": "2", "eval.samples": "1",
        "eval.sample_tokens": "24", "checkpoint.every": "16", "run.dir": "runs/src"}), cwd=work)
    return work


# ---------------------------------------------------------------------------- tensorboard

def test_tensorboard_holds_the_metrics(work):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = work / "runs" / "src"
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    scalars = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    train, evals = records(run, "train"), records(run, "eval")
    split = json.loads((work / "data" / "json" / "manifest.json").read_text())["splits"]["train"]
    bpb = split["tokens"] / (split["bytes"] * math.log(2))
    expect = {"train/loss": {r["step"]: r["loss"] for r in train},
              "train/bpb": {r["step"]: r["loss"] * bpb for r in train},
              "train/lr": {r["step"]: r["lr"] for r in train},
              "train/grad_norm": {r["step"]: r["grad_norm"] for r in train},
              "train/tokens_per_s": {r["step"]: r["tokens_per_s"] for r in train},
              "train/mfu": {r["step"]: r["mfu"] for r in train},
              "val/loss": {r["step"]: r["val_loss"] for r in evals},
              "val/bpb": {r["step"]: r["val_bpb"] for r in evals},
              "val/perplexity": {r["step"]: r["val_ppl"] for r in evals}}
    assert sorted(scalars) == sorted(expect)
    for tag, values in expect.items():
        assert sorted(scalars[tag]) == sorted(values), tag
        for step, value in values.items():  # stored as float32
            assert scalars[tag][step] == pytest.approx(value, rel=1e-6), (tag, step)
    assert sorted(expect["val/loss"]) == [8, 16, 24]
    text = acc.Tensors("samples/text_summary")
    assert [e.step for e in text] == [24]
    sample = (run / "samples.txt").read_text().split("-----\n", 1)[1].strip("\n")
    assert sample and sample in text[0].tensor_proto.string_val[0].decode()
    # and the samples drawn at each evaluation, as samples.jsonl has them
    at_eval = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in at_eval] == [8, 16, 24]
    text = acc.Tensors("samples/eval/text_summary")
    assert [e.step for e in text] == [8, 16, 24]
    for event, record in zip(text, at_eval, strict=True):
        assert record["texts"][0] in event.tensor_proto.string_val[0].decode()
    assert all(0 < r["mfu"] < 1 for r in train)


def test_a_resumed_run_shows_each_step_once(work):
    """Resumed from an earlier checkpoint, the run redoes steps it had logged; TensorBoard
    keeps the second attempt only, as metrics.jsonl does."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = work / "runs" / "resumed"
    shutil.copytree(work / "runs" / "src", run)
    rewind(run, 16)
    shutil.rmtree(run / "checkpoints" / "step_00000024")
    lmforge("train", "--resume", run, "--train.report=false", "--train.threads=1", cwd=work)
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    losses = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [step for step, _ in losses] == list(range(1, 25))
    assert dict(losses) == pytest.approx({r["step"]: r["loss"] for r in records(run, "train")})
    at_eval = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in at_eval] == [8, 16, 24]


# ---------------------------------------------------------------------------- export / import

def first_batch_loss(work: Path, *, block_size: int) -> float:
    """The source model's loss on the batch a new run with the same data, batch size, seed
    and `block_size` trains on first."""
    import torch

    from lmforge.data import shards
    from lmforge.data.loader import RandomWindows
    from lmforge.evaluate import cross_entropy
    from lmforge.runs.load import load_run

    run = load_run(work / "runs" / "src")
    batches = RandomWindows(shards.open_split(work / "data" / "json", "train"), batch_size=4,
                            block_size=block_size, seed=run.cfg.run.seed)
    x, y = batches.next_batch()
    with torch.no_grad():
        return cross_entropy(run.model(x)[0], y).item()


def exported(work: Path, fmt: str) -> Path:
    out = work / f"export-{fmt}"
    if not out.is_dir():
        lmforge("export", "runs/src", "--format", fmt, "--out", out, cwd=work)
    return out


CONTEXT = {"hf": 32, "safetensors": 16}  # 16: a shorter context than the source's 32


def init_run(work: Path, fmt: str) -> Path:
    """A one-step run that starts from runs/src exported as `fmt`."""
    new = work / "runs" / f"init-{fmt}"
    if not new.is_dir():
        # shape options on the command line must agree with the export (TINY_MODEL's do), but a
        # shorter context is the new run's choice
        lmforge("train", *options(TINY_MODEL, QUIET, SETTINGS, NO_FILES, {
            "model.block_size": str(CONTEXT[fmt]), "train.max_steps": "1", "run.dir": str(new)}),
            "--init-from", exported(work, fmt), cwd=work)
    return new


@pytest.mark.parametrize("fmt", ["hf", "safetensors"])
def test_init_from_an_export_continues_the_same_model(work, fmt):
    """The new run's first loss is the source model's loss on that same batch."""
    new = init_run(work, fmt)
    out = exported(work, fmt)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    first = records(new, "train")[0]
    assert first["step"] == 1
    assert abs(first["loss"] - first_batch_loss(work, block_size=CONTEXT[fmt])) < 1e-4
    config = (new / "config.toml").read_text()
    assert f"block_size = {CONTEXT[fmt]}" in config
    assert f'init_from = "{out.resolve()}"' in config
    # GPT-2 always has biases: the HF round trip gives zero ones, lmforge's export keeps none
    assert ("bias = true" in config) == (fmt == "hf")


def test_export_refuses_to_overwrite(work):
    out = work / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = lmforge("export", "runs/src", "--out", out, cwd=work, check=False)
    assert proc.returncode == 2 and "already exists and is not empty" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_recurrent_model_is_refused_by_the_hf_format(work):
    lmforge("train", *options(QUIET, NO_FILES, {
        "data.path": "data/json", "model.arch": "lstm", "model.n_layer": "1", "model.n_embd": "32",
        "model.block_size": "16", "train.batch_size": "2", "train.max_steps": "2",
        "train.threads": "1", "run.dir": "runs/lstm"}), cwd=work)
    proc = lmforge("export", "runs/lstm", "--format", "hf", "--out", "lstm-hf", cwd=work, check=False)
    assert proc.returncode == 2 and "use --format safetensors" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (work / "lstm-hf").exists()


@pytest.fixture
def small_vocab(work):
    """An lmforge export whose embeddings cover 20 tokens: fewer than the corpus's 95."""
    from lmforge.config import ModelConfig
    from lmforge.interop.hf_export import export_safetensors
    from lmforge.models.gpt import GPT

    out = work / "vocab20"
    if not out.is_dir():
        cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=20)
        export_safetensors(GPT(cfg), cfg, None, out)
    return out


@pytest.mark.parametrize("args, message", [
    (["train", *TINY, "--init-from", "nowhere"], "--init-from nowhere: no such directory"),
    (["train", *TINY, "--init-from", "vocab20"],
     "--model.n_layer=2 conflicts with the model in vocab20 (n_layer=1)"),
    (["train", "--data.path=data/json", "--init-from", "vocab20"],
     "tokenizer of 95 tokens, more than the 20"),
    (["train", "--resume", "runs/src", "--init-from", "vocab20"], "drop --init-from or --resume"),
    (["report", "data"], "not an lmforge run"),
])
def test_bad_input_is_one_line_and_exit_2(work, small_vocab, args, message):
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    proc = lmforge(*args, cwd=work, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before  # nothing written


# ---------------------------------------------------------------------------- report

def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_training_writes_a_self_contained_report(work):
    run = work / "runs" / "src"
    page = (run / "report.html").read_text()
    files = sorted((run / "figures").glob("*.png"))
    assert [p.stem for p in files] == sorted(["loss-step", "loss-time", "bpb-step", "bpb-time",
                                              "lr", "grad-norm", "throughput", "mfu"])
    assert sorted(embedded_pngs(page)) == sorted(p.read_bytes() for p in files)
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in embedded_pngs(page))
    # nothing to fetch: no scripts, stylesheets, frames or remote addresses
    assert not re.search(r"<script|<link|<iframe|https?://|src=\"(?!data:)", page)
    assert html.escape((run / "samples.txt").read_text()) in page
    for line in (run / "samples.jsonl").read_text().splitlines():  # each evaluation's samples
        record = json.loads(line)
        assert f"step {record['step']:,}, val loss" in page
        assert html.escape(record["texts"][0]) in page
    assert "step_00000016" in page and "step_00000024" in page and "latest" in page
    manifest = json.loads((work / "data" / "json" / "manifest.json").read_text())
    assert f"{manifest['splits']['train']['tokens']:,}" in page  # the data report
    assert "dedup_exact" in page  # prepare's cleaning steps
    assert "max_steps = 24" in page  # the resolved config


def test_report_overlays_several_runs(work):
    init_run(work, "hf")
    lmforge("report", "runs/src", "runs/init-hf", cwd=work)
    out = work / "runs" / "compare-src-init-hf"
    page = (out / "report.html").read_text()
    assert "src" in page and "init-hf" in page
    assert "run.init_from" in page and "model.bias" in page  # keys that differ
    assert len(embedded_pngs(page)) == len(list((out / "figures").glob("*.png"))) >= 6


def browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


PROBE = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images];
  document.body.setAttribute("data-probe", JSON.stringify(
    imgs.map(i => i.complete && i.naturalWidth > 0 ? i.naturalWidth : 0)));
});</script>"""


@pytest.mark.skipif(browser() is None, reason="no headless Chromium or Chrome installed")
def test_report_renders_in_a_headless_browser(work, tmp_path):
    """The page loads offline, every figure decodes to a real image, and the console stays
    empty. A copy gets a small script that records each image's decoded width."""
    page = (work / "runs" / "src" / "report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    proc = subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-dev-shm-usage", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and not proc.stdout.strip():
        pytest.skip(f"{browser()} is installed but does not start here: {proc.stderr[-300:]}")
    found = re.search(r'data-probe="([^"]*)"', proc.stdout)
    assert found, "the page did not finish loading"
    widths = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(widths) == 8 and all(w == 700 for w in widths)  # 7 in x 100 dpi
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
