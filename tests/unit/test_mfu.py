"""Model FLOPs utilization: the formula, the device peak and its cache."""

import json
import math

import pytest
import torch

from lmforge.train import mfu

CPU = torch.device("cpu")


def test_mfu_is_achieved_flops_over_the_peak_of_every_device():
    assert mfu.mfu(1000.0, flops_per_token=6e6, peak=1e12, devices=2) == pytest.approx(3e-3)
    assert math.isnan(mfu.mfu(1000.0, flops_per_token=6e6, peak=math.nan))


def test_probe_measures_a_real_matmul():
    flops = mfu.probe_matmul(CPU, torch.float32, size=128, seconds=0.05)
    assert 1e6 < flops < 1e14  # a CPU does more than a megaflop and less than 100 TFLOP/s


def test_configured_peak_wins_and_cpus_have_no_datasheet(tmp_path):
    assert mfu.peak_flops(CPU, torch.float32, configured_tflops=2.5,
                          cache_dir=tmp_path) == (2.5e12, "train.peak_tflops")
    assert mfu.datasheet_peak(CPU, torch.float32) is None
    assert not (tmp_path / mfu.CACHE_FILE).exists()  # nothing probed


def test_probe_is_measured_once_then_cached_and_remeasuring_keeps_the_best(tmp_path):
    cache = tmp_path / mfu.CACHE_FILE
    first, source = mfu.peak_flops(CPU, torch.float32, cache_dir=tmp_path)
    assert first > 0 and source.startswith("matmul probe")
    (key, stored), = json.loads(cache.read_text()).items()
    assert stored == first and "float32" in key and f"threads={torch.get_num_threads()}" in key
    # a cached figure is used as it is, without a new probe
    cache.write_text(json.dumps({key: 123.0}))
    assert mfu.cached_probe(CPU, torch.float32, cache_dir=tmp_path) == 123.0
    # remeasuring replaces a figure lower than what the device does now...
    again = mfu.cached_probe(CPU, torch.float32, remeasure=True, cache_dir=tmp_path)
    assert again > 123.0 and json.loads(cache.read_text())[key] == again
    # ...but never lowers a higher one taken when the machine was quieter
    cache.write_text(json.dumps({key: 1e30}))
    assert mfu.cached_probe(CPU, torch.float32, remeasure=True, cache_dir=tmp_path) == 1e30


def test_an_unreadable_cache_is_measured_again(tmp_path):
    (tmp_path / mfu.CACHE_FILE).write_text("not json")
    assert mfu.cached_probe(CPU, torch.float32, cache_dir=tmp_path) > 0
    assert json.loads((tmp_path / mfu.CACHE_FILE).read_text())


def test_probing_leaves_the_global_random_state_alone(tmp_path):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    mfu.cached_probe(CPU, torch.float32, cache_dir=tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_a_run_faster_than_the_cached_peak_raises_it(tmp_path):
    mfu.raise_cached_peak(CPU, torch.float32, 5.0, cache_dir=tmp_path)  # nothing cached yet
    assert mfu.cached_probe(CPU, torch.float32, cache_dir=tmp_path) == 5.0
    mfu.raise_cached_peak(CPU, torch.float32, 3.0, cache_dir=tmp_path)  # lower: kept as it was
    assert mfu.cached_probe(CPU, torch.float32, cache_dir=tmp_path) == 5.0
    mfu.raise_cached_peak(CPU, torch.float32, 8.0, cache_dir=tmp_path)
    assert mfu.cached_probe(CPU, torch.float32, cache_dir=tmp_path) == 8.0
