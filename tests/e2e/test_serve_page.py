"""The page at `/` of `lmforge serve` as a person uses it: a real server process, and the
system's Chromium driven through playwright (which never downloads a browser here). Text
streams in piece by piece and equals the API's for the same seed; stop ends a generation;
chat sends the conversation; a 401 brings up the key field; a hostile run name stays text;
nothing logs an error to the console; the page fits a phone's width."""

import json
import math
import re
import shutil
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from serving import KEY, Server, tiny_run

sync_api = pytest.importorskip("playwright.sync_api")
httpx = pytest.importorskip("httpx")
expect = sync_api.expect

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# A run directory's name that would be markup and script if the page pasted it into its HTML
# (no "/": no file name holds one), with a line separator and the page's own nonce slot
HOSTILE = ("x\"'><img src=x onerror=window.pwned=1><script>window.pwned=2<"
           "\u2028&amp;{{nonce}}")
WAIT = 60_000  # ms: generous, for a busy 2-core machine
# what Chromium logs for a request answered with an error status (the page shows it itself)
HTTP_ERROR = re.compile(r"^Failed to load resource: the server responded with a status of "
                        r"(\d{3})")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tiny_run(tmp_path_factory, "serve-page")


@pytest.fixture(scope="module")
def servers(work):
    """The module's servers, started side by side (each spends seconds of CPU loading torch
    and the model, which two cores do better at once) and stopped so, each with exit 0:
    `plain` (no key), `keyed` (KEY) and `hostile` (the tiny run under HOSTILE's name, without
    its metrics: no evaluation)."""
    tiny, renamed = work / "runs" / "tiny", work / "runs" / HOSTILE
    shutil.copytree(tiny, renamed)
    (renamed / "metrics.jsonl").unlink()
    specs = {"plain": (tiny, None), "keyed": (tiny, KEY), "hostile": (renamed, None)}
    with ThreadPoolExecutor(len(specs)) as pool:
        futures = {name: pool.submit(Server, run, cwd=work, key=key)
                   for name, (run, key) in specs.items()}
    started = {name: f.result() for name, f in futures.items() if f.exception() is None}
    try:
        for future in futures.values():
            future.result()  # the first failure to start, if any
        yield started
    finally:
        with ThreadPoolExecutor(len(specs)) as pool:
            codes = dict(zip(started, pool.map(Server.stop, started.values()), strict=True))
    assert codes == dict.fromkeys(specs, 0), {n: started[n].log.read_text() for n in codes}


@pytest.fixture(scope="module")
def server(servers):
    return servers["plain"]


@pytest.fixture(scope="module")
def keyed(servers):
    return servers["keyed"]


@pytest.fixture(scope="module")
def hostile(servers):
    return servers["hostile"]


@pytest.fixture(scope="module")
def browser():
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        pytest.skip(f"no browser on PATH (looked for {', '.join(BROWSERS)})")
    with sync_api.sync_playwright() as p:
        try:
            launched = p.chromium.launch(executable_path=found,
                                         args=["--no-sandbox", "--disable-dev-shm-usage"])
        except sync_api.Error as err:
            pytest.skip(f"{found} does not start: {err.message.splitlines()[0]}")
        yield launched
        launched.close()


class Tab:
    """A page in a fresh browser context, with what it logs as errors and the requests it
    makes to the API."""

    def __init__(self, browser, width: int, height: int) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT)
        self.errors: list[str] = []
        self.requests: list = []
        self.page.on("console",
                     lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda err: self.errors.append(f"uncaught: {err}"))
        self.page.on("request",
                     lambda r: self.requests.append(r) if "/v1/" in r.url else None)

    def bodies(self, path: str) -> list[dict]:
        return [r.post_data_json for r in self.requests if r.url.endswith(path)]


@pytest.fixture
def tabs(browser):
    """Opens Tabs; afterwards, none may have logged an error but HTTP statuses the test
    expected (`tabs.expected`: those it provoked, which the page shows as messages)."""
    opened: list[Tab] = []

    class Opener:
        expected: set[int] = set()

        def __call__(self, url: str, width: int = 1000, height: int = 720) -> Tab:
            tab = Tab(browser, width, height)
            opened.append(tab)
            tab.page.goto(f"{url}/")
            return tab

    opener = Opener()
    yield opener
    for tab in opened:
        tab.context.close()
        unexpected = [e for e in tab.errors if not ((m := HTTP_ERROR.match(e))
                                                   and int(m.group(1)) in opener.expected)]
        assert not unexpected, unexpected


def ask(page, text: str, *, max_tokens: int, seed: int | str = "", temperature: float = 0.8,
        top_k: int = 50) -> None:
    """Set the controls, type `text` and press Enter (which sends)."""
    page.fill("#temperature", str(temperature))
    page.fill("#top-k", str(top_k))
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#seed", str(seed))
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def answered(page, log: str, count: int) -> str:
    """Waits until `count` answers in `log` (#completions, #chat) have ended (their line of
    figures is written then): the last one's text."""
    expect(page.locator(f"{log} .meta").nth(count - 1)).not_to_be_empty()
    return page.locator(f"{log} .answer").nth(count - 1).text_content()


def api_text(server: Server, **body) -> dict:
    response = server.post("/v1/completions", {"model": "tiny", **body})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


def long_seed(server: Server, prompt: str, max_tokens: int) -> int:
    """A seed whose sample (temperature 0.8, top-k 50, the page's defaults) runs to
    max_tokens: no end of text cuts it short."""
    for seed in range(50):
        if api_text(server, prompt=prompt, max_tokens=max_tokens, seed=seed, temperature=0.8,
                    top_k=50)["finish_reason"] == "length":
            return seed
    raise AssertionError(f"no seed in 0..49 samples {max_tokens} tokens after {prompt!r}")


def record_lengths(page) -> None:
    """From now on window.lengths gets the last answer's length at every change of the DOM."""
    page.evaluate("""() => {
        window.lengths = [];
        const log = document.getElementById("completions");
        new MutationObserver(() => {
            const answers = log.querySelectorAll(".answer");
            if (answers.length) window.lengths.push(answers[answers.length - 1].textContent.length);
        }).observe(log, {subtree: true, childList: true, characterData: true});
    }""")


def parameters(run: Path) -> int:
    """The parameters of the run's latest checkpoint, counted from the header of its
    model.safetensors (a tied weight is stored once), without loading torch."""
    step = (run / "checkpoints" / "latest").read_text().strip()
    with open(run / "checkpoints" / step / "model.safetensors", "rb") as fh:
        header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def test_the_page_needs_no_key_states_the_runs_facts_and_allows_only_itself(keyed, work):
    response = httpx.get(f"{keyed.url}/", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith(
        "text/html")
    policy = response.headers["content-security-policy"]
    nonce = re.search(r"script-src 'nonce-([\w-]+)'", policy).group(1)
    assert "connect-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe" not in policy and f'<script nonce="{nonce}">' in response.text
    assert "http://" not in response.text and "https://" not in response.text  # nothing fetched
    facts = json.loads(re.search(r'<script type="application/json" id="facts">(.*?)</script>',
                                 response.text).group(1))
    run = work / "runs" / "tiny"
    evals = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    val_loss = [r["val_loss"] for r in evals if r["kind"] == "eval"][-1]
    assert facts == {"name": "tiny", "parameters": parameters(run), "step": 20,
                     "val_loss": val_loss, "max_tokens": 32}
    # everything else still asks for the key, POST / included
    for method, path in (("GET", "/v1/models"), ("GET", "/health"), ("POST", "/")):
        assert httpx.request(method, f"{keyed.url}{path}", timeout=30).status_code == 401


def test_a_prompt_streams_in_pieces_to_the_apis_text_for_its_seed(server, tabs):
    tab = tabs(server.url)
    page = tab.page
    expect(page.locator("#model-name")).to_have_text("tiny")
    chips = page.locator("#model-facts li").all_text_contents()
    assert re.fullmatch(r"\d+(\.\d)?K parameters", chips[0]) and chips[1] == "step 20"
    assert re.fullmatch(r"val loss \d+\.\d{3}", chips[2]), chips
    seed = long_seed(server, "def ", 24)
    record_lengths(page)
    ask(page, "def ", max_tokens=24, seed=seed)
    text = answered(page, "#completions", 1)
    lengths = page.evaluate("window.lengths")
    grown = [n for i, n in enumerate(lengths) if n and (i == 0 or n != lengths[i - 1])]
    assert len(grown) >= 3 and grown == sorted(set(grown)), lengths  # several growing pieces
    assert grown[-1] == len(text)
    whole = api_text(server, prompt="def ", max_tokens=24, temperature=0.8, top_k=50, seed=seed)
    assert text == whole["text"]
    assert tab.bodies("/v1/completions")[0]["stream"] is True
    expect(page.locator("#status")).to_have_attribute("data-state", "done")
    tokens = int(page.locator("#status").get_attribute("data-tokens"))
    assert 0 < tokens <= 24 and page.locator("#send").is_enabled()


def test_stop_ends_a_generation_at_once(server, tabs):
    seed = long_seed(server, "x", 32)  # the longest answer the context allows
    full = api_text(server, prompt="x", max_tokens=32, seed=seed, temperature=0.8,
                    top_k=50)["text"]
    page = tabs(server.url).page
    # the stop button is pressed the moment the first text shows: a person is slower than the
    # tiny model, which writes its 32 tokens in a fraction of a second
    page.evaluate("""() => {
        const log = document.getElementById("completions");
        const observer = new MutationObserver(() => {
            if (log.querySelector(".answer")?.textContent) {
                observer.disconnect();
                document.getElementById("stop").click();
            }
        });
        observer.observe(log, {subtree: true, childList: true, characterData: true});
    }""")
    ask(page, "x", max_tokens=32, seed=seed)
    expect(page.locator("#status")).to_have_attribute("data-state", "stopped")
    text = answered(page, "#completions", 1)
    assert text and full.startswith(text) and len(text) < len(full), (text, full)
    expect(page.locator("#completions .meta")).to_contain_text("stopped")
    assert page.locator("#send").is_enabled() and page.locator("#stop").is_disabled()


def test_chat_sends_the_conversation_and_a_new_chat_forgets_it(server, tabs):
    tab = tabs(server.url)
    page = tab.page
    page.click("#mode-chat")
    expect(page.locator("#new-chat")).to_have_text("New chat")
    ask(page, "def", max_tokens=4, seed=2)
    first = answered(page, "#chat", 1)
    expect(page.locator("#prompt")).to_have_value("")  # a chat's box empties once sent
    ask(page, "class", max_tokens=4, seed=3)
    answered(page, "#chat", 2)
    sent = tab.bodies("/v1/chat/completions")
    assert sent[0]["messages"] == [{"role": "user", "content": "def"}]
    assert sent[1]["messages"] == [{"role": "user", "content": "def"},
                                   {"role": "assistant", "content": first},
                                   {"role": "user", "content": "class"}]
    page.click("#new-chat")
    expect(page.locator("#chat .exchange")).to_have_count(0)
    ask(page, "x", max_tokens=4, seed=4)
    answered(page, "#chat", 1)
    assert tab.bodies("/v1/chat/completions")[2]["messages"] == [{"role": "user",
                                                                  "content": "x"}]


def test_a_401_brings_up_the_key_field_and_the_key_then_works(keyed, tabs):
    tabs.expected = {401}
    tab = tabs(keyed.url)
    page = tab.page
    expect(page.locator("#key-row")).to_be_hidden()
    ask(page, "def ", max_tokens=8, seed=1)
    expect(page.locator("#error")).to_contain_text("needs an API key")
    expect(page.locator("#key-row")).to_be_visible()
    expect(page.locator("#completions .completion")).to_have_count(0)  # nothing half-shown
    page.fill("#api-key", "wrong")
    page.click("#send")
    expect(page.locator("#error")).to_contain_text("refused this API key")
    page.fill("#api-key", KEY)
    page.click("#send")
    assert answered(page, "#completions", 1)
    expect(page.locator("#error")).to_be_hidden()
    keys = [r.headers.get("authorization") for r in tab.requests]
    assert keys == [None, "Bearer wrong", f"Bearer {KEY}"]


def test_bad_input_is_a_readable_message(server, tabs):
    tabs.expected = {400}
    tab = tabs(server.url)
    page = tab.page
    ask(page, "def", max_tokens=999)  # past the context: refused before any request
    expect(page.locator("#error")).to_have_text("max tokens must be a whole number from 1 to 32")
    ask(page, "def", max_tokens=4, seed="-3")
    expect(page.locator("#error")).to_contain_text("seed must be empty (random)")
    assert tab.requests == []
    ask(page, "\u2603", max_tokens=4)  # not in the char tokenizer's vocabulary: the API's 400
    expect(page.locator("#error")).to_contain_text("prompt")
    assert "{" not in page.locator("#error").text_content()  # the message, not the JSON
    expect(page.locator("#prompt")).to_have_value("\u2603")  # left to mend and send again


def test_a_hostile_run_name_is_shown_as_text_and_runs_nothing(hostile, tabs):
    html = httpx.get(f"{hostile.url}/", timeout=30).text
    assert "<img" not in html and "<script>window" not in html
    page = tabs(hostile.url).page
    expect(page.locator("#model-name")).to_have_text(HOSTILE)
    assert page.title() == f"{HOSTILE} · lmforge"
    assert page.evaluate("() => [window.pwned, document.images.length, document.scripts.length]"
                         ) == [None, 0, 2]
    expect(page.locator("#model-facts li").last).to_have_text("no evaluation")
    ask(page, "def", max_tokens=6, seed=5)  # requests name the model as the server does
    assert answered(page, "#completions", 1)


def test_the_page_fits_a_phone_and_a_screenshot_is_a_png(server, tabs, tmp_path):
    page = tabs(server.url, width=390, height=780).page
    ask(page, "class ", max_tokens=20, seed=9)
    answered(page, "#completions", 1)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # no sideways scroll
    for control in ("#send", "#stop", "#prompt", "#max-tokens", "#seed", "#mode-chat"):
        box = page.locator(control).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, control
    shot = tmp_path / "page.png"
    page.screenshot(path=shot)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 5_000
    assert struct.unpack(">II", data[16:24]) == (390, 780)
