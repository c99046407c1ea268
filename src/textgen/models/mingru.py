"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): a GRU whose gate reads the input only.

    z_t = sigmoid(W_z x_t)          h~_t = W_h x_t
    h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

With no h_{t-1} inside the gate, the update is a linear recurrence in h, trained as a parallel scan
over the window (``models/scan.py``) and decoded one step at a time by the same update. As in the
paper's language models, it is the mixer of pre-norm residual blocks with a feed-forward
(``models/blocks.py``). h~ needs no positivity (the paper's g(.)) since the scan takes any sign.
The forget factor 1 - z is kept at least e^-8 (the scan's floor) in both forms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from textgen.config import ModelSpec
from textgen.models.blocks import BlockLM, Mixer
from textgen.models.scan import LOG_DECAY_FLOOR, ScanMixer


class MinGRU(ScanMixer):
    inputs = 2  # the gate's pre-activation k and the candidate h~

    def gates(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, candidate = pre.chunk(2, dim=-1)  # (..., H) each
        log_keep = (-F.softplus(k)).clamp_min(LOG_DECAY_FLOOR)  # log(1 - z)
        return log_keep, torch.sigmoid(k) * candidate


class MinGRULM(BlockLM):
    kind = "MinGRU"

    def make_mixer(self, cfg: ModelSpec, layer: int) -> Mixer:
        return MinGRU(cfg.hidden_size)
