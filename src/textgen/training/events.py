"""What the trainer tells its parts (an ``Event``) and what they answer (an ``Answer``): data flows one way.

The trainer runs the loop and, at each moment worth telling (a step done, an epoch's end, the end of
training...), hands every part the same ``Event``: plain facts, never the trainer itself. The schedule
(``schedule.py``), the save policy (``saving.py``) and the metrics window (``window.py``) answer with
what should happen: the learning rate of the next step, the checkpoints to write, a reason to stop, a
metrics ``Row``. The callbacks (``callbacks.py``: metrics.csv, samples, the report) only listen; they
get the event with the row it logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from textgen.training.tasks import Metrics


@dataclass
class Row:
    """One metrics.csv row: training figures since the previous row, and validation if it ran now."""

    step: int
    epoch: float
    tokens: int
    train_loss: float | None
    val_loss: float | None
    bits_per_char: float | None
    lr: float
    tokens_per_s: float | None
    elapsed_s: float
    extra: dict[str, float] = field(default_factory=dict)  # the task's figures (BLEU...), when validation ran


@dataclass(frozen=True)
class Event:
    """Where training stands at a moment of the loop, and what happened there.

    ``kind``: "start" (fit begins; a resumed run at the step it resumed from), "check" (between steps,
    every few), "step" (an optimizer step is done), "epoch_end", "train_end", "interrupt" (Ctrl-C or
    SIGTERM: stopping now) or "saved" (latest/ now holds this step).
    """

    kind: str
    step: int  # optimizer steps done
    epoch: float  # epochs done, as a fraction
    tokens: int  # tokens trained on
    lr: float  # the learning rate of the last step
    elapsed: float  # seconds the run has trained, over all its invocations, validation included
    busy: float  # seconds of this fit spent in steps (not validating, saving, logging): the speed's clock
    best_val: float  # the best validation loss so far (inf before any)
    metrics: Metrics | None = None  # the latest validation's figures (None before any in this invocation)
    validated: bool = False  # a validation ran now (with nothing to score, metrics stays None)
    improved: bool = False  # ... and its loss is the best so far
    loss: torch.Tensor | None = None  # "step": this process's share of the step's mean loss, on the device
    applied: torch.Tensor | None = None  # "step": 1.0 if the update was applied, 0.0 if skipped (non-finite)
    row: Row | None = None  # the metrics row logged now (given to the callbacks)


@dataclass(frozen=True)
class Answer:
    """What a part asks of the trainer; the trainer joins the parts' answers and does it."""

    lr: float | None = None  # the learning rate from the next step on
    save: tuple[str, ...] = ()  # checkpoints to write now, in this order ("best" before "latest")
    stop: str | None = None  # why training must stop now ("early_stop")
    row: Row | None = None  # a metrics row to log

    def __or__(self, other: Answer | None) -> Answer:
        if other is None:
            return self
        return Answer(
            other.lr if other.lr is not None else self.lr,
            self.save + other.save,
            other.stop or self.stop,
            other.row or self.row,
        )
