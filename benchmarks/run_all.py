"""Every benchmark in benchmarks/, one after another, from this checkout, into one report.

Each script runs as a subprocess of its own, one at a time (they measure speed: two at once
would slow each other), from the repository root, under a time limit; its process group is
stopped when the limit passes, and the run goes on with the next. The arguments and limits
(PLANS below) keep the whole run under 45 minutes on a 2-core CPU: where a script's defaults
take longer, fewer steps, tokens or gigabytes, so a figure read here is comparable with the
last run of this script, not always with the README's. A script not in the table runs with
no arguments and a 10-minute limit. Skipped, with the reason: gpu.sh without a GPU, a
script whose data is missing from ../shared/data/ (where the scripts look by default) or
whose Python module or browser is missing, and the helpers the others import. The run also
stops starting benchmarks when --budget-min (45) is spent, and caps each limit by what is
left of it.

The report, benchmarks/results/DATE-HOST.md (rewritten after each benchmark, so a run cut
short keeps what it measured; -2, -3 ... rather than overwrite an earlier one): the
machine's facts that change figures (CPU and its flags, usable cores, memory, library
versions, threads), then per benchmark its command, wall time, exit status, the 1-minute
load average before and after (with a warning where it started on a busy machine: a load
above the usable cores), its RESULT lines verbatim, and the last lines of its output where
it failed. Each benchmark's whole output goes to --logs.

    python benchmarks/run_all.py [--only NAME[,NAME]] [--skip NAME[,NAME]] [--out PATH]
        [--dir DIR] [--logs DIR] [--budget-min 45] [--limit-min M] [--list]

Ends with one line: SUMMARY ok=… failed=… timed_out=… skipped=… minutes=…
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import NoReturn

from lmforge.train.mfu import Load, current_load, usable_cores

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"  # where the scripts find their data by default
SELF = Path(__file__).name
TAIL_LINES = 20  # of a failed benchmark's output, in the report
STOP_GRACE_S = 10  # between SIGTERM and SIGKILL of a benchmark past its limit
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
LIBRARIES = ("torch", "tokenizers", "numpy", "transformers")


@dataclass(frozen=True)
class Plan:
    """How one script is run here: its arguments, time limit and what it needs."""

    args: tuple[str, ...] = ()
    limit_min: float = 10.0
    estimate_min: float | None = None  # on a quiet 2-core CPU; None: unknown
    data: tuple[str, ...] = ()  # files of ../shared/data/ it reads
    modules: tuple[str, ...] = ()  # Python modules it imports beyond lmforge's own
    browser: bool = False  # a system Chromium
    gpu: bool = False
    helper: str = ""  # not a benchmark but a module the others import: what it is


SHAKESPEARE, REUTERS = "tinyshakespeare.txt", "reuters21578.tar.gz"
PLANS: dict[str, Plan] = {
    # the defaults take ~9.5 minutes (nanoGPT's recipe and the 3 fast ones on 3 corpora); here
    # the stdlib corpus with the fastest GPT and the GRU, beside nanoGPT's recipe: ~2.5 minutes
    "carry_over.py": Plan(("--corpora", "python", "--recipes", "gpt_muon_fast,gru_char_fast"),
                          limit_min=6, estimate_min=2.5),
    "common.py": Plan(helper="what the tinyshakespeare benchmarks share"),
    "hostile.py": Plan(helper="the hostile-input suite, run by faults.py"),
    # the defaults: 3 kills each of a GPT and an LSTM run, the hostile suite
    "faults.py": Plan(limit_min=12, estimate_min=7),
    # a 420M-parameter model at ~4.5 s a step: 4 steps a mode rather than 7
    "finetune.py": Plan(("--steps", "3", "--warmup", "1"), limit_min=7, estimate_min=3,
                        data=(REUTERS,)),
    "generate.py": Plan(limit_min=4, estimate_min=1),  # 512 tokens, best of 3
    "gpu.sh": Plan(limit_min=10, estimate_min=3, gpu=True),
    "load_pretrained.py": Plan(limit_min=5, estimate_min=2),
    "parallel.py": Plan(("--steps", "20"), limit_min=6, estimate_min=3, data=(SHAKESPEARE,)),
    # 1 GB takes ~12 minutes; 0.15 GB keeps the same stages, with more fixed cost in them
    "prepare_throughput.py": Plan(("--size-gb", "0.15"), limit_min=7, estimate_min=3,
                                  data=(REUTERS,)),
    # each recipe's own budget is 3 to 4.5 minutes: 45 s each, losses not the README's
    "recurrent.py": Plan(("--minutes", "0.75"), limit_min=8, estimate_min=4,
                         data=(SHAKESPEARE,)),
    # the defaults take 30 minutes: every lmforge stage at a tenth of its steps
    "reuters.py": Plan(("--pretrain-steps", "150", "--finetune-steps", "150", "--sft-steps",
                        "100", "--headline-stories", "100"), limit_min=9, estimate_min=4.5,
                       data=(REUTERS,), modules=("sklearn", "rouge_score")),
    "serve.py": Plan(("--repeats", "3"), limit_min=9, estimate_min=3,
                     modules=("httpx", "transformers")),
    "serve_engine.py": Plan(limit_min=3, estimate_min=0.5),
    # its screenshot among the run's outputs, not over the one benchmarks/results/ keeps
    "serve_page.py": Plan(("--out", "benchmarks/out/run_all/serve-page.png"), limit_min=6,
                          estimate_min=2.5, data=(SHAKESPEARE,),
                          modules=("httpx", "playwright"), browser=True),
    "shakespeare_char.py": Plan(limit_min=6, estimate_min=3, data=(SHAKESPEARE,)),
    "time_to_loss.py": Plan(limit_min=6, estimate_min=2.5, data=(SHAKESPEARE,)),
}


class Refusal(Exception):
    """A bad input: said in one line, exit 2."""


# --- the machine ----------------------------------------------------------------------------


# Load, current_load and usable_cores are lmforge's own (train/mfu.py), which decides by the
# same rule whether a matmul probe ran on a busy machine.


def _load_text(load: Load) -> str:
    return f"{load.average:.2f} (1 minute) on {load.cores} usable cores"


def busy_warning(load: Load) -> str:
    return (f"started on a busy machine ({load}): its figures may read low"
            if load.busy else "")


def _cpuinfo() -> tuple[str, set[str]]:
    """(the CPU's model name, its flags), from /proc/cpuinfo where there is one."""
    name, flags = platform.processor() or platform.machine(), set[str]()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return name, flags
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            name = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    return name, flags


def _memory() -> str:
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        total, available = (int(info[k].split()[0]) / 2**20 for k in ("MemTotal", "MemAvailable"))
    except (OSError, KeyError, ValueError):
        return "unknown"
    return f"{total:.1f} GiB ({available:.1f} GiB available at the start)"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


# What the benchmarks' own interpreter says: asked in a subprocess so that a torch that does
# not import costs this line, not the run.
_TORCH_FACTS = """
import json, torch, lmforge
cuda = torch.cuda.is_available()
print(json.dumps({"threads": torch.get_num_threads(),
                  "interop": torch.get_num_interop_threads(),
                  "capability": torch.backends.cpu.get_cpu_capability(),
                  "gpu": torch.cuda.get_device_name() if cuda else "",
                  "lmforge": lmforge.__file__}))
"""


def _torch_facts() -> dict[str, object]:
    try:
        proc = subprocess.run([sys.executable, "-c", _TORCH_FACTS], capture_output=True,
                              text=True, timeout=120, cwd=ROOT)
        facts = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return {}
    return facts if isinstance(facts, dict) else {}


def _git() -> str:
    try:
        proc = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=30, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return proc.stdout.strip() or "unknown"


@dataclass(frozen=True)
class Machine:
    """The facts that change benchmark figures, as (name, value) rows; and whether a GPU is
    there (for gpu.sh)."""

    rows: tuple[tuple[str, str], ...]
    gpu: str


def machine_facts() -> Machine:
    name, flags = _cpuinfo()
    torch_facts = _torch_facts()
    gpu = str(torch_facts.get("gpu", ""))
    where = str(torch_facts.get("lmforge", "not importable"))
    mine = where.startswith(str(ROOT / "src"))
    checkout = "this checkout" if mine else "NOT this checkout: pip install -e ."
    rows = (
        ("CPU", name),
        ("CPU flags", ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS)),
        ("torch CPU capability", str(torch_facts.get("capability", "unknown"))),
        ("cores", f"{usable_cores()} usable of {os.cpu_count()}"),
        ("memory", _memory()),
        ("GPU", gpu or "none"),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        *((lib, _version(lib)) for lib in LIBRARIES),
        ("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "unset")),
        ("torch threads", f"{torch_facts.get('threads', '?')} intra-op, "
                          f"{torch_facts.get('interop', '?')} inter-op"),
        ("lmforge", f"{where} ({checkout}), git {_git()}"),
        ("load average at the start", _load_text(current_load())),
    )
    return Machine(rows, gpu)


# --- what runs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    name: str
    path: Path
    plan: Plan
    skip: str = ""  # why it does not run here ("" where it does)

    @property
    def command(self) -> list[str]:
        launcher = ["bash"] if self.path.suffix == ".sh" else [sys.executable]
        return [*launcher, str(self.path), *self.plan.args]

    def shown(self) -> str:
        """The command as a person would type it from the repository root."""
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        launcher = "bash" if self.path.suffix == ".sh" else "python"
        return shlex.join([launcher, str(path), *self.plan.args])


def _is_module(path: Path) -> bool:
    """A .py file without a __main__ block is imported by others, not run."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return not re.search(r"__name__\s*==\s*['\"]__main__['\"]", text)


def why_not_here(plan: Plan, machine: Machine) -> str:
    """Why a benchmark cannot run on this machine, or ""."""
    if plan.gpu and not machine.gpu:
        return "skipped: no GPU"
    for name in plan.data:
        if not (DATA / name).is_file():
            return f"skipped: needs {DATA / name}, which is not there"
    for module in plan.modules:
        if importlib.util.find_spec(module) is None:
            return f"skipped: needs the Python module {module}, not installed"
    if plan.browser and not any(shutil.which(b) for b in BROWSERS):
        return f"skipped: needs a system Chromium ({', '.join(BROWSERS)}), none on PATH"
    return ""


def discover(directory: Path) -> list[Benchmark]:
    """The scripts of `directory` in name order, each with its plan (or the default)."""
    found = []
    for path in sorted(directory.iterdir()):
        if path.suffix not in (".py", ".sh") or not path.is_file() or path.name == SELF:
            continue
        plan = PLANS.get(path.name, Plan())
        if not plan.helper and path.suffix == ".py" and _is_module(path):
            plan = Plan(helper="a module (no __main__ block), not a script")
        found.append(Benchmark(path.name, path, plan,
                               f"not a benchmark: {plan.helper}" if plan.helper else ""))
    return found


def on_this_machine(benchmarks: list[Benchmark], machine: Machine) -> list[Benchmark]:
    """The benchmarks, each that cannot run here with the reason."""
    return [b if b.skip else dataclasses.replace(b, skip=why_not_here(b.plan, machine))
            for b in benchmarks]


def _names(value: str, known: list[str], option: str) -> set[str]:
    """NAME[,NAME] of an option as file names ("generate" or "generate.py")."""
    chosen = set()
    for raw in filter(None, (v.strip() for v in value.split(","))):
        name = next((k for k in known if raw in (k, Path(k).stem)), None)
        if name is None:
            raise Refusal(f"{option}: no benchmark named '{raw}' (have: "
                          f"{', '.join(Path(k).stem for k in known)})")
        chosen.add(name)
    if not chosen:
        raise Refusal(f"{option}: give at least one benchmark name")
    return chosen


def select(benchmarks: list[Benchmark], *, only: str | None,
           skip: str | None) -> list[Benchmark]:
    known = [b.name for b in benchmarks]
    keep = _names(only, known, "--only") if only is not None else set(known)
    drop = _names(skip, known, "--skip") if skip is not None else set()
    return [b for b in benchmarks if b.name in keep and b.name not in drop]


# --- running one ----------------------------------------------------------------------------


@dataclass
class Outcome:
    benchmark: Benchmark
    status: str  # ok, failed, timed out, skipped
    detail: str = ""  # the exit status, or why it was skipped or stopped
    wall_s: float = 0.0
    limit_min: float = 0.0
    before: Load | None = None
    after: Load | None = None
    results: list[str] = field(default_factory=list)  # its RESULT lines, verbatim
    tail: list[str] = field(default_factory=list)  # the last lines of output, on a failure
    log: Path | None = None


def child_env() -> dict[str, str]:
    # this interpreter's bin first: gpu.sh and anything else that calls `python` or `lmforge`
    # gets the environment the runner was started in
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"  # a benchmark stopped at its limit leaves its output
    return env


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the benchmark's session: itself and whatever it started (servers, ranks)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):  # the group has ended
        pass


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, so that a benchmark can end its servers; SIGKILL after a grace period."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGKILL)
    proc.wait()


def run_one(bench: Benchmark, *, limit_min: float, log: Path) -> Outcome:
    before = current_load()
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(bench.command, cwd=ROOT, env=child_env(), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=limit_min * 60)
        except subprocess.TimeoutExpired:
            code = None
            _stop_group(proc)
        except KeyboardInterrupt:
            _stop_group(proc)
            raise
        # a benchmark that exited may leave a server or worker of its own behind
        _signal_group(proc, signal.SIGKILL)
    wall = time.perf_counter() - start
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    results = [line.rstrip() for line in lines if line.startswith("RESULT ")]
    status, detail = _verdict(code, results, limit_min=limit_min)
    return Outcome(bench, status, detail, wall, limit_min, before, current_load(), results,
                   tail=lines[-TAIL_LINES:] if status != "ok" else [], log=log)


def _verdict(code: int | None, results: list[str], *, limit_min: float) -> tuple[str, str]:
    """(status, detail) of a benchmark that exited with `code` (None: stopped at its limit)."""
    if code is None:
        return "timed out", f"stopped at its limit of {limit_min:.3g} min (SIGTERM, then SIGKILL)"
    if code != 0:
        return "failed", f"exit {code}"
    if not results:
        return "failed", "exit 0 but no RESULT line"
    return "ok", "exit 0"


# --- the report -----------------------------------------------------------------------------


@dataclass
class Report:
    path: Path
    machine: Machine
    started: datetime.datetime
    directory: Path
    outcomes: list[Outcome] = field(default_factory=list)
    ended: datetime.datetime | None = None

    def summary(self) -> str:
        count = {s: sum(o.status == s for o in self.outcomes)
                 for s in ("ok", "failed", "timed out", "skipped")}
        minutes = sum(o.wall_s for o in self.outcomes) / 60
        return (f"SUMMARY ok={count['ok']} failed={count['failed']} "
                f"timed_out={count['timed out']} skipped={count['skipped']} "
                f"minutes={minutes:.1f}")

    def failures(self) -> list[str]:
        return [o.benchmark.name for o in self.outcomes if o.status in ("failed", "timed out")]

    def write(self) -> None:
        text = "\n".join([*self._head(), *(line for o in self.outcomes
                                            for line in _section(o)), *self._end()])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(self.path)

    def _head(self) -> list[str]:
        where = (self.directory.relative_to(ROOT) if self.directory.is_relative_to(ROOT)
                 else self.directory)
        return [f"# Benchmarks, {self.started:%Y-%m-%d}, {platform.node() or 'unknown host'}",
                "",
                f"`python benchmarks/{SELF}`: every script of {where}/ in turn, one at a time, "
                f"started {self.started:%H:%M:%S %Z}.",
                "", "## Machine", "", "| | |", "|---|---|",
                *(f"| {k} | {v} |" for k, v in self.machine.rows), ""]

    def _end(self) -> list[str]:
        if self.ended is None:
            return ["(running)"]
        failed = self.failures()
        return ["## Summary", "",
                f"Ended {self.ended:%H:%M:%S %Z}"
                + (f"; failed or timed out: {', '.join(failed)}." if failed else "."), "",
                self.summary()]


def _section(o: Outcome) -> list[str]:
    lines = [f"## {o.benchmark.name}", "", f"- command: `{o.benchmark.shown()}`"]
    if o.status == "skipped":
        return [*lines, f"- {o.detail}", ""]
    lines.append(f"- {o.status}: {o.detail}, {o.wall_s:.1f} s (limit {o.limit_min:g} min)")
    if o.before is not None and o.after is not None:
        lines.append(f"- load average (1 min): {o.before.average:.2f} before, "
                     f"{o.after.average:.2f} after, on {o.before.cores} cores")
        warning = busy_warning(o.before)
        if warning:
            lines.append(f"- **warning: {warning}**")
    if o.log is not None:
        lines.append(f"- output: {o.log}")
    lines += ["", "```", *(o.results or ["(no RESULT line)"]), "```", ""]
    if o.tail:
        lines += [f"The end of its output ({len(o.tail)} lines):", "", "```", *o.tail, "```",
                  ""]
    return lines


def default_out(today: datetime.date) -> Path:
    """benchmarks/results/DATE-HOST.md, or -2, -3 ... where a run today already wrote one."""
    host = re.sub(r"[^a-z0-9]+", "-", platform.node().lower()).strip("-") or "host"
    base = ROOT / "benchmarks" / "results" / f"{today.isoformat()}-{host}"
    path, n = base.with_suffix(".md"), 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}.md")
    return path


# --- the run --------------------------------------------------------------------------------


def limit_for(bench: Benchmark, *, cap_min: float | None) -> float:
    return min(bench.plan.limit_min, cap_min) if cap_min else bench.plan.limit_min


def listing(benchmarks: list[Benchmark], *, cap_min: float | None, budget_min: float) -> str:
    rows, total, limits = [], 0.0, 0.0
    for b in benchmarks:
        if b.skip:
            rows.append(f"  {b.name:22} {b.skip}")
            continue
        limit = limit_for(b, cap_min=cap_min)
        estimate = b.plan.estimate_min if b.plan.estimate_min is not None else limit
        total, limits = total + estimate, limits + limit
        guess = f"~{estimate:g}" if b.plan.estimate_min is not None else f"<={limit:g}"
        rows.append(f"  {b.name:22} limit {limit:4g} min, est. {guess:>5} min: {b.shown()}")
    budget = (f"; each capped by what is left of the {budget_min:g}-minute budget, which the "
              "run keeps" if budget_min > 0 else "")
    return "\n".join([*rows, f"estimated total {total:.1f} min on a quiet 2-core CPU (limits "
                             f"add up to {limits:g} min{budget})"])


def run_all(benchmarks: list[Benchmark], report: Report, *, logs: Path,
            cap_min: float | None, budget_min: float) -> None:
    start = time.perf_counter()
    for i, bench in enumerate(benchmarks, 1):
        left = budget_min - (time.perf_counter() - start) / 60 if budget_min > 0 else None
        head = f"[{i}/{len(benchmarks)}] {bench.name}"
        if bench.skip or (left is not None and left < 0.5):
            why = bench.skip or f"skipped: the run's {budget_min:g}-minute budget is spent"
            report.outcomes.append(Outcome(bench, "skipped", why))
            print(f"{head}: {why}", flush=True)
            report.write()
            continue
        limit = limit_for(bench, cap_min=cap_min)
        limit = min(limit, left) if left is not None else limit
        print(f"{head}: {bench.shown()} (limit {limit:.3g} min)", flush=True)
        outcome = run_one(bench, limit_min=limit, log=logs / f"{bench.path.stem}.log")
        report.outcomes.append(outcome)
        shown = outcome.results[-1] if outcome.results else outcome.detail
        print(f"    {outcome.status} in {outcome.wall_s:.1f} s: {shown}", flush=True)
        report.write()


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage and then the error
        self.exit(2, f"{self.prog}: error: {message}\n")


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog=SELF, description=__doc__.split("\n\n")[0])
    p.add_argument("--only", metavar="NAME[,NAME]", help="run these benchmarks alone")
    p.add_argument("--skip", metavar="NAME[,NAME]", help="leave these out")
    p.add_argument("--out", type=Path, help="the report (default: "
                                            "benchmarks/results/DATE-HOST.md)")
    p.add_argument("--dir", type=Path, default=ROOT / "benchmarks",
                   help="where the scripts are (default: benchmarks/)")
    p.add_argument("--logs", type=Path, default=None,
                   help="each benchmark's output (default: benchmarks/out/run_all/TIME/)")
    p.add_argument("--budget-min", type=float, default=45.0,
                   help="start no benchmark after this many minutes (0: no budget; default 45)")
    p.add_argument("--limit-min", type=float, default=None,
                   help="cap every benchmark's time limit at this many minutes")
    p.add_argument("--list", action="store_true",
                   help="print what would run, with its arguments and limits, and stop")
    return p.parse_args(argv)


def check(args: argparse.Namespace) -> None:
    if not args.dir.is_dir():
        raise Refusal(f"--dir: {args.dir} is not a directory")
    if args.out is not None and args.out.is_dir():
        raise Refusal(f"--out: {args.out} is a directory; give the report's file name")
    if not (0 <= args.budget_min < math.inf):
        raise Refusal(f"--budget-min must be 0 (no budget) or more, got {args.budget_min:g}")
    if args.limit_min is not None and not (0 < args.limit_min < math.inf):
        raise Refusal(f"--limit-min must be a number of minutes above 0, got "
                      f"{args.limit_min:g}")


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    try:
        check(args)
        chosen = select(discover(args.dir.resolve()), only=args.only, skip=args.skip)
    except Refusal as e:
        print(f"{SELF}: error: {e}", file=sys.stderr)
        return 2
    machine = machine_facts()
    benchmarks = on_this_machine(chosen, machine)
    if args.list:
        print(listing(benchmarks, cap_min=args.limit_min, budget_min=args.budget_min))
        return 0
    started = datetime.datetime.now().astimezone()
    report = Report(args.out or default_out(started.date()), machine, started,
                    args.dir.resolve())
    logs = args.logs or ROOT / "benchmarks" / "out" / "run_all" / f"{started:%Y%m%d-%H%M%S}"
    try:
        report.write()
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"{SELF}: error: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    try:
        run_all(benchmarks, report, logs=logs, cap_min=args.limit_min,
                budget_min=args.budget_min)
    except KeyboardInterrupt:
        print(f"interrupted; what ran is in {report.path}", file=sys.stderr)
        return 130
    report.ended = datetime.datetime.now().astimezone()
    report.write()
    print(f"report: {report.path}")
    print(report.summary())
    return 1 if report.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
