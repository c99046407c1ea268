"""Decoding for Seq2Seq: greedy or beam search (the language models' beam search) over many sentences at once.

Each source is encoded once; the decoder's ``Stepper`` then runs one step at a time from the
encoder's state, each row attending to its sentence's encoder outputs. A translation ends at the
end token or at its length limit, ``max_length``, or by default ``max_length_ratio`` times the
source's tokens plus ``LENGTH_SLACK``. The unknown and start tokens are never produced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from textgen.data.pairs import pad_batch
from textgen.data.tokenizers import AnyTokenizer
from textgen.models.protocol import eval_mode
from textgen.models.seq2seq import DecoderStepper, Seq2Seq
from textgen.sampling.beam import search
from textgen.sampling.processors import BanTokens

LENGTH_SLACK = 10  # tokens allowed beyond ratio x source length, so very short sources are not cut off


def length_limit(source_tokens: int, max_length: int | None = None, ratio: float = 2.0) -> int:
    """Most tokens a translation of a ``source_tokens``-token source may have: ``ratio`` times its
    tokens plus ``LENGTH_SLACK``, and never more than ``max_length``."""
    limit = math.ceil(ratio * source_tokens) + LENGTH_SLACK
    return min(limit, max_length) if max_length else limit


@torch.no_grad()
def translate_ids(
    model: Seq2Seq,
    sources: Sequence[Sequence[int]],
    *,
    beams: int = 1,
    length_penalty: float = 1.0,
    max_length: int | None = None,
    max_length_ratio: float = 2.0,
    banned: Sequence[int] = (0,),
    batch_size: int = 64,
) -> list[list[int]]:
    """Target ids (without start and end tokens) for each source's ids; greedy when ``beams`` is 1.

    A batch holds ``batch_size`` rows: that many sentences for greedy search, ``batch_size // beams``
    for beam search (each sentence takes ``beams`` rows)."""
    ban = BanTokens([*banned, model.start_id])
    device = model.head.weight.device
    out: list[list[int]] = [[] for _ in sources]
    with eval_mode(model):
        todo = [i for i, s in enumerate(sources) if len(s)]  # an empty source translates to nothing
        # Longest first: similar lengths together (little padding), each batch already in the order the
        # encoder packs it, so packing moves no indices to the device.
        todo.sort(key=lambda i: len(sources[i]), reverse=True)
        per_batch = max(1, batch_size // beams)
        for c in range(0, len(todo), per_batch):
            chunk = todo[c : c + per_batch]
            batch = pad_batch([np.asarray(sources[i]) for i in chunk], [np.zeros(0, np.int64)] * len(chunk), 0, 0)
            src, src_len, _, _ = batch.tensors(device)
            limits = [length_limit(len(sources[i]), max_length, max_length_ratio) for i in chunk]
            memory, state = model.encode(src, src_len)
            stepper = model.stepper(len(chunk) * beams)
            stepper.start(slice(0, len(chunk)), state, memory)
            if beams == 1:
                found = _greedy(model, stepper, limits, ban)
            else:
                found = _beams(model, stepper, limits, ban, beams, length_penalty)
            for i, tokens in zip(chunk, found):
                out[i] = tokens
    return out


def _beams(
    model: Seq2Seq, stepper: DecoderStepper, limits: list[int], ban: BanTokens, beams: int, length_penalty: float
) -> list[list[int]]:
    """Beam search for a batch of encoded sources at once (rows 0..N-1 of ``stepper``); each one's best hypothesis."""
    start = torch.full((len(limits),), model.start_id, dtype=torch.long, device=stepper.device)
    found = search(
        stepper,
        stepper.step(start).clone(),  # (N, V + 2): the first token's scores
        beams=beams,
        max_new_tokens=limits,
        length_penalty=length_penalty,
        eot_id=model.end_id,
        processors=[ban],
    )
    return [hyps[0].tokens for hyps in found]


def _greedy(model: Seq2Seq, stepper: DecoderStepper, limits: list[int], ban: BanTokens) -> list[list[int]]:
    """The most likely next token at every step, for a batch of encoded sources (rows 0..B-1 of ``stepper``)."""
    b, device = len(limits), stepper.device
    tokens = torch.full((b,), model.start_id, dtype=torch.long, device=device)  # (B,)
    steps: list[torch.Tensor] = []
    ended = torch.zeros(b, dtype=torch.bool, device=device)
    for _ in range(max(limits)):
        logits = stepper.step(tokens)  # (B, V + 2)
        tokens = ban(tokens[:, None], logits.float()).argmax(-1)  # (B,)
        steps.append(tokens)
        ended |= tokens == model.end_id
        if bool(ended.all()):
            break
    drawn = torch.stack(steps, dim=1).tolist()  # (B, L)
    out = []
    for row, limit in zip(drawn, limits):
        row = row[:limit]
        out.append(row[: row.index(model.end_id)] if model.end_id in row else row)
    return out


class TextTranslator:
    """Text in, text out: a Seq2Seq with its source and target tokenizers.

    Source words or characters outside the source vocabulary are read as the unknown token
    (``unknown_in`` lists them); the output never contains the unknown or end-of-text tokens.
    """

    def __init__(self, model: Seq2Seq, source_tokenizer: AnyTokenizer, target_tokenizer: AnyTokenizer) -> None:
        self.model, self.source_tokenizer, self.target_tokenizer = model, source_tokenizer, target_tokenizer

    def unknown_in(self, text: str) -> list[str]:
        return self.source_tokenizer.unknown_in(text)

    def translate(
        self,
        texts: Sequence[str],
        *,
        beams: int = 1,
        length_penalty: float = 1.0,
        max_length: int | None = None,
        max_length_ratio: float = 2.0,
        batch_size: int = 64,
    ) -> list[str]:
        """The translation of each text; greedy when ``beams`` is 1, else the best beam."""
        target = self.target_tokenizer
        banned = [target.unk_id] + ([target.eot_id] if target.eot_id is not None else [])
        ids = translate_ids(
            self.model,
            [self.source_tokenizer.encode(t) for t in texts],
            beams=beams,
            length_penalty=length_penalty,
            max_length=max_length,
            max_length_ratio=max_length_ratio,
            banned=banned,
            batch_size=batch_size,
        )
        return [target.decode(t, skip_special=True) for t in ids]
