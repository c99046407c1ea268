"""Text around the decoder: a prompt's token ids, tokens turned into text as they arrive, stop strings,
and each sample's record (its text, tokens, per-token probabilities and why it ended).

Every front end (the CLI, the Python API, the server, beam search) decodes through these, so a
sample ends the same way however it was decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from textgen.data.tokenizers import AnyTokenizer, WordTokenizer, check_text
from textgen.errors import TextgenError


@dataclass(frozen=True)
class Prompt:
    """A prompt's token ids, and how many of them the penalties skip: an empty prompt starts from an
    artificial start token (end-of-text, or a newline for chars), which is not text."""

    ids: list[int]
    skip: int


def prompt_for(tokenizer: AnyTokenizer, text: str) -> Prompt:
    """The ``Prompt`` of ``text`` (see ``encode_prompt``)."""
    ids = encode_prompt(tokenizer, text)
    return Prompt(ids, 0 if tokenizer.encode(text) else 1)


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
    so spacing comes out as decoding the whole text at once would give. A character is its own text
    whatever surrounds it, so a char tokenizer skips the window.
    """

    def __init__(self, tokenizer: AnyTokenizer, context: Sequence[int]) -> None:
        self.tok = tokenizer
        text = [i for i in context if i != tokenizer.eot_id]  # end-of-text is not text
        self.ids = text[-4:]  # a little context so spacing and merges come out right
        self.prefix, self.read = 0, len(self.ids)
        self.word = isinstance(tokenizer, WordTokenizer)
        self.quotes = tokenizer.open_quotes(text[:-4]) if isinstance(tokenizer, WordTokenizer) else frozenset()

    def push(self, token: int) -> str:
        if self.tok.kind == "char":
            return self.tok.decode([token])
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
        if not self.stops:
            return piece, False
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
    """One drawn token with its probability, the most likely tokens at that step (with theirs), and the
    text it added (before a stop string cut it)."""

    token: int
    prob: float
    top: list[tuple[int, float]]
    text: str = ""


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
