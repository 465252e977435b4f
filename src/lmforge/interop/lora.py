"""LoRA through `peft`: low-rank adapters trained on a frozen base model.

`apply_lora` hands a built lmforge GPT to peft (`inject_adapter_in_model`), which replaces
each adapted nn.Linear (lora.targets: attention's and the MLP's projections) in place by a
peft layer that computes base(x) + B(A(dropout(x))) * alpha / r. B starts at zero, so the
model computes exactly what its base does until it trains; every base weight is frozen
(requires_grad False) and only the adapters train. peft renames what it wraps:

    blocks.0.attn.q_proj.weight  ->  blocks.0.attn.q_proj.base_layer.weight   (frozen)
                                     blocks.0.attn.q_proj.lora_A.default.weight
                                     blocks.0.attn.q_proj.lora_B.default.weight

A LoRA run's checkpoints hold the adapters only, so they name their base: its sha256
(`state_digest`, over the weights as loaded: the --init-from weights, or the seeded random
model of a run without --init-from) and where it came from (`LoraBase`). A run is resumed,
evaluated or exported only on that same base (`check_base`); `build_base` rebuilds it the
way training built it. `merge_adapters` folds the adapters into the base weights (peft's
merge) and gives back a plain model under lmforge's own names, for the merged exports.

peft imports transformers (seconds), so it is imported only when LoRA is used.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.config import LORA_TARGETS, Config, LoraConfig
from lmforge.errors import CheckpointError, ConfigError
from lmforge.interop.init_from import load_into, load_state
from lmforge.models import LanguageModel, build_model
from lmforge.models.gpt import GPT

ADAPTER = "default"  # peft's name of the one adapter set a run trains
RECORD_KEYS = ("r", "alpha", "targets")  # what shapes the adapters or what they compute


@dataclass(frozen=True)
class LoraBase:
    """The frozen weights under a run's adapters: their sha256 and where they came from."""

    sha256: str
    origin: str


def base_origin(cfg: Config) -> str:
    """Where a LoRA run's base comes from, in words (recorded beside its digest)."""
    if cfg.run.init_from:
        return f"--init-from {cfg.run.init_from}"
    return f"the random initialization of run.seed={cfg.run.seed}"


def state_digest(model: nn.Module) -> str:
    """sha256 of a model's weights as they are: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{flat.dtype}:{tuple(t.shape)}\n".encode())
        h.update(flat.view(torch.uint8).numpy())
    return h.hexdigest()


def build_base(cfg: Config) -> LanguageModel:
    """The base of a LoRA run as training builds it (train/build.py), on the CPU: the model
    that run.seed draws, with the --init-from weights loaded over it."""
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model)
    if cfg.run.init_from:
        load_into(model, load_state(cfg))
    return model


def target_names(model: nn.Module, targets: list[str]) -> list[str]:
    """The full names of the linear layers of `model` that `targets` (lora.targets) name.
    Names the model lacks (mlp.w1 in a GELU MLP) are skipped; none at all is an error."""
    found = [name for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and any(name.endswith(f".{t}") for t in targets)]
    if not found:
        have = [t for t in LORA_TARGETS
                if any(name.endswith(f".{t}") for name, _ in model.named_modules())]
        raise ConfigError(f"lora.targets={','.join(targets)}: this model has none of those "
                          f"layers; its blocks have {', '.join(have)}")
    return found


def apply_lora(model: nn.Module, cfg: LoraConfig, *, seed: int) -> None:
    """Give `model` (a built GPT, not yet parallelized; on any device, the meta device too)
    LoRA adapters on the layers cfg.targets names, and freeze everything else. The
    adapters' initial values depend on `seed` alone, and drawing them leaves the global
    random state as it was."""
    if not isinstance(model, GPT):
        raise ConfigError(f"lora.r={cfg.r}: LoRA adapts a Transformer's linear layers, and a "
                          f"{type(model).__name__} has none; fine-tune it fully (lora.r=0)")
    import peft

    # peft's hint says int, but it only divides by r: any positive number scales
    config = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha,  # type: ignore[arg-type]
                             lora_dropout=cfg.dropout, bias="none",
                             target_modules=target_names(model, cfg.target_list))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    # peft freezes every weight but the adapters' (bias="none"): the embeddings, norms and
    # output layer stay the base's, as LoRA intends
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())


def keep_base_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen weights of every adapted layer in `dtype` (bf16 for a run that
    computes in bf16: its matrix products see bf16 weights all the same), halving the
    base's largest part; embeddings and norms stay as they are. Returns the bytes saved."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    saved = 0
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            base = module.get_base_layer()
            for p in base.parameters(recurse=False):
                saved += p.numel() * (p.element_size() - torch.empty((), dtype=dtype).element_size())
            base.to(dtype)
    return saved


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_adapters(model: nn.Module) -> None:
    """Fold every adapter into its base weight (peft's merge) and put the plain layer back in
    its place, in `model` itself: it then has lmforge's own names and computes what the
    LoRA model computed."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if not isinstance(module, BaseTunerLayer):
            continue
        try:
            module.merge(safe_merge=True)
        except ValueError:  # peft's safe merge found a NaN or Inf
            raise CheckpointError(f"the adapter of {name} holds NaN or Inf values; nothing was "
                                  "written; export an earlier checkpoint") from None
        parent, _, child = name.rpartition(".")
        base = module.get_base_layer()
        base.requires_grad_(True)
        setattr(model.get_submodule(parent), child, base)


def record(cfg: Config, base: LoraBase) -> dict[str, Any]:
    """What a LoRA checkpoint's meta.json says of its adapters and their base."""
    lora = cfg.lora
    return {"r": lora.r, "alpha": lora.alpha, "targets": lora.target_list,
            "dropout": lora.dropout, "base_sha256": base.sha256, "base": base.origin}


def check_resume(saved: dict[str, Any] | None, cfg: Config, *, path: Path) -> None:
    """Refuse to continue checkpoint `path` (its meta.json's LoRA record, None for a full
    model) with another kind of training or other adapters."""
    lora = cfg.lora
    if saved is None and not lora.r:
        return
    if saved is None:
        raise CheckpointError(f"{path} holds a fully trained model, not LoRA adapters; resume "
                              "without --lora.r, or export it and start a LoRA run with "
                              "--init-from")
    if not lora.r:
        raise CheckpointError(f"{path} holds LoRA adapters (lora.r={saved.get('r')}), which "
                              "lora.r=0 cannot continue; resume with the run's own lora.r")
    ours = {"r": lora.r, "alpha": lora.alpha, "targets": lora.target_list}
    differ = [f"lora.{k}: checkpoint {saved.get(k)!r}, config {ours[k]!r}"
              for k in RECORD_KEYS if saved.get(k) != ours[k]]
    if differ:
        raise CheckpointError(f"{path} was trained with other adapters ({'; '.join(differ)}); "
                              "drop those overrides or start a new run")


def check_base(saved: dict[str, Any], base: LoraBase, *, path: Path) -> None:
    """Refuse adapters trained on other base weights than `base`: they only mean something
    added to the weights they were trained with."""
    want = str(saved.get("base_sha256", ""))
    if want != base.sha256:
        raise CheckpointError(f"{path} holds LoRA adapters for another base model: trained on "
                              f"sha256 {want[:12]} ({saved.get('base', '?')}), but the base is "
                              f"now sha256 {base.sha256[:12]} ({base.origin}); restore the "
                              "base's weights or start a new run")
