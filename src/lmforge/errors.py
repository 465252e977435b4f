"""Errors that mean the user asked for something that cannot be done.

The CLI turns any LmforgeError into one line on stderr and exit code 2; anything
else is a bug in lmforge and keeps its traceback.
"""


class LmforgeError(Exception):
    """A problem with the user's input, with a message that names the fix."""

    reported = False  # said on stderr already (console.report_error): not to be said again


class ConfigError(LmforgeError):
    """An unknown config key, a value of the wrong type, or an impossible combination."""


class DataError(LmforgeError):
    """Missing, empty or corrupt corpora, shards or tokenizers."""


class CheckpointError(LmforgeError):
    """A run directory without checkpoints, or a checkpoint that does not fit."""
