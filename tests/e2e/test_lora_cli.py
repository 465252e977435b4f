"""LoRA fine-tuning as a user runs it: a base model trained on Python sources and exported to
Hugging Face, fine-tuned with `--init-from base-hf --lora.r=4` on notes it never saw, killed
and resumed, evaluated, and exported merged (transformers) and as a peft adapter (peft on top
of the base); real subprocesses and real files."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from helpers import (
    QUIET,
    TINY_MODEL,
    json_corpus,
    kill_after,
    lmforge,
    options,
    records,
    train_losses,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

SETTINGS = {"train.log_every": "1", "train.threads": "1", "train.precision": "fp32",
            "log.to": "none", "train.report": "false", "eval.batches": "2"}
TINY = options(TINY_MODEL, QUIET, SETTINGS)
LORA = options({"lora.r": "4", "lora.alpha": "8", "optim.lr": "1e-2",
                "optim.warmup_steps": "5", "train.max_steps": "60", "checkpoint.every": "20",
                "eval.every": "20", "data.path": "data/notes"})


def notes(path: Path) -> None:
    """Short shopping notes, in characters the base's tokenizer knows."""
    rng = random.Random(0)
    items = ["milk", "eggs", "bread", "tea", "rice", "apples", "soap", "paper"]
    path.write_text("".join(f"note {i}: buy {rng.choice(items)} and {rng.choice(items)}, then "
                            f"call {rng.choice(['ann', 'bob', 'eve'])}.\n" for i in range(3000)))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A base trained on the json package's sources and exported as GPT2LMHeadModel
    (base-hf), the notes prepared with its tokenizer, and a LoRA run on them (runs/lora)."""
    work = json_corpus(tmp_path_factory, "lora")
    lmforge("train", *TINY, "--data.path=data/json", "--train.max_steps=200",
            "--optim.warmup_steps=10", "--eval.every=200", "--run.dir=runs/base", cwd=work)
    lmforge("export", "runs/base", "--format", "hf", "--out", "base-hf", cwd=work)
    notes(work / "notes.txt")
    lmforge("prepare", "--data", "notes.txt", "--tokenizer-from", "data/json", "--out",
            "data/notes", cwd=work, threads=1)
    lmforge("train", *TINY, *LORA, "--init-from", "base-hf", "--run.dir=runs/lora", cwd=work)
    return work


def eval_loss(work: Path, run: str) -> float:
    out = lmforge("eval", run, "--data", "data/notes", "--json", cwd=work).stdout
    return json.loads(out)["loss"]


def test_lora_lowers_the_loss_and_saves_only_adapters(work):
    run = work / "runs" / "lora"
    first = records(run, "train")[0]["loss"]
    assert eval_loss(work, "runs/lora") < eval_loss(work, "runs/base") - 0.3
    assert records(run, "eval")[-1]["val_loss"] < first - 0.3
    latest = run / "checkpoints" / "step_00000060"
    with safe_open(str(latest / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    base_size = (work / "base-hf" / "model.safetensors").stat().st_size
    assert (latest / "model.safetensors").stat().st_size < base_size / 4
    meta = json.loads((latest / "meta.json").read_text())
    assert meta["lora"]["r"] == 4 and len(meta["lora"]["base_sha256"]) == 64
    assert meta["lora"]["base"] == f"--init-from {(work / 'base-hf').resolve()}"


def test_killed_and_resumed_lora_run_is_bit_exact(work):
    checkpoints = work / "runs" / "killed" / "checkpoints"
    kill_after(["train", *TINY, *LORA, "--init-from", "base-hf", "--run.dir=runs/killed"],
               marker=checkpoints / "step_00000020", cwd=work, threads=1)
    lmforge("train", "--resume", "runs/killed", cwd=work)
    assert train_losses(work / "runs" / "killed") == train_losses(work / "runs" / "lora")


def test_resuming_on_another_base_is_one_line(work):
    other = work / "other-hf"
    shutil.copytree(work / "base-hf", other)
    weights = load_file(other / "model.safetensors")
    weights["transformer.ln_f.weight"] += 0.01
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    run = work / "runs" / "moved"
    shutil.copytree(work / "runs" / "lora", run)
    config = run / "config.toml"
    config.write_text(config.read_text().replace(str((work / "base-hf").resolve()),
                                                 str(other.resolve())))
    for args in (["train", "--resume", run, "--train.max_steps=80"], ["eval", run]):
        proc = lmforge(*args, cwd=work, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "holds LoRA adapters for another base model" in proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def lmforge_logits(work: Path, x: torch.Tensor) -> torch.Tensor:
    from lmforge.runs.load import load_run

    with torch.no_grad():
        return load_run(work / "runs" / "lora").model(x)[0]


def test_merged_hf_export_loads_in_transformers_with_the_same_logits(work, transformers):
    lmforge("export", "runs/lora", "--format", "hf", "--out", "lora-hf", cwd=work)
    x = torch.randint(0, 90, (2, 32), generator=torch.Generator().manual_seed(0))
    model = transformers.AutoModelForCausalLM.from_pretrained(work / "lora-hf").eval()
    with torch.no_grad():
        got = model(x).logits
    assert (got - lmforge_logits(work, x)).abs().max() < 1e-4
    base = transformers.AutoModelForCausalLM.from_pretrained(work / "base-hf").eval()
    with torch.no_grad():  # the merged weights are not the base's
        assert (base(x).logits - got).abs().max() > 1e-2


def test_peft_export_loads_on_the_hf_base_with_the_same_logits(work, transformers):
    import peft

    proc = lmforge("export", "runs/lora", "--format", "peft", "--out", "lora-peft", cwd=work)
    assert "wrote a peft LoRA adapter" in proc.stderr + proc.stdout
    out = work / "lora-peft"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((work / "base-hf").resolve())
    x = torch.randint(0, 90, (2, 32), generator=torch.Generator().manual_seed(0))
    base = transformers.AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    tuned = peft.PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        assert (tuned(x).logits - lmforge_logits(work, x)).abs().max() < 1e-4
