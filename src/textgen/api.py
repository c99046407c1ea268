"""The Python API that the CLI wraps: ``textgen.train(...)`` and ``textgen.load(dir).generate(...)``."""

from __future__ import annotations

import glob
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from textgen.config import RunConfig, SampleConfig, load_config_file
from textgen.data.corpus import resolve_paths
from textgen.presets import get_preset
from textgen.sampling.decode import Generation, Sample
from textgen.training.checkpoint import Checkpoint, load_checkpoint
from textgen.training.evaluate import EvalResult, evaluate_files
from textgen.training.run import RunResult, pick_device, run_training


class TextGenerator:
    """A loaded model with its tokenizer, ready to sample from or score text."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.tokenizer = checkpoint.tokenizer
        self.config = checkpoint.config

    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    def generate(self, prompt: str = "", **settings: Any) -> str | list[str]:
        """The continuation of ``prompt``; a list of continuations when ``num_samples`` is above 1.

        ``settings`` are SampleConfig fields: max_new_tokens, temperature, top_k, top_p, min_p,
        typical_p, repetition_penalty, frequency_penalty, presence_penalty, no_repeat_ngram,
        stop, seed, num_samples.
        """
        texts = [s.text for s in self.samples(prompt, **settings)]
        return texts[0] if len(texts) == 1 else texts

    def samples(self, prompt: str = "", show_probs: int = 0, **settings: Any) -> list[Sample]:
        """Each sample's text, token ids and finish reason ("stop", "eos" or "length"); with
        ``show_probs`` K, also each step's drawn-token probability and K most likely tokens."""
        run = Generation(self.model, self.tokenizer, prompt, SampleConfig.from_settings(settings), show_probs)
        for _ in run:
            pass
        return run.samples

    def stream(self, prompt: str = "", **settings: Any) -> Iterator[str]:
        """The continuation of ``prompt`` as text pieces, each yielded as soon as it is drawn (one sample)."""
        cfg = SampleConfig.from_settings(settings)
        cfg.num_samples = 1
        for _, piece in Generation(self.model, self.tokenizer, prompt, cfg, record=False):  # the caller has the text
            yield piece

    def evaluate(
        self,
        corpus: str | list[str],
        *,
        encoding_errors: str = "strict",
        batch_size: int = 32,
        seq_len: int | None = None,
    ) -> EvalResult:
        """Loss, perplexity and bits per character of the model on files, folders or globs."""
        specs = [corpus] if isinstance(corpus, str) else list(corpus)
        with tempfile.TemporaryDirectory() as tmp:  # where "-" (stdin) is spooled
            return evaluate_files(
                self.model,
                self.tokenizer,
                resolve_paths(specs, Path(tmp) / "stdin.txt"),
                records=self.config.data.records,
                record_prefix=self.config.data.record_prefix,
                encoding_errors=encoding_errors,
                batch_size=batch_size,
                seq_len=seq_len or self.config.train.seq_len,
                device=self.device,
            )


def load(path: str | Path, device: str = "auto") -> TextGenerator:
    """Load a checkpoint directory, or a run directory's best checkpoint."""
    return TextGenerator(load_checkpoint(path, pick_device(device)))


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
    """``runs/<name of the first corpus path>`` (a glob names it by its folder), ``runs/stdin`` or
    ``runs/tinyshakespeare``."""
    corpus = cfg.data.corpus
    if not corpus:
        return Path("runs/tinyshakespeare")
    if corpus[0] == "-":
        return Path("runs/stdin")
    first = Path(corpus[0].rstrip("/"))
    while glob.has_magic(str(first)) and first != first.parent:
        first = first.parent
    name = re.sub(r"[^\w.-]+", "_", first.stem if not glob.has_magic(first.name) else "").strip("._")
    return Path("runs") / (name or "corpus")


def train(
    corpus: str | list[str] | None = None,
    out: str | Path | None = None,
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    **settings: Any,
) -> RunResult:
    """Train a model; ``settings`` are any config fields (``hidden_size=512``, ``max_steps=100`` ...)."""
    if corpus is not None:
        settings["corpus"] = [corpus] if isinstance(corpus, str) else list(corpus)
    cfg, explicit = build_config(preset, config_file, **settings)
    out = Path(out) if out is not None else default_out(cfg)
    return run_training(cfg, out, resume=resume, overwrite=overwrite, explicit=explicit)
