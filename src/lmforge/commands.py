"""What each CLI verb does, in terms of the library. Each returns the process exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from lmforge import init_from
from lmforge.config import Config, load_config, recipe_path
from lmforge.data import shards
from lmforge.data.document import SourceOptions
from lmforge.data.prepare import prepare
from lmforge.data.tokenizer import tokenizer_digest
from lmforge.distributed import elastic, env
from lmforge.distributed.env import SINGLE
from lmforge.errors import DataError, LmforgeError
from lmforge.evaluate import split_loss, summarize
from lmforge.generate import generate_tokens
from lmforge.rundir import load_run, new_run_dir, read_run_config, write_config
from lmforge.train import preemption
from lmforge.train.metrics import log
from lmforge.train.trainer import Trainer, resolve_device


def ensure_dataset(cfg: Config) -> None:
    """Prepare data.source into data.path unless a prepared dataset is already there."""
    path = Path(cfg.data.path)
    if (path / "manifest.json").is_file():
        return
    if not cfg.data.source:
        raise DataError(f"no prepared dataset at {path}; run `lmforge prepare --data SOURCE "
                        f"--out {path}` or set --data.source")
    log(f"preparing {cfg.data.source} into {path} (done once, reused afterwards)")
    d = cfg.data
    prepare([d.source], path, tokenizer=cfg.tokenizer.kind, vocab_size=cfg.tokenizer.vocab_size,
            val_fraction=d.val_fraction, clean=cfg.clean, workers=d.workers,
            options=SourceOptions(text_field=d.text_field, split=d.split),
            shard_tokens=d.shard_tokens, log=log, progress=cfg.train.progress)


def _setup_run(recipe: str | None, resume: Path | None,
               overrides: dict[str, str]) -> tuple[Config, Path, bool]:
    """(config, run directory, whether to resume); decided by rank 0 alone."""
    if resume is not None:
        if recipe:
            raise LmforgeError("give a recipe for a new run or --resume RUN for an old one, not both")
        if "run.init_from" in overrides:
            raise LmforgeError("--init-from starts a new run; a resumed run continues from its "
                               "own checkpoint, so drop --init-from or --resume")
        return read_run_config(resume, overrides), resume, True
    cfg = load_config(recipe, overrides)
    init_note = init_from.resolve_config(cfg, explicit=overrides) if cfg.run.init_from else ""
    restarting = env.restart_count() > 0
    warning = elastic.shared_store_warning(dict(os.environ))
    if warning and not restarting:  # once, at the first start
        log(warning)
    if restarting:  # torchrun restarted the group after a failure: continue the run
        run_dir = elastic.find_run(cfg)
        if run_dir is not None and (run_dir / "checkpoints" / "latest").is_file():
            log(f"restart {env.restart_count()}: continuing {run_dir}")
            return read_run_config(run_dir, overrides), run_dir, True
        if run_dir is not None:  # it failed before its first checkpoint: start it again there
            cfg.run.dir = str(run_dir)
    run_dir = new_run_dir(cfg, recipe_name=recipe_path(recipe or "default").stem,
                          restarting=restarting)
    cfg.run.dir = str(run_dir)
    ensure_dataset(cfg)
    # Absolute, so that eval and generate find the data from any working directory.
    cfg.data.path = str(Path(cfg.data.path).resolve())
    if cfg.run.init_from:
        tokenizer_note = init_from.check_tokenizer(cfg)
        log(init_note)
        if tokenizer_note:
            log(tokenizer_note)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, run_dir)
    elastic.record_run(run_dir)
    return cfg, run_dir, False


def _train(cfg: Config, run_dir: Path, resuming: bool, *, info: env.DistInfo) -> int:
    # A function of its own so that the model, its DDP/FSDP state and their references to
    # the process group are gone before the group is torn down.
    init_state = init_from.load_state(cfg) if cfg.run.init_from and not resuming else None
    trainer = Trainer(cfg, run_dir, info=info, init_state=init_state)
    del init_state  # the model holds its own copy now
    if resuming:
        trainer.restore()
    elif info.is_main:
        trainer.start_files()
    if info.is_main:
        write_config(cfg, run_dir)
    result = trainer.fit()
    if result["signal"]:  # preempted: saved, and no time to spend on samples and reports
        trainer.tb.close()
        env.barrier(info)  # torchrun ends every rank once one exits: let all finish first
        return preemption.exit_code(result["signal"])
    texts = trainer.samples(count=cfg.eval.samples, max_new_tokens=cfg.eval.sample_tokens)
    if texts:
        shown = "".join(f"\n----- sample {i + 1} -----\n{t}\n" for i, t in enumerate(texts))
        (run_dir / "samples.txt").write_text(shown.lstrip("\n"))
        print(shown)
    trainer.tb.samples(texts, step=trainer.counters.step)
    trainer.tb.close()
    if info.is_main and cfg.train.report:
        _auto_report(run_dir)
    return 0


def train_command(*, recipe: str | None, resume: Path | None, overrides: dict[str, str]) -> int:
    info = SINGLE
    try:
        if env.launched_by_torchrun():
            # Join the group first, with the config's timeout, so rank 0 can share its setup.
            probe = load_config(recipe, overrides) if resume is None else read_run_config(resume, overrides)
            p = probe.parallel
            info = env.init(device_type=resolve_device(probe.train.device).type,
                            strategy=p.strategy, tp=p.tp, timeout_s=p.timeout_s)
        setup: tuple | LmforgeError | None = None
        if info.is_main:
            try:
                setup = _setup_run(recipe, resume, overrides)
            except LmforgeError as err:
                setup = err
        setup = env.broadcast_object(setup, info)  # every rank stops alike on a bad input
        if isinstance(setup, LmforgeError):
            raise setup
        return _train(*setup, info=info)
    except RuntimeError as err:  # gloo reports a vanished peer as a plain RuntimeError
        if info.distributed and env.is_peer_failure(err):
            raise LmforgeError(env.lost_peer_message(err, info)) from None
        raise
    finally:
        env.teardown()


def _auto_report(run_dir: Path) -> None:
    """The report at the end of training; a failure to draw it must not fail the run."""
    from lmforge.report import write_report

    try:
        log(f"report: {write_report([run_dir])}")
    except Exception as err:  # noqa: BLE001 - the run itself is saved; say why and move on
        log(f"report not written ({type(err).__name__}: {err}); retry with `lmforge report {run_dir}`")


def export_command(args: argparse.Namespace) -> int:
    from lmforge import hf

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LmforgeError(f"--out {out} already exists and is not empty; give a new or empty "
                           "directory (nothing was written)")
    run = load_run(args.run, which=args.checkpoint, device="cpu")
    write = hf.export_hf if args.format == "hf" else hf.export_safetensors
    log(write(run.model, run.cfg.model, run.tokenizer, out))
    return 0


def report_command(args: argparse.Namespace) -> int:
    from lmforge.report import write_report

    print(write_report(args.runs, out=args.out))
    return 0


def eval_command(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.batches < 0:
        raise LmforgeError(f"need --batch-size >= 1 and --batches >= 0 (0: the whole split); got "
                           f"--batch-size {args.batch_size} --batches {args.batches}")
    device = resolve_device("auto")
    run = load_run(args.run, which=args.checkpoint, device=str(device))
    data_dir = args.data or Path(run.cfg.data.path)
    manifest = shards.verify(data_dir)
    if tokenizer_digest(data_dir / manifest["tokenizer"]["dir"]) != tokenizer_digest(args.run / "tokenizer"):
        raise DataError(f"{data_dir} was tokenized with another tokenizer than {args.run}; "
                        f"prepare it with the run's (lmforge prepare --tokenizer-from {args.run} "
                        "…) or evaluate on the run's own data")
    if args.split not in manifest["splits"]:
        raise DataError(f"{data_dir} has no split '{args.split}'; it has {', '.join(manifest['splits'])}")
    tokens = shards.open_split(data_dir, args.split)
    # windows for a Transformer, streams (state carried, --batch-size of them) for an RNN
    loss = split_loss(run.model, tokens, block_size=run.cfg.model.block_size,
                      batch_size=args.batch_size, batches=args.batches, device=device,
                      split=args.split)
    split = manifest["splits"][args.split]
    figures = summarize(loss, tokens=split["tokens"], bytes_=split["bytes"])
    result = {"run": str(args.run), "checkpoint": run.checkpoint.name, "step": run.step,
              "data": str(data_dir), "split": args.split, **figures}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.run} @ step {run.step}, {data_dir} [{args.split}]: loss {loss:.4f}  "
              f"perplexity {figures['perplexity']:.2f}  bits/byte {figures['bits_per_byte']:.4f}")
    return 0


def generate_command(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1 or args.num_samples < 1:
        raise LmforgeError("--max-new-tokens and --num-samples must be at least 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise LmforgeError("need --temperature >= 0, 0 < --top-p <= 1 and --top-k >= 0")
    device = resolve_device(args.device)
    run = load_run(args.run, which=args.checkpoint, device=str(device))
    tok = run.tokenizer
    prompt_ids = tok.encode(args.prompt) if args.prompt else [tok.eot_id]
    prompt = torch.tensor([prompt_ids] * args.num_samples, dtype=torch.long, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed) if args.seed is not None else gen.seed()
    stream = generate_tokens(run.model, prompt, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                             generator=gen)
    if args.num_samples == 1:
        _stream_one(stream, prompt=args.prompt, tokenizer=tok)
        return 0
    rows: list[list[int]] = [[] for _ in range(args.num_samples)]
    for step in stream:
        for row, token in zip(rows, step.tolist(), strict=True):
            row.append(token)
    for i, row in enumerate(rows):
        ended = row[:row.index(tok.eot_id)] if tok.eot_id in row else row
        print(f"----- sample {i + 1} -----\n{args.prompt}{tok.decode(ended)}")
    return 0


def _stream_one(stream, *, prompt: str, tokenizer) -> None:
    """Print text as it is generated; a character cut between two tokens waits for the next."""
    out = sys.stdout
    out.write(prompt)
    ids: list[int] = []
    shown = 0
    for step in stream:
        token = int(step[0])
        if token == tokenizer.eot_id:
            break
        ids.append(token)
        text = tokenizer.decode(ids)
        if not text.endswith("\ufffd"):
            out.write(text[shown:])
            out.flush()
            shown = len(text)
    out.write(tokenizer.decode(ids)[shown:] + "\n")
    out.flush()
