"""What every verb's arguments share: one-line usage errors, and the config's fields as
options (`--section.field`, or prepare's own names for the fields it takes), each with the
field's own documentation and default, so an option and its check exist once."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import NoReturn

from lmforge.config import SECTIONS, FieldInfo, coerce, field_infos
from lmforge.console import one_line
from lmforge.errors import ConfigError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line, like every other lmforge error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)}; see `{self.prog} --help`\n")


def _help(info: FieldInfo) -> str:
    choices = f" One of: {', '.join(info.choices)}." if info.choices else ""
    default = f"{info.default!r}" if info.type is str else f"{info.default}"
    return f"{info.doc}{choices} (default: {default})".replace("%", "%%")


def _add(group: argparse._ActionsContainer, flag: str, info: FieldInfo) -> None:
    # No default: only what the user gives becomes an override of the recipe's values.
    group.add_argument(flag, dest=info.key, metavar=info.type.__name__.upper(),
                       default=argparse.SUPPRESS, help=_help(info))


def add_recipe_argument(parser: argparse.ArgumentParser) -> None:
    """The optional RECIPE of the verbs that build a run from one (train, bench, verify-resume)."""
    parser.add_argument("recipe", nargs="?",
                        help="TOML recipe or a shipped recipe name (default: default)")


def add_config_options(parser: argparse.ArgumentParser,
                       sections: list[str] | None = None) -> None:
    """Every field of `sections` (all by default) as --section.name, grouped by section, so
    `lmforge train --help` documents them all."""
    wanted = SECTIONS if sections is None else sections
    groups = {s: parser.add_argument_group(f"[{s}] options") for s in wanted}
    for info in field_infos():
        section = info.key.split(".")[0]
        if section in groups:
            _add(groups[section], f"--{info.key}", info)


def add_prepare_options(parser: argparse.ArgumentParser) -> None:
    """The fields that say how a corpus is prepared, under prepare's own option names
    (--vocab-size for tokenizer.vocab_size, ...), and every [clean] field as --clean.name."""
    for info in field_infos():
        if info.prepare:
            _add(parser, info.prepare, info)
    add_config_options(parser, ["clean"])


def prepare_flags() -> dict[str, str]:
    """config key → prepare's option for it (tokenizer.vocab_size → --vocab-size)."""
    return {info.key: info.prepare for info in field_infos() if info.prepare}


def collect_overrides(args: argparse.Namespace, rest: list[str], *,
                      names: dict[str, str] | None = None) -> dict[str, str]:
    """The config fields set on the command line: those argparse knows (checked now, before
    anything heavy is imported) and the unknown --x.y=z that parse_overrides reports with
    the nearest valid key. `names`: the options a verb gives some fields (prepare's
    --vocab-size for tokenizer.vocab_size), by which its errors name them."""
    with named_as_typed(names or {}):
        known = {k: v for k, v in vars(args).items() if "." in k}
        for key, value in known.items():
            coerce(key, value)
        return {**known, **parse_overrides(rest)}


@contextlib.contextmanager
def named_as_typed(names: dict[str, str]) -> Iterator[None]:
    """A ConfigError raised inside names each field as the option the user typed."""
    try:
        yield
    except ConfigError as err:
        message = str(err)
        for key, option in names.items():
            message = message.replace(key, option)
        raise ConfigError(message) from None


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`--train.max_steps=200` or `--train.max_steps 200` → {'train.max_steps': '200'}."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument '{arg}'; overrides look like --train.max_steps=200")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"--{key} needs a value, like --{key}=VALUE")
            value = args[i + 1]
            i += 1
        key = key.replace("-", "_")
        coerce(key, value)  # unknown keys and bad values fail here, before anything runs
        overrides[key] = value
        i += 1
    return overrides
