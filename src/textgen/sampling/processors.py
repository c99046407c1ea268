"""Logits processors: small steps that reshape next-token scores before sampling.

Each validates its argument when built (a ``ValueError`` naming the parameter and the value) and
returns new logits without touching its input. They run in this order (see ``build_processors``):

1. ``BanTokens``   - the unknown token (and any others asked for) can never be drawn;
2. ``Temperature`` - ``logits / T``, the tutorials' ``exp(log p / T)`` renormalised; T = 0 is greedy;
3. ``TopK``        - keep the k most likely tokens.

Every processor keeps at least one token drawable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

NEG_INF = float("-inf")


class LogitsProcessor(Protocol):
    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """ids: (B, t) tokens so far; logits: (B, V) next-token scores. Returns new (B, V) scores."""


class BanTokens:
    """Make some tokens impossible (the unknown token by default, as the TF tutorial masks [UNK])."""

    def __init__(self, token_ids: Sequence[int]) -> None:
        if any(i < 0 for i in token_ids):
            raise ValueError(f"token_ids must be non-negative, got {list(token_ids)}")
        self.token_ids = sorted(set(token_ids))

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if not self.token_ids or len(self.token_ids) >= logits.shape[-1]:
            return logits  # banning everything would leave nothing to draw
        out = logits.clone()
        out[:, self.token_ids] = NEG_INF
        return out


class Temperature:
    """Divide logits by T: sampling then follows p_i^(1/T) / sum_j p_j^(1/T). T = 0 keeps the argmax."""

    def __init__(self, temperature: float) -> None:
        if not temperature >= 0 or temperature == float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        self.temperature = float(temperature)

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature == 0:
            keep = torch.zeros_like(logits, dtype=torch.bool)
            keep.scatter_(-1, logits.argmax(-1, keepdim=True), True)
            return logits.masked_fill(~keep, NEG_INF)
        return logits / self.temperature


class TopK:
    """Keep the k highest-scoring tokens (ties at the k-th score are kept too); k = 0 keeps all."""

    def __init__(self, k: int) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {k!r}")
        self.k = k

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.k == 0 or self.k >= logits.shape[-1]:
            return logits
        kth = logits.topk(self.k, dim=-1).values[:, -1:]  # (B, 1)
        return logits.masked_fill(logits < kth, NEG_INF)


def build_processors(temperature: float = 1.0, top_k: int = 0, banned: Sequence[int] = ()) -> list[LogitsProcessor]:
    """The processor chain for these settings, in the documented order."""
    return [BanTokens(banned), Temperature(temperature), TopK(top_k)]


def apply_processors(processors: Sequence[LogitsProcessor], ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    for p in processors:
        logits = p(ids, logits)
    return logits
