"""The hostile suite: every input an attacker or a careless user can hand lmforge, each run
through the real CLI, each judged the same way.

A case passes when the command ends in exit 0, or in exit 2 with exactly one error line
(`lmforge VERB: error: ...`), never a traceback or another exit code; when every file a
user had before it is still there, unchanged (`data_lost`); and when no file that a hostile
payload tries to create exists afterwards (`code_executed`).

    inputs           cases run
    one_line_errors  cases refused in one line (exit 2)
    accepted         cases that ran (exit 0)
    tracebacks       cases that crashed (a traceback, another exit code, or several error
                     lines)
    data_lost        cases after which a user's file was missing or changed
    code_executed    cases after which a hostile payload's marker file existed

Classes: every numeric config field at its extremes (in one process, many at a time),
damaged and hostile corpora, datasets, run directories, checkpoints and model directories,
out-of-range arguments of eval and generate, names that are markup, and scenarios: two
writers on one run or one dataset, a full disk while training and while preparing (a small
tmpfs, where this machine allows mounting one), a run stopped during start-up, a damaged
checkpoint resumed.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
MARKER = "HOSTILE-CODE-RAN"  # the file a hostile payload would create


@dataclass
class Tally:
    inputs: int = 0
    one_line_errors: int = 0
    accepted: int = 0
    tracebacks: int = 0
    data_lost: int = 0
    code_executed: int = 0
    failures: list[str] = field(default_factory=list)

    def result(self) -> str:
        return (f"inputs={self.inputs} one_line_errors={self.one_line_errors} "
                f"accepted={self.accepted} tracebacks={self.tracebacks} "
                f"data_lost={self.data_lost} code_executed={self.code_executed}")


def judge(tally: Tally, name: str, code: int, stderr: str) -> None:
    """Count one command's outcome (see the module docstring)."""
    tally.inputs += 1
    errors = [line for line in stderr.splitlines() if ": error: " in line]
    if "Traceback" in stderr or code not in (0, 2) or (code == 2 and len(errors) != 1):
        tally.tracebacks += 1
        tally.failures.append(f"{name}: exit {code}\n{stderr[-600:]}")
    elif code == 2:
        tally.one_line_errors += 1
    else:
        tally.accepted += 1


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def lmforge(args: list[str], *, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge", *map(str, args)], cwd=cwd,
                          text=True, capture_output=True, env=ENV, timeout=timeout)


def run_case(tally: Tally, work: Path, name: str, args: list[str], *,
             keep: Path | None = None) -> subprocess.CompletedProcess:
    """Run `lmforge ARGS` and judge it; `keep`: a directory of user files that must survive."""
    before = snapshot(keep) if keep is not None else None
    (work / MARKER).unlink(missing_ok=True)
    proc = lmforge(args, cwd=work)
    judge(tally, name, proc.returncode, proc.stderr)
    if before is not None and any(snapshot(keep).get(k) != v for k, v in before.items()):
        tally.data_lost += 1
        tally.failures.append(f"{name}: user files in {keep} lost or changed")
    if (work / MARKER).exists():
        tally.code_executed += 1
        tally.failures.append(f"{name}: the hostile payload ran")
    return proc


# ---------------------------------------------------------------------------- config fields

# Run in one child process (with an address-space limit, so that a size that slipped
# through fails fast instead of taking the machine): each case is `main(argv)` with stderr
# captured, and an exception that escapes main is a traceback.
_FIELD_PROBE = textwrap.dedent("""
    import contextlib, io, json, resource, sys, traceback
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    from lmforge.cli.main import main
    from lmforge.config import field_infos
    values = ["-1", "0", "2147483648", "9223372036854775808", "1e308", "-1e308", "nan", "inf",
              "1e-320", "abc", "\\r"]
    out = []
    for info in field_infos():
        if info.type not in (int, float):
            continue
        for value in values:
            argv = ["train", f"--{info.key}={value}", "--data.path=nowhere", "--data.source="]
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = main(argv)
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
                except BaseException:
                    traceback.print_exc(file=err)
                    code = 1
            out.append({"name": " ".join(argv[1:2]), "code": code, "stderr": err.getvalue()})
    print(json.dumps(out))
""")


def config_fields(tally: Tally, work: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _FIELD_PROBE], cwd=work, text=True,
                          capture_output=True, env=ENV, timeout=600)
    if proc.returncode:
        judge(tally, "config field probe", proc.returncode, proc.stderr)
        return
    for case in json.loads(proc.stdout.strip().splitlines()[-1]):
        judge(tally, case["name"], case["code"], case["stderr"])


# ---------------------------------------------------------------------------- corpora

def corpora(tally: Tally, work: Path) -> None:
    files: dict[str, bytes] = {
        "binary.txt": bytes(range(256)) * 64, "invalid.txt": b"caf\xe9 \xff\xfe ok\n" * 50,
        "empty.txt": b"", "nul.txt": b"\x00" * 1000, "long.txt": b"x" * 3_000_000,
        "utf16.txt": "héllo wörld\n".encode("utf-16") * 50,
        "utf8bom.txt": b"\xef\xbb\xbf" + "héllo\n".encode() * 50,
        "deep.jsonl": b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
        "bigint.jsonl": b'{"text": "a", "n": ' + b"9" * 5000 + b"}\n",
        "list.jsonl": b'["not", "an", "object"]\n' * 10,
        "notext.jsonl": b'{"body": "no text field"}\n' * 10,
        "broken.parquet": b"PAR1" + b"\x00" * 100 + b"PAR1",
        "broken.gz": b"\x1f\x8b\x08\x00garbage",
        "broken.tar.gz": b"\x1f\x8b\x08\x00" + b"\xff" * 64,
        "x" * 300 + ".txt": b"",  # written below only if the file system takes the name
    }
    for name, payload in files.items():
        try:
            (work / name).write_bytes(payload)
        except OSError:  # ENAMETOOLONG: the case is then the name given on the command line
            pass
        run_case(tally, work, f"prepare {name[:40]}", ["prepare", "--data", name, "--tokenizer",
                 "char", "--out", f"h-{name[:40]}", "--no-progress"])
    for spec in ("http://[::1", "http://", "nltk:", "hf:", "missing/*.txt", "nope.txt", "",
                 "file:///etc/passwd", "ftp://example.invalid/x"):
        run_case(tally, work, f"prepare {spec!r}", ["prepare", "--data", spec, "--out", "h-spec",
                                                    "--no-progress"])
    for out in ("keep/afile", "keep/afile/sub", "/proc/lmforge"):
        run_case(tally, work, f"prepare --out {out}", ["prepare", "--data", "invalid.txt",
                 "--tokenizer", "char", "--out", out, "--no-progress"], keep=work / "keep")


def user_directories(tally: Tally, work: Path) -> None:
    """`prepare --out` into directories that hold a user's files: nothing may be removed."""
    layouts = {
        "webapp": {"manifest.json": '{"name": "my app"}', "important.txt": "keep me",
                   "src/app.py": "print('hi')"},
        "lookalike": {"manifest.json": '{"format": 2}', "important.txt": "keep me"},
        "notjson": {"manifest.json": "not json", "notes.txt": "keep me"},
        "nested": {"data/manifest.json": "{}", "readme.md": "keep me"},
    }
    for name, layout in layouts.items():
        root = work / "keep" / name
        for rel, text in layout.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        run_case(tally, work, f"prepare into {name}", ["prepare", "--data", "invalid.txt",
                 "--tokenizer", "char", "--out", root, "--no-progress"], keep=work / "keep")


# ---------------------------------------------------------------------------- runs

def _fresh_run(work: Path, name: str, tiny: list[str], steps: int = 4) -> Path:
    run = work / "runs" / name
    shutil.rmtree(run, ignore_errors=True)
    proc = lmforge(["train", *tiny, f"--train.max_steps={steps}", "--checkpoint.every=2",
                    f"--run.dir={run}"], cwd=work)
    if proc.returncode:
        sys.exit(f"could not train the fixture run {name}:\n{proc.stderr}")
    return run


def _rehash(checkpoint: Path) -> None:
    """Make meta.json's checksums agree with the files again, as an attacker would."""
    import hashlib

    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["sha256"] = {f: hashlib.sha256((checkpoint / f).read_bytes()).hexdigest()
                      for f in meta["sha256"] if (checkpoint / f).is_file()}
    (checkpoint / "meta.json").write_text(json.dumps(meta))


class _Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (exec, (f"open({MARKER!r}, 'w').write('ran')",))


DAMAGES: dict[str, Callable[[Path], None]] = {}


def damage(name: str) -> Callable[[Callable[[Path], None]], Callable[[Path], None]]:
    def register(fn: Callable[[Path], None]) -> Callable[[Path], None]:
        DAMAGES[name] = fn
        return fn
    return register


@damage("truncated weights")
def _truncate(ck: Path) -> None:
    w = ck / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-50])


@damage("flipped byte")
def _flip(ck: Path) -> None:
    w = ck / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))


@damage("meta.json deleted")
def _no_meta(ck: Path) -> None:
    (ck / "meta.json").unlink()


@damage("distcp replaced, checksums forged")
def _distcp(ck: Path) -> None:
    for shard in (ck / "state").glob("*.distcp"):
        shard.write_bytes(b"\x00" * shard.stat().st_size)
    _rehash(ck)


@damage("trainer.pt garbage, checksums forged")
def _trainer(ck: Path) -> None:
    (ck / "trainer.pt").write_bytes(b"garbage" * 10)
    _rehash(ck)


@damage("malicious trainer.pt")
def _evil_trainer(ck: Path) -> None:
    (ck / "trainer.pt").write_bytes(pickle.dumps(_Payload()))
    _rehash(ck)


@damage("malicious .metadata")
def _evil_metadata(ck: Path) -> None:
    (ck / "state" / ".metadata").write_bytes(pickle.dumps(_Payload()))
    _rehash(ck)


@damage("meta.json says another shape")
def _shape(ck: Path) -> None:
    meta = json.loads((ck / "meta.json").read_text())
    meta["model"]["n_embd"] = 10**12
    (ck / "meta.json").write_text(json.dumps(meta))


def checkpoints(tally: Tally, work: Path, tiny: list[str]) -> None:
    for name, fn in DAMAGES.items():
        run = _fresh_run(work, "ck", tiny)
        for ck in sorted((run / "checkpoints").glob("step_*")):  # every checkpoint damaged
            fn(ck)
        for verb in (["train", "--resume", run], ["eval", run], ["generate", run,
                     "--max-new-tokens", "5"], ["export", run, "--out", work / "exp-ck"]):
            shutil.rmtree(work / "exp-ck", ignore_errors=True)
            run_case(tally, work, f"{verb[0]} with {name}", verb)


RUN_FILES: dict[str, tuple[str, bytes]] = {
    "config not UTF-8": ("config.toml", b"\xff\xfe[model]\n"),
    "config not TOML": ("config.toml", b"[model\nn_layer = "),
    "config wrong types": ("config.toml", b"[model]\nn_layer = 'two'\n"),
    "config unknown key": ("config.toml", b"[model]\nn_lyr = 2\n"),
    "metrics a list line": ("metrics.jsonl", b'[1, 2]\n{"kind": "train"}\n'),
    "metrics binary": ("metrics.jsonl", bytes(range(256)) * 4),
    "metrics non-numbers": ("metrics.jsonl", b'{"kind": "train", "step": "x", "loss": "y"}\n'),
    "metrics deep": ("metrics.jsonl", b"[" * 50_000 + b"]" * 50_000 + b"\n"),
    "samples not UTF-8": ("samples.txt", b"\xff\xfe\xfa"),
    "eval samples damaged": ("samples.jsonl", b'{"step": 1, "texts": 5}\n[\n'),
    "latest points outside": ("checkpoints/latest", b"../../../etc\n"),
    "best names nothing": ("checkpoints/best", b"step_99999999\n"),
}


def run_directories(tally: Tally, work: Path, tiny: list[str]) -> None:
    for name, (rel, payload) in RUN_FILES.items():
        run = _fresh_run(work, "rf", tiny)
        (run / rel).write_bytes(payload)
        for verb in (["report", run], ["train", "--resume", run], ["eval", run]):
            run_case(tally, work, f"{verb[0]} with {name}", verb)
    for name in ("m$\\frac{$", "$x^2$", "a b<script>"):
        run = _fresh_run(work, name, tiny)
        run_case(tally, work, f"report of run {name!r}", ["report", run])
    for target in ("keep/afile", "keep/afile/sub"):
        run_case(tally, work, f"train --run.dir={target}", ["train", *tiny,
                 "--train.max_steps=2", f"--run.dir={target}"], keep=work / "keep")


DATASET_DAMAGES: dict[str, Callable[[dict], None]] = {
    "no dtype": lambda m: m.pop("dtype"),
    "dtype garbage": lambda m: m.update(dtype="float128"),
    "shard outside": lambda m: m["splits"]["train"]["files"][0].update(file="../../etc/passwd"),
    "shard absolute": lambda m: m["splits"]["train"]["files"][0].update(file="/etc/passwd"),
    "splits a list": lambda m: m.update(splits=[]),
    "tokens negative": lambda m: m["splits"]["train"]["files"][0].update(tokens=-5),
    "no tokenizer": lambda m: m.pop("tokenizer"),
    "docs outside": lambda m: m["splits"]["val"].update(docs_file="../../etc/hostname"),
}


def datasets(tally: Tally, work: Path, tiny: list[str]) -> None:
    for name, fn in DATASET_DAMAGES.items():
        copy = work / "dd"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(work / "data", copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        fn(manifest)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        run_case(tally, work, f"train on a dataset with {name}", ["train", *tiny,
                 "--train.max_steps=2", "--data.path=dd", "--run.dir=runs/dd"])
        shutil.rmtree(work / "runs" / "dd", ignore_errors=True)
    shard = work / "data" / "train-00000.bin"
    original = shard.read_bytes()
    for damaged in (original[: len(original) // 2], original[:-1], b""):
        shard.write_bytes(damaged)
        run_case(tally, work, "train on a damaged shard", ["train", *tiny,
                 "--train.max_steps=2", "--run.dir=runs/h2"])
    shard.write_bytes(original)


# ---------------------------------------------------------------------------- model dirs

def model_directories(tally: Tally, work: Path, tiny: list[str]) -> None:
    run = _fresh_run(work, "src", tiny)
    base = work / "hf"
    shutil.rmtree(base, ignore_errors=True)
    if lmforge(["export", run, "--out", base], cwd=work).returncode:
        return
    config = json.loads((base / "config.json").read_text())
    variants: dict[str, Callable[[Path], None]] = {
        "config a list": lambda d: (d / "config.json").write_text("[1, 2]"),
        "config strings": lambda d: (d / "config.json").write_text(
            json.dumps({**config, "n_layer": "two"})),
        "config negative": lambda d: (d / "config.json").write_text(
            json.dumps({**config, "n_embd": -32})),
        "config zero": lambda d: (d / "config.json").write_text(
            json.dumps({**config, "n_head": 0})),
        "config 10^12 layers": lambda d: (d / "config.json").write_text(
            json.dumps({**config, "n_layer": 10**12})),
        "config 10^12 vocabulary": lambda d: (d / "config.json").write_text(
            json.dumps({**config, "vocab_size": 10**12})),
        "weights corrupt": lambda d: (d / "model.safetensors").write_bytes(b"\x08" + b"\0" * 20),
        "index without weight_map": lambda d: (
            (d / "model.safetensors").rename(d / "part.safetensors"),
            (d / "model.safetensors.index.json").write_text("{}")),
        "index pointing outside": lambda d: (
            (d / "model.safetensors").unlink(),
            (d / "model.safetensors.index.json").write_text(
                json.dumps({"weight_map": {"x": "../../../etc/passwd"}}))),
        "tokenizer corrupt": lambda d: (d / "tokenizer.json").write_text("{broken"),
        "malicious pytorch_model.bin": lambda d: (
            (d / "model.safetensors").unlink(),
            (d / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload()))),
    }
    for name, fn in variants.items():
        target = work / "hfx"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(base, target)
        fn(target)
        run_case(tally, work, f"--init-from {name}", ["train", *tiny, "--train.max_steps=2",
                 "--init-from", target, "--run.dir=runs/hfx"])
        shutil.rmtree(work / "runs" / "hfx", ignore_errors=True)


# ---------------------------------------------------------------------------- arguments

def arguments(tally: Tally, work: Path, tiny: list[str]) -> None:
    run = _fresh_run(work, "args", tiny)
    cases = [
        ["generate", run, "--num-samples", "100000000"], ["generate", run, "--seed", str(2**70)],
        ["generate", run, "--seed", "-1"], ["generate", run, "--temperature", "nan"],
        ["generate", run, "--top-p", "nan"], ["generate", run, "--max-new-tokens", str(2**62)],
        ["generate", run, "--checkpoint", "step_404"], ["generate", run, "--device", "tpu"],
        ["eval", run, "--batches", "100000000000"], ["eval", run, "--batch-size", str(2**40)],
        ["eval", run, "--split", "nope"], ["eval", run, "--checkpoint", "best"],
        ["eval", run, "--data", "nowhere"], ["export", run, "--out", run],
        ["report", run, "--out", work / "keep" / "afile"], ["bench", "--steps", "0"],
        ["compare", "--data", "data", "--tokens", "-1"], ["verify-resume", "--steps", "1"],
        ["train", "--nproc", "0"], ["train", "nope-recipe"], ["train", "--resume", run, "x"],
    ]
    for args in cases:
        run_case(tally, work, " ".join(map(str, args))[:80], args)


# ---------------------------------------------------------------------------- scenarios

def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists():
            return True
        time.sleep(0.01)
    return False


def two_writers(tally: Tally, work: Path, tiny: list[str]) -> None:
    """A second `train --resume` on a run that is training, and a second `prepare` into a
    dataset that is being written: the second is refused in one line."""
    run = _fresh_run(work, "busy", tiny)
    first = subprocess.Popen([sys.executable, "-m", "lmforge", "train", "--resume", str(run),
                              "--train.max_steps=100000", "--checkpoint.every=50"], cwd=work,
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(run / "checkpoints" / "step_00000050", first)
    second = run_case(tally, work, "a second train --resume on a busy run",
                      ["train", "--resume", run, "--optim.lr=0.1"])
    if second.returncode != 2:
        tally.data_lost += 1
        tally.failures.append("two writers trained one run")
    first.send_signal(signal.SIGTERM)
    first.wait()
    big = work / "big.txt"
    big.write_text("".join(f"line {i} of a corpus big enough to take a while\n"
                           for i in range(400_000)))
    first = subprocess.Popen([sys.executable, "-m", "lmforge", "prepare", "--data", str(big),
                              "--tokenizer", "bpe", "--vocab-size", "4096", "--out", "busy-ds",
                              "--no-progress"], cwd=work, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # a moment into its work: the lock is taken at its start
    second = run_case(tally, work, "a second prepare into a busy dataset",
                      ["prepare", "--data", big, "--tokenizer", "char", "--out", "busy-ds"])
    first.wait()
    if second.returncode == 0 and first.returncode == 0:
        tally.data_lost += 1
        tally.failures.append("two prepares both wrote one dataset")


def full_disk(tally: Tally, work: Path, tiny: list[str]) -> bool:
    """Training and preparing on a 6 MB tmpfs that fills up; False where none can be mounted."""
    disk = work / "disk"
    disk.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        return False
    try:
        proc = run_case(tally, work, "training onto a full disk", ["train", *tiny,
                        "--train.max_steps=100000", "--checkpoint.every=20",
                        "--checkpoint.keep_last=1000", f"--run.dir={disk / 'run'}"])
        if proc.returncode == 2:  # the disk filled: free it, and the run must resume
            for ck in sorted((disk / "run" / "checkpoints").glob("step_*"))[:-2]:
                shutil.rmtree(ck)
            run_case(tally, work, "resume after a full disk", ["train", "--resume",
                     disk / "run", "--train.max_steps=60"])
        shutil.rmtree(disk / "run", ignore_errors=True)
        if not (work / "big.txt").exists():
            (work / "big.txt").write_text("x y\n" * 2_000_000)
        run_case(tally, work, "preparing onto a full disk", ["prepare", "--data",
                 work / "big.txt", "--tokenizer", "char", "--out", disk / "ds", "--no-progress"])
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    return True


def stopped_during_startup(tally: Tally, work: Path, tiny: list[str]) -> None:
    run = work / "runs" / "startup"
    shutil.rmtree(run, ignore_errors=True)
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", "train", *tiny,
                             "--train.max_steps=20", f"--run.dir={run}"], cwd=work, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(run / "config.toml", proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    run_case(tally, work, "resume a run stopped during start-up", ["train", "--resume", run])


def hostile_suite(work: Path, tiny: list[str]) -> Tally:
    """Every class, in `work` (which holds a prepared dataset in data/)."""
    tally = Tally()
    (work / "keep").mkdir(exist_ok=True)  # a user's files: every case must leave them be
    (work / "keep" / "diary.txt").write_text("a user's file\n")
    (work / "keep" / "afile").write_text("user data\n")
    for part in (config_fields, corpora, user_directories):
        part(tally, work)
    for part_tiny in (checkpoints, run_directories, datasets, model_directories, arguments,
                      two_writers, stopped_during_startup):
        part_tiny(tally, work, tiny)
    if not full_disk(tally, work, tiny):
        print("full disk: no tmpfs can be mounted here (not root?); those cases skipped")
    return tally
