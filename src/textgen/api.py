"""The Python API that the CLI wraps: ``textgen.train(...)``, ``textgen.load(dir).generate(...)`` for a
language model and ``textgen.load(dir).translate([...])`` for a translation model.

Loading is inference only: ``training/`` is imported by ``train()`` alone."""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgen.checkpoint import load_checkpoint
from textgen.config import RunConfig, load_config_file
from textgen.inference.device import pick_device
from textgen.inference.generator import TextGenerator
from textgen.inference.translator import Translator, check_translation_settings
from textgen.kinds import get_kind, kind_of
from textgen.presets import get_preset

if TYPE_CHECKING:
    from textgen.training.run import RunResult

__all__ = ["TextGenerator", "Translator", "build_config", "check_translation_settings", "default_out", "load", "train"]


def load(path: str | Path, device: str = "auto") -> TextGenerator | Translator:
    """Load a checkpoint directory, or a run directory's best checkpoint: a TextGenerator for a
    language model, a Translator for a translation model (whatever its kind's wrapper is)."""
    checkpoint = load_checkpoint(path, pick_device(device))
    return get_kind(checkpoint.config.model.task).wrap(checkpoint)


def build_config(
    preset: str | None = None, config_file: str | Path | None = None, **settings: Any
) -> tuple[RunConfig, set[str]]:
    """Defaults, then the preset, then the config file, then ``settings``; and the names set explicitly."""
    layers: dict[str, Any] = {}
    if preset:
        layers.update(get_preset(preset).settings)
    if config_file:
        layers.update(load_config_file(config_file))
    layers.update(settings)
    return RunConfig().updated(layers), set(layers)


def default_out(cfg: RunConfig) -> Path:
    """``runs/<name of the first input path>`` (a glob names it by its folder), ``runs/stdin``, or the
    kind's own default (``runs/tinyshakespeare`` for a language model on the bundled corpus)."""
    kind = kind_of(cfg)
    inputs = kind.inputs(cfg)
    if not inputs:
        return Path("runs") / kind.default_run
    if inputs[0] == "-":
        return Path("runs/stdin")
    first = Path(inputs[0].rstrip("/"))
    while glob.has_magic(str(first)) and first != first.parent:
        first = first.parent
    name = re.sub(r"[^\w.-]+", "_", first.stem if not glob.has_magic(first.name) else "").strip("._")
    return Path("runs") / (name or "corpus")


def train(
    corpus: str | list[str] | None = None,
    out: str | Path | None = None,
    *,
    pairs: str | list[str] | None = None,
    preset: str | None = None,
    config_file: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    **settings: Any,
) -> RunResult:
    """Train a model; ``settings`` are any config fields (``hidden_size=512``, ``max_steps=100`` ...).

    A language model trains on ``corpus``; a translation model (``task="translate"``) on ``pairs``.
    """
    from textgen.training.run import run_training

    if corpus is not None:
        settings["corpus"] = [corpus] if isinstance(corpus, str) else list(corpus)
    if pairs is not None:
        settings["pairs"] = [pairs] if isinstance(pairs, str) else list(pairs)
    cfg, explicit = build_config(preset, config_file, **settings)
    out = Path(out) if out is not None else default_out(cfg)
    return run_training(cfg, out, resume=resume, overwrite=overwrite, explicit=explicit)
