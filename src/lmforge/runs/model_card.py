"""The model card of an export: README.md with YAML front matter, as the Hugging Face Hub
and most model zoos read it.

`render_card` turns a `ModelCard` (plain facts, gathered by runs/card_facts.py) into text
and does nothing else, so every string from a run (its name, its dataset's path, the
config) passes through one of two escapers here: `yaml_str` for the front matter, which
must stay valid YAML whatever a path holds, and `code` / `fenced` for the body, where a
code span shows any text literally (no markdown, no HTML).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelFacts:
    """What the model is."""

    architecture: str  # e.g. "GPT-2-style Transformer (layernorm, gelu, learned positions)"
    family: str  # a Hub tag: gpt2, llama, qwen2, rnn, lstm, gru, gpt
    parameters: int
    n_layer: int
    n_embd: int
    n_head: int | None  # None for recurrent models
    context: int  # tokens (the BPTT chunk of a recurrent model)
    vocab_size: int
    tokenizer: str  # how it splits text, in words
    hf_class: str = ""  # the transformers class of an hf export


@dataclass(frozen=True)
class DataFacts:
    """The dataset the run trained on, as its manifest describes it (when still there)."""

    path: str
    found: bool
    tokens: dict[str, int] = field(default_factory=dict)  # split → tokens
    bytes: dict[str, int] = field(default_factory=dict)  # split → UTF-8 bytes


@dataclass(frozen=True)
class TrainingFacts:
    """How far the exported checkpoint trained."""

    checkpoint: str  # step_NNNNNNNN
    step: int
    global_batch: int | None  # sequences per optimizer step
    block_size: int
    init_from: str = ""  # the weights it started from, if any

    @property
    def tokens_seen(self) -> int | None:
        if self.global_batch is None:
            return None
        return self.step * self.global_batch * self.block_size


@dataclass(frozen=True)
class EvalFacts:
    """The validation figures of the evaluation at (or last before) the checkpoint."""

    step: int | None = None
    val_loss: float | None = None
    bits_per_byte: float | None = None
    perplexity: float | None = None
    batches: int = 0  # eval.batches: 0 is the whole validation split


@dataclass(frozen=True)
class ModelCard:
    name: str  # the run directory's name
    export_format: str  # hf, safetensors or gguf
    model: ModelFacts
    data: DataFacts
    training: TrainingFacts
    evaluation: EvalFacts
    config_toml: str
    license: str = "unknown"
    files: tuple[str, ...] = ()  # the export's files, for the loading snippet (gguf: its name)


# ------------------------------------------------------------------------------ escaping

def yaml_str(text: str) -> str:
    """`text` as a YAML double-quoted scalar that any YAML 1.1 or 1.2 reader parses back to
    `text`: backslash, quote and every non-printable character escaped. Lone surrogates (a
    path of undecodable bytes) cannot be written as UTF-8 and become U+FFFD."""
    out = []
    for ch in text:
        n = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0xD800 <= n <= 0xDFFF:
            out.append("\ufffd")
        elif n < 0x20 or 0x7F <= n <= 0x9F:
            out.append(f"\\x{n:02x}")
        elif n in (0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF):
            out.append(f"\\u{n:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def printable(text: str) -> str:
    """`text` with control characters and lone surrogates shown as escapes, one line."""
    return "".join(ch if ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF
                   else ascii(ch)[1:-1] for ch in text)


def md_text(text: str) -> str:
    """`text` as literal markdown text: HTML's and markdown's special characters escaped."""
    text = printable(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "".join("\\" + ch if ch in "\\`*_{}[]()#+-.!|~" else ch for ch in text)


def _longest_backticks(text: str) -> int:
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return longest


def code(text: str) -> str:
    """An inline code span that shows `text` literally, whatever backticks it holds."""
    text = printable(text)
    ticks = "`" * (_longest_backticks(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def fenced(text: str, lang: str = "") -> str:
    """A fenced code block that no run of backticks inside `text` can end early."""
    fence = "`" * max(3, _longest_backticks(text) + 1)
    return f"{fence}{lang}\n{text.rstrip(chr(10))}\n{fence}"


# ------------------------------------------------------------------------------ rendering

def number(value: float) -> str:
    return f"{value:.4f}"  # a plain decimal: valid YAML and markdown alike


def _metrics(ev: EvalFacts) -> list[tuple[str, str, float]]:
    """(type, name, value) of each finite figure."""
    figures = [("loss", "validation loss (nats per token)", ev.val_loss),
               ("bits_per_byte", "validation bits per byte", ev.bits_per_byte),
               ("perplexity", "validation perplexity", ev.perplexity)]
    return [(t, n, v) for t, n, v in figures if v is not None and math.isfinite(v)]


def front_matter(card: ModelCard) -> str:
    library = "transformers" if card.export_format == "hf" else "lmforge"
    weights = "gguf" if card.export_format == "gguf" else "safetensors"
    tags = ["lmforge", card.model.family, weights, "text-generation"]
    lines = ["---", f"library_name: {library}", f"license: {yaml_str(card.license)}",
             "pipeline_tag: text-generation", "tags:"]
    lines += [f"- {yaml_str(t)}" for t in dict.fromkeys(tags)]
    metrics = _metrics(card.evaluation)
    if metrics:  # model-index: where the Hub looks for a model's evaluation results
        dataset = card.data.path.rstrip("/").rsplit("/", 1)[-1] or card.data.path
        lines += ["model-index:", f"- name: {yaml_str(card.name)}", "  results:",
                  "  - task:", "      type: text-generation", "      name: Text Generation",
                  "    dataset:", f"      type: {yaml_str(dataset)}",
                  f"      name: {yaml_str(dataset)}", "      split: validation", "    metrics:"]
        for kind, name, value in metrics:
            lines += [f"    - type: {kind}", f"      name: {yaml_str(name)}",
                      f"      value: {number(value)}"]
    return "\n".join([*lines, "---"])


def table(rows: list[tuple[str, str]]) -> str:
    # a | ends a table cell even inside a code span, unless escaped (GFM)
    cells = [(k, v.replace("|", "\\|")) for k, v in rows]
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in cells)])


def model_section(card: ModelCard) -> str:
    m = card.model
    shape = (f"{m.n_layer} layers × {m.n_head} heads × {m.n_embd} wide" if m.n_head
             else f"{m.n_layer} layers × {m.n_embd} units")
    rows = [("architecture", m.architecture), ("parameters", f"{m.parameters:,}"),
            ("shape", shape), ("context", f"{m.context:,} tokens"),
            ("vocabulary", f"{m.vocab_size:,} tokens"), ("tokenizer", m.tokenizer)]
    if m.hf_class:
        rows.insert(1, ("transformers class", code(m.hf_class)))
    return "## Model\n\n" + table(rows)


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def data_section(card: ModelCard) -> str:
    d, t = card.data, card.training
    rows = [("dataset", code(d.path))]
    if not d.found:
        rows.append(("manifest", "not found when this model was exported"))
    for split in ("train", "val"):
        if split in d.tokens:
            size = f" ({_size(d.bytes[split])})" if d.bytes.get(split) else ""
            rows.append((f"{split} tokens", f"{d.tokens[split]:,}{size}"))
    seen = t.tokens_seen
    if seen is not None:
        epochs = (f"; {seen / d.tokens['train']:.2f} epochs" if d.tokens.get("train") else "")
        rows.append(("tokens seen", f"{seen:,} = {t.step:,} steps × {t.global_batch} sequences"
                                    f" × {t.block_size} tokens{epochs}"))
    rows.append(("checkpoint", code(t.checkpoint)))
    if t.init_from:
        rows.append(("started from", code(t.init_from)))
    return "## Training data\n\n" + table(rows)


def _results_section(card: ModelCard) -> str:
    ev = card.evaluation
    metrics = _metrics(ev)
    if not metrics or ev.step is None:
        return "## Results\n\nNo evaluation was recorded up to this checkpoint."
    where = "the whole validation split" if not ev.batches else \
        f"{ev.batches} batches of the validation split"
    return (f"## Results\n\nAt step {ev.step:,}, on {where} "
            f"(`lmforge eval RUN` measures the whole split):\n\n"
            + table([(name, number(value)) for _, name, value in metrics]))


def _how_to_load(card: ModelCard) -> str:
    if card.export_format == "gguf":
        name = card.files[0] if card.files else "model.gguf"
        return "## How to load\n\n" + fenced(GGUF_SNIPPET.replace("MODEL.gguf", name), "sh")
    snippet = HF_SNIPPET if card.export_format == "hf" else LMFORGE_SNIPPET
    return "## How to load\n\n" + fenced(snippet, "python")


HF_SNIPPET = '''from transformers import AutoModelForCausalLM, AutoTokenizer

path = "."  # this directory (or its copy on the Hugging Face Hub)
model = AutoModelForCausalLM.from_pretrained(path)
tokenizer = AutoTokenizer.from_pretrained(path)
ids = tokenizer("def ", return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=50, do_sample=True, top_k=50)
print(tokenizer.decode(out[0]))'''

LMFORGE_SNIPPET = '''import torch
from lmforge.data.tokenizer import load_tokenizer
from lmforge.generate import generate_tokens
from lmforge.interop.hf_import import load_pretrained

path = "."  # this directory
cfg, model = load_pretrained(path)  # lmforge's own names, any architecture
tokenizer = load_tokenizer(path)
prompt = torch.tensor([[tokenizer.eot_id, *tokenizer.encode("def ")]])
new = [int(t) for t in generate_tokens(model, prompt, max_new_tokens=50, top_k=50)]
print(tokenizer.decode(new))
# or continue training it: lmforge train --init-from PATH'''

GGUF_SNIPPET = """# llama.cpp
llama-cli -m MODEL.gguf -p "def " -n 50
# or from Python, with llama-cpp-python
python -c 'from llama_cpp import Llama; print(Llama("MODEL.gguf")("def ", max_tokens=50))'"""


FORMATS = {"hf": "a Hugging Face transformers directory", "safetensors": "lmforge safetensors",
           "gguf": "GGUF for llama.cpp"}


def render_card(card: ModelCard) -> str:
    """README.md of an export: front matter, then what the model is, what it was trained on,
    how well it does, its config and how to load it."""
    m = card.model
    intro = (f"# {md_text(card.name)}\n\nA language model of {m.parameters:,} parameters "
             f"({m.architecture}) trained with lmforge (run {code(card.name)}), exported as "
             f"{FORMATS.get(card.export_format, card.export_format)}.")
    config = "## Config\n\nThe run's resolved config:\n\n" + fenced(card.config_toml, "toml")
    parts = [front_matter(card), intro, model_section(card), data_section(card),
             _results_section(card), config, _how_to_load(card)]
    return "\n\n".join(parts) + "\n"
