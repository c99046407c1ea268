"""Score text with a model: total nats, perplexity, bits per character, unknown tokens."""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from textgen.data.batches import eval_chunks
from textgen.data.tokenizers import AnyTokenizer
from textgen.data.tokens import encode_documents
from textgen.errors import CorpusError
from textgen.models.protocol import State


@torch.no_grad()
def score_stream(
    model: nn.Module, ids: np.ndarray, streams: int, seq_len: int, device: torch.device, max_batches: int = 0
) -> tuple[float, int]:
    """Total nats and the number of predicted tokens over ``ids``, state carried along each stream.

    Validation always carries the state (as generation does), whichever mode trained the model.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    state: State | None = None
    for i, (x, y, mask) in enumerate(eval_chunks(ids, streams, seq_len)):
        if max_batches and i >= max_batches:
            break
        x_t, y_t, m_t = (torch.from_numpy(a).to(device) for a in (x, y, mask))
        logits, state = model(x_t, state)  # (B, T, V)
        nats = F.cross_entropy(logits.float().transpose(1, 2), y_t, reduction="none")  # (B, T)
        total += nats[m_t].sum(dtype=torch.float64)
        count += int(mask.sum())
    model.train(was_training)
    return float(total), count


@dataclass
class EvalResult:
    loss: float  # nats per predicted token
    perplexity: float
    bits_per_char: float
    tokens: int  # predicted tokens
    unknown_tokens: int
    characters: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def evaluate_files(
    model: nn.Module,
    tokenizer: AnyTokenizer,
    paths: list[Path],
    *,
    records: bool = False,
    record_prefix: str = "",
    encoding_errors: str = "strict",
    batch_size: int = 32,
    seq_len: int = 100,
    device: torch.device | str = "cpu",
) -> EvalResult:
    """Score the text of ``paths`` tokenized as in training (end-of-text after each document).

    With an end-of-text token the text is scored from a document start, so every token is
    predicted; a char model has none, so its first character is context only. The ids go to a
    temporary memmap as in training, so a corpus larger than memory can be scored.
    """
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    start = [(np.array([tokenizer.eot_id]), 0)] if tokenizer.eot_id is not None else []
    pieces = itertools.chain(start, encode_documents(tokenizer, paths, records, encoding_errors, record_prefix))
    with tempfile.TemporaryDirectory(prefix="textgen-eval-") as tmp:
        path = Path(tmp) / "ids.bin"
        count = chars = unknown = 0
        with open(path, "wb") as f:
            for ids, n in pieces:
                f.write(ids.astype(dtype).tobytes())
                scored = ids[1:] if count == 0 else ids  # the first token is context only: never predicted
                unknown += int((scored == tokenizer.unk_id).sum())
                count, chars = count + len(ids), chars + n
        if tokenizer.eot_id is None:
            chars -= 1
        if count < 2 or chars < 1:
            raise CorpusError(f"nothing to evaluate: {', '.join(map(str, paths))} holds too little text")
        ids = np.memmap(path, dtype=dtype, mode="r", shape=(count,))
        nats, count = score_stream(model, ids, batch_size, seq_len, torch.device(device))
        del ids  # (the file goes with the directory)
    loss = nats / count
    return EvalResult(loss, math.exp(min(loss, 700.0)), nats / chars / math.log(2), count, unknown, chars)


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
