"""Speed figures for textgen on this machine: a matmul bound, training tokens/s and generation chars/s.

What it measures, and why:

1. **Matmul bound** -- GFLOP/s of a large fp32 matrix multiply. This is about the best the device can
   do, so it gives a ceiling against which the training speed can be judged.
2. **Training tokens/s** -- real ``RecurrentLM`` training steps (forward, cross-entropy, backward,
   gradient clipping, Adam) on random token ids, for the ``shakespeare`` preset (embedding 256, one
   LSTM of 1024, batch 64, sequences of 100) and for the CLI's default model (embedding 64, LSTM of
   256). Each row also shows the bound implied by the matmul figure (about 6 FLOPs per recurrent
   parameter per token) and the fraction of it reached.
3. **Generation chars/s** -- textgen's decode loop (the prompt once, then one ``FastStep`` per
   character from the carried state) for 1 and for many samples at once, against two baselines run
   the same way: (a) the training model's forward called once per token (``Generation(fast=False)``)
   and (b) the tutorials' way, re-running the last 60 characters from a fresh state for every new
   character.

Untrained weights and random data are used throughout: speed does not depend on what was learned.

Usage: ``python benchmarks/bench.py [--device auto|cpu|cuda] [--json]``; see ``--help``.
"""

from __future__ import annotations

import argparse
import json
import platform
import string
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from textgen.config import ModelConfig, SampleConfig
from textgen.data.tokenizers import CharTokenizer
from textgen.models.lm import RecurrentLM
from textgen.models.step import PRECISIONS, FastStep
from textgen.sampling.decode import Generation

VOCAB = 65  # the TF tutorial's vocabulary size (textgen adds an unknown id: 66 on Tiny Shakespeare)
SEQ_LEN = 100
LR = 1e-3
CLIP = 5.0
WARMUP_STEPS = 2
PROMPT = "ROMEO:"
WINDOW = 60  # the tutorials' method re-runs a window of the last 60 characters for each new one


@dataclass
class TrainRow:
    name: str
    embedding_dim: int
    hidden_size: int
    batch_size: int
    seq_len: int
    steps: int
    recurrent_params: int
    tokens_per_s: float
    bound_tokens_per_s: float
    fraction_of_bound: float


@dataclass
class GenRow:
    name: str
    samples: int
    new_chars: int
    seconds: float
    chars_per_s: float
    precision: str = ""  # the fast step's; empty for the baselines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--matmul-size", type=int, default=0, help="square matrix size (default 2048 CPU, 8192 CUDA)")
    p.add_argument("--train-steps", type=int, default=0, help="timed training steps (default 5 CPU, 50 CUDA)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of the shakespeare training row")
    p.add_argument("--hidden-size", type=int, default=1024, help="LSTM size of the shakespeare rows")
    p.add_argument("--gen-chars", type=int, default=500, help="characters generated for one sample")
    p.add_argument("--gen-chars-batch", type=int, default=200, help="characters generated per sample, many samples")
    p.add_argument("--samples", type=int, default=64, help="samples decoded together in the batched row")
    return p.parse_args(argv)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of one call of ``fn``, with the device drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def bench_matmul(device: torch.device, n: int, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n @ n x n fp32 product over ``repeats`` runs, after two warm-up runs."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b), device) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def build_model(embedding_dim: int, hidden_size: int, device: torch.device) -> RecurrentLM:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, cell="lstm", layers=1, hidden_size=hidden_size, embedding_dim=embedding_dim)
    return RecurrentLM(cfg).to(device)


def recurrent_params(model: RecurrentLM) -> int:
    # Only the LSTM: the head and the embedding are left out, as in "about 6 x recurrent parameters"
    # FLOPs per training token (2 forward + 4 backward per weight); they are small next to it here.
    return sum(p.numel() for p in model.rnn.parameters())


def train_steps(model: RecurrentLM, batch_size: int, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` full training steps on random ids, after ``WARMUP_STEPS`` untimed ones."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    data = torch.randint(0, VOCAB, (batch_size, SEQ_LEN + 1), device=device)
    x, y = data[:, :-1], data[:, 1:]

    def step() -> None:
        logits, _ = model(x, None)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()

    def run(n: int) -> None:
        for _ in range(n):
            step()

    run(WARMUP_STEPS)
    return timed(lambda: run(steps), device)


def bench_training(
    name: str, embedding_dim: int, hidden_size: int, batch_size: int, steps: int, gflops: float, device: torch.device
) -> TrainRow:
    model = build_model(embedding_dim, hidden_size, device)
    seconds = train_steps(model, batch_size, steps, device)
    params = recurrent_params(model)
    tokens_per_s = batch_size * SEQ_LEN * steps / seconds
    bound = gflops * 1e9 / (6 * params)
    return TrainRow(
        name, embedding_dim, hidden_size, batch_size, SEQ_LEN, steps, params, tokens_per_s, bound, tokens_per_s / bound
    )


def make_tokenizer() -> CharTokenizer:
    chars = "\n !$&',-.:;?" + string.ascii_letters  # Tiny Shakespeare's characters less the digit 3
    assert len(set(chars)) == 64
    return CharTokenizer(list(chars))


def gen_row(
    name: str, samples: int, new_chars: int, fn: Callable[[], list[str]], device: torch.device, precision: str = ""
) -> GenRow:
    """Time ``fn`` (which returns the generated texts) and count the characters it made."""
    out: list[str] = []
    seconds = timed(lambda: out.extend(fn()), device)
    chars = sum(len(t) for t in out)
    return GenRow(name, samples, chars, seconds, chars / seconds, precision)


@torch.no_grad()
def window_baseline(model: RecurrentLM, tok: CharTokenizer, prompt: str, n: int, seed: int = 0) -> list[str]:
    """The tutorials' loop: for each character, run the last ``WINDOW`` ids from a fresh state, sample the last."""
    model.eval()
    device = model.head.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = tok.encode(prompt)
    for _ in range(n):
        window = torch.tensor([ids[-WINDOW:]], device=device)
        logits, _ = model(window)  # fresh (zero) state every time
        scores = logits[0, -1].float()
        scores[tok.unk_id] = float("-inf")  # as textgen does: never draw the unknown character
        ids.append(int(torch.multinomial(scores.softmax(-1), 1, generator=gen)))
    return [tok.decode(ids[len(prompt) :])]


def bench_generation(model: RecurrentLM, args: argparse.Namespace, device: torch.device) -> list[GenRow]:
    """textgen's fast step, then baseline (a): the model's forward once per token, and (b): the window re-run."""
    tok = make_tokenizer()
    model.eval()

    def textgen(n: int, samples: int, fast: bool = True, precision: str = "fp32") -> Callable[[], list[str]]:
        def run() -> list[str]:
            settings = SampleConfig(
                max_new_tokens=n, temperature=1.0, seed=0, num_samples=samples, decode_precision=precision
            )
            gen = Generation(model, tok, PROMPT, settings, fast=fast)
            for _ in gen:
                pass
            return [s.text for s in gen.samples]

        return run

    with torch.no_grad():
        textgen(10, 1)()  # warm-up
        n, nb, b = args.gen_chars, args.gen_chars_batch, args.samples
        rows = [
            gen_row("(a) forward per token, 1", 1, n, textgen(n, 1, fast=False), device),
            gen_row(f"(a) forward per token, {b}", b, nb, textgen(nb, b, fast=False), device),
            gen_row(f"(b) re-run last {WINDOW} chars", 1, n, lambda: window_baseline(model, tok, PROMPT, n), device),
        ]
        for precision in PRECISIONS if device.type == "cpu" else ("fp32", "bf16"):  # int8 is CPU only
            rows += [
                gen_row(
                    f"textgen fast step {precision}, 1", 1, n, textgen(n, 1, precision=precision), device, precision
                ),
                gen_row(
                    f"textgen fast step {precision}, {b}", b, nb, textgen(nb, b, precision=precision), device, precision
                ),
            ]
        return rows


def bench_step(model: RecurrentLM, device: torch.device, batches: tuple[int, ...] = (1, 64)) -> list[dict[str, Any]]:
    """CUDA only: FastStep steps per second with and without CUDA-graph capture (does the graph help?)."""
    rows = []
    with torch.no_grad():
        for batch in batches:
            for graph in (False, True):
                step = FastStep(model, batch, cuda_graph=graph)
                tokens = torch.zeros(batch, dtype=torch.long, device=device)
                seconds = timed(lambda s=step, t=tokens: [s.step(t) for _ in range(500)], device)
                rows.append({"batch": batch, "cuda_graph": graph, "steps_per_s": 500 / seconds})
    return rows


def print_table(info: dict[str, Any], train: list[TrainRow], gen: list[GenRow], speedup: float) -> None:
    print(f"torch {info['torch']} | device {info['device']} ({info['device_name']}) | threads {info['threads']}")
    print(f"\nmatmul fp32 {info['matmul_size']}^3: {info['matmul_gflops']:.1f} GFLOP/s (best of 5)\n")
    print("training (LSTM, Adam, clip 5, random ids)")
    head = f"{'config':<14}{'emb':>5}{'hidden':>7}{'batch':>6}{'seq':>5}{'steps':>6}{'rec params':>12}"
    print(head + f"{'tokens/s':>11}{'bound/s':>11}{'of bound':>9}")
    for r in train:
        print(
            f"{r.name:<14}{r.embedding_dim:>5}{r.hidden_size:>7}{r.batch_size:>6}{r.seq_len:>5}{r.steps:>6}"
            f"{r.recurrent_params:>12,}{r.tokens_per_s:>11,.0f}{r.bound_tokens_per_s:>11,.0f}"
            f"{r.fraction_of_bound:>9.1%}"
        )
    print(f"\ngeneration (shakespeare model, prompt {PROMPT!r}, temperature 1)")
    print(f"{'method':<30}{'samples':>8}{'chars':>8}{'seconds':>9}{'chars/s':>11}")
    for g in gen:
        print(f"{g.name:<30}{g.samples:>8}{g.new_chars:>8}{g.seconds:>9.2f}{g.chars_per_s:>11,.0f}")
    a1, a64, b1 = (g.chars_per_s for g in gen[:3])
    print()
    for i in range(3, len(gen), 2):
        one, many = gen[i].chars_per_s, gen[i + 1].chars_per_s
        print(
            f"{gen[i].precision}: single stream {one / a1:.1f}x baseline (a), {one / b1:.1f}x baseline (b); "
            f"{gen[1].samples} streams {many:,.0f} chars/s ({many / a64:.1f}x baseline (a))"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    size = args.matmul_size or (8192 if cuda else 2048)
    steps = args.train_steps or (50 if cuda else 5)
    gflops = bench_matmul(device, size)
    train = [
        bench_training("shakespeare", 256, args.hidden_size, args.batch_size, steps, gflops, device),
        bench_training("cli-default", 64, 256, 64, steps, gflops, device),
    ]
    model = build_model(256, args.hidden_size, device)
    gen = bench_generation(model, args, device)
    graph = bench_step(model, device) if cuda else []
    speedup = gen[3].chars_per_s / gen[2].chars_per_s  # fp32 fast step against baseline (b)
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "matmul_size": size,
        "matmul_gflops": gflops,
    }
    if args.json:
        rows = {"training": [asdict(r) for r in train], "generation": [asdict(g) for g in gen], "cuda_graph": graph}
        print(json.dumps({**info, **rows, "single_stream_speedup": speedup}))
    else:
        print_table(info, train, gen, speedup)
        for r in graph:
            graph_on = "on" if r["cuda_graph"] else "off"
            print(f"fast step, batch {r['batch']}, CUDA graph {graph_on}: {r['steps_per_s']:,.0f} steps/s")


if __name__ == "__main__":
    main()
