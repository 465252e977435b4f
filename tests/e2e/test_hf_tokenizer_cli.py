"""A Hugging Face model's own tokenizer through the CLI, as a user runs it: `lmforge prepare
--tokenizer-from MODEL_DIR`, and `lmforge train --init-from MODEL_DIR` preparing its dataset
with that tokenizer, then generate, eval and export on the run."""

from __future__ import annotations

import json
import os

import pytest
from helpers import QUIET, lmforge, options
from hf_styles import corpus, write_model_dir

from lmforge.config import CleanConfig
from lmforge.data.clean import CleanStats, clean_document
from lmforge.data.document import Document


def write_corpus(directory) -> list[str]:
    """Ten documents, with what cleaning changes (trailing spaces, CRLF, a decomposed é)."""
    directory.mkdir()
    text = corpus()[:30_000]
    texts = []
    for i in range(10):
        part = text[i * 3000:(i + 1) * 3000]
        texts.append(f"Cafe\u0301 {i}:  \r\n{part}  \n\n\n\n")
        (directory / f"doc{i:02}.txt").write_text(texts[-1], encoding="utf-8", newline="")
    return texts


def cleaned(texts: list[str]) -> list[str]:
    """The documents as prepare's default cleaning leaves them."""
    stats = CleanStats()
    docs = (clean_document(Document(t, id=str(i)), CleanConfig(), stats) for i, t in enumerate(texts))
    return [d.text for d in docs if d is not None]


@pytest.mark.parametrize("style", ["llama2", "qwen2"])
def test_prepare_with_a_models_tokenizer_counts_its_tokens(transformers, tmp_path, style):
    model = write_model_dir(style, tmp_path / "model")
    (model / "model.safetensors").write_bytes(b"weights: never read, never copied")
    texts = write_corpus(tmp_path / "text")
    proc = lmforge("prepare", "--data", "text/*.txt", "--tokenizer-from", "model", "--out", "ds",
                   "--no-progress", cwd=tmp_path)
    auto = transformers.AutoTokenizer.from_pretrained(model)
    assert f"hf tokenizer of model: vocabulary {len(auto)}" in proc.stderr
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    docs = cleaned(texts)
    assert len(docs) == len(texts) and docs != texts  # cleaning changed them, dropped none
    tokens = sum(len(auto.encode(d, add_special_tokens=False)) + 1 for d in docs)  # + eos each
    splits = manifest["splits"]
    assert splits["train"]["tokens"] + splits["val"]["tokens"] == tokens
    assert splits["train"]["bytes"] + splits["val"]["bytes"] == sum(len(d.encode()) for d in docs)
    assert manifest["tokenizer"]["eot_id"] == auto.eos_token_id
    assert sorted(os.listdir(tmp_path / "ds" / "tokenizer")) == sorted(
        [*(p.name for p in model.iterdir() if p.name != "model.safetensors"),
         "tokenizer_meta.json"])
    again = lmforge("prepare", "--data", "text/*.txt", "--tokenizer-from", "ds", "--out", "ds",
                    "--no-progress", cwd=tmp_path)  # the same tokenizer, given by the dataset
    assert "reusing prepared dataset at ds" in again.stderr


def test_a_damaged_model_tokenizer_is_one_line_and_exit_2(tmp_path):
    model = write_model_dir("llama3", tmp_path / "model")
    (model / "tokenizer_config.json").write_text('{"eos_token": "<|nowhere|>"}')
    write_corpus(tmp_path / "text")
    proc = lmforge("prepare", "--data", "text/*.txt", "--tokenizer-from", "model", "--out", "ds",
                   "--no-progress", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "the eos_token '<|nowhere|>' is not in tokenizer.json's vocabulary" in proc.stderr
    assert not (tmp_path / "ds").exists()


def llama_model(directory) -> int:
    """A Llama-style model directory with a Llama 3 tokenizer, as a download has it (no
    lmforge files), its embedding padded past the tokenizer; returns the tokenizer's size."""
    from lmforge.config import ModelConfig
    from lmforge.data.tokenizer import HfTokenizer
    from lmforge.interop.hf_export import export_hf
    from lmforge.models.gpt import GPT

    tok = HfTokenizer.from_model_dir(write_model_dir("llama3", directory))
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=tok.vocab_size + 11,
                      norm="rmsnorm", mlp="swiglu", pos="rope", bias=False)
    export_hf(GPT(cfg), cfg, tok, directory)
    (directory / "tokenizer_meta.json").unlink()
    return tok.vocab_size


def test_train_init_from_uses_the_models_tokenizer_throughout(transformers, tmp_path):
    vocab = llama_model(tmp_path / "llama")
    write_corpus(tmp_path / "text")
    proc = lmforge("train", "--init-from", "llama", *options(QUIET, {
        "data.source": "text/*.txt", "data.path": "data/new", "train.max_steps": "2",
        "train.batch_size": "2", "train.threads": "1", "eval.batches": "1", "log.to": "none",
        "train.report": "false", "checkpoint.every": "0", "run.dir": "runs/ft"}),
        cwd=tmp_path, threads=1)
    assert "preparing text/*.txt into data/new with the tokenizer of" in proc.stderr
    assert "note:" not in proc.stderr
    manifest = json.loads((tmp_path / "data" / "new" / "manifest.json").read_text())
    assert manifest["tokenizer"]["kind"] == "hf" and manifest["tokenizer"]["vocab_size"] == vocab
    out = lmforge("generate", "runs/ft", "--prompt", "First", "--max-new-tokens", "6",
                  "--seed", "1", cwd=tmp_path, threads=1).stdout
    assert out.startswith("First")
    lmforge("export", "runs/ft", "--out", "exported", cwd=tmp_path, threads=1)
    original = transformers.AutoTokenizer.from_pretrained(tmp_path / "llama")
    exported = transformers.AutoTokenizer.from_pretrained(tmp_path / "exported")
    assert exported.chat_template == original.chat_template
    assert exported.encode("Hello there") == original.encode("Hello there")
    assert (exported.bos_token_id, exported.eos_token_id) == (original.bos_token_id,
                                                              original.eos_token_id)
