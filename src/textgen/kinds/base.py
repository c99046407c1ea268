"""What a task kind supplies: one class per kind, one instance (``KIND``) in its module."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from fastapi import FastAPI
    from torch import nn

    from textgen.checkpoint import Checkpoint
    from textgen.config import ModelSpec, RunConfig
    from textgen.serve.routes import Served, ServeOptions
    from textgen.training.setup import Setup


class Kind:
    """A kind of model textgen trains, loads, runs from the CLI and serves."""

    name: str  # the config's ``task`` and a loaded model's ``kind``
    noun: str  # "language model": what messages call it
    command: str  # the CLI command that runs it (generate, translate)
    usage: str  # what to run instead when another command is given one of these
    route: str  # the server route that answers for it
    inputs_field: str  # the data setting that names its training files (corpus, pairs); --FIELD in textgen eval
    eval_usage: str  # how textgen eval scores one, for a model given the other kind's input
    has_source: bool  # a source side with a tokenizer of its own (unless shared)
    default_run: str  # the run directory's name when no input file names it
    not_exported: str | None = None  # why textgen export refuses it (None: it exports)

    @property
    def title(self) -> str:
        """ "a language model", "a translation model"."""
        return f"a {self.noun}"

    def inputs(self, config: RunConfig) -> list[str]:
        """The files, folders or globs the run trains on, as given."""
        return getattr(config.data, self.inputs_field)

    def check(self, config: RunConfig) -> None:
        """The rules this kind adds to a run config (ConfigError naming the setting)."""
        raise NotImplementedError

    def recipe(
        self, config: RunConfig, explicit: set[str], out: Path, device: torch.device, log: Callable[[str], None]
    ) -> RunConfig:
        """A new run's config with the settings the user left unset chosen for its data (none by default)."""
        return config

    def prepare(
        self,
        config: RunConfig,
        out: Path,
        latest: Path | None,
        device: torch.device,
        log: Callable[[str], None],
        shared: dict[str, Any] | None = None,
    ) -> Setup:
        """Read and encode the data under ``out`` (or, with rank 0's ``shared`` tokenizers, read what it
        wrote), build the model on ``device`` and the training task; resumes from ``latest``'s tokenizers."""
        raise NotImplementedError

    def build_model(self, spec: ModelSpec) -> nn.Module:
        """A freshly initialised model of this kind and shape (on the current default device)."""
        raise NotImplementedError

    def wrap(self, checkpoint: Checkpoint) -> Any:
        """The inference object ``textgen.load`` returns for a checkpoint of this kind."""
        raise NotImplementedError

    def evaluate(self, model: Any, args: argparse.Namespace) -> tuple[dict[str, float], str]:
        """``textgen eval``: the figures (for --json) and the one-line report of ``model`` on its input."""
        raise NotImplementedError

    def serve(self, name: str, model: Any, options: ServeOptions) -> Served:
        """A loaded model of this kind under ``name``, ready for its route."""
        raise NotImplementedError

    def add_route(self, app: FastAPI) -> None:
        """Add this kind's route (``self.route``) to the server app."""
        raise NotImplementedError
