"""Hostile input: random corpus bytes, command-line overrides, damaged shards and a full
disk. Every case ends in a correct result or one line `lmforge VERB: error: ...` with exit
code 2: never a traceback, never a hang."""

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import QUIET, TINY_MODEL, json_corpus, lmforge, options
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.cli.main import main
from lmforge.config import field_infos
from lmforge.data import shards

# A model small enough that a two-step run costs well under a second in-process.
TINY = options(TINY_MODEL, QUIET, {
    "model.n_layer": "1", "model.n_embd": "16", "model.block_size": "16", "train.batch_size": "2",
    "train.max_steps": "2", "eval.every": "0", "eval.batches": "1", "train.threads": "1",
    "train.report": "false", "log.to": "none", "data.path": "data/json",
    "data.source": ""})
FEW = settings(max_examples=20, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture,
                                      HealthCheck.too_slow])


def assert_clean_failure(proc_or_rc, stderr: str, verb: str) -> None:
    """Exit 0, or exit 2 whose last stderr line is the one error line; never a traceback."""
    rc = proc_or_rc if isinstance(proc_or_rc, int) else proc_or_rc.returncode
    assert "Traceback" not in stderr, stderr
    assert rc in (0, 2), f"exit {rc}:\n{stderr}"
    if rc == 2:
        errors = [line for line in stderr.splitlines() if ": error:" in line]
        assert len(errors) == 1, stderr
        assert stderr.strip().splitlines()[-1].startswith(f"lmforge {verb}: error: "), stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return json_corpus(tmp_path_factory, "hostile")


# ---------------------------------------------------------------- corpus bytes -> prepare

def _prepare(files: dict[str, bytes], tokenizer: str, work: Path) -> subprocess.CompletedProcess:
    src = work / "src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(work / "out", ignore_errors=True)
    src.mkdir(parents=True)
    for name, data in files.items():
        (src / name).write_bytes(data)
    return lmforge("prepare", "--data", str(src), "--tokenizer", tokenizer, "--out", "out",
                   "--workers", "1", "--no-progress", "--vocab-size", "300", cwd=work,
                   check=False, threads=1, timeout=120)


def _check_prepared(proc: subprocess.CompletedProcess, work: Path) -> None:
    assert_clean_failure(proc, proc.stderr, "prepare")
    if proc.returncode == 0:
        manifest = shards.verify(work / "out")  # every shard present, sized and hashed right
        assert set(manifest["splits"]) >= {"train"}


invalid_utf8 = st.lists(st.sampled_from([b"\xff", b"\xfe", b"\xc3", b"\xed\xa0\x80", b"\x80",
                                         b"\xf4\x90\x80\x80", b"abc", b"\n", b"\x00", b"\r"]),
                        max_size=200).map(b"".join)
text_bytes = st.text(max_size=2000).map(lambda t: t.encode("utf-8", "surrogatepass"))
corpus_file = st.one_of(st.just(b""), st.binary(max_size=3000), invalid_utf8, text_bytes)


@FEW
@given(files=st.lists(corpus_file, min_size=1, max_size=3),
       tokenizer=st.sampled_from(["char", "byte", "bpe"]))
def test_prepare_survives_any_bytes(tmp_path_factory, files, tokenizer):
    work = tmp_path_factory.mktemp("bytes")
    proc = _prepare({f"doc{i}.txt": data for i, data in enumerate(files)}, tokenizer, work)
    _check_prepared(proc, work)


@pytest.mark.parametrize("files", [
    {"empty.txt": b""},
    {"a.txt": b"", "b.txt": b"\n\n\n", "c.txt": b"   "},
    {"nul.txt": b"\x00" * 5000},
    {"bin.txt": bytes(range(256)) * 40},
], ids=["one-empty", "all-blank", "nul-bytes", "all-byte-values"])
@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_prepare_degenerate_corpora(tmp_path, files, tokenizer):
    _check_prepared(_prepare(files, tokenizer, tmp_path), tmp_path)


def test_prepare_one_long_line(tmp_path):
    """A 4 MB file without a newline: the same code path as 100 MB (reading, cleaning and
    tokenizing are per document, a single-file corpus is split by position), just faster."""
    line = (b"lorem ipsum dolor sit amet \xff\xfe " * 200_000)[:4_000_000]
    start = time.perf_counter()
    proc = _prepare({"line.txt": line}, "char", tmp_path)
    _check_prepared(proc, tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = shards.verify(tmp_path / "out")
    total = sum(s["tokens"] for s in manifest["splits"].values())
    assert total > 3_000_000  # the line was kept, not silently dropped
    assert time.perf_counter() - start < 100


# ---------------------------------------------------- command-line overrides -> train

# Fields whose large values legitimately cost memory or time (a 10^12-wide model), or that
# point at other data: random values for these stay small.
_SIZES = {"model.n_layer", "model.n_head", "model.n_embd", "model.block_size",
          "model.vocab_size", "train.batch_size", "train.grad_accum", "train.max_steps",
          "eval.batches", "eval.batch_size", "eval.samples", "eval.sample_tokens",
          "eval.samples_at_eval", "train.profile", "parallel.tp", "model.mlp_ratio"}
_SKIP = ("run.dir", "run.init_from", "data.", "clean.", "tokenizer.", "parallel.compile")
KEYS = sorted(i.key for i in field_infos() if not i.key.startswith(_SKIP))
FREE_KEYS = [k for k in KEYS if k not in _SIZES]
SIZE_KEYS = [k for k in KEYS if k in _SIZES]

any_value = st.one_of(
    st.text(max_size=20), st.just(""),
    st.integers(-10, 10).map(str), st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e308", "-1e308", "1e-320", "0", "-0", "true",
                     "99999999999999999999999", "0x10", "1_000", " 1", "cpu", "cuda:3"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr))
small_value = st.one_of(st.integers(-3, 4).map(str),
                        st.sampled_from(["", "x", "nan", "1.5", "-1", "1e3"]))
override = st.one_of(st.tuples(st.sampled_from(FREE_KEYS), any_value),
                     st.tuples(st.sampled_from(SIZE_KEYS), small_value))


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 25)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(overrides=st.lists(override, min_size=1, max_size=3))
def test_train_overrides_in_process(corpus, capsys, overrides):
    """`lmforge train` as the CLI runs it (cli.main), with random --section.field=value."""
    run = corpus / "runs" / "fuzz"
    shutil.rmtree(run, ignore_errors=True)
    capsys.readouterr()
    argv = ["train", *TINY, f"--run.dir={run}", *(f"--{k}={v}" for k, v in overrides)]
    with contextlib.chdir(corpus):
        try:
            rc = main(argv)
        except SystemExit as exit_:  # argparse's own usage errors
            rc = exit_.code
    assert_clean_failure(rc, capsys.readouterr().err, "train")


@pytest.mark.parametrize("args", [
    ["--optim.lr=nan"], ["--optim.beta2=1"], ["--train.log_every=0"], ["--run.seed=-1"],
    ["--model.n_embd=99999999999999999999999"], ["--model.mlp_ratio=inf"],
    ["--train.device=cuda:7"], ["--train.device="], ["--train.threads=-1"],
    ["--nosuch.key=1"], ["--train.max_steps"], ["stray"], ["--optim.lr=1e-3", "--optim.lr"],
])
def test_train_bad_overrides_subprocess(corpus, args):
    proc = lmforge("train", *TINY, "--run.dir=runs/bad", *args, cwd=corpus, check=False,
                   threads=1, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert_clean_failure(proc, proc.stderr, "train")


def test_train_odd_but_valid_overrides_subprocess(corpus):
    proc = lmforge("train", *TINY, "--run.dir=runs/odd", "--optim.lr=1e308", "--optim.eps=0",
                   "--optim.warmup_steps=0", "--train.max_minutes=1e-9", "--run.seed=0",
                   cwd=corpus, check=False, threads=1, timeout=120)
    assert_clean_failure(proc, proc.stderr, "train")


# ---------------------------------------------------------------- damaged shard files

def _damage(data: Path, how: str) -> None:
    shard = data / "train-00000.bin"
    blob = bytearray(shard.read_bytes())
    manifest = json.loads((data / "manifest.json").read_text())
    if how == "truncated":
        shard.write_bytes(blob[: len(blob) // 2])
    elif how == "truncated-odd":
        shard.write_bytes(blob[:-1])
    elif how == "flipped":
        blob[len(blob) // 3] ^= 0x40
        shard.write_bytes(blob)
    elif how == "empty":
        shard.write_bytes(b"")
    elif how == "missing":
        shard.unlink()
    elif how == "dtype-uint32":
        manifest["dtype"] = "uint32"
    elif how == "dtype-float64":
        manifest["dtype"] = "float64"
    elif how == "tokens-lie":
        manifest["splits"]["train"]["files"][0]["tokens"] += 1000
    (data / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("how", ["truncated", "truncated-odd", "flipped", "empty", "missing",
                                 "dtype-uint32", "dtype-float64", "tokens-lie"])
def test_damaged_shard_is_one_line(corpus, how):
    data = corpus / "data" / f"damaged-{how}"
    shutil.copytree(corpus / "data" / "json", data)
    _damage(data, how)
    proc = lmforge("train", *TINY, f"--data.path={data}", f"--run.dir=runs/dmg-{how}",
                   cwd=corpus, check=False, threads=1, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert_clean_failure(proc, proc.stderr, "train")
    last = proc.stderr.strip().splitlines()[-1]
    assert ("train-00000.bin" in last) or ("dtype 'float64'" in last), last
    assert "prepare the dataset again" in last


# ------------------------------------------------------------------------ full disk

def _train_with_file_limit(args, *, cwd, limit):
    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return lmforge("train", *args, cwd=cwd, check=False, threads=1, timeout=300,
                   preexec_fn=limit_files)


def test_full_disk_keeps_the_last_checkpoint(corpus):
    run = corpus / "runs" / "fulldisk"
    ckpts = run / "checkpoints"
    lmforge("train", *TINY, "--train.max_steps=4", "--checkpoint.every=2", f"--run.dir={run}",
            cwd=corpus, threads=1)
    assert (ckpts / "latest").read_text().strip() == "step_00000004"
    biggest = max(p.stat().st_size for p in (ckpts / "step_00000004").rglob("*") if p.is_file())
    small = max(p.stat().st_size for p in run.rglob("*")
                if p.is_file() and "checkpoints" not in p.parts)
    # Room for the logs the resumed run appends to, not for a checkpoint's largest file.
    limit = max(small * 4, 64_000)
    assert limit < biggest, (limit, biggest)

    proc = _train_with_file_limit(["--resume", str(run), "--train.max_steps=8"],
                                  cwd=corpus, limit=limit)
    assert proc.returncode == 2, proc.stderr
    assert_clean_failure(proc, proc.stderr, "train")
    last = proc.stderr.strip().splitlines()[-1]
    assert "step 6: checkpoint not saved" in last
    assert "disk space" in last and "file size limit" in last, last
    assert "step_00000004" in last and "--checkpoint.keep_last" in last, last
    assert (ckpts / "latest").read_text().strip() == "step_00000004"
    assert not list(ckpts.glob(".tmp-*"))  # the half-written directory is gone at once
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000002", "step_00000004"]

    ev = lmforge("eval", run, "--batches", "1", "--json", cwd=corpus, threads=1)
    assert json.loads(ev.stdout)["step"] == 4

    # A crash in the middle of the save (simulated by what such a crash leaves) is cleaned
    # up by the next start, which then resumes from the intact checkpoint and finishes.
    (ckpts / ".tmp-step_00000006" / "state").mkdir(parents=True)
    done = lmforge("train", "--resume", run, "--train.max_steps=8", cwd=corpus, threads=1)
    assert "resumed from" in done.stderr and "step_00000004" in done.stderr
    assert not list(ckpts.glob(".tmp-*"))
    assert (ckpts / "latest").read_text().strip() == "step_00000008"
