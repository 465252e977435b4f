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
    assert b.seed == 5
    for _ in range(5):
        assert torch.equal(a.next_batch()[0], b.next_batch()[0])


def test_ranks_split_the_global_batch_between_them():
    one = RandomWindows(TOKENS, batch_size=8, block_size=8, seed=1, grad_accum=2)
    two = [RandomWindows(TOKENS, batch_size=4, block_size=8, seed=1, grad_accum=2, dp_rank=r,
                         dp_size=2) for r in range(2)]
    for _ in range(3):  # steps
        single = np.concatenate([one.next_starts() for _ in range(2)])
        shared = np.concatenate([r.next_starts() for _ in range(2) for r in two])
        assert sorted(single) == sorted(shared)  # the same windows, none twice, none missed
    other_seed = RandomWindows(TOKENS, batch_size=8, block_size=8, seed=2)
    assert not np.array_equal(other_seed.next_starts(), one.step_starts(0)[:8])


def test_resume_on_another_number_of_ranks_continues_the_data_order():
    a = RandomWindows(TOKENS, batch_size=4, block_size=8, seed=0, dp_size=2)
    for _ in range(3):
        a.next_starts()  # rank 0 of 2 only, which is all that the state records
    b = RandomWindows(TOKENS, batch_size=4, block_size=8, seed=0, grad_accum=2)
    b.load_state_dict(a.state_dict())
    assert b.step == 3 and sorted(np.concatenate([b.next_starts(), b.next_starts()])) == \
        sorted(a.step_starts(3))


def test_another_global_batch_is_refused_on_resume():
    a = RandomWindows(TOKENS, batch_size=4, block_size=8, seed=0)
    b = RandomWindows(TOKENS, batch_size=8, block_size=8, seed=0)
    with pytest.raises(DataError, match="global batch of 4 windows, this run has 8"):
        b.load_state_dict(a.state_dict())


def test_windows_reach_the_last_token():
    tokens = np.arange(10, dtype=np.uint16)
    loader = RandomWindows(tokens, batch_size=64, block_size=8, seed=0)
    seen = torch.cat([loader.next_batch()[1] for _ in range(4)])
    assert seen.max().item() == 9


def test_full_split_windows_cover_every_target_once():
    batches = list(fixed_windows(TOKENS, block_size=10, batch_size=7))
    targets = torch.cat([y.reshape(-1) for _, y, _ in batches])
    assert sorted(targets.tolist()) == list(range(1, len(targets) + 1))
    assert sum(len(x) for x, _, _ in batches) == count_windows(TOKENS, block_size=10)


def test_fixed_subset_is_the_same_every_time():
    a = [x for x, _, _ in fixed_windows(TOKENS, block_size=10, batch_size=4, max_windows=9)]
    b = [x for x, _, _ in fixed_windows(TOKENS, block_size=10, batch_size=4, max_windows=9)]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert sum(len(x) for x in a) == 9


def test_split_shorter_than_a_window_is_a_clear_error():
    with pytest.raises(DataError, match="fewer than model.block_size"):
        RandomWindows(TOKENS[:10], batch_size=1, block_size=16, seed=0)


def test_ranks_share_the_evaluation_windows_in_equal_numbers_of_batches():
    whole = [x[:real] for x, _, real in fixed_windows(TOKENS, block_size=10, batch_size=4,
                                                      max_windows=11)]
    shares = [list(fixed_windows(TOKENS, block_size=10, batch_size=4, max_windows=11, rank=r,
                                 ranks=3)) for r in range(3)]
    assert len({len(share) for share in shares}) == 1  # the same number of forward calls
    counted = torch.cat([x[:real] for share in shares for x, _, real in share])
    assert sorted(counted[:, 0].tolist()) == sorted(torch.cat(whole)[:, 0].tolist())
