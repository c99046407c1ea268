"""The learning rate of every step (warm-up, then constant, cosine or cut on a plateau) and early stopping."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from textgen.config import TrainConfig
from textgen.training.events import Answer, Event


def lr_at(cfg: TrainConfig, step: int, total: int, scale: float = 1.0, clock: float = 0.0) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of ``total``: linear warm-up, then
    constant, cosine decay to ``min_lr``, or (plateau) the base rate times the cuts so far.

    ``clock``: the fraction of a time budget (``max_minutes``) used so far; the cosine follows
    whichever of the steps and the clock is further along, so it reaches ``min_lr`` as the budget ends."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.schedule == "cosine":
        span = max(1, total - cfg.warmup_steps)
        progress = min(1.0, max(max(0, step - cfg.warmup_steps) / span, clock))
        return warm * (cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress)))
    return warm * cfg.lr * scale


@dataclass
class Progress:
    """The schedule's counters; a resumed run needs them (saved in the trainer state's position)."""

    stale_evals: int = 0  # validations since the best one (early stopping)
    plateau_wait: int = 0  # validations without improvement since the last rate cut
    lr_scale: float = 1.0  # product of the plateau cuts so far
    clock: float = 0.0  # the fraction of the time-budget cosine done so far (a resumed run goes on from it)


class Schedule:
    """Answers every event with the learning rate of the next step; counts the validations that did not
    improve, to cut the rate on a plateau and to stop early after ``patience`` of them."""

    def __init__(self, cfg: TrainConfig, total_steps: int, log: Callable[[str], None]) -> None:
        self.cfg, self.total, self.log = cfg, total_steps, log
        self.progress = Progress()
        self.began: float | None = None  # the run's elapsed seconds when this invocation (and its time budget) began
        self.base = 0.0  # the clock's value when this invocation began

    def __call__(self, event: Event) -> Answer:
        stop = self._count(event) if event.validated and event.metrics is not None else None
        if self.began is None or event.kind == "start":
            self.began, self.base = event.elapsed, self.progress.clock
        budget = self.cfg.max_minutes * 60
        if budget:  # a time budget spans one invocation: a resumed run spreads what is left of the decay over it
            used = min(1.0, (event.elapsed - self.began) / budget)
            self.progress.clock = self.base + (1.0 - self.base) * used
        clock = self.progress.clock if budget else 0.0
        return Answer(lr=lr_at(self.cfg, event.step, self.total, self.progress.lr_scale, clock), stop=stop)

    def _count(self, event: Event) -> str | None:
        cfg, p = self.cfg, self.progress
        if event.improved:
            p.stale_evals = p.plateau_wait = 0
            return None
        p.stale_evals += 1
        p.plateau_wait += 1
        if cfg.schedule == "plateau" and p.plateau_wait > cfg.plateau_patience:
            p.lr_scale *= cfg.plateau_factor  # as the word-language-model example's lr /= 4
            p.plateau_wait = 0
            self.log(f"validation did not improve: learning rate now {cfg.lr * p.lr_scale:.3g}")
        if cfg.patience and p.stale_evals >= cfg.patience:
            self.log(f"stopping early: {cfg.patience} validations without improvement (best {event.best_val:.4f})")
            return "early_stop"
        return None
