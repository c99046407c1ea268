"""A causal dilated convolution stack (WaveNet, ByteNet): each layer sees k inputs spaced d apart.

    y_t = W_out (a_t * sigmoid(g_t)),   [a_t | g_t] = W [x_{t-(k-1)d} | ... | x_{t-d} | x_t] + c

(a gated linear unit over the k taps), with the dilation d = 1, 2, 4, ..., 2^(CYCLE-1) by layer and
then again from 1, so L layers of kernel k see up to 1 + (k - 1) (2^L - 1) tokens. It is the mixer
of pre-norm residual blocks with a feed-forward (``models/blocks.py``).

Its state is what it must remember to continue: each layer's last (k - 1) d inputs, a window
(W, rows, H). Training prepends the carried window to the input and reads all T outputs with one
matrix multiply over the concatenated taps; decoding keeps the window in a buffer, reads its k
taps and shifts it by one, constant time per token.
"""

from __future__ import annotations

import torch
from torch import nn

from textgen.config import ModelSpec
from textgen.models.blocks import BlockLM, Mixer, MixerStep, StepLinear, Window, after_window
from textgen.models.protocol import State

CYCLE = 8  # dilations 1, 2, ..., 128, then again from 1


class CausalConv(Mixer):
    """One gated causal convolution of ``kernel`` taps ``dilation`` apart."""

    def __init__(self, width: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.width, self.kernel, self.dilation = width, kernel, dilation
        self.window = (kernel - 1) * dilation
        self.conv = nn.Linear(kernel * width, 2 * width)
        self.out = nn.Linear(width, width)

    def init_state(self, rows: int, device: torch.device, dtype: torch.dtype) -> State:
        return (torch.zeros(self.window, rows, self.width, device=device, dtype=dtype),)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        T, d = x.shape[1], self.dilation
        seq = after_window(state[0], x)  # (B, W + T, H)
        taps = torch.cat([seq[:, j * d : j * d + T] for j in range(self.kernel)], -1)  # (B, T, k H)
        a, g = self.conv(taps).chunk(2, dim=-1)  # (B, T, H) each
        return self.out(a * torch.sigmoid(g)), (seq[:, -self.window :].transpose(0, 1),)

    def stepper(self, state: State, capacity: int, precision: str) -> MixerStep:
        return ConvStep(self, state, capacity, precision)


class ConvStep(MixerStep):
    """The convolution at one position: taps from the window buffer, then the window moves on by one."""

    def __init__(self, mixer: CausalConv, state: State, capacity: int, precision: str) -> None:
        self.window = Window(state[0])  # (W, capacity, H): oldest first, the stepper's buffer
        self.conv = StepLinear(mixer.conv, capacity, precision)
        self.out = StepLinear(mixer.out, capacity, precision)
        self.kernel, self.dilation, self.width = mixer.kernel, mixer.dilation, mixer.width
        self.taps = state[0].new_zeros(capacity, self.kernel * self.width)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        n, h = x.shape[0], self.width
        taps, past = self.taps[:n], self.window.rows(n)
        for j in range(self.kernel - 1):  # tap j is x_{t-(k-1-j)d}, the window's row j*d
            taps[:, j * h : (j + 1) * h] = past[j * self.dilation]
        taps[:, -h:] = x
        a, g = self.conv(taps).chunk(2, dim=-1)  # (n, H) each
        self.window.push(x)
        return self.out(a * torch.sigmoid(g))


class ConvLM(BlockLM):
    kind = "Conv"

    def make_mixer(self, cfg: ModelSpec, layer: int) -> Mixer:
        return CausalConv(cfg.hidden_size, cfg.kernel_size, 2 ** (layer % CYCLE))
