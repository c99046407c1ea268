"""A loaded language model: sample from it, stream it, score text with it (what ``textgen.load`` returns)."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from textgen.checkpoint import Checkpoint
from textgen.config import SampleConfig
from textgen.data.corpus import resolve_paths
from textgen.inference.metrics import EvalResult
from textgen.inference.scoring import evaluate_files
from textgen.sampling.decode import Generation
from textgen.sampling.text import Sample


class TextGenerator:
    """A loaded language model with its tokenizer, ready to sample from or score text."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.tokenizer = checkpoint.tokenizer
        self.config = checkpoint.config
        self.kind = checkpoint.config.model.task  # the registry's name for it (textgen.kinds)

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
        cfg = dataclasses.replace(SampleConfig.from_settings(settings), num_samples=1)
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
