"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


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
