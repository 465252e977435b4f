"""prepare --out never loses what the user had: it replaces only a directory it can prove it
wrote, one prepare at a time writes a given --out, killed runs' build directories are
cleared, and a full disk is one line that leaves --out as it was.

Processes that matter are real ones (a lock holder that waits on a pipe, the CLI under a
file size limit or on a small tmpfs); nothing here waits on a clock."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import lmforge
from test_locks import Holder

from lmforge.config import TokenizerConfig
from lmforge.data import prepare as prepare_module
from lmforge.data import shards, stages
from lmforge.data.prepare import prepare
from lmforge.data.tokenizer import CharTokenizer
from lmforge.errors import DataError, LmforgeError
from lmforge.locks import lock_path

CHAR = TokenizerConfig("char")


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)


def write_corpus(directory: Path, count: int, words: int = 40, tag: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (directory / f"doc{i:04d}.txt").write_text(f"document {i}{tag}: " + "lorem ipsum " * words)
    return directory


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def prepared(tmp_path: Path, count: int = 6) -> tuple[Path, Path, dict]:
    """A corpus and the dataset prepared from it (char tokenizer)."""
    corpus = write_corpus(tmp_path / "corpus", count)
    out = tmp_path / "ds"
    manifest = prepare([str(corpus)], out, tokenizer=CHAR, log=Log(), progress=False)
    return corpus, out, manifest


def change(corpus: Path) -> None:
    """Another text in the corpus: preparing again replaces the dataset."""
    path = corpus / "doc0000.txt"
    path.write_text("a changed document " * 20)
    os.utime(path, ns=(1, 1))


def beside(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


# ----------------------------------------------------------------- what may be replaced

def web_app(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.js").write_text("console.log('hi')\n")
    (root / "manifest.json").write_text('{"name": "my app"}\n')
    (root / "important.txt").write_text("keep\n")
    return root


def test_a_web_apps_manifest_is_not_an_lmforge_dataset(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", 3)
    app = web_app(tmp_path / "webapp")
    before = files_of(app)
    with pytest.raises(DataError) as err:
        prepare([str(corpus)], app, tokenizer=CHAR, log=Log(), progress=False)
    assert str(err.value) == (f"{app} already holds files lmforge did not write (important.txt, "
                              "manifest.json, src); choose another --out or empty it")
    assert files_of(app) == before
    assert beside(tmp_path) == ["corpus", "webapp"]  # no build directory, no lock file


def test_a_web_app_through_the_cli_is_one_line_and_exit_2(tmp_path):
    write_corpus(tmp_path / "corpus", 3)
    before = files_of(web_app(tmp_path / "webapp"))
    proc = lmforge("prepare", "--data", "corpus", "--tokenizer", "char", "--out", "webapp",
                   "--no-progress", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "lmforge prepare: error: webapp already holds files lmforge did not write "
        "(important.txt, manifest.json, src); choose another --out or empty it"]
    assert files_of(tmp_path / "webapp") == before


@pytest.mark.parametrize("marked", [True, False])
def test_a_dataset_with_user_files_is_not_replaced(tmp_path, marked):
    corpus, out, manifest = prepared(tmp_path)
    if not marked:  # as format 2 wrote it before the marker
        del manifest[shards.MARKER], manifest[shards.CONTENTS]
        shards.write_manifest(out, manifest)
    (out / "tokenizer" / "notes.md").write_text("mine")
    before = files_of(out)
    change(corpus)
    with pytest.raises(DataError, match=r"ds already holds files lmforge did not write "
                                        r"\(tokenizer\); choose another --out or empty it"):
        prepare([str(corpus)], out, tokenizer=CHAR, log=Log(), progress=False)
    assert files_of(out) == before


def test_an_unmarked_format_2_dataset_is_recognized_and_replaced(tmp_path):
    corpus, out, manifest = prepared(tmp_path)
    del manifest[shards.MARKER], manifest[shards.CONTENTS]
    shards.write_manifest(out, manifest)
    change(corpus)
    log = Log()
    new = prepare([str(corpus)], out, tokenizer=CHAR, log=log, progress=False)
    assert f"the inputs of {out} changed; preparing it again" in log
    assert new[shards.MARKER] is True and shards.verify(out) == new
    assert set(new[shards.CONTENTS]) | {shards.MANIFEST} == set(files_of(out))


def format_1_dataset(out: Path) -> None:
    """A dataset as the first lmforge wrote it: one file per split, no report, format 1."""
    (out / "tokenizer").mkdir(parents=True)
    CharTokenizer("ab").save(out / "tokenizer")
    splits = {}
    for split in ("train", "val"):
        (out / f"{split}.bin").write_bytes(np.arange(4, dtype="<u2").tobytes())
        np.save(out / f"{split}.docs.npy", np.zeros(1, dtype=np.int64))
        splits[split] = {"file": f"{split}.bin", "tokens": 4, "bytes": 4, "documents": 1,
                         "sha256": "0" * 64, "docs_file": f"{split}.docs.npy"}
    (out / "manifest.json").write_text(json.dumps({
        "format": 1, "tokenizer": {"kind": "char", "vocab_size": 3, "eot_id": 2,
                                   "dir": "tokenizer"},
        "dtype": "uint16", "splits": splits, "settings": {}, "fingerprint": "x"}))


def test_an_older_format_dataset_is_replaced(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", 4)
    out = tmp_path / "ds"
    format_1_dataset(out)
    log = Log()
    manifest = prepare([str(corpus)], out, tokenizer=CHAR, log=log, progress=False)
    assert (f"the dataset at {out} was prepared by another version of lmforge (format 1, "
            "this one reads 2); preparing it again") in log
    assert not (out / "train.bin").exists() and shards.verify(out) == manifest
    assert beside(tmp_path) == ["corpus", "ds"]


def test_an_older_format_dataset_with_a_user_file_is_not_replaced(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", 4)
    out = tmp_path / "ds"
    format_1_dataset(out)
    (out / "train.bin.bak").write_bytes(b"my backup")
    before = files_of(out)
    with pytest.raises(DataError, match=r"lmforge did not write \(train.bin.bak\)"):
        prepare([str(corpus)], out, tokenizer=CHAR, log=Log(), progress=False)
    assert files_of(out) == before


def test_unchanged_dataset_with_a_user_file_is_reused_and_the_file_kept(tmp_path):
    corpus, out, manifest = prepared(tmp_path)
    (out / "notes.md").write_text("mine")
    log = Log()
    assert prepare([str(corpus)], out, tokenizer=CHAR, log=log, progress=False) == manifest
    assert log == [f"reusing prepared dataset at {out}"]
    assert (out / "notes.md").read_text() == "mine"


def test_links_and_folders_where_the_manifest_lists_files_are_not_lmforges(tmp_path):
    _, out, _ = prepared(tmp_path)
    assert shards.foreign_files(out) == []
    (tmp_path / "elsewhere").write_text("the user's")
    (out / "report.json").unlink()
    (out / "report.json").symlink_to(tmp_path / "elsewhere")
    (out / "val.docs.npy").unlink()
    (out / "val.docs.npy").mkdir()
    assert shards.foreign_files(out) == ["report.json", "val.docs.npy"]


def test_a_file_added_while_preparing_stops_the_replacement(tmp_path):
    """_existing found `out` lmforge's; a file put there before the new dataset moves in
    is found when it does, and both stay where they were."""
    _, out, _ = prepared(tmp_path)
    new = tmp_path / ".ds.tmp-1"
    shutil.copytree(out, new)
    (out / "late.txt").write_text("written while prepare ran")
    before = files_of(out)
    with pytest.raises(DataError, match=r"did not write \(late.txt\)"):
        stages.move_into_place(new, out)
    assert files_of(out) == before and new.is_dir()
    assert beside(tmp_path) == [".ds.tmp-1", "corpus", "ds"]


# ------------------------------------------------------------- one prepare at a time

def test_a_second_prepare_is_refused_while_the_first_holds_out(tmp_path):
    write_corpus(tmp_path / "corpus", 4)
    holder = Holder(tmp_path / "ds", "prepare")  # stands for a prepare that is writing ds
    try:
        proc = lmforge("prepare", "--data", "corpus", "--tokenizer", "byte", "--out", "ds",
                       "--no-progress", cwd=tmp_path, check=False)
    finally:
        holder.release()
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"lmforge prepare: error: ds is being written by another lmforge process "
        f"(pid {holder.pid}, prepare); wait for it to finish or stop it"]
    assert beside(tmp_path) == ["corpus"]
    proc = lmforge("prepare", "--data", "corpus", "--tokenizer", "byte", "--out", "ds",
                   "--no-progress", cwd=tmp_path)
    assert "prepared ds" in proc.stderr
    assert beside(tmp_path) == ["corpus", "ds"]  # the lock file went with its holder


def test_the_lock_of_a_killed_prepare_is_taken_over(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", 4)
    holder = Holder(tmp_path / "ds", "prepare")
    holder.kill()
    assert lock_path(tmp_path / "ds").exists()
    prepare([str(corpus)], tmp_path / "ds", tokenizer=CHAR, log=Log(), progress=False)
    assert beside(tmp_path) == ["corpus", "ds"]


def test_out_is_locked_while_it_is_built(tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus", 4)
    seen = []

    def build(run, tmp, fp):
        with pytest.raises(LmforgeError, match=rf"\(pid {os.getpid()}, prepare\)"):
            prepare([str(corpus)], tmp_path / "ds", log=Log(), progress=False)
        seen.append(tmp.name)
        return real(run, tmp, fp)

    real = prepare_module._build
    monkeypatch.setattr(prepare_module, "_build", build)
    prepare([str(corpus)], tmp_path / "ds", tokenizer=CHAR, log=Log(), progress=False)
    assert seen == [f".ds.tmp-{os.getpid()}"]


# --------------------------------------------------------- what killed runs left behind

def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_build_directories_of_killed_prepares_are_removed(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", 4)
    dead = dead_pid()
    (tmp_path / f".ds.tmp-{dead}").mkdir()
    (tmp_path / f".ds.tmp-{dead}" / "spool.jsonl").write_bytes(b"x" * 1_500_000)
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        (tmp_path / f".ds.tmp-{alive.pid}").mkdir()  # a prepare that is still running
        (tmp_path / f".other.tmp-{dead}").mkdir()  # another dataset's
        log = Log()
        prepare([str(corpus)], tmp_path / "ds", tokenizer=CHAR, log=log, progress=False)
    finally:
        alive.stdin.close()
        alive.wait()
    assert log[0] == (f"removed .ds.tmp-{dead} beside {tmp_path / 'ds'}, left by killed "
                      "prepare runs (1.5 MB)")
    assert beside(tmp_path) == [f".ds.tmp-{alive.pid}", f".other.tmp-{dead}", "corpus", "ds"]


def test_a_dataset_a_killed_prepare_had_moved_aside_is_put_back(tmp_path):
    corpus, out, manifest = prepared(tmp_path)
    dead = dead_pid()
    out.rename(tmp_path / f".ds.old-{dead}")  # killed between its two renames
    log = Log()
    assert prepare([str(corpus)], out, tokenizer=CHAR, log=log, progress=False) == manifest
    assert log == [f"put {out} back from .ds.old-{dead}, where a killed prepare had moved it",
                   f"reusing prepared dataset at {out}"]
    assert beside(tmp_path) == ["corpus", "ds"]


# ------------------------------------------------------------------------ a full disk

def full_disk_message(what: str, reason: str, out: Path | str) -> str:
    return (f"out of disk space writing {what} ({reason}); free space and run prepare again; "
            f"nothing was changed at {out}")


@pytest.mark.parametrize("what, failing", [
    ("train.docs.npy", "docs"), ("the tokenizer", "tokenizer"), ("report.json", "report"),
    ("manifest.json", "manifest")])
def test_a_full_disk_at_each_write_leaves_out_as_it_was(tmp_path, monkeypatch, what, failing):
    corpus, out, _ = prepared(tmp_path)
    before = files_of(out)
    change(corpus)
    code = errno.EDQUOT if failing == "report" else errno.ENOSPC

    def full(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    def full_in_rust(*args, **kwargs):  # as HF tokenizers reports it
        raise Exception(f"{os.strerror(code)} (os error {code})")  # noqa: TRY002

    target = {"docs": (np, "save", full), "report": (prepare_module, "save_report", full),
              "tokenizer": (CharTokenizer, "save", full_in_rust),
              "manifest": (os, "fsync", full)}[failing]
    monkeypatch.setattr(*target)
    with pytest.raises(DataError) as err:
        prepare([str(corpus)], out, tokenizer=CHAR, log=Log(), progress=False)
    assert str(err.value) == full_disk_message(what, os.strerror(code), out)
    assert files_of(out) == before
    assert beside(tmp_path) == ["corpus", "ds"]


def limit_file_size(limit: int):
    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails: EFBIG
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_files


@pytest.mark.parametrize("what, documents, words, shard_tokens", [
    ("the cleaned text (spool.jsonl)", 400, 20, 2000),  # 100 kB of text in 8 kB shards
    ("the train shards", 1, 4000, 1_000_000)])  # 48 kB of text in one 86 kB shard
def test_a_file_size_limit_is_one_line_and_leaves_out_as_it_was(tmp_path, what, documents,
                                                                 words, shard_tokens):
    corpus = write_corpus(tmp_path / "corpus", 4)
    args = ["prepare", "--data", "corpus", "--tokenizer", "char", "--out", "ds",
            "--shard-tokens", str(shard_tokens), "--no-progress"]
    lmforge(*args, cwd=tmp_path)
    before = files_of(tmp_path / "ds")
    shutil.rmtree(corpus)
    write_corpus(corpus, documents, words=words, tag=" again")
    proc = lmforge(*args, cwd=tmp_path, check=False, preexec_fn=limit_file_size(64_000))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "lmforge prepare: error: " + full_disk_message(what, "File too large", "ds"))
    assert "Traceback" not in proc.stderr
    assert files_of(tmp_path / "ds") == before
    assert beside(tmp_path) == ["corpus", "ds"]


TMPFS_RUN = """
set -u
mount -t tmpfs -o size=256k tmpfs "$DISK" || exit 99
cp small.txt corpus.txt
"$PY" -m lmforge prepare --data corpus.txt --tokenizer char --out "$DISK/ds" --no-progress \
    2>first.err || exit 98
(cd "$DISK" && find . -type f -exec sha256sum {} + | sort) > before.txt
cp big.txt corpus.txt
"$PY" -m lmforge prepare --data corpus.txt --tokenizer char --out "$DISK/ds" --no-progress \
    2>second.err
echo $? > second.rc
(cd "$DISK" && find . -type f -exec sha256sum {} + | sort) > after.txt
ls -A "$DISK" > listing.txt
"""


def test_a_full_tmpfs_is_one_line_and_leaves_out_as_it_was(tmp_path):
    """A real ENOSPC: a 256 kB tmpfs in a mount namespace of this test's own (no root
    needed where user namespaces are allowed), gone when the script ends."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here")
    disk = tmp_path / "disk"
    disk.mkdir()
    (tmp_path / "small.txt").write_text("to be or not to be, that is the question\n" * 20)
    (tmp_path / "big.txt").write_text("whether 'tis nobler in the mind to suffer\n" * 10_000)
    env = {**os.environ, "DISK": str(disk), "PY": sys.executable}
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                           TMPFS_RUN], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode == 99 or "unshare:" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr + (tmp_path / "first.err").read_text()
    assert (tmp_path / "second.rc").read_text().strip() == "2"
    stderr = (tmp_path / "second.err").read_text()
    assert stderr.strip().splitlines()[-1] == "lmforge prepare: error: " + full_disk_message(
        "the cleaned text (spool.jsonl)", "No space left on device", disk / "ds")
    assert (tmp_path / "after.txt").read_text() == (tmp_path / "before.txt").read_text()
    assert (tmp_path / "listing.txt").read_text().split() == ["ds"]
    assert not list(disk.iterdir())  # the tmpfs was this test's alone
