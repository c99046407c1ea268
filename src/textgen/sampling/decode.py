"""The incremental decode loop: warm up on the prompt once, then one token per step, state carried.

Unlike the tutorials, the whole window is never re-run: the prompt goes through the model in one
forward pass and each new token is a single step from the carried hidden state. ``num_samples``
sequences are decoded together as one batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from textgen.config import SampleConfig
from textgen.data.tokenizers import AnyTokenizer
from textgen.errors import TextgenError
from textgen.models.lm import RecurrentLM
from textgen.sampling.processors import apply_processors, build_processors


def encode_prompt(tokenizer: AnyTokenizer, prompt: str) -> list[int]:
    """Prompt ids; an empty prompt starts a new document (end-of-text, or a newline for chars).

    Characters outside a char vocabulary are refused, by name; words outside a word vocabulary
    become the unknown token (``tokenizer.unknown_in`` lists them).
    """
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
    """Turns tokens into text pieces as they arrive, holding back incomplete UTF-8 (BPE bytes)."""

    def __init__(self, tokenizer: AnyTokenizer, context: Sequence[int]) -> None:
        self.tok = tokenizer
        # A little context so spacing and merges come out right; end-of-text is not text.
        self.ids = [i for i in context if i != tokenizer.eot_id][-4:]
        self.prefix, self.read = 0, len(self.ids)

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._emit(final=False)

    def flush(self) -> str:
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        before = self.tok.decode(self.ids[self.prefix : self.read])
        text = self.tok.decode(self.ids[self.prefix :])
        if len(text) <= len(before) or (not final and self.tok.kind == "bpe" and text.endswith("\ufffd")):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before) :]


@torch.no_grad()
def stream_samples(
    model: RecurrentLM, tokenizer: AnyTokenizer, prompt: str = "", settings: SampleConfig | None = None
) -> Iterator[tuple[int, str]]:
    """Yield (sample index, text piece) as tokens are drawn; a sample ends at end-of-text."""
    cfg = settings or SampleConfig()
    cfg.validate()
    num_samples, max_new_tokens = cfg.num_samples, cfg.max_new_tokens
    processors = build_processors(cfg.temperature, cfg.top_k, banned=[tokenizer.unk_id])
    context = encode_prompt(tokenizer, prompt)
    device = model.head.weight.device
    generator = torch.Generator(device=device)
    if cfg.seed is None:
        generator.seed()
    else:
        generator.manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    try:
        history = torch.tensor([context] * num_samples, device=device)  # (B, P)
        logits, state = model(history)  # prompt warm-up in one pass
        last = logits[:, -1]  # (B, V)
        decoders = [IncrementalDecoder(tokenizer, context) for _ in range(num_samples)]
        done = [False] * num_samples
        for step in range(max_new_tokens):
            scores = apply_processors(processors, history, last.float())
            token = torch.multinomial(scores.softmax(-1), 1, generator=generator)  # (B, 1)
            for b, t in enumerate(token[:, 0].tolist()):
                if done[b]:
                    continue
                if t == tokenizer.eot_id:
                    done[b] = True
                elif piece := decoders[b].push(t):
                    yield b, piece
            if all(done):
                break
            history = torch.cat([history, token], dim=1)
            if step + 1 < max_new_tokens:
                logits, state = model(token, state)  # one step from the carried state
                last = logits[:, -1]
        for b, d in enumerate(decoders):
            if piece := d.flush():
                yield b, piece
    finally:
        model.train(was_training)


def generate_texts(
    model: RecurrentLM, tokenizer: AnyTokenizer, prompt: str = "", settings: SampleConfig | None = None
) -> list[str]:
    """Every sample's continuation of ``prompt`` as a whole string."""
    cfg = settings or SampleConfig()
    texts = [""] * cfg.num_samples
    for b, piece in stream_samples(model, tokenizer, prompt, cfg):
        texts[b] += piece
    return texts
