"""Decoding for Seq2Seq: greedy or beam search (the language models' beam search) over many sentences at once.

Each source is encoded once; the decoder then runs one step at a time from the encoder's state,
attending to the encoder outputs. A translation ends at the end token or at its length limit,
``max_length``, or by default ``max_length_ratio`` times the source's tokens plus ``LENGTH_SLACK``.
The unknown and start tokens are never produced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from textgen.data.pairs import pad_batch
from textgen.data.tokenizers import AnyTokenizer
from textgen.models.lm import State
from textgen.models.seq2seq import Memory, Seq2Seq
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
    was_training = model.training
    model.eval()
    ban = BanTokens([*banned, model.start_id])
    device = model.head.weight.device
    out: list[list[int]] = [[] for _ in sources]
    try:
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
            if beams == 1:
                found = _greedy(model, memory, state, limits, ban)
            else:
                found = _beams(model, memory, state, limits, ban, beams, length_penalty)
            for i, tokens in zip(chunk, found):
                out[i] = tokens
    finally:
        model.train(was_training)
    return out


def _beams(
    model: Seq2Seq, memory: Memory, state: State, limits: list[int], ban: BanTokens, beams: int, length_penalty: float
) -> list[list[int]]:
    """Beam search for a batch of encoded sources at once; each one's best hypothesis."""
    start = torch.full((len(limits), 1), model.start_id, dtype=torch.long, device=memory.outputs.device)
    logits, state = model.decode(start, state, memory)  # type: ignore[misc]
    memory = memory.repeat(beams)  # row n * beams + j belongs to sentence n

    def step(tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return model.decode(tokens, state, memory)  # type: ignore[return-value]

    found = search(
        step,
        logits[:, -1],
        state,
        beams=beams,
        max_new_tokens=limits,
        length_penalty=length_penalty,
        eot_id=model.end_id,
        processors=[ban],
    )
    return [hyps[0].tokens for hyps in found]


def _greedy(model: Seq2Seq, memory: Memory, state: State, limits: list[int], ban: BanTokens) -> list[list[int]]:
    """The most likely next token at every step, for a batch of encoded sources."""
    b, device = len(limits), memory.outputs.device
    tokens = torch.full((b, 1), model.start_id, dtype=torch.long, device=device)  # (B, 1)
    steps: list[torch.Tensor] = []
    ended = torch.zeros(b, dtype=torch.bool, device=device)
    for _ in range(max(limits)):
        logits, state = model.decode(tokens, state, memory)  # type: ignore[misc]
        tokens = ban(tokens, logits[:, -1].float()).argmax(-1, keepdim=True)  # (B, 1)
        steps.append(tokens)
        ended |= tokens[:, 0] == model.end_id
        if bool(ended.all()):
            break
    drawn = torch.cat(steps, dim=1).tolist()  # (B, L)
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
