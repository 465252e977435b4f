"""`lmforge finetune classify`: fine-tune a pretrained model (an lmforge run or a Hugging
Face model directory) to classify texts, on the one training loop, and measure it on the
examples' test split."""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

from lmforge.cli.options import add_config_options
from lmforge.console import log

HELP = "fine-tune a pretrained model for a task: classify texts (one label or several)"
USAGE = ("lmforge finetune classify --init-from RUN_OR_DIR --data EXAMPLES [--labels SET] "
         "[--split modapte] [--SECTION.FIELD=VALUE ...]")
DESCRIPTION = ("Fine-tune the model of --init-from (an lmforge run or a Hugging Face model "
               "directory) with a classification head on labelled examples: JSONL, CSV or "
               "Parquet (text and label, or labels for several per text), or the "
               "Reuters-21578 distribution (--labels topics|places|people|orgs|exchanges, "
               "--split modapte). Defaults: configs/finetune_classify.toml. The run is an "
               "ordinary lmforge run: `lmforge train --resume RUN` continues it.")
OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", choices=("classify",), help="what to fine-tune the model for")
    p.add_argument("--init-from", required=True, metavar="RUN_OR_DIR", type=Path,
                   help="the pretrained model: an lmforge run (its best checkpoint) or a "
                        "Hugging Face model directory")
    p.add_argument("--data", required=True, metavar="EXAMPLES", type=Path,
                   help="labelled examples: JSONL, CSV, Parquet or reuters21578.tar.gz")
    p.add_argument("--labels", default=None, help="Reuters-21578: topics (default), places, "
                                                  "people, orgs or exchanges")
    p.add_argument("--split", default=None, help="Reuters-21578: modapte")
    add_config_options(p)


def _texts_file(texts: list[str]) -> Path:
    """The training texts as JSONL, for `prepare` to tokenize with the model's tokenizer."""
    handle = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8")
    with handle:
        for text in texts:
            handle.write(json.dumps({"text": text}) + "\n")
    return Path(handle.name)


def _dataset_path(init_from: Path, data: Path) -> str:
    """Where the examples' text is prepared with the model's tokenizer: one dataset per
    pair of model and examples, reused by the runs that share them."""
    key = hashlib.sha256(f"{init_from.resolve()}\0{data.resolve()}".encode()).hexdigest()[:10]
    return f"data/finetune-{data.name.split('.')[0]}-{key}"


def run(args: argparse.Namespace) -> int:
    from lmforge.config import load_config
    from lmforge.plan import TrainRequest, planned_run
    from lmforge.runs.classifier import Labels, measure_run
    from lmforge.tasks.setup import classify_data, classify_task
    from lmforge.train.session import train_run

    overrides = {"run.init_from": str(args.init_from), "task.source": str(args.data.resolve()),
                 **{k: v for k, v in (("task.labels", args.labels), ("task.split", args.split))
                    if v is not None},
                 **dict(args.overrides)}
    overrides.setdefault("data.path", _dataset_path(args.init_from, args.data))
    data = classify_data(load_config("finetune_classify", overrides))  # bad examples: before any run
    texts = _texts_file([e.text for e in data.train + data.val])
    overrides["data.source"] = str(texts)
    try:
        with planned_run(TrainRequest("finetune_classify", None, overrides)) as plan:
            if plan.is_main:
                Labels(data.label_names, data.multi_label).write(plan.run)
            task = classify_task(plan.cfg, data)
            outcome = train_run(plan, wrap=task.wrap, objective=task.objective)
    finally:
        texts.unlink(missing_ok=True)
    if not (outcome.trained and plan.is_main):
        return outcome.exit_code
    report = measure_run(plan.run.path, data)
    print(report.text)
    if plan.cfg.train.report:
        from lmforge.cli.train import write_run_report

        write_run_report(plan.run)
    log(f"test figures in {plan.run.path / 'test_metrics.json'}; label new texts with "
        f"`lmforge predict {plan.run}`")
    return outcome.exit_code

