"""safe_dcp.load against plain dcp.load on real DCP saves of lmforge models and their AdamW:
the same state from an honest checkpoint, and a refusal, with no code run, where a hostile
pickle replaces .metadata or an item of a .distcp shard (which plain dcp.load runs)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.metadata import BytesStorageMetadata
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

from lmforge import safe_dcp
from lmforge.config import ModelConfig, OptimConfig
from lmforge.errors import CheckpointError
from lmforge.models import build_model
from lmforge.train.optim import build_optimizer

# DCP warns that it assumes one process when there is no group: that is the intent here.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

SAVED_LR = 3e-3


def training_state(arch: str, *, seed: int, lr: float, step: bool) -> dict[str, Any]:
    """lmforge's checkpoint state (checkpoint._training_state) of a small model and its
    AdamW, after one optimizer step if `step`."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch=arch, n_layer=2, n_head=2, n_embd=16, block_size=8,
                                    vocab_size=20))
    optimizer = build_optimizer(model, OptimConfig(lr=lr, beta2=0.95), device_type="cpu")
    if step:
        tokens = torch.randint(0, 20, (2, 8))
        logits, _ = model(tokens)
        F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
        optimizer.step()
    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}


def fresh(arch: str) -> dict[str, Any]:
    """State to load into: other weights, another lr, no step taken."""
    return training_state(arch, seed=1, lr=1e-3, step=False)


def save(tmp_path: Path, arch: str = "gpt") -> tuple[Path, dict[str, Any]]:
    state = training_state(arch, seed=0, lr=SAVED_LR, step=True)
    path = tmp_path / "state"
    dcp.save(state, checkpoint_id=str(path), no_dist=True)
    return path, state


def leaves(x: Any, prefix: str = "") -> dict[str, Any]:
    """Every tensor and value of a nested state dict, by dotted path."""
    if isinstance(x, dict):
        return {k: v for key, item in x.items() for k, v in leaves(item, f"{prefix}.{key}").items()}
    if isinstance(x, list) and x and isinstance(x[0], dict):
        return {k: v for i, item in enumerate(x) for k, v in leaves(item, f"{prefix}[{i}]").items()}
    return {prefix: x}


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    a, b = leaves(got), leaves(want)
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(b[key], torch.Tensor):
            assert isinstance(a[key], torch.Tensor) and torch.equal(a[key], b[key]), key
        else:
            assert type(a[key]) is type(b[key]) and a[key] == b[key], key


class Hostile:
    """What an attacker pickles: unpickling it writes `marker` (standing in for any code),
    then gives `value`, so the load goes on as if nothing happened."""

    def __init__(self, marker: Path, value: Any) -> None:
        self.marker, self.value = marker, value

    def __reduce__(self) -> Any:
        return (eval, ("(open(marker, 'w').write('ran'), value)[1]",
                       {"marker": str(self.marker), "value": self.value}))


def metadata_of(path: Path) -> Any:
    with open(path / ".metadata", "rb") as fh:  # the test's own save: trusted
        return pickle.load(fh)


def refusal(path: Path, state: dict[str, Any], match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as err:
        safe_dcp.load(state, path, no_dist=True)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_an_honest_checkpoint_loads_as_plain_dcp_load_does(tmp_path, arch):
    path, saved = save(tmp_path, arch)
    plain, safe = fresh(arch), fresh(arch)
    dcp.load(plain, checkpoint_id=str(path), no_dist=True)
    safe_dcp.load(safe, path, no_dist=True)
    assert_same(safe, plain)
    assert_same(safe, saved)
    groups = safe["optim"]["param_groups"]
    assert [g["lr"] for g in groups] == [SAVED_LR, SAVED_LR]  # the fresh state had 1e-3
    assert all(g["betas"] == (0.9, 0.95) for g in groups)
    assert {g["weight_decay"] for g in groups} == {0.1, 0.0}
    assert all(int(s["step"]) == 1 for s in safe["optim"]["state"].values())


def test_a_hostile_metadata_file_is_refused_and_runs_nothing(tmp_path):
    path, _ = save(tmp_path)
    marker = tmp_path / "ran"
    # It unpickles to the genuine metadata, after running its code.
    (path / ".metadata").write_bytes(pickle.dumps(Hostile(marker, metadata_of(path))))

    message = refusal(path, fresh("gpt"), "a type a checkpoint never contains")
    assert f"{path / '.metadata'} holds" in message and "builtins.eval" in message
    assert "may be hostile" in message and "source you trust" in message
    assert not marker.exists()

    plain = fresh("gpt")
    dcp.load(plain, checkpoint_id=str(path), no_dist=True)  # the hole: it runs, unnoticed
    assert marker.read_text() == "ran"


def test_a_hostile_item_in_a_shard_is_refused_and_runs_nothing(tmp_path):
    path, _ = save(tmp_path)
    marker = tmp_path / "ran"
    metadata = metadata_of(path)
    fqn = next(k for k, v in metadata.state_dict_metadata.items()
               if isinstance(v, BytesStorageMetadata) and k.endswith(".lr"))
    index = next(i for i in metadata.storage_data if i.fqn == fqn)
    info = metadata.storage_data[index]
    shard = path / info.relative_path
    # The item's bytes move to the end of its shard, replaced by a torch.save'd hostile
    # object that gives back the same lr; the other items keep their offsets.
    payload = tmp_path / "payload.pt"
    torch.save(Hostile(marker, SAVED_LR), payload)
    info.offset, info.length = shard.stat().st_size, payload.stat().st_size
    with open(shard, "ab") as fh:
        fh.write(payload.read_bytes())
    with open(path / ".metadata", "wb") as fh:
        pickle.dump(metadata, fh)

    message = refusal(path, fresh("gpt"), "a type a checkpoint never contains")
    assert f"{shard} (item {fqn}) holds" in message and "builtins.eval" in message
    assert not marker.exists()

    plain = fresh("gpt")
    dcp.load(plain, checkpoint_id=str(path), no_dist=True)  # the hole: it runs, unnoticed
    assert marker.read_text() == "ran"
    assert plain["optim"]["param_groups"][0]["lr"] == SAVED_LR


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not metadata"])
def test_damaged_metadata_is_a_one_line_error(tmp_path, damage):
    path, _ = save(tmp_path)
    meta = path / ".metadata"
    data = meta.read_bytes()
    meta.write_bytes({"truncated": data[: len(data) // 2], "garbage": bytes(range(256)) * 4,
                      "empty": b"", "not metadata": pickle.dumps({"step": 3})}[damage])
    message = refusal(path, fresh("gpt"), "is damaged")
    assert message.startswith(f"{meta} is damaged") and "start a new run" in message


def test_missing_metadata_is_a_one_line_error(tmp_path):
    path, _ = save(tmp_path)
    (path / ".metadata").unlink()
    refusal(path, fresh("gpt"), "cannot be read")


def test_a_shard_named_outside_the_checkpoint_is_refused(tmp_path):
    path, _ = save(tmp_path)
    metadata = metadata_of(path)
    next(iter(metadata.storage_data.values())).relative_path = "../elsewhere.distcp"
    with open(path / ".metadata", "wb") as fh:
        pickle.dump(metadata, fh)
    refusal(path, fresh("gpt"), "outside its directory")


@pytest.mark.parametrize("kind", ["item", "tensor"])
def test_a_damaged_shard_is_a_one_line_error(tmp_path, kind):
    path, _ = save(tmp_path)
    metadata = metadata_of(path)
    info = next(info for index, info in metadata.storage_data.items()
                if isinstance(metadata.state_dict_metadata[index.fqn], BytesStorageMetadata)
                == (kind == "item"))
    shard = path / info.relative_path
    data = bytearray(shard.read_bytes())
    data[info.offset:info.offset + info.length] = b"\x00" * info.length
    shard.write_bytes(bytes(data))
    message = refusal(path, fresh("gpt"), "is damaged")
    assert str(path) in message

