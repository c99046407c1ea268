"""Settings files and flat settings: sections, unknown names with suggestions, types."""

from __future__ import annotations

import re

import pytest

from textgen.api import build_config, default_out
from textgen.config import RunConfig, load_config_file
from textgen.errors import ConfigError


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
