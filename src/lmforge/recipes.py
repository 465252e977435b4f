"""Recipes: the TOML files lmforge ships in configs/ (installed as lmforge.configs), found by
name, and any TOML file a user gives by path."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError


def recipe_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("lmforge.configs").iterdir()
                  if p.name.endswith(".toml"))


def recipe_path(name_or_path: str) -> Path:
    """A recipe given as a path to a TOML file, or by name from the recipes lmforge ships."""
    path = Path(name_or_path)
    try:
        if path.is_file():
            return path
    except OSError as err:  # a name too long, a directory on the way that cannot be entered
        raise ConfigError(f"cannot read the config file {name_or_path} "
                          f"({err.strerror or err}); give a TOML file or one of: "
                          f"{', '.join(recipe_names())}") from None
    if path.suffix == ".toml" or "/" in name_or_path:
        packaged = resources.files("lmforge.configs") / path.name
        if not path.exists() and packaged.is_file():
            return Path(str(packaged))
        raise ConfigError(f"config file not found: {name_or_path}; "
                          f"give a TOML file or one of: {', '.join(recipe_names())}")
    packaged = resources.files("lmforge.configs") / f"{name_or_path}.toml"
    if packaged.is_file():
        return Path(str(packaged))
    raise ConfigError(f"no recipe named '{name_or_path}'; choose one of: {', '.join(recipe_names())} "
                      "or give a path to a TOML file")


def read_toml(path: Path, *, fix: str = "fix the file") -> dict[str, Any]:
    """The tables of a TOML file; a file that is unreadable, not UTF-8 or not TOML (nested too
    deep, an integer too long for Python) is one ConfigError that ends in `fix`."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read {path} ({err.strerror or err}); {fix}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not valid UTF-8 (byte {err.start:,} is not text); "
                          f"{fix}") from None
    try:
        return tomllib.loads(text)
    except (ValueError, RecursionError) as err:  # TOMLDecodeError is a ValueError
        reason = " ".join(str(err).split()) if not isinstance(err, RecursionError) \
            else "nested too deeply"
        raise ConfigError(f"{path} is not valid TOML ({reason}); {fix}") from None
