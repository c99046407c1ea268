"""Logits processors on hand-computed distributions, seeded statistics, and the decode loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textgen.config import ModelConfig, SampleConfig
from textgen.data.tokenizers import BPETokenizer, CharTokenizer, WordTokenizer
from textgen.errors import TextgenError
from textgen.models.lm import RecurrentLM
from textgen.sampling.decode import IncrementalDecoder, encode_prompt, generate_texts, stream_samples
from textgen.sampling.processors import BanTokens, Temperature, TopK, apply_processors, build_processors

P = torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.0625]])
LOGITS = P.log()


@pytest.mark.parametrize("t", [0.2, 0.5, 1.0, 1.2, 3.0])
def test_temperature_equals_the_tutorials_reweighting(t):
    # Keras / Generative Deep Learning: p ** (1 / T), renormalised.
    expected = P[0].numpy() ** (1 / t)
    expected /= expected.sum()
    got = Temperature(t)(None, LOGITS).softmax(-1)[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_temperature_zero_keeps_only_the_argmax():
    logits = torch.tensor([[0.1, 2.0, 1.9], [3.0, -1.0, 2.0]])
    probs = Temperature(0)(None, logits).softmax(-1)
    assert torch.equal(probs, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))


def test_top_k_keeps_the_k_best():
    out = TopK(2)(None, LOGITS)
    assert torch.isfinite(out).tolist() == [[True, True, False, False, False]]
    assert torch.equal(TopK(0)(None, LOGITS), LOGITS)
    assert torch.equal(TopK(99)(None, LOGITS), LOGITS)


def test_ban_tokens_never_bans_everything():
    assert torch.isinf(BanTokens([0])(None, LOGITS)[0, 0])
    assert torch.equal(BanTokens([0, 1, 2, 3, 4])(None, LOGITS), LOGITS)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Temperature(-0.1), "temperature must be a finite number >= 0, got -0.1"),
        (lambda: Temperature(float("nan")), "temperature"),
        (lambda: TopK(-1), "top_k must be an integer >= 0, got -1"),
        (lambda: TopK(1.5), "top_k"),
        (lambda: BanTokens([-3]), "token_ids"),
    ],
)
def test_processors_validate_their_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_seeded_sampling_follows_the_tempered_distribution():
    # 20,000 seeded draws through the processor chain; chi-square against p^(1/T) renormalised.
    t = 0.7
    procs = build_processors(temperature=t, top_k=0)
    scores = apply_processors(procs, None, LOGITS.expand(20000, -1))
    g = torch.Generator().manual_seed(0)
    draws = torch.multinomial(scores.softmax(-1), 1, generator=g)[:, 0]
    counts = torch.bincount(draws, minlength=5).numpy()
    expected = P[0].numpy() ** (1 / t)
    expected = expected / expected.sum() * 20000
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 18.47  # 99.9% point, 4 degrees of freedom


def tiny_model(vocab: int, cell: str = "lstm", layers: int = 2) -> RecurrentLM:
    torch.manual_seed(0)
    return RecurrentLM(ModelConfig(vocab_size=vocab, cell=cell, layers=layers, hidden_size=16, embedding_dim=8)).eval()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_greedy_decoding_with_carried_state_equals_rerunning_the_window(cell):
    tok = CharTokenizer(list("abcdefgh"))
    model = tiny_model(tok.vocab_size, cell)
    text = generate_texts(model, tok, "abc", SampleConfig(max_new_tokens=15, temperature=0))[0]
    ids = tok.encode("abc")
    for _ in range(15):  # the tutorials' way: the whole window again for every token
        logits, _ = model(torch.tensor([ids]))
        logits[0, -1, 0] = -float("inf")  # the unknown token is banned
        ids.append(int(logits[0, -1].argmax()))
    assert "abc" + text == tok.decode(ids)


def test_seed_reproduces_samples_and_samples_differ():
    tok = CharTokenizer(list("abcdefgh"))
    model = tiny_model(tok.vocab_size)
    a = generate_texts(model, tok, "ab", SampleConfig(max_new_tokens=40, seed=7, num_samples=3))
    assert a == generate_texts(model, tok, "ab", SampleConfig(max_new_tokens=40, seed=7, num_samples=3))
    assert a != generate_texts(model, tok, "ab", SampleConfig(max_new_tokens=40, seed=8, num_samples=3))
    assert len(set(a)) == 3 and all(len(s) == 40 for s in a)
    assert "\ufffd" not in "".join(a)  # the unknown token is never drawn


def test_word_level_stops_at_end_of_text():
    tok = WordTokenizer(["<unk>", "<eot>", "a", "b"])
    model = tiny_model(tok.vocab_size)
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 50.0, 0.0, 0.0]))  # end-of-text is near certain
    assert generate_texts(model, tok, "a b", SampleConfig(max_new_tokens=20, seed=0)) == [""]


def test_word_level_text_from_an_empty_prompt_has_no_leading_space():
    tok = WordTokenizer(["<unk>", "<eot>", "the", "cat"])
    dec = IncrementalDecoder(tok, encode_prompt(tok, ""))
    assert dec.push(2) + dec.push(3) == "the cat"


def test_stream_pieces_join_to_the_text_and_bpe_pieces_are_whole_characters():
    tok = BPETokenizer.train(["emoji 🙂🙃 and 東京 " * 20], vocab_size=270)
    ids = tok.encode("🙂🙃 東京 emoji")
    dec = IncrementalDecoder(tok, tok.encode("x"))
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == "🙂🙃 東京 emoji"
    assert not any("\ufffd" in p for p in pieces)
    model = tiny_model(tok.vocab_size)
    streamed = "".join(p for _, p in stream_samples(model, tok, "emoji", SampleConfig(max_new_tokens=30, seed=1)))
    assert streamed == generate_texts(model, tok, "emoji", SampleConfig(max_new_tokens=30, seed=1))[0]


def test_prompt_outside_a_char_vocabulary_is_named():
    tok = CharTokenizer(list("abc"))
    with pytest.raises(TextgenError, match="outside the model's vocabulary: 'z', 'é'"):
        encode_prompt(tok, "abzé")
    assert encode_prompt(tok, "") == [1]  # no newline in the vocabulary: start from the first character
    assert encode_prompt(WordTokenizer(["<unk>", "<eot>", "a"]), "") == [1]  # start of a document
