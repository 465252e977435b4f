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
    if path.is_file():
        return path
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


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err}); fix the file") from None
