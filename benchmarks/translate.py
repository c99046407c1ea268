"""Speed figures for textgen's seq2seq translation models: training pairs/s and translation sentences/s.

For each named configuration it times textgen's own training steps (``Trainer`` over a
``TranslationTask``: padded batches copied over, encoder, attention, decoder, cross-entropy over the
real target tokens, backward, clipping, Adam, the non-finite check) on random token ids
with the lengths of short Tatoeba sentences, then translates a batch of random sources greedily and
with beam search. Untrained weights are used: speed does not depend on what was learned.

- ``tutorial``: the ``translate`` preset's model (words, GRU 128, additive attention, batch 32,
  vocabularies of the tutorial's size: 4,345 French, 2,803 English);
- ``eng-fra``: the model of the eng-fra benchmark in the README (words, LSTM 256, general
  attention, batch 64, vocabularies of eng-fra's sentences of up to 10 words with words seen at
  least twice: 8,044 English, 14,282 French).

Usage: ``python benchmarks/translate.py [--device auto|cpu|cuda] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from textgen.config import ModelSpec, TrainConfig
from textgen.data.pairs import PairBatches, Ragged
from textgen.models.seq2seq import Seq2Seq
from textgen.sampling.translate import translate_ids
from textgen.training.tasks import TranslationTask
from textgen.training.trainer import Trainer

CONFIGS = {
    "tutorial": dict(
        cell="gru", hidden_size=128, embedding_dim=128, attention="additive", batch=32, src=4345, tgt=2803
    ),
    "eng-fra": dict(
        cell="lstm", hidden_size=256, embedding_dim=256, attention="general", batch=64, src=8044, tgt=14282
    ),
}


@dataclass
class Row:
    name: str
    pairs_per_s: float
    target_tokens_per_s: float
    greedy_sentences_per_s: float
    beam5_sentences_per_s: float


def random_pairs(n: int, src_vocab: int, tgt_vocab: int, seed: int = 0) -> tuple[Ragged, Ragged]:
    """Sentence pairs of 2-12 source and 2-14 target tokens (short Tatoeba sentences), random ids."""
    rng = np.random.default_rng(seed)
    src = [rng.integers(2, src_vocab, rng.integers(2, 13)) for _ in range(n)]
    tgt = [rng.integers(2, tgt_vocab, len(s) + rng.integers(0, 3)) for s in src]
    return Ragged.build(src), Ragged.build(tgt)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name: str, device: torch.device, steps: int, sentences: int) -> Row:
    c = CONFIGS[name]
    torch.manual_seed(0)
    cfg = ModelSpec(
        task="translate",
        cell=c["cell"],
        hidden_size=c["hidden_size"],
        embedding_dim=c["embedding_dim"],
        attention=c["attention"],
        vocab_size=c["tgt"],
        source_vocab_size=c["src"],
    )
    model = Seq2Seq(cfg).to(device)
    src, tgt = random_pairs(max(c["batch"] * (steps + 2), sentences), c["src"], c["tgt"])
    batches = PairBatches(src, tgt, c["batch"], model.start_id, model.end_id, seed=0)
    cfg_train = TrainConfig(batch_size=c["batch"], lr=1e-3, clip=5.0)
    trainer = Trainer(model, TranslationTask(batches), cfg_train, device=device)
    for _ in range(2):  # warm-up
        trainer._step()
    sync(device)
    began, tokens = time.perf_counter(), trainer.pos.tokens
    for _ in range(steps):
        trainer._step()
    sync(device)
    train_s = time.perf_counter() - began
    tokens = trainer.pos.tokens - tokens

    sources = [src[i].tolist() for i in range(sentences)]
    times = []
    for beams, count in ((1, sentences), (5, sentences)):
        translate_ids(model, sources[:2], beams=beams, max_length=16)  # warm-up
        began = time.perf_counter()
        translate_ids(model, sources[:count], beams=beams, max_length=16)
        sync(device)
        times.append(count / (time.perf_counter() - began))
    return Row(name, steps * c["batch"] / train_s, tokens / train_s, times[0], times[1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per configuration")
    p.add_argument("--sentences", type=int, default=256, help="sentences translated, greedily and with 5 beams")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    rows = [bench(name, device, args.steps, args.sentences) for name in args.configs]
    if args.json:
        print(
            json.dumps({"device": str(device), "threads": torch.get_num_threads(), "rows": [asdict(r) for r in rows]})
        )
        return
    print(f"device {device}, {torch.get_num_threads()} threads")
    print(f"{'config':<10}{'train pairs/s':>15}{'target tok/s':>14}{'greedy sent/s':>15}{'beam-5 sent/s':>15}")
    for r in rows:
        print(
            f"{r.name:<10}{r.pairs_per_s:>15,.0f}{r.target_tokens_per_s:>14,.0f}"
            f"{r.greedy_sentences_per_s:>15,.0f}{r.beam5_sentences_per_s:>15,.1f}"
        )


if __name__ == "__main__":
    main()
