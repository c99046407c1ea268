"""Run a training: check its settings and resume, have its task kind set it up (``textgen.kinds``:
data, tokenizers, model, task), and hand that to the Trainer.

A run directory holds the encoded data (a language model's ``tokens.bin``/``tokens.json``; a
translation model's ``pairs/`` and ``heldout.tsv``), ``latest/`` (saved at every validation,
every ``save_every`` steps and on exit; what ``--resume`` reads) and ``best/`` (lowest validation
loss; what commands given the run directory load).
"""

from __future__ import annotations

import math
import shutil
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm  # a notebook's widget bar in Jupyter and Colab

from textgen.checkpoint import (
    load_trainer_state,
    load_weights,
    read_config,
    resolve_checkpoint,
    save_checkpoint,
)
from textgen.config import FIELD_SECTION, ModelConfig, RunConfig
from textgen.errors import CheckpointError, ConfigError, TextgenError, TrainingError
from textgen.files import discard_leftovers, discard_temporary_files
from textgen.kinds import kind_of
from textgen.recipe import applies
from textgen.training import distributed
from textgen.training.callbacks import LiveLossPlot, MetricsLog, Report, in_notebook
from textgen.training.events import Event
from textgen.training.setup import absolute
from textgen.training.trainer import Trainer

CHECKPOINTS = ("latest", "best", ".latest.old", ".best.old")  # what makes a directory "a run"
# Settings a resumed run must keep: the model's shape, the tokens, and what decides the data position.
# The rest (epochs, max_steps, lr, clip, evaluation, samples, device...) may change on resume.
FIXED_ON_RESUME = {f.name for f in fields(ModelConfig)} | {
    "corpus",
    "level",
    "lowercase",
    "min_freq",
    "vocab_size",
    "records",
    "record_prefix",
    "val_fraction",
    "mode",
    "batch_size",
    "seq_len",
    "shuffle_buffer",
    "window_stride",
    "random_offset",
    "val_corpus",
    "pretokenized",
    "seed",
    "optimizer",
    "pairs",
    "reverse",
    "max_words",
    "max_tokens",
    "shared_vocab",
}


@dataclass
class RunResult:
    out: Path
    reason: str  # done, max_steps, time or interrupted
    step: int
    val_loss: float | None
    best_val: float | None


def _resume_config(out: Path, cfg: RunConfig, explicit: Iterable[str]) -> tuple[RunConfig, Path] | None:
    """The saved config with the user's explicit settings on top, or None if nothing was saved yet."""
    if not (out / "latest").exists() and not (out / ".latest.old").is_dir():
        return None
    latest = out / "latest" if (out / "latest").exists() else resolve_checkpoint(out / "latest")
    saved, spec, _ = read_config(latest)
    inputs_field = kind_of(saved).inputs_field
    mine, theirs = cfg.to_dict(), saved.to_dict()
    changes: dict[str, Any] = {}
    for key in explicit:
        section = FIELD_SECTION[key]
        new, old = mine[section][key], theirs[section][key]
        if key == inputs_field:  # compared as the files they name: the run kept them as absolute paths
            new, old = absolute(new), spec.inputs
        elif key == "val_corpus":
            new = absolute(new)
        if new != old and key in FIXED_ON_RESUME:
            raise ConfigError(
                f"--resume: the run in {out} was trained with {key} = {old!r}, not {new!r}; "
                "drop that setting or start a new run with another --out"
            )
        changes[key] = new if key == "val_corpus" else mine[section][key]
    return saved.updated(changes), latest


def run_training(
    cfg: RunConfig,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    explicit: Iterable[str] | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> RunResult:
    """Train the model ``cfg`` describes (a language model or a translation model) under ``out``.

    ``explicit``: the settings the user gave (``api.build_config`` says which); the recipe chooses the
    others (``textgen.recipe``). None: not known, so ``cfg`` is trained as it is.

    Under torchrun every process calls this; rank 0 prepares the data, prints and writes every
    file, the others read what it wrote and train their share of each batch (``distributed.py``).
    """
    world = distributed.world_from_env()
    if not world.main:
        log = _silent
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    if resume and not out.is_dir():
        raise ConfigError(f"--resume: there is no run directory {out}")
    latest: Path | None = None
    if resume:
        resumed = _resume_config(out, cfg, explicit or ())
        if resumed is None:
            log(f"no checkpoint in {out} yet: starting from the beginning")
        else:
            cfg, latest = resumed
    existing = [out / name for name in CHECKPOINTS if (out / name).exists()]
    if existing and latest is None and not overwrite:
        raise ConfigError(
            f"{out} already holds a run: use --resume to continue it, --overwrite to start again, or another --out"
        )
    cfg.validate()
    device = distributed.device_for(cfg.train.device, world)
    if latest is None and cfg.data.val_corpus:  # kept as absolute paths, so a resumed run finds them from anywhere
        cfg = cfg.updated({"val_corpus": absolute(cfg.data.val_corpus)})
    if latest is None and explicit is not None and cfg.train.recipe == "auto":
        if not world.distributed:
            cfg = kind_of(cfg).recipe(cfg, set(explicit), out, device, log)
            cfg.validate()
        elif world.main and applies(cfg, explicit):  # each process would probe its own speed and choose alone
            log("recipe: off under torchrun; the plain defaults apply unless you give the model's shape")
    _check_precision(cfg.train.precision, device)
    if world.distributed and "-" in kind_of(cfg).inputs(cfg):
        raise ConfigError("reading stdin ('-') does not work under torchrun: save the text to a file first")
    if world.distributed and cfg.train.batch_size % (world.size * cfg.train.accumulate):
        raise ConfigError(
            f"batch_size {cfg.train.batch_size} must be a multiple of {world.size * cfg.train.accumulate} "
            f"({world.size} processes x accumulate {cfg.train.accumulate}): batch_size is the global batch, "
            "shared equally among the processes' micro-batches"
        )
    if world.main and out.is_dir():  # what a killed run left behind before its first checkpoint
        discard_temporary_files(out)
    with distributed.process_group(world, device):
        return _train(cfg, out, latest, existing, device, world, log)


def _train(
    cfg: RunConfig,
    out: Path,
    latest: Path | None,
    existing: list[Path],
    device: torch.device,
    world: distributed.World,
    log: Callable[[str], None],
) -> RunResult:
    """The run once its settings are checked (and, under torchrun, the processes have met)."""
    torch.manual_seed(cfg.train.seed)
    make = kind_of(cfg).prepare
    failure: TextgenError | None = None
    if world.main:  # rank 0 writes the encoded data; the others then read it, with rank 0's tokenizers
        try:
            setup = make(cfg, out, latest, device, log)
        except TextgenError as e:  # a bad corpus, say: the other processes must hear of it, not hang up
            if not world.distributed:
                raise
            failure = e
    if world.distributed:
        distributed.barrier(world)
        message = {"error": str(failure)} if failure else (setup.tokenizers_json() if world.main else None)
        shared = distributed.broadcast_json(world, message, device)
        if failure is not None:
            raise failure
        if "error" in shared:
            raise TextgenError(f"stopped: rank 0 could not prepare the data ({shared['error']})")
        if not world.main:
            setup = make(cfg, out, latest, device, log, shared)
    model, t = setup.model, cfg.train
    if world.distributed:  # the same initial weights everywhere, but each process its own dropout masks
        torch.manual_seed(t.seed + world.rank)
    if world.main and latest is None:  # everything is checked: only now replace an old run (--overwrite)
        for target in existing:
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    elif world.main:  # what a killed run left behind: copies from a save (temporary files went at the start)
        for name in ("latest", "best"):
            discard_leftovers(out / name)
    n_params = sum(p.numel() for p in model.parameters())
    where = f"{world.size} processes ({device.type})" if world.distributed else str(device)
    log(
        f"{setup.summary}, model {n_params:,} parameters on {where}; "
        f"{setup.task.batches.steps_per_epoch:,} steps per epoch"
    )

    def save(which: str, state: dict[str, Any] | None, event: Event) -> None:
        m = event.metrics
        info = {
            "step": event.step,
            "epoch": int(event.epoch),
            "tokens": event.tokens,
            "val_loss": m.loss if m else None,
            "best_val": event.best_val if math.isfinite(event.best_val) else None,
            **(m.extra if m else {}),
        }
        save_checkpoint(out / which, model, cfg, setup.spec, setup.tokenizer, info, state, setup.source_tokenizer)

    trainer = Trainer(model, setup.task, t, device=device, save=save, log=log, world=world)
    if latest is not None:
        load_weights(model, latest)
        model.flatten_parameters()
        restore_trainer(trainer, model, latest)
        log(f"resuming from {latest} at step {trainer.pos.step:,}")
        if trainer.pos.epoch >= t.epochs or (t.max_steps and trainer.pos.step >= t.max_steps):
            log(
                f"nothing to do: the run already reached epoch {trainer.pos.epoch} and step {trainer.pos.step:,}; "
                "raise --epochs or --max-steps (both count from the start of the run) to train further"
            )
    resume_step = trainer.pos.step if latest is not None else None
    metrics = None
    if world.main:
        metrics = MetricsLog(out, resume_step, t.tensorboard, setup.task.metric_names)
        trainer.callbacks = [metrics, *setup.callbacks(resume_step), Report(out, log)]
        if in_notebook():  # Jupyter, Colab: the loss curve under the cell as it trains
            trainer.callbacks.append(LiveLossPlot(out))
    try:
        reason = _fit_until_interrupted(trainer, log)
    finally:
        if metrics is not None:
            metrics.close()
    if reason == "diverged":
        saved = trainer.saving.saved_step
        kept = f"{out / 'latest'} (step {saved:,})" if saved or latest else "none: no checkpoint was written"
        raise TrainingError(
            f"stopped at step {trainer.pos.step:,}: {t.max_bad_steps} steps in a row had a non-finite loss or "
            f"gradient and were skipped; the last good checkpoint is {kept}. Try a lower --lr, --clip, "
            "or --precision fp32"
        )
    if reason == "interrupted":
        log(
            f"interrupted at step {trainer.pos.step:,}: saved {out / 'latest'}; continue with "
            f"textgen train --out {out} --resume"
        )
    m = trainer.last_metrics
    best = trainer.pos.best_val
    return RunResult(out, reason, trainer.pos.step, m.loss if m else None, best if math.isfinite(best) else None)


def _silent(message: str) -> None:
    """The log of processes other than rank 0: only rank 0 prints."""


def _check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device (the CPU has no fp16 LSTM); use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--precision bf16: this GPU has no bf16 arithmetic; use fp16")


def restore_trainer(trainer: Trainer, model: nn.Module, latest: Path) -> None:
    """Load ``latest/trainer_state.pt`` into ``trainer``; a state that does not fit this run (damaged,
    or crafted) is a CheckpointError now, not a crash some steps into training."""
    state = load_trainer_state(latest)
    try:
        if not isinstance(state, dict):
            raise TypeError("not a mapping")
        trainer.load_state_dict(state)
        hidden = getattr(trainer.task, "resumed", None)  # a language model's state carried across batches
        if hidden is not None and getattr(trainer.batches, "stateful", False):
            expected = model.init_state(trainer.cfg.batch_size // trainer.world.size)  # this process's rows
            if [h.shape for h in hidden] != [h.shape for h in expected] or not all(
                h.is_floating_point() for h in hidden
            ):
                raise ValueError("the carried hidden state does not fit the model")
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
        raise CheckpointError(f"{latest}/trainer_state.pt does not fit this run ({why})") from None


def _fit_until_interrupted(trainer: Trainer, log: Callable[[str], None]) -> str:
    """Run ``trainer.fit``; the first Ctrl-C (or SIGTERM: torchrun passes Ctrl-C on to its processes, and
    SLURM sends SIGTERM before preempting a job) finishes the current step and stops, a second aborts."""

    def on_signal(signum: int, frame: Any) -> None:
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True
        if trainer.world.main:
            print(
                "\nstopping after this step to save a checkpoint (Ctrl-C again to abort without saving)",
                file=sys.stderr,
            )

    handled = (signal.SIGINT, signal.SIGTERM)
    try:
        previous = [signal.signal(sig, on_signal) for sig in handled]
    except ValueError:  # not the main thread: leave the signals alone
        return trainer.fit()
    try:
        return trainer.fit()
    finally:
        for sig, handler in zip(handled, previous):
            signal.signal(sig, handler)
