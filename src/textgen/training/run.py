"""Set up a language-model run (data, tokenizer, model, resume) and hand it to the Trainer.

A run directory holds ``tokens.bin``/``tokens.json`` (the encoded corpus), ``latest/`` (saved at
every validation, every ``save_every`` steps and on exit; what ``--resume`` reads) and ``best/``
(lowest validation loss; what commands given the run directory load).
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
from tqdm import tqdm

from textgen.config import FIELD_SECTION, ModelConfig, RunConfig
from textgen.data.batches import ShuffledWindows, StatefulStreams
from textgen.data.corpus import resolve_paths
from textgen.data.tokens import prepare_tokens
from textgen.errors import CheckpointError, ConfigError, TextgenError
from textgen.models.lm import RecurrentLM
from textgen.sampling.decode import encode_prompt
from textgen.training.callbacks import MetricsLog, PrintSamples, Report
from textgen.training.checkpoint import (
    discard_leftovers,
    load_tokenizer,
    load_trainer_state,
    load_weights,
    read_config,
    resolve_checkpoint,
    save_checkpoint,
)
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
    "seed",
    "optimizer",
}


@dataclass
class RunResult:
    out: Path
    reason: str  # done, max_steps, time or interrupted
    step: int
    val_loss: float | None
    best_val: float | None


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _absolute(corpus: list[str]) -> list[str]:
    return [c if c == "-" else str(Path(c).expanduser().absolute()) for c in corpus]


def _resume_config(out: Path, cfg: RunConfig, explicit: Iterable[str]) -> tuple[RunConfig, Path] | None:
    """The saved config with the user's explicit settings on top, or None if nothing was saved yet."""
    if not (out / "latest").exists() and not (out / ".latest.old").is_dir():
        return None
    latest = out / "latest" if (out / "latest").exists() else resolve_checkpoint(out / "latest")
    saved, _ = read_config(latest)
    mine, theirs = cfg.to_dict(), saved.to_dict()
    changes: dict[str, Any] = {}
    for key in explicit:
        section = FIELD_SECTION[key]
        new, old = mine[section][key], theirs[section][key]
        if key == "corpus":
            new = _absolute(new)
        if new != old and key in FIXED_ON_RESUME:
            raise ConfigError(
                f"--resume: the run in {out} was trained with {key} = {old!r}, not {new!r}; "
                "drop that setting or start a new run with another --out"
            )
        changes[key] = new
    return saved.updated(changes), latest


def run_training(
    cfg: RunConfig,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    explicit: Iterable[str] = (),
    log: Callable[[str], None] = tqdm.write,
) -> RunResult:
    """Train a RecurrentLM as ``cfg`` says, writing checkpoints under ``out``."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    if resume and not out.is_dir():
        raise ConfigError(f"--resume: there is no run directory {out}")
    latest: Path | None = None
    if resume:
        resumed = _resume_config(out, cfg, explicit)
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
    device = pick_device(cfg.train.device)
    paths = resolve_paths(cfg.data.corpus, stdin_spool=out / "stdin.txt", reuse_spool=latest is not None)
    cfg.data.corpus = _absolute(cfg.data.corpus)  # saved absolute: the run resumes from any directory
    torch.manual_seed(cfg.train.seed)

    tokenizer, data = prepare_tokens(cfg.data, paths, out, load_tokenizer(latest) if latest else None, log=log)
    if cfg.train.sample_length and cfg.train.sample_temperatures:
        try:
            encode_prompt(tokenizer, cfg.train.sample_prompt)
        except TextgenError as e:
            raise ConfigError(f"--sample-prompt: {e}") from None
    cfg.model.vocab_size = tokenizer.vocab_size
    try:
        model = RecurrentLM(cfg.model).to(device)
    except (MemoryError, torch.OutOfMemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError | torch.OutOfMemoryError) and "alloc" not in str(e):
            raise
        raise ConfigError(
            f"the model does not fit in {device} memory; lower --hidden-size, --layers or --embedding-dim"
        ) from None
    t = cfg.train
    if t.mode == "stateful":
        batches: StatefulStreams | ShuffledWindows = StatefulStreams(data.train, t.batch_size, t.seq_len)
    else:
        batches = ShuffledWindows(data.train, t.batch_size, t.seq_len, t.shuffle_buffer, t.window_stride, t.seed)
    if latest is None:  # everything is checked: only now replace an old run (--overwrite)
        for target in existing:
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    else:  # what a killed run left behind: copies from a save, temporary files from a report
        for name in ("latest", "best"):
            discard_leftovers(out / name)
        for leftover in out.glob(".*.tmp"):
            if leftover.is_file():
                leftover.unlink()
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"{len(data.ids):,} tokens ({data.split:,} train, {len(data.val):,} validation), vocabulary "
        f"{tokenizer.vocab_size:,}, model {n_params:,} parameters on {device}; "
        f"{batches.steps_per_epoch:,} steps per epoch"
    )

    def save(which: str) -> None:
        m = trainer.last_metrics
        best = trainer.pos.best_val
        info = {
            "step": trainer.pos.step,
            "epoch": trainer.pos.epoch,
            "tokens": trainer.pos.tokens,
            "val_loss": m.loss if m else None,
            "best_val": best if math.isfinite(best) else None,
        }
        save_checkpoint(out / which, model, cfg, tokenizer, info, trainer.state_dict() if which == "latest" else None)

    val_chars_per_token = data.val_chars / len(data.val) if len(data.val) else 1.0
    trainer = Trainer(
        model,
        batches,
        t,
        device=device,
        save=save,
        val_ids=data.val if len(data.val) > 1 else None,
        val_chars_per_token=val_chars_per_token,
        log=log,
    )
    if latest is not None:
        load_weights(model, latest)
        model.rnn.flatten_parameters()
        restore_trainer(trainer, model, latest)
        log(f"resuming from {latest} at step {trainer.pos.step:,}")
        if trainer.pos.epoch >= t.epochs or (t.max_steps and trainer.pos.step >= t.max_steps):
            log(
                f"nothing to do: the run already reached epoch {trainer.pos.epoch} and step {trainer.pos.step:,}; "
                "raise --epochs or --max-steps (both count from the start of the run) to train further"
            )
    resume_step = trainer.pos.step if latest is not None else None
    metrics = MetricsLog(out, resume_step, t.tensorboard)
    samples = PrintSamples(
        tokenizer,
        t.sample_temperatures,
        t.sample_length,
        t.sample_prompt,
        t.seed,
        log,
        path=out / "samples.jsonl",
        window=t.sample_window,
        train_ids=data.train,
        resume_step=resume_step,
    )
    trainer.callbacks = [metrics, samples, Report(out, log)]

    try:
        reason = _fit_until_interrupted(trainer, log)
        if reason == "interrupted":
            trainer.save("latest")
            log(
                f"interrupted at step {trainer.pos.step:,}: saved {out / 'latest'}; continue with "
                f"textgen train --out {out} --resume"
            )
        else:
            if reason == "early_stop":
                log(f"stopping early: {t.patience} validations without improvement (best {trainer.pos.best_val:.4f})")
            if trainer.last_eval_step != trainer.pos.step:
                trainer.validate_and_save("train_end")
            else:  # validated and saved at this step already (perhaps by the run this one resumes)
                trainer.emit("train_end")
    finally:
        metrics.close()
    m = trainer.last_metrics
    best = trainer.pos.best_val
    return RunResult(out, reason, trainer.pos.step, m.loss if m else None, best if math.isfinite(best) else None)


def restore_trainer(trainer: Trainer, model: RecurrentLM, latest: Path) -> None:
    """Load ``latest/trainer_state.pt`` into ``trainer``; a state that does not fit this run (damaged,
    or crafted) is a CheckpointError now, not a crash some steps into training."""
    state = load_trainer_state(latest)
    try:
        if not isinstance(state, dict):
            raise TypeError("not a mapping")
        trainer.load_state_dict(state)
        if trainer.hidden is not None and trainer.batches.stateful:
            expected = model.init_state(trainer.cfg.batch_size)
            got, want = (list(s) if isinstance(s, tuple) else [s] for s in (trainer.hidden, expected))
            if [h.shape for h in got] != [h.shape for h in want] or not all(h.is_floating_point() for h in got):
                raise ValueError("the carried hidden state does not fit the model")
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
        raise CheckpointError(f"{latest}/trainer_state.pt does not fit this run ({why})") from None


def _fit_until_interrupted(trainer: Trainer, log: Callable[[str], None]) -> str:
    """Run ``trainer.fit``; the first Ctrl-C finishes the current step and stops, a second aborts."""

    def on_sigint(signum: int, frame: Any) -> None:
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True
        print("\nstopping after this step to save a checkpoint (Ctrl-C again to abort without saving)", file=sys.stderr)

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        return trainer.fit()
    try:
        return trainer.fit()
    finally:
        signal.signal(signal.SIGINT, previous)
