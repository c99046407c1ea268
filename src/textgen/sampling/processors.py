"""Logits processors: small steps that reshape next-token scores before sampling.

Each validates its argument when built (a ``ValueError`` naming the parameter and the value) and
returns new logits without touching its input. ``processors_for`` chains them in this order:

1. ``BanTokens``          - tokens that can never be drawn (the unknown token by default, as the
                            TF tutorial masks [UNK]);
2. ``RepetitionPenalty``  - scores of tokens already present divided (or, if negative, multiplied)
                            by the penalty (CTRL);
3. ``FrequencyPresencePenalty`` - minus ``frequency * count + presence * (count > 0)`` (OpenAI);
4. ``NoRepeatNGram``      - tokens that would repeat an n-gram already present are banned;
5. ``Temperature``        - ``logits / T``, the tutorials' ``exp(log p / T)`` renormalised;
                            T = 0 keeps only the argmax (greedy);
6. ``TopK``               - keep the k most likely tokens;
7. ``TopP``               - keep the smallest set of most likely tokens whose probability reaches p;
8. ``TypicalP``           - keep the tokens whose surprise is closest to the entropy, up to mass p;
9. ``MinP``               - drop tokens less likely than ``p`` times the most likely one.

Penalties see the raw scores; the filters (6-9) see the tempered distribution. Every processor
keeps at least one token drawable. Counts and n-grams cover the prompt and the generated tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch

from textgen.config import SampleConfig, check_temperature
from textgen.errors import ConfigError

NEG_INF = float("-inf")


class LogitsProcessor(Protocol):
    """A step of the chain; the built-in ones also say whether they read the tokens so far
    (``uses_history``) and whether their setting does anything (``active``)."""

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """ids: (B, t) tokens so far; logits: (B, V) next-token scores. Returns new (B, V) scores."""


def reads_history(processors: Sequence[LogitsProcessor]) -> bool:
    """Whether any processor reads the tokens so far: only then must a decode loop keep them all, so
    a long output without penalties or n-gram bans takes no more memory. Each processor here says so
    in ``uses_history``; one that does not (a plain function) is assumed to read them."""
    return any(getattr(p, "uses_history", True) for p in processors)


def _number(name: str, value: float, low: float, high: float, low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float inside the interval, or a ValueError naming ``name``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def _count(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


class BanTokens:
    """Make some tokens impossible (the unknown token by default, as the TF tutorial masks [UNK])."""

    uses_history = False

    def __init__(self, token_ids: Sequence[int]) -> None:
        if any(not isinstance(i, int) or i < 0 for i in token_ids):
            raise ValueError(f"token_ids must be non-negative integers, got {list(token_ids)}")
        self.token_ids = sorted(set(token_ids))
        self.active = bool(self.token_ids)
        self.mask = torch.zeros(0)  # 0 or -inf per token, added to the logits; made for the first vocabulary seen

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if not self.token_ids or len(self.token_ids) >= logits.shape[-1]:
            return logits  # banning everything would leave nothing to draw
        if self.mask.shape[-1] != logits.shape[-1] or self.mask.device != logits.device:
            self.mask = torch.zeros(logits.shape[-1], device=logits.device, dtype=logits.dtype)
            self.mask[[i for i in self.token_ids if i < logits.shape[-1]]] = NEG_INF
        out = logits + self.mask  # one fused op: this runs at every step
        # A row whose only drawable tokens are banned keeps them: never leave a row with nothing to draw.
        return torch.where(out.amax(-1, keepdim=True).isneginf(), logits, out)


class RepetitionPenalty:
    """Scores of tokens already present: divided by ``penalty`` when positive, multiplied when negative."""

    def __init__(self, penalty: float) -> None:
        self.penalty = _number("repetition_penalty", penalty, 0.0, math.inf, low_open=True, high_open=True)
        self.uses_history = self.active = self.penalty != 1.0

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.penalty == 1.0:
            return logits
        seen = torch.gather(logits, 1, ids)  # (B, t)
        penalised = torch.where(seen > 0, seen / self.penalty, seen * self.penalty)
        big = torch.finfo(logits.dtype).max  # a finite score stays finite (and drawable), however large
        return logits.scatter(1, ids, torch.where(seen.isinf(), seen, penalised.clamp(-big, big)))


class FrequencyPresencePenalty:
    """Subtract ``frequency * count + presence * (count > 0)`` from each token's score."""

    def __init__(self, frequency: float, presence: float) -> None:
        self.frequency = _number("frequency_penalty", frequency, -2.0, 2.0)
        self.presence = _number("presence_penalty", presence, -2.0, 2.0)
        self.uses_history = self.active = self.frequency != 0 or self.presence != 0

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.frequency == 0 and self.presence == 0:
            return logits
        counts = torch.zeros_like(logits).scatter_add_(1, ids, torch.ones_like(ids, dtype=logits.dtype))
        return logits - self.frequency * counts - self.presence * (counts > 0).to(logits.dtype)


class NoRepeatNGram:
    """Ban every token that would complete an n-gram already present; n = 0 turns it off."""

    def __init__(self, n: int) -> None:
        self.n = _count("no_repeat_ngram", n)
        self.uses_history = self.active = self.n > 0

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        n = self.n
        if n == 0 or ids.shape[1] < n:
            return logits
        t = ids.shape[1]
        grams = ids.unfold(1, n, 1)  # (B, t-n+1, n): every n-gram so far
        match = (grams[:, :, :-1] == ids[:, None, t - n + 1 :]).all(-1)  # its first n-1 tokens end the text
        hits = torch.zeros(logits.shape, dtype=torch.long, device=logits.device)
        banned = hits.scatter_add_(1, grams[:, :, -1], match.long()) > 0  # (B, V)
        keep_one = (banned | logits.isneginf()).all(-1, keepdim=True)  # never leave a row with nothing to draw
        return logits.masked_fill(banned & ~keep_one, NEG_INF)


class Temperature:
    """Divide logits by T: sampling then follows p_i^(1/T) / sum_j p_j^(1/T). T = 0 keeps the argmax."""

    uses_history = False

    def __init__(self, temperature: float) -> None:
        try:
            self.temperature = check_temperature(temperature)
        except ConfigError as e:  # a processor's bad argument is a ValueError, as every processor's
            raise ValueError(str(e)) from None
        self.active = self.temperature != 1

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature == 0:
            keep = torch.zeros_like(logits, dtype=torch.bool)
            keep.scatter_(-1, logits.argmax(-1, keepdim=True), True)
            return logits.masked_fill(~keep, NEG_INF)
        if self.temperature == 1:
            return logits
        # Shift by the row maximum first, so a tiny temperature cannot overflow to inf; the maximum
        # stays 0 even when T is below float32's smallest number (where 0 / T would be 0 / 0).
        shifted = logits - logits.max(-1, keepdim=True).values
        return torch.where(shifted == 0, shifted, shifted / self.temperature)


class TopK:
    """Keep the k highest-scoring tokens (ties at the k-th score are kept too); k = 0 keeps all."""

    uses_history = False

    def __init__(self, k: int) -> None:
        self.k = _count("top_k", k)
        self.active = self.k > 0

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.k == 0 or self.k >= logits.shape[-1]:
            return logits
        kth = logits.topk(self.k, dim=-1).values[:, -1:]  # (B, 1)
        return logits.masked_fill(logits < kth, NEG_INF)


def _keep_smallest_set(logits: torch.Tensor, order_key: torch.Tensor, mass: float) -> torch.Tensor:
    """Keep tokens in ascending ``order_key`` until their probability reaches ``mass`` (at least one)."""
    probs = logits.softmax(-1)
    order = order_key.argsort(dim=-1, stable=True)
    sorted_probs = probs.gather(-1, order)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked ahead of each
    drop_sorted = before >= mass
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


class TopP:
    """Nucleus sampling: keep the most likely tokens until their probability reaches p (0 < p <= 1)."""

    uses_history = False

    def __init__(self, p: float) -> None:
        self.p = _number("top_p", p, 0.0, 1.0, low_open=True)
        self.active = self.p < 1

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.p == 1.0:
            return logits
        return _keep_smallest_set(logits, -logits, self.p)


class TypicalP:
    """Locally typical sampling: rank tokens by |surprise - entropy| and keep them up to mass p."""

    uses_history = False

    def __init__(self, p: float) -> None:
        self.p = _number("typical_p", p, 0.0, 1.0, low_open=True)
        self.active = self.p < 1

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.p == 1.0:
            return logits
        logp = logits.log_softmax(-1)
        p = logp.exp()
        entropy = -(p * logp.nan_to_num(neginf=0.0)).sum(-1, keepdim=True)  # (B, 1)
        distance = (-logp - entropy).abs().nan_to_num(posinf=math.inf)
        return _keep_smallest_set(logits, distance, self.p)


class MinP:
    """Drop tokens whose probability is below ``p`` times the most likely token's (0 <= p <= 1)."""

    uses_history = False

    def __init__(self, p: float) -> None:
        self.p = _number("min_p", p, 0.0, 1.0)
        self.active = self.p > 0

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0:
            return logits
        logp = logits.log_softmax(-1)
        threshold = logp.max(-1, keepdim=True).values + math.log(self.p)
        return logits.masked_fill(logp < threshold, NEG_INF)


def apply_processors(processors: Sequence[LogitsProcessor], ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    for p in processors:
        logits = p(ids, logits)
    return logits


def processors_for(settings: SampleConfig, banned: Sequence[int] = (), filters: bool = True) -> list[LogitsProcessor]:
    """The chain for a SampleConfig, in the documented order (a bad setting raises a ValueError naming it);
    without ``filters`` only the bans and penalties (1-4), which is what beam search uses. Processors
    whose setting turns them off (``active`` false) are left out: the chain runs at every step."""
    chain: list[LogitsProcessor] = [
        BanTokens(banned),
        RepetitionPenalty(settings.repetition_penalty),
        FrequencyPresencePenalty(settings.frequency_penalty, settings.presence_penalty),
        NoRepeatNGram(settings.no_repeat_ngram),
        Temperature(settings.temperature),
        TopK(settings.top_k),
        TopP(settings.top_p),
        TypicalP(settings.typical_p),
        MinP(settings.min_p),
    ]
    return [p for p in (chain if filters else chain[:4]) if getattr(p, "active", True)]
