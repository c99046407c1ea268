"""Shared fixtures: tiny corpora, a tiny trained run, and a CLI runner that uses a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tiny models: threads only add overhead, and CI has two cores

TINY = dict(hidden_size=32, embedding_dim=16, batch_size=8, seq_len=16, sample_length=0, lr=1e-2)
TINY_S2S = dict(  # a tiny translation model, as TINY is a tiny language model
    task="translate",
    level="char",
    hidden_size=32,
    embedding_dim=16,
    batch_size=16,
    lr=1e-2,
    sample_sentences=2,
    eval_sentences=20,
    tensorboard=False,
)
POEM = (
    "Shall I compare thee to a summer's day?\n"
    "Thou art more lovely and more temperate:\n"
    "Rough winds do shake the darling buds of May,\n"
    "And summer's lease hath all too short a date;\n"
)


def run_cli(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m textgen ARGS`` and capture its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "textgen", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


CHROMIUM = Path("/usr/bin/chromium")


def require_chromium() -> None:
    """Browser tests need Debian's Chromium (``.ci/run`` installs it): skipped where it is missing, except
    under CI (``CI=true``), where a missing browser must fail the run rather than hide the test."""
    if CHROMIUM.exists():
        return
    why = f"needs Debian's chromium at {CHROMIUM} (.ci/run installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the browser test cannot run: it {why}")
    pytest.skip(why)


def fresh_checkpoint(path: Path, tok=None, **model: object) -> Path:
    """An untrained checkpoint of a tiny language model (for what does not care how well a model writes)."""
    from textgen.checkpoint import build_model, save_checkpoint
    from textgen.config import RunConfig, RunSpec
    from textgen.data.tokenizers import CharTokenizer

    tok = tok or CharTokenizer(list("abcdefgh \n"))
    cfg = RunConfig().updated({"hidden_size": 32, "embedding_dim": 16, **model})
    spec = RunSpec(vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    save_checkpoint(path, build_model(cfg, spec), cfg, spec, tok, {"step": 0})
    return path


@pytest.fixture
def poem_file(tmp_path: Path) -> Path:
    p = tmp_path / "poem.txt"
    p.write_text(POEM * 30, encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with a tiny char model trained briefly on the poem."""
    from textgen import train

    d = tmp_path_factory.mktemp("tiny")
    corpus = d / "poem.txt"
    corpus.write_text(POEM * 30, encoding="utf-8")
    train(str(corpus), d / "run", max_steps=30, eval_every=15, **TINY)
    return d / "run"
