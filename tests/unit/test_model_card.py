"""The model card of an export: its front matter stays valid YAML, holding exactly what the
run gave it whatever its strings contain; its body shows them literally; and a card made
from a real run carries that run's numbers (tokens from the manifest, tokens seen from the
checkpoint, validation figures from metrics.jsonl)."""

from __future__ import annotations

import json
import re

import pytest
from helpers import records, tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.plan import local_plan
from lmforge.runs.card_facts import model_card, write_model_card
from lmforge.runs.load import load_run
from lmforge.runs.model_card import (
    DataFacts,
    EvalFacts,
    ModelCard,
    ModelFacts,
    TrainingFacts,
    code,
    fenced,
    render_card,
    yaml_str,
)
from lmforge.train.session import train_run

yaml = pytest.importorskip("yaml")

HOSTILE = ['plain', 'a "quoted" name', "back\\slash", "colon: value", "# not a comment",
           "- not a list", "new\nline", "tab\there", "{flow: map}", "[flow, list]", "&anchor",
           "*alias", "!tag", "%directive", "@at", "`tick`", "'single'", "  spaces  ", "",
           "null", "true", "1e3", "0x10", "~", "caf\u00e9 \u4e2d\u6587 \U0001f600", "\x00\x1b\x7f\x85",
           "\u2028\u2029\ufeff", "<script>alert(1)</script>", "---", "...", "a\r\nb"]


def card(name: str = "run", *, path: str = "data/json", license: str = "unknown",
         export_format: str = "safetensors", val_loss: float | None = 1.5) -> ModelCard:
    return ModelCard(
        name=name, export_format=export_format, license=license,
        model=ModelFacts(architecture="Llama-style Transformer: rmsnorm, swiglu, rope positions",
                         family="llama", parameters=28_288, n_layer=2, n_embd=32, n_head=2,
                         context=32, vocab_size=95, tokenizer="characters"),
        data=DataFacts(path=path, found=True, tokens={"train": 90_000, "val": 10_000},
                       bytes={"train": 95_000, "val": 11_000}),
        training=TrainingFacts(checkpoint="step_00000012", step=12, global_batch=4, block_size=32),
        evaluation=EvalFacts(step=12, val_loss=val_loss, bits_per_byte=2.25, perplexity=4.4817,
                             batches=2),
        config_toml='[data]\npath = "data/json"\n')


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    head = text[4:text.index("\n---\n", 4)]
    return yaml.safe_load(head)


def expected(text: str) -> str:
    """What a YAML reader gets back: lone surrogates cannot be stored, so U+FFFD."""
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


@pytest.mark.parametrize("text", HOSTILE)
def test_yaml_str_round_trips_hostile_strings(text):
    assert yaml.safe_load(f"key: {yaml_str(text)}") == {"key": text}


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_yaml_str_round_trips_any_string(text):
    assert yaml.safe_load(f"key: {yaml_str(text)}") == {"key": expected(text)}


@settings(max_examples=100, deadline=None)
@given(name=st.text(), path=st.text(), license=st.text())
def test_the_front_matter_is_valid_yaml_whatever_the_run_holds(name, path, license):
    meta = front_matter(render_card(card(name, path=path, license=license)))
    assert meta["license"] == expected(license)
    assert meta["library_name"] == "lmforge"
    assert meta["tags"] == ["lmforge", "llama", "safetensors", "text-generation"]
    (index,) = meta["model-index"]
    assert index["name"] == expected(name)
    metrics = {m["type"]: m["value"] for m in index["results"][0]["metrics"]}
    assert metrics == {"loss": 1.5, "bits_per_byte": 2.25, "perplexity": 4.4817}


def test_hf_cards_name_transformers_and_cards_without_figures_leave_them_out():
    meta = front_matter(render_card(card(export_format="hf", val_loss=float("nan"))))
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    metrics = {m["type"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"bits_per_byte", "perplexity"}  # NaN is no figure to publish


def outside_code(markdown: str) -> str:
    """`markdown` less its fenced blocks and code spans (a span ends at a run of exactly as
    many backticks as opened it)."""
    markdown = re.sub(r"(?ms)^(`{3,})[^\n]*\n.*?^\1$", "", markdown)
    return re.sub(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", "", markdown)


@pytest.mark.parametrize("text", HOSTILE)
def test_the_body_shows_run_strings_literally(text):
    span = code(text)
    ticks = re.match(r"`+", span).group()
    inner = span[len(ticks):-len(ticks)]
    assert "\n" not in span and ticks not in inner  # one span, which nothing inside can end
    body = render_card(card(f"<b>{text}</b>", path=text)).split("\n---\n", 1)[1]
    assert "<b>" not in outside_code(body)  # as text (&lt;b&gt;), or inside a code span
    block = fenced("x = 1\n```\ny = 2", "python")
    assert block.startswith("````python\n") and block.endswith("\n````")


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A 12-step run of the tiny GPT, evaluated at 6 and 12, with a checkpoint at each."""
    run = tmp_path_factory.mktemp("card") / "run"
    cfg = tiny_config(dataset, run, {"train.max_steps": "12", "eval.every": "6",
                                     "checkpoint.every": "6", "train.threads": "1"})
    assert train_run(local_plan(cfg, run)).exit_code == 0
    return run


@pytest.mark.parametrize("which, step", [("latest", 12), ("step_00000006", 6)])
def test_a_card_from_a_run_holds_its_numbers(trained, dataset, which, step):
    loaded = load_run(trained, which=which)
    c = model_card(loaded, export_format="safetensors")
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert c.data.found and c.data.tokens == {s: e["tokens"] for s, e in manifest["splits"].items()}
    assert c.training.step == step and c.training.global_batch == 4
    assert c.training.tokens_seen == step * 4 * 16  # steps x global batch x block_size
    (evaluation,) = [r for r in records(trained, "eval") if r["step"] == step]
    assert c.evaluation.step == step and c.evaluation.val_loss == evaluation["val_loss"]
    assert c.evaluation.bits_per_byte == evaluation["val_bpb"]
    assert c.model.parameters == loaded.model.num_params() and c.model.family == "gpt2"
    text = render_card(c)
    assert f"{evaluation['val_loss']:.4f}" in text and f"{step * 64:,}" in text
    assert f"{manifest['splits']['train']['tokens']:,}" in text
    assert "n_embd = 32" in text  # the resolved config


def test_a_card_says_when_the_dataset_is_gone(trained, tmp_path, monkeypatch):
    loaded = load_run(trained)
    loaded.cfg.data.path = str(tmp_path / "moved away")
    (tmp_path / "out").mkdir()
    write_model_card(loaded, tmp_path / "out", export_format="safetensors", license="mit")
    text = (tmp_path / "out" / "README.md").read_text()
    assert "not found when this model was exported" in text
    assert front_matter(text)["license"] == "mit"
