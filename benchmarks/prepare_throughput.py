"""Throughput of `lmforge prepare` against the raw tokenizer, and its memory, on Reuters and
on a large generated corpus.

Side by side in one run, on each of two corpora:
  - raw: HF `tokenizers` `encode_batch` over the same cleaned text, in memory, all cores
    (on the generated corpus, over its first 200 MB: holding all of a large corpus in
    memory is what the pipeline avoids, and the rate is the same on a sample);
  - the pipeline (read → clean → deduplicate → tokenize → write shards) with 1 and with 2
    worker processes, as the CLI runs it (a real subprocess), and its peak resident memory.
The corpora: Reuters-21578 (../shared/data/reuters21578.tar.gz, 17 MB of text), and
--size-gb (default 1 GB) of unique JSONL documents generated from the words of Python's
standard library, where memory stays bounded by batch size and worker count.

Pipeline MB/s is the text read (UTF-8 bytes of the documents, before cleaning) over the
read/clean and tokenize/write stages (from the dataset's report.json; worker start-up is
inside them); training the tokenizer is reported apart, since the raw figure has no such
step. Raw MB/s is the cleaned text over encode_batch's time (best of two), with the
tokenizer set as lmforge uses it: `encode_special_tokens=True`, so that a literal
"<|endoftext|>" in a document is text there as in the shards (without it raw would encode
other tokens than the pipeline writes; the difference in speed is within noise).

What bounds the ratio: the pipeline encodes the same text as raw does, with the same
library on the same cores, and also parses and cleans it first, so on a machine with
nothing else running ratio <= encode / (encode + parse + clean) in CPU seconds, less any
fixed cost. On Reuters (measured single-threaded: encode 3.6-4.0 s, SGML parse 0.31 s,
cleaning 0.14 s, duplicate keys 0.16 s, spool lines and reading them back 0.2 s, token
arrays 0.15 s) the fixed costs weigh: spawning the workers (0.18 s) and reading the archive
before the first file can be handed out (0.14 s, longer while the workers import) are a
tenth of a 3 s job. On a large corpus they vanish, which is why the RESULT line gives the
generated corpus's figures, and Reuters's beside them.

Each run's figures say what other processes took of the cores meanwhile (CPU seconds from
/proc/stat, less the run's own, workers included): on two cores one busy process elsewhere
cuts tokenize+write from 5.4 to 3.5 MB/s with 2 workers and slows BPE training 1.9x
(0.1 GB corpus), so figures taken beside it say nothing about the pipeline.

    python benchmarks/prepare_throughput.py [--reuters PATH] [--size-gb 1.0]   (0: Reuters only)

Ends with: RESULT pipeline_mb_s=… raw_mb_s=… ratio=… two_worker_speedup=… peak_rss_mb=…
reuters_pipeline_mb_s=… reuters_raw_mb_s=… reuters_ratio=… reuters_two_worker_speedup=…
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REUTERS = ROOT.parent / "shared" / "data" / "reuters21578.tar.gz"
RAW_SAMPLE_MB = 200


def busy_cpu_s() -> float | None:
    """CPU seconds every process on this machine has run since boot (Linux: /proc/stat's
    non-idle jiffies), or None where that is not known."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def prepare(data: list[str], out: Path, *, workers: int) -> tuple[dict, float, float, str]:
    """Run `lmforge prepare` in a subprocess: its report, wall time, peak RSS (MiB), and what
    other processes took of the cores meanwhile (a busy machine, not the pipeline, is what
    makes two workers no faster than one)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "lmforge", "prepare", "--data", *data, "--out", str(out),
           "--workers", str(workers), "--no-progress"]
    load, busy = os.getloadavg()[0], busy_cpu_s()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    # wait4's peak RSS is that of lmforge's main process or of any worker it reaped, which
    # ever was larger: this run's alone. Its CPU times are this run's too (workers included).
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{' '.join(cmd)} failed")
    busy_after = busy_cpu_s()
    others = ""
    if busy is not None and busy_after is not None:
        cpu = max(busy_after - busy - usage.ru_utime - usage.ru_stime, 0.0)
        others = f"; other processes {cpu:.0f} CPU-s ({cpu / wall:.2f} cores), load {load:.2f} before"
    return json.loads((out / "report.json").read_text()), wall, usage.ru_maxrss / 1024, others


def text_mb(report: dict) -> float:
    """MB of document text the pipeline read: what went into its first cleaning step."""
    return next(iter(report["clean"].values()))["bytes_in"] / 1e6


def stage_mb_s(report: dict) -> float:
    t = report["timing_s"]
    return text_mb(report) / (t["read_clean"] + t["tokenize"])


def stages(report: dict) -> str:
    t = report["timing_s"]
    return (f"read+clean {text_mb(report) / t['read_clean']:.1f} MB/s in {t['read_clean']:.2f} s, "
            f"tokenize+write {text_mb(report) / t['tokenize']:.1f} MB/s in {t['tokenize']:.2f} s; "
            f"tokenizer training apart: {t['tokenizer']:.2f} s")


def cleaned_texts(source: Path, *, limit_mb: float = 0) -> list[str]:
    """The documents of `source` as prepare cleans them, in its order (the first `limit_mb`
    MB of them if given)."""
    from lmforge.config import CleanConfig
    from lmforge.data.clean import CleanStats, clean_document
    from lmforge.data.sources import iter_corpus

    cfg, stats = CleanConfig(), CleanStats()
    texts, total = [], 0
    for doc in iter_corpus([str(source)]):
        cleaned = clean_document(doc, cfg, stats)
        if cleaned is not None:
            texts.append(cleaned.text)
            total += len(cleaned.text.encode())
            if limit_mb and total >= limit_mb * 1e6:
                break
    return texts


def raw_mb_s(texts: list[str], dataset: Path) -> float:
    """encode_batch of the tokenizer prepare trained, over `texts`, in memory, all cores."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(dataset / "tokenizer" / "tokenizer.json"))
    tok.encode_special_tokens = True  # as lmforge.data.tokenizer.BpeTokenizer sets it
    total = sum(len(t.encode()) for t in texts)
    best = 0.0
    for _ in range(2):
        start = time.perf_counter()
        tok.encode_batch(texts)
        best = max(best, total / 1e6 / (time.perf_counter() - start))
    return best


def generate_corpus(directory: Path, *, size_gb: float, seed: int = 0) -> int:
    """Unique documents (no exact or near duplicates) built from the vocabulary of Python's
    standard library, in 64 JSONL files."""
    import sysconfig

    words: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:200]:
        words.extend(path.read_text(errors="replace").split())
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    target, written, doc = int(size_gb * 1e9), 0, 0
    files = [open(directory / f"part-{i:03d}.jsonl", "w") for i in range(64)]
    try:
        while written < target:
            lines = [" ".join(rng.choices(words, k=rng.randint(5, 14))) for _ in range(rng.randint(20, 80))]
            text = f"document {doc}\n" + "\n".join(lines)
            record = json.dumps({"text": text, "n": doc}) + "\n"
            files[doc % 64].write(record)
            written += len(record)
            doc += 1
    finally:
        for fh in files:
            fh.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuters", type=Path, default=DEFAULT_REUTERS)
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "prepare")
    args = parser.parse_args()
    if not args.reuters.is_file():
        sys.exit(f"reuters21578.tar.gz not found at {args.reuters}; pass --reuters PATH")
    args.out.mkdir(parents=True, exist_ok=True)

    two, wall2, rss2, busy2 = prepare([str(args.reuters)], args.out / "reuters-2", workers=2)
    one, wall1, rss1, busy1 = prepare([str(args.reuters)], args.out / "reuters-1", workers=1)
    raw = raw_mb_s(cleaned_texts(args.reuters), args.out / "reuters-2")
    pipe2, pipe1 = stage_mb_s(two), stage_mb_s(one)
    print(f"Reuters ({text_mb(two):.1f} MB of text): raw encode_batch {raw:.2f} MB/s; "
          f"pipeline {pipe2:.2f} MB/s with 2 workers ({stages(two)}; {wall2:.1f} s in all, "
          f"peak RSS {rss2:.0f} MiB{busy2}), {pipe1:.2f} MB/s with 1 ({stages(one)}; {wall1:.1f} s"
          f"{busy1})")
    reuters = (f"reuters_pipeline_mb_s={pipe2:.2f} reuters_raw_mb_s={raw:.2f} "
               f"reuters_ratio={pipe2 / raw:.2f} reuters_two_worker_speedup={pipe2 / pipe1:.2f}")
    if args.size_gb <= 0:  # the Reuters comparison alone
        print(f"RESULT pipeline_mb_s={pipe2:.2f} raw_mb_s={raw:.2f} ratio={pipe2 / raw:.2f} "
              f"two_worker_speedup={pipe2 / pipe1:.2f} peak_rss_mb={max(rss1, rss2):.0f} {reuters}")
        return

    corpus = args.out / f"generated-{args.size_gb:g}gb"
    if not corpus.exists():
        size = generate_corpus(corpus, size_gb=args.size_gb)
        print(f"generated {size / 1e9:.2f} GB of unique documents in {corpus}")
    big2, wall_big2, rss_big2, busy_big2 = prepare([str(corpus)], args.out / "generated-2", workers=2)
    big1, wall_big1, rss_big1, busy_big1 = prepare([str(corpus)], args.out / "generated-1", workers=1)
    # The raw rate on the first RAW_SAMPLE_MB of the same documents: holding all of a large
    # corpus in memory is what the pipeline avoids, and the rate is the same on a sample.
    raw_big = raw_mb_s(cleaned_texts(corpus, limit_mb=RAW_SAMPLE_MB), args.out / "generated-2")
    big_2, big_1 = stage_mb_s(big2), stage_mb_s(big1)
    print(f"generated corpus ({text_mb(big2) / 1e3:.2f} GB of text): raw encode_batch "
          f"{raw_big:.2f} MB/s (first {RAW_SAMPLE_MB} MB); pipeline {big_2:.2f} MB/s with 2 "
          f"workers ({stages(big2)}; {wall_big2:.0f} s in all, peak RSS {rss_big2:.0f} MiB"
          f"{busy_big2}), "
          f"{big_1:.2f} MB/s with 1 ({stages(big1)}; {wall_big1:.0f} s, peak RSS "
          f"{rss_big1:.0f} MiB{busy_big1})")
    print(f"RESULT pipeline_mb_s={big_2:.2f} raw_mb_s={raw_big:.2f} ratio={big_2 / raw_big:.2f} "
          f"two_worker_speedup={big_2 / big_1:.2f} peak_rss_mb={max(rss_big1, rss_big2):.0f} "
          f"{reuters}")


if __name__ == "__main__":
    main()
