"""A LoRA run's adapters as a peft adapter directory (adapter_config.json and
adapter_model.safetensors) for the Hugging Face model the run started from (--init-from), so
that `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), DIR)` computes
what the run's model computes.

The adapters are renamed as hf_layout.py renames the layers they sit on (Llama's q_proj is
lmforge's attn.q_proj; GPT-2's mlp.c_fc is its own). GPT-2 fuses lmforge's q, k and v
projections into one Conv1D, c_attn: its adapter is the three stacked, A = [A_q; A_k; A_v]
and B block-diagonal, a rank-3r adapter whose update is exactly the three side by side. It
gets alpha three times as large (peft's rank_pattern and alpha_pattern), so its scale,
alpha / r, stays the run's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from lmforge.config import Config, ModelConfig
from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import ConfigError
from lmforge.interop.hf_layout import hf_family, pairs, qkv, read_json
from lmforge.interop.hf_tokenizer import write_hf_tokenizer
from lmforge.interop.lora import ADAPTER

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # where PeftModel keeps the model it wraps


def hf_base(cfg: Config) -> Path:
    """The Hugging Face directory a LoRA run's adapters belong to; one line when there is none."""
    if not cfg.lora.r:
        raise ConfigError("--format peft writes LoRA adapters, and this run trained every "
                          "weight (lora.r=0); use --format hf or safetensors")
    if not cfg.run.init_from:
        raise ConfigError("--format peft: this run's base is the random initialization of "
                          "run.seed (no --init-from), which no Hugging Face directory holds; "
                          "use --format hf, which merges the adapters into the weights")
    base = Path(cfg.run.init_from)
    if "model_type" not in read_json(base / "config.json"):
        raise ConfigError(f"--format peft: the base {base} is an lmforge safetensors export, "
                          "which transformers cannot load; use --format hf (adapters merged)")
    return base


def adapters(model: nn.Module) -> dict[str, tuple[Tensor, Tensor]]:
    """(A, B) of every adapted layer of a LoRA model, by the layer's lmforge name."""
    sd = model.state_dict()
    tail = f".lora_A.{ADAPTER}.weight"
    return {k.removesuffix(tail): (sd[k].detach().cpu(), sd[k.replace(".lora_A.", ".lora_B.")]
                                   .detach().cpu())
            for k in sd if k.endswith(tail)}


def _fused_qkv(parts: list[tuple[int, Tensor, Tensor]], out: int) -> tuple[Tensor, Tensor]:
    """One adapter for GPT-2's c_attn from those of some of q, k and v, each given with the
    offset of its rows in c_attn's output: A stacked, B block-diagonal."""
    r = parts[0][1].size(0)
    a = torch.cat([a for _, a, _ in parts])  # (len(parts) r, in)
    b = torch.zeros(out, r * len(parts), dtype=a.dtype)
    for j, (offset, _, part_b) in enumerate(parts):
        b[offset:offset + part_b.size(0), j * r:(j + 1) * r] = part_b
    return a, b


def hf_adapters(found: dict[str, tuple[Tensor, Tensor]], cfg: ModelConfig,
                family: str) -> dict[str, tuple[Tensor, Tensor]]:
    """The adapters under the HF names of the layers they adapt (GPT-2's q/k/v fused)."""
    names = {a.removesuffix(".weight"): b.removesuffix(".weight")
             for a, b in pairs(cfg, family) if a.endswith(".weight")}
    used = {name for name in found if name in names}
    out = {names[name]: found[name] for name in used}
    if family == "gpt2":
        for i in range(cfg.n_layer):
            parts = [(j * cfg.n_embd, *found[n]) for j, n in enumerate(qkv(i)) if n in found]
            used.update(n for n in qkv(i) if n in found)
            if parts:
                out[f"transformer.h.{i}.attn.c_attn"] = _fused_qkv(parts, out=3 * cfg.n_embd)
    left = sorted(set(found) - used)
    if left:
        raise ConfigError(f"the adapter of {left[0]} has no Hugging Face counterpart; use "
                          "--format hf, which merges the adapters into the weights")
    return out


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _write_config(cfg: Config, base: Path, family: str, hf: dict[str, tuple[Tensor, Tensor]],
                  out_dir: Path) -> None:
    """adapter_config.json, written by peft's own LoraConfig so any peft version reads it."""
    import peft

    lora = cfg.lora
    targets = sorted({".".join(name.split(".")[-2:]) for name in hf})
    ranks = {".".join(n.split(".")[-2:]): a.size(0) for n, (a, _) in hf.items()
             if a.size(0) != lora.r}  # GPT-2's fused c_attn
    config = peft.LoraConfig(
        r=lora.r, lora_alpha=_number(lora.alpha),  # type: ignore[arg-type]  # see lora.py
        lora_dropout=lora.dropout, target_modules=targets,
        bias="none", task_type="CAUSAL_LM", base_model_name_or_path=str(base),
        fan_in_fan_out=family == "gpt2",  # GPT-2's Conv1D stores its weights transposed
        rank_pattern=ranks,
        alpha_pattern={k: _number(lora.alpha * (v // lora.r)) for k, v in ranks.items()})
    config.save_pretrained(str(out_dir))


def export_peft(model: nn.Module, cfg: Config, tokenizer: Tokenizer | None,
                out_dir: Path) -> str:
    """Write `out_dir` as a peft adapter directory for cfg.run.init_from (with the run's
    tokenizer as tokenizer.json where HF `tokenizers` can express it). One-line
    ConfigError, before writing anything, when the run has no Hugging Face base."""
    base = hf_base(cfg)
    family = hf_family(cfg.model)
    hf = hf_adapters(adapters(model), cfg.model, family)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {f"{PREFIX}{name}.lora_{x}.weight": t.contiguous()
               for name, (a, b) in hf.items() for x, t in (("A", a), ("B", b))}
    save_file(weights, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    _write_config(cfg, base, family, hf, out_dir)
    note = write_hf_tokenizer(tokenizer, out_dir, model_max_length=cfg.model.block_size)
    return (f"wrote a peft LoRA adapter ({len(hf)} layers, r={cfg.lora.r}) for {base} to "
            f"{out_dir}; {note}")
