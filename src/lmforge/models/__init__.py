"""The model registry: `model.arch` → the class that builds it from a ModelConfig."""

from __future__ import annotations

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.models.gpt import GPT
from lmforge.models.heads import SequenceClassifier, TokenTagger
from lmforge.models.rnn import RecurrentLM

# the recurrent names share one class, which reads its cell from cfg.arch
MODELS: dict[str, type[GPT] | type[RecurrentLM]] = {"gpt": GPT, "rnn": RecurrentLM, "lstm": RecurrentLM,
                                      "gru": RecurrentLM}


# Every model follows `forward(tokens, state=None) -> (logits, state)` (DESIGN.md).
LanguageModel = GPT | RecurrentLM
# What a run may train: a language model, or one with a task's head (models/heads.py)
TrainedModel = GPT | RecurrentLM | SequenceClassifier | TokenTagger


def build_model(cfg: ModelConfig) -> LanguageModel:
    """The model named by cfg.arch, initialized on the current default device."""
    if cfg.arch not in MODELS:
        raise ConfigError(f"model.arch: unknown architecture '{cfg.arch}'; "
                          f"known: {', '.join(sorted(MODELS))}")
    return MODELS[cfg.arch](cfg)
