"""Model FLOPs utilization: the formula, the device peak and its cache, and an MFU above 100%.

Nothing here depends on timing: the probe's timed runs and the machine's load average are
passed in."""

import json
import math

import pytest
import torch

from lmforge.train import mfu

CPU = torch.device("cpu")
F32 = torch.float32
QUIET = mfu.Load(average=0.5, cores=2)
BUSY = mfu.Load(average=3.1, cores=2)


def probe_of(flops: float):
    """A probe that reports `flops` and counts its calls."""
    calls = []

    def probe(device: torch.device, dtype: torch.dtype) -> float:
        calls.append((device, dtype))
        return flops

    probe.calls = calls  # type: ignore[attr-defined]
    return probe


def cached(tmp_path, flops: float, load: mfu.Load, *, remeasure: bool = False):
    return mfu.cached_probe(CPU, F32, cache_dir=tmp_path, remeasure=remeasure,
                            probe=probe_of(flops), machine_load=lambda: load)


def stored(tmp_path) -> dict:
    (entry,) = json.loads((tmp_path / mfu.CACHE_FILE).read_text()).values()
    return entry


def test_mfu_is_achieved_flops_over_the_peak_of_every_device():
    assert mfu.mfu(1000.0, flops_per_token=6e6, peak=1e12, devices=2) == pytest.approx(3e-3)
    assert math.isnan(mfu.mfu(1000.0, flops_per_token=6e6, peak=math.nan))


def test_the_probe_is_the_median_of_its_timed_runs_after_a_warm_up():
    seconds = iter([100.0, 4.0, 1.0, 5.0, 3.0, 2.0])  # warm-up first, then five timed runs
    flops = mfu.probe_matmul(CPU, F32, size=10, runs=5, timed_run=lambda: next(seconds))
    assert flops == pytest.approx(2 * 10**3 / 3.0)  # the median run, not the best (1.0 s)
    assert next(seconds, None) is None  # every run was taken: one warm-up and five timed


def test_the_median_ignores_one_lucky_run_and_one_preempted_run():
    seconds = iter([1.0, 2.0, 0.01, 2.0, 50.0, 2.0])
    assert mfu.probe_matmul(CPU, F32, size=10, timed_run=lambda: next(seconds)) == \
        pytest.approx(2 * 10**3 / 2.0)


def test_a_probe_needs_a_timed_run():
    with pytest.raises(ValueError, match="at least 1 timed run"):
        mfu.probe_matmul(CPU, F32, size=10, runs=0, timed_run=lambda: 1.0)


def test_the_real_probe_measures_a_matmul():
    flops = mfu.probe_matmul(CPU, F32, size=64, runs=3)
    assert 1e6 < flops < 1e14  # a CPU does more than a megaflop and less than 100 TFLOP/s


def test_the_machine_is_busy_above_one_runnable_thread_per_usable_core():
    assert not mfu.Load(average=2.0, cores=2).busy
    assert mfu.Load(average=2.01, cores=2).busy
    assert not mfu.Load(average=math.nan, cores=2).busy  # unknown: nothing to hold against it
    assert str(BUSY) == "load 3.10 on 2 cores"
    load = mfu.current_load()
    assert load.cores >= 1


def test_configured_peak_wins_and_cpus_have_no_datasheet(tmp_path):
    assert mfu.peak_flops(CPU, F32, configured_tflops=2.5,
                          cache_dir=tmp_path) == (2.5e12, "train.peak_tflops")
    assert mfu.datasheet_peak(CPU, F32) is None
    assert not (tmp_path / mfu.CACHE_FILE).exists()  # nothing probed


def test_a_quiet_probe_is_cached_and_used_without_probing_again(tmp_path):
    flops, source = cached(tmp_path, 2e11, QUIET)
    assert flops == 2e11 and source.startswith("matmul probe") and "load 0.50 on 2 cores" in source
    assert stored(tmp_path)["flops"] == 2e11 and stored(tmp_path)["load"] == 0.5
    key = next(iter(json.loads((tmp_path / mfu.CACHE_FILE).read_text())))
    assert "float32" in key and f"threads={torch.get_num_threads()}" in key
    probe = probe_of(9e11)
    assert mfu.cached_probe(CPU, F32, cache_dir=tmp_path, probe=probe,
                            machine_load=lambda: QUIET)[0] == 2e11
    assert probe.calls == []  # the cached figure, no new probe


def test_a_busy_probe_serves_its_run_but_is_not_cached(tmp_path):
    flops, source = cached(tmp_path, 5e10, BUSY)
    assert flops == 5e10 and "busy machine (load 3.10 on 2 cores)" in source
    assert "not cached" in source and not (tmp_path / mfu.CACHE_FILE).exists()


def test_a_busy_probe_never_replaces_a_cached_quiet_one(tmp_path):
    cached(tmp_path, 2e11, QUIET)
    for busy_flops in (5e10, 9e11):  # lower or higher, a busy probe is left out
        flops, source = cached(tmp_path, busy_flops, BUSY, remeasure=True)
        assert flops == 2e11 and "busy machine" in source and "left out" in source
        assert stored(tmp_path)["flops"] == 2e11


def test_quiet_probes_keep_the_best(tmp_path):
    cached(tmp_path, 2e11, QUIET)
    assert cached(tmp_path, 1.5e11, QUIET, remeasure=True)[0] == 2e11  # lower: kept as it was
    assert stored(tmp_path)["flops"] == 2e11
    assert cached(tmp_path, 2.2e11, QUIET, remeasure=True)[0] == 2.2e11
    assert stored(tmp_path)["flops"] == 2.2e11


def test_the_environment_asks_for_a_new_probe(tmp_path, monkeypatch):
    cached(tmp_path, 2e11, QUIET)
    monkeypatch.setenv(mfu.REPROBE_ENV, "1")
    assert cached(tmp_path, 2.4e11, QUIET)[0] == 2.4e11
    monkeypatch.setenv(mfu.REPROBE_ENV, "0")
    assert cached(tmp_path, 3e11, QUIET)[0] == 2.4e11  # "0": the cache as usual


def test_a_figure_of_the_former_cache_or_a_damaged_one_is_probed_again(tmp_path):
    key = mfu._cache_key(CPU, F32)
    for old in (1e30, {"flops": "fast"}, {"flops": -1.0, "load": 0, "cores": 2, "date": "x"}):
        (tmp_path / mfu.CACHE_FILE).write_text(json.dumps({key: old}))
        assert cached(tmp_path, 2e11, QUIET)[0] == 2e11
        assert stored(tmp_path)["flops"] == 2e11
    (tmp_path / mfu.CACHE_FILE).write_text("not json")
    assert cached(tmp_path, 2e11, QUIET)[0] == 2e11


def test_probing_leaves_the_global_random_state_alone(tmp_path):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    mfu.probe_matmul(CPU, F32, size=32, runs=1)
    assert torch.equal(torch.rand(3), expected)


# --- above 100% --------------------------------------------------------------------------


def test_an_mfu_above_100_percent_is_no_figure_but_a_note_with_the_fix():
    share, note = mfu.utilization(1.75e4, flops_per_token=14e6, peak=0.205e12,
                                  source="matmul probe on a busy machine (load 3.10 on 2 "
                                         "cores), median of 5 matmuls, not cached")
    assert math.isnan(share)
    assert note.startswith("mfu n/a (this run reached 0.245 TFLOP/s per device, above 100% of a "
                           "probed peak of 0.205 TFLOP/s: the probe ran on a busy machine")
    assert "--train.peak_tflops" in note and "LMFORGE_REPROBE=1" in note
    share, note = mfu.utilization(1.75e4, flops_per_token=14e6, peak=1e12, source="x")
    assert share == pytest.approx(0.245) and note == ""


def test_the_note_names_the_fix_for_each_source_of_the_peak():
    def note(source: str) -> str:
        return mfu.utilization(1e4, flops_per_token=1e8, peak=1e11, source=source)[1]

    assert "give the device's real peak in --train.peak_tflops" in note("train.peak_tflops")
    assert "FLOPs per token overcount" in note("datasheet, NVIDIA H100")
    assert "the probe read low" in note("matmul probe, median of 5 matmuls, cached")
    # exactly 100% is still a figure; only above it is none
    assert mfu.utilization(10.0, flops_per_token=1e10, peak=1e11, source="x") == (1.0, "")


def test_a_run_above_the_peak_logs_the_note_once_and_records_nan():
    said = []
    u = mfu.Utilization(device=CPU, dtype=F32, flops_per_token=14_000_000, devices=1,
                        configured_tflops=0.0, report=True, log=said.append)
    u.peak, u.source = 0.205e12, "matmul probe, median of 5 matmuls, cached"
    assert u.of(10_000) == pytest.approx(10_000 * 14e6 / 0.205e12)  # 68%: a figure, no note
    assert math.isnan(u.of(17_400)) and math.isnan(u.of(18_000))  # 119%, 123%: none
    assert len(said) == 1 and said[0].startswith("mfu n/a (") and "0.205 TFLOP/s" in said[0]
    assert u.record(17_400) is None and u.record(10_000) == u.of(10_000)  # JSON null, not NaN
    assert u.check(17_400).startswith("mfu n/a (")  # the end of the run says it again
    assert u.check(10_000) == ""
    assert len(said) == 1


def test_a_rank_that_does_not_report_has_no_figure_and_says_nothing():
    said = []
    u = mfu.Utilization(device=CPU, dtype=F32, flops_per_token=14_000_000, devices=2,
                        configured_tflops=0.0, report=False, log=said.append)
    assert u.find_peak() == "" and math.isnan(u.of(1e9)) and u.check(1e9) == "" and not said
