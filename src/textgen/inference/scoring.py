"""Score a model on held-out text or sentence pairs: the total nats of what it predicts.

Validation during training and ``textgen eval`` both come here, so they agree by construction.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from textgen.data.batches import eval_chunks
from textgen.data.pairs import Pair
from textgen.data.tokenizers import AnyTokenizer
from textgen.data.tokens import encode_documents
from textgen.errors import CorpusError
from textgen.inference.metrics import EvalResult, Metrics, score_translations
from textgen.models.protocol import State, eval_mode
from textgen.sampling.translate import TextTranslator


@torch.no_grad()
def score_stream(
    model: nn.Module, ids: np.ndarray, streams: int, seq_len: int, device: torch.device, max_batches: int = 0
) -> tuple[float, int]:
    """Total nats and the number of predicted tokens over ``ids``, state carried along each stream.

    Validation always carries the state (as generation does), whichever mode trained the model.
    """
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    state: State | None = None
    with eval_mode(model):
        for i, (x, y, mask) in enumerate(eval_chunks(ids, streams, seq_len)):
            if max_batches and i >= max_batches:
                break
            x_t, y_t, m_t = (torch.from_numpy(a).to(device) for a in (x, y, mask))
            logits, state = model(x_t, state)  # (B, T, V)
            nats = F.cross_entropy(logits.float().transpose(1, 2), y_t, reduction="none")  # (B, T)
            total += nats[m_t].sum(dtype=torch.float64)
            count += int(mask.sum())
    return float(total), count


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
    return EvalResult.from_nats(nats, count, chars, unknown)


@torch.no_grad()
def score_pairs(model: nn.Module, batches: Any, device: torch.device) -> tuple[float, int]:
    """Total teacher-forced nats and target tokens over every batch of ``batches`` (its epoch 0, in order)."""
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    with eval_mode(model):
        for step in range(batches.steps_per_epoch):
            batch = batches.batch(0, step)
            src, src_len, tgt_in, tgt_out = batch.tensors(device)
            logits = model(src, src_len, tgt_in).float()  # (B, T, V)
            total += F.cross_entropy(logits.transpose(1, 2), tgt_out, ignore_index=-100, reduction="sum").double()
            count += batch.target_tokens
    return float(total), count


def evaluate_pairs(
    model: nn.Module,
    batches: Any,
    device: torch.device,
    pairs: Sequence[Pair] = (),
    translator: TextTranslator | None = None,
    beams: int = 1,
    scored: int = 0,
) -> Metrics:
    """Teacher-forced loss of ``batches`` (the encoded ``pairs``), and BLEU, chrF and exact match of
    ``translator``'s translations of ``scored`` pairs spread evenly over them (0: all) with ``beams``.

    Bits per character count the references' characters, each end token standing for one more."""
    nats, tokens = score_pairs(model, batches, device)
    extra: dict[str, float] = {}
    chars = 0
    if translator is not None:
        target = translator.target_tokenizer
        chars = sum(len(target.normalize(p.target)) + 1 for p in pairs)
        # spread over the pairs: a file of pairs sorted by length (as Tatoeba's are) would give the shortest first
        shown = list(pairs[:: max(1, len(pairs) // scored)][:scored] if scored else pairs)
        if shown:
            outputs = translator.translate([p.source for p in shown], beams=beams)
            extra = score_translations(outputs, [p.target for p in shown], target).figures()
    return Metrics.from_nats(nats, tokens, max(1, chars), extra)
