"""A classifier (`lmforge finetune classify`, models/heads.SequenceClassifier) for the rest of
the ecosystem: a Hugging Face directory that `AutoModelForSequenceClassification` loads
offline (GPT2-, Llama- or Qwen2ForSequenceClassification), or lmforge's own safetensors
with the run's labels.json. The backbone's names, layouts and config are hf_export.py's.

The HF class computes what lmforge's classifier does when three things hold:
- the backbone has an HF twin (hf_layout.hf_family): a recurrent net has none;
- the head reads the last real token (task.pooling=last): *ForSequenceClassification takes
  the state at the rightmost position of input_ids that is not config.pad_token_id (and
  position 0 where a row is all padding); no HF class averages the states, so
  task.pooling=mean is refused;
- the head is a Linear without bias, as HF's `score` is (heads.SequenceClassifier).

pad_token_id is the tokenizer's end-of-text id, with which lmforge right-pads a batch. A
text lmforge encodes never ends in that id: its tokenizers read a literal "<|endoftext|>" (or
a model's own eos) inside a text as text, so the id is padding only, except for an empty
text, which encode_texts makes one eot token of length 1: HF finds no real token in that row
and takes position 0, the very position lmforge pools (its attention mask must cover that
position, as lmforge's lengths do; the card's snippet sets it). On lmforge's ids, padded or
not, both pool the same position. Ids that do end in eot (HF's own tokenizer turns a literal
eos in the text into it unless split_special_tokens is set, as lmforge's exported tokenizers
have it) would be pooled by HF at the token before.

Tuned per-label decision thresholds (several labels per text) have no HF config field: they
go to config.json as `lmforge_thresholds`, label → threshold, which transformers keeps as an
attribute of the config and otherwise ignores.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lmforge.config import ModelConfig
from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import ConfigError
from lmforge.interop.hf_export import (
    export_safetensors,
    hf_config,
    special_ids,
    to_hf_state_dict,
    write_hf_model,
)
from lmforge.interop.hf_layout import SEQUENCE_CLASSES, hf_family
from lmforge.models.heads import SequenceClassifier

THRESHOLDS_KEY = "lmforge_thresholds"
DEFAULT_THRESHOLD = 0.5  # what lmforge predicts at for a label no tuning has set


def check_hf_classifier(model_cfg: ModelConfig, *, pooling: str) -> str:
    """The HF family of a classifier's backbone ('gpt2', 'llama' or 'qwen2'), or one
    ConfigError, before anything is loaded or written, for a classifier no HF class
    computes."""
    family = hf_family(model_cfg)  # a recurrent or otherwise twinless backbone is refused here
    if pooling != "last":
        raise ConfigError(f"task.pooling={pooling}: Hugging Face's {SEQUENCE_CLASSES[family]} "
                          "reads the last real token's state and no HF class averages them; "
                          "use --format safetensors")
    return family


def export_hf_classifier(model: SequenceClassifier, model_cfg: ModelConfig, tokenizer: Tokenizer,
                         out_dir: Path, *, labels: list[str], multi_label: bool,
                         thresholds: list[float] | None, pooling: str = "last") -> str:
    """Write `out_dir` so `AutoModelForSequenceClassification.from_pretrained(out_dir)` loads
    the classifier `model` offline, with the label names, the problem type and the padding id
    it needs. Raises ConfigError before writing anything for a classifier no HF class
    computes. A one-line summary."""
    family = check_hf_classifier(model_cfg, pooling=pooling)
    if not multi_label and len(labels) < 2:
        raise ConfigError(f"{len(labels)} label name(s) with one label per text: Hugging "
                          "Face's single_label_classification needs at least two; use "
                          "--format safetensors")
    if model.head.bias is not None:  # HF's score has none: dropping it would change scores
        raise ConfigError(f"the classifier's head has a bias that {SEQUENCE_CLASSES[family]}'s "
                          "score layer lacks; use --format safetensors")
    weights = to_hf_state_dict(model.backbone.state_dict(), model_cfg, family, lm_head=False)
    weights["score.weight"] = model.head.weight.detach().cpu().contiguous().clone()
    eot, bos = special_ids(tokenizer)
    config = hf_config(model_cfg, family, eot_id=eot, bos_id=bos,
                       dtype=weights["score.weight"].dtype)
    config.update(
        architectures=[SEQUENCE_CLASSES[family]], num_labels=len(labels),
        id2label={str(i): name for i, name in enumerate(labels)},
        label2id={name: i for i, name in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label
        else "single_label_classification",
        pad_token_id=eot)  # lmforge right-pads with eot; see the module's docstring
    kept = ""
    if multi_label:
        chosen = thresholds or [DEFAULT_THRESHOLD] * len(labels)
        config[THRESHOLDS_KEY] = dict(zip(labels, map(float, chosen), strict=True))
        kept = (f"; the per-label thresholds ({'tuned' if thresholds else 'untuned: 0.5'}) "
                f"in config.json's {THRESHOLDS_KEY}, which no HF field holds")
    note = write_hf_model(Path(out_dir), weights, config, tokenizer,
                          model_max_length=model_cfg.block_size)
    return (f"wrote {SEQUENCE_CLASSES[family]} ({family}, {len(labels)} labels) to {out_dir}"
            f"{kept}; {note}")


def export_classifier_safetensors(model: SequenceClassifier, model_cfg: ModelConfig,
                                  tokenizer: Tokenizer, out_dir: Path, *,
                                  labels_file: Path) -> str:
    """Any classifier as lmforge's own safetensors (`backbone.*` and `head.weight`), its
    ModelConfig as config.json, the run's labels.json and the tokenizer: nothing lost, any
    backbone and pooling."""
    note = export_safetensors(model, model_cfg, tokenizer, out_dir)
    shutil.copyfile(labels_file, Path(out_dir) / labels_file.name)
    return f"{note}; {labels_file.name} copied"
