"""Where a model runs: ``auto`` is CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from textgen.config import DEVICES
from textgen.errors import ConfigError


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """The device ``name`` (auto, cpu or cuda) means here; with ``local_rank`` (a torchrun process), its own GPU."""
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if local_rank is None:
        return torch.device("cuda")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK {local_rank} has no GPU of its own: this machine has {torch.cuda.device_count()}; "
            "lower --nproc-per-node"
        )
    return torch.device("cuda", local_rank)
