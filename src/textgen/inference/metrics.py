"""What scoring a model reports: loss, perplexity, bits per character and translation scores.

The formulas live here once (validation during training, ``textgen eval``, the run report); this
module imports neither torch nor sacrebleu until asked, so reports stay quick.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from textgen.data.tokenizers import AnyTokenizer

MAX_LOG_PERPLEXITY = 700.0  # exp(700) is about 1e304: the largest perplexity reported, so it stays a finite float


def perplexity(loss: float) -> float:
    """exp(loss in nats per token), capped at exp(700) so it stays a finite number."""
    return math.exp(min(loss, MAX_LOG_PERPLEXITY))


def bits_per_char(nats: float, chars: float) -> float:
    """Total nats over the text's characters, in bits."""
    return nats / math.log(2) / chars


@dataclass
class Metrics:
    """Validation loss in nats per token, perplexity, bits per character, and task figures (BLEU...)."""

    loss: float
    perplexity: float
    bits_per_char: float
    tokens: int
    extra: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_nats(cls, nats: float, tokens: int, chars: float, extra: dict[str, float] | None = None) -> Metrics:
        loss = nats / tokens
        return cls(loss, perplexity(loss), bits_per_char(nats, chars), tokens, extra or {})


@dataclass
class EvalResult:
    """A language model scored on text (``textgen eval --corpus``)."""

    loss: float  # nats per predicted token
    perplexity: float
    bits_per_char: float
    tokens: int  # predicted tokens
    unknown_tokens: int
    characters: int

    @classmethod
    def from_nats(cls, nats: float, tokens: int, chars: int, unknown: int) -> EvalResult:
        loss = nats / tokens
        return cls(loss, perplexity(loss), bits_per_char(nats, chars), tokens, unknown, chars)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass
class TranslationScores:
    """Corpus BLEU and chrF (sacrebleu, 0-100) and the percentage of outputs equal to their reference."""

    bleu: float
    chrf: float
    exact_match: float
    sentences: int

    def figures(self) -> dict[str, float]:
        return {"bleu": self.bleu, "chrf": self.chrf, "exact_match": self.exact_match}


def score_translations(
    outputs: Sequence[str], references: Sequence[str], tokenizer: AnyTokenizer | None = None
) -> TranslationScores:
    """Score ``outputs`` against ``references`` with sacrebleu's BLEU (13a tokenization) and chrF.

    With the target ``tokenizer``, references are first put in the form the model writes: lowercased
    if it lowercases, and, for exact match, through the tokenizer and back (a word model's spacing).
    """
    from sacrebleu.metrics import BLEU, CHRF

    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs for {len(references)} references")
    if not outputs:
        return TranslationScores(0.0, 0.0, 0.0, 0)
    refs = [tokenizer.normalize(r) for r in references] if tokenizer is not None else list(references)
    canonical = [tokenizer.decode(tokenizer.encode(r), skip_special=True) for r in refs] if tokenizer else refs
    exact = sum(o.strip() == c.strip() for o, c in zip(outputs, canonical)) / len(outputs)
    bleu = BLEU().corpus_score(list(outputs), [refs]).score
    chrf = CHRF().corpus_score(list(outputs), [refs]).score
    return TranslationScores(bleu, chrf, 100.0 * exact, len(outputs))
