"""The incremental decode loop: warm up on the prompt once, then one token per step, state carried.

Unlike the tutorials, the whole window is never re-run: the prompt goes through the model in one
forward pass and each new token is a single step from the carried hidden state. ``num_samples``
sequences are decoded together as one batch. A sample ends at the end-of-text token (``eos``), at
a stop string (``stop``; the stop string is left out) or after ``max_new_tokens`` (``length``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from textgen.config import SampleConfig
from textgen.data.tokenizers import AnyTokenizer, WordTokenizer, check_text
from textgen.errors import ConfigError, TextgenError
from textgen.models.lm import RecurrentLM
from textgen.models.step import FastStep
from textgen.sampling.beam import beam_search
from textgen.sampling.processors import apply_processors, processors_for, reads_history


def encode_prompt(tokenizer: AnyTokenizer, prompt: str) -> list[int]:
    """Prompt ids; an empty prompt starts a new document (end-of-text, or a newline for chars).

    Characters outside a char vocabulary are refused, by name; words outside a word vocabulary
    become the unknown token (``tokenizer.unknown_in`` lists them).
    """
    check_text(prompt)
    if tokenizer.kind == "char":
        unknown = tokenizer.unknown_in(prompt)
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise TextgenError(f"the prompt has characters outside the model's vocabulary: {shown}")
    ids = tokenizer.encode(prompt)
    if ids:
        return ids
    if tokenizer.eot_id is not None:
        return [tokenizer.eot_id]
    newline = tokenizer.encode("\n")
    return newline if newline != [tokenizer.unk_id] else [1]


class IncrementalDecoder:
    """Turns tokens into text pieces as they arrive, holding back incomplete UTF-8 (BPE bytes).

    It decodes a short window of recent tokens; for words it also carries which quotes are open,
    so spacing comes out as decoding the whole text at once would give.
    """

    def __init__(self, tokenizer: AnyTokenizer, context: Sequence[int]) -> None:
        self.tok = tokenizer
        text = [i for i in context if i != tokenizer.eot_id]  # end-of-text is not text
        self.ids = text[-4:]  # a little context so spacing and merges come out right
        self.prefix, self.read = 0, len(self.ids)
        self.word = isinstance(tokenizer, WordTokenizer)
        self.quotes = tokenizer.open_quotes(text[:-4]) if isinstance(tokenizer, WordTokenizer) else frozenset()

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._emit(final=False)

    def flush(self) -> str:
        return self._emit(final=True)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(ids, quotes=self.quotes) if self.word else self.tok.decode(ids)  # type: ignore[call-arg]

    def _emit(self, final: bool) -> str:
        before = self._decode(self.ids[self.prefix : self.read])
        text = self._decode(self.ids[self.prefix :])
        if len(text) <= len(before) or (not final and self.tok.kind == "bpe" and text.endswith("\ufffd")):
            return ""
        if self.word:  # the tokens leaving the window may open or close quotes
            self.quotes = self.tok.open_quotes(self.ids[self.prefix : self.read], self.quotes)  # type: ignore[union-attr]
        del self.ids[: self.read]  # only the window is ever decoded again: memory stays flat
        self.prefix, self.read = 0, len(self.ids)
        return text[len(before) :]


class StopStrings:
    """Cuts a sample's text at the first stop string, holding back text that may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """The text that is safe to show now, and whether a stop string was reached."""
        self.pending += piece
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class TokenChoice:
    """One drawn token with its probability and the most likely alternatives at that step."""

    token: int
    prob: float
    top: list[tuple[int, float]]


@dataclass
class Sample:
    """A finished sample: its text (without the prompt), tokens and why it ended."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "stop", "eos" or "length"
    choices: list[TokenChoice] = field(default_factory=list)  # filled when show_probs > 0


class SampleStream:
    """One sample's text as its tokens arrive: incremental decoding, stop strings and why it ended.

    The decode loop and the server's batcher both feed drawn tokens to one of these per sample, so
    a sample ends the same way however it was decoded. With ``record=False`` (streaming, where the
    caller keeps the pieces) its sample keeps only the finish reason: memory stays flat.
    """

    def __init__(
        self, tokenizer: AnyTokenizer, context: Sequence[int], stops: Sequence[str], record: bool = True
    ) -> None:
        self.decoder = IncrementalDecoder(tokenizer, context)
        self.stops = StopStrings(stops)
        self.eot_id = tokenizer.eot_id
        self.sample = Sample()
        self.record = record
        self.done = False
        self.piece = ""  # the text the last token decoded to, before any stop string cut it

    def push(self, token: int) -> str:
        """The text to show after ``token``; ``done`` turns true at end-of-text or a stop string."""
        self.piece = ""
        if token == self.eot_id:
            self.done, self.sample.finish_reason = True, "eos"
            return self.finish()
        self.piece = self.decoder.push(token)
        text, stopped = self.stops.push(self.piece)
        if stopped:
            self.done, self.sample.finish_reason = True, "stop"
        if self.record:
            self.sample.tokens.append(token)
            self.sample.text += text
        return text

    def finish(self) -> str:
        """The text still held back when the sample ends (cut at a stop string if one completes)."""
        self.done = True
        text, stopped = self.stops.push(self.decoder.flush())
        if stopped:
            self.sample.finish_reason = "stop"
        else:
            text += self.stops.flush()
        if self.record:
            self.sample.text += text
        return text


class TokenHistory:
    """Each sample's prompt and generated tokens, as the processors that read them need (penalties,
    n-gram bans): kept only when some processor reads them, in a buffer that doubles as it fills.
    Without such processors it stays the prompt, so memory does not grow with the output."""

    def __init__(self, context: Sequence[int], n: int, device: torch.device, keep: bool) -> None:
        try:
            self.buffer = torch.tensor([list(context)], device=device).repeat(n, 1)  # (B, P)
        except (RuntimeError, MemoryError):
            raise ConfigError(f"{n} samples of a {len(context):,}-token prompt do not fit in memory") from None
        self.length, self.keep = len(context), keep

    def append(self, tokens: torch.Tensor) -> None:
        """Add one token per sample, (B,)."""
        if not self.keep:
            return
        if self.length == self.buffer.shape[1]:
            try:
                grown = self.buffer.new_empty((self.buffer.shape[0], max(64, 2 * self.length)))
            except (RuntimeError, MemoryError):
                raise ConfigError(
                    f"{self.buffer.shape[0]} samples of {self.length:,} tokens do not fit in memory"
                ) from None
            grown[:, : self.length] = self.buffer
            self.buffer = grown
        self.buffer[:, self.length] = tokens
        self.length += 1

    def ids(self) -> torch.Tensor:
        return self.buffer[:, : self.length]  # (B, t)


class Generation:
    """One decoding run. Iterate for (sample index, text piece) as text is produced; afterwards
    ``samples`` holds each sample's text, tokens and finish reason.

    Steps run on ``FastStep`` (same logits as the model's forward, far less overhead); with
    ``fast=False`` they call the model's forward once per token instead (the reference). With
    ``record=False`` (streaming, where the caller keeps the pieces) the samples keep only their
    finish reason, so memory stays flat however long the output.
    """

    def __init__(
        self,
        model: RecurrentLM,
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
        self.processors = processors_for(self.cfg, banned=[tokenizer.unk_id])
        self.context = encode_prompt(tokenizer, prompt)
        self.skip = 0 if tokenizer.encode(prompt) else 1  # penalties do not count an artificial start token
        self.samples = [Sample() for _ in range(self.cfg.num_samples)]
        self.record = record or bool(show_probs)
        self.model_calls = 0

    def __iter__(self) -> Iterator[tuple[int, str]]:
        with torch.no_grad():
            yield from self._run()

    def _beams(self) -> Iterator[tuple[int, str]]:
        """Beam search: the best ``num_samples`` hypotheses, each shown whole once found."""
        cfg, tok = self.cfg, self.tokenizer
        was_training = self.model.training
        self.model.eval()
        try:
            found = beam_search(
                self.model,
                self.context,
                beams=cfg.beams,
                max_new_tokens=cfg.max_new_tokens,
                length_penalty=cfg.length_penalty,
                eot_id=tok.eot_id,
                processors=processors_for(cfg, [tok.unk_id], filters=False),
                skip=self.skip,
            )
        finally:
            self.model.train(was_training)
        streams = [SampleStream(tok, self.context, cfg.stop) for _ in found[: len(self.samples)]]
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

    def _run(self) -> Iterator[tuple[int, str]]:
        if self.cfg.beams > 1:
            yield from self._beams()
            return
        cfg, model, tok = self.cfg, self.model, self.tokenizer
        device = model.head.weight.device
        generator = torch.Generator(device=device)
        if cfg.seed is None:
            generator.seed()
        else:
            generator.manual_seed(cfg.seed)
        was_training = model.training
        model.eval()
        n = cfg.num_samples
        streams = [SampleStream(tok, self.context, cfg.stop, record=self.record) for _ in range(n)]
        self.samples = [s.sample for s in streams]
        try:
            history = TokenHistory(self.context, n, device, keep=reads_history(self.processors))
            logits, state = model(history.ids())  # prompt warm-up in one pass
            self.model_calls += 1
            last = logits[:, -1]  # (B, V)
            fast = FastStep(model, n, state, cfg.decode_precision) if self.fast else None
            for step in range(cfg.max_new_tokens):
                probs = apply_processors(self.processors, history.ids()[:, self.skip :], last.float()).softmax(-1)
                try:
                    token = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
                except RuntimeError:
                    if bool(probs.isfinite().all()):
                        raise
                    raise TextgenError("the model's scores are not finite (nan or inf): its weights overflow") from None
                if self.show_probs:
                    top_p, top_i = probs.topk(min(self.show_probs, probs.shape[-1]), dim=-1)
                    chosen = probs.gather(1, token)[:, 0].tolist()
                for b, t in enumerate(token[:, 0].tolist()):
                    if streams[b].done:
                        continue
                    if self.show_probs and t != tok.eot_id:
                        top = list(zip(top_i[b].tolist(), top_p[b].tolist()))
                        streams[b].sample.choices.append(TokenChoice(t, chosen[b], top))
                    if text := streams[b].push(t):
                        yield b, text
                if all(s.done for s in streams):
                    break
                history.append(token[:, 0])
                if step + 1 < cfg.max_new_tokens:  # one step from the carried state
                    self.model_calls += 1
                    if fast is not None:
                        last = fast.step(token[:, 0])
                    else:
                        logits, state = model(token, state)
                        last = logits[:, -1]
            for b in range(n):
                if not streams[b].done and (text := streams[b].finish()):
                    yield b, text
        finally:
            model.train(was_training)


def generate_texts(
    model: RecurrentLM, tokenizer: AnyTokenizer, prompt: str = "", settings: SampleConfig | None = None
) -> list[str]:
    """Every sample's continuation of ``prompt`` as a whole string."""
    run = Generation(model, tokenizer, prompt, settings)
    for _ in run:
        pass
    return [s.text for s in run.samples]
