"""Speed figures for textgen on this machine: a matmul bound, training tokens/s and generation chars/s.

What it measures, and why:

1. **Matmul bound** -- GFLOP/s of a large fp32 matrix multiply (on CUDA also bf16). This is about
   the best the device can do, so it gives a ceiling against which the training speed can be judged.
2. **Training tokens/s** -- textgen's own training steps (``Trainer``: shuffled windows drawn on
   the host and copied over, forward under the chosen precision, cross-entropy, backward, gradient
   clipping, Adam, the non-finite check) on random token ids, for the ``shakespeare`` preset
   (embedding 256, one LSTM of 1024, sequences of 100; batch 64 and, on CUDA, 256) and for the
   CLI's default model (embedding 64, LSTM of 256). Each row also shows the bound implied by the
   matmul figure of its precision (about 6 FLOPs per recurrent parameter per token) and the
   fraction of it reached.
3. **Time to a validation loss** (CUDA, or ``--loss-minutes``) -- the ``shakespeare`` preset trained
   in bf16 on the bundled Tiny Shakespeare (90/10 split) at batch 64 and 256: wall-clock seconds
   until the validation loss first reaches 1.50 nats/char. ``--recipe`` also trains the five-minute
   GPU recipe of ``docs/scale.md`` and reports the lowest validation loss it reached.
4. **Generation chars/s** -- textgen's decode core (the prompt once, then one step of the model's
   ``Stepper`` per character from the carried state) for 1 and for many samples at once, at the
   default precision (``auto``: what it picks is shown) and at each precision, against two baselines run
   the same way: (a) the training model's forward called once per token (``Generation(fast=False)``)
   and (b) the tutorials' way, re-running the last 60 characters from a fresh state for every new
   character.

Untrained weights and random data are used throughout: speed does not depend on what was learned.

Usage: ``python benchmarks/bench.py [--device auto|cpu|cuda] [--json]``; see ``--help``. Figures
taken on a machine shared with other work are indicative only.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import string
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textgen.config import ModelSpec, SampleConfig, TrainConfig
from textgen.data.batches import ShuffledWindows
from textgen.data.tokenizers import CharTokenizer
from textgen.models.lm import RecurrentLM
from textgen.models.protocol import PRECISIONS
from textgen.sampling.decode import Generation
from textgen.sampling.precision import choose_precision
from textgen.training.tasks import LanguageModelTask
from textgen.training.trainer import Trainer

VOCAB = 65  # the TF tutorial's vocabulary size (textgen adds an unknown id: 66 on Tiny Shakespeare)
SEQ_LEN = 100
LR = 1e-3
CLIP = 5.0
WARMUP_STEPS = 2
PROMPT = "ROMEO:"
WINDOW = 60  # the tutorials' method re-runs a window of the last 60 characters for each new one
TARGET_LOSS = 1.50  # nats/char on Tiny Shakespeare's last 10%
# The five-minute GPU recipe of docs/scale.md (keep the two in step).
RECIPE = dict(
    level="char",
    embedding_dim=256,
    cell="lstm",
    layers=2,
    hidden_size=1024,
    dropout=0.3,
    seq_len=200,
    batch_size=128,
    mode="shuffled",
    window_stride=50,
    shuffle_buffer=1_000_000,
    optimizer="adamw",
    lr=3e-3,
    weight_decay=0.05,
    warmup_steps=100,
    clip=1.0,
    schedule="plateau",
    plateau_patience=0,
    eval_every=250,
    precision="bf16",
    max_minutes=5.0,
)


@dataclass
class TrainRow:
    name: str
    precision: str
    embedding_dim: int
    hidden_size: int
    batch_size: int
    seq_len: int
    steps: int
    recurrent_params: int
    tokens_per_s: float  # CPU: the median step's; CUDA: over all steps
    bound_tokens_per_s: float  # implied by the matmul figures of this precision taken beside the steps
    fraction_of_bound: float  # CPU: the median of each step's fraction of the bound measured just before it


@dataclass
class LossRow:
    name: str
    batch_size: int
    precision: str
    target: float
    seconds_to_target: float | None  # None: not reached within the time allowed
    best_val_loss: float | None
    seconds: float  # how long it trained
    steps: int


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
    p.add_argument("--train-steps", type=int, default=0, help="timed training steps (default 9 CPU, 50 CUDA)")
    p.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=None,
        help="batch sizes of the shakespeare training rows (default 64 CPU; 64 256 CUDA)",
    )
    p.add_argument(
        "--precision",
        nargs="+",
        choices=("fp32", "bf16", "fp16"),
        default=None,
        help="precisions of the shakespeare training rows (default fp32 bf16 CPU; bf16 CUDA)",
    )
    p.add_argument(
        "--loss-minutes",
        type=float,
        default=None,
        help=f"train the shakespeare preset on Tiny Shakespeare for up to this long per batch size and report "
        f"the time to validation loss {TARGET_LOSS}; 0 skips it (default 5 CUDA, 0 CPU)",
    )
    p.add_argument("--recipe", action="store_true", help="also train the five-minute GPU recipe of docs/scale.md")
    p.add_argument("--no-generation", action="store_true", help="skip the generation rows")
    p.add_argument("--no-training", action="store_true", help="skip the training rows")
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


def bench_matmul(device: torch.device, n: int, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s of an n x n @ n x n product in ``dtype`` over ``repeats`` runs, after two warm-up runs.

    (On a CPU the 2048 x 2048 product takes a fraction of a second: short enough to pair with one step.)"""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b), device) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def build_model(embedding_dim: int, hidden_size: int, device: torch.device) -> RecurrentLM:
    torch.manual_seed(0)
    cfg = ModelSpec(vocab_size=VOCAB, cell="lstm", layers=1, hidden_size=hidden_size, embedding_dim=embedding_dim)
    return RecurrentLM(cfg).to(device)


def recurrent_params(model: RecurrentLM) -> int:
    # Only the LSTM: the head and the embedding are left out, as in "about 6 x recurrent parameters"
    # FLOPs per training token (2 forward + 4 backward per weight); they are small next to it here.
    return sum(p.numel() for p in model.rnn.parameters())


def make_trainer(model: RecurrentLM, batch_size: int, steps: int, precision: str, device: torch.device) -> Trainer:
    """textgen's Trainer on random ids, with enough shuffled windows for ``steps`` steps in one epoch."""
    ids = np.random.default_rng(0).integers(0, VOCAB, (steps + 1) * batch_size + SEQ_LEN + 1)
    task = LanguageModelTask(ShuffledWindows(ids, batch_size, SEQ_LEN, buffer=10_000, stride=1, seed=0))
    cfg = TrainConfig(batch_size=batch_size, seq_len=SEQ_LEN, lr=LR, clip=CLIP, precision=precision)
    return Trainer(model, task, cfg, device=device, log=lambda message: None)


def train_steps(
    model: RecurrentLM, batch_size: int, steps: int, device: torch.device, precision: str, matmul: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """Seconds per training step of textgen's Trainer on random ids (after ``WARMUP_STEPS`` untimed ones),
    and the matmul GFLOP/s measured just before each.

    On a CPU each step is timed alone, right after one matmul, so that each step meets the bound of its
    own moment: on a machine shared with other work the speed changes from second to second. On a GPU
    the steps overlap, so only the whole run is timed, once, after one matmul figure."""
    model.train()
    trainer = make_trainer(model, batch_size, steps + WARMUP_STEPS, precision, device)
    for _ in range(WARMUP_STEPS):
        trainer._step()
    if device.type == "cuda":
        gflops = matmul()
        return [timed(lambda: [trainer._step() for _ in range(steps)], device) / steps], [gflops]
    times, bounds = [], []
    for _ in range(steps):
        bounds.append(matmul())
        times.append(timed(trainer._step, device))
    return times, bounds


def bench_training(
    name: str,
    embedding_dim: int,
    hidden_size: int,
    batch_size: int,
    steps: int,
    matmul: Callable[[], float],
    device: torch.device,
    precision: str = "fp32",
) -> TrainRow:
    """Median tokens/s and bound over the steps, and the median of each step's fraction of its bound."""
    model = build_model(embedding_dim, hidden_size, device)
    times, gflops = train_steps(model, batch_size, steps, device, precision, matmul)
    params = recurrent_params(model)
    speeds = [batch_size * SEQ_LEN / t for t in times]
    bounds = [g * 1e9 / (6 * params) for g in gflops]
    fractions = [v / b for v, b in zip(speeds, bounds)]
    return TrainRow(
        name,
        precision,
        embedding_dim,
        hidden_size,
        batch_size,
        SEQ_LEN,
        steps,
        params,
        float(np.median(speeds)),
        float(np.median(bounds)),
        float(np.median(fractions)),
    )


def time_to_loss(name: str, settings: dict[str, Any], device: torch.device, minutes: float) -> LossRow:
    """Train on the bundled Tiny Shakespeare for up to ``minutes``, validating often; read metrics.csv for
    the first validation at or below ``TARGET_LOSS`` (wall-clock seconds, validations included)."""
    from textgen.api import build_config
    from textgen.training.run import run_training

    settings = {
        "sample_length": 0,
        "tensorboard": False,
        "eval_every": 100,
        **settings,
        "max_minutes": minutes,
        "device": device.type,
    }
    cfg, _ = build_config(settings.pop("preset", None), None, **settings)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_training(cfg, Path(tmp) / "run", log=lambda message: None)
        with open(Path(tmp) / "run" / "metrics.csv", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r["val_loss"]]
    reached = [float(r["elapsed_s"]) for r in rows if float(r["val_loss"]) <= TARGET_LOSS]
    losses = [float(r["val_loss"]) for r in rows]
    return LossRow(
        name,
        int(settings.get("batch_size", 64)),
        str(settings.get("precision", "fp32")),
        TARGET_LOSS,
        reached[0] if reached else None,
        min(losses) if losses else None,
        float(rows[-1]["elapsed_s"]) if rows else 0.0,
        result.step,
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

    def textgen(n: int, samples: int, fast: bool = True, precision: str = "auto") -> Callable[[], list[str]]:
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
        auto, _ = choose_precision(model)
        for precision in ("auto", *(PRECISIONS if device.type == "cpu" else ("fp32", "bf16"))):  # int8: CPU only
            shown = f"auto={auto}" if precision == "auto" else precision
            rows += [
                gen_row(f"textgen {shown}, 1", 1, n, textgen(n, 1, precision=precision), device, shown),
                gen_row(f"textgen {shown}, {b}", b, nb, textgen(nb, b, precision=precision), device, shown),
            ]
        return rows


def bench_step(model: RecurrentLM, device: torch.device, batches: tuple[int, ...] = (1, 64)) -> list[dict[str, Any]]:
    """CUDA only: stepper steps per second with and without CUDA-graph capture (does the graph help?)."""
    rows = []
    with torch.no_grad():
        for batch in batches:
            for graph in (False, True):
                step = model.stepper(batch, cuda_graph=graph)
                tokens = torch.zeros(batch, dtype=torch.long, device=device)
                seconds = timed(lambda s=step, t=tokens: [s.step(t) for _ in range(500)], device)
                rows.append({"batch": batch, "cuda_graph": graph, "steps_per_s": 500 / seconds})
    return rows


def print_table(
    info: dict[str, Any], train: list[TrainRow], gen: list[GenRow], losses: list[LossRow], speedup: float
) -> None:
    print(f"torch {info['torch']} | device {info['device']} ({info['device_name']}) | threads {info['threads']}")
    for precision, gflops in info["matmul_gflops"].items():
        print(f"matmul {precision} {info['matmul_size']}^3: {gflops:,.1f} GFLOP/s (best of 5)")
    timing = "over all steps" if info["device"] == "cuda" else "median step, each against a matmul just before it"
    print(f"\ntraining (textgen's Trainer: LSTM, Adam, clip 5, random ids; {timing})")
    head = f"{'config':<14}{'prec':>5}{'emb':>5}{'hidden':>7}{'batch':>6}{'seq':>5}{'steps':>6}{'rec params':>12}"
    print(head + f"{'tokens/s':>12}{'bound/s':>12}{'of bound':>9}")
    for r in train:
        print(
            f"{r.name:<14}{r.precision:>5}{r.embedding_dim:>5}{r.hidden_size:>7}{r.batch_size:>6}{r.seq_len:>5}"
            f"{r.steps:>6}{r.recurrent_params:>12,}{r.tokens_per_s:>12,.0f}{r.bound_tokens_per_s:>12,.0f}"
            f"{r.fraction_of_bound:>9.1%}"
        )
    if losses:
        print(f"\ntime to validation loss {TARGET_LOSS} nats/char, Tiny Shakespeare (wall clock, validations included)")
        for r in losses:
            reached = f"{r.seconds_to_target:,.0f} s" if r.seconds_to_target is not None else "not reached"
            best = f"{r.best_val_loss:.4f}" if r.best_val_loss is not None else "-"
            print(
                f"{r.name:<14} batch {r.batch_size:>4} {r.precision}: {reached:>12}; best {best} "
                f"after {r.seconds:,.0f} s, {r.steps:,} steps"
            )
    if not gen:
        return
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
    steps = args.train_steps or (50 if cuda else 9)
    batches = args.batch_size or ([64, 256] if cuda else [64])
    precisions = args.precision or (["bf16"] if cuda else ["fp32", "bf16"])
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    gflops = {p: bench_matmul(device, size, dtype=dtypes[p]) for p in dict.fromkeys(["fp32", *precisions])}

    def matmul(precision: str) -> Callable[[], float]:  # one more figure, beside a training step
        return lambda: bench_matmul(device, size, repeats=1, dtype=dtypes[precision])

    train = []
    if not args.no_training:
        train = [
            bench_training("shakespeare", 256, args.hidden_size, b, steps, matmul(p), device, p)
            for p in precisions
            for b in batches
        ]
        train.append(bench_training("cli-default", 64, 256, 64, steps, matmul("fp32"), device))
    loss_minutes = args.loss_minutes if args.loss_minutes is not None else (5.0 if cuda else 0.0)
    losses = []
    if loss_minutes:
        for b in batches:
            settings = {"preset": "shakespeare", "batch_size": b, "precision": "bf16"}
            losses.append(time_to_loss("shakespeare", settings, device, loss_minutes))
    if args.recipe:
        losses.append(time_to_loss("recipe", dict(RECIPE), device, RECIPE["max_minutes"]))
    gen: list[GenRow] = []
    graph: list[dict[str, Any]] = []
    speedup = None
    if not args.no_generation:
        model = build_model(256, args.hidden_size, device)
        gen = bench_generation(model, args, device)
        graph = bench_step(model, device) if cuda else []
        speedup = gen[3].chars_per_s / gen[2].chars_per_s  # the default (auto) against baseline (b)
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "matmul_size": size,
        "matmul_gflops": gflops,
    }
    if args.json:
        rows = {
            "training": [asdict(r) for r in train],
            "time_to_loss": [asdict(r) for r in losses],
            "generation": [asdict(g) for g in gen],
            "cuda_graph": graph,
        }
        print(json.dumps({**info, **rows, "single_stream_speedup": speedup}))
    else:
        print_table(info, train, gen, losses, speedup or 0.0)
        for r in graph:
            graph_on = "on" if r["cuda_graph"] else "off"
            print(f"fast step, batch {r['batch']}, CUDA graph {graph_on}: {r['steps_per_s']:,.0f} steps/s")


if __name__ == "__main__":
    main()
