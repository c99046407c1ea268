"""The optimizer a training config names."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from textgen.config import TrainConfig

# Optimizers run fused on CUDA, where the kernel skips a step on the device (found_inf). Not SGD: its fused
# kernel leaves the momentum buffer uninitialised when the first step is skipped (PyTorch 2.13).
FUSED = ("adam", "adamw")


def make_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names; ``fused`` (Adam and AdamW) runs each update as one kernel that can
    also skip itself on the device, which the trainer uses on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    kw: dict[str, Any] = {"fused": True} if fused and cfg.optimizer in FUSED else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw)
    if cfg.optimizer == "rmsprop":  # alpha 0.9 as Keras' RMSprop (rho), which the tutorials use
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
