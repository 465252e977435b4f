"""Experiment trackers (log.to): a tiny run logs to every tracker that is installed, offline,
and what each wrote is read back with the tracker's own reader and compared with
metrics.jsonl and the config; old runs' train.tensorboard still loads and resumes."""

from __future__ import annotations

import importlib.util
import math
import struct
from pathlib import Path

import pytest
from helpers import records, rewind, tiny_config

from lmforge import config as config_module
from lmforge.config import TRACKERS, LogConfig, load_config, require_trackers
from lmforge.errors import ConfigError
from lmforge.plan import TrainRequest, local_plan, planned_run
from lmforge.rundir import RunDir, read_run_config
from lmforge.train.session import train_run

MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
INSTALLED = [name for name in TRACKERS if importlib.util.find_spec(MODULES[name])]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Trackers as a user without an account or a server has them: W&B offline by lmforge's
    default, MLflow in the run directory; their caches and settings kept out of $HOME."""
    for var in ("WANDB_MODE", "WANDB_PROJECT", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME",
                "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.setenv(var, "x")  # recorded first, so that teardown restores it
        monkeypatch.delenv(var)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR",
                "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")


def train(dataset: Path, run_dir: Path, **settings: str):
    """A 6-step run logging every 2 steps and evaluating at 3 and 6, with samples."""
    cfg = tiny_config(dataset, run_dir, {
        "train.max_steps": "6", "train.log_every": "2", "eval.every": "3", "eval.samples": "1",
        "eval.samples_at_eval": "1", "eval.sample_tokens": "8", "log.to": ",".join(INSTALLED),
        "checkpoint.every": "3", "train.threads": "1", **settings})
    return train_run(local_plan(cfg, run_dir)), cfg


def expected(run_dir: Path) -> dict[str, dict[int, float]]:
    """tag → step → value, as metrics.jsonl has them (train/bpb left out: TensorBoard's own
    test checks its factor)."""
    train, evals = records(run_dir, "train"), records(run_dir, "eval")
    return {"train/loss": {r["step"]: r["loss"] for r in train},
            "train/lr": {r["step"]: r["lr"] for r in train},
            "val/loss": {r["step"]: r["val_loss"] for r in evals},
            "val/bpb": {r["step"]: r["val_bpb"] for r in evals}}


def test_a_run_logs_config_and_scalars_to_every_installed_tracker(dataset, tmp_path, offline):
    run = tmp_path / "run"
    outcome, cfg = train(dataset, run)
    assert outcome.exit_code == 0
    want = expected(run)
    assert sorted(want["train/loss"]) == [2, 4, 6] and sorted(want["val/loss"]) == [3, 6]
    checks = {"tensorboard": check_tensorboard, "wandb": check_wandb, "mlflow": check_mlflow}
    for name in INSTALLED:
        checks[name](run, want)
    assert "tensorboard" in INSTALLED  # a dependency of lmforge itself


def check_tensorboard(run: Path, want: dict[str, dict[int, float]]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    for tag, values in want.items():
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert got == pytest.approx(values, rel=1e-6), tag  # float32 in the event file
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    data = HParamsPluginData.FromString(content)
    hparams = data.session_start_info.hparams
    assert hparams["model.n_embd"].number_value == 32
    assert hparams["data.path"].string_value == str(Path(want_dataset(run)))
    assert hparams["log.to"].string_value == ",".join(INSTALLED)
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "[model]" in config_text and "n_embd = 32" in config_text


def want_dataset(run: Path) -> str:
    return read_run_config(RunDir(run)).data.path


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (`run-ID.wandb`): LevelDB's log format (32 KiB blocks of
    chunks with a 7-byte header: checksum, length, type), after W&B's own 7-byte header, each
    record one of W&B's protobuf Records. W&B reads them back only to upload them."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos = path.read_bytes(), 32768, 7
    out, chunk = [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL, or the LAST piece of a record split across blocks
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out


def check_wandb(run: Path, want: dict[str, dict[int, float]]) -> None:
    import json

    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    recs = wandb_records(files[0])
    started = [r.run for r in recs if r.WhichOneof("record_type") == "run"][0]
    config = {item.key: json.loads(item.value_json) for item in started.config.update}
    assert config["model.n_embd"] == 32 and config["log.to"] == ",".join(INSTALLED)
    assert started.display_name == run.name and started.project == "lmforge"
    history: dict[str, dict[int, float]] = {}
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            row = {item.key or ".".join(item.nested_key): json.loads(item.value_json)
                   for item in r.history.item}
            for tag, value in row.items():
                if tag in want:
                    history.setdefault(tag, {})[row["_step"]] = value
    assert sorted(history) == sorted(want)
    for tag, values in want.items():
        assert history[tag] == pytest.approx(values), tag


def check_mlflow(run: Path, want: dict[str, dict[int, float]]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("lmforge")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == run.name and found.info.status == "FINISHED"
    params = found.data.params
    assert params["model.n_embd"] == "32" and params["train.max_steps"] == "6"
    assert params["data.path"] == want_dataset(run)
    for tag, values in want.items():
        history = {m.step: m.value for m in client.get_metric_history(found.info.run_id, tag)}
        assert history == pytest.approx(values), tag
    artifacts = Path(client.download_artifacts(found.info.run_id, "", str(run / "artifacts")))
    assert "n_embd = 32" in (artifacts / "config.toml").read_text()
    assert list((artifacts / "samples").iterdir())  # the samples at the end


@pytest.mark.skipif(not {"wandb", "mlflow"} <= set(INSTALLED), reason="needs wandb and mlflow")
def test_a_resumed_run_is_a_second_tracker_run(dataset, tmp_path, offline):
    """W&B and MLflow steps cannot go back: the attempt that redoes steps 4-6 after the
    checkpoint of step 3 is a run of its own in each, and TensorBoard shows each step once."""
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    _, cfg = train(dataset, run)
    rewind(run, 3)
    with planned_run(TrainRequest(resume=run)) as plan:
        assert plan.resume_step == 3
        assert train_run(plan).exit_code == 0
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    runs = client.search_runs([client.get_experiment_by_name("lmforge").experiment_id])
    names = sorted(r.info.run_name for r in runs)
    assert names == [run.name, f"{run.name} (resumed at step 3)"]
    second = next(r for r in runs if "resumed" in r.info.run_name)
    steps = [m.step for m in client.get_metric_history(second.info.run_id, "train/loss")]
    assert sorted(steps) == [4, 6]
    assert len(list((run / "wandb").glob("offline-run-*/run-*.wandb"))) == 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6]


# ---------------------------------------------------------------------------- the config

def test_log_to_names_known_trackers(dataset, tmp_path):
    assert LogConfig().trackers == ("tensorboard",)
    assert LogConfig(to=" wandb, mlflow ,wandb").trackers == ("wandb", "mlflow")
    assert LogConfig(to="none").trackers == () and LogConfig(to="").trackers == ()
    with pytest.raises(ConfigError, match="'wandbb' is not a tracker.*did you mean 'wandb'"):
        load_config("default", {"log.to": "tensorboard,wandbb"})
    with pytest.raises(ConfigError, match="train.tensorboard is now log.to"):
        load_config("default", {"train.tensorboard": "false"})


def test_a_tracker_not_installed_is_one_line_with_the_pip_command(monkeypatch):
    monkeypatch.setitem(config_module._TRACKER_MODULES, "mlflow", "lmforge_no_such_package")
    with pytest.raises(ConfigError) as err:
        require_trackers(LogConfig(to="tensorboard,mlflow"))
    message = str(err.value)
    assert "pip install mlflow-skinny" in message and "\n" not in message
    require_trackers(LogConfig(to="tensorboard"))  # installed: nothing to say


def old_config(run: Path, tensorboard: bool) -> None:
    """Make `run`'s config.toml what a run saved before [log] existed: train.tensorboard."""
    text = (run / "config.toml").read_text()
    head, log = text.split("[log]\n")
    log, _, rest = log.partition("\n[")  # the [log] section alone; the sections after it stay
    assert log.strip().startswith("to =") and "\n" not in log.strip()
    text = head + ("[" + rest if rest else "")
    text = text.replace("[train]\n", f"[train]\ntensorboard = {str(tensorboard).lower()}\n")
    (run / "config.toml").write_text(text)


@pytest.mark.parametrize("tensorboard, trackers", [(True, ("tensorboard",)), (False, ())])
def test_an_old_runs_train_tensorboard_reads_as_log_to(dataset, tmp_path, tensorboard, trackers):
    cfg = tiny_config(dataset, tmp_path / "run", {"train.max_steps": "1"})
    run = RunDir(tmp_path / "run")
    from lmforge.rundir import write_config

    write_config(cfg, run)
    old_config(run.path, tensorboard)
    assert read_run_config(run).log.trackers == trackers


def test_an_old_run_without_tensorboard_resumes(dataset, tmp_path):
    """Saved with train.tensorboard=false, it resumes with no tracker, and its config is saved
    again in today's form."""
    run = tmp_path / "run"
    cfg = tiny_config(dataset, run, {"train.max_steps": "4", "checkpoint.every": "2",
                                     "train.threads": "1"})
    assert train_run(local_plan(cfg, run)).exit_code == 0
    old_config(run, tensorboard=False)
    rewind(run, 2)
    with planned_run(TrainRequest(resume=run)) as plan:
        assert plan.cfg.log.trackers == () and plan.resume_step == 2
        assert train_run(plan).exit_code == 0
    assert not (run / "tb").exists()
    saved = (run / "config.toml").read_text()
    assert "tensorboard = " not in saved and '[log]\nto = ""' in saved
    assert [r["step"] for r in records(run, "train")][-1] == 4
    assert not math.isnan(records(run, "eval")[-1]["val_loss"])
