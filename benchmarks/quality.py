"""Quality per minute: textgen's default recipe against a plain PyTorch loop, same corpus, split and minutes.

For each corpus and budget, one after the other in this process:

- ``reference``: the loop a careful person writes by hand (``nn.Embedding(V, 64)`` -> ``nn.LSTM`` of
  512 -> ``nn.Linear``, Adam 2e-3, random windows of 100 tokens, batch 64, fp32) on the tokens textgen
  encoded, trained for the budget's minutes;
- ``textgen``: ``textgen.train(corpus=..., max_minutes=M)`` with nothing else set, so the recipe
  chooses (its validations count against its minutes).

Both are scored the same way on the same held-out tokens (the corpus's last 10%): the mean nats per
token over B contiguous streams of the validation split, the state carried along each stream, as
``textgen eval`` does. The ratio textgen / reference below 1 means the defaults beat the hand-written loop.
Never run it beside other work: the two arms must see the same machine.

Usage: ``python benchmarks/quality.py CORPUS [CORPUS ...] [--minutes 2 5] [--level char] [--out DIR]``.
Sweeps of the recipe's rules: ``--rule lr=0.002 --rule batch_size=64`` replaces fields of the level's
rules (``textgen.recipe.Level``) for the textgen arm; ``--only textgen`` (or ``reference``) runs one arm.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import textgen
from textgen import recipe
from textgen.api import build_config
from textgen.data.corpus import resolve_paths
from textgen.data.tokens import prepare_tokens


class Reference(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 64)
        self.lstm = nn.LSTM(64, 512, batch_first=True)
        self.head = nn.Linear(512, vocab)

    def forward(self, x: torch.Tensor, state=None):
        y, state = self.lstm(self.embed(x), state)
        return self.head(y), state


def reference_loop(train: np.ndarray, vocab: int, minutes: float, seed: int = 0) -> tuple[nn.Module, int]:
    """The hand-written loop: random windows of 100, batch 64, Adam 2e-3, for ``minutes`` of wall clock."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Reference(vocab)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = torch.from_numpy(train.astype(np.int64))
    end, steps = time.perf_counter() + 60 * minutes, 0
    while time.perf_counter() < end:
        starts = torch.from_numpy(rng.integers(0, len(data) - 101, 64))
        batch = data[starts[:, None] + torch.arange(101)]  # (64, 101)
        logits, _ = model(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        steps += 1
    return model, steps


@torch.no_grad()
def stream_loss(model: nn.Module, ids: np.ndarray, streams: int = 64, seq: int = 100) -> float:
    """Mean nats per token over ``streams`` contiguous streams of ``ids``, state carried (as textgen eval)."""
    model.eval()
    n = (len(ids) - 1) // streams
    x = torch.from_numpy(ids[: n * streams].astype(np.int64)).view(streams, n)
    y = torch.from_numpy(ids[1 : n * streams + 1].astype(np.int64)).view(streams, n)
    total, state = 0.0, None
    for t in range(0, n, seq):
        logits, state = model(x[:, t : t + seq], state)
        total += nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), y[:, t : t + seq].flatten(), reduction="sum"
        ).item()
    model.train()
    return total / (n * streams)


def textgen_run(corpus: Path, level: str, minutes: float, out: Path) -> dict:
    start = time.perf_counter()
    result = textgen.train(
        corpus=str(corpus),
        out=out,
        overwrite=True,
        level=level,
        max_minutes=minutes,
        sample_length=0,
        tensorboard=False,
    )
    model = textgen.load(out / "best")
    cfg = json.loads((out / "best" / "config.json").read_text(encoding="utf-8"))
    return {
        "val_loss": result.best_val,
        "wall_s": time.perf_counter() - start,
        "steps": result.step,
        "model": {k: cfg["model"][k] for k in ("cell", "layers", "hidden_size", "embedding_dim", "dropout")},
        "precision": cfg["train"]["precision"],
        "params": sum(p.numel() for p in model.model.parameters()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpora", nargs="+", type=Path)
    p.add_argument("--minutes", type=float, nargs="+", default=[2.0, 5.0])
    p.add_argument("--level", default="char", choices=("char", "bpe", "word"))
    p.add_argument("--out", type=Path, default=Path("runs/quality"))
    p.add_argument("--results", type=Path, default=None, help="append one JSON line per row to this file")
    p.add_argument("--rule", action="append", default=[], help="FIELD=VALUE: a field of the level's recipe rules")
    p.add_argument("--only", choices=("textgen", "reference"), default=None, help="run one arm (no ratio)")
    args = p.parse_args()
    rules = with_rules(recipe.LEVELS[args.level], args.rule)
    recipe.LEVELS[args.level] = rules
    rows = []
    for corpus in args.corpora:
        for minutes in args.minutes:
            run = args.out / f"{corpus.stem}-{args.level}-{minutes:g}min{''.join('-' + r for r in args.rule)}"
            mine = {"val_loss": math.nan, "model": {}, "precision": ""}
            if args.only != "reference":
                mine = textgen_run(corpus, args.level, minutes, run)
            ref, steps = math.nan, 0
            if args.only != "textgen":
                cfg, _ = build_config(corpus=[str(corpus)], level=args.level)
                tokenizer, data = prepare_tokens(cfg.data, resolve_paths(cfg.data.corpus), run, log=lambda m: None)
                train, val = np.asarray(data.train), np.asarray(data.val)
                model, steps = reference_loop(train, tokenizer.vocab_size, minutes)
                ref = stream_loss(model, val)
            row = {
                "corpus": corpus.name,
                "bytes": corpus.stat().st_size,
                "level": args.level,
                "minutes": minutes,
                "reference_val": ref,
                "reference_steps": steps,
                "textgen_val": mine["val_loss"],
                "ratio": mine["val_loss"] / ref if math.isfinite(mine["val_loss"]) and math.isfinite(ref) else None,
                "rules": args.rule,
                "textgen": mine,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.results:
                with args.results.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
    print("| corpus | level | minutes | reference nats/token | textgen nats/token | ratio | textgen model |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        m, ratio = r["textgen"]["model"], r["ratio"]
        shape = ""
        if m:
            shape = f"{m['cell']} {m['layers']}x{m['hidden_size']} drop {m['dropout']}, {r['textgen']['precision']}"
        print(
            f"| {r['corpus']} | {r['level']} | {r['minutes']:g} | {r['reference_val']:.4f} | "
            f"{r['textgen_val']:.4f} | {'' if ratio is None else f'{ratio:.3f}'} | {shape} |"
        )


def with_rules(level: recipe.Level, assignments: list[str]) -> recipe.Level:
    """``level`` with ``FIELD=VALUE`` fields replaced (``dropout=0.1``: that dropout at any epochs)."""
    fields: dict[str, object] = {}
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        if name == "dropout":
            fields["dropouts"] = ((math.inf, float(value)),)
        elif name in {f.name for f in dataclasses.fields(level)}:
            kind = type(getattr(level, name))
            fields[name] = value if kind is str else kind(float(value)) if kind is not bool else value == "true"
        else:
            raise SystemExit(f"--rule {assignment}: no such field of the recipe's rules")
    return dataclasses.replace(level, **fields)


if __name__ == "__main__":
    main()
