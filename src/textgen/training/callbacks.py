"""Trainer callbacks: samples at several temperatures (or held-out translations), the metrics log, the run report.

Each is told the trainer's events (``events.py``) and writes beside the run: ``samples.jsonl``,
``metrics.csv`` (and TensorBoard events when tensorboard is installed), ``report.md`` with
``loss.png``. On a resumed run, lines logged after the checkpoint's step (by a run that was then
killed) are dropped first, so the files read as one uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from textgen.config import SampleConfig
from textgen.data.tokenizers import AnyTokenizer
from textgen.files import atomic_write
from textgen.sampling.decode import generate_texts
from textgen.training.events import Event, Row

METRICS_COLUMNS = [f.name for f in dataclasses.fields(Row) if f.name != "extra"]


def _keep_until(path: Path, step: int, step_of: Callable[[str], int | None], header: bool = False) -> None:
    """Drop the lines of ``path`` logged after ``step`` (its header line kept), rewriting it atomically."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    head, body = (lines[:1], lines[1:]) if header else ([], lines)
    kept = [line for line in body if (s := step_of(line)) is not None and s <= step]
    if len(kept) == len(body):
        return
    atomic_write(path, "".join(head + kept))


def _cell(value: object) -> object:
    """A metrics.csv cell: empty for "not measured", six significant digits for floats."""
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else value


def _csv_step(line: str) -> int | None:
    first = line.split(",", 1)[0]
    return int(first) if first.isdigit() else None


def _last_row(path: Path, columns: Sequence[str]) -> tuple[dict[str, Any], int] | None:
    """The last metrics.csv row (its cells as text) and the offset its line starts at."""
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    cells = data[start:].decode("utf-8").rstrip("\n").split(",")
    if start == 0 or len(cells) != len(columns) or not cells[0].isdigit():
        return None
    row: dict[str, Any] = {k: v or None for k, v in zip(columns, cells)}
    row["step"] = int(cells[0])
    return row, start


def _last_logged_step(path: Path) -> int:
    """The latest step of a samples.jsonl (-1 when it has none)."""
    if not path.exists():
        return -1
    steps = (_json_step(line) for line in path.read_text(encoding="utf-8").splitlines())
    return max((s for s in steps if s is not None), default=-1)


def _json_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class SampleLog:
    """``samples.jsonl``: started afresh, or on a resumed run cut back to the step it resumes from
    (whose samples are then not written again)."""

    def __init__(self, path: Path | None, resume_step: int | None) -> None:
        self.path = path
        self.last_step = -1
        if path is not None:
            if resume_step is None:
                path.unlink(missing_ok=True)
            else:
                _keep_until(path, resume_step, _json_step)
                self.last_step = _last_logged_step(path)

    def append(self, records: list[dict[str, Any]]) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


class PrintSamples(SampleLog):
    """At the end of each epoch (and of training) print one sample per temperature, and append
    them to ``samples.jsonl``.

    The prompt is ``prompt``, or with ``window`` > 0 a random window of that many training tokens
    (the Keras example's seed text). Samples draw from their own seeded generator, so they never
    disturb training's random state.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: AnyTokenizer,
        temperatures: Sequence[float],
        length: int,
        prompt: str,
        seed: int,
        log: Callable[[str], None] = print,
        path: Path | None = None,
        window: int = 0,
        train_ids: np.ndarray | None = None,
        resume_step: int | None = None,
    ) -> None:
        self.model, self.tokenizer, self.temperatures, self.length = model, tokenizer, list(temperatures), length
        super().__init__(path, resume_step)
        self.prompt, self.seed, self.log = prompt, seed, log
        self.window, self.train_ids = window, train_ids

    def _prompt(self, step: int) -> str:
        ids = self.train_ids
        if not self.window or ids is None or len(ids) <= self.window:
            return self.prompt
        start = int(np.random.default_rng([self.seed, step]).integers(0, len(ids) - self.window))
        return self.tokenizer.decode([int(i) for i in ids[start : start + self.window]])

    def __call__(self, event: Event) -> None:
        step = event.step
        if event.kind not in ("epoch_end", "train_end") or not self.length or not self.temperatures:
            return
        if step == self.last_step:
            return
        self.last_step = step
        prompt = self._prompt(step)
        records = []
        for t in self.temperatures:
            settings = SampleConfig(
                max_new_tokens=self.length, temperature=t, seed=self.seed + step, decode_precision="fp32"
            )
            text = generate_texts(self.model, self.tokenizer, prompt, settings)[0]
            self.log(f"--- sample at step {step:,}, temperature {t} ---\n{prompt}{text}\n")
            records.append({"step": step, "epoch": event.epoch, "temperature": t, "prompt": prompt, "text": text})
        self.append(records)


class PrintTranslations(SampleLog):
    """At the end of each epoch (and of training) translate a few held-out sentences and print each
    beside its reference; append them to ``samples.jsonl``."""

    def __init__(
        self,
        translator: Any,
        pairs: Sequence[Any],
        log: Callable[[str], None] = print,
        path: Path | None = None,
        resume_step: int | None = None,
    ) -> None:
        super().__init__(path, resume_step)
        self.translator, self.pairs, self.log = translator, list(pairs), log

    def __call__(self, event: Event) -> None:
        step = event.step
        if event.kind not in ("epoch_end", "train_end") or step == self.last_step:
            return
        self.last_step = step
        outputs = self.translator.translate([p.source for p in self.pairs], beams=1)  # greedy: cheap, each epoch
        width = len("reference")
        lines = [f"--- held-out translations at step {step:,} ---"]
        records = []
        for pair, output in zip(self.pairs, outputs):
            lines += [
                f"{'source':<{width}}  {pair.source}",
                f"{'reference':<{width}}  {pair.target}",
                f"{'output':<{width}}  {output}",
                "",
            ]
            records.append(
                {"step": step, "epoch": event.epoch, "source": pair.source, "reference": pair.target, "output": output}
            )
        self.log("\n".join(lines))
        self.append(records)


class MetricsLog:
    """Appends each logged row to ``metrics.csv`` and, when tensorboard is installed, to TensorBoard events.

    ``extra_columns`` are the task's own figures (BLEU, chrF... for translation), after the common ones.
    """

    def __init__(
        self,
        run_dir: Path,
        resume_step: int | None = None,
        tensorboard: bool = True,
        extra_columns: Sequence[str] = (),
    ) -> None:
        self.path = run_dir / "metrics.csv"
        self.extra_columns = list(extra_columns)
        self.last: tuple[dict[str, Any], int] | None = None  # the last row written and where its line starts
        if resume_step is None or not self.path.exists():
            self.path.write_text(",".join(METRICS_COLUMNS + self.extra_columns) + "\n", encoding="utf-8")
        else:
            _keep_until(self.path, resume_step, _csv_step, header=True)
            # A row for the step it resumes at is merged, not repeated.
            self.last = _last_row(self.path, METRICS_COLUMNS + self.extra_columns)
        self.writer = None
        if tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run logged after the checkpoint it resumes from.
            purge = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)

    def __call__(self, event: Event) -> None:
        if event.row is not None:
            self._write(event.row)
        if event.kind == "train_end" and self.writer is not None:
            self.writer.flush()

    def _write(self, logged: Row) -> None:
        row = dataclasses.asdict(logged)
        extra = row.pop("extra")
        row.update({c: extra.get(c) for c in self.extra_columns})
        with open(self.path, "r+", encoding="utf-8", newline="") as f:
            f.seek(0, os.SEEK_END)
            if self.last is not None and self.last[0]["step"] == row["step"]:
                # A second row for the same step (the final validation): merge it into the first.
                previous, offset = self.last
                row = {k: previous[k] if v is None else v for k, v in row.items()}
                f.seek(offset)
                f.truncate()
            self.last = (row, f.tell())
            f.write(",".join(str(_cell(v)) for v in row.values()) + "\n")
        if self.writer is not None:
            step = row["step"]
            for tag, key in (
                ("loss/train", "train_loss"),
                ("loss/validation", "val_loss"),
                ("bits_per_char/validation", "bits_per_char"),
                ("learning_rate", "lr"),
                ("tokens_per_s", "tokens_per_s"),
                *((f"validation/{c}", c) for c in self.extra_columns),
            ):
                if row[key] is not None:
                    self.writer.add_scalar(tag, row[key], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Report:
    """Rewrites ``report.md`` and ``loss.png`` at the end of each epoch and of training.

    When epochs are very short, an epoch's report is skipped if the last one was written less than
    ten times its writing time ago, so reports never take more than about a tenth of training.
    """

    def __init__(self, run_dir: Path, log: Callable[[str], None] = print) -> None:
        self.run_dir, self.log = run_dir, log
        self.next_due = 0.0

    def __call__(self, event: Event) -> None:
        if event.kind not in ("epoch_end", "train_end") or (
            event.kind == "epoch_end" and time.monotonic() < self.next_due
        ):
            return
        from textgen.report import write_report

        began = time.monotonic()
        try:
            write_report(self.run_dir)
        except Exception as e:  # noqa: BLE001 -- a figure that fails must not stop training
            self.log(f"warning: could not write the run report: {type(e).__name__}: {e}")
        took = time.monotonic() - began
        self.next_due = began + 11 * took


def in_notebook() -> bool:
    """Whether this runs in a Jupyter or Colab kernel, where figures can be shown under the cell."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


class LiveLossPlot:
    """In a notebook: the loss curve under the running cell, redrawn as rows are logged.

    It redraws at most every two seconds (and never spends more than a tenth of the time drawing),
    and once more at the end."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.handle: Any = None
        self.next_due = 0.0

    def __call__(self, event: Event) -> None:
        if event.kind != "train_end" and (event.row is None or time.monotonic() < self.next_due):
            return
        from IPython.display import Image, display

        from textgen.errors import TextgenError
        from textgen.report import figure_png, loss_figure

        began = time.monotonic()
        try:
            image = Image(data=figure_png(loss_figure(self.run_dir)), format="png")
        except TextgenError:  # no rows to draw yet
            return
        if self.handle is None:
            self.handle = display(image, display_id=True)
        else:
            self.handle.update(image)
        self.next_due = began + max(2.0, 11 * (time.monotonic() - began))
