"""What the trainer trains: a task turns a batch into a loss and scores the model on held-out data.

The trainer (``trainer.py``) knows nothing of models or data; it asks its task for the batches,
for each batch's loss and for a validation. ``LanguageModelTask`` predicts the next token of one
text (carrying the hidden state across batches in stateful mode); ``TranslationTask`` trains an
encoder-decoder on sentence pairs with teacher forcing and scores held-out translations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from textgen.data.batches import ShuffledWindows, StatefulStreams
from textgen.models.lm import State, detach_state
from textgen.training.evaluate import score_stream

LN2 = math.log(2)


@dataclass
class Metrics:
    """Validation loss in nats per token, perplexity, bits per character, and task figures (BLEU...)."""

    loss: float
    perplexity: float
    bits_per_char: float
    tokens: int
    extra: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_nats(cls, nats: float, tokens: int, chars: float, extra: dict[str, float] | None = None) -> Metrics:
        loss = nats / tokens
        return cls(loss, math.exp(min(loss, 700)), nats / LN2 / chars, tokens, extra or {})


class Batches(Protocol):
    """A pure function of (epoch, step), so a resumed run draws exactly the same batches."""

    steps_per_epoch: int

    def batch(self, epoch: int, step: int) -> Any: ...


class Task(Protocol):
    batches: Batches
    metric_names: tuple[str, ...]  # task figures beyond the loss, logged as metrics.csv columns

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int]:
        """The mean loss of ``batch`` (a tensor on the device, never read back) and its target-token count."""

    def end_epoch(self) -> None:
        """Forget anything carried from batch to batch."""

    def validate(self, model: nn.Module, device: torch.device) -> Metrics | None:
        """Score the held-out data, or None when there is none."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, d: dict[str, Any], device: torch.device) -> None: ...


class LanguageModelTask:
    """Next-token prediction over stateful streams or shuffled windows of one token stream."""

    metric_names: tuple[str, ...] = ()

    def __init__(
        self,
        batches: StatefulStreams | ShuffledWindows,
        *,
        loss: str = "every",
        val_ids: np.ndarray | None = None,
        val_streams: int = 64,
        seq_len: int = 100,
        eval_batches: int = 0,
        val_chars_per_token: float = 1.0,
    ) -> None:
        self.batches, self.loss_mode = batches, loss
        self.val_ids = val_ids if val_ids is not None and len(val_ids) > 1 else None
        self.val_streams, self.seq_len, self.eval_batches = val_streams, seq_len, eval_batches
        self.val_chars_per_token = val_chars_per_token
        self.hidden: State | None = None  # carried between batches in stateful mode

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int]:
        x_np, y_np = batch
        x = torch.from_numpy(x_np).to(device, non_blocking=True)  # (B, T)
        y = torch.from_numpy(y_np).to(device, non_blocking=True)  # (B, T)
        stateful = self.batches.stateful
        logits, state = model(x, self.hidden if stateful else None)  # (B, T, V)
        if self.loss_mode == "last":  # Keras' return_sequences=False: one prediction, after the whole window
            loss = F.cross_entropy(logits[:, -1], y[:, -1])
        else:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        self.hidden = detach_state(state) if stateful else None
        return loss, x.numel()

    def end_epoch(self) -> None:
        self.hidden = None  # the next epoch starts from its first batch with a fresh state

    def validate(self, model: nn.Module, device: torch.device) -> Metrics | None:
        if self.val_ids is None:
            return None
        nats, count = score_stream(model, self.val_ids, self.val_streams, self.seq_len, device, self.eval_batches)
        return Metrics.from_nats(nats, count, count * self.val_chars_per_token)

    def state_dict(self) -> dict[str, Any]:
        h = self.hidden
        return {"hidden": list(h) if isinstance(h, tuple) else ([h] if h is not None else [])}

    def load_state_dict(self, d: dict[str, Any], device: torch.device) -> None:
        hidden = [h.to(device) for h in d.get("hidden", [])]
        self.hidden = tuple(hidden) if len(hidden) == 2 else (hidden[0] if hidden else None)  # type: ignore[assignment]


class TranslationTask:
    """Sentence pairs: teacher-forced cross-entropy over the real (non-padding) target tokens.

    With ``teacher_forcing`` below 1 the decoder runs one step at a time and, at each step and
    for each sentence, is fed its own previous prediction with probability ``1 - teacher_forcing``
    (scheduled sampling). Validation is the held-out loss, and BLEU, chrF and exact match of
    greedy translations of the held-out pairs (or the first ``eval_sentences``), from ``score``.
    """

    metric_names = ("bleu", "chrf", "exact_match")

    def __init__(
        self,
        batches: Batches,
        *,
        teacher_forcing: float = 1.0,
        heldout: Batches | None = None,
        heldout_chars: int = 0,
        score: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self.batches, self.teacher_forcing = batches, teacher_forcing
        self.heldout, self.heldout_chars, self.score = heldout, heldout_chars, score

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int]:
        src, src_len, tgt_in, tgt_out = batch.tensors(device)
        if self.teacher_forcing >= 1.0:
            logits = model(src, src_len, tgt_in)  # (B, T, V)
        else:
            logits = scheduled_sampling(model, src, src_len, tgt_in, self.teacher_forcing)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=-100)
        return loss, batch.target_tokens

    def end_epoch(self) -> None:
        pass

    @torch.no_grad()
    def validate(self, model: nn.Module, device: torch.device) -> Metrics | None:
        if self.heldout is None:
            return None
        was_training = model.training
        model.eval()
        try:
            total, count = torch.zeros((), dtype=torch.float64, device=device), 0
            for step in range(self.heldout.steps_per_epoch):
                batch = self.heldout.batch(0, step)
                src, src_len, tgt_in, tgt_out = batch.tensors(device)
                logits = model(src, src_len, tgt_in).float()
                total += F.cross_entropy(logits.transpose(1, 2), tgt_out, ignore_index=-100, reduction="sum").double()
                count += batch.target_tokens
            extra = self.score() if self.score is not None else {}
        finally:
            model.train(was_training)
        return Metrics.from_nats(float(total), count, max(1, self.heldout_chars), extra)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, d: dict[str, Any], device: torch.device) -> None:
        pass


def scheduled_sampling(
    model: nn.Module, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor, ratio: float
) -> torch.Tensor:
    """Decoder logits (B, T, V) when each input after the first is the true token with probability
    ``ratio`` and otherwise the model's own previous prediction (its argmax, no gradient through it)."""
    memory, state = model.encode(src, src_len)
    inputs = tgt_in[:, :1]  # (B, 1): the start token
    steps: list[torch.Tensor] = []
    for t in range(tgt_in.shape[1]):
        logits, state = model.decode(inputs, state, memory)  # (B, 1, V)
        steps.append(logits)
        if t + 1 < tgt_in.shape[1]:
            gold = torch.rand(inputs.shape, device=inputs.device) < ratio
            inputs = torch.where(gold, tgt_in[:, t + 1 : t + 2], logits.argmax(-1))
    return torch.cat(steps, dim=1)
