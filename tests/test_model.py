"""RecurrentLM shapes and state carrying; summary counts against sum(p.numel())."""

from __future__ import annotations

import pytest
import torch

from textgen.config import ModelSpec
from textgen.errors import ConfigError
from textgen.models.lm import RecurrentLM
from textgen.models.summary import format_summary, summarize

CONFIGS = [
    dict(cell="lstm", layers=1, embedding_dim=8),
    dict(cell="gru", layers=2, embedding_dim=8, dropout=0.1),
    dict(cell="rnn", layers=3, embedding_dim=0),
    dict(cell="lstm", layers=2, embedding_dim=0),
    dict(cell="lstm", layers=2, embedding_dim=12, tie_weights=True),
]


@pytest.mark.parametrize("kw", CONFIGS)
def test_shapes_and_state_carry_equal_one_long_pass(kw):
    torch.manual_seed(0)
    model = RecurrentLM(ModelSpec(vocab_size=11, hidden_size=12, **kw)).eval()
    x = torch.randint(0, 11, (3, 20))
    logits, state = model(x)
    assert logits.shape == (3, 20, 11)
    first, s = model(x[:, :7])
    second, _ = model(x[:, 7:], s)
    torch.testing.assert_close(torch.cat([first, second], 1), logits, rtol=1e-5, atol=1e-6)
    zero = model.init_state(3)
    torch.testing.assert_close(model(x, zero)[0], logits)


@pytest.mark.parametrize("kw", CONFIGS)
def test_summary_total_equals_parameter_count(kw):
    model = RecurrentLM(ModelSpec(vocab_size=11, hidden_size=12, **kw))
    rows, total, _ = summarize(model)
    assert total == sum(p.numel() for p in model.parameters())
    assert sum(r.params for r in rows) == total
    assert f"Total params: {total:,}" in format_summary(model)


def test_shakespeare_counts_match_the_tutorial_and_explain_the_keras_difference():
    model = RecurrentLM(ModelSpec(vocab_size=65, embedding_dim=256, hidden_size=1024))
    rows, total, keras = summarize(model, 64)
    assert [r.params for r in rows] == [16640, 5251072, 66625]
    assert (total, keras) == (5_334_337, 5_330_241)  # Keras: 16,640 + 5,246,976 + 66,625
    assert "(64, T, 1024)" in format_summary(model, 64)


def test_one_hot_input_has_no_embedding_parameters():
    model = RecurrentLM(ModelSpec(vocab_size=7, hidden_size=4, embedding_dim=0))
    assert model.embedding is None and model.rnn.input_size == 7


def test_tied_weights_need_matching_sizes():
    with pytest.raises(ConfigError, match="tie_weights needs embedding_dim == hidden_size"):
        RecurrentLM(ModelSpec(vocab_size=7, hidden_size=4, embedding_dim=3, tie_weights=True))
    tied = RecurrentLM(ModelSpec(vocab_size=7, hidden_size=4, embedding_dim=4, tie_weights=True))
    assert tied.head.weight is tied.embedding.weight


@pytest.mark.parametrize("kw", [*CONFIGS, dict(cell="gru", layers=1, embedding_dim=0)])
def test_fast_step_gives_the_forward_pass_logits(kw):
    torch.manual_seed(0)
    model = RecurrentLM(ModelSpec(vocab_size=11, hidden_size=12, **kw)).eval()
    x = torch.randint(0, 11, (3, 30))
    with torch.no_grad():
        reference, _ = model(x)
        _, state = model(x[:, :5])  # warm up on a prompt, then step token by token
        step = model.stepper(5)  # more rows than used: the step runs on the first n
        step.write(slice(0, 3), state)
        for t in range(5, 30):
            torch.testing.assert_close(step.step(x[:, t]), reference[:, t], rtol=0, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_low_precision_fast_step_stays_close_to_the_forward_pass(cell, precision):
    torch.manual_seed(0)
    model = RecurrentLM(ModelSpec(vocab_size=11, hidden_size=32, embedding_dim=8, cell=cell, layers=2)).eval()
    x = torch.randint(0, 11, (4, 200))
    with torch.no_grad():
        reference, _ = model(x)
        _, state = model(x[:, :5])
        step = model.stepper(4, precision)
        step.write(slice(0, 4), state)
        worst = max((step.step(x[:, t]) - reference[:, t]).abs().max().item() for t in range(5, 200))
    assert 0 < worst < 0.02  # rounded operands, fp32 state: the error does not build up over 195 steps


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_cuda_graph_step_equals_the_uncaptured_step_and_the_forward_pass(cell):
    torch.manual_seed(0)
    torch.backends.cudnn.allow_tf32 = False  # compare fp32 with fp32
    model = RecurrentLM(ModelSpec(vocab_size=11, hidden_size=64, embedding_dim=8, cell=cell, layers=2))
    model = model.cuda().eval()
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
