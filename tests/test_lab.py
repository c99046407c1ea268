"""The lab (``textgen compare``): several models on the same text for the same minutes, one report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import POEM, run_cli

from textgen.errors import ConfigError
from textgen.lab import compare, count_parameters, entries_for_cells

COMMON = dict(batch_size=8, seq_len=16, lr=1e-2, tensorboard=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("lab") / "poem.txt"
    p.write_text(POEM * 30, encoding="utf-8")
    return p


def test_cells_are_sized_to_the_parameter_budget():
    for entry in entries_for_cells(["lstm", "gru", "mingru", "minlstm", "mlstm", "conv"], 200_000, 60, {}):
        params = count_parameters(entry.settings, 60)
        assert 0.75 * 200_000 <= params <= 1.25 * 200_000, (entry, params)


def test_compare_writes_its_table_and_figures_and_resumes_without_training_again(corpus, tmp_path):
    out = tmp_path / "cmp"
    settings = {"hidden_size": 24, "cell": "gru", "embedding_dim": 8}
    config = tmp_path / "small-gru.yaml"
    config.write_text(json.dumps(settings), encoding="utf-8")
    common = {"corpus": [str(corpus)], "eval_minutes": 0.01, **COMMON}
    outcomes, finished = compare(
        out, cells=["lstm", "mingru"], configs=[config], params=5_000, minutes=0.04, common=common, log=lambda m: None
    )
    assert finished and [o.name for o in outcomes] == ["lstm", "mingru", "small-gru"]
    for o in outcomes:
        assert o.steps > 0 and o.val_loss is not None and o.parameters > 0 and o.sample and o.gen_chars_per_s
        assert 0 < o.seconds < 60 and len(o.curve) >= 2  # several validations: a curve
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| configuration | parameters | steps | tokens/s | val nats/token | bits/char |" in report
    assert all(f"| {o.name} | {o.parameters:,} |" in report for o in outcomes)
    assert (out / "loss_time.png").stat().st_size > 1000 and (out / "loss_tokens.png").stat().st_size > 1000
    assert [r["name"] for r in json.loads((out / "results.json").read_text())] == ["lstm", "mingru", "small-gru"]
    logged: list[str] = []
    again, finished = compare(
        out, cells=["lstm", "mingru"], configs=[config], params=5_000, minutes=0.04, common=common,
        resume=True, log=logged.append,
    )  # fmt: skip
    assert finished and [o.steps for o in again] == [o.steps for o in outcomes]
    assert sum("trained already" in line for line in logged) == 3


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(cells=["lstn"]), "unknown cell 'lstn'"),
        (dict(cells=["lstm"], minutes=0), "--minutes must be a positive number"),
        (dict(cells=["lstm"], params=10), "--params must be between"),
        (dict(), "nothing to compare"),
        (dict(cells=["lstm"], common={"epochs": 3}), "epochs is the comparison's own setting"),
    ],
)
def test_bad_comparisons_are_refused_before_anything_trains(corpus, tmp_path, kw, message):
    common = {"corpus": [str(corpus)], **kw.pop("common", {})}
    with pytest.raises(ConfigError, match=message):
        compare(tmp_path / "cmp", common=common, **kw)
    assert not (tmp_path / "cmp").exists()  # nothing written: a corrected rerun starts clean


def test_the_compare_command_refuses_in_one_line(corpus, tmp_path):
    twin = tmp_path / "a" / "x.yaml", tmp_path / "b" / "x.yaml"
    corpus_setting = tmp_path / "corpus.yaml"
    for p in twin:
        p.parent.mkdir()
        p.write_text("hidden_size: 16\n", encoding="utf-8")
    corpus_setting.write_text("corpus: [other.txt]\n", encoding="utf-8")
    cases = [
        (["--configs", *map(str, twin)], "two configurations are both called 'x'"),
        (["--configs", str(corpus_setting)], "corpus is the comparison's own setting"),
        (["--cells", "lstm", "--minutes", "-1"], "--minutes must be a positive number"),
        (["--cells", "gru", "--level", "klingon"], "invalid choice: 'klingon'"),
    ]
    for args, message in cases:
        r = run_cli("compare", "--corpus", str(corpus), "--out", str(tmp_path / "cmp"), *args)
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine", encoding="utf-8")
    r = run_cli("compare", "--corpus", str(corpus), "--cells", "lstm", "--out", str(tmp_path / "taken"))
    assert r.returncode == 2 and "is not a comparison directory" in r.stderr
    assert (tmp_path / "taken" / "notes.txt").read_text(encoding="utf-8") == "mine"  # nothing lost
