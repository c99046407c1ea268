"""Trainer callbacks: samples at several temperatures while training."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from textgen.config import SampleConfig
from textgen.data.tokenizers import AnyTokenizer
from textgen.sampling.decode import generate_texts


class PrintSamples:
    """At the end of each epoch (and of training) print one sample per temperature.

    Samples draw from their own seeded generator, so they never disturb training's random state.
    """

    def __init__(
        self,
        tokenizer: AnyTokenizer,
        temperatures: Sequence[float],
        length: int,
        prompt: str,
        seed: int,
        log: Callable[[str], None] = print,
    ) -> None:
        self.tokenizer, self.temperatures, self.length = tokenizer, list(temperatures), length
        self.prompt, self.seed, self.log = prompt, seed, log
        self.last_step = -1

    def __call__(self, event: str, trainer: object) -> None:
        if event not in ("epoch_end", "train_end") or not self.length or not self.temperatures:
            return
        step = trainer.pos.step  # type: ignore[attr-defined]
        if step == self.last_step:
            return
        self.last_step = step
        for t in self.temperatures:
            settings = SampleConfig(max_new_tokens=self.length, temperature=t, seed=self.seed + step)
            text = generate_texts(trainer.model, self.tokenizer, self.prompt, settings)[0]  # type: ignore[attr-defined]
            self.log(f"--- sample at step {step:,}, temperature {t} ---\n{self.prompt}{text}\n")
