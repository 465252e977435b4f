"""The data pipeline: sources → clean → deduplicate → split → tokenizer → shards.

The dataset is built in a hidden sibling directory and renamed into place when complete,
so a crash never leaves half a dataset behind, and preparing again with the same inputs
and settings reuses the result instead of redoing it. See stages.py for the two passes.
One prepare at a time writes a given --out (locks.DirectoryLock); it clears the build
directories killed runs left, replaces only a directory that holds nothing but a dataset
lmforge made (shards.foreign_files), and a full disk is one line that leaves --out as it was.

What the options need that may be missing (jieba, NLTK's tagger) is checked before any
source is read. Each pass shows its progress: a bar on a terminal, elsewhere a line every
ten seconds (console.Progress). Reading counts the sources' bytes on disk, the unit its
total is known in before anything is read; tokenizing counts the cleaned text's bytes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.config import CleanConfig, Config, DataConfig, TokenizerConfig, validate_data
from lmforge.console import Progress
from lmforge.data import chinese, shards, stages
from lmforge.data.clean import CleanStats
from lmforge.data.document import TRAIN, VAL, SourceOptions
from lmforge.data.parallel import WorkerPool, default_workers
from lmforge.data.pos import Taggers, load_taggers, pos_statistics
from lmforge.data.report import (
    build_report,
    file_checksums,
    save_report,
    summary_lines,
    top_tokens,
    versions,
)
from lmforge.data.shards import ShardWriter, dtype_for
from lmforge.data.sources import SourceStats, fingerprint, is_remote, iter_units, source_files
from lmforge.data.tokenizer import (
    Tokenizer,
    find_tokenizer,
    given_digest,
    is_model_dir,
    load_tokenizer,
    tokenizer_at,
    train_tokenizer,
)
from lmforge.errors import DataError
from lmforge.files import DiskFull, writing
from lmforge.locks import DirectoryLock

TOKENIZER_DIR = "tokenizer"
# HF tokenizers (Rust) reports a failed write as a plain Exception that ends so.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)\s*$")
# Below this much input, worker processes cost more to start than they save.
_INLINE_BYTES = 4 << 20


@dataclasses.dataclass
class _Run:
    """Everything one prepare call needs, passed between its phases."""

    sources: list[str]
    settings: dict[str, Any]
    options: SourceOptions
    clean: CleanConfig
    pool: WorkerPool  # both passes share its processes
    log: Callable[[str], None]
    show_progress: bool
    progress_every_s: float
    tokenizer_from: Path | None = None  # a tokenizer directory to use instead of training one
    taggers: Taggers | None = None  # with clean.pos_sample
    timing: dict[str, float] = dataclasses.field(default_factory=dict)

    def progress(self, desc: str, total: int | None) -> Progress:
        return Progress(desc, total=total, enabled=self.show_progress, unit="B",
                        unit_scale=True, every_s=self.progress_every_s)


def _read_and_clean(run: _Run, tmp: Path) -> tuple[stages.Spool, SourceStats, CleanStats]:
    t0 = time.perf_counter()
    run.pool.start()  # the workers import while the sources are opened and read
    src_stats, clean_stats = SourceStats(), CleanStats()
    total = None  # a remote source's size is known only once it is read
    if not any(map(is_remote, run.sources)):
        total = sum(p.stat().st_size for p in source_files(run.sources, run.options))
    spool = stages.Spool(tmp / "spool.jsonl", run.settings["val_fraction"])
    with run.progress("read and clean", total) as bar:
        stages.spool_documents(iter_units(run.sources, run.options, stats=src_stats), spool,
                               specs=run.sources, cfg=run.clean, pool=run.pool,
                               source_stats=src_stats, clean_stats=clean_stats,
                               progress=bar.advance)
    run.timing["read_clean"] = time.perf_counter() - t0
    where = ", ".join(run.sources)
    run.log(f"read {spool.documents:,} document{'s' * (spool.documents != 1)} "
            f"({spool.bytes / 1e6:,.1f} MB after cleaning) from {where}")
    if not spool.has_text:
        raise DataError(f"the corpus at {where} has no text after cleaning; give files that "
                        "contain text or loosen the --clean.* filters")
    return spool, src_stats, clean_stats


def _tokenizer(run: _Run, tmp: Path, spool: stages.Spool) -> Tokenizer:
    t0 = time.perf_counter()
    s = run.settings
    if run.tokenizer_from is not None:
        tok = load_tokenizer(tmp / TOKENIZER_DIR)
        run.timing["tokenizer"] = 0.0
        run.log(f"{tok.kind} tokenizer of {run.tokenizer_from}: vocabulary {tok.vocab_size:,}")
        return tok
    if s["tokenizer"] != "byte":  # the byte tokenizer learns nothing; BPE can take minutes
        vocab = f" (vocabulary {s['vocab_size']:,})" if s["tokenizer"] == "bpe" else ""
        run.log(f"training a {s['tokenizer']} tokenizer{vocab} on {spool.bytes / 1e6:,.1f} MB ...")
    tok = train_tokenizer(s["tokenizer"], stages.spooled_texts(spool), vocab_size=s["vocab_size"],
                          segmented=run.clean.segment_chinese)
    _save_tokenizer(tok, tmp / TOKENIZER_DIR)
    run.timing["tokenizer"] = time.perf_counter() - t0
    run.log(f"trained {tok.kind} tokenizer: vocabulary {tok.vocab_size:,} in "
            f"{run.timing['tokenizer']:.1f}s")
    return tok


def _save_tokenizer(tok: Tokenizer, directory: Path) -> None:
    with writing("the tokenizer"):
        try:
            tok.save(directory)
        except Exception as err:
            found = _RUST_OS_ERROR.search(str(err)) if type(err) is Exception else None
            if found is None:
                raise
            raise OSError(int(found[1]), os.strerror(int(found[1]))) from None


def _copy_tokenizer(source: Path, directory: Path) -> None:
    """The given tokenizer's files, byte for byte: the same ids, the same digest. Of a
    Hugging Face model directory, only its tokenizer's files (what HfTokenizer.save copies),
    never the weights beside them."""
    if is_model_dir(source):
        _save_tokenizer(tokenizer_at(source), directory)
        return
    with writing("the tokenizer"):
        directory.mkdir()
        for path in sorted(source.iterdir()):
            if path.is_file():
                shutil.copyfile(path, directory / path.name)


def _tokenize(run: _Run, tmp: Path, spool: stages.Spool) -> tuple[Any, dict[str, Any], stages.SplitCounts]:
    s = run.settings
    tok = _tokenizer(run, tmp, spool)
    t0 = time.perf_counter()
    dtype = dtype_for(tok.vocab_size)
    with ShardWriter(tmp, TRAIN, dtype, shard_tokens=s["shard_tokens"]) as train, \
            ShardWriter(tmp, VAL, dtype, shard_tokens=s["shard_tokens"]) as val, \
            run.progress("tokenize", spool.bytes) as bar:
        writers = {TRAIN: train, VAL: val}
        counts = stages.write_shards(spool, tokenizer=tok, tokenizer_dir=tmp / TOKENIZER_DIR,
                                     writers=writers, pool=run.pool,
                                     val_fraction=s["val_fraction"], progress=bar.advance)
        splits = {name: {**w.close(), "bytes": counts.bytes[name]} for name, w in writers.items()}
    run.timing["tokenize"] = time.perf_counter() - t0
    for name, entry in splits.items():
        if entry["tokens"] == 0:
            raise DataError(f"the {name} split is empty (0 tokens) at val_fraction="
                            f"{s['val_fraction']}; add more data or "
                            f"{'raise' if name == VAL else 'lower'} val_fraction")
    tokens = sum(e["tokens"] for e in splits.values())
    how = "position" if spool.by_position else "the source's split" if spool.by_source_split else "document"
    run.log(f"tokens: train {splits[TRAIN]['tokens']:,}, val {splits[VAL]['tokens']:,} (split by "
            f"{how}); {spool.bytes / tokens:.2f} bytes per token; "
            f"{spool.bytes / 1e6 / max(run.timing['tokenize'], 1e-9):.1f} MB/s")
    return tok, splits, counts


def _build(run: _Run, tmp: Path, fp: str) -> dict[str, Any]:
    if run.tokenizer_from is not None:
        _copy_tokenizer(run.tokenizer_from, tmp / TOKENIZER_DIR)
    spool, src_stats, clean_stats = _read_and_clean(run, tmp)
    tok, splits, counts = _tokenize(run, tmp, spool)
    pos = None
    if run.taggers is not None:
        pos = pos_statistics(stages.spooled_texts(spool), sample=run.clean.pos_sample,
                             taggers=run.taggers)
    (tmp / "spool.jsonl").unlink()
    report = build_report(sources=src_stats, clean=clean_stats.as_dict(), splits=splits,
                          tokens=top_tokens(counts.token_counts, tok), timing=run.timing, pos=pos)
    with writing(shards.REPORT):
        save_report(tmp, report)
    for line in summary_lines(report):
        run.log(line)
    # What else the directory holds, so that preparing again can prove it wrote all of it.
    contents = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    manifest = {
        shards.MARKER: True,
        "format": shards.FORMAT,
        "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
                      "dir": TOKENIZER_DIR},
        "dtype": shards.dtype_name(dtype_for(tok.vocab_size)),
        "splits": splits,
        "split_by": "position" if spool.by_position else "document",
        "settings": run.settings,
        "fingerprint": fp,
        "sources": run.sources,
        "provenance": {"files": file_checksums(source_files(run.sources, run.options)),
                       "versions": versions()},
        shards.CONTENTS: contents,
    }
    shards.write_manifest(tmp, manifest)
    return manifest


def _describe(settings: Any) -> str:
    try:
        return (f"{', '.join(settings['sources'])}, {settings['tokenizer']} tokenizer, "
                f"vocab_size {settings['vocab_size']}, val_fraction {settings['val_fraction']}")
    except (TypeError, KeyError):
        return "made with other settings"


def _existing(out: Path, settings: dict[str, Any], fp: str,
              log: Callable[[str], None]) -> dict[str, Any] | None:
    """The dataset at `out` if it can be reused; None if `out` may be (re)written: absent,
    empty, or a dataset lmforge made and nothing else (_check_ours); else raises."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise DataError(f"{out} is a file, not a dataset directory; choose another --out or "
                        "delete it")
    if not any(out.iterdir()):
        return None
    try:
        manifest = shards.read_manifest(out)
    except DataError as err:  # another version's, damaged, or no dataset at all
        _check_ours(out)
        log(f"{err.args[0].split('; ')[0]}; preparing it again")
        return None
    if manifest.get("settings") != settings:
        raise DataError(f"{out} already holds a different dataset "
                        f"({_describe(manifest.get('settings'))}); choose another --out or "
                        "delete it")
    why = _why_again(out, manifest, fp)
    if why is None:
        return manifest  # files the user added beside it are no reason to refuse: kept
    _check_ours(out)
    log(f"{why}; preparing it again")
    return None


def _why_again(out: Path, manifest: dict[str, Any], fp: str) -> str | None:
    """Why the dataset at `out`, of the same settings, must be prepared again; None if not."""
    if manifest.get("fingerprint") != fp:
        return f"the inputs of {out} changed"
    if _keeps_segmentation(out, manifest):
        return (f"{out} was prepared with a tokenizer that keeps the spaces segment_chinese "
                "inserts")
    try:
        shards.verify(out)
    except DataError as err:
        return str(err.args[0].split("; ")[0])
    return None


def _check_ours(out: Path) -> None:
    """Raise unless `out` holds nothing but what lmforge wrote: only that may be replaced."""
    foreign = shards.foreign_files(out)
    if foreign:
        raise stages.not_ours(out, foreign)


def _keeps_segmentation(out: Path, manifest: dict[str, Any]) -> bool:
    """A dataset prepared with segment_chinese before tokenizers removed the spaces it inserts
    (and byte counts left them out): the same settings, but not the same dataset."""
    if not manifest["settings"].get("clean", {}).get("segment_chinese"):
        return False
    try:
        return not load_tokenizer(out / manifest["tokenizer"]["dir"]).segmented
    except (DataError, KeyError, TypeError):
        return True  # no readable tokenizer: preparing again makes one


def _settings(sources: list[str], *, data: DataConfig, tokenizer: TokenizerConfig,
              clean: CleanConfig, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """What makes a dataset what it is, as its manifest records it: preparing again with the
    same settings (and unchanged inputs) reuses the dataset instead of redoing it. `given`:
    what stands for a given tokenizer (_given_tokenizer), in place of `tokenizer`'s."""
    if not sources:
        raise DataError("no data sources given; give a file, a directory, a glob or 'stdlib'")
    validate_data(data, tokenizer, clean)
    # Only bpe learns a vocabulary of a chosen size; char and byte ignore vocab_size, so it
    # must not make an otherwise identical dataset look different. The worker count is not
    # here either: it never changes the result.
    settings = {"sources": list(sources), "tokenizer": tokenizer.kind,
                "vocab_size": tokenizer.vocab_size if tokenizer.kind == "bpe" else 0,
                "val_fraction": data.val_fraction, "text_field": data.text_field,
                "split": data.split, "clean": dataclasses.asdict(clean),
                "shard_tokens": data.shard_tokens}
    # A given tokenizer is known by its files (tokenizer_sha256). The key is there only then,
    # so that datasets prepared before it existed still compare equal.
    settings.update(given or {})
    return settings


def ensure_dataset(cfg: Config, *, log: Callable[[str], None]) -> None:
    """Prepare data.source into data.path unless a prepared dataset is already there (what
    `lmforge train` does for a recipe that names its corpus)."""
    path = Path(cfg.data.path)
    if (path / shards.MANIFEST).is_file():
        return
    if not cfg.data.source:
        raise DataError(f"no prepared dataset at {path}; run `lmforge prepare --data SOURCE "
                        f"--out {path}` or set --data.source")
    source_files([cfg.data.source])  # a missing file is an error before anything is said
    given = _init_from_tokenizer(cfg)
    how = f" with the tokenizer of {given}" if given is not None else ""
    log(f"preparing {cfg.data.source} into {path}{how} (done once, reused afterwards)")
    prepare([cfg.data.source], path, data=cfg.data, tokenizer=cfg.tokenizer, clean=cfg.clean,
            tokenizer_from=given, log=log, progress=cfg.train.progress)


def _init_from_tokenizer(cfg: Config) -> Path | None:
    """The tokenizer of the model a run starts from (run.init_from), which its new dataset is
    prepared with so that the imported embeddings keep meaning the tokens they were trained
    on; None when that directory has none (the recipe's tokenizer is trained instead)."""
    if not cfg.run.init_from:
        return None
    try:
        return find_tokenizer(Path(cfg.run.init_from))
    except DataError:
        return None


def _given_tokenizer(path: Path, clean: CleanConfig) -> tuple[Path, dict[str, Any]]:
    """The tokenizer directory `path` names (a Hugging Face model directory included) and the
    settings that stand for it: its kind, vocabulary (none for char and byte, which the
    settings never had) and digest."""
    directory = find_tokenizer(Path(path))
    given = tokenizer_at(directory)
    if given.segmented != clean.segment_chinese:
        how = "with" if given.segmented else "without"
        raise DataError(f"the tokenizer at {directory} was trained on text {how} spaces between "
                        f"Chinese words (clean.segment_chinese); prepare with "
                        f"--clean.segment_chinese={str(given.segmented).lower()} so that the "
                        "text is in the form its tokens fit")
    vocab = given.vocab_size if given.kind in ("bpe", "hf") else 0
    return directory, {"tokenizer": given.kind, "vocab_size": vocab,
                       "tokenizer_sha256": given_digest(directory, given)}


def _worker_count(data: DataConfig, sources: list[str], options: SourceOptions) -> int:
    if data.workers:
        return data.workers
    if any(map(is_remote, sources)):  # a remote source's size is unknown: assume it is large
        return default_workers()
    size = sum(p.stat().st_size for p in source_files(list(sources), options))
    return 0 if size < _INLINE_BYTES else default_workers()


def _needed(clean: CleanConfig) -> Taggers | None:
    """What the cleaning options need and may lack, checked before anything is read: jieba for
    segment_chinese; for pos_sample, the taggers, loaded (and returned) once."""
    if clean.segment_chinese:
        chinese.jieba()
    return load_taggers(clean) if clean.pos_sample else None


def prepare(sources: list[str], out: Path, *, data: DataConfig | None = None,
            tokenizer: TokenizerConfig | None = None, clean: CleanConfig | None = None,
            tokenizer_from: Path | None = None, log: Callable[[str], None] = print,
            progress: bool = True, progress_every_s: float = 10.0) -> dict[str, Any]:
    """Prepare `sources` into the dataset directory `out` and return its manifest.

    `data` gives the split, reading and sharding settings (data.path and data.source are
    the caller's: `out` and `sources`), `tokenizer` the tokenizer to train, `clean` the
    cleaning; each defaults to its config's defaults. data.workers=0 uses one worker
    process per CPU core, or none for inputs too small to gain. tokenizer_from (a tokenizer
    directory, a prepared dataset or a run) gives the tokenizer instead of training one, as
    evaluating or fine-tuning a model on new text needs. progress=False says nothing while
    it works; where stderr is no terminal, progress is a line every `progress_every_s`."""
    t0 = time.perf_counter()
    out = Path(out)
    if out.is_symlink() or out.name in ("", ".."):
        out = Path(os.path.realpath(out))  # the directory it names (a link stays a link)
    data, tokenizer, clean = data or DataConfig(), tokenizer or TokenizerConfig(), clean or CleanConfig()
    options = SourceOptions(text_field=data.text_field, split=data.split)
    given = None
    if tokenizer_from is not None:
        tokenizer_from, given = _given_tokenizer(tokenizer_from, clean)
    settings = _settings(sources, data=data, tokenizer=tokenizer, clean=clean, given=given)
    fp = fingerprint(settings["sources"], options)
    # Held until the dataset is in place: what _existing finds stays so, and no other
    # prepare builds a dataset for `out` meanwhile.
    with DirectoryLock(out, what="prepare"):
        stages.clear_leftovers(out, log)
        reused = _existing(out, settings, fp, log)
        if reused is not None:
            log(f"reusing prepared dataset at {out}")
            return reused
        taggers = _needed(clean)
        run = _Run(sources=list(sources), settings=settings, options=options, clean=clean,
                   pool=WorkerPool(_worker_count(data, sources, options)), log=log,
                   show_progress=progress, progress_every_s=progress_every_s,
                   tokenizer_from=tokenizer_from, taggers=taggers)
        manifest = _build_in_place(run, out, fp)
    log(f"prepared {out} in {time.perf_counter() - t0:.1f}s")
    return manifest


def _build_in_place(run: _Run, out: Path, fp: str) -> dict[str, Any]:
    """Build the dataset beside `out` and rename it into place; on any failure the build
    directory goes and `out` is as it was."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        with writing(f"the build directory {tmp.name}"):
            tmp.mkdir()
        with run.pool:  # its processes end before the dataset moves
            manifest = _build(run, tmp, fp)
        stages.move_into_place(tmp, out)
    except DiskFull as err:
        raise DataError(f"{err}; free space and run prepare again; nothing was changed at "
                        f"{out}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
