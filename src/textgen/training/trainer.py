"""The training loop, readable top to bottom: batches in, optimizer steps, validation; events out.

The trainer knows neither the model nor the data: its task (``tasks.py``) gives the batches, each
share's summed loss and the validation. At each moment of the loop it tells its parts an ``Event``
(``events.py``) and does what they answer: the schedule (``schedule.py``) sets the learning rate and
stops early, the save policy (``saving.py``) asks for checkpoints, the metrics window (``window.py``)
makes the metrics rows; the callbacks (``callbacks.py``) log them. Where and what to save is the
caller's ``save`` function. Everything that decides the next step (optimizer, position in the data,
the schedule's counters, RNG, the task's carried state) is in ``state_dict``, so a resumed run
continues bit for bit.

One optimizer step trains on one global batch of ``batch_size`` rows, whatever the hardware (see
``docs/scale.md``):

- the batch is cut into ``world size x accumulate`` equal shares; this process runs its
  ``accumulate`` shares one after another (gradient accumulation), under autocast when
  ``precision`` is bf16 or fp16, and DistributedDataParallel averages the gradients of the processes;
- each share's loss is a sum, weighted by ``world size / targets in the whole batch``, so the
  gradient is that of the global batch's mean loss however it was split;
- the step never waits for the device: the loss is summed on the device and read only when it is
  logged; a non-finite gradient makes the optimizer skip the update on the device (fused Adam's
  ``found_inf``, or the fp16 gradient scaler), and the count of steps skipped in a row is read at
  the next check (every step on a CPU, where reading costs nothing, every ``CHECK_EVERY`` on a GPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm  # a notebook's widget bar in Jupyter and Colab

from textgen.config import TrainConfig
from textgen.errors import ConfigError
from textgen.training import distributed
from textgen.training.distributed import World
from textgen.training.events import Answer, Event
from textgen.training.optimizer import FUSED, make_optimizer
from textgen.training.saving import SavePolicy
from textgen.training.schedule import Progress, Schedule
from textgen.training.tasks import Metrics, Task
from textgen.training.window import MetricWindow

CHECK_EVERY = 20  # steps between reads of the device's counters (and agreements between processes) on a GPU
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Position:
    """Where training stands; ``batch`` is the next batch of ``epoch`` to run. Saved as the trainer
    state's ``position``, together with the schedule's ``Progress``."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    best_val: float = math.inf
    skipped: int = 0  # optimizer steps skipped for a non-finite loss or gradient


class Callback(Protocol):
    def __call__(self, event: Event) -> None:
        """Told every event (with the metrics row logged at it, if any); answers nothing."""


Save = Callable[[str, dict[str, Any] | None, Event], None]


@functools.cache
def autocast_rnn_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype an ``nn.LSTM`` computes in under autocast to ``dtype`` on ``device_type``.

    PyTorch's CUDA autocast casts cuDNN's recurrent layers to fp16 whatever the autocast dtype, so
    a bf16 run can carry fp16 gradients through its recurrent core; asking is the reliable way to
    know on the installed version.
    """
    rnn = nn.LSTM(8, 8).to(device_type)
    with torch.autocast(device_type, dtype=dtype):
        out, _ = rnn(torch.zeros(1, 1, 8, device=device_type))
    return out.dtype


def needs_scaler(precision: str, device: torch.device) -> bool:
    """fp16 gradients need scaling against underflow: fp16, and bf16 where the recurrent core runs in fp16."""
    if precision == "fp16":
        return True
    return precision == "bf16" and device.type == "cuda" and autocast_rnn_dtype("cuda", torch.bfloat16) == torch.float16


def grad_norm(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """The 2-norm of all gradients together, on the device (what clipping computes, without clipping)."""
    norms = [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=params[0].device)


def restored(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` from a saved state, each field a number of its type, not negative, finite (but
    ``best_val``, which is inf before any validation); raises TypeError or ValueError otherwise."""
    record = cls(**values)
    for f in fields(record):
        value, kind = getattr(record, f.name), type(f.default)
        ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
        best = f.name == "best_val"  # may be inf (nothing validated yet), never nan
        if not (ok and (value >= 0 or best) and (math.isfinite(value) or (best and not math.isnan(value)))):
            raise ValueError(f"position {f.name} = {value!r}")
    return record


class _TaskLoss(nn.Module):
    """The task's loss as a module's forward, so that DistributedDataParallel wraps the whole training
    forward pass (scheduled sampling calls the model's ``encode`` and ``decode``, not its ``forward``)."""

    def __init__(self, model: nn.Module, task: Task, device: torch.device) -> None:
        super().__init__()
        self.model, self.task, self.device = model, task, device

    def forward(self, share: Any, part: int) -> torch.Tensor:
        return self.task.loss(self.model, share, self.device, part)


class Trainer:
    """Runs optimizer steps over the task's batches until the epochs, ``max_steps`` or the time run out.

    ``save(which, state, event)`` writes checkpoint ``which`` ("latest", with the trainer's ``state``,
    or "best") at ``event``; it is called on rank 0 only. Under torchrun every process runs a Trainer
    on the same schedule; ``world`` says which one this is.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        cfg: TrainConfig,
        *,
        device: torch.device,
        save: Save | None = None,
        callbacks: Sequence[Callback] = (),
        log: Callable[[str], None] = tqdm.write,
        world: World | None = None,
        fused: bool | None = None,
    ) -> None:
        self.model, self.task, self.batches, self.cfg, self.device = model, task, task.batches, cfg, device
        self.save, self.callbacks, self.log = save, callbacks, log
        self.world = world = world or World()
        shares = world.size * cfg.accumulate
        if cfg.batch_size % shares:
            raise ConfigError(
                f"batch_size {cfg.batch_size} must be a multiple of {shares} ({world.size} process(es) x accumulate "
                f"{cfg.accumulate}): every micro-batch of every process gets an equal share of the rows"
            )
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.fused = device.type == "cuda" and cfg.optimizer in FUSED if fused is None else fused
        self.optimizer = make_optimizer(model, cfg, self.fused)
        self.amp_dtype = AMP_DTYPES.get(cfg.precision)
        self.scaler = torch.amp.GradScaler(device.type) if needs_scaler(cfg.precision, device) else None
        if self.scaler is not None and cfg.precision == "bf16":
            log("bf16: PyTorch runs cuDNN's recurrent layers in fp16 under autocast; a gradient scaler guards them")
        loss = _TaskLoss(model, task, device)
        # device_ids=None: the inputs are already on this process's device, and the lengths that packing
        # reads must stay on the CPU (DDP would otherwise move every tensor it is given).
        self.forward: nn.Module = DistributedDataParallel(loss, device_ids=None) if world.distributed else loss
        self.check_every = 1 if device.type == "cpu" else CHECK_EVERY
        self.skips = torch.zeros(2, device=device)  # steps skipped [in a row, since the last read]
        self.pos = Position()
        self.stop_requested = False  # set by a signal handler: stop at the next check
        self.last_metrics: Metrics | None = None  # the latest validation of this invocation
        self.last_eval_step = -1
        # The parts: told every event, they answer what to do (events.py).
        self.schedule = Schedule(cfg, self.total_steps(), log)
        self.saving = SavePolicy(cfg.save_every, cfg.save_minutes)
        self.window = MetricWindow(cfg.log_every, world, device)
        self.parts = (self.schedule, self.saving, self.window)
        self.lr = cfg.lr  # of the next step, as the schedule last answered
        self._started: float | None = None  # when fit began (None outside fit)
        self._paused = 0.0  # seconds of this fit spent validating, saving and in the callbacks
        self._validated_at = time.monotonic()  # when the last validation began (for eval_minutes)
        self._eval_due = False  # eval_minutes have passed: validate after this step

    # -- resumable state -------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Any]:
        cuda = [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else []
        return {"torch": torch.get_rng_state(), "cuda": cuda}

    def state_dict(self) -> dict[str, Any]:
        """The optimizer, position and this process's RNG and task state; under torchrun also every
        process's own (``ranks``), gathered to each (collective: every process must call it)."""
        local = {"rng": self._rng_state(), **self.task.state_dict()}
        ranks = distributed.gather_states(self.world, local, self.device)
        d = {
            "optimizer": self.optimizer.state_dict(),
            "position": {**asdict(self.pos), "elapsed": self._elapsed(), **asdict(self.schedule.progress)},
            "world_size": self.world.size,
            "last_eval_step": self.last_eval_step,
        }
        d.update(local)
        if self.world.distributed:
            d["ranks"] = ranks
        if self.scaler is not None:
            d["scaler"] = self.scaler.state_dict()
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore a ``state_dict``; one that does not fit (it may come from anyone) raises
        KeyError, TypeError, ValueError or RuntimeError here rather than failing mid-training."""
        saved_world = d.get("world_size", 1)
        if not isinstance(saved_world, int) or isinstance(saved_world, bool) or saved_world < 1:
            raise ValueError(f"world_size = {saved_world!r}")
        if saved_world != self.world.size:
            raise ConfigError(
                f"--resume: the run was trained by {saved_world} process(es), this is {self.world.size}; "
                "resume it with the same number (torchrun --nproc-per-node and --nnodes)"
            )
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
        position = d["position"]  # the loop's Position and the schedule's Progress, side by side
        theirs = {f.name for f in fields(Progress)}
        self.pos = restored(Position, {k: v for k, v in position.items() if k not in theirs})
        progress = restored(Progress, {k: v for k, v in position.items() if k in theirs})
        if self.pos.batch > self.batches.steps_per_epoch or not (0 < progress.lr_scale <= 1 and progress.clock <= 1):
            raise ValueError(  # (plateau cuts only lower the scale; the clock is a fraction of the budget)
                f"position batch {self.pos.batch}, lr_scale {progress.lr_scale} or clock {progress.clock} "
                "is out of range"
            )
        self.schedule.progress = progress
        local = d["ranks"][self.world.rank] if self.world.distributed else d
        torch.set_rng_state(local["rng"]["torch"])
        cuda = local["rng"]["cuda"]
        if cuda and self.device.type == "cuda":  # older checkpoints hold every visible GPU's state
            torch.cuda.set_rng_state(cuda[0] if len(cuda) == 1 else cuda[self.device.index or 0], self.device)
        self.task.load_state_dict(local, self.device)
        if self.scaler is not None and "scaler" in d:
            self.scaler.load_state_dict(d["scaler"])
        self.last_eval_step = int(d.get("last_eval_step", -1))  # saved just after validating: not validated again

    # -- the loop --------------------------------------------------------------------------
    def total_steps(self) -> int:
        total = self.cfg.epochs * self.batches.steps_per_epoch
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    def fit(self) -> str:
        """Train; returns why it stopped: "done", "max_steps", "time", "early_stop", "interrupted" or
        "diverged" (``max_bad_steps`` steps in a row skipped). Then validates and saves what is not yet
        ("train_end"), saves latest/ when interrupted, or (diverged) leaves the last good checkpoint."""
        self.model.train()
        self._started = started = self._validated_at = time.monotonic()
        self._paused = 0.0
        hide = None if self.world.main else True  # None: shown when the output is a terminal
        bar = tqdm(
            total=self.total_steps(),
            initial=self.pos.step,
            unit="step",
            dynamic_ncols=True,
            disable=hide,
            mininterval=0.5,
        )
        try:
            self._moment("start")
            reason = self._epochs(bar, started)
            if reason == "interrupted":
                self._moment("interrupt")
            elif reason != "diverged":
                self._moment("train_end", validate=self.last_eval_step != self.pos.step)
            return reason
        finally:
            self.pos.elapsed = self._elapsed()
            self._started = None
            bar.close()

    def _epochs(self, bar: tqdm, started: float) -> str:
        """The steps until the epochs, ``max_steps`` or the time run out (or something stops them)."""
        cfg = self.cfg
        deadline = started + cfg.max_minutes * 60 if cfg.max_minutes else math.inf
        shown_at, shown_tokens = started, self.pos.tokens
        while self.pos.epoch < cfg.epochs:
            while self.pos.batch < self.batches.steps_per_epoch:
                if cfg.max_steps and self.pos.step >= cfg.max_steps:
                    return "max_steps"
                if self.pos.step % self.check_every == 0:
                    why = self._check(deadline)
                    if why:
                        return why
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr
                loss, applied = self._step()
                now = time.monotonic()
                if self.world.main and now - shown_at >= 1.0:  # reading the loss waits for a GPU: once a second
                    speed = (self.pos.tokens - shown_tokens) / (now - shown_at)
                    shown = loss.item() * self.world.size  # rank 0's rows: an estimate
                    bar.set_postfix(loss=f"{shown:.3f}", tok_s=f"{speed:,.0f}", refresh=False)
                    shown_at, shown_tokens = now, self.pos.tokens
                bar.update(1)
                validate = self._eval_due or (bool(cfg.eval_every) and self.pos.step % cfg.eval_every == 0)
                stop = self._moment("step", validate=validate, loss=loss, applied=applied).stop
                if stop:
                    return stop
            # End of an epoch: the next one starts from its first batch with a fresh state.
            self.pos.epoch += 1
            self.pos.batch = 0
            self.task.end_epoch()
            # (A run resumed from a save made after the epoch's last validation validates again here.)
            stop = self._moment("epoch_end", validate=self.last_eval_step != self.pos.step).stop
            if stop:
                return stop
        return "done"

    def _elapsed(self) -> float:
        """Seconds the run has trained, over all its invocations (this one up to now)."""
        return self.pos.elapsed + (time.monotonic() - self._started if self._started is not None else 0.0)

    def _event(self, kind: str, **facts: Any) -> Event:
        elapsed = self._elapsed()
        return Event(
            kind,
            step=self.pos.step,
            epoch=self.pos.epoch + self.pos.batch / self.batches.steps_per_epoch,
            tokens=self.pos.tokens,
            lr=self.optimizer.param_groups[0]["lr"],
            elapsed=elapsed,
            busy=elapsed - self.pos.elapsed - self._paused,
            best_val=self.pos.best_val,
            metrics=self.last_metrics,
            **facts,
        )

    def _ask(self, event: Event) -> Answer:
        answer = Answer()
        for part in self.parts:
            answer |= part(event)
        return answer

    def _moment(self, kind: str, validate: bool = False, **facts: Any) -> Answer:
        """Validate if asked, tell the parts and do what they answer: the callbacks log the moment (with
        its metrics row), then the checkpoints are written (best/ before latest/); the rate is kept for
        the next step.

        Everything is logged before the checkpoint that covers it, and best/ before the latest/ that
        records its loss: a crash anywhere in between leaves a latest/ from before all of it, so the
        resumed run does it all again (its logs cut back to that checkpoint) and nothing is lost.
        """
        improved = self._validate() if validate else False
        event = self._event(kind, validated=validate, improved=improved, **facts)
        answer = self._ask(event)
        event = dataclasses.replace(event, row=answer.row)
        began = time.monotonic()
        for callback in self.callbacks:
            callback(event)
        self._paused += time.monotonic() - began
        for which in answer.save:
            self._save(which, event)
        self.lr = answer.lr if answer.lr is not None else self.lr
        return answer

    def _validate(self) -> bool:
        """Score the held-out data on rank 0 (the others wait for its loss); returns whether the loss is
        the best so far."""
        began = self._validated_at = time.monotonic()
        self._eval_due = False
        self.last_eval_step = self.pos.step
        m = self.task.validate(self.model, self.device) if self.world.main else None
        if self.world.distributed:
            has, loss = distributed.broadcast_floats(self.world, [m is not None, m.loss if m else 0.0], self.device)
            if not self.world.main:
                m = Metrics(loss, math.exp(min(loss, 700)), math.nan, 0) if has else None
        self._paused += time.monotonic() - began
        if m is None:
            return False
        self.last_metrics = m
        improved = m.loss < self.pos.best_val
        if improved:
            self.pos.best_val = m.loss
        epoch = self.pos.epoch + self.pos.batch / self.batches.steps_per_epoch
        figures = "".join(f" | {name} {value:.2f}" for name, value in m.extra.items())
        self.log(
            f"step {self.pos.step:>7,} | epoch {epoch:.2f} | val loss {m.loss:.4f} nats | "
            f"ppl {m.perplexity:.2f} | {m.bits_per_char:.3f} bits/char{figures}{' | best' if improved else ''}"
        )
        return improved

    def _save(self, which: str, event: Event) -> None:
        """Save ``which`` ("latest" or "best"): every process calls it at the same step, rank 0 writes.

        Not while steps are being skipped: the checkpoint on disk stays the last good one."""
        began = time.monotonic()
        in_row = self._read_skips()
        if in_row:
            self.log(f"not saving {which}: {in_row} step(s) in a row skipped; the one on disk is the last good one")
            return
        state = self.state_dict() if which == "latest" else None
        if self.world.main and self.save is not None:
            self.save(which, state, event)
        self._paused += time.monotonic() - began
        if which == "latest":
            self._ask(self._event("saved"))

    def _check(self, deadline: float) -> str | None:
        """Between steps: read the skipped-step counters and agree with the other processes on stopping
        (Ctrl-C, the time limit) and on a timed save. Returns why training must stop, if it must."""
        if self._read_skips() >= self.cfg.max_bad_steps and (self.scaler is None or self.scaler.get_scale() < 1):
            # (With a gradient scaler, overflow is also how it finds its scale: only a fault at a scale below 1 counts.)
            return "diverged"
        event = self._event("check")
        timed = "latest" in self._ask(event).save
        now = time.monotonic()
        evaluate = bool(self.cfg.eval_minutes) and now - self._validated_at >= self.cfg.eval_minutes * 60
        flags = torch.tensor([self.stop_requested, now >= deadline, timed, evaluate], dtype=torch.float32)
        stop, late, save, self._eval_due = (
            bool(f) for f in distributed.agree(self.world, flags.to(self._comm)).tolist()
        )
        if stop:
            return "interrupted"
        if late:
            return "time"
        if save:
            self._save("latest", event)
        return None

    @property
    def _comm(self) -> torch.device:
        """Where this process's collectives take their tensors (NCCL: the GPU)."""
        return self.device if self.world.distributed and self.device.type == "cuda" else torch.device("cpu")

    def _read_skips(self) -> int:
        """Read (and log) the steps skipped since the last read; returns how many in a row end here."""
        in_row, new = (int(v) for v in self.skips.tolist())
        if new:
            self.skips[1].zero_()
            self.pos.skipped += new
            self.log(
                f"step {self.pos.step:,}: skipped {new} optimizer step(s) with a non-finite loss or gradient "
                f"({in_row} in a row, {self.pos.skipped} in this run)"
            )
        return in_row

    # -- one step --------------------------------------------------------------------------
    def _step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the next global batch; returns this process's share of its mean loss and
        whether the update was applied (1.0, or 0.0 when skipped), both on the device."""
        cfg, world = self.cfg, self.world
        batch = self.batches.batch(self.pos.epoch, self.pos.batch)
        tokens, targets = self.task.counts(batch)  # of the whole batch, known on the host
        weight = world.size / targets  # DDP averages over processes: this makes it the global batch's mean
        shares = world.size * cfg.accumulate
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.device)
        for part in range(cfg.accumulate):
            share = self.task.shard(batch, world.rank * cfg.accumulate + part, shares)
            with self._gradient_sync(part == cfg.accumulate - 1):
                with self._autocast():
                    summed = self.forward(share, part)  # the share's summed loss
                weighted = summed * weight
                (self.scaler.scale(weighted) if self.scaler is not None else weighted).backward()
            loss += summed.detach().float()
        loss /= targets
        bad = self._update(loss)
        self.pos.step += 1
        self.pos.batch += 1
        self.pos.tokens += tokens
        return loss, 1 - bad

    def _update(self, loss: torch.Tensor) -> torch.Tensor:
        """Clip and apply the gradients, or skip the update (weights and optimizer state untouched) when
        the loss or a gradient is not finite; all on the device except where noted. Returns 1.0 if skipped."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = nn.utils.clip_grad_norm_(self.params, self.cfg.clip) if self.cfg.clip else grad_norm(self.params)
        bad = (~torch.isfinite(norm) | ~torch.isfinite(loss)).float()
        distributed.agree(self.world, bad)  # the gradients agree already (DDP); the loss is this process's own
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the update itself when the scaled gradients overflowed
            self.scaler.update()
        elif self.fused:
            self.optimizer.found_inf = bad  # the fused kernel leaves weights and state untouched when it is 1
            self.optimizer.step()
            del self.optimizer.found_inf
        elif not bad.item():  # free on a CPU; on a GPU only RMSprop and SGD (not fused here) wait for this
            self.optimizer.step()
        self.skips[0].mul_(bad).add_(bad)
        self.skips[1].add_(bad)
        return bad

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @contextlib.contextmanager
    def _gradient_sync(self, sync: bool) -> Iterator[None]:
        """DDP averages the gradients during the backward pass of the last micro-batch only."""
        if sync or not isinstance(self.forward, DistributedDataParallel):
            yield
        else:
            with self.forward.no_sync():
                yield
