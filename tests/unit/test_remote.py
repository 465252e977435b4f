"""Remote sources against a local HTTP server, a local HF dataset and a tiny nltk_data tree.

Nothing here reaches the internet: the server listens on 127.0.0.1, the HF hub is put in
offline mode, and NLTK's connectivity probe is replaced.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nltk
import nltk.corpus
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data import remote, sources
from lmforge.data.document import TRAIN, VAL, SourceOptions
from lmforge.errors import DataError

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- a local HTTP server

@dataclass
class Served:
    files: dict[str, bytes] = field(default_factory=dict)
    drops: list[int] = field(default_factory=list)  # per request in turn: send only N bytes
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)
    base: str = ""

    def url(self, path: str) -> str:
        return self.base + path


class Handler(BaseHTTPRequestHandler):
    served: Served

    def log_message(self, *args: object) -> None:  # keep pytest's output clean
        pass

    def do_GET(self) -> None:
        served = self.served
        served.requests.append((self.path, self.headers.get("Range")))
        if self.path not in served.files:
            self.send_error(404)
            return
        data = served.files[self.path]
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not served.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if served.drops:
            body = body[:served.drops.pop(0)]  # then the connection closes mid-file
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[Served]:
    served = Served()
    handler = type("BoundHandler", (Handler,), {"served": served})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    served.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield served
    httpd.shutdown()
    httpd.server_close()


DATA = bytes(range(256)) * 1200  # 300 KiB, enough to cut in the middle


# ---------------------------------------------------------------- download

def test_download_then_cache_hit_without_request(server: Served, tmp_path: Path) -> None:
    server.files["/d/corpus.txt"] = DATA
    url = server.url("/d/corpus.txt")
    path = remote.download(url, cache_dir=tmp_path, sha256=sha(DATA))
    assert path.read_bytes() == DATA
    assert path.parent == tmp_path / "downloads"
    assert path.name == f"{sha(url.encode())[:16]}-corpus.txt"
    assert remote.download(url, cache_dir=tmp_path, sha256=sha(DATA)) == path
    assert len(server.requests) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no .part left


def test_checksum_mismatch_deletes_and_names_both_digests(server: Served,
                                                          tmp_path: Path) -> None:
    server.files["/bad.txt"] = DATA
    url = server.url("/bad.txt")
    with pytest.raises(DataError) as info:
        remote.download(url, cache_dir=tmp_path, sha256="0" * 64)
    assert url in str(info.value) and "0" * 64 in str(info.value)
    assert sha(DATA) in str(info.value)
    assert list((tmp_path / "downloads").iterdir()) == []


def test_corrupt_cached_file_is_downloaded_again(server: Served, tmp_path: Path) -> None:
    server.files["/c.txt"] = DATA
    url = server.url("/c.txt")
    cached = remote.download(url, cache_dir=tmp_path)
    cached.write_bytes(b"truncated")
    assert remote.download(url, cache_dir=tmp_path, sha256=sha(DATA)).read_bytes() == DATA
    assert len(server.requests) == 2


def test_connection_lost_mid_file_resumes_with_range(server: Served, tmp_path: Path) -> None:
    server.files["/big.bin"] = DATA
    server.drops = [100_000]
    path = remote.download(server.url("/big.bin"), cache_dir=tmp_path, sha256=sha(DATA))
    assert path.read_bytes() == DATA
    assert server.requests == [("/big.bin", None), ("/big.bin", "bytes=100000-")]


def test_existing_part_is_resumed(server: Served, tmp_path: Path) -> None:
    server.files["/big.bin"] = DATA
    url = server.url("/big.bin")
    dest = tmp_path / "downloads" / f"{sha(url.encode())[:16]}-big.bin"
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(DATA[:12345])
    assert remote.download(url, cache_dir=tmp_path, sha256=sha(DATA)) == dest
    assert dest.read_bytes() == DATA
    assert server.requests == [("/big.bin", "bytes=12345-")]


def test_server_ignoring_range_restarts_from_zero(server: Served, tmp_path: Path) -> None:
    server.files["/big.bin"] = DATA
    server.ignore_range = True
    url = server.url("/big.bin")
    dest = tmp_path / "downloads" / f"{sha(url.encode())[:16]}-big.bin"
    dest.parent.mkdir(parents=True)
    # A stale part that is not a prefix of the file: appending the full body would corrupt it.
    dest.with_name(dest.name + ".part").write_bytes(b"stale bytes")
    assert remote.download(url, cache_dir=tmp_path, sha256=sha(DATA)).read_bytes() == DATA
    assert server.requests == [("/big.bin", "bytes=11-")]


def test_connection_lost_every_time_keeps_part(server: Served, tmp_path: Path) -> None:
    server.files["/big.bin"] = DATA
    server.drops = [1000, 1000, 1000]
    with pytest.raises(DataError, match="closed early 3 times"):
        remote.download(server.url("/big.bin"), cache_dir=tmp_path)
    [part] = (tmp_path / "downloads").iterdir()
    assert part.name.endswith(".part") and part.read_bytes() == DATA[:3000]


def test_http_404_is_a_data_error(server: Served, tmp_path: Path) -> None:
    url = server.url("/missing.txt")
    with pytest.raises(DataError) as info:
        remote.download(url, cache_dir=tmp_path)
    message = str(info.value)
    assert message.startswith(f"could not download {url} (HTTP Error 404")
    assert "download it yourself and pass the file path" in message


def test_loopback_bypasses_proxy_settings(server: Served, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("no_proxy", "")
    server.files["/p.txt"] = b"direct"
    assert remote.download(server.url("/p.txt"), cache_dir=tmp_path).read_bytes() == b"direct"


# ---------------------------------------------------------------- URLs and named datasets

def test_iter_url_reads_the_download_with_url_ids(server: Served, tmp_path: Path) -> None:
    server.files["/texts/input.txt"] = "héllo\nworld\n".encode()
    url = server.url("/texts/input.txt")
    [doc] = sources.iter_documents(url, SourceOptions(cache_dir=tmp_path))
    assert doc.text == "héllo\nworld\n"
    assert doc.id == url


def test_a_url_is_downloaded_once(server: Served, tmp_path: Path) -> None:

    server.files["/a.txt"] = b"alpha"
    url = server.url("/a.txt")
    options = SourceOptions(cache_dir=tmp_path)
    first = list(sources.iter_documents(url, options))
    assert list(sources.iter_documents(url, options)) == first
    assert len(server.requests) == 1 and remote.fetch_url(url, options).read_bytes() == b"alpha"


def test_iter_url_jsonl_gz_read_by_its_suffix(server: Served, tmp_path: Path) -> None:
    rows = [{"text": "first", "id": "x", "lang": "en"}, {"text": "second"}]
    server.files["/dump/rows.jsonl.gz"] = gzip.compress(
        "".join(json.dumps(row) + "\n" for row in rows).encode())
    url = server.url("/dump/rows.jsonl.gz")
    docs = list(sources.iter_documents(url, SourceOptions(cache_dir=tmp_path)))
    assert [(d.id, d.text) for d in docs] == [(f"{url}:x", "first"), (f"{url}:2", "second")]
    assert docs[0].meta["lang"] == "en" and docs[0].meta["source"] == url


def test_tinyshakespeare_through_a_mirror(server: Served, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} not present")
    data = SHAKESPEARE.read_bytes()
    assert sha(data) == remote.NAMED_DATASETS["tinyshakespeare"].sha256
    server.files["/input.txt"] = data
    monkeypatch.setenv("LMFORGE_URL_TINYSHAKESPEARE", server.url("/input.txt"))
    options = SourceOptions(cache_dir=tmp_path)
    [doc] = sources.iter_documents("tinyshakespeare", options)
    assert doc.text == data.decode() and doc.id == "tinyshakespeare"
    [again] = sources.iter_documents("tinyshakespeare", options)
    assert again == doc and len(server.requests) == 1


def test_tinyshakespeare_from_a_seeded_cache(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} not present")
    monkeypatch.setenv("LMFORGE_URL_TINYSHAKESPEARE", "http://127.0.0.1:9/unreachable")
    options = SourceOptions(cache_dir=tmp_path)
    with pytest.raises(DataError) as info:
        list(sources.iter_documents("tinyshakespeare", options))
    # The message names the path to copy the file to; copying it there is enough.
    seeded = Path(re.search(r"copy tinyshakespeare\.txt to (\S+)$", str(info.value))[1])
    assert seeded.parent == tmp_path / "downloads"
    shutil.copyfile(SHAKESPEARE, seeded)
    [doc] = sources.iter_documents("tinyshakespeare", options)
    assert len(doc.text) == 1_115_394


def test_unknown_named_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="known: tinyshakespeare"):
        remote.fetch_named("tinyshakespear", SourceOptions(cache_dir=tmp_path))


@pytest.mark.parametrize("url, message", [
    ("http://[::1", r"is not a valid URL \(Invalid IPv6 URL\)"),
    ("http://[::1]:99999/a.txt", r"is not a valid URL \(Port out of range"),
    ("http://host:port/a.txt", r"is not a valid URL \(Port could not be cast"),
    ("https://", "needs http:// or https://, a host"),
    ("http://:80/a", "needs http:// or https://, a host"),
    ("http://a b/c", "holds a space or a control character"),
    ("http://a/b\nc", "holds a space or a control character"),
])
def test_a_malformed_url_is_one_line(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as err:
        list(sources.iter_documents(url, SourceOptions(cache_dir=tmp_path)))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "downloads").exists()  # refused before anything is written


@settings(max_examples=200, deadline=None)
@given(rest=st.text(st.characters(blacklist_categories=["Cs"]), max_size=30))
def test_any_url_is_taken_apart_or_refused_in_one_line(rest: str) -> None:
    for url in ("http://" + rest, "https://[" + rest, "http://h:" + rest):
        try:
            remote.check_url(url)
        except DataError as err:
            assert "\n" not in str(err)
        else:  # what check_url lets through, urllib and the cache can take apart
            remote._cache_path(url, Path("/cache"), None)
            assert remote._opener(url) is not None


# ---------------------------------------------------------------- Hugging Face datasets

@pytest.fixture
def hf_offline(monkeypatch: pytest.MonkeyPatch,
               tmp_path_factory: pytest.TempPathFactory) -> None:
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Both libraries read the variables once, at import; set what they read.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    # Even streaming leaves lock files in the datasets cache: keep them out of the home dir.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf"))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_hf_local_directory_maps_splits(hf_offline: None, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 1, "tags": ["x"]},
                                           {"text": "b", "label": 2, "tags": []}])
    write_jsonl(tmp_path / "validation.jsonl", [{"text": "c", "label": 3, "tags": ["y"]}])
    docs = list(remote.iter_hf(str(tmp_path), None, SourceOptions()))
    got = {d.id: (d.text, d.meta["split"], d.meta["label"], d.meta["tags"]) for d in docs}
    assert got == {f"hf:{tmp_path}:train:0": ("a", TRAIN, 1, ["x"]),
                   f"hf:{tmp_path}:train:1": ("b", TRAIN, 2, []),
                   f"hf:{tmp_path}:validation:0": ("c", VAL, 3, ["y"])}


def test_hf_one_split_leaves_the_split_to_prepare(hf_offline: None, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"body": "a"}])
    write_jsonl(tmp_path / "validation.jsonl", [{"body": "b"}, {"body": "c"}])
    options = SourceOptions(text_field="body", split="validation")
    docs = list(remote.iter_hf(str(tmp_path), None, options))
    assert [d.text for d in docs] == ["b", "c"]
    assert all("split" not in d.meta for d in docs)


def test_hf_missing_column_lists_the_columns(hf_offline: None, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"content": "a", "label": 1}])
    with pytest.raises(DataError, match=r"no column 'text' \(columns: content, label\)"):
        list(remote.iter_hf(str(tmp_path), None, SourceOptions()))


def test_hf_malformed_file_is_a_data_error(hf_offline: None, tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n{"text": broken\n')
    with pytest.raises(DataError, match="JSON parse error"):
        list(remote.iter_hf(str(tmp_path), None, SourceOptions()))


def test_hf_unreachable_hub_dataset(hf_offline: None) -> None:
    with pytest.raises(DataError) as info:
        list(remote.iter_hf("lmforge-test/no-such-dataset", None, SourceOptions()))
    message = str(info.value)
    assert "'lmforge-test/no-such-dataset'" in message and "HF_DATASETS_OFFLINE" in message
    assert "\n" not in message


def test_hf_without_datasets_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(DataError, match=r"pip install 'lmforge\[hf\]'"):
        list(remote.iter_hf("anything", None, SourceOptions()))


# ---------------------------------------------------------------- NLTK corpora

@pytest.fixture
def nltk_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An nltk_data directory that NLTK alone searches, with no corpus loaded beforehand."""
    root = tmp_path / "nltk_data"
    (root / "corpora").mkdir(parents=True)
    monkeypatch.setattr(nltk.data, "path", [str(root)])
    # The module-level loaders turn into readers on first use and keep their root; unload
    # them so each test finds its own tree, and leave them pristine for the next test.
    names = ("gutenberg", "reuters")
    for name in names:
        getattr(nltk.corpus, name)._unload()

    def offline(url: str, timeout_s: float = 3.0) -> bool:
        return False

    monkeypatch.setattr(remote, "_online", offline)
    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("tried to download"))
    yield root
    for name in names:
        getattr(nltk.corpus, name)._unload()


def test_nltk_gutenberg(nltk_data: Path) -> None:
    corpus = nltk_data / "corpora" / "gutenberg"
    corpus.mkdir()
    (corpus / "austen-emma.txt").write_bytes("Emma Woodhouse, café\n".encode("latin1"))
    (corpus / "blake-poems.txt").write_bytes(b"Tyger Tyger\n")
    (corpus / "README").write_bytes(b"not a text of the corpus")
    docs = list(remote.iter_nltk("gutenberg", SourceOptions()))
    assert [(d.id, d.text, d.meta) for d in docs] == [
        ("nltk:gutenberg:austen-emma.txt", "Emma Woodhouse, café\n",
         {"fileid": "austen-emma.txt"}),
        ("nltk:gutenberg:blake-poems.txt", "Tyger Tyger\n", {"fileid": "blake-poems.txt"}),
    ]


def make_reuters(nltk_data: Path) -> None:
    corpus = nltk_data / "corpora" / "reuters"
    (corpus / "training").mkdir(parents=True)
    (corpus / "test").mkdir()
    (corpus / "training" / "1").write_text("COCOA EXPORTS RISE\n")
    (corpus / "training" / "5").write_text("GRAIN AND CORN\n")
    (corpus / "test" / "2").write_text("COCOA FALLS\n")
    (corpus / "cats.txt").write_text("training/1 cocoa\ntraining/5 grain corn\ntest/2 cocoa\n")


def test_nltk_reuters_modapte(nltk_data: Path) -> None:
    make_reuters(nltk_data)
    docs = list(remote.iter_nltk("reuters", SourceOptions(split="modapte")))
    assert [(d.id, d.meta["split"], d.meta["categories"]) for d in docs] == [
        ("nltk:reuters:test/2", VAL, ["cocoa"]),
        ("nltk:reuters:training/1", TRAIN, ["cocoa"]),
        ("nltk:reuters:training/5", TRAIN, ["corn", "grain"]),
    ]
    assert docs[0].text == "COCOA FALLS\n"


def test_nltk_reuters_without_split_leaves_it_to_prepare(nltk_data: Path) -> None:
    make_reuters(nltk_data)
    docs = list(remote.iter_nltk("reuters", SourceOptions()))
    assert len(docs) == 3 and all("split" not in d.meta for d in docs)
    with pytest.raises(DataError, match="'modapte'"):
        list(remote.iter_nltk("reuters", SourceOptions(split="lewis")))


def test_nltk_missing_corpus_says_how_to_install(nltk_data: Path) -> None:
    with pytest.raises(DataError) as info:
        list(remote.iter_nltk("gutenberg", SourceOptions()))
    message = str(info.value)
    assert "python -m nltk.downloader gutenberg" in message
    assert str(nltk_data) in message


def test_nltk_unknown_corpus_suggests_names(nltk_data: Path) -> None:
    with pytest.raises(DataError, match="did you mean gutenberg"):
        list(remote.iter_nltk("gutenburg", SourceOptions()))


def test_online_probe_answers_fast(server: Served) -> None:
    assert remote._online(server.base)
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert not remote._online(f"http://127.0.0.1:{port}")
