"""`lmforge prepare` as a user runs it, where the input is parsed in worker processes."""

import json

import pytest
from helpers import lmforge


@pytest.mark.parametrize("workers", ["0", "2"])
def test_bad_jsonl_line_parsed_in_a_worker_is_one_line_and_exit_2(tmp_path, workers):
    rows = "".join(json.dumps({"text": f"row {i} " * 20}) + "\n" for i in range(20_000))
    (tmp_path / "a.jsonl").write_text(rows + "[1, 2]\n")  # the error is in the last chunk
    proc = lmforge("prepare", "--data", "a.jsonl", "--out", "ds", "--workers", workers,
                   "--no-progress", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "a.jsonl line 20001 is a JSON list, not an object" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]
