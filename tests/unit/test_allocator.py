"""glibc keeps freed tensor memory for reuse once the lmforge command has set its
thresholds: the blocks a training step frees and allocates again are not page-faulted back
in from the kernel each time (counted, not timed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHURN = """
import resource, sys
import torch
from lmforge.allocator import keep_freed_memory

if sys.argv[1] == "keep":
    assert keep_freed_memory()

def churn():
    for mb in (1, 3, 2, 6, 4, 8, 5, 7):  # activation-sized blocks of several sizes
        blocks = [torch.ones(mb << 18) for _ in range(4)]
        del blocks

churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_blocks_are_reused_instead_of_faulted_back_in():
    kept, default = page_faults("keep"), page_faults("default")
    assert kept < default / 10  # here 5,000 against 240,000 (4 KiB pages)
