"""`lmforge finetune classify|sft`: fine-tune a pretrained model (an lmforge run or a
Hugging Face model directory) to classify texts, measured on the examples' test split, or
to follow instructions (sft), on the one training loop."""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

from lmforge.cli.options import add_config_options
from lmforge.console import log
from lmforge.errors import LmforgeError

HELP = "fine-tune a pretrained model for a task: classify texts, or follow instructions (sft)"
USAGE = ("lmforge finetune classify|sft --init-from RUN_OR_DIR --data EXAMPLES [--labels SET] "
         "[--split modapte] [--SECTION.FIELD=VALUE ...]")
DESCRIPTION = ("Fine-tune the model of --init-from (an lmforge run or a Hugging Face model "
               "directory) with a classification head on labelled examples: JSONL, CSV or "
               "Parquet (text and label, or labels for several per text), or the "
               "Reuters-21578 distribution (--labels topics|places|people|orgs|exchanges, "
               "--split modapte); or instruction tuning (sft) on prompt/completion or chat "
               "JSONL, or Reuters-21578's headlines. Defaults: configs/finetune_classify.toml "
               "and finetune_sft.toml. The run is an ordinary lmforge run: `lmforge train "
               "--resume RUN` continues it.")
OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", choices=("classify", "tag", "sft"),
                   help="classify: a label (or several) per text; tag: a tag per word (POS, "
                        "NER); sft: instruction tuning, the loss on the completions (or "
                        "assistant turns) alone")
    p.add_argument("--init-from", required=True, metavar="RUN_OR_DIR", type=Path,
                   help="the pretrained model: an lmforge run (its best checkpoint) or a "
                        "Hugging Face model directory")
    p.add_argument("--data", required=True, metavar="EXAMPLES",
                   help="classify: labelled examples (JSONL, CSV, Parquet); tag: CoNLL or "
                        "CoNLL-U (.conllu), or python:PACKAGE (a standard-library package's "
                        "code tagged by tokenize); sft: JSONL of prompt and completion, or "
                        "messages; classify and sft: reuters21578.tar.gz (its topics, or its "
                        "headlines)")
    p.add_argument("--eval-data", default=None, metavar="EXAMPLES",
                   help="tag: the sentences to evaluate on (default: a part of --data)")
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


def _absolute(data: str | None) -> str | None:
    """A file or directory made absolute (the run keeps it in its config); python:PACKAGE
    as it is."""
    return data if data is None or data.startswith("python:") else str(Path(data).resolve())


def _dataset_path(init_from: Path, data: str) -> str:
    """Where the examples' text is prepared with the model's tokenizer: one dataset per
    pair of model and examples, reused by the runs that share them."""
    key = hashlib.sha256(f"{init_from.resolve()}\0{_absolute(data)}".encode()).hexdigest()[:10]
    name = Path(data.replace(":", "-")).name.split(".")[0]
    return f"data/finetune-{name}-{key}"


def run(args: argparse.Namespace) -> int:
    from lmforge.config import load_config
    from lmforge.plan import TrainRequest, planned_run
    from lmforge.tasks import setup
    from lmforge.train.session import train_run

    if args.task != "classify" and (args.labels or args.split):
        raise LmforgeError(f"--labels and --split are for classify, not {args.task}")
    if args.task != "tag" and args.eval_data:
        raise LmforgeError(f"--eval-data is for tag; {args.task} holds out its own part")
    recipe = f"finetune_{args.task}"
    given = {"task.labels": args.labels, "task.split": args.split,
             "task.eval_source": _absolute(args.eval_data)}
    overrides = {"run.init_from": str(args.init_from), "task.source": _absolute(args.data),
                 **{k: v for k, v in given.items() if v is not None}, **dict(args.overrides)}
    overrides.setdefault("data.path", _dataset_path(args.init_from, args.data))
    cfg = load_config(recipe, overrides)  # bad examples are found before any run exists
    if args.task == "classify":
        data = setup.classify_data(cfg)
        texts = [e.text for e in data.train + data.val]
    elif args.task == "tag":
        tagged = setup.tagged_data(cfg)
        texts = [" ".join(s.words) for s in tagged.train + tagged.test]
    else:
        train, val = setup.sft_examples(cfg)
        texts = [setup.example_text(e) for e in train + val]
    texts_file = _texts_file(texts)
    overrides["data.source"] = str(texts_file)
    try:
        with planned_run(TrainRequest(recipe, None, overrides, verb="finetune")) as plan:
            if args.task == "classify":
                from lmforge.runs.classifier import Labels

                if plan.is_main:
                    Labels(data.label_names, data.multi_label).write(plan.run)
                task: setup.ClassifyTask | setup.TagTask | setup.SftTask = (
                    setup.classify_task(plan.cfg, data))
            elif args.task == "tag":
                task = setup.TagTask.from_set(tagged)
            else:
                task = setup.SftTask(train, val)
            outcome = train_run(plan, wrap=task.wrap, objective=task.objective)
    finally:
        texts_file.unlink(missing_ok=True)
    if not (outcome.trained and plan.is_main):
        return outcome.exit_code
    if args.task == "classify":
        from lmforge.runs.classifier import measure_run

        print(measure_run(plan.run.path, data).text)
        log(f"test figures in {plan.run.path / 'test_metrics.json'}; label new texts with "
            f"`lmforge predict {plan.run}`")
    if plan.cfg.train.report:
        from lmforge.cli.train import write_run_report

        write_run_report(plan.run)
    return outcome.exit_code
