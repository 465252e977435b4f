"""DirectoryLock: one lmforge process at a time per directory, taken over from a killed one.

The other process is a real one that takes the lock, says so on its stdout and then waits
for its stdin to close: the test knows the lock is held when it reads that line, and lets
go by closing the pipe (or kills the holder). Nothing waits on a clock."""

import fcntl
import os
import signal
import subprocess
import sys

import pytest

from lmforge.errors import LmforgeError
from lmforge.locks import DirectoryLock, lock_path

HOLDER = """
import sys
from lmforge.locks import DirectoryLock

with DirectoryLock(sys.argv[1], what=sys.argv[2]):
    print("locked", flush=True)
    sys.stdin.read()  # held until the test closes this pipe
"""


class Holder:
    """A process that holds the lock on `path` from start() until release() or kill()."""

    def __init__(self, path, what="prepare"):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), what],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line == "locked\n", f"the holder did not take the lock: {line!r}"
        self.pid = self.proc.pid

    def release(self):
        self.proc.stdin.close()
        assert self.proc.wait() == 0

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait() == -signal.SIGKILL
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture
def holders():
    made = []

    def start(path, what="prepare"):
        made.append(Holder(path, what))
        return made[-1]

    yield start
    for holder in made:
        if holder.proc.poll() is None:
            holder.kill()


def test_second_process_is_refused_with_the_holders_pid(tmp_path, holders):
    out = tmp_path / "ds"
    holder = holders(out, "prepare")
    with pytest.raises(LmforgeError) as err:
        DirectoryLock(out, what="prepare").acquire()
    assert str(err.value) == (f"{out} is being written by another lmforge process "
                              f"(pid {holder.pid}, prepare); wait for it to finish or stop it")
    assert "\n" not in str(err.value)
    holder.release()
    with DirectoryLock(out, what="prepare") as lock:
        assert lock.held
        assert lock.lock_file.read_text() == f"{os.getpid()} prepare\n"


def test_lock_file_lives_beside_the_directory_and_goes_with_its_holder(tmp_path):
    out = tmp_path / "runs" / "exp1"  # neither exists yet
    assert lock_path(out) == tmp_path / "runs" / ".exp1.lock"
    assert lock_path(tmp_path / "runs" / "." / "exp1" / "..") == tmp_path / ".runs.lock"
    with DirectoryLock(out, what="train") as lock:
        assert lock.lock_file.is_file() and not out.exists()
    assert not lock.held
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_killed_holder_is_taken_over(tmp_path, holders):
    out = tmp_path / "ds"
    holder = holders(out)
    holder.kill()
    assert lock_path(out).read_text() == f"{holder.pid} prepare\n"  # left behind
    with DirectoryLock(out, what="train"):
        assert lock_path(out).read_text() == f"{os.getpid()} train\n"
    assert not lock_path(out).exists()


def test_not_reentrant_and_independent_per_directory(tmp_path):
    with DirectoryLock(tmp_path / "a"):
        with pytest.raises(LmforgeError, match=rf"\(pid {os.getpid()}\)"):
            DirectoryLock(tmp_path / "a").acquire()
        with DirectoryLock(tmp_path / "b"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_lock_file_removed_between_open_and_flock_is_made_anew(tmp_path, monkeypatch):
    """A finishing holder removes its file before it lets go: a process that opened the old
    file and locks it after that holds an orphan nobody else sees, and must start over."""
    out = tmp_path / "ds"
    path = lock_path(out)
    path.write_text("")  # the file of a holder about to finish
    real, removed = fcntl.flock, []

    def flock(fd, operation):
        if not removed:  # that holder finishes between our open and our flock
            os.unlink(path)
            removed.append(fd)
        return real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    with DirectoryLock(out) as lock:
        assert removed and path.is_file()
        assert path.read_text() == f"{os.getpid()} \n"
        with pytest.raises(LmforgeError, match="being written by another lmforge process"):
            DirectoryLock(out).acquire()
    assert not lock.held and not path.exists()


def test_unwritable_place_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(LmforgeError, match=r"cannot lock .*file/ds .*make sure .* is writable"):
        DirectoryLock(tmp_path / "file" / "ds").acquire()
