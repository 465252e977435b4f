"""The run report from the files a run directory holds: times that survive a resume, the
figures it can draw, the keys that differ between runs, and where it is written; and the
report of a run whose files are damaged: what is damaged is left out and named, an
unreadable config.toml is one line, and run names are text, never mathtext."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.config import Config
from lmforge.errors import LmforgeError
from lmforge.rundir import RunDir, write_config
from lmforge.runs.page_text import literal
from lmforge.runs.report import (
    FIGURE_SPECS,
    _figure,
    _page,
    _series,
    _wall_clock,
    default_out,
    load_run_data,
    write_report,
)


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


# ---------------------------------------------------------------------------- damaged files

FEW = settings(max_examples=25, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
HUGE = "<an int of 5,000 digits>"  # Python cannot print one: put in as text, by dumps()
json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=8)
    | st.integers(-(10**30), 10**30) | st.just(HUGE),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


def fresh_run(root, name: str = "run"):
    """A run of make_run in a directory of its own (hypothesis reuses tmp_path)."""
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    return make_run(path, lr=1e-3)


def page_of(run) -> str:
    """What `lmforge report` writes (figures and all), read back."""
    write_report([run])
    return (run / "report.html").read_text(encoding="utf-8")


def test_damaged_metrics_samples_and_checkpoints_are_left_out_and_named(tmp_path):
    run = make_run(tmp_path / "run", lr=1e-3)
    metrics = run / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes() + b"\n[1, 2]\n" + b"\xff\xfe\x00binary\x00\n"
                        + b'{"kind": "train", "step": 7, "loss": "1.5", "lr": null, "tokens": '
                        + b"9" * 5000 + b', "grad_norm": 1e400, "mfu": true}\n'
                        + b'{"kind": "eval", "step": "8", "val_loss": 1.0}\n{"kind": "train"}\n')
    (run / "samples.txt").write_bytes(b"caf\xe9 \xff sample")
    (run / "samples.jsonl").write_bytes(b'{"step": 3, "texts": ["ok", 5, "\\ud800"]}\n'
                                        b'\xff\xfe\n{"step": 2, "texts": "no list"}\n')
    step = run / "checkpoints" / "step_00000002"
    step.mkdir(parents=True)
    (step / "meta.json").write_text("[1, 2]")
    (step / "model.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{}")
    (run / "checkpoints" / "latest").write_bytes(b"\xff\xfe")
    data = load_run_data(run)
    assert [r["step"] for r in data.train] == [1, 2, 3, 4, 5, 6, 7]
    assert set(data.train[-1]) == {"kind", "step", "time_s"}  # every damaged number left out
    assert data.eval_samples == [{"step": 3, "texts": ["ok", "\ud800"]}]
    size = sum(p.stat().st_size for p in step.iterdir())
    assert data.checkpoints == [{"name": "step_00000002", "step": None, "bytes": size,
                                 "marks": []}]
    assert data.params is None  # its weights' header claims 10**12 bytes
    assert "7 figures" in write_report([run])
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "caf\ufffd \ufffd sample" in page and "&lt;" not in page.split("<body>")[0]
    assert "metrics.jsonl: 5 line(s) skipped" in page  # the cut one, and 4 damaged
    assert "samples.txt is not valid UTF-8" in page and "samples.jsonl: 1 line(s)" in page


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe[run]\n", r"config.toml is not valid UTF-8 \(byte 0"),
    (b"[model\nn_layer = 2", r"config.toml is not valid TOML \(Expected"),
    (b"a = " + b"[" * 3000, r"config.toml is not valid TOML \(nested too deeply\)"),
    (b"[run]\nseed = " + b"1" * 5000, r"config.toml is not valid TOML \(Exceeds the limit"),
    (b"[model]\nn_layer = 'two'", r"model.n_layer: expected an integer"),
])
def test_a_run_whose_config_cannot_be_read_is_refused_in_one_line(tmp_path, content, message):
    run = make_run(tmp_path / "run", lr=1e-3)
    (run / "config.toml").write_bytes(content)
    with pytest.raises(LmforgeError, match=message) as err:
        write_report([run])
    assert "\n" not in str(err.value)


def test_a_damaged_dataset_manifest_and_report_are_left_out(tmp_path, dataset):
    run = make_run(tmp_path / "run", lr=1e-3)
    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    cfg = RunDir(run).config
    cfg.write_text(cfg.read_text().replace(str(run / "no-data"), str(copy)))
    assert "Most frequent tokens" in page_of(run)  # the real files render
    (copy / "manifest.json").write_text('{"tokenizer": [], "splits": {"train": "x"}}')
    (copy / "report.json").write_bytes(b"\xff{not json")
    page = page_of(run)
    assert "report.json is damaged (not a JSON object)" in page
    (copy / "manifest.json").write_text("[]")
    assert "manifest.json is damaged" in page_of(run)


@FEW
@given(manifest=st.dictionaries(st.sampled_from(["tokenizer", "splits", "dir"]), json_values),
       report=st.dictionaries(st.sampled_from(["sources", "clean", "top_tokens"]), json_values),
       split=st.dictionaries(st.sampled_from(["documents", "tokens", "bytes"]), json_values))
def test_any_manifest_and_report_values_render(tmp_path, manifest, report, split):
    run = fresh_run(tmp_path)
    data = load_run_data(run)
    data.manifest = {**manifest, "splits": {"train": split, **_as_dict(manifest.get("splits"))}}
    data.data_report = report
    assert "Dataset" in _page([data], []) or "not on this machine" in _page([data], [])
    _series(data, "bpb", "step")


def _as_dict(value):
    return value if isinstance(value, dict) else {}


def dumps(value) -> bytes:
    return json.dumps(value).replace(json.dumps(HUGE), "9" * 5000).encode()


@FEW
@given(lines=st.lists(st.one_of(
    json_values.map(dumps),
    st.fixed_dictionaries({"kind": st.sampled_from(["train", "eval"]),
                           "step": st.integers(-5, 10**20)},
                          optional={k: json_values for k in
                                    ("loss", "val_loss", "val_bpb", "lr", "tokens", "elapsed_s",
                                     "tokens_per_s", "mfu", "grad_norm", "texts")}
                          ).map(dumps),
    st.binary(max_size=40)), max_size=12))
def test_any_metrics_lines_give_a_page(tmp_path, lines):
    run = fresh_run(tmp_path)
    blob = b"\n".join(lines)
    (run / "metrics.jsonl").write_bytes(blob)
    (run / "samples.jsonl").write_bytes(blob)
    (run / "samples.txt").write_bytes(blob)
    data = load_run_data(run)
    _page([data], [])
    for _, what, x, title, ylabel in FIGURE_SPECS[:3]:  # the lines of every figure kind
        _figure([data, data], what=what, x=x, title=title, ylabel=ylabel)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(names=st.lists(st.text(st.characters(blacklist_characters="/\0", blacklist_categories=["Cs"]),
                              min_size=1, max_size=12).filter(lambda n: n not in (".", "..")),
                      min_size=2, max_size=2, unique=True),
       stray=st.booleans())
def test_run_names_are_literal_text_in_figures_and_page(tmp_path, names, stray):
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)
    runs = [make_run(tmp_path / "runs" / name, lr=1e-3) for name in names]
    if stray:  # renamed to a name that is not UTF-8: a surrogate escape in Python
        runs[0] = runs[0].rename(runs[0].with_name(names[0] + os.fsdecode(b"\xff")))
    assert "7 figures" in write_report(runs, out=tmp_path / "runs" / "cmp")
    page = (tmp_path / "runs" / "cmp" / "report.html").read_bytes().decode()  # "\r" kept
    assert html.escape(names[1]) in page


@pytest.mark.parametrize("name", ["m$\\frac{$", "$x^2$", "a$b", "\\$", "$\\$$"])
def test_mathtext_in_a_run_name_is_drawn_as_text(tmp_path, name):
    runs = [make_run(tmp_path / "runs" / name, lr=1e-3), make_run(tmp_path / "runs" / "b", lr=1e-3)]
    assert "7 figures" in write_report(runs)
    assert literal(name) == name.replace("$", "\\$")  # matplotlib shows \$ as $


def test_a_run_directory_whose_name_is_too_long_is_one_line(tmp_path):
    with pytest.raises(LmforgeError, match=r"cannot open the run directory .* \(File name too "
                                           r"long\); give the run.dir") as err:
        write_report([tmp_path / ("r" * 300)])
    assert "\n" not in str(err.value)
