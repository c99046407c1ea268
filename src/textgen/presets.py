"""Named settings that reproduce the classic tutorials; any explicit flag overrides a preset field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textgen.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    tutorial: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)
    vocab_size: int = 0  # the tutorial's vocabulary, for `textgen summary --preset` without a corpus


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "shakespeare",
            "TensorFlow: Text generation with an RNN",
            "char-level, embedding 256, one LSTM of 1024, sequences of 100, batch 64, shuffle buffer 10000, Adam",
            {
                "level": "char",
                "embedding_dim": 256,
                "cell": "lstm",
                "layers": 1,
                "hidden_size": 1024,
                "seq_len": 100,
                "batch_size": 64,
                "mode": "shuffled",
                "shuffle_buffer": 10000,
                "optimizer": "adam",
                "lr": 1e-3,
            },
            vocab_size=65,
        ),
    ]
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
