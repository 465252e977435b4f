"""`lmforge export` of a classifier, checked against transformers itself: the
*ForSequenceClassification directory it writes gives lmforge's scores on a right-padded
batch (every parameter random, so a tensor in the wrong place or a wrong pooled position
shows), for GPT-2-, Llama- and Qwen2-style backbones, one label or several per text; a
classify run trained on the one loop exports through the CLI with its labels, and the model
card's own snippets compute lmforge's predictions; what no HF class computes is refused in
one line before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import STDLIB, tiny_config

from lmforge.config import ModelConfig
from lmforge.data.tokenizer import train_tokenizer
from lmforge.errors import ConfigError
from lmforge.interop.hf_classifier_export import THRESHOLDS_KEY, export_hf_classifier
from lmforge.models.gpt import GPT
from lmforge.models.heads import SequenceClassifier
from lmforge.plan import local_plan
from lmforge.rundir import RunDir, read_run_config, write_config
from lmforge.runs.classifier import Labels, evaluate_classifier, load_classifier
from lmforge.tasks.classify import ClassifyTask, LabelledTokens, batch_of, encode_texts
from lmforge.train.session import train_run

GPT2_STYLE = dict(norm="layernorm", mlp="gelu", pos="learned")
LLAMA_STYLE = dict(norm="rmsnorm", mlp="swiglu", pos="rope", rope_theta=500.0)
STYLES = {  # (ModelConfig fields, the transformers class that must load the export)
    "gpt2": (dict(GPT2_STYLE, bias=True), "GPT2ForSequenceClassification"),
    "gpt2-tanh-untied": (dict(GPT2_STYLE, mlp="gelu_tanh", tie_embeddings=False),
                         "GPT2ForSequenceClassification"),
    "llama-gqa-untied": (dict(LLAMA_STYLE, n_kv_head=2, tie_embeddings=False),
                         "LlamaForSequenceClassification"),
    "qwen2": (dict(LLAMA_STYLE, qkv_bias=True), "Qwen2ForSequenceClassification"),
}
BYTES = train_tokenizer("byte", [], vocab_size=0)  # end-of-text: 256, the last id
EOT = BYTES.eot_id
LABELS = ["earn", "acq", "crude"]


def random_classifier(style: str, *, seed: int = 0) -> tuple[ModelConfig, SequenceClassifier]:
    """A SequenceClassifier with every parameter random, norm gains and biases included."""
    fields, _ = STYLES[style]
    cfg = ModelConfig(**{**dict(n_layer=2, n_head=4, n_embd=64, block_size=32,
                                vocab_size=BYTES.vocab_size, dropout=0.0), **fields})
    torch.manual_seed(seed)
    model = SequenceClassifier(GPT(cfg), len(LABELS), pooling="last")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.dim() == 1 else 0.0))
    return cfg, model.eval()


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded with eot as lmforge pads: texts of 32 (no padding), 20, 7 and 1 tokens,
    and an empty text (one eot token, as encode_texts makes it)."""
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([32, 20, 7, 1, 1])
    tokens = torch.full((5, 32), EOT)
    for row, n in enumerate(lengths[:4].tolist()):
        tokens[row, :n] = torch.randint(0, EOT, (n,), generator=gen)
    return tokens, lengths


@pytest.mark.parametrize("multi", [False, True], ids=["one-label", "multi-label"])
@pytest.mark.parametrize("style", list(STYLES))
def test_transformers_scores_a_padded_batch_as_lmforge_does(transformers, tmp_path, style, multi):
    cfg, model = random_classifier(style)
    thresholds = [0.3, 0.55, 0.9] if multi else None
    note = export_hf_classifier(model, cfg, BYTES, tmp_path, labels=LABELS, multi_label=multi,
                                thresholds=thresholds)
    assert STYLES[style][1] in note and (THRESHOLDS_KEY in note) == multi
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == STYLES[style][1]
    tokens, lengths = padded_batch()
    mask = (torch.arange(tokens.size(1))[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        ours = model(tokens, lengths)
        theirs = hf(input_ids=tokens, attention_mask=mask).logits
        alone = [hf(input_ids=tokens[i:i + 1, :n]).logits[0] for i, n in enumerate(lengths)]
    assert ours.abs().max() > 1  # scores large enough for 1e-4 to mean something
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.stack(alone), ours, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hf.score.weight, model.head.weight)
    config = hf.config
    assert (config.num_labels, config.pad_token_id) == (3, EOT)
    assert config.id2label == dict(enumerate(LABELS))
    assert config.label2id == {name: i for i, name in enumerate(LABELS)}
    assert config.problem_type == ("multi_label_classification" if multi
                                   else "single_label_classification")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == [STYLES[style][1]]
    if multi:  # no HF field holds them: an extra key that transformers keeps
        assert saved[THRESHOLDS_KEY] == dict(zip(LABELS, thresholds, strict=True))
        assert getattr(config, THRESHOLDS_KEY) == saved[THRESHOLDS_KEY]
    else:
        assert THRESHOLDS_KEY not in saved


def test_mean_pooling_and_twinless_backbones_are_refused_before_writing(tmp_path):
    cfg, model = random_classifier("gpt2")
    with pytest.raises(ConfigError, match="task.pooling=mean.*--format safetensors"):
        export_hf_classifier(model, cfg, BYTES, tmp_path / "mean", labels=LABELS,
                             multi_label=False, thresholds=None, pooling="mean")
    lstm = ModelConfig(arch="lstm", n_layer=1, n_embd=32, block_size=16, vocab_size=300)
    with pytest.raises(ConfigError, match="model.arch=lstm.*--format safetensors"):
        export_hf_classifier(model, lstm, BYTES, tmp_path / "lstm", labels=LABELS,
                             multi_label=False, thresholds=None)
    assert not (tmp_path / "mean").exists() and not (tmp_path / "lstm").exists()


# ---------------------------------------------------------------------------- runs

KINDS = ("def ", "return ", "import ")  # what a line holds decides its labels
SETTINGS = {"task.kind": "classify", "train.precision": "fp32", "optim.lr": "3e-3",
            "train.max_steps": "6", "train.batch_size": "16", "checkpoint.every": "6",
            "eval.every": "0", "eval.samples_at_eval": "0"}


def lines() -> list[str]:
    out = []
    for path in sorted((STDLIB / "json").glob("*.py")):
        out += [line.strip() for line in path.read_text().splitlines() if len(line.strip()) > 8]
    return out


def classify_run(dataset, run_dir, *, multi: bool, style: str = "gpt2", pooling: str = "last"):
    """A classify run as `lmforge finetune classify` leaves it: its labels.json, trained on
    the one loop (lines of the json package: do they define a function, or which keywords
    they hold), then its thresholds tuned (several labels) and its test figures measured."""
    texts = lines()[:400]
    if multi:
        targets = np.array([[k in t for k in KINDS] for t in texts], dtype=np.float32)
        names = [k.strip() for k in KINDS]
    else:
        targets = np.array([int(t.startswith("def ")) for t in texts], dtype=np.int64)
        names = ["other", "def"]
    model = {f"model.{k}": str(v).lower() for k, v in STYLES[style][0].items()}
    cfg = tiny_config(dataset, run_dir, SETTINGS, model, {"task.pooling": pooling})
    task = ClassifyTask(texts[:300], targets[:300], texts[300:350], targets[300:350],
                        n_labels=len(names), pooling=pooling)
    plan = local_plan(cfg, Path(run_dir))
    Labels(names, multi).write(plan.run)
    assert train_run(plan, wrap=task.wrap, objective=task.objective).exit_code == 0
    evaluate_classifier(run_dir, val_texts=texts[300:350], val_targets=targets[300:350],
                        test_texts=texts[350:], test_targets=targets[350:],
                        train_targets=targets[:300])
    return run_dir


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    """Classify runs, each trained once for the module: (multi, style, pooling) → its dir."""
    made: dict[tuple, object] = {}

    def get(*, multi: bool = False, style: str = "gpt2", pooling: str = "last"):
        key = (multi, style, pooling)
        if key not in made:
            made[key] = classify_run(dataset, tmp_path_factory.mktemp("cls"), multi=multi,
                                     style=style, pooling=pooling)
        return made[key]

    return get


def export(capsys, *argv) -> tuple[int, str]:
    """`lmforge export ARGV` in this process: its exit code and what it printed to stderr."""
    from lmforge.cli.main import main

    capsys.readouterr()
    code = main(["export", *map(str, argv)])
    return code, capsys.readouterr().err.strip()


def card_snippet(out) -> str:
    """The Python code of the card's "How to load" section, reading `out`."""
    card = (out / "README.md").read_text()
    code = card.split("## How to load\n\n```python\n", 1)[1].split("\n```", 1)[0]
    return code.replace('path = "."', f'path = "{out}"')


@pytest.mark.parametrize("multi, style", [(False, "gpt2"), (True, "llama-gqa-untied")],
                         ids=["one-label-gpt2", "multi-label-llama"])
def test_a_classify_run_exports_and_the_cards_snippet_predicts_as_lmforge(
        transformers, runs, tmp_path, capsys, multi, style):
    run = runs(multi=multi, style=style)
    code, err = export(capsys, run, "--format", "hf", "--out", tmp_path / "out")
    assert code == 0, err
    assert STYLES[style][1] in err and (THRESHOLDS_KEY in err) == multi
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    loaded = load_classifier(run)
    assert [saved["id2label"][str(i)] for i in range(len(saved["id2label"]))] == loaded.labels.names
    assert saved["pad_token_id"] == loaded.tokenizer.eot_id
    card = (tmp_path / "out" / "README.md").read_text()
    figures = json.loads((run / "test_metrics.json").read_text())  # of the exported step
    assert figures["step"] == loaded.step and STYLES[style][1] in card
    assert f"| micro-F1, all labels | {figures['all']['micro_f1']:.4f} |" in card
    meta = yaml.safe_load(card[4:card.index("\n---\n", 4)])  # the front matter
    assert meta["pipeline_tag"] == "text-classification"
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["split"] == "test"
    assert result["metrics"][0]["value"] == round(figures["all"]["micro_f1"], 4)
    if multi:  # the tuned thresholds, in the card and in config.json
        assert loaded.labels.thresholds is not None
        assert list(saved[THRESHOLDS_KEY].values()) == loaded.labels.thresholds
        assert f"| `{loaded.labels.names[0]}` | {loaded.labels.thresholds[0]:.4f} |" in card
    # the card's snippet, as a user runs it: AutoTokenizer, padding, the HF model
    texts = ["def main():", "return self.scan_once(s, idx)", "import re", "",
             "x = 1  # a comment longer than the context of sixteen characters"]
    namespace: dict = {}
    exec(card_snippet(tmp_path / "out").replace('texts = ["Crude oil prices rose", '
                                                '"def main():"]', f"texts = {texts!r}"),
         namespace)
    encoded = encode_texts(texts, loaded.tokenizer.encode_batch, pad_id=loaded.tokenizer.eot_id,
                           block_size=loaded.cfg.model.block_size)
    tokens, lengths, _ = batch_of(LabelledTokens(encoded, np.zeros(len(texts))),
                                  np.arange(len(texts)), pad_id=loaded.tokenizer.eot_id,
                                  device=torch.device("cpu"))
    torch.testing.assert_close(namespace["batch"]["input_ids"], tokens)  # lmforge's very ids
    probabilities = loaded.probabilities(texts)
    np.testing.assert_allclose(namespace["probabilities"].numpy(), probabilities, atol=1e-5)
    predicted = loaded.predict(probabilities)
    names = loaded.labels.names
    want = ([[names[j] for j in np.flatnonzero(row)] for row in predicted] if multi
            else [names[i] for i in predicted])
    assert namespace["labels"] == want


def test_safetensors_keeps_the_head_and_labels_and_loads_back_with_the_cards_snippet(
        runs, tmp_path, capsys):
    from safetensors import safe_open

    run = runs(multi=True)
    code, err = export(capsys, run, "--format", "safetensors", "--out", tmp_path / "out")
    assert code == 0 and "labels.json copied" in err, err
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert "head.weight" in f.keys() and "backbone.wte.weight" in f.keys()
    assert (tmp_path / "out" / "labels.json").read_bytes() == (run / "labels.json").read_bytes()
    namespace: dict = {}
    exec(card_snippet(tmp_path / "out"), namespace)
    loaded = load_classifier(run)
    ids = loaded.tokenizer.encode("Crude oil prices rose")[:loaded.cfg.model.block_size]
    with torch.no_grad():
        want = loaded.model(torch.tensor([ids]), torch.tensor([len(ids)]))
    torch.testing.assert_close(namespace["scores"], want)


@pytest.mark.parametrize("fmt", ["hf", "gguf", "peft"])
def test_what_no_format_holds_is_one_line_and_nothing_written(runs, tmp_path, capsys, fmt):
    run = runs()
    if fmt == "hf":  # the same run, its head reading the mean of the states (no weights of
        # its own: the checkpoint serves both); an empty --out is allowed, and stays empty
        run = shutil.copytree(run, tmp_path / "mean")
        write_config(read_run_config(RunDir(run), {"task.pooling": "mean"}), RunDir(run))
        (tmp_path / "out").mkdir()
    code, err = export(capsys, run, "--format", fmt, "--out", tmp_path / "out")
    assert code == 2 and len(err.splitlines()) == 1, err
    message = {"hf": "task.pooling=mean", "gguf": "is a classify run and --format gguf",
               "peft": "is a classify run and --format peft"}[fmt]
    assert message in err and "safetensors" in err  # what to use instead
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())


def test_a_recurrent_classifier_is_refused_for_hf_before_its_weights_are_read(
        dataset, tmp_path, capsys):
    # a run directory holding only its config: the refusal needs nothing else
    cfg = tiny_config(dataset, tmp_path / "rnn", SETTINGS, {"model.arch": "lstm"})
    write_config(cfg, RunDir(tmp_path / "rnn"))
    code, err = export(capsys, tmp_path / "rnn", "--out", tmp_path / "out")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "model.arch=lstm" in err and "--format safetensors" in err
    assert not (tmp_path / "out").exists()
