"""The page at `/` of `lmforge serve` in a browser: how soon a person sees the model's first
words after pressing Send, and what the page looks like.

A character-level model is trained on tinyshakespeare (the shakespeare_char_fast recipe,
--steps optimizer steps, default 340: a minute or two on 2 cores) unless --run gives a
trained run; `lmforge serve RUN --port 0` serves it on a free loopback port (a subprocess,
--threads torch threads); headless Chromium (the system's, through playwright, which
downloads nothing) opens the page, and --repeats times types --prompt, presses Send and
waits for the streamed answer to end. A screenshot of the page is saved to --out.

first_text_ms: from the click on Send to the first streamed text in the page's DOM, both
timed in the page (performance.now(); the click by a capturing listener, the text by a
MutationObserver), so HTTP, the model's prefill and first token and the page's own work are
in it; the median over the repeats, after one request that is not counted (a fresh server
pays for lazy set-up on its first). page_tokens: the tokens streamed into the page over the
repeats, as the server's usage chunks count them.

    python benchmarks/serve_page.py [--run DIR] [--data PATH] [--steps 340] [--repeats 3]
        [--prompt TEXT] [--out benchmarks/results/2026-12-02-serve-page.png]

Ends with: RESULT first_text_ms=… page_tokens=…
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from common import DEFAULT_DATA, ROOT, lmforge, prepare_char

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "2026-12-02-serve-page.png"
PROMPT = "ROMEO:\nBut soft, what light"
WAIT_MS = 120_000

# Installed in the page before each send: the time of the click and of the first text of the
# new answer, in the page's own clock.
TIMER = """() => {
    const log = document.getElementById("completions");
    const before = log.querySelectorAll(".answer").length;
    window.timing = {};
    document.getElementById("send").addEventListener("click", () => {
        window.timing.click = performance.now();
    }, {capture: true, once: true});
    const observer = new MutationObserver(() => {
        const answers = log.querySelectorAll(".answer");
        if (answers.length > before && answers[answers.length - 1].textContent) {
            window.timing.text = performance.now();
            observer.disconnect();
        }
    });
    observer.observe(log, {subtree: true, childList: true, characterData: true});
}"""


def trained_run(args: argparse.Namespace) -> Path:
    if args.run is not None:
        if not (args.run / "config.toml").is_file():
            sys.exit(f"--run {args.run} is not a run directory (no config.toml)")
        return args.run.resolve()
    out = ROOT / "benchmarks" / "out"
    dataset = prepare_char(args.data, out)
    run = out / "serve_page" / "shakespeare"
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    lmforge("train", "shakespeare_char_fast", f"--data.path={dataset}", f"--run.dir={run}",
            f"--train.max_steps={args.steps}", "--train.progress=false", capture=True)
    print(f"trained shakespeare_char_fast for {args.steps} steps in "
          f"{time.perf_counter() - start:.0f} s into {run}")
    return run


class Server:
    """`lmforge serve RUN --port 0` in a subprocess: its address read from the line it prints
    once the model is loaded and the port bound, then /health polled."""

    def __init__(self, run: Path, *, threads: int, log: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "lmforge", "serve", str(run),
                                      "--port", "0"], env=env, text=True, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=log.open("w"))
        assert self.proc.stdout is not None
        found = re.search(r"http://(\S+)/v1", self.proc.stdout.readline())
        if not found:
            self.stop()
            sys.exit(f"lmforge serve printed no address:\n{log.read_text()[-3000:]}")
        self.url = f"http://{found.group(1)}"
        for _ in range(100):
            try:
                if httpx.get(f"{self.url}/health", timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        sys.exit(f"lmforge serve never became healthy:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def browser_path() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    sys.exit(f"no browser on PATH (looked for {', '.join(BROWSERS)})")


def measure(server: Server, args: argparse.Namespace) -> tuple[list[float], int]:
    """first_text_ms of each send, and the tokens streamed in all; the screenshot saved."""
    from playwright.sync_api import Error, expect, sync_playwright

    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=browser_path(),
                                        args=["--no-sandbox", "--disable-dev-shm-usage"])
        except Error as err:
            sys.exit(f"the browser does not start: {err.message.splitlines()[0]}")
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(f"{server.url}/")
        firsts, tokens = [], 0
        for i in range(args.repeats):
            page.evaluate(TIMER)
            page.fill("#prompt", args.prompt)
            page.click("#send")
            meta = page.locator("#completions .meta").nth(i)
            expect(meta).not_to_be_empty()  # written once the answer has ended
            if page.locator("#error").is_visible():
                sys.exit(f"the page shows an error: {page.locator('#error').text_content()}")
            timing = page.evaluate("window.timing")
            if "text" not in timing:
                sys.exit("the answer ended without any text; try another --prompt")
            firsts.append(timing["text"] - timing["click"])
            tokens += int(page.locator("#status").get_attribute("data-tokens") or 0)
            print(f"send {i + 1}: first text after {firsts[-1]:.0f} ms; {meta.text_content()}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.out)
        browser.close()
    if errors:
        sys.exit("the page logged errors:\n" + "\n".join(errors))
    return firsts, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None,
                        help="a trained language-model run (default: train one)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tinyshakespeare.txt")
    parser.add_argument("--steps", type=int, default=340,
                        help="optimizer steps when training (default: 340, the recipe's)")
    parser.add_argument("--repeats", type=int, default=3, help="sends measured (default: 3)")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the screenshot (PNG)")
    args = parser.parse_args()
    if args.repeats < 1 or args.steps < 1 or args.threads < 1:
        parser.error("--repeats, --steps and --threads must be at least 1")
    if not args.prompt.strip():
        parser.error("--prompt is empty")
    if args.out.suffix.lower() != ".png":
        parser.error(f"--out must name a .png file, got {args.out}")
    try:
        import playwright.sync_api  # noqa: F401  (checked before minutes of training)
    except ImportError:
        sys.exit("playwright is not installed: pip install playwright (it drives the system's "
                 "Chromium; no browser download is needed)")
    browser_path()
    run = trained_run(args)
    log = ROOT / "benchmarks" / "out" / "serve_page" / "serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    server = Server(run, threads=args.threads, log=log)
    try:
        # not counted: the first request of a fresh server pays for lazy set-up
        model = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"][0]["id"]
        httpx.post(f"{server.url}/v1/completions", timeout=120,
                   json={"model": model, "prompt": args.prompt, "max_tokens": 4})
        firsts, tokens = measure(server, args)
    finally:
        server.stop()
    print(f"screenshot: {args.out}")
    print(f"RESULT first_text_ms={statistics.median(firsts):.0f} page_tokens={tokens}")


if __name__ == "__main__":
    main()
