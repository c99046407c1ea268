"""Settings files and flat settings: sections, unknown names with suggestions, types."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from textgen.api import build_config, default_out
from textgen.config import DataConfig, ModelConfig, RunConfig, RunSpec, SampleConfig, TrainConfig, load_config_file
from textgen.errors import CheckpointError, ConfigError
from textgen.kinds import KIND_NAMES, all_kinds, get_kind, kind_of


def test_flat_and_sectioned_settings_meet_in_one_config(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  hidden-size: 48\ntrain:\n  lr: 0.5\nlevel: word\n")
    cfg, explicit = build_config(config_file=f, lr=0.25)  # keywords (flags) win over the file
    assert (cfg.model.hidden_size, cfg.train.lr, cfg.data.level) == (48, 0.25, "word")
    assert explicit == {"hidden_size", "lr", "level"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("modle:\n  cell: gru\n", "unknown setting 'modle' (did you mean 'mode'?)"),
        ("model:\n  lr: 0.1\n", "lr belongs under train:, not model:"),
        ("lr: 0.1\ntrain:\n  lr: 0.2\n", "lr is set twice"),
        ("lr: [0.1\nseed: 3\n", "is not valid YAML at line 2"),
        ("- just\n- a list\n", "must hold a mapping"),
    ],
)
def test_settings_file_mistakes_are_named(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config(config_file=f)


def test_types_and_unknown_names_are_checked():
    with pytest.raises(ConfigError, match="model.hidden_size must be int, got 'big'"):
        RunConfig().updated({"hidden_size": "big"})
    with pytest.raises(ConfigError, match="unknown setting 'hiden_size' \\(did you mean 'hidden_size'\\?\\)"):
        RunConfig().updated({"hiden_size": 3})
    assert RunConfig().updated({"lr": 1}).train.lr == 1.0  # an int stands for a float


def test_empty_settings_file(tmp_path):
    (tmp_path / "e.yaml").write_text("")
    assert load_config_file(tmp_path / "e.yaml") == {}


@pytest.mark.parametrize(
    "corpus, out",
    [
        (None, "runs/tinyshakespeare"),
        ("-", "runs/stdin"),
        ("texts/*.txt", "runs/texts"),
        ("*.txt", "runs/corpus"),
        ("my poems/a b.txt", "runs/a_b"),
    ],
)
def test_default_run_directory_names(corpus, out):
    cfg, _ = build_config(**({"corpus": [corpus]} if corpus else {}))
    assert str(default_out(cfg)) == out


# -- declared once, checked by one validator ------------------------------------------------------


def _outside(meta: dict) -> list[object]:
    """Values just outside a field's declared choices and bounds, from its metadata alone."""
    values: list[object] = []
    if "choices" in meta:
        values.append("not-" + meta["choices"][0])
    for key, step in (("min", -1), ("above", 0), ("max", 1), ("below", 0)):
        if key in meta:
            values.append(meta[key] + step)
    return values


@pytest.mark.parametrize("cls", [ModelConfig, DataConfig, TrainConfig, SampleConfig, RunSpec])
def test_every_declared_choice_and_bound_is_enforced_naming_its_field(cls):
    checked = 0
    for f in dataclasses.fields(cls):
        for value in _outside(dict(f.metadata)):
            typed = float(value) if isinstance(f.default, float) else value
            bad = cls(**{f.name: [typed] if isinstance(getattr(cls(), f.name), list) else typed})
            with pytest.raises(ConfigError, match=rf"^{f.name} must be .*, got "):
                bad.validate()
            checked += 1
        cls(**{}).validate()  # the defaults themselves are within bounds
    assert checked >= 3


def test_cross_field_rules_are_checked_once_per_config():
    with pytest.raises(ConfigError, match="tie_weights needs embedding_dim == hidden_size"):
        ModelConfig(tie_weights=True, embedding_dim=3, hidden_size=4).validate()
    with pytest.raises(ConfigError, match="must be a multiple of accumulate 3"):
        TrainConfig(batch_size=8, accumulate=3).validate()
    with pytest.raises(ConfigError, match="num_samples \\(3\\) cannot exceed beams \\(2\\)"):
        SampleConfig(beams=2, num_samples=3).validate()
    with pytest.raises(ConfigError, match="a translation model needs --pairs FILE"):  # the kind's own rule
        RunConfig().updated({"task": "translate"}).validate()


def test_configs_are_frozen():
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.hidden_size = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        SampleConfig().num_samples = 2  # type: ignore[misc]
    assert cfg.updated({"hidden_size": 3}).model.hidden_size == 3 and cfg.model.hidden_size == 256


def test_a_training_run_leaves_the_users_config_as_it_was(tmp_path, monkeypatch):
    # The vocabulary size and the absolute corpus path are derived into the checkpoint's spec, not the config.
    from conftest import POEM, TINY

    from textgen.checkpoint import read_config
    from textgen.training.run import run_training

    monkeypatch.chdir(tmp_path)
    (tmp_path / "poem.txt").write_text(POEM * 30, encoding="utf-8")
    cfg, explicit = build_config(corpus=["poem.txt"], max_steps=2, **TINY)
    before = cfg.to_dict()
    run_training(cfg, tmp_path / "run", explicit=explicit)
    assert cfg.to_dict() == before
    saved, spec, _ = read_config(tmp_path / "run" / "latest")
    assert saved == cfg and "vocab_size" not in saved.to_dict()["model"]
    assert spec.inputs == [str(tmp_path / "poem.txt")] and spec.vocab_size == len(set(POEM)) + 1


def test_the_spec_is_saved_beside_the_config_and_read_back(tmp_path):
    from textgen.checkpoint import build_model, load_checkpoint, read_config, save_checkpoint
    from textgen.data.tokenizers import CharTokenizer

    tok = CharTokenizer(list("abc "))
    cfg = RunConfig().updated({"hidden_size": 8, "embedding_dim": 4, "corpus": ["poem.txt"]})
    spec = RunSpec(vocab_size=tok.vocab_size, inputs=["/somewhere/poem.txt"])
    save_checkpoint(tmp_path / "c", build_model(cfg, spec), cfg, spec, tok, {"step": 0})
    meta = json.loads((tmp_path / "c" / "config.json").read_text())
    assert meta["spec"] == {"vocab_size": tok.vocab_size, "source_vocab_size": 0, "inputs": ["/somewhere/poem.txt"]}
    assert meta["format_version"] == 3 and meta["data"]["corpus"] == ["poem.txt"]
    assert read_config(tmp_path / "c")[:2] == (cfg, spec)
    loaded = load_checkpoint(tmp_path / "c")
    assert loaded.spec == spec and loaded.model.cfg == spec.model(cfg.model)
    meta["spec"]["vocab_size"] = tok.vocab_size + 1  # a spec that does not fit its tokenizer is refused
    (tmp_path / "c" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"tokenizer has {tok.vocab_size} tokens but the model expects"):
        load_checkpoint(tmp_path / "c")


# -- the registry of task kinds -------------------------------------------------------------------


def test_each_kind_is_registered_once_and_an_unknown_one_is_refused_in_one_line():
    assert [k.name for k in all_kinds()] == list(KIND_NAMES) == ["lm", "translate"]
    assert get_kind("lm") is get_kind("lm") and kind_of(RunConfig()) is get_kind("lm")
    with pytest.raises(ConfigError) as e:
        get_kind("lmm")
    assert str(e.value) == "unknown model kind 'lmm' (did you mean 'lm'?): textgen knows lm, translate"
    with pytest.raises(ConfigError, match="^unknown model kind None: textgen knows lm, translate$"):
        get_kind(None)


def test_no_kind_name_is_compared_outside_the_registry():
    # Anything that differs between kinds is asked of the kind, so a new kind is added in one place.
    src = Path(__file__).resolve().parents[1] / "src" / "textgen"
    pattern = re.compile(r"""(==|!=|\bin\b)\s*\(?\s*["'](lm|translate)["']|["'](lm|translate)["']\s*(==|!=)""")
    found = [
        f"{p.relative_to(src)}:{n}: {line.strip()}"
        for p in src.rglob("*.py")
        if "kinds" not in p.parts
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, found
