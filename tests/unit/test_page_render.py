"""The page at `/` without a browser: its facts checked, a hostile name kept inert in the
HTML, its Content-Security-Policy, and the guard letting `GET /` alone through without the
key (the browser tests are tests/e2e/test_serve_page.py)."""

import json
import re

import pytest

from lmforge.serve.guard import Gate, Guard
from lmforge.serve.metrics import Metrics
from lmforge.serve.page import PageFacts, render

HOSTILE = "</script><script>alert(1)</script><!--\u2028\u2029&amp;\"'{{nonce}}{{facts}}"


def facts_block(html: str) -> str:
    return re.search(r'<script type="application/json" id="facts">(.*?)</script>', html,
                     re.S).group(1)


def test_a_hostile_name_is_escaped_json_that_reads_back_whole():
    page = render(PageFacts(HOSTILE, parameters=5_300_000, step=2000, val_loss=1.5),
                  max_tokens=128)
    block = facts_block(page.html)
    assert not set(block) & set("<>&\u2028\u2029")
    assert json.loads(block) == {"name": HOSTILE, "parameters": 5_300_000, "step": 2000,
                                 "val_loss": 1.5, "max_tokens": 128}
    assert page.html.count("</script>") == 2 and "<script>alert" not in page.html
    assert "<!--" not in page.html


def test_the_policy_allows_only_the_pages_own_nonce_and_this_server():
    first, second = (render(PageFacts("tiny"), max_tokens=32) for _ in range(2))
    nonce = re.search(r"script-src 'nonce-([\w-]+)'", first.csp).group(1)
    assert f"<script nonce=\"{nonce}\">" in first.html and f"<style nonce=\"{nonce}\">" in first.html
    assert "{{nonce}}" not in first.html and "unsafe" not in first.csp
    assert "connect-src 'self'" in first.csp and "default-src 'none'" in first.csp
    assert nonce not in second.csp  # a fresh one each time
    assert json.loads(facts_block(first.html))["val_loss"] is None  # said as "no evaluation"
    for external in ("http://", "https://", "//cdn", "@import", "src=\"http"):
        assert external not in first.html


@pytest.mark.parametrize("kwargs, message", [
    ({"name": ""}, "non-empty string"),
    ({"name": "m", "parameters": -1}, "parameters"),
    ({"name": "m", "parameters": True}, "parameters"),
    ({"name": "m", "step": 1.5}, "step"),
    ({"name": "m", "val_loss": float("nan")}, "val_loss"),
    ({"name": "m", "val_loss": "1.2"}, "val_loss"),
])
def test_bad_facts_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PageFacts(**kwargs)


def test_bad_render_arguments_are_refused():
    with pytest.raises(ValueError, match="max_tokens"):
        render(PageFacts("m"), max_tokens=0)
    with pytest.raises(ValueError, match="nonce"):
        render(PageFacts("m"), max_tokens=1, nonce="a'; script-src *")


def guarded(gate: Gate):
    """A client of an app that answers every path with 200, behind the Guard with a key."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    async def ok(_):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/{path:path}", ok, methods=["GET", "POST"])])
    metrics = Metrics(waiting=lambda: 0, running=lambda: 0)
    return TestClient(Guard(app, gate=gate, api_key="k", max_body_bytes=100, metrics=metrics))


def test_only_get_slash_passes_without_the_key_and_draining_refuses_it_too():
    gate = Gate()
    client = guarded(gate)
    assert client.get("/").status_code == 200
    assert client.post("/").status_code == 401
    for path in ("/health", "/v1/models", "/index.html"):
        assert client.get(path).status_code == 401, path
    assert client.get("/health", headers={"Authorization": "Bearer k"}).status_code == 200
    gate.close()
    assert client.get("/").status_code == 503
