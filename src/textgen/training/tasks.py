"""What the trainer trains: a task turns a batch into a loss and scores the model on held-out data.

The trainer (``trainer.py``) knows nothing of models or data; it asks its task for the batches,
how to cut a batch into shares (one per micro-batch of each process), each share's summed loss,
and a validation. ``LanguageModelTask`` predicts the next token of one text (carrying the hidden
state of its rows across batches in stateful mode); ``TranslationTask`` trains an encoder-decoder
on sentence pairs with teacher forcing and scores held-out translations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from textgen.data.batches import ShuffledWindows, StatefulStreams, to_device
from textgen.data.pairs import Pair
from textgen.inference.metrics import Metrics
from textgen.inference.scoring import evaluate_pairs, score_stream
from textgen.models.protocol import State, as_state, concat_rows, map_state, select_rows
from textgen.sampling.translate import TextTranslator


class Batches(Protocol):
    """A pure function of (epoch, step), so a resumed run draws exactly the same batches."""

    steps_per_epoch: int

    def batch(self, epoch: int, step: int) -> Any: ...


class Task(Protocol):
    batches: Batches
    metric_names: tuple[str, ...]  # task figures beyond the loss, logged as metrics.csv columns

    def counts(self, batch: Any) -> tuple[int, int]:
        """(tokens read, targets the loss is averaged over) of a whole batch, known on the host."""

    def shard(self, batch: Any, index: int, count: int) -> Any:
        """Share ``index`` of ``count`` equal shares of the batch's rows (one micro-batch of one process)."""

    def loss(self, model: nn.Module, share: Any, device: torch.device, part: int = 0) -> torch.Tensor:
        """The loss summed over the share's targets (a tensor on the device, never read back).

        ``part`` numbers the share among this process's micro-batches: a stateful task carries the
        state of each part's rows from one batch to the next."""

    def end_epoch(self) -> None:
        """Forget anything carried from batch to batch."""

    def validate(self, model: nn.Module, device: torch.device) -> Metrics | None:
        """Score the held-out data, or None when there is none."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, d: dict[str, Any], device: torch.device) -> None: ...


class LanguageModelTask:
    """Next-token prediction over stateful streams or shuffled windows of one token stream.

    In stateful mode each part (micro-batch) of this process owns a fixed band of stream rows and
    carries their hidden state (detached, in fp32 whatever the precision) to the next batch. The
    saved state is this process's bands one after another, so it can be cut again for another
    number of micro-batches on resume.
    """

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
        self.hidden: dict[int, State] = {}  # stateful mode: each part's state, carried between batches
        self.resumed: State | None = None  # a resumed run's saved state, until each part takes its rows

    def counts(self, batch: Any) -> tuple[int, int]:
        x, _ = batch
        return x.size, (len(x) if self.loss_mode == "last" else x.size)

    def shard(self, batch: Any, index: int, count: int) -> Any:
        if count == 1:
            return batch
        x, y = batch
        rows = len(x) // count
        band = slice(index * rows, (index + 1) * rows)
        return x[band], y[band]

    def loss(self, model: nn.Module, share: Any, device: torch.device, part: int = 0) -> torch.Tensor:
        x_np, y_np = share
        x, y = to_device(x_np, device), to_device(y_np, device)  # (B, T) each
        stateful = self.batches.stateful
        logits, state = model(x, self._state(part, len(x_np)) if stateful else None)  # (B, T, V)
        if self.loss_mode == "last":  # Keras' return_sequences=False: one prediction, after the whole window
            loss = F.cross_entropy(logits[:, -1].float(), y[:, -1], reduction="sum")
        else:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), reduction="sum")
        if stateful:
            self.hidden[part] = map_state(lambda s: s.detach().float(), state)
        return loss

    def _state(self, part: int, rows: int) -> State | None:
        if part not in self.hidden and self.resumed is not None:
            self.hidden[part] = select_rows(self.resumed, slice(part * rows, (part + 1) * rows))
        return self.hidden.get(part)

    def end_epoch(self) -> None:
        self.hidden, self.resumed = {}, None  # the next epoch starts from its first batch with a fresh state

    def validate(self, model: nn.Module, device: torch.device) -> Metrics | None:
        if self.val_ids is None:
            return None
        nats, count = score_stream(model, self.val_ids, self.val_streams, self.seq_len, device, self.eval_batches)
        return Metrics.from_nats(nats, count, count * self.val_chars_per_token)

    def state_dict(self) -> dict[str, Any]:
        h = concat_rows([self.hidden[p] for p in sorted(self.hidden)]) if self.hidden else self.resumed
        return {"hidden": list(h) if h is not None else []}

    def load_state_dict(self, d: dict[str, Any], device: torch.device) -> None:
        self.hidden = {}
        self.resumed = as_state([h.to(device) for h in d.get("hidden", [])]) or None


class TranslationTask:
    """Sentence pairs: teacher-forced cross-entropy over the real (non-padding) target tokens.

    With ``teacher_forcing`` below 1 the decoder runs one step at a time and, at each step and
    for each sentence, is fed its own previous prediction with probability ``1 - teacher_forcing``
    (scheduled sampling). Validation is the loss on the ``heldout`` batches, and BLEU, chrF and
    exact match of ``translator``'s translations of the held-out ``pairs`` (or the first
    ``eval_sentences``), with ``beams``.
    """

    metric_names = ("bleu", "chrf", "exact_match")

    def __init__(
        self,
        batches: Batches,
        *,
        teacher_forcing: float = 1.0,
        heldout: Batches | None = None,
        pairs: Sequence[Pair] = (),
        translator: TextTranslator | None = None,
        eval_sentences: int = 0,
        beams: int = 1,
    ) -> None:
        self.batches, self.teacher_forcing, self.heldout = batches, teacher_forcing, heldout
        self.translator, self.beams = translator, beams
        self.pairs, self.eval_sentences = list(pairs), eval_sentences

    def counts(self, batch: Any) -> tuple[int, int]:
        return batch.target_tokens, batch.target_tokens

    def shard(self, batch: Any, index: int, count: int) -> Any:
        return batch.share(index, count)

    def loss(self, model: nn.Module, share: Any, device: torch.device, part: int = 0) -> torch.Tensor:
        src, src_len, tgt_in, tgt_out = share.tensors(device)
        if self.teacher_forcing >= 1.0:
            logits = model(src, src_len, tgt_in)  # (B, T, V)
        else:
            logits = scheduled_sampling(model, src, src_len, tgt_in, self.teacher_forcing)
        logits = logits.reshape(-1, logits.shape[-1]).float()
        return F.cross_entropy(logits, tgt_out.reshape(-1), ignore_index=-100, reduction="sum")

    def end_epoch(self) -> None:
        pass

    def validate(self, model: nn.Module, device: torch.device) -> Metrics | None:
        if self.heldout is None:
            return None
        return evaluate_pairs(model, self.heldout, device, self.pairs, self.translator, self.beams, self.eval_sentences)

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
