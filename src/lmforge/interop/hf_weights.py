"""A model directory's tensors, read one at a time and placed under lmforge's names.

A 0.5B-parameter model is a gigabyte of bf16 and two of fp32, so loading must not hold
the file, a dictionary of every tensor and the model at once. `WeightSource` knows each
tensor's file, name and shape from the safetensors headers alone and reads a tensor only
when it is taken, with pread rather than a memory map (a mapping's touched pages count as
the process's memory until it is closed), so `load_into_model` holds the model plus one
tensor. pytorch_model.bin is a pickle and loads whole, with weights_only=True, so loading
a directory never runs code from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from lmforge import weights_only
from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError
from lmforge.interop.hf_layout import BUFFERS, is_conv1d, pairs, qkv, weight_files

# What reading a damaged safetensors file can raise (its own error, or torch on odd dtypes)
LOAD_ERRORS = (SafetensorError, OSError, RuntimeError, ValueError, TypeError, KeyError,
               EOFError)


def _unreadable(path: Path, err: BaseException) -> CheckpointError:
    reason = " ".join(str(err).split())[:200]
    return CheckpointError(f"{path} is not a readable safetensors file ({reason}); "
                           "re-download or re-export it")


def load_bin(path: Path) -> dict[str, Tensor]:
    """pytorch_model.bin with weights_only=True: a pickle that would build anything but
    tensors (run code) is refused, never run."""
    try:
        sd = weights_only.load(path)
    except weights_only.NotLoaded as err:
        raise CheckpointError(f"{path} is not plain tensors ({err}); the file is damaged or "
                              "may be hostile, and was not loaded. Get a model.safetensors "
                              "from a source you trust") from None
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                           for k, v in sd.items()):
        raise CheckpointError(f"{path} is not a state_dict (names to tensors); the file is "
                              "damaged or not a model's weights")
    return sd


class WeightSource:
    """The tensors of a directory's weight files, by name (`prefix` added to names that lack
    it: base-model saves such as GPT2Model or LlamaModel, and the original gpt2 files, have
    no "transformer." / "model."), each read from disk when taken."""

    def __init__(self, directory: Path, *, prefix: str = "",
                 files: list[Path] | None = None) -> None:
        self.directory = Path(directory)
        self._where: dict[str, tuple[Path, str]] = {}  # our key → (file, its name there)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._loaded: dict[str, Tensor] = {}  # pytorch_model.bin: in memory already
        files = files if files is not None else weight_files(self.directory)
        for path in files:
            if path.name == "pytorch_model.bin":
                for k, t in load_bin(path).items():
                    self._add(self._named(k, prefix), path, k, tuple(t.shape))
                    self._loaded[self._named(k, prefix)] = t
            else:
                self._index(path, prefix)

    @staticmethod
    def _named(key: str, prefix: str) -> str:
        return key if not prefix or key.startswith((prefix, "lm_head.")) else prefix + key

    def _add(self, name: str, path: Path, key: str, shape: tuple[int, ...]) -> None:
        if name.endswith(BUFFERS):  # buffers older transformers saved; no parameters
            return
        if name in self._where:
            raise CheckpointError(f"{path} and {self._where[name][0]} both hold '{name}'; the "
                                  "weight files are damaged or from two models")
        self._where[name] = (path, key)
        self.shapes[name] = shape

    def _index(self, path: Path, prefix: str) -> None:
        try:
            with safe_open(str(path), framework="pt", backend="pread") as f:
                for key in f.keys():
                    self._add(self._named(key, prefix), path, key,
                              tuple(f.get_slice(key).get_shape()))
        except LOAD_ERRORS as err:
            raise _unreadable(path, err) from None

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def left(self) -> list[str]:
        """The names not taken yet."""
        return sorted(self._where)

    def take(self, name: str, shape: tuple[int, ...] | None = None) -> Tensor:
        """The tensor `name`, read now (and no longer in this source); its shape checked
        against `shape` before anything is read."""
        if name not in self._where:
            raise CheckpointError(f"the model directory has no tensor '{name}', which its "
                                  "config.json implies; the weights are incomplete")
        if shape is not None and self.shapes[name] != shape:
            raise CheckpointError(f"the model directory's '{name}' has shape "
                                  f"{self.shapes[name]}, its config.json implies {shape}")
        path, key = self._where.pop(name)
        del self.shapes[name]
        if name in self._loaded:
            return self._loaded.pop(name)
        try:
            with safe_open(str(path), framework="pt", backend="pread") as f:
                return f.get_tensor(key)
        except LOAD_ERRORS as err:
            raise _unreadable(path, err) from None

    def drop(self, name: str) -> None:
        """Forget `name` unread (a tied output layer stored a second time)."""
        self._where.pop(name, None)
        self.shapes.pop(name, None)
        self._loaded.pop(name, None)


def hf_prefix(family: str) -> str:
    return "transformer." if family == "gpt2" else "model."


def hf_tensors(source: WeightSource, cfg: ModelConfig, family: str) -> Iterator[tuple[str, Tensor]]:
    """(lmforge name, tensor) for each tensor of lmforge's GPT, read from an HF directory one
    at a time; with tied embeddings the output layer is left to the tie. Every tensor of
    the source must be used: CheckpointError names one that is not."""
    for ours, theirs in pairs(cfg, family):
        t = source.take(theirs)
        yield ours, (t.t().contiguous() if is_conv1d(theirs, t) else t)
    if family == "gpt2":  # c_attn: q, k and v side by side, stored (in, 3 out) as Conv1D
        width = 3 * cfg.n_embd
        for i in range(cfg.n_layer):
            fused = {"weight": source.take(f"transformer.h.{i}.attn.c_attn.weight",
                                           (cfg.n_embd, width)).t(),
                     "bias": source.take(f"transformer.h.{i}.attn.c_attn.bias", (width,))}
            for p, t in fused.items():
                for name, part in zip(qkv(i), t.split(cfg.n_embd, dim=0), strict=True):
                    yield f"{name}.{p}", part.contiguous()
    if cfg.tie_embeddings:
        source.drop("lm_head.weight")  # some saves store the tied copy as well
    if len(source):
        raise CheckpointError(f"the model directory has tensors lmforge's GPT has no place for: "
                              f"{', '.join(source.left()[:3])}")


def own_tensors(source: WeightSource, model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) of an `export_safetensors` directory, which uses lmforge's own names;
    a tied weight was stored once, under either of its two names."""
    names = list(model.state_dict())
    tied = [n for n in ("wte.weight", "lm_head.weight") if n in names and n not in source]
    for name in names:
        if name in tied and len(tied) == 1:
            continue  # the other name of the shared tensor carries it
        yield name, source.take(name)
    if len(source):
        raise CheckpointError(f"{source.directory} has tensors the model has no place for: "
                              f"{', '.join(source.left()[:3])}")


@torch.no_grad()
def copy_into(model: nn.Module, tensors: Iterator[tuple[str, Tensor]], directory: Path) -> None:
    """Copy each (name, tensor) into the model's parameter of that name, in the parameter's
    dtype; every parameter and persistent buffer must be given. One tensor is in memory at
    a time besides the model."""
    targets = model.state_dict(keep_vars=True)
    shared = {id(t): n for n, t in targets.items()}  # a tied tensor is filled once
    filled: set[str] = set()
    for name, t in tensors:
        if name not in targets:
            raise CheckpointError(f"{directory} has a tensor '{name}' the model has no place for")
        target = targets[name]
        if name == "wpe.weight" and t.size(0) > target.size(0):
            t = t[:target.size(0)]  # a run with a shorter context keeps the first positions
        if tuple(t.shape) != tuple(target.shape):
            raise CheckpointError(f"{directory}: '{name}' has shape {tuple(t.shape)}, the "
                                  f"config implies {tuple(target.shape)}")
        target.copy_(t)
        filled.add(shared[id(target)])
    missing = [n for n, t in targets.items() if shared[id(t)] not in filled]
    if missing:
        raise CheckpointError(f"{directory} has no tensor '{missing[0]}', which its config.json "
                              "implies; the weights are incomplete")
