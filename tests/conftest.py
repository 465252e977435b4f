"""Settings for the whole test session."""

import os

import pytest
from helpers import STDLIB

from lmforge.config import TokenizerConfig
from lmforge.data.prepare import prepare


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Downloads and the MFU probe's peak figure go to a cache of the session's own (the CLI
    subprocesses inherit it), never into the user's ~/.cache/lmforge."""
    old = os.environ.get("LMFORGE_CACHE")
    os.environ["LMFORGE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("LMFORGE_CACHE", None)
    else:
        os.environ["LMFORGE_CACHE"] = old


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """The standard library's json package prepared at character level: the small real
    corpus of the in-process training tests (a module may define its own `dataset`)."""
    out = tmp_path_factory.mktemp("data") / "json"
    prepare([str(STDLIB / "json" / "*.py")], out, tokenizer=TokenizerConfig("char"), log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def transformers():
    """The transformers package, offline (nothing downloads; the tests build their own model
    directories), or a skip where it is not installed."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # before the import: huggingface_hub reads it once
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield pytest.importorskip("transformers")
