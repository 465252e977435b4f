import numpy as np
import pytest
import torch

from lmforge.data.loader import RandomWindows, count_windows, fixed_windows
from lmforge.errors import DataError

TOKENS = np.arange(1000, dtype=np.uint16)


def test_targets_are_inputs_shifted_by_one():
    x, y = RandomWindows(TOKENS, batch_size=4, block_size=16, seed=0).next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y - x, torch.ones_like(x))  # consecutive tokens in this corpus


def test_resume_from_state_gives_the_same_batches():
    a = RandomWindows(TOKENS, batch_size=3, block_size=8, seed=5)
    for _ in range(7):
        a.next_batch()
    b = RandomWindows(TOKENS, batch_size=3, block_size=8, seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        assert torch.equal(a.next_batch()[0], b.next_batch()[0])


def test_ranks_and_seeds_draw_different_windows():
    x0 = RandomWindows(TOKENS, batch_size=8, block_size=8, seed=1, rank=0).next_batch()[0]
    x1 = RandomWindows(TOKENS, batch_size=8, block_size=8, seed=1, rank=1).next_batch()[0]
    x2 = RandomWindows(TOKENS, batch_size=8, block_size=8, seed=2, rank=0).next_batch()[0]
    assert not torch.equal(x0, x1) and not torch.equal(x0, x2)


def test_windows_reach_the_last_token():
    tokens = np.arange(10, dtype=np.uint16)
    loader = RandomWindows(tokens, batch_size=64, block_size=8, seed=0)
    seen = torch.cat([loader.next_batch()[1] for _ in range(4)])
    assert seen.max().item() == 9


def test_full_split_windows_cover_every_target_once():
    batches = list(fixed_windows(TOKENS, block_size=10, batch_size=7))
    targets = torch.cat([y.reshape(-1) for _, y in batches])
    assert sorted(targets.tolist()) == list(range(1, len(targets) + 1))
    assert sum(len(x) for x, _ in batches) == count_windows(TOKENS, block_size=10)


def test_fixed_subset_is_the_same_every_time():
    a = [x for x, _ in fixed_windows(TOKENS, block_size=10, batch_size=4, max_windows=9)]
    b = [x for x, _ in fixed_windows(TOKENS, block_size=10, batch_size=4, max_windows=9)]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert sum(len(x) for x in a) == 9


def test_split_shorter_than_a_window_is_a_clear_error():
    with pytest.raises(DataError, match="fewer than model.block_size"):
        RandomWindows(TOKENS[:10], batch_size=1, block_size=16, seed=0)
