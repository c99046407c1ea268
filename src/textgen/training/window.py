"""The training figures since the last metrics row, turned into a ``Row`` every ``log_every`` steps and at
each validation."""

from __future__ import annotations

import torch

from textgen.training import distributed
from textgen.training.distributed import World
from textgen.training.events import Answer, Event, Row


class MetricWindow:
    """Sums each applied step's loss on the device (a step never waits for it) and counts the tokens and
    the training seconds; a row reads the sum once, added over the processes (every process must be told
    the same events: the sum is a collective). Only rank 0 gets the row."""

    def __init__(self, log_every: int, world: World, device: torch.device) -> None:
        self.log_every, self.world = log_every, world
        # Where the processes' collectives take their tensors (NCCL: the GPU).
        self.comm = device if world.distributed and device.type == "cuda" else torch.device("cpu")
        self.loss = torch.zeros((), device=device)  # of the applied steps, this process's shares
        self.applied = torch.zeros((), device=device)
        self.steps, self.tokens, self.busy = 0, 0, 0.0  # steps since the row; tokens and clock at the row

    def __call__(self, event: Event) -> Answer | None:
        if event.kind == "start":
            self._restart(event)
        if event.loss is not None and event.applied is not None:
            self.loss += torch.where(event.applied > 0, event.loss, 0.0)
            self.applied += event.applied
            self.steps += 1
        due = event.validated or (event.kind == "step" and self.log_every and event.step % self.log_every == 0)
        return Answer(row=self._row(event)) if due else None

    def _restart(self, event: Event) -> None:
        self.loss.zero_()
        self.applied.zero_()
        self.steps, self.tokens, self.busy = 0, event.tokens, event.busy

    def _row(self, event: Event) -> Row | None:
        # Each process holds its rows' share of the mean loss: their sum is the whole batch's.
        loss = distributed.sum_over_ranks(self.world, self.loss.to(self.comm)).item()
        applied, steps = int(self.applied.item()), self.steps
        seconds, tokens = event.busy - self.busy, event.tokens - self.tokens
        self._restart(event)
        if not self.world.main:
            return None
        m = event.metrics if event.validated else None
        return Row(
            step=event.step,
            epoch=event.epoch,
            tokens=event.tokens,
            train_loss=loss / applied if applied else None,
            val_loss=m.loss if m else None,
            bits_per_char=m.bits_per_char if m else None,
            lr=event.lr,
            tokens_per_s=tokens / seconds if steps and seconds > 0 else None,
            elapsed_s=event.elapsed,
            extra=dict(m.extra) if m else {},
        )
