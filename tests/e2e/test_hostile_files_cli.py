"""Damaged and hostile files, as the CLI meets them: `lmforge report` on a damaged run,
`lmforge prepare` on a malformed URL, a name too long, a file it may not read and UTF-16
text, `lmforge train` on a recipe that is not UTF-8 and on --init-from directories that are
damaged or hostile. Each ends in a correct result or in one line `lmforge VERB: error: ...`
with exit code 2; never a traceback, and never code run from a file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import QUIET, TINY_MODEL, json_corpus, lmforge, options

from lmforge.config import Config, ModelConfig
from lmforge.data import shards
from lmforge.data.tokenizer import load_tokenizer
from lmforge.interop.hf_export import export_hf
from lmforge.models.gpt import GPT
from lmforge.rundir import RunDir, write_config

TINY = options(TINY_MODEL, QUIET, {
    "model.n_layer": "1", "model.n_embd": "16", "model.block_size": "16", "train.batch_size": "2",
    "train.max_steps": "2", "eval.every": "0", "eval.batches": "1", "train.threads": "1",
    "train.report": "false", "log.to": "none", "data.path": "data/json"})


def failed(proc: subprocess.CompletedProcess, verb: str, message: str) -> None:
    """Exit 2 and one last line `lmforge VERB: error: ...MESSAGE...`; no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error:" in line]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], proc.stderr
    assert errors[0].startswith(f"lmforge {verb}: error: ") and message in errors[0], errors[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return json_corpus(tmp_path_factory, "hostile-files")


# ---------------------------------------------------------------------------- report

def a_run(path: Path) -> Path:
    cfg = Config()
    cfg.run.dir, cfg.data.path = str(path), str(path / "no-data")
    write_config(cfg, RunDir(path))
    lines = [json.dumps({"kind": "train", "step": s, "loss": 4.0 / s, "lr": 1e-3,
                         "elapsed_s": 0.1 * s}) for s in range(1, 5)]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return path


def test_report_of_a_damaged_run_renders_what_it_can(tmp_path):
    run = a_run(tmp_path / "runs" / "m$\\frac{$")
    other = a_run(tmp_path / "runs" / "$x^2$")
    with open(run / "metrics.jsonl", "ab") as fh:
        fh.write(b'[1, 2]\n\xff\xfe\x00\n{"kind": "train", "step": 9, "loss": "NaN?", "lr": '
                 + b"9" * 5000 + b"}\n")
    (run / "samples.txt").write_bytes(b"\xff\xfe not UTF-8")
    proc = lmforge("report", run, other, cwd=tmp_path)
    assert "Traceback" not in proc.stderr and "left out" in proc.stdout
    page = next((tmp_path / "runs").glob("compare-*/report.html")).read_text(encoding="utf-8")
    assert "metrics.jsonl: 2 line(s) skipped" in page and "samples.txt is not valid UTF-8" in page


def test_report_of_a_run_whose_config_is_damaged_is_one_line(tmp_path):
    run = a_run(tmp_path / "run")
    (run / "config.toml").write_bytes(b"[run]\ndir = '\xff'\n")
    failed(lmforge("report", run, cwd=tmp_path, check=False), "report",
           "config.toml is not valid UTF-8 (byte 13 is not text); the run's config is damaged")
    (run / "config.toml").write_bytes(b"[run\n")
    failed(lmforge("report", run, cwd=tmp_path, check=False), "report",
           "config.toml is not valid TOML (")


# ---------------------------------------------------------------------------- prepare

def test_prepare_refuses_a_malformed_url_and_a_name_too_long(tmp_path):
    failed(lmforge("prepare", "--data", "http://[::1", "--out", "o", cwd=tmp_path, check=False),
           "prepare", "http://[::1 is not a valid URL (Invalid IPv6 URL)")
    long = tmp_path / ("a" * 300) / "b.txt"
    failed(lmforge("prepare", "--data", long, "--out", "o", cwd=tmp_path, check=False),
           "prepare", "(File name too long); shorten the name")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-8-sig"])
def test_prepare_decodes_text_by_its_byte_order_mark(tmp_path, encoding):
    text = "Première ligne — naïve 日本語 😀\nsecond line\n" * 20
    (tmp_path / "t.txt").write_bytes(text.encode(encoding))  # Python writes the BOM
    lmforge("prepare", "--data", "t.txt", "--out", "ds", "--tokenizer", "byte", "--no-progress",
            "--clean.whitespace=false", "--clean.control_chars=false", "--clean.normalize=none",
            cwd=tmp_path)
    tok = load_tokenizer(tmp_path / "ds" / "tokenizer")
    prepared = "".join(tok.decode(shards.open_split(tmp_path / "ds", s).tolist())
                       for s in ("train", "val"))
    assert prepared == text


def test_prepare_refuses_a_file_it_may_not_read(tmp_path):
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to read as another user (root reads any file)")
    shared = Path(tempfile.mkdtemp())
    try:
        os.chmod(shared, 0o777)
        (shared / "d").mkdir(mode=0o755)
        (shared / "d" / "a.txt").write_text("readable")
        (shared / "d" / "b.txt").write_text("secret")
        os.chmod(shared / "d" / "b.txt", 0)
        nobody = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                  "--inh-caps=-all"]
        env = {**os.environ, "HOME": str(shared), "LMFORGE_CACHE": str(shared / "cache")}
        # nobody must be able to run lmforge (a checkout in a directory of mode 700, as
        # mktemp -d makes, is out of its reach) and not to read a file of mode 000
        probe = subprocess.run([*nobody, sys.executable, "-c",
                                f"import lmforge.cli.main; open({str(shared / 'd' / 'b.txt')!r})"],
                               capture_output=True, env=env)
        if probe.returncode == 0 or b"PermissionError" not in probe.stderr:
            pytest.skip("nobody cannot run lmforge from this checkout, or may read a file of "
                        "mode 000")
        proc = subprocess.run([*nobody, sys.executable, "-m", "lmforge", "prepare", "--data", "d",
                               "--out", "o", "--tokenizer", "byte", "--no-progress"],
                              cwd=shared, capture_output=True, text=True, env=env, timeout=300)
        failed(proc, "prepare", "cannot read d/b.txt (Permission denied); make it readable")
        # and a directory it may not write into: the lock beside --out is where it finds out
        (shared / "ro").mkdir(mode=0o755)
        (shared / "ro" / "a.txt").write_text("readable")
        for argv, verb in ((["prepare", "--data", "ro/a.txt", "--out", "ro/out", "--tokenizer",
                             "byte", "--no-progress"], "prepare"),
                           (["train", "--run.dir=ro/run", "--data.path=nowhere",
                             "--data.source="], "train")):
            proc = subprocess.run([*nobody, sys.executable, "-m", "lmforge", *argv], cwd=shared,
                                  capture_output=True, text=True, env=env, timeout=300)
            failed(proc, verb, "ro is writable")
    finally:
        os.chmod(shared / "d" / "b.txt", 0o644)
        shutil.rmtree(shared)


# ---------------------------------------------------------------------------- train

def test_train_refuses_a_recipe_that_is_not_utf8(tmp_path):
    (tmp_path / "r.toml").write_bytes(b"[train]\nmax_steps = 2 # \xe9\n")
    failed(lmforge("train", "r.toml", cwd=tmp_path, check=False), "train",
           "r.toml is not valid UTF-8 (byte 24 is not text); fix the file")


SOURCE = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=300)


class Hostile:
    """A pickle that creates `marker` when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("damage, message", [
    ("layers", "n_layer"),
    ("list", "holds a JSON list, not an object"),
    ("index", "names the shard '../../etc/passwd', outside"),
    ("pickle", "may be hostile, and was not loaded"),
])
def test_train_refuses_a_damaged_or_hostile_init_from(work, damage, message):
    directory = work / f"model-{damage}"
    shutil.rmtree(directory, ignore_errors=True)
    export_hf(GPT(SOURCE), SOURCE, None, directory)
    config = directory / "config.json"
    if damage == "layers":
        config.write_text(json.dumps({**json.loads(config.read_text()), "n_layer": 10**12}))
    elif damage == "list":
        config.write_text("[]")
    elif damage == "index":
        (directory / "model.safetensors").unlink()
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"transformer.wte.weight": "../../etc/passwd"}}))
    else:
        (directory / "model.safetensors").unlink()
        torch.save({"padding": torch.zeros(20_000), "x": Hostile(work / "ran")},
                   directory / "pytorch_model.bin")
    proc = lmforge("train", *TINY, f"--run.dir=runs/{damage}", "--init-from", directory,
                   cwd=work, check=False, threads=1, timeout=300)
    failed(proc, "train", message)
    assert not (work / "ran").exists()
