"""The Python API that the CLI wraps: ``textgen.train(...)``, ``textgen.load(dir).generate(...)`` for a
language model and ``textgen.load(dir).translate([...])`` for a translation model."""

from __future__ import annotations

import glob
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from textgen.config import RunConfig, SampleConfig, load_config_file
from textgen.data.corpus import resolve_paths
from textgen.data.pairs import PairBatches, Ragged, read_pairs
from textgen.data.tokenizers import AnyTokenizer
from textgen.errors import ConfigError
from textgen.presets import get_preset
from textgen.sampling.decode import Generation
from textgen.sampling.text import Sample
from textgen.sampling.translate import TextTranslator
from textgen.training.checkpoint import Checkpoint, load_checkpoint
from textgen.training.evaluate import EvalResult, evaluate_files
from textgen.training.run import RunResult, pick_device, run_training
from textgen.training.tasks import Metrics, TranslationTask


class TextGenerator:
    """A loaded language model with its tokenizer, ready to sample from or score text."""

    kind = "lm"  # a language model; seq2seq checkpoints load as translators (kind "translate")

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


class Translator:
    """A loaded translation model with its tokenizers: ``translate`` sentences, ``evaluate`` on pairs."""

    kind = "translate"

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.config = checkpoint.config
        self.target_tokenizer = checkpoint.tokenizer
        self.source_tokenizer = checkpoint.source_tokenizer or checkpoint.tokenizer
        self.text = TextTranslator(self.model, self.source_tokenizer, self.target_tokenizer)  # type: ignore[arg-type]

    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    @property
    def tokenizer(self) -> AnyTokenizer:
        """The target side's tokenizer (what the model writes)."""
        return self.target_tokenizer

    def translate(
        self,
        sources: str | Sequence[str],
        *,
        beams: int = 1,
        length_penalty: float = 1.0,
        max_length: int | None = None,
        max_length_ratio: float = 2.0,
    ) -> str | list[str]:
        """The translation of one sentence (a string) or of each of a list of sentences (a list).

        ``beams`` 1 is greedy; above 1 beam search ranks finished translations by
        ``log p / length ** length_penalty``. A translation has at most ``max_length`` tokens, by
        default ``max_length_ratio`` times its source's tokens plus 10.
        """
        check_translation_settings(beams, length_penalty, max_length, max_length_ratio)
        texts = (
            [sources] if isinstance(sources, str) else list(sources) if isinstance(sources, list | tuple) else [None]
        )
        if not all(isinstance(t, str) for t in texts):
            raise ConfigError("sources must be a string or a list of strings")
        out = self.text.translate(
            texts, beams=beams, length_penalty=length_penalty, max_length=max_length, max_length_ratio=max_length_ratio
        )
        return out[0] if isinstance(sources, str) else out

    def evaluate(
        self,
        pairs: str | list[str],
        *,
        beams: int = 1,
        reverse: bool | None = None,
        encoding_errors: str = "strict",
        batch_size: int = 64,
    ) -> Metrics:
        """Teacher-forced loss, perplexity and bits per character, and BLEU, chrF and exact match of the
        translations (``extra``), on pairs files read as in training (``reverse`` as the model was trained)."""
        check_translation_settings(beams, 1.0, None, 2.0)
        specs = [pairs] if isinstance(pairs, str) else list(pairs)
        reverse = self.config.data.reverse if reverse is None else reverse
        with tempfile.TemporaryDirectory() as tmp:
            paths = resolve_paths(specs, Path(tmp) / "stdin.tsv", what="pairs file")
            found = read_pairs(paths, encoding_errors, reverse)
        src = Ragged.build([self.source_tokenizer.encode(p.source) for p in found])
        tgt = Ragged.build([self.target_tokenizer.encode(p.target) for p in found])
        model = self.model
        batches = PairBatches(src, tgt, batch_size, model.start_id, model.end_id, shuffle=False)
        task = TranslationTask(batches, heldout=batches, pairs=found, translator=self.text, beams=beams)
        metrics = task.validate(model, self.device)
        assert metrics is not None
        metrics.extra["sentences"] = len(found)
        return metrics


def check_translation_settings(
    beams: int, length_penalty: float, max_length: int | None, max_length_ratio: float
) -> None:
    """Refuse out-of-range decoding settings, naming them (beams and the length penalty as sampling does)."""
    SampleConfig.from_settings({"beams": beams, "length_penalty": length_penalty}).validate()
    if max_length is not None and (not isinstance(max_length, int) or not 1 <= max_length <= 10_000):
        raise ConfigError(f"max_length must be an integer in [1, 10000], got {max_length!r}")
    if not isinstance(max_length_ratio, int | float) or not 0 < max_length_ratio <= 100:
        raise ConfigError(f"max_length_ratio must be a number in (0, 100], got {max_length_ratio!r}")


def load(path: str | Path, device: str = "auto") -> TextGenerator | Translator:
    """Load a checkpoint directory, or a run directory's best checkpoint: a TextGenerator for a
    language model, a Translator for a translation model."""
    checkpoint = load_checkpoint(path, pick_device(device))
    return Translator(checkpoint) if checkpoint.config.model.task == "translate" else TextGenerator(checkpoint)


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
    """``runs/<name of the first corpus or pairs path>`` (a glob names it by its folder), ``runs/stdin`` or
    ``runs/tinyshakespeare``."""
    corpus = cfg.data.pairs if cfg.model.task == "translate" else cfg.data.corpus
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
    if corpus is not None:
        settings["corpus"] = [corpus] if isinstance(corpus, str) else list(corpus)
    if pairs is not None:
        settings["pairs"] = [pairs] if isinstance(pairs, str) else list(pairs)
    cfg, explicit = build_config(preset, config_file, **settings)
    out = Path(out) if out is not None else default_out(cfg)
    return run_training(cfg, out, resume=resume, overwrite=overwrite, explicit=explicit)
