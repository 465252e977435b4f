"""Instruction fine-tuning on the one training loop: the two JSONL forms and their errors, the
loss mask (the completion's tokens and nothing else), packing, the sandboxed chat template,
a tiny GPT that learns to continue lines of real code and resumes exactly, and Reuters
headlines with their lead baseline when the corpus is on hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import STDLIB, losses, records, rewind
from helpers import tiny_config as shared_config
from helpers import trainer as helper_trainer
from hf_styles import QWEN2_TEMPLATE, write_model_dir

from lmforge.data.tokenizer import ByteTokenizer, HfTokenizer
from lmforge.errors import DataError
from lmforge.models.gpt import GPT
from lmforge.tasks.chat import LmforgeTemplate, Message, template_for
from lmforge.tasks.sft import Packer, SftTask, text_scores
from lmforge.tasks.sft_data import (
    IGNORE,
    SftExample,
    encode_example,
    fit_window,
    pack,
    prompt_ids,
    read_sft,
    window_batch,
)
from lmforge.train.trainer import Trainer

REUTERS = Path(__file__).parents[3] / "shared" / "data" / "reuters21578.tar.gz"
SETTINGS = {"train.log_every": "1", "eval.every": "10", "train.precision": "fp32",
            "optim.lr": "3e-3", "optim.warmup_steps": "5", "train.max_steps": "30",
            "train.batch_size": "8", "model.block_size": "64", "eval.samples_at_eval": "0",
            "eval.samples": "0", "checkpoint.every": "10", "checkpoint.keep_last": "5"}
CHAT = (Message("system", "Be brief."), Message("user", "Hello world"),
        Message("assistant", "Speak, speak."), Message("user", "again"),
        Message("assistant", "All: yes"))


def lines(limit: int = 60) -> list[str]:
    """Lines of the json package's sources, stripped, 8 to `limit` characters long."""
    out = []
    for path in sorted((STDLIB / "json").glob("*.py")):
        out += [line.strip() for line in path.read_text().splitlines() if 8 < len(line.strip()) < limit]
    return out


def pairs(limit: int = 30) -> list[SftExample]:
    """Each line as a prompt, the next one as its completion: real text, a real task."""
    got = lines(limit)
    return [SftExample(prompt=a + "\n", completion=b, id=str(i))
            for i, (a, b) in enumerate(zip(got, got[1:], strict=False))]


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- formats

def test_both_forms_are_read_and_split_by_their_own_field_or_a_hash(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"prompt": "2+2=", "completion": "4", "split": "test"},
            {"messages": [{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello"}], "id": "c1", "split": "train"}]
    rows += [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(40)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    train, val = read_sft(path, val_fraction=0.25, seed=1)
    assert val[0] == SftExample(prompt="2+2=", completion="4")
    assert train[0] == SftExample(messages=(Message("user", "hi"), Message("assistant", "hello")),
                                  id="c1")
    assert train[0].reference() == "hello" and train[0].context() == (Message("user", "hi"),)
    assert len(train) + len(val) == 42 and 2 <= len(val) <= 20
    assert read_sft(path, val_fraction=0.25, seed=1) == (train, val)  # the same every run


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 1 is not valid JSON"),
    ("[1, 2]", "line 1 is a JSON list, not an object"),
    ('{"text": "x"}', "has neither 'prompt' and 'completion' nor 'messages' (fields: text)"),
    ('{"prompt": "x", "completion": 3}', "'completion' is a int, not a string"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "message 1 is not a {\"role\""),
    ('{"messages": [{"role": "user", "content": "x"}]}', "has no assistant message"),
    ('{"messages": [], "prompt": "x"}', "has both 'messages' and 'prompt'/'completion'"),
    ('{"prompt": "x", "completion": "y", "split": "dev"}', "split 'dev' is neither"),
])
def test_a_bad_record_is_one_line_that_names_it(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DataError) as err:
        read_sft(path)
    assert message in one_line(err) and f"{path} line 1" in str(err.value)


# ---------------------------------------------------------------- loss mask and packing

def test_exactly_the_completion_tokens_and_their_end_are_targets():
    tok, examples = ByteTokenizer(), pairs()[:40]
    template = template_for(tok)
    encoded = [encode_example(e, tok=tok, template=template) for e in examples]
    rows = pack(np.array([len(e) for e in encoded]), np.arange(len(encoded)), 129)
    x, y = window_batch(encoded, rows, block_size=128, pad_id=tok.eot_id)
    targets = y[y != IGNORE].tolist()
    wanted = [i for e in examples for i in [*tok.encode(e.completion), tok.eot_id]]
    assert targets == wanted  # in order: every completion token, then end-of-text
    # inputs are the examples back to back; a target is the next input
    assert x[0, :len(encoded[0])].tolist() == encoded[0].ids.tolist()
    assert np.array_equal(y[:, :-1][y[:, :-1] != IGNORE], x[:, 1:][y[:, :-1] != IGNORE])
    # generation starts from exactly what training put before the completion
    first = encoded[0]
    assert prompt_ids(examples[0], tok=tok, template=template) == \
        first.ids[:int(np.argmax(first.trained))].tolist()


def test_the_lmforge_template_trains_the_assistant_turns_each_ending_with_eot():
    tok = ByteTokenizer()
    e = encode_example(SftExample(messages=CHAT), tok=tok, template=LmforgeTemplate(tok))
    assert tok.decode(e.ids) == ("<|system|>\nBe brief.\n<|user|>\nHello world\n<|assistant|>\n"
                                 "Speak, speak.<|user|>\nagain\n<|assistant|>\nAll: yes")
    trained = e.ids[e.trained].tolist()
    assert trained == [*b"Speak, speak.", tok.eot_id, *b"All: yes", tok.eot_id]
    prompt = LmforgeTemplate(tok).prompt(CHAT[:2])
    assert tok.decode(prompt).endswith("Hello world\n<|assistant|>\n")


def test_packing_keeps_every_example_whole_inside_one_window():
    tok = ByteTokenizer()
    template = template_for(tok)
    encoded = [fit_window(encode_example(e, tok=tok, template=template), 65, keep_first=False)
               for e in pairs(60)[:200]]
    lengths = np.array([len(e) for e in encoded])
    assert lengths.max() == 65 and lengths.min() < 30  # some cut, some short
    packer = Packer(lengths, 65, seed=3)
    for epoch in range(2):
        rows = packer.epoch(epoch)
        assert all(lengths[r].sum() <= 65 for r in rows)
        assert sorted(np.concatenate(rows).tolist()) == list(range(200))  # each once
        # greedy: a window was closed only because the next example did not fit
        assert all(lengths[a].sum() + lengths[b[0]] > 65 for a, b in zip(rows, rows[1:], strict=False))
    assert [r.tolist() for r in packer.epoch(0)] != [r.tolist() for r in packer.epoch(1)]
    stream = [r.tolist() for e in range(3) for r in packer.epoch(e)]
    assert [r.tolist() for r in Packer(lengths, 65, seed=3).rows(len(stream) - 7, 5)] == \
        stream[-7:-2]  # any position, straight from a fresh packer (resume)


def test_a_long_example_loses_the_left_of_its_prompt_and_keeps_its_completion():
    tok = ByteTokenizer()
    e = encode_example(SftExample(prompt="x" * 50 + "PROMPT END:", completion="the answer"),
                       tok=tok, template=template_for(tok))
    cut = fit_window(e, 32, keep_first=False)
    assert len(cut) == 32 and tok.decode(cut.ids).endswith("PROMPT END:the answer")
    assert cut.ids[cut.trained].tolist() == [*b"the answer", tok.eot_id]
    kept = fit_window(e, 32, keep_first=True)  # a bos stays first
    assert kept.ids[0] == e.ids[0] and kept.ids[-11:].tolist() == [*b"the answer", tok.eot_id]
    huge = fit_window(e, 8, keep_first=False)  # the completion alone is longer: its start
    assert tok.decode(huge.ids) == ":the ans" and not huge.trained[0]


# ---------------------------------------------------------------- chat templates

def hf_tokenizer(tmp_path: Path, template: str | None = None) -> HfTokenizer:
    directory = write_model_dir("qwen2", tmp_path / "qwen2")
    if template is not None:
        (directory / "chat_template.jinja").write_text(template)
    return HfTokenizer.from_model_dir(directory)


def test_a_qwen_style_template_renders_and_marks_the_assistant(tmp_path):
    tok = hf_tokenizer(tmp_path)
    template = template_for(tok)
    assert template.name == "the tokenizer's own" and tok.token(template.end_of_turn) == "<|im_end|>"
    segments = template.segments(CHAT)

    def text(ids):
        return tok._hf.decode(ids, skip_special_tokens=False)

    assert "".join(text(s.ids) for s in segments) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello world<|im_end|>\n"
        "<|im_start|>assistant\nSpeak, speak.<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n"
        "<|im_start|>assistant\nAll: yes<|im_end|>\n")
    assert [text(s.ids) for s in segments if s.trained] == ["Speak, speak.<|im_end|>\n",
                                                           "All: yes<|im_end|>\n"]
    assert tok.token(template.prompt(CHAT[:2])[0]) == "<|im_start|>"  # a special, not text


def test_the_template_gives_the_ids_transformers_gives(tmp_path, transformers):
    directory = write_model_dir("qwen2", tmp_path / "qwen2")
    theirs = transformers.AutoTokenizer.from_pretrained(str(directory))
    template = template_for(HfTokenizer.from_model_dir(directory))
    listed = [{"role": m.role, "content": m.content} for m in CHAT]
    whole = theirs.apply_chat_template(listed, tokenize=True, return_dict=True)["input_ids"]
    cue = theirs.apply_chat_template(listed[:2], tokenize=True, add_generation_prompt=True,
                                     return_dict=True)["input_ids"]
    assert [i for s in template.segments(CHAT) for i in s.ids] == list(whole)
    assert template.prompt(CHAT[:2]) == list(cue)


@pytest.mark.parametrize("hostile", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__ }}",  # jinja2 alone renders this as empty
    "{{ cycler.__init__.__globals__ }}",
    "{{ 'a' * 100000000 }}",
    "{{ messages.append(1) }}",
])
def test_the_sandbox_refuses_a_template_that_reaches_for_python(tmp_path, hostile):
    with pytest.raises(DataError) as err:  # at once: the template is tried when it is read
        template_for(hf_tokenizer(tmp_path, QWEN2_TEMPLATE + hostile)).segments(CHAT)
    assert "refused by the sandbox" in one_line(err)


def test_a_broken_template_is_one_line(tmp_path):
    with pytest.raises(DataError) as err:
        template_for(hf_tokenizer(tmp_path, "{% for m in messages %}"))
    assert "does not compile" in one_line(err)
    failing = "{% if messages|length > 2 %}{{ raise_exception('no system role') }}{% endif %}"
    with pytest.raises(DataError, match="failed on a conversation \\(no system role\\)"):
        template_for(hf_tokenizer(tmp_path, QWEN2_TEMPLATE + failing)).segments(CHAT)


# ---------------------------------------------------------------- metrics

def test_text_scores_follow_their_libraries():
    refs = ["ASIAN EXPORTERS FEAR DAMAGE", "THAI TRADE DEFICIT WIDENS"]
    same = text_scores(refs, refs)
    assert (same.exact_match, same.rouge_l, round(same.bleu, 6)) == (1.0, 1.0, 100.0)
    half = text_scores([" ASIAN EXPORTERS FEAR DAMAGE\n", "thai deficit"], refs)
    assert half.exact_match == 0.5  # whitespace aside, case counts
    # ROUGE-L lowercases: "thai deficit" is an LCS of 2 against 4 words: F1 = 2*1*0.5/1.5
    assert half.rouge_l == pytest.approx((1 + 2 / 3) / 2)


# ---------------------------------------------------------------- on the one loop

def make(dataset, run_dir, task: SftTask, *, resume: bool = False) -> Trainer:
    return helper_trainer(shared_config(dataset, run_dir, SETTINGS), resume=resume, task=task)


def test_sft_lowers_the_completion_loss_on_the_one_loop_and_resumes_exactly(dataset, tmp_path):
    examples = pairs()
    cut = len(examples) * 4 // 5
    task = SftTask(examples[:cut], examples[cut:], generate=3, margin=2)
    trainer = make(dataset, tmp_path / "full", task)
    assert isinstance(trainer.raw_model, GPT)  # no head: the language model is tuned
    trainer.fit()
    scores = records(tmp_path / "full", "eval")
    assert [r["step"] for r in scores] == [10, 20, 30]
    assert scores[-1]["val_loss"] < scores[0]["val_loss"] - 0.3
    assert {"exact_match", "rouge_l", "bleu", "val_ppl"} <= set(scores[-1])
    straight = losses(tmp_path / "full")
    # as if killed right after step 20: the resumed run reads the same windows, ends the same
    rewind(tmp_path / "full", 20)
    resumed = make(dataset, tmp_path / "full", task, resume=True)
    assert resumed.objective.state_dict()["step"] == 20
    resumed.fit()
    assert losses(tmp_path / "full") == straight


# ---------------------------------------------------------------- Reuters headlines

@pytest.mark.skipif(not REUTERS.exists(), reason="no ../shared/data/reuters21578.tar.gz here")
def test_reuters_headlines_and_the_lead_baseline():
    from lmforge.tasks.headlines import HEADLINE_CUE, lead_baseline, reuters_headlines

    train, test = reuters_headlines(REUTERS)
    # ModApte's 9,603 / 3,299 stories less those without a title and a body
    assert (len(train), len(test)) == (8762, 3009)
    assert all(e.completion.strip() and e.prompt.endswith(HEADLINE_CUE) for e in train + test)
    assert train[0].completion == "BAHIA COCOA REVIEW"
    assert train[0].prompt.startswith("Showers continued throughout the week in the Bahia")
    assert not any(e.prompt.removesuffix(HEADLINE_CUE).lower().endswith("reuter") for e in train)
    lead = lead_baseline(train, test)
    assert lead.words == 7  # the median training title
    assert 0.15 < lead.rouge_l < 0.25 and lead.scores.exact_match < 0.01
    print(f"lead baseline on {len(test)} test stories: ROUGE-L {lead.rouge_l:.4f}")
