"""Labelled examples for text classification, from JSONL, CSV, Parquet or Reuters-21578.

Files hold one record per example: a text field (`text`) and either `label`, one string
(single-label), or `labels`, a list of strings (multi-label; in CSV one cell with the
labels separated by `|`, and a `|` in any label cell makes a CSV multi-label). The field
names are options; labels must be strings (write "3", not 3). A record may carry an `id` and a
`split` ("train" or "test"); records without a split are split by a hash of their id (or,
without one, of their text), so the same example lands on the same side on every run and
duplicated texts never straddle train and test.

Reuters-21578 (`reuters21578.tar.gz`, a directory of `reut2-*.sgm`, or one such file) is
read with lmforge.data.reuters on the ModApte split: the stories with TOPICS="YES", Lewis's
TRAIN part for training (9,603) and his TEST part for testing (3,299). A label set is one
of the story's code lists (topics, places, people, orgs, exchanges), and only the
categories with at least one training and one test story are kept: 90 topics, as in Yang &
Liu (1999) and Joachims (1998).

Stories left without a label by that filter (1,833 training and 280 test stories for
topics) stay in both parts as negatives for every class. The literature is split on this:
Joachims (1998) and Dumais et al. (1998) count all 9,603 / 3,299 ModApte stories, Yang &
Liu (1999) drop the unlabelled ones and count 7,769 / 3,019. We follow the first: a
classifier in use meets stories that belong to no category and must then predict none, and
dropping them removes exactly the stories where false positives happen. (Counted from the
SGML, 7,770 training stories carry one of the 90 topics, one more than the 7,769 quoted
for the derived ApteMod collection; the test side matches at 3,019.)
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data import reuters
from lmforge.data.formats import SourceStats, inner_name, is_reuters_sgm, open_stream
from lmforge.data.stages import hash_fraction
from lmforge.errors import DataError

LABEL_SETS = ("topics", "places", "people", "orgs", "exchanges")
FILE_KINDS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
TRAIN, TEST = "train", "test"
MULTI_FIELD = "labels"  # the multi-label field beside the default single-label `label`
CSV_SEPARATOR = "|"


@dataclass(frozen=True)
class Example:
    text: str
    labels: tuple[str, ...]  # sorted; exactly one for single-label sets, any number otherwise
    id: str


@dataclass(frozen=True)
class ExampleSet:
    train: list[Example]
    test: list[Example]
    label_names: list[str]  # sorted; a class's index is its place here
    multi_label: bool
    source: str


def read_examples(source: str | Path, *, labels: str = "topics", split: str = "",
                  text_field: str = "text", label_field: str = "label",
                  test_fraction: float = 0.1, seed: int = 0) -> ExampleSet:
    """The labelled examples at `source`, split into train and test.

    `labels` and `split` apply to Reuters-21578 (whose only split is ModApte, the default);
    `text_field`, `label_field`, `test_fraction` and `seed` to files."""
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path} does not exist; pass a JSONL, CSV or Parquet file of "
                        "labelled examples, or reuters21578.tar.gz")
    if is_reuters(path):
        return _reuters_set(path, labels, split)
    if split:
        raise DataError(f"split {split!r} is for Reuters-21578 only; a file gives its own "
                        "split in a 'split' field (train/test) or is split by hash")
    _check_fraction(test_fraction, "test_fraction")
    records = _records(path)
    return _file_set(path, records, text_field, label_field, test_fraction, seed)


def val_part(train: list[Example], fraction: float,
             seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(train, val): a deterministic part of the training examples held out, e.g. to tune
    per-class thresholds on; both parts are non-empty when there are two examples or more."""
    _check_fraction(fraction, "the validation fraction")
    keys = [f"val\0{seed}\0{e.id}" for e in train]
    kept, held = _hash_split(train, keys, fraction)
    return kept, held


def _check_fraction(fraction: float, name: str) -> None:
    if not 0.0 < fraction < 1.0:
        raise DataError(f"{name} is {fraction}; it must lie strictly between 0 and 1, "
                        "e.g. 0.1")


def _hash_split(examples: list[Example], keys: list[str],
                fraction: float) -> tuple[list[Example], list[Example]]:
    """(rest, part): the examples whose key hashes below `fraction` form the part. With few
    examples the hash can leave a side empty; then the nearest example crosses over."""
    places = [hash_fraction(key) for key in keys]
    rest = [e for e, h in zip(examples, places, strict=True) if h >= fraction]
    part = [e for e, h in zip(examples, places, strict=True) if h < fraction]
    if len(examples) >= 2 and not part:
        nearest = min(range(len(examples)), key=places.__getitem__)
        part, rest = [examples[nearest]], [e for i, e in enumerate(examples) if i != nearest]
    elif len(examples) >= 2 and not rest:
        nearest = max(range(len(examples)), key=places.__getitem__)
        rest, part = [examples[nearest]], [e for i, e in enumerate(examples) if i != nearest]
    return rest, part


# ---------------------------------------------------------------- files

def _kind(path: Path) -> str:
    kind = FILE_KINDS.get(Path(inner_name(path.name)).suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown kind of file; pass a .jsonl, .csv or .parquet file "
                        "(or reuters21578.tar.gz)")
    return kind


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) of each record in the file: where names it in errors."""
    kind = _kind(path)
    if kind == "parquet":
        return _parquet_records(path)
    with open_stream(path) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        try:
            found = list(_csv_records(path, text) if kind == "csv" else _jsonl_records(path, text))
        except UnicodeDecodeError as err:
            raise DataError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); "
                            "save it as UTF-8") from None
    return found


def _jsonl_records(path: Path, lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number} is not valid JSON ({err.msg}); write one "
                            "JSON object per line") from None
        if not isinstance(record, dict):
            raise DataError(f"{path} line {number} is a JSON {type(record).__name__}, not an "
                            "object; write one {\"text\": ..., \"label\": ...} per line")
        yield f"{path} line {number}", record


def _csv_records(path: Path, text: io.TextIOWrapper) -> Iterator[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(text)
    try:
        for record in reader:
            yield f"{path} row {reader.line_num}", {k: v for k, v in record.items() if k}
    except csv.Error as err:
        raise DataError(f"{path} row {reader.line_num} is not valid CSV ({err}); "
                        "quote fields that hold commas or newlines") from None


def _parquet_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path} is not a readable Parquet file "
                        f"({str(err).splitlines()[0]}); rewrite it") from None
    return [(f"{path} row {i}", row) for i, row in enumerate(rows, 1)]


@dataclass(frozen=True)
class _Parsed:
    example: Example
    key: str  # what the hash split hashes: the record's id, else its text
    split: str | None  # the record's own split, if it gives one
    multi: bool  # whether the record's labels came as a list


def _file_set(path: Path, records: list[tuple[str, dict[str, Any]]], text_field: str,
              label_field: str, fraction: float, seed: int) -> ExampleSet:
    csv_file = _kind(path) == "csv"
    parsed = [_parse(where, record, n, path, text_field, label_field, csv_file)
              for n, (where, record) in enumerate(records, 1)]
    if not parsed:
        raise DataError(f"{path} holds no examples; write one record per example with "
                        f"fields {text_field!r} and {label_field!r}")
    multi = any(p.multi for p in parsed)
    given = [p for p in parsed if p.split is not None]
    hashed = [p for p in parsed if p.split is None]
    rest, part = _hash_split([p.example for p in hashed],
                             [f"{seed}\0{p.key}" for p in hashed], fraction)
    train = [p.example for p in given if p.split == TRAIN] + rest
    test = [p.example for p in given if p.split == TEST] + part
    return _checked(ExampleSet(train=train, test=test, multi_label=multi, source=str(path),
                               label_names=sorted({x for p in parsed for x in p.example.labels})))


def _checked(data: ExampleSet) -> ExampleSet:
    where = data.source
    if not data.label_names:
        raise DataError(f"{where} has no labels: every example's label list is empty; "
                        "label at least some examples")
    if not data.train or not data.test:
        side = "training" if not data.train else "test"
        raise DataError(f"{where} gives no {side} examples ({len(data.train)} train, "
                        f"{len(data.test)} test); add examples or fix their 'split' field")
    if not data.multi_label and len(data.label_names) < 2:
        raise DataError(f"{where} has one class only ({data.label_names[0]!r}); a "
                        "single-label classifier needs examples of two classes or more")
    return data


def _parse(where: str, record: dict[str, Any], number: int, path: Path, text_field: str,
           label_field: str, csv_file: bool) -> _Parsed:
    text = record.get(text_field)
    if text_field not in record:
        raise DataError(f"{where} has no field {text_field!r} (fields: "
                        f"{', '.join(sorted(record)) or 'none'}); name the text field with "
                        "text_field")
    if not isinstance(text, str):
        raise DataError(f"{where}: {text_field!r} is a {type(text).__name__}, not a string; "
                        "write the text as a string")
    field = _label_field(where, record, label_field)
    labels, multi = _labels(where, record[field], multi=field == MULTI_FIELD, csv_file=csv_file)
    given_id = record.get("id")
    example_id = str(given_id) if given_id not in (None, "") else f"{path.name}:{number}"
    key = str(given_id) if given_id not in (None, "") else text
    return _Parsed(Example(text=text, labels=labels, id=example_id), key,
                   _split_of(where, record), multi)


def _label_field(where: str, record: dict[str, Any], label_field: str) -> str:
    if label_field in record:
        return label_field
    if label_field == "label" and MULTI_FIELD in record:
        return MULTI_FIELD
    fields = ", ".join(sorted(record)) or "none"
    also = f" or {MULTI_FIELD!r}" if label_field == "label" else ""
    raise DataError(f"{where} has no field {label_field!r}{also} (fields: {fields}); name "
                    "the label field with label_field")


def _labels(where: str, value: Any, *, multi: bool,
            csv_file: bool) -> tuple[tuple[str, ...], bool]:
    """The record's labels, sorted, and whether they came as a list (a multi-label set)."""
    if csv_file and isinstance(value, str) and (multi or CSV_SEPARATOR in value):
        pieces = [p.strip() for p in value.split(CSV_SEPARATOR)]
        return tuple(sorted({p for p in pieces if p})), True
    if isinstance(value, list | tuple):
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise DataError(f"{where}: the label {item!r} is not a non-empty string; "
                                "write labels as strings, e.g. [\"sports\"]")
        return tuple(sorted({item.strip() for item in value})), True
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: the label {value!r} is not a non-empty string; write "
                        "labels as strings, e.g. \"sports\" rather than 3")
    return (value.strip(),), multi


def _split_of(where: str, record: dict[str, Any]) -> str | None:
    split = record.get("split")
    if split in (None, ""):
        return None
    if split not in (TRAIN, TEST):
        raise DataError(f"{where}: split {split!r} is neither 'train' nor 'test'; use one "
                        "of those, or drop the field to split by hash")
    return str(split)


# ---------------------------------------------------------------- Reuters-21578

def is_reuters(path: Path) -> bool:
    name = inner_name(path.name).lower()
    return path.is_dir() or is_reuters_sgm(path.name) or name.endswith(".tar")


def _reuters_files(path: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of each reut2-*.sgm file at `path`, in name order."""
    if path.is_dir():
        found = [(p.name, _read(p)) for p in sorted(path.iterdir()) if is_reuters_sgm(p.name)]
    elif is_reuters_sgm(path.name):
        found = [(path.name, _read(path))]
    else:
        with open_stream(path) as stream:
            found = reuters.members(stream, str(path))
    if not found:
        raise DataError(f"{path} holds no reut2-*.sgm files; pass reuters21578.tar.gz or "
                        "the directory it unpacks to")
    return found


def _read(path: Path) -> bytes:
    with open_stream(path) as stream:
        return stream.read()


def _reuters_set(path: Path, labels: str, split: str) -> ExampleSet:
    if labels not in LABEL_SETS:
        raise DataError(f"unknown Reuters label set {labels!r}; choose one of "
                        f"{', '.join(LABEL_SETS)}")
    reuters.check_split(split)
    stats = SourceStats()
    documents = [doc for name, data in _reuters_files(path)
                 for doc in reuters.parse(data, source=name, split="modapte", stats=stats)]
    parts = {TRAIN: [d for d in documents if d.meta["split"] == TRAIN],
             TEST: [d for d in documents if d.meta["split"] != TRAIN]}
    counts = {side: Counter(code for d in docs for code in set(d.meta[labels]))
              for side, docs in parts.items()}
    # The literature's rule: a category must have a training and a test story.
    kept = sorted(set(counts[TRAIN]) & set(counts[TEST]))
    keep = set(kept)
    train, test = ([Example(text=d.text, labels=tuple(sorted(keep.intersection(d.meta[labels]))),
                            id=d.id) for d in parts[side]] for side in (TRAIN, TEST))
    if not train or not test:
        raise DataError(f"{path} holds no ModApte {'training' if not train else 'test'} "
                        "stories; pass the full reuters21578.tar.gz")
    return _checked(ExampleSet(train=train, test=test, label_names=kept, multi_label=True,
                               source=str(path)))
