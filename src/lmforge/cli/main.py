"""The `lmforge` command: the table of verbs, and the one place where an LmforgeError
becomes one line on stderr and exit code 2.

Each verb is a module of this package with HELP (its line in `lmforge --help`), optional
USAGE and DESCRIPTION, OVERRIDES (whether it takes `--section.field=value` config
overrides), optional NAMES (config key → the option the verb gives that field, so that its
errors say what the user typed), `add_arguments(parser)` and `run(args) -> int`. A verb module imports nothing
heavy at the top, so `lmforge --help` is instant; torch and the rest load when it runs.
Adding a verb is one module and one line in VERBS.
"""

from __future__ import annotations

import gc
import sys
from types import ModuleType

from lmforge import __version__
from lmforge.allocator import keep_freed_memory
from lmforge.cli import (
    bench,
    chat,
    compare,
    evaluate,
    export,
    finetune,
    generate,
    predict,
    prepare,
    report,
    serve,
    train,
    verify_resume,
)
from lmforge.cli.options import Parser, collect_overrides
from lmforge.console import report_error
from lmforge.errors import LmforgeError

VERBS: dict[str, ModuleType] = {
    "prepare": prepare,
    "train": train,
    "eval": evaluate,
    "generate": generate,
    "export": export,
    "report": report,
    "bench": bench,
    "compare": compare,
    "verify-resume": verify_resume,
    "finetune": finetune,
    "predict": predict,
    "serve": serve,
    "chat": chat,
}


def build_parser() -> Parser:
    parser = Parser(prog="lmforge", allow_abbrev=False,
                    description="From raw text to a trained language model and back to text.")
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    for name, verb in VERBS.items():
        sub = verbs.add_parser(name, help=verb.HELP, allow_abbrev=False,
                               usage=getattr(verb, "USAGE", None),
                               description=getattr(verb, "DESCRIPTION", None))
        verb.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args, rest = parser.parse_known_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    verb = VERBS[args.verb]
    if rest and not verb.OVERRIDES:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.argv = argv  # the command as given, for a verb that hands it on (train --nproc)
    try:
        names = getattr(verb, "NAMES", None)
        args.overrides = collect_overrides(args, rest, names=names) if verb.OVERRIDES else {}
        return int(verb.run(args))
    except LmforgeError as err:
        report_error(args.verb, err)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130


def console() -> int:
    """The `lmforge` command itself: main() with glibc keeping freed tensor memory for reuse
    (allocator.py), then a quicker way out of the process."""
    keep_freed_memory()
    code = main()
    # Exempt what is alive now from the collector's last passes at interpreter shutdown:
    # over torch's few hundred thousand objects they take half a second on 2 CPU cores, a
    # few percent of a short training run. Shutdown still runs the atexit handlers and
    # flushes the standard streams, and lmforge has closed every file it wrote by now.
    gc.freeze()
    return code

