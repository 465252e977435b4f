"""`lmforge export` as a user runs it, for each format: a Llama-style run on a BPE corpus
exported as hf, safetensors and gguf, each with a README.md model card whose front matter
parses and holds the run's numbers, and whose loading snippet works as written."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from helpers import QUIET, STDLIB, lmforge, options, records, run

LLAMA = {"model.n_layer": "2", "model.n_head": "2", "model.n_embd": "32",
         "model.block_size": "32", "model.norm": "rmsnorm", "model.mlp": "swiglu",
         "model.pos": "rope", "train.batch_size": "4", "train.max_steps": "12",
         "eval.every": "6", "eval.batches": "2", "checkpoint.every": "6", "train.threads": "1",
         "log.to": "none", "train.report": "false", "data.path": "data/bpe",
         "run.dir": "runs/llama"}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A 12-step Llama-style run on the json package's sources, BPE tokenized."""
    work = tmp_path_factory.mktemp("card")
    lmforge("prepare", "--data", str(STDLIB / "json" / "*.py"), "--tokenizer", "bpe",
            "--vocab-size", "320", "--out", "data/bpe", cwd=work, threads=1)
    lmforge("train", *options(QUIET, LLAMA), cwd=work, threads=1)
    return work


def exported(work: Path, fmt: str, *extra: str) -> Path:
    out = work / f"export-{fmt}"
    if not out.is_dir():
        lmforge("export", "runs/llama", "--format", fmt, "--out", out, *extra, cwd=work,
                threads=1)
    return out


def front_matter_lines(text: str) -> list[str]:
    """The lines between the opening and the closing '---' (checked there are both)."""
    lines = text.splitlines()
    assert lines[0] == "---"
    return lines[1:lines.index("---", 1)]


@pytest.mark.parametrize("fmt, library", [("hf", "transformers"), ("safetensors", "lmforge"),
                                          ("gguf", "lmforge")])
def test_every_export_has_a_card_with_the_runs_numbers(work, fmt, library):
    pytest.importorskip("gguf") if fmt == "gguf" else None
    out = exported(work, fmt, "--license", "apache-2.0")
    text = (out / "README.md").read_text(encoding="utf-8")
    head = front_matter_lines(text)
    assert f"library_name: {library}" in head and 'license: "apache-2.0"' in head
    assert f'- "{"gguf" if fmt == "gguf" else "safetensors"}"' in head and '- "llama"' in head
    last = records(work / "runs" / "llama", "eval")[-1]
    assert last["step"] == 12
    assert f"      value: {last['val_loss']:.4f}" in head  # model-index: the validation loss
    assert f"{last['val_bpb']:.4f}" in text and f"{last['val_ppl']:.4f}" in text
    manifest = json.loads((work / "data" / "bpe" / "manifest.json").read_text())
    assert f"{manifest['splits']['train']['tokens']:,}" in text
    assert f"{12 * 4 * 32:,} = 12 steps × 4 sequences × 32 tokens" in text
    assert "rmsnorm = " not in text and 'norm = "rmsnorm"' in text  # the config, as TOML
    yaml = pytest.importorskip("yaml")
    meta = yaml.safe_load("\n".join(head))
    (result,) = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == "llama"
    assert {m["type"]: m["value"] for m in result["metrics"]}["loss"] == \
        pytest.approx(last["val_loss"], abs=1e-4)


def snippet(text: str) -> str:
    """The python block under 'How to load'."""
    return re.search(r"## How to load\n\n```python\n(.*?)\n```", text, re.S).group(1)


@pytest.mark.parametrize("fmt", ["safetensors", "hf"])
def test_the_cards_loading_snippet_runs_as_written(work, fmt):
    if fmt == "hf":
        pytest.importorskip("transformers")
    out = exported(work, fmt, "--license", "apache-2.0")
    code = snippet((out / "README.md").read_text(encoding="utf-8"))
    proc = run([sys.executable, "-c", code], cwd=out, threads=1)  # path = "." is the export
    assert proc.stdout.strip()  # generated text


def test_the_gguf_export_reads_back(work):
    gguf = pytest.importorskip("gguf")
    out = exported(work, "gguf", "--license", "apache-2.0")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.gguf"]
    reader = gguf.GGUFReader(str(out / "model.gguf"))
    fields = {name: reader.fields[name].contents() for name in (
        "general.architecture", "general.name", "llama.block_count", "llama.context_length",
        "tokenizer.ggml.model")}
    assert fields == {"general.architecture": "llama", "general.name": "export-gguf",
                      "llama.block_count": 2, "llama.context_length": 32,
                      "tokenizer.ggml.model": "gpt2"}
    names = {t.name for t in reader.tensors}
    assert "token_embd.weight" in names and "blk.1.ffn_down.weight" in names
    assert "llama-cli -m model.gguf" in (out / "README.md").read_text(encoding="utf-8")


def test_gguf_refuses_a_gpt2_style_run_in_one_line(work):
    lmforge("train", *options(QUIET, LLAMA, {
        "model.norm": "layernorm", "model.mlp": "gelu", "model.pos": "learned",
        "train.max_steps": "1", "eval.every": "0", "run.dir": "runs/gpt2"}), cwd=work, threads=1)
    proc = lmforge("export", "runs/gpt2", "--format", "gguf", "--out", "gpt2-gguf", cwd=work,
                   check=False)
    assert proc.returncode == 2 and "use --format safetensors" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (work / "gpt2-gguf").exists()
