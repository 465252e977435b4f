"""What the tests of `lmforge serve` share: the tiny run they serve, trained once a module, and
a real server process on loopback."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

from helpers import QUIET, TINY_MODEL, command, environment, json_corpus, lmforge, options

KEY = "test-key-123"
TINY = options(TINY_MODEL, QUIET, {"train.max_steps": "20", "eval.every": "0",
                                   "eval.batches": "1", "checkpoint.every": "0",
                                   "train.report": "false", "log.to": "none",
                                   "data.path": "data/json", "data.source": ""})


def tiny_run(tmp_path_factory, name: str) -> Path:
    """A fresh work directory whose runs/tiny is the tiny GPT (context 32) trained 20 steps on
    the json package's sources at character level."""
    work = json_corpus(tmp_path_factory, name)
    lmforge("train", *TINY, "--run.dir=runs/tiny", cwd=work, threads=1)
    return work


class Server:
    """`lmforge serve RUN --port 0 ARGS` in a subprocess: its address read from the line it
    prints, then /health polled a bounded number of times.

    httpx and openai are imported where used: a test module skips itself with
    pytest.importorskip when they are not installed, which an import here would pre-empt."""

    def __init__(self, run: Path, *args: str, cwd: Path, key: str | None = KEY) -> None:
        import httpx

        self.log = cwd / f"serve-{id(self)}.log"
        extra = ["--api-key", key] if key else []
        self.proc = subprocess.Popen(command("serve", run, "--port", "0", *extra, *args), cwd=cwd,
                                     env=environment(threads=1), text=True,
                                     stdout=subprocess.PIPE, stderr=self.log.open("w"))
        line = self.proc.stdout.readline()  # printed once the model is loaded and the port bound
        found = re.search(r"http://(\S+)/v1", line)
        assert found, f"no address in {line!r}; log:\n{self.log.read_text()}"
        self.url = f"http://{found.group(1)}"
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        for _ in range(200):
            try:
                if httpx.get(f"{self.url}/health", headers=self.headers, timeout=5).is_success:
                    break
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.log.read_text()
        else:
            raise AssertionError("the server never became healthy")

    def client(self, key: str = KEY):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)

    def post(self, path: str, body, **kwargs):
        """POST `body` (bytes, or an object sent as JSON) with the server's key: the
        httpx.Response."""
        import httpx

        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(f"{self.url}{path}", content=content, timeout=60,
                          headers={**self.headers, "Content-Type": "application/json"}, **kwargs)

    def stop(self) -> int:
        """SIGTERM, and the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.proc.stdout.close()
