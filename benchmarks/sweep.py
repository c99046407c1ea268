"""Sweeps behind the recipe: validation loss after a budget of training tokens, for a grid of settings.

Each point trains textgen (``textgen.train``) on a corpus, or a slice of it, for a budget counted
in training tokens (so a busy machine slows a sweep but does not change its result), with the
learning rate warming up and then decaying to a floor at the budget's end, and records the best
validation loss (nats per token and bits per character) with the wall-clock seconds and tokens per
second it took (those two are only meaningful on an idle machine). Results are appended to a JSON
lines file; points already there are skipped, so a sweep can be stopped and run again.

A grid is a JSON file: ``{"corpus": PATH, "slice_bytes": N (optional), "common": {settings},
"points": [{settings}, ...], "tokens": [budget, ...]}``; every point runs at every budget.

Usage: ``python benchmarks/sweep.py GRID.json --results results.jsonl [--runs DIR]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("grids", nargs="+", type=Path, help="grid files (JSON)")
    p.add_argument("--results", type=Path, required=True, help="JSON lines file the results are appended to")
    p.add_argument("--runs", type=Path, help="keep the run directories here (default: a temporary directory)")
    p.add_argument("--dry-run", action="store_true", help="list the points without training")
    return p.parse_args(argv)


def corpus_slice(path: Path, slice_bytes: int | None, into: Path) -> Path:
    """The corpus, or its first ``slice_bytes`` bytes cut back to a line end."""
    if not slice_bytes:
        return path
    data = path.read_bytes()[:slice_bytes]
    data = data[: data.rfind(b"\n") + 1] or data
    out = into / f"{path.stem}-{slice_bytes}{path.suffix}"
    out.write_bytes(data)
    return out


def key_of(grid: dict[str, Any], point: dict[str, Any], tokens: int) -> str:
    what = {"corpus": grid["corpus"], "slice": grid.get("slice_bytes"), **grid.get("common", {}), **point}
    return hashlib.sha256(json.dumps([what, tokens], sort_keys=True).encode()).hexdigest()[:16]


def run_point(corpus: Path, settings: dict[str, Any], tokens: int, out: Path) -> dict[str, Any]:
    import textgen
    from textgen.lab import read_curve

    batch, seq = settings.get("batch_size", 64), settings.get("seq_len", 100)
    steps = max(1, round(tokens / (batch * seq)))
    began = time.monotonic()
    result = textgen.train(
        str(corpus),
        out=out,
        overwrite=True,
        max_steps=steps,
        epochs=1_000_000,
        eval_every=max(1, steps // 4),
        sample_length=0,
        tensorboard=False,
        **{"schedule": "cosine", "warmup_steps": min(200, steps // 10), **settings},
    )
    seconds = time.monotonic() - began
    curve = read_curve(out / "metrics.csv")
    best = min(curve, key=lambda c: c["val_loss"])
    params = sum(p.numel() for p in textgen.load(out, "cpu").model.parameters())
    return {
        "steps": result.step,
        "tokens": int(curve[-1]["tokens"]),
        "val_loss": best["val_loss"],
        "bits_per_char": best["bits_per_char"],
        "parameters": params,
        "seconds": seconds,
        "tokens_per_s": curve[-1]["tokens"] / seconds,
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    done = set()
    if args.results.exists():
        done = {json.loads(line)["key"] for line in args.results.read_text(encoding="utf-8").splitlines() if line}
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or Path(tmp)
        runs.mkdir(parents=True, exist_ok=True)
        for grid_path in args.grids:
            grid = json.loads(grid_path.read_text(encoding="utf-8"))
            corpus = corpus_slice(Path(grid["corpus"]), grid.get("slice_bytes"), runs)
            for tokens in grid["tokens"]:
                for point in grid["points"]:
                    key = key_of(grid, point, tokens)
                    settings = {**grid.get("common", {}), **point}
                    if key in done:
                        continue
                    print(f"[sweep] {grid_path.stem} {tokens:,} tokens {settings}", flush=True)
                    if args.dry_run:
                        continue
                    row = run_point(corpus, settings, tokens, runs / key)
                    record = {
                        "key": key,
                        "grid": grid_path.stem,
                        "corpus": grid["corpus"],
                        "slice": grid.get("slice_bytes"),
                    }
                    record.update(budget=tokens, settings=settings, corpus_bytes=corpus.stat().st_size, **row)
                    with args.results.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(record) + "\n")
                    print(
                        f"[sweep]   val {row['val_loss']:.4f} nats, {row['bits_per_char']:.3f} bpc, "
                        f"{row['parameters']:,} params, {row['seconds']:.0f} s, {row['tokens_per_s']:,.0f} tok/s",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
