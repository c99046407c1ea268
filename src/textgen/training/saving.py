"""When to write checkpoints, and which: best/ and latest/.

- at each validation: best/ when the loss is the best so far (or there is nothing to validate on),
  then latest/, which records that best loss (a crash between the two leaves both as they were);
- latest/ every ``save_every`` steps, after ``save_minutes`` of training since it was last written,
  and when training is interrupted.

The trainer writes what is asked, after the callbacks have logged the moment: the logs are never
behind the checkpoint that covers them.
"""

from __future__ import annotations

import time

from textgen.training.events import Answer, Event


class SavePolicy:
    def __init__(self, save_every: int, save_minutes: float) -> None:
        self.every, self.minutes = save_every, save_minutes
        self.saved_step = 0  # the step latest/ holds (a fresh run: none yet, step 0)
        self.saved_at = time.monotonic()

    def __call__(self, event: Event) -> Answer | None:
        if event.kind in ("start", "saved"):  # latest/ holds this step (at the start: what a resumed run read)
            self.saved_step, self.saved_at = event.step, time.monotonic()
        elif event.validated:
            return Answer(save=("best", "latest") if event.improved or event.metrics is None else ("latest",))
        elif event.kind == "step" and self.every and event.step % self.every == 0:
            return Answer(save=("latest",))
        elif event.kind == "check" and self._minutes_passed() and event.step != self.saved_step:
            return Answer(save=("latest",))  # (the trainer first agrees on it with the other processes)
        elif event.kind == "interrupt":
            return Answer(save=("latest",))
        return None

    def _minutes_passed(self) -> bool:
        return bool(self.minutes) and time.monotonic() - self.saved_at >= self.minutes * 60
