"""The modern cells (mingru, minlstm, mlstm, conv): parallel form against the recurrence, the fast step against
the forward pass, rows of state, memorising, exact resume, server rows, DDP, summary, bad shapes."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, run_cli
from safetensors.torch import load_file

from textgen import load, train
from textgen.checkpoint import load_trainer_state
from textgen.config import CELLS, DataConfig, ModelConfig, ModelSpec, RunConfig, SampleConfig
from textgen.data.tokenizers import CharTokenizer
from textgen.errors import ConfigError
from textgen.models.protocol import ReferenceStepper, int8_available
from textgen.models.registry import LANGUAGE_MODELS, language_model
from textgen.models.scan import LOG_DECAY_FLOOR, linear_scan
from textgen.models.summary import format_summary, summarize_parts
from textgen.sampling import beam as beam_module
from textgen.sampling.decode import Generation
from textgen.serve.engine import Engine

NEW = ["mingru", "minlstm", "mlstm", "conv"]
ADAM_WEIGHTS = 1e-4  # rows summed in another order: Adam magnifies the rounding of gradients near zero (test_scale)
# Three layers: conv dilations 1, 2, 4 (windows 2, 4, 8 with kernel 3); 70 steps: nine scan chunks, three mLSTM chunks.
SHAPE = dict(vocab_size=11, hidden_size=16, embedding_dim=8, layers=3, heads=2, kernel_size=3, ffn_mult=2)
T = 70
# mLSTM's chunkwise sums and its one-token updates round differently: over 65 steps of this 3-layer model
# they differ by up to 1.2e-5 on logits of size 2.5 (measured over six seeds); the others stay within 1e-5.
STEP_TOLERANCE = {"mingru": 1e-5, "minlstm": 1e-5, "conv": 1e-5, "mlstm": 2e-5}


def model_of(cell: str, spread: float = 0.4, **kw) -> torch.nn.Module:
    """A tiny model of ``cell`` whose weights are drawn wide (N(0, spread)), so gates and decays take every
    value from nearly shut to nearly open, not just the mild ones of a fresh initialisation."""
    torch.manual_seed(0)
    model = language_model(ModelSpec(cell=cell, **{**SHAPE, **kw})).eval()
    if spread:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, spread)
    return model


def random_state(model: torch.nn.Module, rows: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    return tuple(torch.randn(s.shape, generator=g) for s in model.init_state(rows))


def one_at_a_time(model, x, state):
    """The recurrence run token by token through the model (each call a window of one)."""
    out = []
    for t in range(x.shape[1]):
        logits, state = model(x[:, t : t + 1], state)
        out.append(logits)
    return torch.cat(out, 1), state


def assert_states_close(a, b, atol=1e-5):
    assert len(a) == len(b)
    for s, r in zip(a, b):
        torch.testing.assert_close(s, r, rtol=0, atol=atol)


# -- the scan ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 7, 8, 9, 70])
def test_linear_scan_equals_the_loop_and_so_do_its_gradients(steps):
    g = torch.Generator().manual_seed(0)
    pre = 6 * torch.randn(3, steps, 5, generator=g)  # decays from e^-8 (the floor) to nearly 1
    log_a = (-F.softplus(pre)).clamp_min(LOG_DECAY_FLOOR).requires_grad_()
    b, h0 = torch.randn(3, steps, 5, generator=g).requires_grad_(), torch.randn(3, 5, generator=g).requires_grad_()
    assert log_a.min() <= LOG_DECAY_FLOOR + 1 and log_a.max() > -0.01
    h, expected = h0, []
    for t in range(steps):  # the recurrence itself, autograd through the loop
        h = log_a[:, t].exp() * h + b[:, t]
        expected.append(h)
    want = torch.stack(expected, 1)
    got = linear_scan(log_a, b, h0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    weights = torch.randn(want.shape, generator=g)
    grads_want = torch.autograd.grad((want * weights).sum(), (log_a, b, h0))
    grads_got = torch.autograd.grad((got * weights).sum(), (log_a, b, h0))
    for a, w in zip(grads_got, grads_want):
        torch.testing.assert_close(a, w, rtol=0, atol=1e-4)


# -- parallel form, recurrence, step -------------------------------------------------------------------


@pytest.mark.parametrize("carried", [False, True], ids=["zero-state", "carried-state"])
@pytest.mark.parametrize("cell", NEW)
def test_parallel_form_equals_the_step_by_step_recurrence(cell, carried):
    model = model_of(cell)
    x = torch.randint(0, 11, (3, T), generator=torch.Generator().manual_seed(2))
    state = random_state(model, 3) if carried else None
    with torch.no_grad():
        window, after = model(x, state)
        stepped, after_steps = one_at_a_time(model, x, state if carried else model.init_state(3))
        assert window.abs().max() > 1  # logits of some size: the tolerance below is a real check
        torch.testing.assert_close(window, stepped, rtol=0, atol=1e-5)
        assert_states_close(after, after_steps)
        first, middle = model(x[:, :29], state)  # two halves, the state carried between them
        second, end = model(x[:, 29:], middle)
        torch.testing.assert_close(torch.cat([first, second], 1), window, rtol=0, atol=1e-5)
        assert_states_close(end, after)


@pytest.mark.parametrize("cell", NEW)
def test_fast_step_gives_the_forward_pass_logits(cell):
    model = model_of(cell)
    x = torch.randint(0, 11, (3, T), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference, final = model(x)
        _, prompt = model(x[:, :5])  # warm up on a prompt, then step token by token
        step = model.stepper(5)  # more rows than used: the step runs on the first n
        step.write(slice(0, 3), prompt)
        for t in range(5, T):
            torch.testing.assert_close(step.step(x[:, t]), reference[:, t], rtol=0, atol=STEP_TOLERANCE[cell])
        assert_states_close(step.read(slice(0, 3)), final)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("cell", NEW)
def test_low_precision_step_stays_close_to_the_forward_pass(cell, precision):
    if precision == "int8" and not int8_available():
        pytest.skip("this PyTorch has no quantized CPU kernels")
    model = model_of(cell, spread=0, hidden_size=32, heads=4)  # as initialised: weights of a realistic size
    x = torch.randint(0, 11, (4, 200), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        reference, _ = model(x)
        _, state = model(x[:, :5])
        step = model.stepper(4, precision)
        step.write(slice(0, 4), state)
        worst = 0.0  # the largest total variation distance between the two next-token distributions
        for t in range(5, 200):
            p, q = step.step(x[:, t]).softmax(-1), reference[:, t].softmax(-1)
            worst = max(worst, 0.5 * (p - q).abs().sum(-1).max().item())
    # Rounded weights, fp32 state: the error does not build up over 195 steps (the matrix memory's, which sums
    # its rounded keys and values over ~50-step forget horizons, is the largest: 0.012 in bf16, 0.025 in int8).
    assert 0 < worst < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cell", NEW)
def test_cuda_graph_step_equals_the_uncaptured_step_and_the_forward_pass(cell):
    torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32
    model = model_of(cell).cuda()
    x = torch.randint(0, 11, (3, 40), device="cuda")
    with torch.no_grad():
        reference, _ = model(x)
        _, state = model(x[:, :5])
        graph, plain = model.stepper(4), model.stepper(4, cuda_graph=False)
        for s in (graph, plain):
            s.write(slice(0, 3), state)
        for t in range(5, 40):
            out = graph.step(x[:, t]).clone()
            torch.testing.assert_close(out, plain.step(x[:, t]), rtol=0, atol=1e-6)
            torch.testing.assert_close(out, reference[:, t], rtol=0, atol=1e-4)
        assert list(graph.graphs) == [3] and not plain.graphs


@pytest.mark.parametrize("cell", NEW)
def test_take_and_copy_move_whole_rows_of_state(cell):
    model = model_of(cell)
    x = torch.randint(0, 11, (4, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, state = model(x)  # four rows, four different states
        step = model.stepper(4)
        step.write(slice(0, 4), state)
        step.take(torch.tensor([2, 0, 2]))  # rows 0..2 become old rows 2, 0, 2 (beams reordered)
        picked = tuple(s[:, [2, 0, 2]] for s in state)
        assert_states_close(step.read(slice(0, 3)), picked, atol=0)
        step.copy(1, 2)  # row 2 becomes row 1 (old row 0)
        moved = tuple(s[:, [2, 0, 0]] for s in state)
        assert_states_close(step.read(slice(0, 3)), moved, atol=0)
        nxt = torch.tensor([3, 4, 5])
        expected, _ = model(nxt[:, None], moved)
        torch.testing.assert_close(step.step(nxt), expected[:, 0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("cell", NEW)
def test_beam_search_through_the_fast_step_equals_it_through_the_forward_pass(cell, monkeypatch):
    model = model_of(cell, spread=0.3)
    found = beam_module.beam_search(model, [1, 2, 3], beams=4, max_new_tokens=12, eot_id=0)
    monkeypatch.setattr(model, "stepper", lambda n, precision="fp32": ReferenceStepper(model, n, torch.device("cpu")))
    reference = beam_module.beam_search(model, [1, 2, 3], beams=4, max_new_tokens=12, eot_id=0)
    assert [h.tokens for h in found] == [h.tokens for h in reference] and len(found) == 4
    assert [h.logprob for h in found] == pytest.approx([h.logprob for h in reference], abs=1e-4)


# -- training and generation end to end ----------------------------------------------------------------


@pytest.mark.parametrize("cell", NEW)
def test_tiny_model_memorises_a_short_text_and_reproduces_it_greedily(tmp_path, cell):
    text = "the quick brown fox jumps over the lazy dog; textgen remembers it all.\n"
    (tmp_path / "t.txt").write_text(text)
    settings = dict(mode="stateful", batch_size=1, seq_len=24, epochs=25, hidden_size=32, embedding_dim=32, layers=2)
    if cell == "conv":  # a convolution sees only its receptive field: 31 characters tell every position apart
        settings.update(layers=4, kernel_size=3)
    train(str(tmp_path / "t.txt"), tmp_path / "run", cell=cell, lr=1e-2, val_fraction=0.0, sample_length=0, **settings)
    gen = load(tmp_path / "run")
    assert gen.generate(text[:6], max_new_tokens=len(text) - 6, temperature=0) == text[6:]
    assert gen.generate(text[:6], max_new_tokens=40, temperature=0, stop=["lazy"]) == text[6:35]


@pytest.mark.parametrize("cell", NEW)
def test_resume_equals_uninterrupted_bit_for_bit(tmp_path, poem_file, cell):
    kw = dict(mode="stateful", cell=cell, layers=2, heads=4, dropout=0.2, eval_every=4, **{**TINY, "batch_size": 4})
    train(str(poem_file), tmp_path / "whole", max_steps=15, **kw)
    train(str(poem_file), tmp_path / "split", max_steps=9, **kw)  # stops mid-epoch (epochs of ~8 steps)
    state = load_trainer_state(tmp_path / "split" / "latest")
    saved = [tuple(h.shape) for h in state["hidden"]]  # every layer's carried state, four stream rows
    assert state["position"]["batch"] > 0 and saved == [s.shape for s in load(tmp_path / "split").model.init_state(4)]
    train(str(poem_file), tmp_path / "split", max_steps=15, resume=True, **kw)
    a, b = (load_file(str(tmp_path / d / "latest" / "model.safetensors")) for d in ("whole", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cell", NEW)
def test_bf16_training_on_the_cpu_and_two_micro_batches_as_one(tmp_path, poem_file, cell):
    kw = dict(cell=cell, mode="stateful", max_steps=6, log_every=2, **TINY)
    bf16 = train(str(poem_file), tmp_path / "bf16", precision="bf16", eval_every=6, **{**kw, "mode": "shuffled"})
    assert bf16.val_loss < math.log(36)  # learning, in bf16 arithmetic with fp32 weights, from shuffled windows
    train(str(poem_file), tmp_path / "one", **kw)
    train(str(poem_file), tmp_path / "two", accumulate=2, **kw)  # each half of the streams carries its own rows
    a, b = (load_file(str(tmp_path / d / "latest" / "model.safetensors")) for d in ("one", "two"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < ADAM_WEIGHTS


def test_two_processes_train_the_same_model_as_one(tmp_path, poem_file):
    kw = dict(cell="mlstm", heads=4, mode="stateful", log_every=2, max_steps=4, **TINY)
    train(str(poem_file), tmp_path / "one", **kw)
    args = ["--corpus", str(poem_file), "--out", str(tmp_path / "two")]
    for key, value in kw.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "textgen"]
    done = subprocess.run([*cmd, "train", *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (load_file(str(tmp_path / d / "latest" / "model.safetensors")) for d in ("one", "two"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


@pytest.mark.parametrize("cell", NEW)
def test_server_rows_give_the_text_each_request_gets_alone(cell):
    tokenizer = CharTokenizer(list(" abcdefgh\n"))
    model = model_of(cell, spread=0, vocab_size=tokenizer.vocab_size)
    engine = Engine(model, tokenizer, max_rows=8)
    requests = [
        dict(max_new_tokens=30, seed=1),
        dict(max_new_tokens=12, seed=2, num_samples=3, temperature=0.7),
        dict(max_new_tokens=40, seed=3, stop=["a"], top_p=0.8),
        dict(max_new_tokens=18, temperature=0),
    ]
    jobs = [engine.submit("bad cafe", SampleConfig(**r)) for r in requests]  # queued before the engine starts
    engine.start()
    try:
        for job in jobs:
            assert job.finished.wait(30)
    finally:
        engine.stop()
    assert engine.stats.peak_rows == 6  # decoded together
    for job, r in zip(jobs, requests):
        alone = Generation(model, tokenizer, "bad cafe", SampleConfig(**r))
        for _ in alone:
            pass
        want = [(s.text, s.tokens, s.finish_reason) for s in alone.samples]
        assert [(s.text, s.tokens, s.finish_reason) for s in job.samples] == want, r


# -- summary, configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [dict(), dict(embedding_dim=16, tie_weights=True), dict(embedding_dim=0)])
@pytest.mark.parametrize("cell", NEW)
def test_summary_rows_add_up_to_the_parameters(cell, shape):
    model = model_of(cell, spread=0, **shape)
    rows, total, _ = summarize_parts(model)
    assert sum(r.params for r in rows) == total == sum(p.numel() for p in model.parameters())
    names = [r.name for r in rows]
    assert (
        names[0] == "embedding"
        and names[-1] == "head"
        and [n for n in names if n.startswith("block_")]
        == [
            "block_0",
            "block_1",
            "block_2",
        ]
    )
    assert ("embed_proj" in names) == (shape.get("embedding_dim", 8) == 8)  # 8 -> 16 needs a projection
    text = format_summary(model, 4, "tiny")
    assert f"Total params: {total:,}" in text and "(4, T, 16)" in text


def test_the_cell_table_covers_every_cell():
    assert set(LANGUAGE_MODELS) == set(CELLS)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(cell="mlstm", hidden_size=10, heads=4), "mlstm: hidden_size 10 must be a multiple of heads 4"),
        (dict(cell="mingru", embedding_dim=8, tie_weights=True), "tie_weights needs embedding_dim == hidden_size"),
        (dict(cell="conv", kernel_size=1), "kernel_size must be in [2, 64], got 1"),
        (dict(cell="minlstm", ffn_mult=-1), "ffn_mult must be in [0, 64], got -1"),
    ],
)
def test_bad_shapes_are_refused_with_one_line(settings, message):
    with pytest.raises(ConfigError) as e:
        language_model(ModelSpec(**{**SHAPE, **settings}))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_translation_stays_on_the_classic_cells():
    config = RunConfig(model=ModelConfig(task="translate", cell="mingru"), data=DataConfig(pairs=["p.tsv"]))
    with pytest.raises(ConfigError, match="^translation models use lstm, gru, rnn; cell mingru is for language"):
        config.validate()


def test_the_cli_refuses_a_bad_shape_before_reading_the_corpus(tmp_path):
    done = run_cli("train", "--corpus", str(tmp_path / "missing.txt"), "--cell", "mlstm", "--hidden-size", "10")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "textgen: error: mlstm: hidden_size 10 must be a multiple of heads 4"
    ], done.stderr


def test_generation_states_are_constant_in_size_whatever_the_length():
    for cell in NEW:
        model = model_of(cell, spread=0)
        with torch.no_grad():
            short = model(torch.zeros(1, 3, dtype=torch.long))[1]
            long = model(torch.zeros(1, 300, dtype=torch.long))[1]
        assert [s.shape for s in short] == [s.shape for s in long] == [s.shape for s in model.init_state(1)]
