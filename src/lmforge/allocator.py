"""Keep freed tensor memory in the process for the next tensor to reuse.

glibc's malloc hands a block above its mmap threshold (128 KiB at first, rising to the
largest block freed so far) straight back to the operating system when it is freed, and
trims the heap's free top beyond twice that. A training step on a CPU frees and allocates
the same few megabyte-sized activations over and over, so each one was page-faulted back in
and zeroed by the kernel: a small GPT's 150 steps took half a million page faults, a second
of system time on 2 cores, and 5-10% of the steps' wall time. Raising both thresholds keeps
the blocks in the heap's free lists, where the next step finds them. The resident size
stays what the largest step needed, as it does anyway while the process runs.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit systems)
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Set glibc's thresholds for this process; False where the C library is not glibc's
    (it has no mallopt, or refuses the values) and nothing changed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
