"""The training loop, readable top to bottom: batches in, optimizer steps, validation, saves.

The trainer knows neither the model nor the data: its task (``tasks.py``) gives the batches, each
batch's loss and the validation; where and what to save is the caller's ``save`` function, and
samples or logs hang off callbacks. Everything that decides the next step (optimizer, position in
the data, RNG, the task's carried state) is in ``state_dict``, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from textgen.config import TrainConfig
from textgen.training.tasks import Metrics, Task


@dataclass
class Position:
    """Where training stands; ``batch`` is the next batch of ``epoch`` to run."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    best_val: float = math.inf
    stale_evals: int = 0  # validations since the best one (early stopping)
    plateau_wait: int = 0  # validations without improvement since the last rate cut
    lr_scale: float = 1.0  # product of the plateau cuts so far


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


@dataclass
class Window:
    """Training since the last metrics row; the loss is summed on the device, so a step never syncs."""

    loss: torch.Tensor
    start: float
    steps: int = 0
    tokens: int = 0


class Callback(Protocol):
    def __call__(self, event: str, trainer: Trainer) -> None:
        """Called with "row" (``trainer.last_row`` is new), "eval", "epoch_end" or "train_end"."""


def lr_at(cfg: TrainConfig, step: int, total: int, scale: float = 1.0) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of ``total``: linear warm-up, then
    constant, cosine decay to ``min_lr``, or (plateau) the base rate times the cuts so far."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.schedule == "cosine":
        span = max(1, total - cfg.warmup_steps)
        progress = min(1.0, max(0, step - cfg.warmup_steps) / span)
        return warm * (cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress)))
    return warm * cfg.lr * scale


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":  # alpha 0.9 as Keras' RMSprop (rho), which the tutorials use
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Trainer:
    """Runs optimizer steps over the task's batches until the epochs, ``max_steps`` or the time run out."""

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        cfg: TrainConfig,
        *,
        device: torch.device,
        save: Callable[[str], None],
        callbacks: Sequence[Callback] = (),
        log: Callable[[str], None] = tqdm.write,
    ) -> None:
        self.model, self.task, self.batches, self.cfg, self.device = model, task, task.batches, cfg, device
        self.save, self.callbacks, self.log = save, callbacks, log
        self.optimizer = make_optimizer(model, cfg)
        self.pos = Position()
        self.stop_requested = False
        self.last_metrics: Metrics | None = None
        self.last_train_loss = math.nan
        self.last_eval_step = -1
        self.last_row: Row | None = None
        self._started: float | None = None
        self.early_stop = False
        self.window = Window(torch.zeros((), device=device), time.monotonic())

    # -- resumable state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "position": asdict(self.pos),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            **self.task.state_dict(),
            "last_eval_step": self.last_eval_step,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore a ``state_dict``; one that does not fit (it may come from anyone) raises
        KeyError, TypeError, ValueError or RuntimeError here rather than failing mid-training."""
        settings = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(d["optimizer"])
        for group, mine in zip(self.optimizer.param_groups, settings):
            group.update(mine)  # the file brings only the per-parameter state: this run's settings win
            for p in group["params"]:
                for key, value in self.optimizer.state.get(p, {}).items():
                    shape = () if key == "step" else p.shape  # a step count, or a tensor like the parameter's
                    fits = torch.is_tensor(value) and value.shape == shape and value.dtype in (torch.float32, p.dtype)
                    if not (fits and bool(value.isfinite().all())):
                        raise ValueError(f"optimizer state {key!r} does not fit a parameter of shape {tuple(p.shape)}")
        self.pos = Position(**d["position"])
        for f in fields(Position):
            value, kind = getattr(self.pos, f.name), type(f.default)
            ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
            best = f.name == "best_val"  # may be inf (nothing validated yet), never nan
            if not (ok and (value >= 0 or best) and (math.isfinite(value) or (best and not math.isnan(value)))):
                raise ValueError(f"position {f.name} = {value!r}")
        if self.pos.batch > self.batches.steps_per_epoch or not 0 < self.pos.lr_scale <= 1:  # (cuts only lower it)
            raise ValueError(f"position batch {self.pos.batch} or lr_scale {self.pos.lr_scale} is out of range")
        torch.set_rng_state(d["rng"]["torch"])
        if d["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(d["rng"]["cuda"])
        self.task.load_state_dict(d, self.device)
        self.last_eval_step = int(d.get("last_eval_step", -1))  # saved just after validating: not validated again

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> Metrics | None:
        m = self.task.validate(self.model, self.device)
        if m is None:
            return None
        loss = m.loss
        improved = loss < self.pos.best_val
        if improved:
            self.pos.best_val, self.pos.stale_evals, self.pos.plateau_wait = loss, 0, 0
        else:
            self.pos.stale_evals += 1
            self.pos.plateau_wait += 1
            if self.cfg.schedule == "plateau" and self.pos.plateau_wait > self.cfg.plateau_patience:
                self.pos.lr_scale *= self.cfg.plateau_factor  # as the word-language-model example's lr /= 4
                self.pos.plateau_wait = 0
                self.log(f"validation did not improve: learning rate now {self.cfg.lr * self.pos.lr_scale:.3g}")
            if self.cfg.patience and self.pos.stale_evals >= self.cfg.patience:
                self.early_stop = True
        self.last_metrics = m
        epoch = self.pos.epoch + self.pos.batch / self.batches.steps_per_epoch
        figures = "".join(f" | {name} {value:.2f}" for name, value in m.extra.items())
        self.log(
            f"step {self.pos.step:>7,} | epoch {epoch:.2f} | val loss {m.loss:.4f} nats | "
            f"ppl {m.perplexity:.2f} | {m.bits_per_char:.3f} bits/char{figures}{' | best' if improved else ''}"
        )
        self.emit("eval")
        return m

    def emit(self, event: str) -> None:
        for cb in self.callbacks:
            cb(event, self)

    # -- the loop --------------------------------------------------------------------------
    def total_steps(self) -> int:
        total = self.cfg.epochs * self.batches.steps_per_epoch
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    def fit(self) -> str:
        """Train; returns why it stopped: "done", "max_steps", "time", "early_stop" or "interrupted"."""
        cfg, model = self.cfg, self.model
        model.train()
        self._started = started = time.monotonic()
        deadline = started + cfg.max_minutes * 60 if cfg.max_minutes else math.inf
        total = self.total_steps()
        bar = tqdm(total=total, initial=self.pos.step, unit="step", dynamic_ncols=True, disable=None, mininterval=0.5)
        self.window = Window(torch.zeros((), device=self.device), started)
        shown_at, shown_tokens = started, self.pos.tokens
        since_eval = 0
        try:
            while self.pos.epoch < cfg.epochs:
                while self.pos.batch < self.batches.steps_per_epoch:
                    if self.stop_requested:
                        return "interrupted"
                    if cfg.max_steps and self.pos.step >= cfg.max_steps:
                        return "max_steps"
                    if time.monotonic() >= deadline:
                        return "time"
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr_at(cfg, self.pos.step, total, self.pos.lr_scale)
                    loss = self._step()
                    since_eval += 1
                    now = time.monotonic()
                    if now - shown_at >= 1.0:  # reading the loss syncs a GPU: once a second
                        self.last_train_loss = loss.item()
                        speed = (self.pos.tokens - shown_tokens) / (now - shown_at)
                        bar.set_postfix(loss=f"{self.last_train_loss:.3f}", tok_s=f"{speed:,.0f}", refresh=False)
                        shown_at, shown_tokens = now, self.pos.tokens
                    bar.update(1)
                    if cfg.eval_every and self.pos.step % cfg.eval_every == 0:
                        self.validate_and_save()
                        since_eval = 0
                    else:  # the row first: see validate_and_save
                        if cfg.log_every and self.pos.step % cfg.log_every == 0:
                            self.write_row()
                        if cfg.save_every and self.pos.step % cfg.save_every == 0:
                            self.save("latest")
                    if self.early_stop:
                        return "early_stop"
                # End of an epoch: the next one starts from its first batch with a fresh state.
                self.pos.epoch += 1
                self.pos.batch = 0
                self.task.end_epoch()
                if since_eval:
                    self.validate_and_save("epoch_end")
                    since_eval = 0
                else:
                    self.emit("epoch_end")
                if self.early_stop:
                    return "early_stop"
            return "done"
        finally:
            self.pos.elapsed += time.monotonic() - started
            self._started = None
            bar.close()

    def validate_and_save(self, event: str | None = None) -> None:
        """Validate, log a row and emit ``event`` (e.g. "epoch_end"); then save best/ (if improved, or
        with no validation split) and latest/, in that order.

        Everything is logged before the checkpoint that covers it, and best/ before the latest/ that
        records its loss: a crash anywhere in between leaves a latest/ from before all of it, so the
        resumed run does it all again (its logs cut back to that checkpoint) and nothing is lost.
        """
        began = time.monotonic()
        self.last_eval_step = self.pos.step
        best = self.pos.best_val
        m = self.validate()
        self.window.start += time.monotonic() - began  # the speed counts training time only
        self.write_row()
        if event:
            self.emit(event)
        saving = time.monotonic()
        if m is None or self.pos.best_val < best:
            self.save("best")
        self.save("latest")
        self.window.start += time.monotonic() - saving

    def write_row(self) -> None:
        """Log the training figures since the last row (and this step's validation, if it ran)."""
        w, now = self.window, time.monotonic()
        m = self.last_metrics if self.last_eval_step == self.pos.step else None
        running = now - self._started if self._started is not None else 0.0
        self.last_row = Row(
            step=self.pos.step,
            epoch=self.pos.epoch + self.pos.batch / self.batches.steps_per_epoch,
            tokens=self.pos.tokens,
            train_loss=w.loss.item() / w.steps if w.steps else None,
            val_loss=m.loss if m else None,
            bits_per_char=m.bits_per_char if m else None,
            lr=self.optimizer.param_groups[0]["lr"],
            tokens_per_s=w.tokens / (now - w.start) if w.steps and now > w.start else None,
            elapsed_s=self.pos.elapsed + running,
            extra=dict(m.extra) if m else {},
        )
        self.window = Window(torch.zeros((), device=self.device), now)
        self.emit("row")

    def _step(self) -> torch.Tensor:
        batch = self.batches.batch(self.pos.epoch, self.pos.batch)
        loss, tokens = self.task.loss(self.model, batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        self.optimizer.step()
        self.pos.step += 1
        self.pos.batch += 1
        self.pos.tokens += tokens
        loss = loss.detach()
        self.window.loss += loss
        self.window.steps += 1
        self.window.tokens += tokens
        return loss
