"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): an LSTM whose gates read the input only,
normalised so that the two gates sum to one (time-independent scale):

    f_t = sigmoid(W_f x_t)   i_t = sigmoid(W_i x_t)   h~_t = W_h x_t
    f'_t, i'_t = f_t / (f_t + i_t), i_t / (f_t + i_t)
    h_t = f'_t * h_{t-1} + i'_t * h~_t

log f' and log i' come from softplus differences (no division), then the update is the linear
recurrence of ``models/scan.py``: a parallel scan in training, one update per token in decoding.
The mixer of pre-norm residual blocks with a feed-forward (``models/blocks.py``); f' is kept at
least e^-8 (the scan's floor) in both forms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from textgen.config import ModelSpec
from textgen.models.blocks import BlockLM, Mixer
from textgen.models.scan import LOG_DECAY_FLOOR, ScanMixer


class MinLSTM(ScanMixer):
    inputs = 3  # forget and input pre-activations, and the candidate h~

    def gates(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kf, ki, candidate = pre.chunk(3, dim=-1)  # (..., H) each
        diff = F.softplus(-kf) - F.softplus(-ki)  # log(i / f)
        log_forget = (-F.softplus(diff)).clamp_min(LOG_DECAY_FLOOR)  # log f'
        return log_forget, torch.exp(-F.softplus(-diff)) * candidate  # i' * h~


class MinLSTMLM(BlockLM):
    kind = "MinLSTM"

    def make_mixer(self, cfg: ModelSpec, layer: int) -> Mixer:
        return MinLSTM(cfg.hidden_size)
