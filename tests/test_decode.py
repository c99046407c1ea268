"""The one decode core, through every front end: sampling statistics, identical seeded text from the
CLI, the Python API and the server, and the translation decoder's step."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import run_cli
from fastapi.testclient import TestClient

import textgen
from textgen.config import SampleConfig
from textgen.data.tokenizers import CharTokenizer
from textgen.models.protocol import ReferenceStepper
from textgen.sampling.decode import Generation
from textgen.serve.app import create_app
from textgen.serve.engine import Engine

# The chi-square statistic's 99.9th percentile for 1 to 5 degrees of freedom (from published tables):
# a correct sampler exceeds it once in a thousand seeds, and the seeds here are fixed.
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}


class ConstantLM(torch.nn.Module):
    """A language model whose next-token distribution is always ``probs``: the expected frequencies of
    any sampling setting follow from ``probs`` by hand. It implements the model protocol with the
    generic ``ReferenceStepper``."""

    def __init__(self, probs: list[float]) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(probs).clamp_min(1e-30).log(), requires_grad=False)

    def init_state(self, rows: int, device=None) -> tuple[torch.Tensor]:
        return (torch.zeros(1, rows, 1),)

    def forward(self, x: torch.Tensor, state=None):
        return self.logits.expand(*x.shape, -1), state if state is not None else self.init_state(x.shape[0])

    def stepper(self, capacity: int, precision: str = "fp32") -> ReferenceStepper:
        return ReferenceStepper(self, capacity, torch.device("cpu"))


# Token 0 is the unknown token (never drawn); the tokenizer's characters are a..e.
TOK = CharTokenizer(list("abcde"))
PROBS = [0.2, 0.4, 0.25, 0.2, 0.1, 0.05]  # token 0's mass is banned away


def expected(settings: dict) -> np.ndarray:
    """The distribution the settings should draw from, computed from PROBS by hand."""
    p = np.array(PROBS[1:], dtype=np.float64)
    p = p / p.sum()  # the unknown token banned
    t = settings.get("temperature", 1.0)
    p = p ** (1 / t)
    p /= p.sum()
    k = settings.get("top_k", 0)
    if k:
        p[np.argsort(-p)[k:]] = 0
        p /= p.sum()
    top_p = settings.get("top_p", 1.0)
    if top_p < 1:
        order = np.argsort(-p)
        before = np.cumsum(p[order]) - p[order]
        p[order[before >= top_p]] = 0
        p /= p.sum()
    return p


def chi2(counts: Counter, p: np.ndarray) -> tuple[float, int]:
    """The statistic over the tokens that should appear, and its degrees of freedom; tokens that should
    never appear must not."""
    n = sum(counts.values())
    assert all(p[t - 1] > 0 for t in counts), f"drew a token the settings exclude: {counts}"
    live = [i for i in range(len(p)) if p[i] > 0]
    stat = sum((counts.get(i + 1, 0) - n * p[i]) ** 2 / (n * p[i]) for i in live)
    return stat, len(live) - 1


SETTINGS = [
    dict(temperature=1.0),
    dict(temperature=0.6),
    dict(temperature=1.7, top_k=3),
    dict(temperature=1.0, top_p=0.7),
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_generation_draws_from_the_processed_distribution(settings):
    model = ConstantLM(PROBS)
    run = Generation(model, TOK, "a", SampleConfig(max_new_tokens=40, num_samples=100, seed=11, **settings))
    list(run)
    counts = Counter(t for s in run.samples for t in s.tokens)  # 4,000 draws through the CLI/API path
    stat, df = chi2(counts, expected(settings))
    assert stat < CHI2_999[df], (counts, expected(settings))


@pytest.mark.parametrize("settings", SETTINGS[1:3])
def test_server_rows_draw_from_the_processed_distribution(settings):
    # Many unseeded requests joining one engine: their rows share draws and move as others finish.
    engine = Engine(ConstantLM(PROBS), TOK, max_rows=32)
    engine.core.rng = np.random.default_rng(5)
    jobs = [
        engine.submit("a", SampleConfig(max_new_tokens=10 + i % 7, num_samples=1 + i % 3, **settings))
        for i in range(60)
    ]
    engine.start()
    try:
        assert all(job.finished.wait(60) for job in jobs)
    finally:
        engine.stop()
    counts = Counter(t for job in jobs for s in job.samples for t in s.tokens)
    assert sum(counts.values()) > 1500
    stat, df = chi2(counts, expected(settings))
    assert stat < CHI2_999[df], (counts, expected(settings))


# Every processor, stops and several rows: the same seeded text from the three front ends.
SEEDED = dict(
    seed=5,
    num_samples=3,
    max_new_tokens=40,
    temperature=0.9,
    top_k=8,
    repetition_penalty=1.3,
    presence_penalty=0.4,
    frequency_penalty=0.2,
    no_repeat_ngram=3,
    stop=["ee"],
)


def test_cli_api_and_server_give_the_same_seeded_text(tiny_run):
    gen = textgen.load(tiny_run, "cpu")
    api = [(s.text, s.finish_reason) for s in gen.samples("Shall ", **SEEDED)]
    assert len({text for text, _ in api}) == 3  # the three rows differ

    flags = ["--prompt", "Shall ", "--json", "--device", "cpu"]
    for key, value in SEEDED.items():
        for v in value if isinstance(value, list) else [value]:
            flags += [f"--{key.replace('_', '-')}", str(v)]
    r = run_cli("generate", str(tiny_run), *flags)
    assert r.returncode == 0, r.stderr
    cli = [(o["text"], o["finish_reason"]) for o in map(json.loads, r.stdout.splitlines())]

    body = {k: v for k, v in SEEDED.items() if k not in ("num_samples", "max_new_tokens")}
    body.update(model="poem", prompt="Shall ", n=SEEDED["num_samples"], max_tokens=SEEDED["max_new_tokens"])
    with TestClient(create_app({"poem": gen})) as client:
        choices = client.post("/v1/completions", json=body).json()["choices"]
    server = [(c["text"], c["finish_reason"]) for c in sorted(choices, key=lambda c: c["index"])]

    openai = {"eos": "stop", "stop": "stop", "length": "length"}  # OpenAI's names for the finish reasons
    assert cli == api
    assert server == [(text, openai[reason]) for text, reason in api]


def test_a_prompt_seen_again_reuses_its_pass_and_gives_the_same_text(tiny_run):
    from textgen.sampling import core as decode_core
    from textgen.sampling.core import DecodeCore, Request
    from textgen.sampling.text import prompt_for

    gen = textgen.load(tiny_run, "cpu")
    settings = SampleConfig(max_new_tokens=30, seed=3, num_samples=2)

    def decode(core: DecodeCore, prompt: str) -> list[str]:
        request = Request(gen.tokenizer, prompt_for(gen.tokenizer, prompt), settings)
        core.admit(request)
        while request in core.requests:
            core.tick()
        return [s.text for s in request.samples]

    with torch.no_grad():
        core = DecodeCore(gen.model, gen.tokenizer, capacity=8)
        first = decode(core, "Shall ")
        assert core.model_calls == 1 + 29  # the prompt's pass, then a step per token after the first
        assert decode(core, "Shall ") == first and core.model_calls == 2 * 29 + 1  # no second pass
        for i in range(decode_core.PROMPT_CACHE):  # as many other prompts push it out
            decode(core, "S" * (i + 1))
        calls = core.model_calls
        assert decode(core, "Shall ") == first and core.model_calls == calls + 1 + 29
    assert first == [s.text for s in gen.samples("Shall ", max_new_tokens=30, seed=3, num_samples=2)]


@pytest.mark.parametrize(
    "kw",
    [
        dict(cell="lstm", attention="dot", layers=2),
        dict(cell="gru", attention="general", bidirectional=True),
        dict(cell="rnn", attention="additive", embedding_dim=0),
        dict(cell="lstm", attention="none"),
    ],
)
def test_translation_step_equals_the_teacher_forced_decoder(kw):
    from textgen.config import ModelSpec
    from textgen.models.seq2seq import Seq2Seq

    torch.manual_seed(0)
    cfg = dict(task="translate", vocab_size=11, source_vocab_size=9, hidden_size=12, embedding_dim=6)
    model = Seq2Seq(ModelSpec(**{**cfg, **kw})).eval()
    src = torch.randint(1, 9, (3, 7))
    src_len = torch.tensor([7, 5, 2])
    tgt = torch.randint(1, 11, (3, 9))
    tgt[:, 0] = model.start_id
    with torch.no_grad():
        memory, state = model.encode(src, src_len)
        reference, _ = model.decode(tgt, state, memory)  # (3, 9, V + 2)
        stepper = model.stepper(5)
        stepper.start(slice(0, 3), state, memory)
        order = torch.tensor([2, 0, 1])
        stepper.take(order)  # rows reordered, with their encoder outputs
        for t in range(9):
            torch.testing.assert_close(stepper.step(tgt[order, t]), reference[order, t], rtol=0, atol=1e-5)


def test_browser_tests_fail_rather_than_skip_under_ci(monkeypatch, tmp_path):
    import conftest

    monkeypatch.setattr(conftest, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but the browser test cannot run"):
        conftest.require_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="needs Debian's chromium"):
        conftest.require_chromium()


def test_expected_distribution_helper_is_right():
    # The hand computation itself, on a case worked on paper: T = 0.5 squares and renormalises.
    p = expected(dict(temperature=0.5))
    q = np.array([0.4, 0.25, 0.2, 0.1, 0.05])  # token 0 banned: the rest sums to 1
    q = q**2 / (q**2).sum()
    assert p == pytest.approx(q)
    assert math.isclose(expected(dict(top_k=2)).sum(), 1.0) and (expected(dict(top_k=2)) > 0).sum() == 2
