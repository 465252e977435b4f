"""One lmforge process at a time per directory: a dataset being prepared, a run being trained.

    with DirectoryLock(out, what="prepare"):
        ...  # create, fill or replace `out`; no other lmforge process does meanwhile

The lock is an OS file lock (flock) on `.NAME.lock` beside the directory, in its parent:
beside rather than inside, so that it can be taken before the directory exists, holds while
the directory is replaced by a rename, and never counts among the directory's files. The
file holds the holder's pid and `what` it does, for the error a second process gets at once
(it does not wait):

    DIR is being written by another lmforge process (pid 1234, prepare); wait for it to
    finish or stop it

The operating system releases the lock when its holder exits, however it ends, so a lock
file left by a killed process is simply taken over; a holder that finishes removes it.
The lock is not reentrant (a second DirectoryLock on the same directory in the same process
is refused as another's), and a child started by fork() shares it until it exits (spawned
and exec'd children do not: the descriptor is close-on-exec).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from lmforge.errors import LmforgeError

# File systems without flock (some network and FUSE mounts) say so with these: there the
# directory goes unlocked rather than unusable.
_NO_LOCKING = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS})


def lock_path(path: Path) -> Path:
    """The file that locks the directory `path`: `.NAME.lock` in its parent."""
    # abspath, not resolve: `--out .` or `ds/..` has a name only once made absolute, and a
    # symbolic link is locked by its own name, where the user points.
    path = Path(os.path.abspath(path))
    if not path.name:
        raise LmforgeError(f"{path} cannot be locked (it has no parent directory); choose "
                           "a directory below it")
    return path.parent / f".{path.name}.lock"


class DirectoryLock:
    """Exclusive use of the directory `path` by this process while the `with` block runs
    (or from acquire() to release()); `what` names what the holder does, for the message
    another process gets (see the module's doc)."""

    def __init__(self, path: Path, *, what: str = "") -> None:
        self.path = Path(path)
        self.what = what
        self.lock_file = lock_path(self.path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise LmforgeError naming the process that holds it."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already locked by this DirectoryLock")
        try:
            self.lock_file.parent.mkdir(parents=True, exist_ok=True)
            while self._fd is None:
                self._fd = self._try_lock()
        except OSError as err:
            raise LmforgeError(f"cannot lock {self.path} ({err.strerror}: {self.lock_file}); "
                               f"make sure {self.lock_file.parent} is writable and has free "
                               "space") from None
        try:
            os.ftruncate(self._fd, 0)
            os.write(self._fd, f"{os.getpid()} {self.what}\n".encode())
        except OSError:
            pass  # a full disk: the lock holds all the same, others just cannot name us

    def _try_lock(self) -> int | None:
        """The descriptor of the locked lock file; None to try again."""
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise LmforgeError(f"{self.path} is being written by another lmforge process "
                               f"({holder}); wait for it to finish or stop it") from None
        except OSError as err:
            if err.errno in _NO_LOCKING:
                return fd
            os.close(fd)
            raise
        # A holder that finished removes the file while it still holds the lock: if that
        # happened between our open and our flock, we locked a file nobody else can see.
        try:
            here = os.stat(self.lock_file)
        except FileNotFoundError:
            here = None
        mine = os.fstat(fd)
        if here is not None and (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)
        return None

    def release(self) -> None:
        """Let go of the lock and remove the lock file (no-op when not held)."""
        if self._fd is None:
            return
        try:
            # Removed while still held, so that nobody locks this file after we let go
            # (a process that opened it meanwhile sees it gone and makes its own: _try_lock).
            os.unlink(self.lock_file)
        except OSError:
            pass  # gone or not ours to remove: the next holder takes it over as it is
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _holder(fd: int) -> str:
    """'pid 1234, prepare' as the holder wrote it into the lock file."""
    try:
        pid, _, what = os.pread(fd, 4096, 0).decode(errors="replace").strip().partition(" ")
        int(pid)
    except (OSError, ValueError):
        return "pid unknown"  # it has only just created the file
    return f"pid {pid}, {what}" if what else f"pid {pid}"
