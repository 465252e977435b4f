"""benchmarks/run_all.py on a directory of fake benchmarks: it goes on past a failure and a
timeout, and its report holds the machine's facts, the load averages, each RESULT line as
printed and the end of a failed benchmark's output."""

import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "benchmarks" / "run_all.py"

SCRIPTS = {
    "fast.py": """
        if __name__ == "__main__":
            print("warming up")
            print("RESULT speed=42 note=a_b ratio=0.50")
        """,
    "broken.py": """
        import sys
        if __name__ == "__main__":
            for i in range(1, 26):
                print(f"line {i}")
            sys.exit(1)
        """,
    "slow.py": """
        import time
        if __name__ == "__main__":
            print("started", flush=True)
            time.sleep(120)
        """,
    "helpers.py": """
        def shared():  # imported by the others, never run
            return 1
        """,
}


@pytest.fixture
def scripts(tmp_path):
    folder = tmp_path / "scripts"
    folder.mkdir()
    for name, text in SCRIPTS.items():
        (folder / name).write_text(textwrap.dedent(text))
    (folder / "notes.txt").write_text("not a script")
    return folder


def runner(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def load_module():
    spec = importlib.util.spec_from_file_location("run_all", RUNNER)
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module  # dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_runs_and_the_report_says_what_each_did(scripts, tmp_path):
    out = tmp_path / "report.md"
    proc = runner("--dir", str(scripts), "--out", str(out), "--logs", str(tmp_path / "logs"),
                  "--limit-min", "0.05")  # 3 s: slow.py is stopped at its limit
    assert proc.returncode == 1, proc.stderr  # a failure and a timeout: not a clean run
    assert "SUMMARY ok=1 failed=1 timed_out=1 skipped=1" in proc.stdout
    report = out.read_text()
    # the machine's facts
    for fact in ("| CPU |", "| CPU flags | avx2 ", "avx512_bf16", "| cores | ", "| memory | ",
                 "| torch | ", "| tokenizers | ", "| numpy | ", "| transformers | ",
                 "| OMP_NUM_THREADS | ", "| torch threads | "):
        assert fact in report
    # each benchmark, in name order, with its load averages before and after
    sections = re.findall(r"^## (\S+)", report, flags=re.M)
    assert sections == ["Machine", "broken.py", "fast.py", "helpers.py", "slow.py", "Summary"]
    loads = re.findall(r"^- load average \(1 min\): [\d.]+ before, [\d.]+ after, on \d+ cores$",
                       report, flags=re.M)
    assert len(loads) == 3  # the three that ran
    # the RESULT line as printed; the failure with the end of its output
    assert "\nRESULT speed=42 note=a_b ratio=0.50\n" in report
    broken = section(report, "broken.py")
    assert "- failed: exit 1" in broken and "line 25" in broken and "line 6\n" in broken
    assert "line 5\n" not in broken  # the last 20 lines only
    slow = section(report, "slow.py")
    assert "- timed out: stopped at its limit" in slow and "started" in slow
    assert "not a benchmark: a module (no __main__ block)" in section(report, "helpers.py")
    assert (tmp_path / "logs" / "broken.log").read_text().count("line") == 25
    assert re.search(r"\nSUMMARY ok=1 failed=1 timed_out=1 skipped=1 minutes=[\d.]+\n$", report)


def section(report: str, name: str) -> str:
    return report.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]


def test_list_shows_commands_and_limits_and_runs_nothing(scripts, tmp_path):
    proc = runner("--dir", str(scripts), "--list", "--skip", "slow")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["broken.py", "fast.py", "helpers.py"]
    assert "limit   10 min" in lines[1] and f"python {scripts / 'fast.py'}" in lines[1]
    assert lines[-1].startswith("estimated total ")
    assert not list(tmp_path.glob("*.md"))


@pytest.mark.parametrize("args, message", [
    (["--only", "nosuch"], "--only: no benchmark named 'nosuch' (have: broken, fast, helpers, "
                           "slow)"),
    (["--skip", ","], "--skip: give at least one benchmark name"),
    (["--limit-min", "0"], "--limit-min must be a number of minutes above 0, got 0"),
    (["--budget-min", "x"], "argument --budget-min: invalid float value: 'x'"),
])
def test_bad_input_is_one_line_and_exit_2(scripts, args, message):
    proc = runner("--dir", str(scripts), *args)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"run_all.py: error: {message}"]


def test_a_busy_machine_is_one_with_more_load_than_usable_cores():
    run_all = load_module()
    assert run_all.busy_warning(run_all.Load(3.1, 2)) == \
        "started on a busy machine (load 3.10 on 2 cores): its figures may read low"
    assert run_all.busy_warning(run_all.Load(2.0, 2)) == ""


def test_every_script_here_has_a_plan_that_fits_the_budget():
    run_all = load_module()
    scripts = sorted(p.name for p in RUNNER.parent.iterdir()
                     if p.suffix in (".py", ".sh") and p.name != RUNNER.name)
    missing = [s for s in scripts if s not in run_all.PLANS]
    assert not missing, f"add to PLANS in run_all.py: {missing}"
    estimate = sum(p.estimate_min or 0 for p in run_all.PLANS.values() if not p.gpu)
    assert estimate <= 42  # minutes on a quiet 2-core CPU, so the whole run stays under 45
