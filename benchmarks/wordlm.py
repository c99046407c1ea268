"""Word level against pytorch/examples' word_language_model recipe, for the same minutes, on the same files.

Give an already tokenized corpus as three files (WikiText-2's ``train.txt``, ``valid.txt`` and
``test.txt``, or any files in that form). Three systems train one after another for ``--minutes``
each, and each is scored on the test file in bits per character (the test file's nats divided by
its characters, so every tokenization is measured on the same text):

1. ``peer``: the word_language_model recipe, written out here as a plain loop (the same algorithm;
   no code of that project): words split on whitespace with ``<eos>`` at each line end, the
   vocabulary of the training file (a word of the validation or test file that it lacks is read as
   ``<unk>``, as textgen reads it; on WikiText-2 itself, whose vocabulary is closed, that changes
   nothing, while a split of other files would otherwise charge the peer for words it never saw),
   ``batchify`` streams of 20, BPTT 35 with the hidden state carried
   and detached, a 2x200 LSTM with tied weights and dropout 0.2, embedding and decoder initialised
   U(-0.1, 0.1), plain SGD at lr 20 with gradient clipping 0.25, the lr divided by 4 after an epoch
   whose validation loss did not improve, the best epoch's weights scored on the test file with
   batch 10;
2. ``textgen-same``: textgen with that model and recipe (``--level word --cell lstm --layers 2
   --hidden-size 200 --embedding-dim 200 --tie-weights --dropout 0.2 --mode stateful --batch-size
   20 --seq-len 35 --optimizer sgd --lr 20 --clip 0.25 --schedule plateau``), validating on the
   valid file;
3. ``textgen-default``: ``textgen train --corpus train.txt --max-minutes M`` and nothing else.

Usage: ``python benchmarks/wordlm.py --train T --valid V --test X [--minutes 6] [--only peer ...]``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LN2 = math.log(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--valid", type=Path, required=True)
    p.add_argument("--test", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=6.0, help="training minutes per system (default 6)")
    p.add_argument("--only", nargs="+", choices=("peer", "textgen-same", "textgen-default"), help="run only these")
    p.add_argument("--seed", type=int, default=1111, help="the peer's default seed")
    p.add_argument("--out", type=Path, help="keep the textgen runs here (default: a temporary directory)")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


# ---------------------------------------------------------------- the peer recipe, as a plain loop


def words_of(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield from line.split()
            yield "<eos>"


class PeerModel(nn.Module):
    """Embedding -> dropout -> 2-layer LSTM (dropout between) -> dropout -> tied decoder."""

    def __init__(self, vocab: int, size: int = 200, layers: int = 2, dropout: float = 0.2) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, size)
        self.rnn = nn.LSTM(size, size, layers, dropout=dropout)
        self.decoder = nn.Linear(size, vocab)
        self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, x: torch.Tensor, hidden: Any) -> tuple[torch.Tensor, Any]:
        out, hidden = self.rnn(self.drop(self.encoder(x)), hidden)  # x: (T, B)
        return self.decoder(self.drop(out)), hidden  # (T, B, V)


def batchify(ids: torch.Tensor, streams: int) -> torch.Tensor:
    n = ids.numel() // streams
    return ids[: n * streams].view(streams, n).t().contiguous()  # (N, B): column b is stream b


@torch.no_grad()
def peer_nats(model: PeerModel, data: torch.Tensor, bptt: int = 35) -> tuple[float, int]:
    model.eval()
    total, count, hidden = 0.0, 0, None
    for i in range(0, data.size(0) - 1, bptt):
        x, y = data[i : i + bptt], data[i + 1 : i + 1 + bptt]
        x = x[: y.size(0)]
        out, hidden = model(x, hidden)
        total += F.cross_entropy(out.view(-1, out.size(-1)), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    return total, count


def run_peer(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    index: dict[str, int] = {}
    splits = {"train": torch.tensor([index.setdefault(w, len(index)) for w in words_of(args.train)])}
    unk = index.setdefault("<unk>", len(index))
    for name in ("valid", "test"):  # words the training file lacks are <unk>, as they are to textgen
        splits[name] = torch.tensor([index.get(w, unk) for w in words_of(getattr(args, name))])
    model = PeerModel(len(index))
    train, valid = batchify(splits["train"], 20), batchify(splits["valid"], 10)
    lr, best, best_state = 20.0, math.inf, None
    began, steps, epochs = time.monotonic(), 0, 0
    deadline = began + args.minutes * 60
    while time.monotonic() < deadline:
        model.train()
        hidden = None
        for i in range(0, train.size(0) - 1, 35):
            if time.monotonic() >= deadline:
                break
            x, y = train[i : i + 35], train[i + 1 : i + 36]
            x = x[: y.size(0)]
            hidden = tuple(h.detach() for h in hidden) if hidden is not None else None
            model.zero_grad()
            out, hidden = model(x, hidden)
            F.cross_entropy(out.view(-1, out.size(-1)), y.reshape(-1)).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
            steps += 1
        epochs += 1
        nats, count = peer_nats(model, valid)
        if nats / count < best:
            best, best_state = nats / count, {k: v.clone() for k, v in model.state_dict().items()}
        else:
            lr /= 4.0
    if best_state is not None:
        model.load_state_dict(best_state)
    nats, count = peer_nats(model, batchify(splits["test"], 10))
    chars = len(args.test.read_text(encoding="utf-8"))
    return {
        "system": "peer",
        "steps": steps,
        "epochs": epochs,
        "test_nats_per_token": nats / count,
        "test_bits_per_char": nats / chars / LN2,
        "vocabulary": len(index),
    }


# ---------------------------------------------------------------- textgen


SAME = dict(
    level="word",
    cell="lstm",
    layers=2,
    hidden_size=200,
    embedding_dim=200,
    tie_weights=True,
    dropout=0.2,
    mode="stateful",
    batch_size=20,
    seq_len=35,
    optimizer="sgd",
    lr=20.0,
    clip=0.25,
    schedule="plateau",
    plateau_factor=0.25,
    plateau_patience=0,
)


def run_textgen(name: str, args: argparse.Namespace, out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    import textgen

    run = out / name
    result = textgen.train(
        str(args.train),
        out=run,
        overwrite=True,
        max_minutes=args.minutes,
        epochs=1_000_000,
        sample_length=0,
        tensorboard=False,
        **settings,
    )
    model = textgen.load(run)
    scored = model.evaluate(str(args.test))
    nats = scored.loss * scored.tokens
    chars = len(args.test.read_text(encoding="utf-8"))
    return {
        "system": name,
        "steps": result.step,
        "test_nats_per_token": scored.loss,
        "test_bits_per_char": nats / chars / LN2,
        "vocabulary": model.tokenizer.vocab_size,
        "settings": json.loads((run / "best" / "config.json").read_text(encoding="utf-8")).get("model", {}),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    chosen = args.only or ["peer", "textgen-same", "textgen-default"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for system in chosen:
            if system == "peer":
                rows.append(run_peer(args))
            elif system == "textgen-same":
                rows.append(run_textgen(system, args, out, {**SAME, "val_corpus": [str(args.valid)]}))
            else:
                rows.append(run_textgen(system, args, out, {}))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"\n{args.minutes:g} minutes each; test file {args.test}")
    for r in rows:
        print(f"{r['system']:<16} {r['test_bits_per_char']:.4f} bits/char  ({r['test_nats_per_token']:.4f} nats/token)")


if __name__ == "__main__":
    main()
