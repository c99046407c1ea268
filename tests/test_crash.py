"""Crash safety: training SIGKILLed at chosen points always leaves a checkpoint that loads and resumes
to the very weights of an uninterrupted run.

``crash_launcher.py`` forks a training process per run and kills it with SIGKILL on the N-th call of
a target function (mid-step, while checkpoint files are written, between the renames that swap a
checkpoint in...). The targets and their N come from a seeded RNG, so every run of the test tries
the same points, with no sleeps and no timing.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import POEM
from crash_launcher import TARGETS
from safetensors.torch import load_file

from textgen.checkpoint import load_checkpoint, load_trainer_state, resolve_checkpoint

HERE = Path(__file__).parent
CHAINS = 6  # runs per mode, each killed KILLS times and then resumed to the end
KILLS = 3
FLAGS = [
    "--max-steps", "14", "--eval-every", "4", "--save-every", "2", "--log-every", "2",
    "--hidden-size", "24", "--embedding-dim", "8", "--layers", "2", "--dropout", "0.2",
    "--batch-size", "4", "--seq-len", "16", "--lr", "0.02",
    "--sample-length", "0", "--no-tensorboard", "--device", "cpu",
]  # fmt: skip


class Launcher:
    """The fork server of crash_launcher.py: one job per line in, one answer per line out."""

    def __init__(self) -> None:
        path = os.pathsep.join(
            p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
        )  # textgen as imported here
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "crash_launcher.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def run(self, argv: list[str], log: Path, **job: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log), **job}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the crash launcher died"
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def launcher() -> Iterator[Launcher]:
    server = Launcher()
    yield server
    server.close()


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def metrics(run: Path) -> list[tuple[str, str]]:
    """(step, validation loss) of each metrics.csv row: the figures that do not depend on timing."""
    with open(run / "metrics.csv", newline="") as f:
        return [(r["step"], r["val_loss"]) for r in csv.DictReader(f)]


def state_of(run: Path) -> str:
    """What a kill left on disk, in words: which checkpoint directories and leftovers exist."""
    names = ("latest", ".latest.old", ".latest.tmp", "best", ".best.old", ".best.tmp")
    found = [n for n in names if (run / n).exists()]
    if any(not (run / n).exists() and (run / f".{n}.old").exists() for n in ("latest", "best")):
        found.append("(between renames)")
    return " ".join(found) or "no checkpoint"


def check_loadable(run: Path) -> None:
    """Whatever a kill left must load: the latest checkpoint with its trainer state, and the best; and
    best/ must be at least as good as the best loss latest/ records, or a resumed run never rewrites it."""
    best_val = None
    if (run / "latest").exists() or (run / ".latest.old").exists():
        latest = resolve_checkpoint(run / "latest")
        load_checkpoint(latest)
        position = load_trainer_state(latest)["position"]
        assert position["step"] > 0
        best_val = position["best_val"]
    if (run / "best").exists() or (run / ".best.old").exists():
        best = load_checkpoint(run)
        assert best_val is None or best.info["val_loss"] <= best_val, "best/ lags behind what latest/ records"


def log_tail(log: Path) -> str:
    return log.read_text()[-3000:] if log.exists() else "(no log)"


def write_pairs(path: Path, n: int) -> Path:
    """Distinct strings of a few letters, each paired with its reverse: a tiny translation task."""
    rng = random.Random(0)
    words: dict[str, None] = {}
    while len(words) < n:
        words["".join(rng.choice("abcdef") for _ in range(rng.randint(3, 6)))] = None
    path.write_text("".join(f"{w}\t{w[::-1]}\n" for w in words), encoding="utf-8")
    return path


@pytest.mark.parametrize("mode", ["shuffled", "stateful", "translate"])
def test_sigkill_at_any_point_leaves_a_checkpoint_that_resumes_to_the_same_weights(tmp_path, launcher, mode):
    if mode == "translate":  # teacher forcing below 1 draws from the RNG: it must be restored too
        data = [
            "--task",
            "translate",
            "--pairs",
            str(write_pairs(tmp_path / "pairs.tsv", 44)),
            "--teacher-forcing",
            "0.7",
        ]
        data += ["--eval-sentences", "4", "--sample-sentences", "1"]
    else:  # 8 steps per epoch: the runs cross an epoch end
        (tmp_path / "poem.txt").write_text(POEM * 4, encoding="utf-8")
        data = ["--corpus", str(tmp_path / "poem.txt"), "--mode", mode]

    def argv(out: Path, resume: bool) -> list[str]:
        return ["train", *data, "--out", str(out), *FLAGS] + ["--resume"] * resume

    ref, counts_file = tmp_path / "reference", tmp_path / "counts.json"
    answer = launcher.run(argv(ref, False), tmp_path / "reference.log", count=str(counts_file))
    assert answer == {"killed": False, "code": 0}, log_tail(tmp_path / "reference.log")
    counts = json.loads(counts_file.read_text())
    assert all(counts.get(t, 0) > 0 for t in TARGETS), counts  # every target is reached by a whole run

    rng = random.Random(f"textgen crash test {mode}")
    offset = ["shuffled", "stateful", "translate"].index(mode) * CHAINS * KILLS
    tried, states, targets = 0, Counter(), Counter()
    for chain in range(CHAINS):
        out = tmp_path / f"run{chain}"
        for k in range(KILLS):
            target = TARGETS[(offset + chain * KILLS + k) % len(TARGETS)]
            # A resumed run has fewer calls left than a whole one: draw from the first part.
            n = rng.randint(1, max(1, counts[target] // (k + 1)))
            log = tmp_path / f"run{chain}-{k}.log"
            answer = launcher.run(argv(out, resume=k > 0), log, target=target, n=n)
            where = f"{mode} chain {chain}, kill {k}: {target} #{n}"
            assert answer["killed"] or answer["code"] == 0, f"{where}: {answer}\n{log_tail(log)}"
            if not answer["killed"]:
                break  # the run finished before reaching that call
            tried += 1
            targets[target] += 1
            states[state_of(out)] += 1
            check_loadable(out)
        log = tmp_path / f"run{chain}-final.log"
        answer = launcher.run(argv(out, resume=True), log)
        assert answer == {"killed": False, "code": 0}, f"{mode} chain {chain}: {answer}\n{log_tail(log)}"
        for which in ("latest", "best"):
            assert same_weights(out / which, ref / which), f"{mode} chain {chain}: {which} differs from the reference"
        position, expected = (load_trainer_state(run / "latest")["position"] for run in (out, ref))
        assert {**position, "elapsed": 0} == {**expected, "elapsed": 0}
        assert metrics(out) == metrics(ref), f"{mode} chain {chain}"
        samples = [
            (run / "samples.jsonl").read_text() if (run / "samples.jsonl").exists() else "" for run in (out, ref)
        ]
        assert samples[0] == samples[1], f"{mode} chain {chain}: samples.jsonl differs"
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no leftovers once it ends
    print(f"\n{mode}: {tried} kill points tried, all survived: {dict(targets)}; states left: {dict(states)}")
    assert tried >= CHAINS * KILLS - 2


@pytest.mark.parametrize("task", ["lm", "translate"])
def test_resuming_a_finished_run_repeats_no_validation_row_or_sample(tmp_path, task):
    from textgen import train

    kw: dict[str, Any] = dict(max_steps=6, eval_every=3, log_every=3, hidden_size=16, embedding_dim=8, batch_size=4)
    kw.update(seq_len=16, tensorboard=False, out=tmp_path / "run")
    if task == "lm":
        (tmp_path / "poem.txt").write_text(POEM * 4, encoding="utf-8")
        kw.update(corpus=str(tmp_path / "poem.txt"), sample_length=5)
    else:
        kw.update(pairs=str(write_pairs(tmp_path / "pairs.tsv", 30)), task="translate", sample_sentences=1)
    train(**kw)
    files = {name: (tmp_path / "run" / name).read_text() for name in ("metrics.csv", "samples.jsonl")}
    assert files["samples.jsonl"]
    position = load_trainer_state(tmp_path / "run" / "latest")["position"]
    train(resume=True, **kw)  # nothing to do
    assert {name: (tmp_path / "run" / name).read_text() for name in files} == files
    assert load_trainer_state(tmp_path / "run" / "latest")["position"] == position
