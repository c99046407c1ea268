"""Server throughput: streaming clients against ``textgen serve`` with the shakespeare-shaped model.

A checkpoint of the ``shakespeare`` preset (embedding 256, LSTM 1024, Tiny Shakespeare's
characters) is trained for one step (speed does not depend on what was learned), served by
``textgen serve`` in a subprocess at its defaults (``--decode-precision auto``), and loaded by
clients in this process (httpx, Server-Sent Events) one after the other:

1. one client, streaming ``--rounds`` completions one after another (the baseline);
2. ``--clients`` clients (32) streaming one completion each, all at once.

It prints completion tokens per second for each, their ratio, and latency percentiles. The
clients share the machine with the server, as they would on a laptop.

Usage: ``python benchmarks/serve.py [--clients 32] [--tokens 256] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=32, help="concurrent streaming clients (default 32)")
    p.add_argument("--tokens", type=int, default=256, help="completion tokens per request (default 256)")
    p.add_argument("--rounds", type=int, default=4, help="requests the single client makes in a row (default 4)")
    p.add_argument("--tries", type=int, default=2, help="alternating tries of each measurement; the best is kept")
    p.add_argument("--serve-args", nargs=argparse.REMAINDER, default=[], help="extra `textgen serve` flags")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def make_checkpoint(out: Path) -> Path:
    from textgen import train

    train(preset="shakespeare", out=out, max_steps=1, eval_batches=1, sample_length=0, tensorboard=False)
    return out


def start_server(run: Path, extra: list[str]) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "textgen", "serve", str(run), "--port", "0", "--max-tokens", "4096", *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("textgen: serving"):
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
    return proc, line.split(" at ")[1].split("/ ")[0]


async def stream_once(client: httpx.AsyncClient, url: str, tokens: int) -> tuple[int, float, float]:
    """One streaming completion: (completion tokens, seconds to the end, seconds to the first text)."""
    start, first, used = time.perf_counter(), 0.0, 0
    body = {"prompt": "ROMEO:", "max_tokens": tokens, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                first = first or time.perf_counter() - start
                event = json.loads(line[6:])
                if "error" in event:
                    raise SystemExit(f"the server failed: {event['error']}")
                if event.get("usage"):
                    used = event["usage"]["completion_tokens"]
    return used, time.perf_counter() - start, first


async def load(url: str, clients: int, rounds: int, tokens: int) -> dict[str, float]:
    """``clients`` concurrent streams, ``rounds`` times: tokens/s and latency percentiles."""
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
        await stream_once(client, url, 4)  # connections and the server warm
        start = time.perf_counter()
        results: list[tuple[int, float, float]] = []
        for _ in range(rounds):
            results += await asyncio.gather(*[stream_once(client, url, tokens) for _ in range(clients)])
        seconds = time.perf_counter() - start
    latency = sorted(r[1] for r in results)
    return {
        "clients": clients,
        "tokens_per_s": sum(r[0] for r in results) / seconds,
        "latency_p50_s": statistics.median(latency),
        "latency_p99_s": latency[min(len(latency) - 1, int(0.99 * len(latency)))],
        "first_text_p50_s": statistics.median(r[2] for r in results),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run = make_checkpoint(Path(tmp) / "run")
        proc, url = start_server(run, args.serve_args)
        try:
            health = httpx.get(url + "/health", timeout=30).json()
            singles, crowds = [], []
            for _ in range(args.tries):
                singles.append(asyncio.run(load(url, 1, args.rounds, args.tokens)))
                crowds.append(asyncio.run(load(url, args.clients, 1, args.tokens)))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    one = max(singles, key=lambda r: r["tokens_per_s"])
    many = max(crowds, key=lambda r: r["tokens_per_s"])
    result = {"health": health, "one": one, "many": many, "ratio": many["tokens_per_s"] / one["tokens_per_s"]}
    if args.json:
        print(json.dumps(result))
        return
    print(f"server: {json.dumps({k: v for k, v in health.items() if k != 'limits'})}")
    for r in (one, many):
        print(
            f"{r['clients']:>3} client(s): {r['tokens_per_s']:>9,.0f} tokens/s | latency p50 "
            f"{r['latency_p50_s'] * 1000:,.0f} ms, p99 {r['latency_p99_s'] * 1000:,.0f} ms | first text p50 "
            f"{r['first_text_p50_s'] * 1000:,.0f} ms"
        )
    print(f"{many['clients']} clients together: {result['ratio']:.1f}x the tokens/s of one")


if __name__ == "__main__":
    main()
