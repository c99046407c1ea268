"""The lab: train several configurations on the same data for the same minutes each, and compare them.

``textgen compare`` answers "which model is best for my text and my ten minutes?": each
configuration (a ``--cells`` entry sized to a parameter budget, or a settings file) trains in its
own run directory under ``OUT/runs/``, one after another (never two at once: they would slow each
other), on the same corpus, split, tokenizer settings and seed, for the same wall-clock budget.
Then it writes into ``OUT``:

- ``report.md``: a table (parameters, steps, tokens/s, validation nats per token and bits per
  character, generation characters/s, a sample at one temperature) and the figures;
- ``loss_time.png`` and ``loss_tokens.png``: validation loss against wall-clock time and against
  training tokens, one line per configuration;
- ``results.json``: the same figures as numbers.

It is resumable and Ctrl-C safe like training: each run saves as it goes, a finished run is not
trained again, and an interrupted one continues for the minutes it has left (``--resume``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textgen.config import CLASSIC_CELLS
from textgen.errors import ConfigError

LN2 = math.log(2)
SAMPLE_TEMPERATURE = 0.8
SAMPLE_CHARS = 300
# The shape each cell is sized in when it comes from --cells (the hidden size is then found for the budget).
CELL_SHAPES: dict[str, dict[str, Any]] = {
    "lstm": dict(layers=1),
    "gru": dict(layers=1),
    "rnn": dict(layers=1),
    "mingru": dict(layers=3, ffn_mult=2),
    "minlstm": dict(layers=3, ffn_mult=2),
    "mlstm": dict(layers=2, ffn_mult=2, heads=4),
    "conv": dict(layers=6, ffn_mult=2),
}
WIDTH_STEP = 16  # hidden sizes are multiples of this (and of mlstm's heads)


@dataclass(frozen=True)
class Entry:
    """One configuration of the comparison: a name and the settings that differ from the common ones."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What one configuration reached in its budget."""

    name: str
    settings: dict[str, Any]
    parameters: int
    steps: int
    tokens: int
    seconds: float
    tokens_per_s: float | None
    val_loss: float | None
    bits_per_char: float | None
    gen_chars_per_s: float | None
    sample: str
    curve: list[dict[str, float]]  # validations: elapsed_s, tokens, val_loss


def entries_for_cells(cells: Sequence[str], params: int, vocab_size: int, base: dict[str, Any]) -> list[Entry]:
    """Each cell in its lab shape, its hidden size chosen so the model has about ``params`` parameters."""
    from textgen.config import CELLS

    out = []
    for cell in cells:
        if cell not in CELLS:
            raise ConfigError(f"--cells: unknown cell {cell!r}; choose from {', '.join(CELLS)}")
        settings = {"cell": cell, **CELL_SHAPES.get(cell, {})}
        settings = {k: v for k, v in settings.items() if k not in base}  # what the user set for all wins
        settings["hidden_size"] = width_for(params, vocab_size, {**base, **settings})
        if cell in CLASSIC_CELLS and "embedding_dim" not in base:
            settings["embedding_dim"] = min(settings["hidden_size"], 256)
        out.append(Entry(cell, settings))
    return out


def entries_from_files(paths: Sequence[str | Path]) -> list[Entry]:
    """One configuration per settings file (YAML or JSON, as ``--config``), named after the file."""
    from textgen.config import load_config_file

    return [Entry(Path(p).stem, load_config_file(p)) for p in paths]


def count_parameters(settings: dict[str, Any], vocab_size: int) -> int:
    """The parameter count of the language model ``settings`` describe (built on the meta device)."""
    from textgen.api import build_config
    from textgen.kinds import parameter_count

    return parameter_count(build_config(**settings)[0], vocab_size)


def width_for(params: int, vocab_size: int, settings: dict[str, Any]) -> int:
    """The hidden size (a multiple of WIDTH_STEP) whose model comes closest to ``params`` parameters."""
    step = math.lcm(WIDTH_STEP, int(settings.get("heads", 1))) if settings.get("cell") == "mlstm" else WIDTH_STEP

    def size(width: int) -> int:
        shaped = {**settings, "hidden_size": width}
        if settings.get("cell") in CLASSIC_CELLS and "embedding_dim" not in settings:
            shaped["embedding_dim"] = min(width, 256)
        return count_parameters(shaped, vocab_size)

    lo, hi = 1, 1
    while size(hi * step) < params:
        lo, hi = hi, hi * 2
        if hi * step > 1 << 16:
            raise ConfigError(f"--params {params:,} is too large for cell {settings.get('cell')}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid * step) < params else (lo, mid)
    best = min((lo, hi), key=lambda w: abs(size(w * step) - params))
    return best * step


def check_entries(entries: Sequence[Entry]) -> None:
    """Refuse what cannot be compared, with one line, before anything trains."""
    if not entries:
        raise ConfigError("nothing to compare: give --cells CELL ... or --configs FILE ...")
    names = [e.name for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"two configurations are both called {twice[0]!r}: rename a settings file")
    for e in entries:
        if not re.fullmatch(r"[\w.-]+", e.name):
            raise ConfigError(f"configuration name {e.name!r}: use letters, digits, '.', '-' and '_'")
        for key in ("corpus", "max_minutes", "max_steps", "epochs", "task", "pairs"):
            if key in e.settings:
                raise ConfigError(f"{e.name}: {key} is the comparison's own setting, the same for every configuration")


def compare(
    out: Path,
    *,
    cells: Sequence[str] = (),
    configs: Sequence[str | Path] = (),
    params: int = 1_000_000,
    minutes: float = 5.0,
    common: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[list[Outcome], bool]:
    """Train each configuration for ``minutes`` (one after another) and write the report; returns the
    outcomes and whether every one finished (False after a Ctrl-C: ``resume=True`` continues).

    Configurations: each of ``cells`` sized to about ``params`` parameters, then each settings file of
    ``configs``; ``common`` settings (the corpus, the level...) apply to all."""
    from textgen.api import build_config

    common = dict(common or {})
    if not cells and not configs:
        raise ConfigError("nothing to compare: give --cells CELL ... and/or --configs FILE ...")
    if not minutes > 0 or not math.isfinite(minutes):
        raise ConfigError(f"--minutes must be a positive number, got {minutes}")
    if cells and not 1_000 <= params <= 1_000_000_000:
        raise ConfigError(f"--params must be between 1,000 and 1,000,000,000, got {params:,}")
    check_entries([Entry(c, {}) for c in cells] + entries_from_files(configs))
    for key in ("epochs", "max_minutes", "max_steps"):
        if key in common:
            raise ConfigError(f"{key} is the comparison's own setting: give --minutes instead")
    unknown = [c for c in cells if c not in CELL_SHAPES]
    if unknown:
        raise ConfigError(f"--cells: unknown cell {unknown[0]!r}; choose from {', '.join(CELL_SHAPES)}")
    common.setdefault("recipe", "off")  # a settings file without a shape is compared as written
    build_config(**common)  # the common settings alone must make a valid config
    plan = {"cells": list(cells), "params": params, "configs": [str(c) for c in configs], "minutes": minutes}
    _claim(out, {**plan, "common": common}, resume, overwrite)
    entries = entries_from_files(configs)
    if cells:
        entries = entries_for_cells(cells, params, vocabulary_size(common, out), common) + entries
    check_entries(entries)
    for e in entries:  # every configuration must make a valid config before the first one trains
        build_config(**{**common, **e.settings})
    outcomes: list[Outcome] = []
    finished = True
    for e in entries:
        done, outcome = _train_entry(e, out, minutes, common, log)
        outcomes.append(outcome)
        if not done:
            finished = False
            break
    write_report(out, outcomes, minutes, finished)
    return outcomes, finished


def vocabulary_size(common: dict[str, Any], out: Path) -> int:
    """The vocabulary the common settings make of the corpus (encoded once under ``OUT/data``)."""
    from textgen.api import build_config
    from textgen.data.corpus import resolve_paths
    from textgen.data.tokens import prepare_tokens

    cfg, _ = build_config(**common)
    paths = resolve_paths(cfg.data.corpus)
    tokenizer, _ = prepare_tokens(cfg.data, paths, out / "data", log=lambda message: None)
    return tokenizer.vocab_size


def _claim(out: Path, plan: dict[str, Any], resume: bool, overwrite: bool) -> None:
    """Make ``out`` this comparison's directory: new, resumed with the same plan, or replaced."""
    import shutil

    from textgen.files import atomic_write

    plan_file = out / "plan.json"
    if plan_file.exists():
        if resume:
            saved = json.loads(plan_file.read_text(encoding="utf-8"))
            if saved != json.loads(json.dumps(plan, default=str)):
                raise ConfigError(
                    f"--resume: {out} holds a comparison with other settings; drop --resume or use another --out"
                )
            return
        if not overwrite:
            raise ConfigError(f"{out} already holds a comparison: use --resume, --overwrite or another --out")
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out} exists and is not a comparison directory; choose another")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(plan_file, json.dumps(plan, indent=2, default=str) + "\n")


def _train_entry(
    entry: Entry, out: Path, minutes: float, common: dict[str, Any], log: Callable[[str], None]
) -> tuple[bool, Outcome]:
    """Train (or resume) one configuration for what is left of its minutes; measure it once trained."""
    from textgen.api import train

    run = out / "runs" / entry.name
    rows = _rows(run / "metrics.csv")
    spent = float(rows[-1].get("elapsed_s") or 0.0) if rows and (run / "latest").exists() else 0.0
    left = minutes - spent / 60
    done_marker = run / "lab-done.json"
    if done_marker.exists():
        log(f"--- {entry.name}: trained already")
        return True, Outcome(**json.loads(done_marker.read_text(encoding="utf-8")))
    settings = {**common, **entry.settings}
    log(f"--- {entry.name}: {_describe(entry.settings)}; {max(left, 0):.1f} of {minutes:g} minutes left")
    resume = (run / "latest").exists()
    result = train(
        out=run,
        resume=resume,
        overwrite=not resume,
        max_minutes=max(left, 1 / 60),
        epochs=1_000_000,
        **settings,
    )
    if result.reason == "interrupted":
        return False, _measure(entry, run, measure_speed=False)
    outcome = _measure(entry, run)
    from textgen.files import atomic_write

    atomic_write(done_marker, json.dumps(dataclasses.asdict(outcome), ensure_ascii=False) + "\n")
    return True, outcome


def _describe(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items()) or "the common settings"


def read_curve(path: Path) -> list[dict[str, float]]:
    """The validations of a run's metrics.csv: elapsed seconds, tokens and validation loss."""
    if not path.exists():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                if row.get("val_loss"):
                    rows.append(
                        {
                            "elapsed_s": float(row["elapsed_s"]),
                            "tokens": float(row["tokens"]),
                            "val_loss": float(row["val_loss"]),
                            "bits_per_char": float(row["bits_per_char"] or "nan"),
                        }
                    )
            except (KeyError, ValueError):  # a torn last line
                continue
    return rows


def _measure(entry: Entry, run: Path, measure_speed: bool = True) -> Outcome:
    """The run's figures from its logs and its best checkpoint: loss, speed, a sample."""
    import textgen

    curve = read_curve(run / "metrics.csv")
    rows = _rows(run / "metrics.csv")
    last = rows[-1] if rows else {}
    speeds = [float(r["tokens_per_s"]) for r in rows if r.get("tokens_per_s")]
    best = min(curve, key=lambda c: c["val_loss"]) if curve else None
    gen_speed, sample = None, ""
    parameters = 0
    if (run / "best").exists() or (run / "latest").exists():
        model = textgen.load(run, "cpu")
        parameters = sum(p.numel() for p in model.model.parameters())
        if measure_speed:
            model.generate("", max_new_tokens=20, seed=0)  # warm-up (and the decode precision's probe)
            began = time.perf_counter()
            text = model.generate("", max_new_tokens=SAMPLE_CHARS, seed=0, temperature=SAMPLE_TEMPERATURE)
            took = time.perf_counter() - began
            sample = text if isinstance(text, str) else text[0]
            gen_speed = len(sample) / took if took > 0 else None
    return Outcome(
        name=entry.name,
        settings=entry.settings,
        parameters=parameters,
        steps=int(float(last.get("step") or 0)),
        tokens=int(float(last.get("tokens") or 0)),
        seconds=float(last.get("elapsed_s") or 0.0),
        tokens_per_s=sum(speeds) / len(speeds) if speeds else None,
        val_loss=best["val_loss"] if best else None,
        bits_per_char=best["bits_per_char"] if best else None,
        gen_chars_per_s=gen_speed,
        sample=sample,
        curve=curve,
    )


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_report(out: Path, outcomes: Sequence[Outcome], minutes: float, finished: bool) -> Path:
    """``report.md``, the two figures and ``results.json`` for the outcomes so far."""
    from textgen.files import atomic_write

    atomic_write(out / "results.json", json.dumps([dataclasses.asdict(o) for o in outcomes], indent=1) + "\n")
    figures = _plot(out, outcomes)
    ranked = sorted(outcomes, key=lambda o: o.val_loss if o.val_loss is not None else math.inf)
    lines = [
        f"# Comparison: {minutes:g} minutes each",
        "",
        "" if finished else "**Interrupted**: continue with `--resume`.\n",
        "| configuration | parameters | steps | tokens/s | val nats/token | bits/char | generation chars/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o in ranked:
        lines.append(
            f"| {o.name} | {o.parameters:,} | {o.steps:,} | {_num(o.tokens_per_s, ',.0f')} | "
            f"{_num(o.val_loss, '.4f')} | {_num(o.bits_per_char, '.3f')} | {_num(o.gen_chars_per_s, ',.0f')} |"
        )
    if ranked and ranked[0].val_loss is not None:
        lines += ["", f"Lowest validation loss: **{ranked[0].name}**."]
    lines += ["", *[f"![{f.stem}]({f.name})" for f in figures], ""]
    lines += ["## Settings", ""] + [f"- **{o.name}**: {_describe(o.settings)}" for o in outcomes]
    lines += ["", f"## Samples (temperature {SAMPLE_TEMPERATURE})", ""]
    for o in outcomes:
        if o.sample:
            lines += [f"### {o.name}", "", "```", o.sample.replace("```", "'''"), "```", ""]
    path = out / "report.md"
    atomic_write(path, "\n".join(lines) + "\n")
    return path


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


def _plot(out: Path, outcomes: Sequence[Outcome]) -> list[Path]:
    """Validation loss against minutes and against tokens, one line per configuration."""
    from textgen.report import new_figure, save_figure

    paths = []
    for key, label, scale, name in (
        ("elapsed_s", "minutes", 1 / 60, "loss_time.png"),
        ("tokens", "training tokens (millions)", 1e-6, "loss_tokens.png"),
    ):
        fig = new_figure(figsize=(7, 4.5))
        ax = fig.subplots()
        for o in outcomes:
            if o.curve:
                ax.plot([c[key] * scale for c in o.curve], [c["val_loss"] for c in o.curve], marker=".", label=o.name)
        ax.set_xlabel(label)
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3)
        if any(o.curve for o in outcomes):
            ax.legend()
        paths.append(save_figure(fig, out / name))
    return paths
