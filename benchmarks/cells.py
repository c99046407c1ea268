"""Training and decoding speed of every cell at a matched parameter count, one after another in one process.

Each cell is sized by the lab (``textgen.lab.entries_for_cells``: the classic cells one layer deep, the
block cells in their lab shapes) to the same parameter count; then on random character ids it times
training steps (forward, backward, Adam; batch 64 x 100) in fp32 and bf16 autocast, and decode steps
of the fast stepper (1 row and 64 rows, fp32). The fastest of the timed repeats is kept (the machine's
other work only slows a run). Ratios are against the LSTM of the same run.

Usage: ``python benchmarks/cells.py [--params 1000000 4000000] [--steps 6] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from textgen.api import build_config
from textgen.config import RunSpec
from textgen.kinds import kind_of
from textgen.lab import entries_for_cells

CELLS = ("lstm", "gru", "mingru", "minlstm", "mlstm", "conv")
VOCAB = 65  # Tiny Shakespeare's characters


def build(settings: dict) -> torch.nn.Module:
    cfg, _ = build_config(**settings)
    return kind_of(cfg).build_model(RunSpec(vocab_size=VOCAB).model(cfg.model))


def train_tokens_per_s(model: torch.nn.Module, precision: str, steps: int, batch: int = 64, seq: int = 100) -> float:
    ids = torch.randint(0, VOCAB, (batch, seq + 1), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if precision == "bf16" else None
    best = float("inf")
    for i in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits, _ = model(ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:
            best = min(best, time.perf_counter() - start)
    return batch * seq / best


@torch.no_grad()
def decode_tokens_per_s(model: torch.nn.Module, rows: int, steps: int = 100) -> float:
    model.eval()
    stepper = model.stepper(rows, "fp32")
    tokens = torch.zeros(rows, dtype=torch.long)
    for _ in range(5):
        stepper.step(tokens)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            stepper.step(tokens)
        best = min(best, time.perf_counter() - start)
    model.train()
    return rows * steps / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=int, nargs="+", default=[1_000_000, 4_000_000])
    p.add_argument("--cells", nargs="+", default=list(CELLS))
    p.add_argument("--steps", type=int, default=6, help="timed training steps per cell and precision")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    for params in args.params:
        for entry in entries_for_cells(args.cells, params, VOCAB, {}):
            model = build(entry.settings)
            row = {
                "params_target": params,
                "cell": entry.name,
                "shape": {k: v for k, v in entry.settings.items() if k != "cell"},
                "parameters": sum(p.numel() for p in model.parameters()),
                "train_fp32": train_tokens_per_s(model, "fp32", args.steps),
                "train_bf16": train_tokens_per_s(model, "bf16", args.steps),
                "decode_1": decode_tokens_per_s(model, 1),
                "decode_64": decode_tokens_per_s(model, 64),
            }
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; tokens/s (ratio to the LSTM of the same size)"
    )
    print("| params | cell | shape | parameters | train fp32 | train bf16 | decode 1 row | decode 64 rows |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for params in args.params:
        group = [r for r in rows if r["params_target"] == params]
        base = next((r for r in group if r["cell"] == "lstm"), group[0])
        for r in group:
            cells = [
                f"{r[k]:,.0f} ({r[k] / base[k]:.2f}x)" for k in ("train_fp32", "train_bf16", "decode_1", "decode_64")
            ]
            shape = ", ".join(f"{k} {v}" for k, v in r["shape"].items())
            print(f"| {params / 1e6:g}M | {r['cell']} | {shape} | {r['parameters']:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
