"""Settings for the whole test session."""

import os

import pytest


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
