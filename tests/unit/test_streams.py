"""The truncated-BPTT loader: contiguous lanes, wrap-around with reset flags, resume on
another number of ranks, and stream evaluation that covers the split."""

import numpy as np
import pytest
import torch

from lmforge.data.loader import Streams, stream_chunks
from lmforge.errors import DataError

TOKENS = np.arange(1000, dtype=np.uint16)  # token i is i: a window's values are its offsets


def test_each_row_reads_its_lane_chunk_after_chunk():
    loader = Streams(TOKENS, batch_size=4, block_size=10)
    assert loader.chunks == 999 // 40 == 24 and loader.lane_tokens == 240
    rows = [[] for _ in range(4)]
    for _ in range(loader.chunks):
        x, y = loader.next_batch()
        assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y - x, torch.ones_like(x))
        for lane, row in zip(rows, x.tolist(), strict=True):
            lane.extend(row)
    for i, lane in enumerate(rows):  # lane i is one contiguous stretch: its own part of the split
        assert lane == list(range(i * 240, (i + 1) * 240))


def test_lanes_wrap_together_and_say_so():
    loader = Streams(TOKENS, batch_size=3, block_size=50)
    assert loader.chunks == 6
    flags, firsts = [], []
    for _ in range(2 * loader.chunks + 1):
        starts = loader.next_starts()
        flags.append(loader.restarts(starts).tolist())
        firsts.append(starts.tolist())
    restarts = [s for s, f in enumerate(flags) if any(f)]
    assert restarts == [0, 6, 12] and all(all(flags[s]) for s in restarts)
    assert firsts[6] == firsts[0] == [0, 300, 600]  # back to the start of each lane


def test_ranks_and_micro_batches_split_the_lanes():
    one = Streams(TOKENS, batch_size=8, block_size=10)
    parts = [Streams(TOKENS, batch_size=2, block_size=10, grad_accum=2, dp_rank=r, dp_size=2)
             for r in range(2)]
    for _ in range(3):
        whole = one.next_starts()
        # micro-batch a of rank r reads lanes (a*2 + r)*2 …: the same order as the global batch
        shared = np.concatenate([p.next_starts() for _ in range(2) for p in parts])
        assert np.array_equal(whole, shared)


def test_resume_on_another_number_of_ranks_continues_every_lane():
    a = Streams(TOKENS, batch_size=2, block_size=10, dp_size=2)  # rank 0 of 2
    for _ in range(5):
        a.next_starts()
    b = Streams(TOKENS, batch_size=4, block_size=10)  # one process, the same 4 lanes
    b.load_state_dict(a.state_dict())
    reference = Streams(TOKENS, batch_size=4, block_size=10)
    for _ in range(5):
        reference.next_starts()
    for _ in range(30):  # across the wrap, too
        assert np.array_equal(b.next_starts(), reference.next_starts())


def test_another_global_batch_or_split_is_refused_on_resume():
    a = Streams(TOKENS, batch_size=4, block_size=10)
    with pytest.raises(DataError, match="streamed 4 lanes in parallel, this run has 8"):
        Streams(TOKENS, batch_size=8, block_size=10).load_state_dict(a.state_dict())
    with pytest.raises(DataError, match="another length"):
        Streams(TOKENS[:500], batch_size=4, block_size=10).load_state_dict(a.state_dict())
    with pytest.raises(DataError, match="not from contiguous streams"):
        a.load_state_dict({"step": 3, "micro": 0, "seed": 0, "global_batch": 4})


def test_split_too_short_for_the_streams_is_a_clear_error():
    with pytest.raises(DataError, match="fewer than the 64 streams x model.block_size=16"):
        Streams(TOKENS, batch_size=64, block_size=16)


@pytest.mark.parametrize("ranks", [1, 2])
def test_stream_evaluation_covers_the_split_once(ranks):
    tokens = np.arange(103, dtype=np.uint16)
    lanes = 4
    shares = [list(stream_chunks(tokens, lanes=lanes, block_size=10, rank=r, ranks=ranks))
              for r in range(ranks)]
    assert len({len(s) for s in shares}) == 1
    targets = sorted(t for share in shares for _, y in share for t in y.reshape(-1).tolist())
    assert targets == list(range(1, 101))  # 102 // 4 = 25 per lane; the last 2 left out
    last = shares[0][-1][0]
    assert last.shape == (lanes // ranks, 5)  # 25 = 10 + 10 + 5


def test_stream_evaluation_subset_is_the_start_of_each_lane():
    chunks = list(stream_chunks(TOKENS, lanes=3, block_size=10, max_chunks=2))
    assert len(chunks) == 2
    assert chunks[0][0][:, 0].tolist() == [0, 333, 666] and chunks[1][0][:, 0].tolist() == [10, 343, 676]
