"""RecurrentLM: embedding (or one-hot) -> stacked LSTM/GRU/RNN -> linear logits at every step.

Model code only: no I/O, no sampling. The recurrent core is ``nn.LSTM``/``nn.GRU``/``nn.RNN`` so
cuDNN (GPU) and oneDNN (CPU) run it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from textgen.config import ModelConfig

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
RNN_CLASSES: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class RecurrentLM(nn.Module):
    """A recurrent language model; ``forward`` returns logits for every position and the new state."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        if cfg.vocab_size < 1:
            raise ValueError(f"vocab_size must be set, got {cfg.vocab_size}")
        self.cfg = cfg
        v, e, h = cfg.vocab_size, cfg.embedding_dim, cfg.hidden_size
        self.embedding = nn.Embedding(v, e) if e > 0 else None
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = RNN_CLASSES[cfg.cell](
            input_size=e if e > 0 else v,
            hidden_size=h,
            num_layers=cfg.layers,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(h, v)
        if cfg.tie_weights:
            assert self.embedding is not None
            self.head.weight = self.embedding.weight

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) to recurrent inputs (B, T, E), or one-hot vectors (B, T, V)."""
        if self.embedding is None:
            return F.one_hot(x, self.cfg.vocab_size).to(self.head.weight.dtype)
        return self.embedding(x)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x: (B, T) token ids; state: from ``init_state`` or a previous call (None means zeros)."""
        inputs = self.drop(self.embed(x))  # (B, T, E)
        out, state = self.rnn(inputs, state)  # (B, T, H)
        return self.head(self.drop(out)), state  # (B, T, V)

    def flatten_parameters(self) -> None:
        """Lay the recurrent weights out contiguously for cuDNN (after loading or moving them)."""
        self.rnn.flatten_parameters()

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zero hidden (and cell) state for ``batch_size`` sequences."""
        p = self.head.weight
        h = torch.zeros(self.cfg.layers, batch_size, self.cfg.hidden_size, device=device or p.device, dtype=p.dtype)
        return (h, h.clone()) if self.cfg.cell == "lstm" else h


def detach_state(state: State | None) -> State | None:
    """Cut the graph at a batch boundary (truncated BPTT) but keep the values."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)  # type: ignore[return-value]
    return state.detach()
