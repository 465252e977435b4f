"""The run report from the files a run directory holds: times that survive a resume, the
figures it can draw, the keys that differ between runs, and where it is written."""

from __future__ import annotations

import base64
import json
import re

import pytest

from lmforge.config import Config
from lmforge.errors import LmforgeError
from lmforge.rundir import RunDir, write_config
from lmforge.runs.report import _wall_clock, default_out, write_report


def test_wall_clock_continues_across_a_resume():
    train = [{"step": s, "elapsed_s": t} for s, t in [(1, 1.0), (2, 2.0), (3, 3.0), (3, 0.5), (4, 1.5)]]
    _wall_clock(train)
    assert [r["time_s"] for r in train] == [1.0, 2.0, 3.0, 3.5, 4.5]


def make_run(path, *, lr: float, steps: int = 6):
    cfg = Config()
    cfg.run.dir, cfg.optim.lr, cfg.data.path = str(path), lr, str(path / "no-data")
    write_config(cfg, RunDir(path))
    lines = [json.dumps({"kind": "train", "step": s, "loss": 5.0 / s, "grad_norm": 1.0, "lr": lr,
                         "tokens": 64 * s, "tokens_per_s": 1000.0, "elapsed_s": 0.1 * s})
             for s in range(1, steps + 1)]
    lines.insert(3, json.dumps({"kind": "eval", "step": 3, "val_loss": 2.0, "val_bpb": 3.0,
                                "val_ppl": 7.4}))
    (path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"kind": "tra')  # cut by a kill
    return path


def test_one_run_and_a_comparison(tmp_path):
    a = make_run(tmp_path / "runs" / "a", lr=1e-3)
    b = make_run(tmp_path / "runs" / "b", lr=3e-3)
    assert "7 figures" in write_report([a])
    page = (a / "report.html").read_text()
    # the train loss in bits per byte needs the dataset, which is gone; the validation
    # points still make both bits-per-byte figures
    assert len(re.findall(r"data:image/png;base64,", page)) == 7
    assert "is not on this machine" in page and "No checkpoint yet" in page

    out = default_out([a, b])
    assert out == (tmp_path / "runs" / "compare-a-b").resolve()
    write_report([a, b])
    page = (out / "report.html").read_text()
    assert re.search(r"<td>optim.lr</td><td>0.001</td><td>0.003</td>", page)
    assert "run.dir" not in re.sub(r"<details>.*?</details>", "", page, flags=re.S)
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert sorted(base64.b64decode(p) for p in pngs) == sorted(
        p.read_bytes() for p in (out / "figures").glob("*.png"))


def test_a_directory_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(LmforgeError, match="not an lmforge run"):
        write_report([tmp_path])
