"""User-facing errors: the CLI prints their message on one line and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TextgenError(Exception):
    """A problem with the user's input or files, explained in one line (never a bug)."""


class CorpusError(TextgenError):
    """The corpus is missing, empty, not UTF-8 or too short."""


class CheckpointError(TextgenError):
    """A checkpoint directory is missing, truncated, corrupt or from an incompatible version."""


class ConfigError(TextgenError):
    """A configuration value is out of range or inconsistent with another."""


class TrainingError(TextgenError):
    """Training cannot go on (its loss or gradients stopped being finite); the last good checkpoint is kept."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to a mistyped ``name``, or nothing."""
    close = difflib.get_close_matches(name, [k for k in known if k != name], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
