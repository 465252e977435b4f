"""Load a torch.distributed.checkpoint (DCP) directory without running code from it.

`dcp.load` unpickles two kinds of data from the checkpoint directory with plain pickle:
`FileSystemReader.read_metadata` does `pickle.load` of `.metadata`, and
`DefaultLoadPlanner.load_bytes` does `torch.load(..., weights_only=False)` for every
non-tensor item in the `.distcp` shards (AdamW's hyperparameters: lr, betas, eps, ...). A
run directory can come from someone else, and the sha256 list in meta.json sits beside the
files, so whoever rewrites them rewrites it too: a pickle whose `__reduce__` calls
`os.system` would run on `lmforge train --resume RUN`. (Tensors are safe already: DCP's
`read_data` reads them with `torch.load(..., weights_only=True)`.)

`load` reads the same files, but:
  * `.metadata` is unpickled by `_MetadataUnpickler`, which admits only the globals a DCP
    metadata file holds (`_ALLOWED`, plus torch's dtype, layout and memory-format values),
    recorded from real lmforge checkpoints (GPT and recurrent models; one process, and 2-
    and 4-rank DDP, FSDP, TP and FSDP+TP saves made with torchrun and gloo, fp32 and bf16).
    Each admitted global only builds a plain record or looks a value up: none calls out.
    Every shard it names must be a file in the checkpoint directory itself.
  * non-tensor items are read with `torch.load(..., weights_only=True)` (primitives,
    tuples, lists, dicts, tensors: everything an optimizer's param_groups hold).
Anything else, and any damaged (truncated, garbled) file, is refused with a one-line
CheckpointError that names the file and says what to do.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, ReadItem
from torch.futures import Future

from lmforge.errors import CheckpointError

_META = "torch.distributed.checkpoint.metadata"
# (module, name) of every global a DCP .metadata file asks for; all are dataclasses or enums
# of DCP's own, torch.Size (a tuple of ints), the lookup of a torch.layout by name, and the
# pathlib class of StorageMeta.checkpoint_id (the saving machine's flavour).
_ALLOWED = frozenset({
    (_META, "Metadata"), (_META, "TensorStorageMetadata"), (_META, "BytesStorageMetadata"),
    (_META, "ChunkStorageMetadata"), (_META, "TensorProperties"), (_META, "MetadataIndex"),
    (_META, "StorageMeta"), (_META, "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
})
# torch.float32, torch.strided, torch.contiguous_format, ...: values, which pickle by name.
_TORCH_VALUES = (torch.dtype, torch.layout, torch.memory_format)

_TRUST = "use a checkpoint from a source you trust or start a new run"
_DAMAGED = "use another checkpoint or start a new run"


class _Refused(pickle.UnpicklingError):
    """A global outside the allow-list; `name` is its module.qualname."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        # torch.__dict__, not getattr: no lazy import of a submodule on a hostile name.
        value = torch.__dict__.get(name) if module == "torch" else None
        if isinstance(value, _TORCH_VALUES):
            return value
        raise _Refused(f"{module}.{name}")


def _one_line(err: BaseException) -> str:
    """The gist of `err` on one short line (for torch.load's weights-only refusal, the
    unpickler's own words, not its advice to turn the check off)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    gist = re.search(r"WeightsUnpickler error:(.*)", text, re.DOTALL)
    lines = [line.strip() for line in (gist.group(1) if gist else text).splitlines()]
    first = next((line for line in lines if line), type(err).__name__)
    first = "".join(c if c.isprintable() else "?" for c in first)
    return first if len(first) <= 160 else first[:157] + "..."


def _hostile(where: str, what: str) -> CheckpointError:
    return CheckpointError(f"{where} holds a pickled object of a type a checkpoint never "
                           f"contains ({what}); it may be hostile and was not loaded; {_TRUST}")


def _damaged(where: str, err: BaseException) -> CheckpointError:
    return CheckpointError(f"{where} is damaged ({_one_line(err)}); it was not loaded; "
                           f"{_DAMAGED}")


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _load_failed(where: str, err: Exception) -> CheckpointError:
    """The refusal for a torch.load(weights_only=True) of `where` that raised `err`."""
    found = _GLOBAL.search(str(err)) if isinstance(err, pickle.UnpicklingError) else None
    if found is None:
        return _damaged(where, err)
    name = found.group(1)  # torch drops the "builtins." of a builtin
    return _hostile(where, name if "." in name else f"builtins.{name}")


def _check_metadata(metadata: Any) -> Metadata:
    """`metadata` if it is DCP metadata whose shards are files of its own directory."""
    if not isinstance(metadata, Metadata):
        raise ValueError(f"holds a {type(metadata).__name__}, not DCP Metadata")
    if not isinstance(metadata.storage_data, dict):
        raise ValueError("no storage_data")
    for info in metadata.storage_data.values():
        rel = getattr(info, "relative_path", None)
        if (not isinstance(info, _StorageInfo) or not isinstance(rel, str)
                or rel in ("", ".", "..") or "/" in rel or "\\" in rel):
            raise ValueError(f"names a shard outside its directory: {rel!r}")
    return metadata


def _read_metadata(path: Path) -> Metadata:
    """The DCP metadata file `path`, unpickled with the allow-list."""
    try:
        with open(path, "rb") as fh:
            return _check_metadata(_MetadataUnpickler(fh).load())
    except _Refused as err:
        raise _hostile(str(path), err.name) from None
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read ({err.strerror or err}); "
                              f"{_DAMAGED}") from None
    except Exception as err:  # any failure to parse a file from outside means it is damaged
        raise _damaged(str(path), err) from None


class _SafeReader(FileSystemReader):
    """FileSystemReader whose metadata goes through the allow-list, and whose damaged
    shards are one-line errors."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = _read_metadata(Path(self._get_metadata_path(kwargs.get("rank"))))
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    _reading: str | None = None  # the shard file of the item being read

    def _slice_file(self, file: Any, sinfo: _StorageInfo) -> IO[bytes]:
        self._reading = sinfo.relative_path
        return super()._slice_file(file, sinfo)

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        try:
            return super().read_data(plan, planner)
        except CheckpointError:
            raise
        except Exception as err:  # a tensor: torch.load(weights_only=True) refused or failed
            where = f"{Path(self.path) / self._reading}" if self._reading else f"{self.path}"
            raise _load_failed(where, err) from None


class _SafePlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner that reads non-tensor items with weights_only=True."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            obj = torch.load(value, weights_only=True)
        except Exception as err:
            info = self.metadata.storage_data.get(read_item.storage_index) if self.metadata else None
            where = f"{self.directory / getattr(info, 'relative_path', '?')} (item {fqn})"
            raise _load_failed(where, err) from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def load(state: dict[str, Any], path: Path, *, no_dist: bool) -> None:
    """`dcp.load(state, checkpoint_id=str(path), no_dist=no_dist)` that runs no code from the
    checkpoint; a hostile or damaged one is a CheckpointError."""
    reader = _SafeReader(path)
    reader.read_metadata()  # refuse a bad .metadata here, before DCP falls back to others
    try:
        dcp.load(state, storage_reader=reader, planner=_SafePlanner(path), no_dist=no_dist)
    except CheckpointException as err:
        # DCP wraps each rank's failure; the first refusal, on any rank, is the message.
        for _, failure in sorted(err.failures.items()):
            exc = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(exc, CheckpointError):
                raise CheckpointError(str(exc)) from None
        raise
