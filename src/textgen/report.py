"""Run reports: the loss curve, a markdown report of a run, and the temperature-reweighting figure.

Reads what the trainer writes in a run directory (``metrics.csv``, ``samples.jsonl`` and
``latest/config.json``); draws with matplotlib's Agg canvas (no display needed). matplotlib and
torch are imported inside the functions, so ``import textgen`` and ``textgen --help`` stay quick.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgen.config import check_temperature
from textgen.errors import ConfigError, TextgenError
from textgen.files import atomic_write
from textgen.inference.metrics import perplexity

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from textgen.data.tokenizers import AnyTokenizer
    from textgen.models.lm import RecurrentLM

METRIC_COLUMNS = ("step", "epoch", "tokens", "train_loss", "val_loss", "bits_per_char")  # the ones read here
TRANSLATION_COLUMNS = ("bleu", "chrf")  # read too when present (a translation run's)
Metrics = dict[str, float | None]


# ---------------------------------------------------------------- reading the run directory


def read_metrics(path: Path) -> list[Metrics]:
    """The rows of a ``metrics.csv`` as numbers (None where a cell is empty); a torn last line is dropped."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in METRIC_COLUMNS if c not in (reader.fieldnames or [])]
            if reader.fieldnames and missing:
                raise TextgenError(f"{path} has no {', '.join(missing)} column(s); is it a textgen metrics log?")
            raw = list(reader)
    except FileNotFoundError:
        raise TextgenError(f"{path} not found: the run has not logged any metrics yet") from None
    except UnicodeDecodeError:
        raise TextgenError(f"{path} is not UTF-8 text") from None
    rows = []
    for i, row in enumerate(raw):
        try:
            values = {c: _number(row.get(c)) for c in METRIC_COLUMNS}
            values.update({c: _number(row[c]) for c in TRANSLATION_COLUMNS if c in row})
            rows.append(values)
        except ValueError as e:
            if i == len(raw) - 1:  # the trainer may be writing it right now
                break
            raise TextgenError(f"{path} line {i + 2}: {e}") from None
    return rows


def _number(cell: str | None) -> float | None:
    if cell is None:
        raise ValueError("too few values")
    return float(cell) if cell.strip() else None


def read_samples(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The samples in a ``samples.jsonl`` and how many lines were not a readable sample."""
    samples, bad = [], 0
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            s = json.loads(line)
            if isinstance(s, dict) and "source" in s:  # a held-out translation: read_translations
                continue
            sample = {
                "step": int(s["step"]),
                "epoch": float(s.get("epoch") or 0.0),
                "temperature": float(s["temperature"]),
                "prompt": str(s.get("prompt", "")),
                "text": str(s["text"]),
            }
        except (ValueError, TypeError, KeyError):
            bad += 1
            continue
        samples.append(sample)
    return samples, bad


def read_translations(path: Path) -> list[dict[str, Any]]:
    """The held-out translations in a ``samples.jsonl`` (a translation run's); unreadable lines are skipped."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            s = json.loads(line)
            out.append({"step": int(s["step"]), **{k: str(s[k]) for k in ("source", "reference", "output")}})
        except (ValueError, TypeError, KeyError):
            continue
    return out


def read_run_config(run_dir: Path) -> dict[str, Any] | None:
    """The JSON config of the run's latest checkpoint (else its best), or None if there is none yet."""
    for name in ("latest", "best"):
        path = run_dir / name / "config.json"
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (ValueError, UnicodeDecodeError):
            raise TextgenError(f"{path} is truncated or not JSON") from None
        if not isinstance(meta, dict):
            raise TextgenError(f"{path} is not a JSON object")
        return meta
    return None


def _check_run_dir(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise TextgenError(f"run directory not found: {run_dir}")


# ---------------------------------------------------------------- figures


def new_figure(**kw: Any) -> Figure:
    """A figure on an Agg canvas, outside pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out: Path) -> Path:
    """Write ``fig`` to ``out`` atomically, in the format its suffix names (PNG by default)."""
    fmt = out.suffix.lstrip(".").lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        raise TextgenError(f"cannot write a figure as .{fmt}: {out} (use .png, .svg or .pdf)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # tokens the font has no glyph for are drawn as boxes; no need to warn
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        atomic_write(out, lambda f: fig.savefig(f, format=fmt, dpi=100, bbox_inches="tight"))
    return out


def plot_losses(run_dir: Path, out: Path | None = None) -> Path:
    """Draw training and validation loss against tokens seen, bits per character on the right; returns the file."""
    return save_figure(loss_figure(run_dir), Path(out) if out is not None else Path(run_dir) / "loss.png")


def loss_figure(run_dir: Path) -> Figure:
    """The figure ``plot_losses`` writes (a notebook shows it under the cell as training goes)."""
    from matplotlib.ticker import EngFormatter

    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    path = run_dir / "metrics.csv"
    rows = [r for r in read_metrics(path) if r["tokens"] is not None]
    if not rows:
        raise TextgenError(f"{path} has no rows yet: nothing to plot")
    train = [(r["tokens"], r["train_loss"]) for r in rows if r["train_loss"] is not None]
    val = [r for r in rows if r["val_loss"] is not None]

    scores = [r for r in val if r.get("bleu") is not None]  # a translation run: BLEU and chrF below
    fig = new_figure(figsize=(8, 7.2 if scores else 4.8), layout="constrained")
    ax = fig.add_subplot(2, 1, 1) if scores else fig.add_subplot()
    if scores:
        below = fig.add_subplot(2, 1, 2, sharex=ax)
        for key, label in (("bleu", "BLEU"), ("chrf", "chrF")):
            below.plot([r["tokens"] for r in scores], [r[key] for r in scores], "o-", ms=4, label=f"held-out {label}")
        below.set_xlabel("tokens seen")
        below.set_ylabel("score (0-100)")
        below.grid(alpha=0.3)
        below.legend()
    if train:
        ax.plot(*zip(*train), lw=1.2, alpha=0.8, label="training loss")
    if val:
        ax.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o-", ms=4, label="validation loss")
    ax.set_xlabel("" if scores else "tokens seen")
    ax.set_ylabel("loss (nats per token)")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.grid(alpha=0.3)
    # bits/char is val_loss / ln 2 / chars_per_token: a fixed scale of the loss, read off the validation rows
    ratios = sorted(r["bits_per_char"] / r["val_loss"] for r in val if r["bits_per_char"] and r["val_loss"])
    if ratios and math.isfinite(k := ratios[len(ratios) // 2]) and k > 0:
        right = ax.secondary_yaxis("right", functions=(lambda y, k=k: y * k, lambda b, k=k: b / k))
        right.set_ylabel("bits per character")
    ax.set_title(f"{run_dir.resolve().name}: loss")
    ax.legend()
    return fig


def figure_png(fig: Figure) -> bytes:
    """A figure as PNG bytes (for a notebook to show)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def next_token_distribution(model: RecurrentLM, tokenizer: AnyTokenizer, prompt: str) -> torch.Tensor:
    """The model's probabilities over the vocabulary for the token after ``prompt`` (V,), nothing banned."""
    import torch

    from textgen.models.protocol import eval_mode
    from textgen.sampling.text import encode_prompt

    ids = encode_prompt(tokenizer, prompt)
    device = next(model.parameters()).device
    with eval_mode(model), torch.no_grad():
        logits, _ = model(torch.tensor([ids], device=device))  # (1, T, V)
    return logits[0, -1].float().softmax(-1).cpu()  # (V,)


def check_temperatures(temperatures: Sequence[float]) -> None:
    """Refuse an empty list and any temperature that is negative or not finite."""
    if not temperatures:
        raise ConfigError("give at least one temperature")
    for t in temperatures:
        check_temperature(t, "temperatures")


def reweight(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``probs`` reweighted by temperature as sampling does (``processors.Temperature``): p^(1/T)
    renormalised; T = 0 is the argmax one-hot."""
    from textgen.sampling.processors import Temperature

    logits = Temperature(temperature)(None, probs.double().log())  # type: ignore[arg-type]
    return logits.softmax(-1)  # softmax(log p / T) = p^(1/T) / sum p^(1/T), without overflow


def entropy_bits(probs: torch.Tensor) -> float:
    """The entropy of a distribution in bits (0 log 0 counted as 0)."""
    import torch

    return float(torch.special.entr(probs.double()).sum() / math.log(2))


def token_label(text: str) -> str:
    """A token as it reads on an axis: whitespace and unprintable tokens as their repr (``'\\n'``, ``' '``)."""
    return repr(text) if not text or text != text.strip() or not text.isprintable() else text


def plot_temperatures(
    probs: torch.Tensor,
    tokenizer: AnyTokenizer,
    temperatures: Sequence[float],
    out: Path,
    top: int = 20,
    title: str = "",
) -> list[float]:
    """Draw ``probs`` reweighted at each temperature, one bar chart per panel; returns each one's entropy in bits."""
    check_temperatures(temperatures)
    if top < 1:
        raise ConfigError(f"top must be at least 1, got {top}")
    if probs.dim() != 1:
        raise ConfigError(f"probs must be one distribution over the vocabulary, got shape {tuple(probs.shape)}")
    shown = probs.double().argsort(descending=True)[:top].tolist()  # most likely first, same order in each panel
    labels = [token_label(tokenizer.token_text(i)) for i in shown]
    dists = [reweight(probs, t) for t in temperatures]
    entropies = [entropy_bits(d) for d in dists]

    n = len(temperatures)
    fig = new_figure(figsize=(max(2.5, 0.17 * len(shown) + 1.0) * n, 4.2), layout="constrained")
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    for ax, t, d, h in zip(axes, temperatures, dists, entropies):
        ax.bar(range(len(shown)), d[shown].tolist(), color="C0" if t else "C3")
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels(labels, rotation=90, fontfamily="monospace", parse_math=False)
        ax.set_title(f"T = {t:g}\nentropy {h:.2f} bits")
        ax.set_ylim(0, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("probability")
    fig.suptitle(title or "next-token distribution reweighted by temperature")
    save_figure(fig, Path(out))
    return entropies


# ---------------------------------------------------------------- the markdown report


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.md``: config, latest metrics, loss curve and samples by step and temperature."""
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    parts = [f"# Training report: {run_dir.resolve().name}", _config_section(run_dir), _metrics_section(run_dir)]
    parts.append(_samples_section(run_dir))
    out = run_dir / "report.md"
    atomic_write(out, "\n\n".join(parts) + "\n")
    return out


def _config_section(run_dir: Path) -> str:
    """The checkpoint config, one YAML-ish block per section."""
    try:
        meta = read_run_config(run_dir)
    except TextgenError as e:
        return f"## Configuration\n\n{md_escape(str(e))}"
    if meta is None:
        return "## Configuration\n\nNo checkpoint yet (`latest/config.json` not found)."
    lines = []
    sections = [k for k in ("model", "data", "train") if isinstance(meta.get(k), dict)]
    sections += [k for k, v in meta.items() if isinstance(v, dict) and k not in sections]
    for key in sections:
        lines.append(f"{key}:")
        lines += [f"  {name}: {json.dumps(value, ensure_ascii=False)}" for name, value in meta[key].items()]
    others = {k: v for k, v in meta.items() if not isinstance(v, dict)}
    if others:
        lines += [f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in others.items()]
    block = "\n".join(lines)
    fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", block)), default=0))
    return f"## Configuration\n\n{fence}yaml\n{block}\n{fence}"


def _metrics_section(run_dir: Path) -> str:
    """The last logged step and validation, and the loss curve."""
    head = "## Latest metrics"
    try:
        rows = read_metrics(run_dir / "metrics.csv")
    except TextgenError as e:
        return f"{head}\n\n{md_escape(str(e))}"
    if not rows:
        return f"{head}\n\nNo metrics yet (`metrics.csv` has no rows)."
    last = rows[-1]
    vals = [r for r in rows if r["val_loss"] is not None]
    lines = [
        "| metric | value |",
        "| --- | --- |",
        f"| steps | {_fmt(last['step'], ',.0f')} |",
        f"| epochs | {_fmt(last['epoch'], '.2f')} |",
        f"| tokens seen | {_fmt(last['tokens'], ',.0f')} |",
    ]
    train = [r for r in rows if r["train_loss"] is not None]
    if train:
        lines.append(f"| training loss (step {_fmt(train[-1]['step'], ',.0f')}) | {train[-1]['train_loss']:.4f} nats |")
    if vals:
        v = vals[-1]
        best = min((r["val_loss"] for r in vals if math.isfinite(r["val_loss"])), default=math.nan)  # type: ignore[arg-type]
        lines += [
            f"| validation loss (step {_fmt(v['step'], ',.0f')}) | {v['val_loss']:.4f} nats |",
            f"| perplexity | {perplexity(v['val_loss']):.2f} |",  # type: ignore[arg-type]
            f"| bits per character | {_fmt(v['bits_per_char'], '.4f')} |",
            f"| best validation loss | {best:.4f} nats |",
        ]
    else:
        lines.append("| validation loss | not measured yet |")
    try:
        plot_losses(run_dir)
        figure = "![loss](loss.png)"
    except TextgenError as e:
        figure = f"No loss curve: {md_escape(str(e))}"
    return f"{head}\n\n" + "\n".join(lines) + f"\n\n{figure}"


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def _samples_section(run_dir: Path) -> str:
    """A table of samples: one row per step they were taken at, one column per temperature."""
    head = "## Samples"
    path = run_dir / "samples.jsonl"
    translations = read_translations(path)
    if translations:
        return _translations_section(translations)
    samples, bad = read_samples(path)
    note = f"\n\n({bad} line(s) of `samples.jsonl` could not be read and are left out.)" if bad else ""
    if not samples:
        why = "`samples.jsonl` not found" if not path.exists() else "`samples.jsonl` is empty"
        return f"{head}\n\nNo samples yet ({why}).{note}"
    temps = sorted({s["temperature"] for s in samples})
    prompts = {s["prompt"] for s in samples}
    one_prompt = len(prompts) == 1
    cells: dict[int, dict[float, list[str]]] = {}
    epochs: dict[int, float] = {}
    for s in samples:
        text = s["text"] if one_prompt else s["prompt"] + s["text"]
        cells.setdefault(s["step"], {}).setdefault(s["temperature"], []).append(md_cell(text))
        epochs[s["step"]] = s["epoch"]
    intro = "Each cell continues "
    intro += f"the prompt {md_escape(repr(next(iter(prompts))))}." if one_prompt else "the prompt shown at its start."
    lines = [
        "| step (epoch) | " + " | ".join(f"T = {t:g}" for t in temps) + " |",
        "| --- |" + " --- |" * len(temps),
    ]
    for step in sorted(cells):
        row = [" <hr> ".join(cells[step].get(t, [])) for t in temps]
        lines.append(f"| {step:,} ({epochs[step]:.2f}) | " + " | ".join(row) + " |")
    return f"{head}\n\n{intro}\n\n" + "\n".join(lines) + note


def _translations_section(records: list[dict[str, Any]], columns: int = 4) -> str:
    """One row per held-out sentence: its source, its reference and the model's output at up to
    ``columns`` steps (the first, the last and evenly between), so the progress reads across."""
    steps = sorted({r["step"] for r in records})
    shown = sorted({steps[round(i * (len(steps) - 1) / max(1, columns - 1))] for i in range(min(columns, len(steps)))})
    outputs: dict[tuple[str, str], dict[int, str]] = {}
    for r in records:
        outputs.setdefault((r["source"], r["reference"]), {})[r["step"]] = r["output"]
    lines = [
        "| source | reference | " + " | ".join(f"step {s:,}" for s in shown) + " |",
        "| --- | --- |" + " --- |" * len(shown),
    ]
    for (source, reference), by_step in outputs.items():
        cells = [md_cell(by_step.get(s, "")) for s in shown]
        lines.append(f"| {md_cell(source)} | {md_cell(reference)} | " + " | ".join(cells) + " |")
    return "## Held-out translations\n\n" + "\n".join(lines)


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")


def md_escape(text: str) -> str:
    """Text that markdown shows as written: HTML and markdown characters escaped."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def md_cell(text: str) -> str:
    """Text for one markdown table cell: escaped, with newlines as ``<br>``."""
    return md_escape(text).replace("\r\n", "\n").replace("\n", "<br>") or " "
