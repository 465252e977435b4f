import pytest
import torch

from lmforge import checkpoint
from lmforge.errors import CheckpointError
from lmforge.rundir import RunDir

STATE = {"counters": {"step": 1}, "loader": {"step": 1}, "rng": []}


class Tied(torch.nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.emb = torch.nn.Embedding(16, width)
        self.head = torch.nn.Linear(width, 16, bias=False)
        self.head.weight = self.emb.weight  # shared storage, as in a GPT with tied embeddings


def save(run, step, model, *, keep_last=2, is_best=False):
    opt = torch.optim.AdamW(model.parameters())
    return checkpoint.save_checkpoint(RunDir(run), step=step, model=model, optimizer=opt,
                                      trainer_state={"counters": {"step": step}, "loader": {},
                                                     "rng": [torch.get_rng_state()]},
                                      model_config={"width": 8}, keep_last=keep_last, is_best=is_best)


def test_weights_round_trip_with_tied_parameters(tmp_path):
    a, b = Tied(), Tied()
    save(tmp_path, 3, a)
    checkpoint.load_weights(checkpoint.find_checkpoint(RunDir(tmp_path)), b)
    assert torch.equal(a.emb.weight, b.emb.weight)
    assert b.head.weight.data_ptr() == b.emb.weight.data_ptr()


def test_retention_keeps_the_last_k_and_the_best(tmp_path):
    model = Tied()
    save(tmp_path, 1, model)
    save(tmp_path, 2, model, is_best=True)
    for step in (3, 4, 5):
        save(tmp_path, step, model)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert names == ["step_00000002", "step_00000004", "step_00000005"]
    assert checkpoint.find_checkpoint(RunDir(tmp_path)).name == "step_00000005"
    assert checkpoint.find_checkpoint(RunDir(tmp_path), "best").name == "step_00000002"


def test_corrupt_latest_falls_back_to_the_previous_intact_one(tmp_path):
    model = Tied()
    save(tmp_path, 1, model)
    latest = save(tmp_path, 2, model)
    weights = latest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.verify(latest)
    assert checkpoint.find_checkpoint(RunDir(tmp_path)).name == "step_00000001"


def test_partial_save_is_cleaned_and_ignored(tmp_path):
    save(tmp_path, 1, Tied())
    partial = tmp_path / "checkpoints" / ".tmp-step_00000002"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert checkpoint.find_checkpoint(RunDir(tmp_path)).name == "step_00000001"
    checkpoint.clean_partial(RunDir(tmp_path))
    assert not partial.exists()


def test_missing_runs_and_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="run directory not found"):
        checkpoint.find_checkpoint(RunDir(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="has no checkpoint yet"):
        checkpoint.find_checkpoint(RunDir(tmp_path))
    save(tmp_path, 1, Tied())
    with pytest.raises(CheckpointError, match="has no checkpoint 'step_9'; it has: latest, step_00000001"):
        checkpoint.find_checkpoint(RunDir(tmp_path), "step_9")


def test_another_model_shape_is_refused_with_what_differs(tmp_path):
    path = save(tmp_path, 1, Tied())
    meta = checkpoint.verify(path)
    with pytest.raises(CheckpointError, match=r"model.width: checkpoint 8, config 12"):
        checkpoint.check_model_config(meta, {"width": 12}, path=path)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        checkpoint.load_weights(path, torch.nn.Linear(3, 3))


def test_same_names_other_shapes_is_a_clear_error(tmp_path):
    path = save(tmp_path, 1, Tied(width=8))
    with pytest.raises(CheckpointError, match="does not fit this model .*size mismatch"):
        checkpoint.load_weights(path, Tied(width=12))


def test_training_state_round_trips_through_dcp(tmp_path):
    a = Tied()
    opt_a = torch.optim.AdamW(a.parameters(), lr=0.1)
    a.emb.weight.sum().backward()
    opt_a.step()
    path = checkpoint.save_checkpoint(RunDir(tmp_path), step=1, model=a, optimizer=opt_a,
                                      trainer_state=STATE, model_config={"width": 8},
                                      keep_last=2)
    assert (path / "state").is_dir() and any(k.startswith("state/") for k in
                                             checkpoint.verify(path).sha256)
    b = Tied()
    opt_b = torch.optim.AdamW(b.parameters(), lr=0.1)
    assert checkpoint.load_training_state(path, model=b, optimizer=opt_b) == STATE
    assert torch.equal(a.emb.weight, b.emb.weight)
    assert b.head.weight is b.emb.weight
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(sa["state"][0][key], sb["state"][0][key])


def _same(a, b) -> bool:
    """Whether two state dicts hold the same keys, values and tensors."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _stepped(name: str):
    """A model of each kind lmforge saves, and its optimizer after one step."""
    from lmforge.config import LoraConfig, ModelConfig, OptimConfig
    from lmforge.interop import lora
    from lmforge.models import build_model
    from lmforge.train.optim import build_optimizer

    torch.manual_seed(0)
    if name == "tied":
        model, optim = Tied(), OptimConfig()
    else:
        arch = "gru" if name == "gru" else "gpt"
        model = build_model(ModelConfig(arch=arch, n_layer=2, n_head=2, n_embd=16, block_size=8,
                                        vocab_size=32, bias=name == "lora", mlp="relu2",
                                        qk_norm=name == "muon"))
        optim = OptimConfig(name="muon" if name == "muon" else "adamw")
        if name == "lora":
            lora.apply_lora(model, LoraConfig(r=2), seed=1)
    optimizer = build_optimizer(model, optim, device_type="cpu")
    loss = sum((p.float() ** 2).sum() for p in model.parameters() if p.requires_grad)
    loss.backward()
    optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("name", ["tied", "muon", "gru", "lora"])
def test_a_plain_models_state_is_what_dcp_gives(name):
    """A single process saves without DCP's state-dict helpers (they import torch._dynamo):
    the same names, values and optimizer groups as theirs, so DCP resumes it anywhere."""
    model, optimizer = _stepped(name)
    adapters = name == "lora"
    assert checkpoint._plain(model)
    for full in (False, True):
        assert _same(checkpoint._plain_model_state(model, adapters_only=adapters, full=full),
                     checkpoint._dcp_model_state(model, adapters_only=adapters, full=full))
    dcp = checkpoint._dcp().state_dict.get_optimizer_state_dict(model, optimizer)
    assert _same(checkpoint._plain_optimizer_state(model, optimizer), dcp)
    assert len(dcp["state"]) == sum(p.requires_grad for p in model.parameters())
