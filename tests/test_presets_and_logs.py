"""Tutorial presets, the metrics log, learning-rate schedules and early stopping."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import POEM, TINY, run_cli

from textgen import train
from textgen.api import build_config
from textgen.config import ModelSpec, RunSpec, TrainConfig
from textgen.data.batches import ShuffledWindows
from textgen.models.lm import RecurrentLM
from textgen.presets import get_preset
from textgen.training.callbacks import METRICS_COLUMNS
from textgen.training.schedule import lr_at

COLUMNS = ["step", "epoch", "tokens", "train_loss", "val_loss", "bits_per_char", "lr", "tokens_per_s", "elapsed_s"]


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# -- presets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, level, embedding, rnn, hidden, loss, input_size",
    [
        ("shakespeare", "char", 256, torch.nn.LSTM, 1024, "every", 256),
        ("nietzsche", "char", 0, torch.nn.LSTM, 128, "last", 57),  # one-hot: the input is the vocabulary
        ("recipes", "word", 100, torch.nn.LSTM, 128, "every", 100),
    ],
)
def test_each_preset_builds_its_tutorials_model(name, level, embedding, rnn, hidden, loss, input_size):
    cfg, _ = build_config(name)
    model = RecurrentLM(RunSpec(vocab_size=get_preset(name).vocab_size).model(cfg.model))
    assert cfg.data.level == level and cfg.train.loss == loss
    assert (model.embedding is None) == (embedding == 0)
    assert type(model.rnn) is rnn and model.rnn.hidden_size == hidden and model.rnn.num_layers == 1
    assert model.rnn.input_size == input_size


def test_preset_details_follow_the_tutorials():
    shakespeare, nietzsche, recipes = (build_config(n)[0] for n in ("shakespeare", "nietzsche", "recipes"))
    t = shakespeare.train
    assert (t.seq_len, t.batch_size, t.shuffle_buffer, t.optimizer, t.mode) == (100, 64, 10000, "adam", "shuffled")
    t = nietzsche.train
    assert (t.seq_len, t.window_stride, t.batch_size, t.optimizer, t.lr) == (60, 3, 128, "rmsprop", 0.01)
    assert nietzsche.data.lowercase and t.sample_temperatures == [0.2, 0.5, 1.0, 1.2] and t.sample_length == 400
    assert t.sample_window == 60
    d = recipes.data
    assert d.records and d.lowercase and d.record_prefix == "recipe for " and Path(d.corpus[0]).name == "recipes.txt"
    assert recipes.train.sample_prompt == "recipe for"
    assert build_config("shakespeare", cell="gru")[0].model.cell == "gru"  # a flag overrides a preset field


def test_the_recipes_corpus_ships_with_its_attribution():
    cfg, _ = build_config("recipes")
    path = Path(cfg.data.corpus[0])
    text = path.read_text(encoding="utf-8")
    assert text.count("\n\n") + 1 == 1855  # one record per recipe
    assert "Fannie Merritt Farmer" in (path.parent / "SOURCES.md").read_text(encoding="utf-8")


def test_translate_is_listed_and_trains_a_few_steps(tmp_path):
    listed = run_cli("presets")
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["shakespeare", "nietzsche", "recipes", "translate"]
    cfg, _ = build_config("translate")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(Path(cfg.data.pairs[0]).read_text(encoding="utf-8").splitlines(True)[:400]))
    result = train(
        pairs=str(pairs), out=tmp_path / "run", preset="translate", max_steps=2, eval_sentences=5, sample_sentences=1
    )
    assert result.step == 2 and result.val_loss is not None
    first = json.loads((tmp_path / "run" / "samples.jsonl").read_text().splitlines()[0])
    assert first["source"] == first["source"].strip() and first["reference"].lower().startswith(("i", "he", "you"))


def test_nietzsche_windows_start_every_3_characters():
    ids = np.arange(1000)  # each id is its position
    windows = ShuffledWindows(ids, batch_size=8, seq_len=60, stride=3, seed=0)
    assert np.array_equal(windows.starts(), np.arange(0, 1000 - 60, 3))
    x, y = windows.batch(0, 0)
    assert x.shape == (8, 60) and np.all(x[:, 0] % 3 == 0)
    assert np.array_equal(x, x[:, :1] + np.arange(60)) and np.array_equal(y, x + 1)  # 60 in a row, then the next


def test_loss_on_the_last_step_only_ignores_the_earlier_targets():
    # With loss "last", the gradient comes from one prediction per window: changing every other
    # target leaves the first step's update unchanged.
    from textgen.training.tasks import LanguageModelTask
    from textgen.training.trainer import Trainer

    torch.manual_seed(0)
    cfg = TrainConfig(loss="last", batch_size=2, seq_len=5, lr=0.1, optimizer="sgd")

    class Fixed:
        stateful, steps_per_epoch = False, 1

        def __init__(self, y):
            self.y = y

        def batch(self, epoch, step):
            return np.array([[1, 2, 3, 4, 5], [2, 3, 4, 5, 6]]), self.y

    updated = []
    for y in (np.array([[2, 3, 4, 5, 6], [3, 4, 5, 6, 7]]), np.array([[7, 7, 7, 7, 6], [1, 1, 1, 1, 7]])):
        torch.manual_seed(0)
        model = RecurrentLM(ModelSpec(vocab_size=9, hidden_size=8, embedding_dim=4))
        task = LanguageModelTask(Fixed(y), loss="last")
        trainer = Trainer(model, task, cfg, device=torch.device("cpu"))
        trainer._step()
        updated.append(model.head.weight.detach().clone())
    assert torch.equal(updated[0], updated[1])


@pytest.mark.parametrize("name", ["nietzsche", "recipes", "shakespeare"])
def test_each_preset_trains_a_few_steps_and_writes_its_samples(tmp_path, name):
    corpus = tmp_path / "c.txt"
    if name == "recipes":
        cfg, _ = build_config("recipes")
        corpus.write_text("\n\n".join(Path(cfg.data.corpus[0]).read_text().split("\n\n")[:150]), encoding="utf-8")
    else:
        corpus.write_text(POEM * 45, encoding="utf-8")
    result = train(str(corpus), tmp_path / "run", preset=name, max_steps=2, eval_batches=1, sample_length=12)
    assert result.step == 2
    lines = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    samples = [s for s in map(json.loads, lines) if s["step"] == 2]  # (and earlier ones at each epoch's end)
    temperatures = {"nietzsche": [0.2, 0.5, 1.0, 1.2], "recipes": [1.0, 0.2], "shakespeare": [0.2, 0.5, 1.0]}[name]
    assert [s["temperature"] for s in samples] == temperatures
    if name == "recipes":
        assert all(s["prompt"] == "recipe for" for s in samples)
    if name == "nietzsche":  # a random 60-character window of the (lowercased) training text
        assert len(samples[0]["prompt"]) == 60 and samples[0]["prompt"] in (POEM * 45).lower()
    assert (tmp_path / "run" / "report.md").stat().st_size > 0


def test_recipes_records_begin_with_the_prefix_and_end_with_end_of_text(tmp_path):
    from textgen.checkpoint import load_tokenizer

    cfg, _ = build_config("recipes")
    corpus = tmp_path / "r.txt"
    corpus.write_text("\n\n".join(Path(cfg.data.corpus[0]).read_text().split("\n\n")[:40]), encoding="utf-8")
    train(str(corpus), tmp_path / "run", preset="recipes", max_steps=1, sample_length=0, batch_size=2, seq_len=20)
    tok = load_tokenizer(tmp_path / "run" / "latest")
    meta = json.loads((tmp_path / "run" / "tokens.json").read_text())
    ids = np.fromfile(tmp_path / "run" / "tokens.bin", dtype=meta["dtype"])
    ends = np.flatnonzero(ids == tok.eot_id)
    assert len(ends) == 40
    prefix = tok.encode("recipe for")
    starts = [0] + [e + 1 for e in ends[:-1]]
    assert all(ids[s : s + 2].tolist() == prefix for s in starts)


# -- metrics, TensorBoard, schedules, early stopping ----------------------------------------------------


def test_metrics_csv_has_one_row_per_logged_step(tmp_path, poem_file):
    train(str(poem_file), tmp_path / "run", max_steps=20, log_every=5, eval_every=10, **TINY)
    assert METRICS_COLUMNS == COLUMNS
    table = rows(tmp_path / "run")
    assert list(table[0]) == COLUMNS
    assert [int(r["step"]) for r in table] == [5, 10, 15, 20]
    assert [bool(r["val_loss"]) for r in table] == [False, True, False, True]
    assert all(float(r["train_loss"]) > 0 and float(r["tokens_per_s"]) > 0 for r in table)
    assert [int(r["tokens"]) for r in table] == [5 * 8 * 16 * k for k in (1, 2, 3, 4)]
    for r in table[1::2]:
        assert math.isclose(float(r["bits_per_char"]), float(r["val_loss"]) / math.log(2), rel_tol=1e-4)
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_metrics_and_samples_of_a_resumed_run_read_as_one_run(tmp_path, poem_file):
    kw = dict(log_every=3, eval_every=3, **{**TINY, "sample_length": 5, "batch_size": 4})
    train(str(poem_file), tmp_path / "whole", max_steps=18, **kw)
    train(str(poem_file), tmp_path / "split", max_steps=9, **kw)
    with open(tmp_path / "split" / "metrics.csv", "a") as f:  # a killed run logged past its checkpoint
        f.write("12,0.1,1,1,,,0.01,1,1\n")
    train(str(poem_file), tmp_path / "split", max_steps=18, resume=True, **kw)
    timing = ("tokens_per_s", "elapsed_s")
    whole, split = rows(tmp_path / "whole"), rows(tmp_path / "split")
    assert [r["step"] for r in whole] == [r["step"] for r in split]
    assert [{k: v for k, v in r.items() if k not in timing} for r in whole] == [
        {k: v for k, v in r.items() if k not in timing} for r in split
    ]
    whole, split = ((tmp_path / run / "samples.jsonl").read_text().splitlines() for run in ("whole", "split"))
    assert set(whole) < set(split)  # the same samples, and those the first part printed when it ended


def test_the_final_validation_joins_the_last_logged_row(tmp_path, poem_file):
    train(str(poem_file), tmp_path / "run", max_steps=10, log_every=5, **TINY)
    table = rows(tmp_path / "run")
    assert [r["step"] for r in table] == ["5", "10"]
    assert table[1]["train_loss"] and table[1]["val_loss"] and table[1]["tokens_per_s"]


def test_learning_rate_schedules():
    cfg = TrainConfig(lr=1.0, warmup_steps=4)
    assert [lr_at(cfg, s, 100) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cos = TrainConfig(lr=1.0, min_lr=0.1, schedule="cosine", warmup_steps=10)
    assert lr_at(cos, 10, 110) == pytest.approx(1.0)
    assert lr_at(cos, 60, 110) == pytest.approx(0.55)  # half way: the mean of lr and min_lr
    assert lr_at(cos, 110, 110) == pytest.approx(0.1)
    # A time budget: the cosine follows the clock when it is further along than the steps.
    assert lr_at(cos, 10, 10**6, clock=0.5) == pytest.approx(0.55)
    assert lr_at(cos, 10, 10**6, clock=1.0) == pytest.approx(0.1)
    assert lr_at(cos, 60, 110, clock=0.1) == pytest.approx(0.55)  # the steps are further along
    assert lr_at(TrainConfig(lr=1.0, schedule="plateau"), 5, 100, scale=0.0625) == 0.0625


def _scripted_validation(monkeypatch, losses):
    import textgen.training.tasks as tasks_module

    it = iter(losses)
    monkeypatch.setattr(tasks_module, "score_stream", lambda *a, **k: (next(it) * 100, 100))


def test_plateau_divides_the_rate_and_patience_stops_early(tmp_path, poem_file, monkeypatch):
    _scripted_validation(monkeypatch, [3.0, 2.0, 2.5, 2.4, 2.6, 2.7, 2.8, 2.9])
    result = train(
        str(poem_file), tmp_path / "run", max_steps=40, eval_every=2, log_every=0, schedule="plateau",
        patience=3, **TINY,
    )  # fmt: skip
    assert result.step == 10 and result.best_val == 2.0  # 3 validations (2.5, 2.4, 2.6) without a new best
    lrs = [float(r["lr"]) for r in rows(tmp_path / "run")]
    assert lrs == pytest.approx([0.01, 0.01, 0.01, 0.0025, 0.000625])  # cut by 4 after each miss, applied next step


def test_a_bad_schedule_is_refused_by_name(tmp_path, poem_file):
    out = run_cli("train", "--corpus", str(poem_file), "--out", str(tmp_path / "r"), "--schedule", "linear")
    assert out.returncode == 2 and "--schedule" in out.stderr
    out = run_cli("train", "--corpus", str(poem_file), "--out", str(tmp_path / "r"), "--plateau-factor", "2")
    assert out.returncode == 2 and "plateau_factor must be in (0, 1)" in out.stderr
