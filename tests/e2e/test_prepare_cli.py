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


def shard_bytes(dataset) -> dict[str, bytes]:
    """Every file of a prepared dataset but its report (which holds timings)."""
    return {str(p.relative_to(dataset)): p.read_bytes() for p in sorted(dataset.rglob("*"))
            if p.is_file() and p.name != "report.json"}


def test_tokenizer_from_gives_the_same_ids_as_the_dataset_it_comes_from(tmp_path):
    (tmp_path / "old.txt").write_text("the old corpus, the one the tokenizer learned\n" * 300)
    for i in range(40):
        (tmp_path / f"new-{i}.txt").write_text(f"new document {i}: the tokenizer is reused\n" * 20)
    lmforge("prepare", "--data", "old.txt", "--tokenizer", "bpe", "--vocab-size", "300",
            "--out", "old", "--no-progress", cwd=tmp_path)
    # The new corpus with the old corpus's tokenizer, as evaluating a model on new text needs
    proc = lmforge("prepare", "--data", "new-*.txt", "--tokenizer-from", "old", "--out", "new",
                   "--no-progress", cwd=tmp_path)
    vocab = json.loads((tmp_path / "old" / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    assert f"bpe tokenizer of old/tokenizer: vocabulary {vocab}" in proc.stderr  # the log
    new = tmp_path / "new"
    assert shard_bytes(new / "tokenizer") == shard_bytes(tmp_path / "old" / "tokenizer")
    manifest = json.loads((new / "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_size"] == vocab and manifest["settings"]["tokenizer_sha256"]
    # Trained on the new corpus instead, the same text gets other ids.
    lmforge("prepare", "--data", "new-*.txt", "--tokenizer", "bpe", "--vocab-size", "300",
            "--out", "trained", "--no-progress", cwd=tmp_path)
    assert shard_bytes(new)["train-00000.bin"] != shard_bytes(tmp_path / "trained")["train-00000.bin"]
    # Given its own tokenizer back, a dataset is rebuilt byte for byte.
    lmforge("prepare", "--data", "new-*.txt", "--tokenizer-from", "trained", "--out", "again",
            "--no-progress", cwd=tmp_path)
    again, trained = shard_bytes(tmp_path / "again"), shard_bytes(tmp_path / "trained")
    assert {k: v for k, v in again.items() if k != "manifest.json"} == \
        {k: v for k, v in trained.items() if k != "manifest.json"}
    proc = lmforge("prepare", "--data", "new-*.txt", "--tokenizer-from", "old", "--out", "new",
                   "--no-progress", cwd=tmp_path)
    assert "reusing prepared dataset at new" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--tokenizer-from", "nowhere"], "no tokenizer at nowhere; give a prepared dataset"),
    (["--tokenizer-from", "old", "--vocab-size", "512"], "--tokenizer-from gives the tokenizer"),
    (["--tokenizer-from", "chars"], "character 'x' is not in the char tokenizer's vocabulary"),
])
def test_tokenizer_from_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "abc.txt").write_text("abc abc\n" * 50)
    (tmp_path / "xyz.txt").write_text("xyz xyz\n" * 50)
    lmforge("prepare", "--data", "abc.txt", "--tokenizer", "char", "--out", "chars",
            "--no-progress", cwd=tmp_path)
    (tmp_path / "old").mkdir()
    proc = lmforge("prepare", "--data", "xyz.txt", "--out", "new", *args, "--no-progress",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert [line for line in proc.stderr.splitlines() if "error" in line] == \
        [proc.stderr.strip().splitlines()[-1]] and "Traceback" not in proc.stderr
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new*"))
