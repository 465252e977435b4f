"""File helpers shared by datasets, downloads, checkpoints and runs."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lmforge.errors import DataError

_CHUNK = 1 << 20
# A write that failed for want of room: the disk, the user's quota or the file size limit.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (files may be larger than memory)."""
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """Where downloads and measured figures are kept: $LMFORGE_CACHE, else ~/.cache/lmforge."""
    return Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge"))


def write_text_atomic(path: Path, text: str) -> None:
    """Write `path` so that readers see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


class DiskFull(DataError):
    """A write failed for want of room (disk, quota, file size limit); says what was written."""


@contextmanager
def writing(what: str) -> Iterator[None]:
    """A write in the block that fails for want of room raises DiskFull naming `what`."""
    try:
        yield
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        raise DiskFull(f"out of disk space writing {what} ({os.strerror(err.errno)})") from None
