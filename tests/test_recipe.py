"""The recipe: a model and its training chosen for the corpus and the budget when the shape is left unset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import POEM, run_cli

from textgen import recipe
from textgen.api import build_config
from textgen.recipe import Budget, Speed

CPU = torch.device("cpu")
# A device that trains at a fixed cost per token and parameter: 1e-9 s per parameter-token (a 1M-parameter
# model then trains 1,000 tokens a second, whatever the width), so expected widths follow by hand.
FLAT = Speed(a=0.0, b=1e-9, precision="fp32", bf16_gain=1.0)


def chosen(budget: Budget, corpus_tokens: int = 10_000_000, speed: Speed | None = FLAT, vocab: int = 65, **settings):
    cfg, explicit = build_config(**settings)
    return recipe.choose(cfg, explicit, corpus_tokens, vocab, budget, speed)


def width_by_hand(tokens_of, corpus_tokens: int, level: str = "char", vocab: int = 65) -> int:
    """The widest of WIDTHS whose parameters, the embedding table aside, the budget covers
    level's tokens_per_parameter times and the corpus feeds (at most 4 per token), counted here. ``tokens_of``
    takes the whole model's count (what a step costs)."""
    best = recipe.WIDTHS[0]
    for w in recipe.WIDTHS:
        e = w if level != "char" else min(w, 256)
        table = vocab * e  # the embedding (and, tied, the output matrix)
        params = table + 4 * w * (e + w) + 8 * w + (0 if level != "char" else w * vocab) + vocab  # LSTM, head
        counted = params - table
        if tokens_of(params) >= recipe.LEVELS[level].tokens_per_parameter * counted and counted <= 4 * corpus_tokens:
            best = w
    return best


def test_the_width_is_the_widest_the_budget_feeds_enough_tokens_per_parameter():
    for minutes in (1, 5, 30):
        got = chosen(Budget(minutes * 60, None, f"{minutes} minutes")).settings["hidden_size"]
        expected = width_by_hand(lambda params, m=minutes: FLAT.tokens_per_s(params) * m * 60, 10_000_000)
        assert got == expected, minutes
    widths = [chosen(Budget(None, tokens, "t")).settings["hidden_size"] for tokens in (10**6, 10**7, 10**8)]
    assert widths == sorted(widths) and widths[0] < widths[-1]


def test_a_small_corpus_caps_the_width_and_many_epochs_bring_dropout():
    big = chosen(Budget(None, 50_000_000, "t"), corpus_tokens=50_000_000).settings
    small = chosen(Budget(None, 50_000_000, "t"), corpus_tokens=100_000).settings
    assert small["hidden_size"] == width_by_hand(lambda p: 50_000_000, 100_000) < big["hidden_size"]
    assert big["dropout"] == 0.0  # one epoch: nothing to overfit
    assert small["dropout"] >= 0.2  # 500 epochs of the same text


def test_a_word_models_embedding_table_is_not_counted_and_it_gets_more_dropout():
    # 30,000 words: the table of an LSTM of 256 alone is 7.7M parameters, which 10M tokens could never cover 8 times
    budget = Budget(None, 10_000_000, "t")
    got = chosen(budget, corpus_tokens=2_000_000, vocab=30_000, level="word").settings
    assert got["hidden_size"] == width_by_hand(lambda p: 10_000_000, 2_000_000, "word", 30_000) >= 256
    assert got["tie_weights"] and got["embedding_dim"] == got["hidden_size"]
    assert got["dropout"] == 0.3  # 5 epochs of words: they start to be remembered
    assert chosen(budget, corpus_tokens=2_000_000).settings["dropout"] == 0.0  # 5 epochs of characters: not yet
    assert [recipe.LEVELS["word"].dropout(e) for e in (1, 3, 29, 500)] == [0.2, 0.3, 0.4, 0.5]
    # words train as pytorch/examples' model does: streams with the state carried, SGD at 20 clipped at 0.25
    words = (got["mode"], got["optimizer"], got["lr"], got["clip"], got["min_lr"])
    assert words == ("stateful", "sgd", 20.0, 0.25, 2.0)
    adam = chosen(budget, corpus_tokens=2_000_000, vocab=30_000, level="word", optimizer="adam").settings
    assert "optimizer" not in adam and adam["lr"] == 2e-3 and "clip" not in adam  # no rate of SGD's for Adam
    rate = chosen(budget, corpus_tokens=2_000_000, vocab=30_000, level="word", lr=1e-3).settings
    assert "optimizer" not in rate and "clip" not in rate and rate["min_lr"] == 1e-4  # a rate alone: no SGD at 1e-3
    parts = chosen(budget, corpus_tokens=2_000_000, vocab=30_000, level="word", accumulate=3).settings
    assert parts["batch_size"] == 18  # the word level's 20, down to whole micro-batches of 3


def test_what_the_user_sets_wins_and_a_time_budget_ends_training():
    c = chosen(Budget(300, None, "5 minutes"), lr=0.01, batch_size=16, max_minutes=5)
    assert "lr" not in c.settings and "batch_size" not in c.settings
    assert c.settings["schedule"] == "cosine" and c.settings["epochs"] >= 1_000_000
    assert len(c.lines) == 3 and all(line.startswith("recipe: ") for line in c.lines)


def test_the_budget_is_minutes_steps_epochs_or_the_devices_default():
    def budget(**kw):
        cfg, explicit = build_config(**kw)
        return recipe.budget_of(cfg, explicit, CPU, corpus_tokens=1000)

    assert budget(max_minutes=2) == Budget(120, None, "2 minutes")
    assert budget(max_steps=10, batch_size=4, seq_len=5).tokens == 200
    assert budget(epochs=3).tokens == 3000
    assert budget().seconds == 60 * recipe.DEFAULT_MINUTES["cpu"]


def test_the_shape_or_recipe_off_keeps_the_plain_defaults():
    for kw in (dict(hidden_size=32), dict(cell="gru"), dict(recipe="off"), dict(preset="shakespeare")):
        preset = kw.pop("preset", None)
        cfg, explicit = build_config(preset, **kw)
        assert not recipe.applies(cfg, explicit), kw
    assert recipe.applies(*build_config(max_minutes=1))


def test_the_probe_fits_the_cost_per_token_and_picks_bf16_only_when_it_pays(monkeypatch):
    # A machine where a step costs 1 ms plus 1 ns per parameter-token, and bf16 is `gain` times faster.
    def fake_step(model, optimizer, ids, precision, device, gain):
        params = sum(p.numel() for p in model.parameters())
        return (1e-3 + 1e-9 * params * ids[:, 1:].numel()) / (gain if precision == "bf16" else 1.0)

    cfg, _ = build_config(batch_size=4, seq_len=8)
    level = recipe.LEVELS["char"]
    for gain, expected in ((2.0, "bf16"), (1.05, "fp32")):
        monkeypatch.setattr(recipe, "_seconds_per_step", lambda *a, g=gain: fake_step(*a, g))
        speed = recipe.probe(cfg, 30, level, CPU, ("fp32", "bf16"))
        assert speed.precision == expected and speed.bf16_gain == pytest.approx(gain)
        per_token = (1e-9 * 100_000 + 1e-3 / 32) / (gain if expected == "bf16" else 1.0)
        assert 1 / speed.tokens_per_s(100_000) == pytest.approx(per_token, rel=1e-6)
    speed = recipe.probe(cfg, 30, level, CPU, ("bf16",))  # --precision bf16 given: timed alone, kept
    assert speed.precision == "bf16" and speed.bf16_gain == 1.0


def test_the_recipes_floor_follows_the_rate_given_and_steps_end_training():
    c = chosen(Budget(None, 10**6, "100 steps"), lr=1e-4, max_steps=100).settings
    assert "lr" not in c and c["min_lr"] == pytest.approx(1e-5) and c["epochs"] >= 1_000_000
    c = chosen(Budget(None, 10**6, "3 epochs"), epochs=3).settings
    assert "epochs" not in c  # the epochs are the budget


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    p = tmp_path / "poem.txt"
    p.write_text(POEM * 20, encoding="utf-8")
    return p


def test_train_says_what_the_recipe_chose_and_saves_it(small_corpus, tmp_path):
    out = tmp_path / "run"
    args = ("train", "--corpus", str(small_corpus), "--out", str(out), "--max-steps", "2", "--sample-length", "0")
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("recipe: ")]
    assert len(said) >= 3 and "too few" in " ".join(said)  # 2 steps of 64 x 100 tokens: the smallest model
    saved = json.loads((out / "latest" / "config.json").read_text(encoding="utf-8"))
    assert saved["model"]["hidden_size"] == recipe.WIDTHS[0] and saved["train"]["schedule"] == "cosine"


def test_a_set_shape_trains_the_plain_defaults_without_a_word_from_the_recipe(small_corpus, tmp_path):
    out = tmp_path / "run"
    args = ("train", "--corpus", str(small_corpus), "--out", str(out), "--max-steps", "1", "--sample-length", "0")
    proc = run_cli(*args, "--hidden-size", "24", "--batch-size", "8")
    assert proc.returncode == 0, proc.stderr
    assert "recipe:" not in proc.stdout + proc.stderr
    saved = json.loads((out / "latest" / "config.json").read_text(encoding="utf-8"))
    assert saved["model"]["hidden_size"] == 24 and saved["train"]["schedule"] == "constant"


def test_translation_gets_word_level_lstm_with_attention_unless_the_user_says_otherwise(tmp_path):
    from textgen.kinds import get_kind

    kind, said = get_kind("translate"), []
    cfg, explicit = build_config(task="translate", pairs=["p.tsv"], max_minutes=20)
    got = kind.recipe(cfg, explicit, tmp_path, CPU, said.append)
    assert (got.data.level, got.data.lowercase, got.data.min_freq) == ("word", True, 2)
    assert (got.model.cell, got.model.hidden_size, got.model.attention) == ("lstm", 256, "general")
    assert got.train.schedule == "cosine" and got.train.epochs >= 1_000_000 and len(said) == 1
    # five validations over the 20 minutes, each translating 1,000 held-out pairs, not all of them
    assert (got.train.eval_minutes, got.train.eval_sentences) == (4.0, 1000)
    assert got.train.precision == ("bf16" if recipe.native_bf16(CPU) else "fp32")
    cfg, explicit = build_config(task="translate", pairs=["p.tsv"], max_minutes=20, eval_every=50, precision="fp32")
    got = kind.recipe(cfg, explicit, tmp_path, CPU, said.append)
    assert (got.train.eval_minutes, got.train.eval_every, got.train.precision) == (0.0, 50, "fp32")
    cfg, explicit = build_config(task="translate", pairs=["p.tsv"], level="bpe", hidden_size=64)
    assert kind.recipe(cfg, explicit, tmp_path, CPU, said.append) == cfg  # a shape given: the plain defaults


def test_already_tokenized_text_is_trained_on_its_words_unless_a_level_is_given(tmp_path):
    words = "the cat sat on the mat , and the <unk> ran away . it was @-@ late ( very late ) .\n"
    corpus = tmp_path / "wiki.txt"
    corpus.write_text(words * 200, encoding="utf-8")
    out = tmp_path / "run"
    args = ("train", "--corpus", str(corpus), "--max-steps", "1", "--sample-length", "0")
    proc = run_cli(*args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "recipe: the text is already tokenized" in proc.stdout + proc.stderr
    saved = json.loads((out / "latest" / "config.json").read_text(encoding="utf-8"))
    assert (saved["data"]["level"], saved["data"]["min_freq"], saved["model"]["tie_weights"]) == ("word", 1, True)
    proc = run_cli(*args, "--out", str(tmp_path / "chars"), "--level", "char")
    assert proc.returncode == 0, proc.stderr
    assert "already tokenized" not in proc.stdout + proc.stderr
    saved = json.loads((tmp_path / "chars" / "latest" / "config.json").read_text(encoding="utf-8"))
    assert saved["data"]["level"] == "char"
