"""Train the short real runs behind the guide's figures and samples; write them to docs/assets/.

Last run of the parts before ``translate`` existed: 153 s wall clock (2 min 33 s; 152 s by the
script's own count) on a 2-core CPU shared with other work, 2026-11-26, with exactly this command
from the repository root:

    nice -n 19 .venv/bin/python docs/make_figures.py

The ``translate`` part alone last took 76 s by the script's count on the same CPU, idle
(1,104 s the first time, while other work kept the CPU busy), 2026-11-27, and the ``pairs``
part 1 s, with

    nice -n 19 .venv/bin/python docs/make_figures.py --only translate
    nice -n 19 .venv/bin/python docs/make_figures.py --only pairs

so the whole script takes about 4 minutes on an idle machine of this kind; ``--only`` remakes
one page's material without the rest.

The runs are seeded, and two runs of it wrote the same numbers and text (the ``translate`` part
was run once in full; two 40-step runs of its training command wrote identical weights). With textgen's own
command line (in-process) and Python API it trains, on the bundled corpora:

- ``tinyshakespeare``: ``textgen train --max-steps 400 --eval-every 50``, the default model (char
  level, embedding 64, one LSTM of 256) with the TensorFlow tutorial's windows, batches and
  shuffle buffer. From it: the training log, ``metrics.csv``, ``textgen eval``, ``textgen plot``
  (the loss curve), ``textgen temperatures`` (the temperature figure) and samples at four
  temperatures;
- ``embedding``, ``onehot``, ``stateful``, ``last``: one-layer LSTMs of 128 units, each trained
  for the same number of steps with the same seed and differing from ``embedding`` in one
  setting (``--embedding-dim 0``, ``--mode stateful``, ``--loss last``), for the comparison
  figures and the two layer tables;
- ``recipes``: ``--preset recipes`` for a few epochs on the bundled cook book, for its samples;
- ``translate``: ``textgen train --preset translate --epochs 15 --out runs/translate``, PyTorch's
  French-to-English seq2seq tutorial on its bundled pairs. From it: the training log and its
  validation lines, the loss and BLEU/chrF/exact-match curves, five held-out sentences at three
  epochs, ``textgen eval --pairs`` (greedy and ``--beams 5``) on the held-out split, twelve
  held-out translations beside their references, ``textgen translate`` (with an unknown word, then
  ``--input`` with ``--beams 5 --json``), ``textgen summary``, the attention weights of one
  held-out sentence, and three pairs as one padded batch.

It also writes the tokenization example, the shuffle-buffer figure and facts about the bundled
sentence pairs and their held-out split, which need no training.

Each of these is a part that ``--only PART ...`` makes on its own: ``tokens``, ``shuffle``,
``shakespeare``, ``comparisons``, ``recipes``, ``pairs`` and ``translate`` (``--only pairs
translate`` for the translate page alone).
Figures go to ``docs/assets/``; text that the pages include with ``--8<--`` goes to
``docs/assets/samples/``. The runs go to a temporary directory, removed at the end unless
``--keep DIR`` names a directory to keep them in. ``--quick`` trains a few steps per run, to check
the script and the site build; do not publish what it writes.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
ASSETS = DOCS / "assets"
SNIPPETS = ASSETS / "samples"
SEED = 1234
PROMPT = "ROMEO:\n"
TEMPERATURES = [0.2, 0.5, 1.0, 1.5]
VAL_LINE = re.compile(r"^step\s+[\d,]+ \| epoch [\d.]+ \| val loss ")


# ------------------------------------------------------------------------------- running textgen


class _Tee(io.TextIOBase):
    """Keeps the lines textgen prints (its log goes to stdout) and echoes them, indented."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._part = ""

    def write(self, s: str) -> int:
        self._part += s
        *done, self._part = self._part.split("\n")
        for line in done:
            self.lines.append(line)
            sys.__stdout__.write(f"    {line}\n")
        sys.__stdout__.flush()
        return len(s)


@dataclasses.dataclass
class Run:
    name: str
    out: Path
    log: list[str]
    seconds: float

    @property
    def best(self) -> Path:
        return self.out / "best"

    def rows(self) -> list[dict[str, str]]:
        with (self.out / "metrics.csv").open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def series(self, column: str) -> list[tuple[float, float]]:
        return [(float(r["step"]), float(r[column])) for r in self.rows() if r[column]]

    @property
    def steps(self) -> int:
        return int(self.rows()[-1]["step"])

    def last(self, column: str) -> float:
        values = self.series(column)
        return values[-1][1] if values else math.nan


def train(runs: Path, name: str, **settings: object) -> Run:
    """``textgen.train`` into runs/NAME with the guide's seed, its log kept."""
    import textgen

    print(f"[{name}] {settings}", flush=True)
    tee, started = _Tee(), time.monotonic()
    with contextlib.redirect_stdout(tee):
        textgen.train(out=runs / name, overwrite=True, seed=SEED, **settings)
    run = Run(name, runs / name, tee.lines, time.monotonic() - started)
    print(f"[{name}] {run.steps} steps in {run.seconds:.0f} s", flush=True)
    return run


def cli(*argv: str, echo: bool = False, stderr: bool = False) -> list[str]:
    """Run ``textgen ARGV`` in this process; the lines it printed (with ``stderr``, its notes on
    stderr too, in the order a terminal shows them). It must succeed."""
    from textgen.cli import main

    tee = _Tee() if echo else io.StringIO()
    err = contextlib.redirect_stderr(tee) if stderr else contextlib.nullcontext()
    with contextlib.redirect_stdout(tee), err:
        code = main(list(argv))
    if code != 0:
        raise SystemExit(f"textgen {' '.join(argv)} failed with exit code {code}")
    return tee.lines if echo else tee.getvalue().splitlines()


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# ------------------------------------------------------------------------------- writing assets


def write(name: str, text: str) -> None:
    path = SNIPPETS / name
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)}", flush=True)


def fenced(text: str) -> str:
    """A fenced block that the text inside cannot close."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text.rstrip()}\n{fence}"


def new_figure(**kw: object):  # noqa: ANN201
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, name: str) -> None:  # noqa: ANN001
    path = ASSETS / name
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print(f"wrote {path.relative_to(ROOT)}", flush=True)


def compare_figure(runs: list[Run], labels: list[str], title: str, name: str) -> None:
    fig = new_figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    for i, (run, label) in enumerate(zip(runs, labels)):
        ax.plot(*zip(*run.series("train_loss")), color=f"C{i}", lw=1, alpha=0.35)
        ax.plot(*zip(*run.series("val_loss")), "o-", color=f"C{i}", ms=3, label=f"{label}: validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per character)")
    ax.set_title(f"{title}\n(faint lines: training loss)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, name)


def compare_table(runs: list[Run], labels: list[str]) -> str:
    rows = [
        "| run | steps | training time | final validation loss | bits per character |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for run, label in zip(runs, labels):
        rows.append(
            f"| `{label}` | {run.steps} | {run.seconds:.0f} s | {run.last('val_loss'):.3f} nats "
            f"| {run.last('bits_per_char'):.3f} |"
        )
    return "\n".join(rows)


# ------------------------------------------------------------------------------- the parts


def tinyshakespeare_text() -> str:
    return (files("textgen") / "corpora" / "tinyshakespeare.txt").read_text(encoding="utf-8")


def tokens_example() -> None:
    """One line cut by textgen's char, word and BPE tokenizers, each trained on Tiny Shakespeare."""
    from textgen.data.tokenizers import train_tokenizer

    text = tinyshakespeare_text()
    line = "Wherefore art thou Romeo? I'll know by ten o'clock."
    parts = []
    for level, kw in (("char", {}), ("word", {}), ("bpe", {"vocab_size": 2000})):
        tok = train_tokenizer(level, [text], **kw)
        ids = tok.encode(line)
        shown = " | ".join(tok.token_text(i).replace(" ", "·") for i in ids)
        flag = f"`--level {level}`" + (" `--vocab-size 2000`" if level == "bpe" else "")
        parts.append(
            f"**{flag}**: a vocabulary of {tok.vocab_size:,} tokens; the line is {len(ids)} tokens\n\n"
            + fenced(f"{shown}\n\nids: {' '.join(map(str, ids))}")
        )
    write("tokens-example.md", "\n\n".join(parts))


def shuffle_buffer_figure() -> None:
    import numpy as np

    from textgen.data.batches import shuffle_buffer_order

    n = 40_000
    fig = new_figure(figsize=(9, 3.8))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, buffer in zip(axes, (10_000, n)):
        order = shuffle_buffer_order(n, buffer, np.random.default_rng(SEED))
        ax.plot(range(n), order, ",", alpha=0.6)
        ax.set_title(f"--shuffle-buffer {buffer:,}")
        ax.set_xlabel("draw (position in the epoch)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("window drawn (position in the text)")
    fig.suptitle(f"The order textgen's shuffle buffer draws {n:,} windows in", y=1.03)
    save_figure(fig, "shuffle-buffer.png")


def main_run(runs: Path, quick: bool) -> Run:
    """The default model on Tiny Shakespeare, trained by the command line exactly as shown."""
    steps, every = (20, 10) if quick else (400, 50)
    argv = ["train", "--recipe", "off", "--max-steps", str(steps), "--eval-every", str(every)]  # the plain defaults
    out = runs / "tinyshakespeare"  # the default --out: the commands run in runs/..
    print(f"[tinyshakespeare] textgen {' '.join(argv)}", flush=True)
    started = time.monotonic()
    log = cli(*argv, *(["--overwrite"] if out.exists() else []), echo=True)
    run = Run("tinyshakespeare", out, log, time.monotonic() - started)
    print(f"[tinyshakespeare] {run.steps} steps in {run.seconds:.0f} s", flush=True)

    # the log: what comes before the first validation, the validations, then the final samples
    vals = [i for i, line in enumerate(log) if VAL_LINE.match(line)]
    shown = log[: vals[0]]
    if len(vals) <= 5:
        shown += [log[i] for i in vals]
    else:
        shown += [log[i] for i in vals[:3]]
        shown += ["[... more validations, and samples at the end of each epoch ...]"]
        shown += [log[i] for i in vals[-2:]]
    shown += log[vals[-1] + 1 :]
    write("train-log.txt", f"$ textgen {' '.join(argv)}\n" + "\n".join(shown))
    write("val-line.txt", log[vals[-1]])
    write("metrics-head.txt", "".join((out / "metrics.csv").read_text(encoding="utf-8").splitlines(True)[:6]))

    # textgen eval on the validation split: the last 10% of the tokens, which are characters here
    text = tinyshakespeare_text()
    Path("val.txt").write_text(text[len(text) - len(text) // 10 :], encoding="utf-8")
    human = cli("eval", "runs/tinyshakespeare", "--corpus", "val.txt")
    js = cli("eval", "runs/tinyshakespeare", "--corpus", "val.txt", "--json")
    write(
        "eval.txt",
        "$ textgen eval runs/tinyshakespeare --corpus val.txt\n" + "\n".join(human) + "\n\n"
        "$ textgen eval runs/tinyshakespeare --corpus val.txt --json\n" + "\n".join(js),
    )

    cli("plot", "runs/tinyshakespeare", "--out", str(ASSETS / "loss.png"))
    (ASSETS / "loss.png").chmod(0o644)  # textgen writes figures through a private temporary file
    print("wrote docs/assets/loss.png (textgen plot)", flush=True)
    samples_at_temperatures(run)
    temperature_figure(run)
    return run


def samples_at_temperatures(run: Run) -> None:
    import textgen

    gen = textgen.load(run.best)
    parts = []
    for t in TEMPERATURES:
        text = gen.generate(PROMPT, max_new_tokens=300, temperature=t, seed=1)
        parts.append(f"**Temperature {t}**\n\n" + fenced(PROMPT + text))
    note = (
        f"*From the figure run's `best/` checkpoint (the default model after {run.steps} steps, "
        f"{run.seconds:.0f} s of training on a CPU, validation loss {run.last('val_loss'):.3f} nats), with "
        f"`textgen generate runs/tinyshakespeare --prompt $'ROMEO:\\n' --temperature T "
        f"--max-new-tokens 300 --seed 1`: the prompt `ROMEO:` and a newline, 300 characters.*"
    )
    write("shakespeare-temperatures.md", "\n\n".join(parts) + "\n\n" + note)


def temperature_figure(run: Run) -> None:
    prompt = "ROMEO:\nI will "
    temps = [f"{t:g}" for t in TEMPERATURES]
    lines = cli(
        "temperatures", "runs/tinyshakespeare", "--prompt", prompt, "--temperatures", *temps,
        "--top", "15", "--out", str(ASSETS / "temperatures.png"),
    )  # fmt: skip
    (ASSETS / "temperatures.png").chmod(0o644)
    print("wrote docs/assets/temperatures.png (textgen temperatures)", flush=True)
    table = [line for line in lines if line.startswith("T=")]
    write(
        "temperatures-caption.md",
        f"*The figure run's distribution over the character after `{prompt!r}`, drawn by "
        f"`textgen temperatures runs/tinyshakespeare --prompt $'ROMEO:\\nI will ' "
        f"--temperatures {' '.join(temps)} --top 15`, which also prints each entropy and the five "
        f"likeliest characters. For comparison, a uniform choice among the 66 characters would have "
        f"{math.log2(66):.2f} bits.*\n\n" + fenced("\n".join(table)),
    )


def comparisons(runs: Path, quick: bool) -> None:
    steps = 10 if quick else 300
    small = dict(hidden_size=128, embedding_dim=64, max_steps=steps, eval_every=5 if quick else 50, sample_length=0)
    common = (
        f"*Each run: Tiny Shakespeare, one LSTM of 128 units, batches of 64 windows of 100 characters, "
        f"Adam at 0.002, {steps} steps, seed {SEED}; every {small['eval_every']} steps the whole "
        f"held-out 10% is scored, as contiguous streams, the same way for every run.*"
    )
    base = train(runs, "embedding", **small)
    onehot = train(runs, "onehot", **(small | {"embedding_dim": 0}))
    stateful = train(runs, "stateful", **(small | {"mode": "stateful"}))
    last = train(runs, "last", **(small | {"loss": "last"}))

    labels = ["--embedding-dim 64", "--embedding-dim 0"]
    compare_figure([base, onehot], labels, "Embedding or one-hot input", "compare-input.png")
    write("compare-input.md", common + "\n\n" + compare_table([base, onehot], labels))
    write("summary-embedding.txt", "$ textgen summary runs/embedding\n" + "\n".join(cli("summary", "runs/embedding")))
    write("summary-onehot.txt", "$ textgen summary runs/onehot\n" + "\n".join(cli("summary", "runs/onehot")))

    labels = ["--mode shuffled", "--mode stateful"]
    compare_figure([base, stateful], labels, "Shuffled windows or stateful streams", "compare-batching.png")
    write("compare-batching.md", common + "\n\n" + compare_table([base, stateful], labels))

    labels = ["--loss every", "--loss last"]
    compare_figure([base, last], labels, "Loss on every step or only the last", "compare-loss.png")
    write("compare-loss.md", common + "\n\n" + compare_table([base, last], labels))


def recipes(runs: Path, quick: bool) -> None:
    import textgen

    run = train(runs, "recipes", preset="recipes", max_steps=10 if quick else 160, eval_every=5 if quick else 40)
    gen = textgen.load(run.best)
    parts = []
    for t in (1.0, 0.5):
        for i, s in enumerate(gen.samples("recipe for", max_new_tokens=150, temperature=t, seed=3, num_samples=2)):
            head = f"**Temperature {t}, sample {i + 1}** (finish reason: `{s.finish_reason}`)"
            parts.append(head + "\n\n" + fenced("recipe for" + s.text))
    write(
        "recipes-samples.md",
        "\n\n".join(parts) + f"\n\n*Trained with `textgen train --preset recipes --max-steps {run.steps}` "
        f"({run.seconds:.0f} s on a CPU), a vocabulary of {gen.tokenizer.vocab_size:,} tokens; final "
        f"validation loss {run.last('val_loss'):.3f} nats per word, {run.last('bits_per_char'):.3f} bits "
        f'per character. Sampled with `textgen generate runs/recipes --prompt "recipe for" --temperature T '
        f"--max-new-tokens 150 --seed 3 --num-samples 2`. Finish reason `eos`: the model wrote the "
        f"end-of-text token; `length`: the sample reached 150 tokens first.*",
    )


# ------------------------------------------------------------------------------- translate

TRANSLATE_EPOCHS = 15
TRANSLATE_BEAMS = 5
TRANSLATE_SHOWN = 12  # held-out pairs in the table, spread evenly over heldout.tsv
UNKNOWN_WORD_SENTENCE = "Elle est ornithologue."  # "ornithologue" is not among the training words


def pairs_facts(runs: Path, quick: bool) -> None:
    """Facts about the bundled pairs and the preset's held-out split (no training): sentences with
    several translations, and held-out references that are also training targets."""
    from collections import defaultdict

    from textgen.api import build_config
    from textgen.data.pairs import read_pairs, split_by_source

    cfg, _ = build_config("translate")
    pairs = read_pairs([Path(p) for p in cfg.data.pairs], reverse=cfg.data.reverse)  # French source first
    translations: dict[str, set[str]] = defaultdict(set)
    for p in pairs:
        translations[p.source].add(p.target)
    several = {s: t for s, t in translations.items() if len(t) > 1}
    most = max(several, key=lambda s: (len(several[s]), s))
    held = split_by_source(pairs, cfg.data.val_fraction, cfg.train.seed, cfg.data.lowercase)
    train_targets = {p.target for p, h in zip(pairs, held) if not h}
    held_pairs = [p for p, h in zip(pairs, held) if h]
    seen = sum(p.target in train_targets for p in held_pairs)
    listed = ", ".join(f'"{t}"' for t in sorted(several[most]))
    write(
        "translate-data.md",
        f"The bundled file has {len(pairs):,} pairs and {len(translations):,} distinct French sentences; "
        f"{len(several):,} of them have more than one English translation, up to {len(several[most])} for "
        f'"{most}" ({listed}). '
        f"With the preset's seed ({cfg.train.seed}), {held.sum():,} pairs are held out, and the reference of "
        f"{seen:,} of them ({100 * seen / len(held_pairs):.0f}%) is also, word for word, the translation of a "
        f"training sentence.",
    )


def md_cell(text: str) -> str:
    return text.replace("|", "\\|") or " "


def translate(runs: Path, quick: bool) -> None:
    """``--preset translate`` (PyTorch's seq2seq tutorial) for a few epochs, trained by the command
    line exactly as shown; its log, held-out scores, translations, layer table and attention figure."""
    import textgen
    from textgen.data.pairs import read_pairs
    from textgen.inference.metrics import score_translations

    limit = ["--epochs", "1", "--max-steps", "20"] if quick else ["--epochs", str(TRANSLATE_EPOCHS)]
    argv = ["train", "--preset", "translate", *limit, "--out", "runs/translate"]
    out = runs / "translate"
    print(f"[translate] textgen {' '.join(argv)}", flush=True)
    started = time.monotonic()
    log = cli(*argv, *(["--overwrite"] if out.exists() else []), echo=True)
    run = Run("translate", out, log, time.monotonic() - started)
    print(f"[translate] {run.steps} steps in {run.seconds:.0f} s", flush=True)
    command = f"textgen {' '.join(argv)}"

    # the log: the set-up lines, the first epoch's validation and translations, then the last epoch's
    vals = [i for i, line in enumerate(log) if VAL_LINE.match(line)]
    shown = log[: vals[0]]
    if len(vals) <= 2:
        shown += log[vals[0] :]
    else:
        shown += log[vals[0] : vals[1]]
        shown += [
            f"[... epochs 2 to {len(vals) - 1}: a validation line and the same five held-out sentences after each ...]",
            "",
        ]
        shown += log[vals[-1] :]
    write("translate-log.txt", f"$ {command}\n" + "\n".join(shown).rstrip())
    write("translate-validations.txt", "\n".join(log[i] for i in vals))

    rows = run.rows()
    val_rows = [r for r in rows if r["val_loss"]]
    best = min(val_rows, key=lambda r: float(r["val_loss"]))
    best_epoch = round(float(best["epoch"]))
    seconds_per_epoch = run.seconds / max(1, len(val_rows))

    # how the five logged sentences changed, from samples.jsonl
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    epochs = sorted({round(r["epoch"]) for r in records})
    picked = sorted({epochs[0], epochs[len(epochs) // 3], epochs[-1]})
    table = ["| source | reference | " + " | ".join(f"epoch {e}" for e in picked) + " |"]
    table.append("| --- | --- |" + " --- |" * len(picked))
    for first in [r for r in records if round(r["epoch"]) == epochs[0]]:
        outs = {round(r["epoch"]): r["output"] for r in records if r["source"] == first["source"]}
        cells = [first["source"], first["reference"], *(outs[e] for e in picked)]
        table.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    write("translate-progress.md", "\n".join(table))

    # scores on the whole held-out split: greedy, then beam search
    timings = {}
    lines = []
    for extra in ([], ["--beams", str(TRANSLATE_BEAMS)]):
        argv_eval = ["eval", "runs/translate", "--pairs", "runs/translate/heldout.tsv", *extra]
        t0 = time.monotonic()
        lines += [f"$ textgen {' '.join(argv_eval)}", *cli(*argv_eval), ""]
        timings[bool(extra)] = time.monotonic() - t0
        print(f"[translate] textgen {' '.join(argv_eval)}: {timings[bool(extra)]:.1f} s", flush=True)
    write("translate-eval.txt", "\n".join(lines))

    # held-out pairs beside the model's greedy and beam translations
    tr = textgen.load(run.best)
    held = read_pairs([out / "heldout.tsv"], reverse=True)  # French source, English reference
    chosen = held[:: max(1, len(held) // TRANSLATE_SHOWN)][:TRANSLATE_SHOWN]
    sources = [p.source for p in chosen]
    greedy = tr.translate(sources)
    beam = tr.translate(sources, beams=TRANSLATE_BEAMS)

    def mark(output: str, reference: str) -> str:
        same = score_translations([output], [reference], tr.target_tokenizer).exact_match == 100.0
        return output + (" ✓" if same else "")

    table = [f"| source | reference | greedy | `--beams {TRANSLATE_BEAMS}` |", "| --- | --- | --- | --- |"]
    for p, g, b in zip(chosen, greedy, beam):
        table.append(f"| {md_cell(p.source)} | {md_cell(p.target)} | {md_cell(mark(g, p.target))} "
                     f"| {md_cell(mark(b, p.target))} |")  # fmt: skip
    write("translate-heldout.md", "\n".join(table))

    # the translate command: greedy with a word it does not know, then beams from a file, as JSON
    few = sources[:3]
    quoted = " ".join(f'"{t}"' for t in [*few, UNKNOWN_WORD_SENTENCE])
    first = cli("translate", "runs/translate", "--beams", "1", *few, UNKNOWN_WORD_SENTENCE, stderr=True)
    Path("sentences.txt").write_text("".join(t + "\n" for t in few), encoding="utf-8")
    second = cli("translate", "runs/translate", "--input", "sentences.txt", "--beams", str(TRANSLATE_BEAMS), "--json")
    write(
        "translate-cli.txt",
        f"$ textgen translate runs/translate --beams 1 {quoted}\n" + "\n".join(first) + "\n\n"
        f"$ textgen translate runs/translate --input sentences.txt --beams {TRANSLATE_BEAMS} --json\n"
        + "\n".join(second),
    )
    write("translate-summary.txt", "$ textgen summary runs/translate\n" + "\n".join(cli("summary", "runs/translate")))

    translate_curves(run)
    attention_figure(tr, held)
    padded_batch(tr, chosen)
    write(
        "translate-note.md",
        f"*Trained with `{command}` in {run.seconds / 60:.1f} minutes on a 2-core CPU shared with other "
        f"work (about {seconds_per_epoch:.0f} s per epoch of {tr_steps(run, val_rows)} steps, validation "
        f"included), seed {SEED}. The `best/` checkpoint, which `textgen translate` and `textgen eval` "
        f"use, is from epoch {best_epoch} (held-out loss {float(best['val_loss']):.3f} nats per word). "
        f"Scoring all {len(held):,} held-out pairs took {timings[False]:.1f} s greedy and "
        f"{timings[True]:.0f} s with {TRANSLATE_BEAMS} beams.*",
    )


def tr_steps(run: Run, val_rows: list[dict[str, str]]) -> str:
    """Optimizer steps per epoch, from the first validation at an epoch's end."""
    first = val_rows[0]
    return f"{round(int(first['step']) / float(first['epoch'])):,}" if float(first["epoch"]) else "?"


def padded_batch(tr, pairs) -> None:  # noqa: ANN001
    """Three pairs of different lengths as the trainer batches them: the padded source with its lengths,
    the decoder inputs and the targets, each id shown as its token."""
    import numpy as np

    from textgen.data.pairs import PAD_TARGET, pad_batch

    by_length = sorted(pairs, key=lambda p: len(tr.source_tokenizer.encode(p.source)))
    three = [by_length[0], by_length[len(by_length) // 2], by_length[-1]]
    model, src_tok, tgt_tok = tr.model, tr.source_tokenizer, tr.target_tokenizer
    batch = pad_batch(
        [np.asarray(src_tok.encode(p.source)) for p in three],
        [np.asarray(tgt_tok.encode(p.target)) for p in three],
        model.start_id,
        model.end_id,
    )

    def target_text(i: int) -> str:
        return {model.start_id: "<start>", model.end_id: "<end>", PAD_TARGET: "-100"}.get(i) or tgt_tok.token_text(i)

    def grid(name: str, ids: np.ndarray, text, pad: np.ndarray) -> list[str]:  # noqa: ANN001
        cells = [[("0" if is_pad else text(int(i))) for i, is_pad in zip(row, mask)] for row, mask in zip(ids, pad)]
        widths = [max(len(row[j]) for row in cells) for j in range(ids.shape[1])]
        rows = ["  " + "  ".join(f"{c:<{w}}" for c, w in zip(row, widths)).rstrip() for row in cells]
        return [f"{name} {tuple(ids.shape)}", *rows]

    src_pad = np.arange(batch.src.shape[1])[None, :] >= batch.src_len[:, None]
    tgt_pad = batch.tgt_out == PAD_TARGET  # the decoder inputs are padded at the same places, with 0
    lines = [f"pairs: {' / '.join(p.source for p in three)}", ""]
    lines += grid("src", batch.src, src_tok.token_text, src_pad) + [f"src_len {batch.src_len.tolist()}", ""]
    lines += grid("tgt_in", batch.tgt_in, target_text, tgt_pad) + [""]
    lines += grid("tgt_out", batch.tgt_out, target_text, np.zeros_like(tgt_pad))
    write("translate-batch.txt", "\n".join(lines))


def translate_curves(run: Run) -> None:
    rows = run.rows()
    vals = [r for r in rows if r["val_loss"]]
    epoch = [float(r["epoch"]) for r in vals]
    fig = new_figure(figsize=(10, 3.8))
    left, right = fig.subplots(1, 2)
    train = [(float(r["epoch"]), float(r["train_loss"])) for r in rows if r["train_loss"]]
    left.plot(*zip(*train), color="C0", lw=1, alpha=0.4, label="training (teacher-forced)")
    left.plot(epoch, [float(r["val_loss"]) for r in vals], "o-", color="C0", ms=3, label="held-out (teacher-forced)")
    left.set_xlabel("epoch")
    left.set_ylabel("loss (nats per target word)")
    left.set_title("Loss")
    left.legend()
    for column, label, colour in (
        ("bleu", "BLEU", "C1"),
        ("chrf", "chrF", "C2"),
        ("exact_match", "exact match %", "C3"),
    ):
        right.plot(epoch, [float(r[column]) for r in vals], "o-", ms=3, color=colour, label=label)
    right.set_xlabel("epoch")
    right.set_ylabel("score (0-100)")
    right.set_title("Greedy translations of held-out sentences")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    save_figure(fig, "translate-curves.png")


def attention_figure(tr, held) -> None:  # noqa: ANN001
    """The attention weights of the best checkpoint over one held-out sentence: the longest source among
    those it translates exactly (greedy), or the longest of all when it gets none right."""
    import numpy as np
    import torch

    from textgen.inference.metrics import score_translations
    from textgen.sampling.translate import translate_ids

    outputs = tr.translate([p.source for p in held])
    right = [
        (p, o) for p, o in zip(held, outputs)
        if score_translations([o], [p.target], tr.target_tokenizer).exact_match == 100.0
    ]  # fmt: skip
    pool = right or list(zip(held, outputs))
    pair, _ = max(pool, key=lambda po: (len(tr.source_tokenizer.encode(po[0].source)), po[0].source))
    model, src_tok, tgt_tok = tr.model, tr.source_tokenizer, tr.target_tokenizer
    src = src_tok.encode(pair.source)
    banned = [tgt_tok.unk_id] + ([tgt_tok.eot_id] if tgt_tok.eot_id is not None else [])  # as Translator bans
    out = translate_ids(model, [src], banned=banned)[0]
    with torch.no_grad():
        model.eval()
        device = tr.device
        memory, state = model.encode(torch.tensor([src], device=device), torch.tensor([len(src)]))
        tgt_in = torch.tensor([[model.start_id, *out]], device=device)
        _, _, weights = model.decode(tgt_in, state, memory, with_attention=True)  # (1, T, S)
    w = weights[0].float().cpu().numpy()
    cols = [src_tok.token_text(i) for i in src]
    rows = [tgt_tok.token_text(i) for i in out] + ["<end>"]
    fig = new_figure(figsize=(1.0 + 0.55 * len(cols), 1.0 + 0.45 * len(rows)))
    ax = fig.add_subplot()
    image = ax.imshow(w, cmap="Greys", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("source word (encoder output)")
    ax.set_ylabel("word written (decoder step)")
    for (i, j), value in np.ndenumerate(w):
        if value >= 0.1:
            ax.text(
                j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if value > 0.5 else "black"
            )
    fig.colorbar(image, ax=ax, fraction=0.04)
    save_figure(fig, "translate-attention.png")
    write(
        "translate-attention.md",
        f"*The `best/` checkpoint's attention weights for the held-out sentence "
        f'"{pair.source}" (reference: "{pair.target}"), which it translates greedily as '
        f'"{tgt_tok.decode(out, skip_special=True)}". Each row is one decoder step and sums to 1 over '
        f"the source words; weights of 0.1 and more are printed. The sentence was chosen by a rule, not "
        f"by eye: the longest held-out source among the "
        f"{len(right):,} of {len(held):,} that greedy decoding translates exactly.*",
    )


# ------------------------------------------------------------------------------- main


PARTS = {
    "tokens": lambda runs, quick: tokens_example(),
    "shuffle": lambda runs, quick: shuffle_buffer_figure(),
    "shakespeare": main_run,
    "comparisons": comparisons,
    "recipes": recipes,
    "pairs": pairs_facts,
    "translate": translate,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few steps per run: check the script, do not publish")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="keep the runs in DIR/runs (default: a temporary dir)")
    ap.add_argument(
        "--only", nargs="+", choices=list(PARTS), metavar="PART",
        help=f"make only these parts ({', '.join(PARTS)}); default: all",
    )  # fmt: skip
    args = ap.parse_args()

    started = time.monotonic()
    SNIPPETS.mkdir(parents=True, exist_ok=True)
    base = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="textgen-figures-"))
    runs = base / "runs"  # textgen runs in `base`, so it prints and takes paths as runs/NAME
    runs.mkdir(parents=True, exist_ok=True)
    try:
        with chdir(base):
            for name, part in PARTS.items():
                if not args.only or name in args.only:
                    part(runs, args.quick)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"done in {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
