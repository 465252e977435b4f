"""A Llama-3-shaped model of lmforge's own, as a user trains and hands it on: grouped-query
attention, an epsilon and rope base of its own and an untied head, trained by `lmforge
train`, exported as a LlamaForCausalLM that transformers computes exactly as lmforge
does, and taken up again by `--init-from` where the source left off."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import QUIET, json_corpus, lmforge, options, records

LLAMA3_SHAPE = {"model.n_layer": "2", "model.n_head": "4", "model.n_kv_head": "2",
                "model.n_embd": "32", "model.block_size": "32", "model.norm": "rmsnorm",
                "model.mlp": "swiglu", "model.pos": "rope", "model.norm_eps": "1e-6",
                "model.rope_theta": "500000", "model.tie_embeddings": "false",
                "model.mlp_hidden": "88"}
SETTINGS = {"train.batch_size": "4", "train.log_every": "1", "optim.warmup_steps": "2",
            "data.path": "data/json", "train.threads": "1", "train.precision": "fp32",
            "log.to": "none", "train.report": "false", "eval.every": "0", "eval.batches": "1"}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = json_corpus(tmp_path_factory, "llama-shape")
    lmforge("train", *options(LLAMA3_SHAPE, QUIET, SETTINGS, {
        "train.max_steps": "8", "run.dir": "runs/src"}), cwd=work)
    lmforge("export", "runs/src", "--format", "hf", "--out", "export", cwd=work)
    return work


def test_the_export_is_a_llama_that_transformers_computes_alike(work):
    transformers = pytest.importorskip("transformers")
    from lmforge.runs.load import load_run

    run = load_run(work / "runs" / "src")
    hf = transformers.AutoModelForCausalLM.from_pretrained(work / "export").eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert (hf.config.num_key_value_heads, hf.config.rms_norm_eps) == (2, 1e-6)
    x = torch.randint(0, run.cfg.model.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, run.model(x)[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("source", ["export", "runs/src"], ids=["export", "run"])
def test_init_from_the_export_or_the_run_starts_where_the_source_ended(work, source):
    from lmforge.data import shards
    from lmforge.data.loader import RandomWindows
    from lmforge.evaluate import cross_entropy
    from lmforge.runs.load import load_run

    name = f"runs/new-{source.replace('/', '-')}"
    proc = lmforge("train", *options(QUIET, SETTINGS, {"train.max_steps": "1", "run.dir": name}),
                   "--init-from", source, cwd=work)
    assert "not the one" not in proc.stderr  # the same tokenizer: no note
    new = Path(work / name)
    assert "n_kv_head = 2" in (new / "config.toml").read_text()
    source = load_run(work / "runs" / "src")
    batches = RandomWindows(shards.open_split(work / "data" / "json", "train"), batch_size=4,
                            block_size=32, seed=source.cfg.run.seed)
    x, y = batches.next_batch()
    with torch.no_grad():
        want = cross_entropy(source.model(x)[0], y).item()
    assert abs(records(new, "train")[0]["loss"] - want) < 1e-4
