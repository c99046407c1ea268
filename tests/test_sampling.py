"""Logits processors on hand-computed distributions, seeded statistics, and the decode loop."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from textgen.config import ModelSpec, SampleConfig
from textgen.data.tokenizers import BPETokenizer, CharTokenizer, WordTokenizer
from textgen.errors import TextgenError
from textgen.models.lm import RecurrentLM
from textgen.sampling.beam import beam_search
from textgen.sampling.decode import Generation, generate_texts
from textgen.sampling.processors import (
    BanTokens,
    FrequencyPresencePenalty,
    MinP,
    NoRepeatNGram,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    TypicalP,
    apply_processors,
    processors_for,
)
from textgen.sampling.text import IncrementalDecoder, StopStrings, encode_prompt

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
    procs = processors_for(SampleConfig(temperature=t))
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
    return RecurrentLM(ModelSpec(vocab_size=vocab, cell=cell, layers=layers, hidden_size=16, embedding_dim=8)).eval()


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
    streamed = "".join(p for _, p in Generation(model, tok, "emoji", SampleConfig(max_new_tokens=30, seed=1)))
    assert streamed == generate_texts(model, tok, "emoji", SampleConfig(max_new_tokens=30, seed=1))[0]


def test_prompt_outside_a_char_vocabulary_is_named():
    tok = CharTokenizer(list("abc"))
    with pytest.raises(TextgenError, match="outside the model's vocabulary: 'z', 'é'"):
        encode_prompt(tok, "abzé")
    assert encode_prompt(tok, "") == [1]  # no newline in the vocabulary: start from the first character
    assert encode_prompt(WordTokenizer(["<unk>", "<eot>", "a"]), "") == [1]  # start of a document


# -- the generation engine's processors, on hand-computed distributions --------------------------


def kept(logits: torch.Tensor) -> list[bool]:
    return torch.isfinite(logits)[0].tolist()


@pytest.mark.parametrize(
    "p, expected",
    [
        (1.0, [True] * 5),  # top-p = 1 keeps everything
        (0.5, [True, False, False, False, False]),  # the first token alone reaches 0.5
        (0.75, [True, True, False, False, False]),  # 0.5 + 0.25 reaches 0.75 exactly
        (0.76, [True, True, True, False, False]),
        (1e-9, [True, False, False, False, False]),  # at least one token is kept
    ],
)
def test_top_p(p, expected):
    assert kept(TopP(p)(None, LOGITS)) == expected


def test_top_p_and_top_k_with_ties():
    tied = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert kept(TopK(1)(None, tied)) == [True, True, True, False]  # ties at the k-th score stay
    assert kept(TopP(0.25)(None, tied)) == [True, False, False, False]  # each tied token has p = 0.297
    assert kept(TopP(0.3)(None, tied)) == [True, True, False, False]  # stable order: first of the tie
    assert kept(TopK(10)(None, tied)) == [True] * 4  # k above the vocabulary keeps all


def test_min_p_relative_to_the_most_likely_token():
    assert kept(MinP(0.25)(None, LOGITS)) == [True, True, True, False, False]  # 0.125 >= 0.25 * 0.5
    assert kept(MinP(1.0)(None, LOGITS)) == [True, False, False, False, False]
    assert kept(MinP(0.0)(None, LOGITS)) == [True] * 5


def test_typical_p_ranks_by_distance_from_the_entropy():
    # Entropy 1.2997 nats; surprises 0.693, 1.386, 2.079, 2.773, 2.773: token 1 is the most typical.
    assert kept(TypicalP(0.2)(None, LOGITS)) == [False, True, False, False, False]
    assert kept(TypicalP(0.5)(None, LOGITS)) == [True, True, False, False, False]
    assert kept(TypicalP(1.0)(None, LOGITS)) == [True] * 5


def test_repetition_penalty_divides_positive_and_multiplies_negative_scores():
    out = RepetitionPenalty(2.0)(torch.tensor([[0, 1, 1]]), torch.tensor([[2.0, -2.0, 3.0]]))
    assert out.tolist() == [[1.0, -4.0, 3.0]]  # token 2 was never seen


def test_frequency_and_presence_penalties():
    out = FrequencyPresencePenalty(0.5, 1.0)(torch.tensor([[0, 1, 1]]), torch.zeros(1, 3))
    assert out.tolist() == [[-1.5, -2.0, 0.0]]  # 0.5 * count + 1.0 * present


def test_no_repeat_ngram_bans_the_completion_of_a_seen_ngram():
    ids = torch.tensor([[5, 1, 2, 5, 1]])  # ends with "5 1", which was followed by 2
    assert kept(NoRepeatNGram(3)(ids, torch.zeros(1, 8))) == [True, True, False] + [True] * 5
    assert kept(NoRepeatNGram(1)(ids, torch.zeros(1, 8))) == [True, False, False, True, True, False, True, True]
    all_seen = NoRepeatNGram(1)(torch.tensor([[0, 1]]), torch.zeros(1, 2))
    assert kept(all_seen) == [True, True]  # never leaves a row with nothing to draw


def test_all_but_one_masked_leaves_that_one():
    logits = torch.tensor([[0.0, -float("inf"), -float("inf")]])
    for proc in (TopK(2), TopP(0.5), TypicalP(0.5), MinP(0.9), Temperature(0)):
        assert kept(proc(None, logits)) == [True, False, False]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: TopP(0.0), "top_p must be a number in (0, 1], got 0.0"),
        (lambda: TopP(1.5), "top_p must be a number in (0, 1], got 1.5"),
        (lambda: MinP(-0.1), "min_p must be a number in [0, 1]"),
        (lambda: TypicalP(0), "typical_p must be a number in (0, 1]"),
        (lambda: RepetitionPenalty(0), "repetition_penalty must be a number in (0, inf)"),
        (lambda: FrequencyPresencePenalty(3, 0), "frequency_penalty must be a number in [-2, 2]"),
        (lambda: FrequencyPresencePenalty(0, float("nan")), "presence_penalty"),
        (lambda: NoRepeatNGram(-1), "no_repeat_ngram must be an integer >= 0"),
    ],
)
def test_generation_settings_are_validated_by_name(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_seeded_sampling_follows_the_full_processed_distribution():
    # Temperature, top-k and min-p together; frequencies over 20,000 seeded draws vs the result.
    settings = SampleConfig(temperature=1.3, top_k=3, min_p=0.1)
    scores = apply_processors(processors_for(settings), None, LOGITS)
    expected = scores.softmax(-1)[0].numpy() * 20000
    g = torch.Generator().manual_seed(1)
    draws = torch.multinomial(scores.softmax(-1).expand(20000, -1), 1, generator=g)[:, 0]
    counts = torch.bincount(draws, minlength=5).numpy()
    assert counts[3] == counts[4] == 0  # top-k removed them
    live = expected > 0
    chi2 = (((counts - expected) ** 2)[live] / expected[live]).sum()
    assert chi2 < 13.82  # 99.9% point, 2 degrees of freedom


# -- stops, finish reasons and what the run records -----------------------------------------------


@pytest.mark.parametrize(
    "pieces, stops, shown, stopped",
    [
        (["ab", "c\n", "\nd"], ["\n\n"], "abc", True),  # the stop string spans two pieces
        (["ab", "c\n", "d"], ["\n\n"], "abc\nd", False),  # a held-back prefix is released
        (["x", "EN", "D!"], ["END", "D!"], "x", True),  # the earliest stop wins
        (["no stop"], [], "no stop", False),
    ],
)
def test_stop_strings_across_token_boundaries(pieces, stops, shown, stopped):
    s = StopStrings(stops)
    out, hit = "", False
    for piece in pieces:
        text, hit = s.push(piece)
        out += text
        if hit:
            break
    assert (out + ("" if hit else s.flush()), hit) == (shown, stopped)


def test_finish_reasons_and_stop_strings_in_a_run():
    tok = CharTokenizer(list("abcdefgh"))
    model = tiny_model(tok.vocab_size)
    free = Generation(model, tok, "ab", SampleConfig(max_new_tokens=30, temperature=0), show_probs=2)
    text = "".join(p for _, p in free)
    (sample,) = free.samples
    assert sample.finish_reason == "length" and len(sample.tokens) == 30 and sample.text == text
    assert all(c.token == c.top[0][0] and c.prob == c.top[0][1] for c in sample.choices)  # greedy
    stop = text[10:12]
    cut = Generation(model, tok, "ab", SampleConfig(max_new_tokens=30, temperature=0, stop=[stop]))
    for _ in cut:
        pass
    assert cut.samples[0].text == text[: text.index(stop)] and cut.samples[0].finish_reason == "stop"


def test_one_model_call_per_token_however_long_the_output(monkeypatch):
    # Count real calls (forward passes and fast steps) and the tokens they are given.
    from textgen.models.protocol import Stepper

    tok = CharTokenizer(list("abcdefgh"))
    model = tiny_model(tok.vocab_size)
    calls: list[int] = []
    model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[1]))
    step = Stepper.step
    monkeypatch.setattr(Stepper, "step", lambda self, t: calls.append(1) or step(self, t))
    for n in (10, 100, 400):
        calls.clear()
        run = Generation(model, tok, "abc", SampleConfig(max_new_tokens=n, seed=0))
        for _ in run:
            pass
        assert calls == [3] + [1] * (n - 1)  # the prompt once, then one token per step


@pytest.mark.parametrize("beams", [1, 2])
@pytest.mark.parametrize("prompt", ["", "ab"])
def test_penalties_see_the_prompt_but_not_an_artificial_start_token(prompt, beams, monkeypatch):
    import textgen.sampling.decode as decode

    tok = CharTokenizer(list("ab\n"))  # an empty prompt starts the model from "\n"
    histories: list[list[int]] = []
    record = lambda ids, logits: histories.append(ids[0].tolist()) or logits  # noqa: E731
    search = decode.beam_search
    monkeypatch.setattr(decode, "beam_search", lambda *a, **kw: search(*a, **{**kw, "processors": [record]}))
    run = Generation(tiny_model(tok.vocab_size), tok, prompt, SampleConfig(max_new_tokens=3, seed=0, beams=beams))
    run.request.chain.insert(0, record)
    run.request.key = None  # the chain now reads the history
    list(run)
    assert histories[0] == tok.encode(prompt)  # [] for the empty prompt, not the "\n" it starts from
    assert len(histories[1]) == len(prompt) + 1


def test_every_setting_together_never_leaves_nothing_to_draw():
    # "ab" only: after "ab", no-repeat-ngram 1 bans both, and the unknown token is banned too.
    tok = CharTokenizer(list("ab"))
    model = tiny_model(tok.vocab_size)
    text = generate_texts(model, tok, "ab", SampleConfig(max_new_tokens=20, no_repeat_ngram=1, seed=0))[0]
    assert len(text) == 20 and set(text) <= {"a", "b"}
    tiny_t = generate_texts(model, tok, "ab", SampleConfig(max_new_tokens=20, temperature=1e-40))[0]
    assert tiny_t == generate_texts(model, tok, "ab", SampleConfig(max_new_tokens=20, temperature=0))[0]


def test_word_level_streaming_spaces_quotes_like_whole_decoding():
    text = 'say " hi " now and " then " ok'
    tok = WordTokenizer.train([text])
    ids = tok.encode(text)
    for k in range(1, len(ids)):
        dec = IncrementalDecoder(tok, ids[:k])
        streamed = "".join(dec.push(i) for i in ids[k:]) + dec.flush()
        assert tok.decode(ids[:k]) + streamed == 'say "hi" now and "then" ok'


@pytest.mark.parametrize(
    "settings, show_probs, message",
    [
        (dict(max_new_tokens=10**13), 0, "max_new_tokens must be in [0, 1000000]"),
        (dict(num_samples=10**6), 0, "num_samples must be in [1, 4096]"),
        (dict(beams=2), 3, "show_probs must be 0 or more, and 0 with beam search"),
        (dict(), -1, "show_probs must be 0 or more"),
    ],
)
def test_generation_limits(settings, show_probs, message):
    from textgen.errors import ConfigError

    tok = CharTokenizer(list("ab"))
    with pytest.raises(ConfigError, match=re.escape(message)):
        Generation(tiny_model(tok.vocab_size), tok, "a", SampleConfig(**settings), show_probs)


# -- beam search ---------------------------------------------------------------------------------


class TableLM(torch.nn.Module):
    """A hand-built model: the next-token distribution depends only on the last token."""

    def __init__(self, table: dict[int, dict[int, float]], vocab: int) -> None:
        super().__init__()
        probs = torch.full((vocab, vocab), 1e-9)
        for prev, nexts in table.items():
            for t, p in nexts.items():
                probs[prev, t] = p
        self.logits = torch.nn.Parameter(probs.log(), requires_grad=False)

    def init_state(self, rows: int, device=None) -> tuple[torch.Tensor]:
        return (torch.zeros(1, rows, 1),)  # (layers, rows, hidden): nothing to carry

    def forward(self, x: torch.Tensor, state=None) -> tuple[torch.Tensor, tuple[torch.Tensor]]:
        return self.logits[x], state if state is not None else self.init_state(x.shape[0])

    def stepper(self, capacity: int, precision: str = "fp32"):
        from textgen.models.protocol import ReferenceStepper  # the protocol's generic step, from forward

        return ReferenceStepper(self, capacity, torch.device("cpu"))


# Tokens: 0 unknown, 1 end-of-text, 2 start, 3 "A", 4 "B", 5-7 "x", "y", "z".
GARDEN = {
    2: {3: 0.6, 4: 0.4},
    3: {5: 0.34, 6: 0.33, 7: 0.33},
    4: {5: 0.9, 6: 0.05, 7: 0.05},
    5: {1: 1.0},
    6: {1: 1.0},
    7: {1: 1.0},
}


def test_beam_search_finds_the_best_sequence_where_greedy_does_not():
    model = TableLM(GARDEN, 8)
    (greedy,) = beam_search(model, [2], beams=1, max_new_tokens=5, eot_id=1)
    assert greedy.tokens == [3, 5] and greedy.ended  # A x: 0.6 * 0.34 = 0.204
    best, second = beam_search(model, [2], beams=2, max_new_tokens=5, eot_id=1)
    assert best.tokens == [4, 5] and math.isclose(math.exp(best.logprob), 0.36, rel_tol=1e-6)  # B x
    assert second.tokens == [3, 5]


def test_length_penalty_trades_probability_for_length():
    # From start: end now (0.5) or "A" (0.5) and then end (1.0); with "A" one token longer.
    table = {2: {1: 0.45, 3: 0.55}, 3: {1: 0.5, 4: 0.5}, 4: {1: 1.0}}
    model = TableLM(table, 5)
    short = beam_search(model, [2], beams=3, max_new_tokens=5, eot_id=1, length_penalty=0.0)
    assert short[0].tokens == []  # log 0.45 beats log 0.275 and log 0.275
    long = beam_search(model, [2], beams=3, max_new_tokens=5, eot_id=1, length_penalty=2.0)
    assert long[0].tokens == [3, 4]  # log 0.275 / 4 is the least negative


def test_beam_search_with_no_new_tokens_gives_one_empty_continuation():
    model = TableLM(GARDEN, 8)
    (empty,) = beam_search(model, [2], beams=2, max_new_tokens=0, eot_id=1)
    assert empty.tokens == [] and not empty.ended
    tok = CharTokenizer(list("abcdefgh"))
    run = Generation(tiny_model(tok.vocab_size), tok, "abc", SampleConfig(max_new_tokens=0, beams=2))
    assert [p for _, p in run] == [] and [(s.text, s.finish_reason) for s in run.samples] == [("", "length")]


def test_a_live_beam_at_the_length_limit_can_beat_beams_that_ended():
    # Every step: "a" 0.7, end 0.3. Ending at once scores log 0.3 = -1.20; "aaa" scores 3 log 0.7 = -1.07.
    model = TableLM({2: {3: 0.7, 1: 0.3}, 3: {3: 0.7, 1: 0.3}}, 4)
    best = beam_search(model, [2], beams=2, max_new_tokens=3, eot_id=1, length_penalty=0.0)
    assert best[0].tokens == [3, 3, 3] and not best[0].ended


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_one_beam_equals_greedy_on_a_real_model(cell):
    tok = CharTokenizer(list("abcdefgh"))
    model = tiny_model(tok.vocab_size, cell)
    greedy = Generation(model, tok, "abc", SampleConfig(max_new_tokens=25, temperature=0))
    for _ in greedy:
        pass
    (beam,) = beam_search(model, tok.encode("abc"), beams=1, max_new_tokens=25, processors=[BanTokens([0])])
    assert beam.tokens == greedy.samples[0].tokens
    two = Generation(model, tok, "abc", SampleConfig(max_new_tokens=25, beams=3, num_samples=2))
    texts = [p for _, p in two]
    assert len(texts) == 2 and all(s.finish_reason == "length" for s in two.samples)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_fast_decoding_equals_the_reference_forward_path(cell):
    tok = CharTokenizer(list("abcdefgh"))
    model = tiny_model(tok.vocab_size, cell)
    runs = []
    for fast in (True, False):
        run = Generation(model, tok, "abc", SampleConfig(max_new_tokens=60, seed=3, num_samples=4), fast=fast)
        runs.append(([p for p in run], [s.tokens for s in run.samples]))
    assert runs[0] == runs[1]
