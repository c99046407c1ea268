"""What a task kind's ``prepare`` hands the trainer, and the helpers every kind's set-up shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from textgen.checkpoint import read_config
from textgen.config import ModelSpec, RunConfig, RunSpec
from textgen.data.tokenizers import AnyTokenizer, tokenizer_to_json
from textgen.errors import ConfigError
from textgen.kinds.base import Kind
from textgen.training.tasks import Task
from textgen.training.trainer import Callback


@dataclass
class Setup:
    """A task ready to train: its model, tokenizers, a line about the data, its own callbacks, and what
    set-up derived from the data (``spec``, saved with every checkpoint)."""

    model: nn.Module
    task: Task
    tokenizer: AnyTokenizer
    source_tokenizer: AnyTokenizer | None
    summary: str
    callbacks: Callable[[int | None], list[Callback]]  # given the step a resumed run continues from
    spec: RunSpec

    def tokenizers_json(self) -> dict[str, Any]:
        """The tokenizers as JSON, for the other processes of a torchrun to build the same setup."""
        source = self.source_tokenizer
        return {"target": tokenizer_to_json(self.tokenizer), "source": tokenizer_to_json(source) if source else None}


def absolute(paths: list[str]) -> list[str]:
    """Input paths made absolute ('-', stdin, stays), so a resumed run finds them from any directory."""
    return [p if p == "-" else str(Path(p).expanduser().absolute()) for p in paths]


def run_inputs(kind: Kind, config: RunConfig, latest: Path | None) -> list[str]:
    """The input files to read: as the user gave them, or, when resuming, as the run saved them."""
    return read_config(latest)[1].inputs if latest is not None else kind.inputs(config)


def build_on(device: torch.device, kind: Kind, spec: ModelSpec) -> nn.Module:
    """``kind``'s model of shape ``spec`` on ``device``; running out of memory is a ConfigError saying what to lower."""
    try:
        return kind.build_model(spec).to(device)
    except (MemoryError, torch.OutOfMemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError | torch.OutOfMemoryError) and "alloc" not in str(e):
            raise
        raise ConfigError(
            f"the model does not fit in {device} memory; lower --hidden-size, --layers or --embedding-dim"
        ) from None
