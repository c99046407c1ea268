"""Task kinds, registered once: a language model (``lm``) and a translation model (``translate``).

A kind (``base.Kind``) supplies everything that differs between them: its config rules, its data
preparation and training task, its model, its inference wrapper, its CLI command and its server
route. The rest of textgen asks the registry for the kind of a config (``kind_of``) or of a loaded
model (``get_kind(model.kind)``) and never compares kind names itself. Kind modules import torch
only inside their methods, so the registry costs ``textgen --help`` nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from textgen.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    import torch
    from torch import nn

    from textgen.config import RunConfig
    from textgen.kinds.base import Kind

REGISTRY = {"lm": "textgen.kinds.lm", "translate": "textgen.kinds.translate"}  # name -> the module whose KIND it is
KIND_NAMES = tuple(REGISTRY)


def get_kind(name: Any) -> Kind:
    """The kind called ``name``; anything else is a ConfigError naming the kinds there are."""
    module = REGISTRY.get(name) if isinstance(name, str) else None
    if module is None:
        hint = did_you_mean(name, KIND_NAMES) if isinstance(name, str) else ""
        raise ConfigError(f"unknown model kind {name!r}{hint}: textgen knows {', '.join(KIND_NAMES)}")
    return importlib.import_module(module).KIND


def kind_of(config: RunConfig) -> Kind:
    """The kind of model a run config trains (its ``task``)."""
    return get_kind(config.model.task)


def all_kinds() -> list[Kind]:
    return [get_kind(name) for name in KIND_NAMES]


def model_for(config: RunConfig, vocab_size: int, device: torch.device | str | None = None) -> nn.Module:
    """A freshly initialised model of the shape ``config`` describes, for a vocabulary of ``vocab_size``."""
    import torch

    from textgen.config import RunSpec

    with torch.device(device or "cpu"):
        return kind_of(config).build_model(RunSpec(vocab_size=vocab_size).model(config.model))


def parameter_count(config: RunConfig, vocab_size: int) -> int:
    """How many parameters that model has (built on the meta device: no memory, no initialisation)."""
    return sum(p.numel() for p in model_for(config, vocab_size, "meta").parameters())
