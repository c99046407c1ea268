"""One generation request through the decode core: the prompt once, then one token per step, state carried.

Unlike the tutorials, the whole window is never re-run: the prompt goes through the model in one
forward pass and each new token is a single step of the model's ``Stepper`` from the carried state.
``num_samples`` samples are decoded together as the rows of one request. A sample ends at the
end-of-text token (``eos``), at a stop string (``stop``; the stop string is left out) or after
``max_new_tokens`` (``length``). With ``beams`` above 1 it runs beam search instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from textgen.config import SampleConfig
from textgen.data.tokenizers import AnyTokenizer
from textgen.errors import ConfigError, TextgenError
from textgen.models.protocol import eval_mode
from textgen.sampling.beam import beam_search
from textgen.sampling.core import DecodeCore, Request
from textgen.sampling.precision import choose_precision
from textgen.sampling.processors import processors_for
from textgen.sampling.text import Sample, SampleStream, prompt_for


class Generation:
    """One decoding run. Iterate for (sample index, text piece) as text is produced; afterwards
    ``samples`` holds each sample's text, tokens and finish reason (and with ``show_probs`` K, each
    token's probability and the K most likely tokens).

    Steps run on the model's fast ``Stepper`` in ``settings.decode_precision`` (``auto``: see
    ``sampling/precision.py``); with ``fast=False`` they call the model's forward once per token
    instead (the reference). With ``record=False`` (streaming, where the caller keeps the pieces)
    the samples keep only their finish reason, so memory stays flat however long the output.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: AnyTokenizer,
        prompt: str = "",
        settings: SampleConfig | None = None,
        show_probs: int = 0,
        fast: bool = True,
        record: bool = True,
    ) -> None:
        self.cfg = settings or SampleConfig()
        self.cfg.validate()
        if show_probs < 0 or (show_probs and self.cfg.beams > 1):
            raise ConfigError(f"show_probs must be 0 or more, and 0 with beam search; got {show_probs}")
        self.model, self.tokenizer, self.show_probs, self.fast = model, tokenizer, show_probs, fast
        self.prompt = prompt_for(tokenizer, prompt)
        self.request = Request(tokenizer, self.prompt, self.cfg, top=show_probs or None, record=record)
        self.samples: list[Sample] = self.request.samples
        self.precision, self.precision_reason = choose_precision(model, self.cfg.decode_precision)
        self.model_calls = 0

    @property
    def context(self) -> list[int]:
        return self.prompt.ids

    def __iter__(self) -> Iterator[tuple[int, str]]:
        with eval_mode(self.model), torch.no_grad():
            yield from self._beams() if self.cfg.beams > 1 else self._sample()

    def _sample(self) -> Iterator[tuple[int, str]]:
        core = DecodeCore(self.model, self.tokenizer, self.request.n, self.precision, self.fast)
        request = self.request
        try:
            for update in core.admit(request):
                if update.text:
                    yield update.index, update.text
            while request in core.requests:
                for _, updates in core.tick():  # the only request
                    if request.error is not None:
                        raise TextgenError(request.error)
                    for update in updates:
                        if update.text:
                            yield update.index, update.text
        finally:
            self.model_calls = core.model_calls
            core.close()

    def _beams(self) -> Iterator[tuple[int, str]]:
        """Beam search: the best ``num_samples`` hypotheses, each shown whole once found."""
        cfg, tok = self.cfg, self.tokenizer
        found = beam_search(
            self.model,
            self.prompt.ids,
            beams=cfg.beams,
            max_new_tokens=cfg.max_new_tokens,
            length_penalty=cfg.length_penalty,
            eot_id=tok.eot_id,
            processors=processors_for(cfg, [tok.unk_id], filters=False),
            skip=self.prompt.skip,
            precision=self.precision,
        )
        streams = [SampleStream(tok, self.prompt.ids, cfg.stop) for _ in found[: cfg.num_samples]]
        self.samples = [s.sample for s in streams]
        for b, (hyp, stream) in enumerate(zip(found, streams)):
            sample = stream.sample
            sample.tokens = hyp.tokens
            sample.finish_reason = "eos" if hyp.ended else "length"
            text, stopped = stream.stops.push("".join(stream.decoder.push(t) for t in hyp.tokens))
            sample.text = text
            if stopped:
                sample.finish_reason = "stop"
            else:
                text += stream.finish()  # what the decoders still held back
            if text:
                yield b, text


def generate_texts(
    model: nn.Module, tokenizer: AnyTokenizer, prompt: str = "", settings: SampleConfig | None = None
) -> list[str]:
    """Every sample's continuation of ``prompt`` as a whole string."""
    run = Generation(model, tokenizer, prompt, settings)
    for _ in run:
        pass
    return [s.text for s in run.samples]
