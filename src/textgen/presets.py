"""Named settings that reproduce the classic tutorials; any explicit flag overrides a preset field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textgen.data.corpus import bundled_corpus
from textgen.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    tutorial: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)
    vocab_size: int = 0  # the tutorial's vocabulary, for `textgen summary --preset` without a corpus
    source_vocab_size: int = 0  # translate: the tutorial's source vocabulary


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "shakespeare",
            "TensorFlow: Text generation with an RNN",
            "char-level, embedding 256, one LSTM of 1024 (--cell gru: the tutorial's GRU form), sequences of 100, "
            "batch 64, shuffle buffer 10000, Adam; Tiny Shakespeare",
            {
                "level": "char",
                "embedding_dim": 256,
                "cell": "lstm",
                "layers": 1,
                "hidden_size": 1024,
                "seq_len": 100,
                "batch_size": 64,
                "mode": "shuffled",
                "random_offset": False,  # the tutorial cuts the text at the same places every epoch
                "shuffle_buffer": 10000,
                "optimizer": "adam",
                "lr": 1e-3,
            },
            vocab_size=65,
        ),
        Preset(
            "nietzsche",
            "Keras / Deep Learning with Python: character-level LSTM text generation",
            "lowercased chars, one-hot input, windows of 60 every 3 characters, loss on the last step only, "
            "one LSTM of 128, RMSprop lr 0.01, batch 128; 400 characters at 0.2/0.5/1.0/1.2 from a random "
            "seed window each epoch; any --corpus",
            {
                "level": "char",
                "lowercase": True,
                "embedding_dim": 0,
                "cell": "lstm",
                "layers": 1,
                "hidden_size": 128,
                "seq_len": 60,
                "window_stride": 3,
                "loss": "last",
                "batch_size": 128,
                "mode": "shuffled",
                "random_offset": False,  # the tutorial cuts the text at the same places every epoch
                "shuffle_buffer": 1_000_000,  # Keras' fit shuffles every window each epoch
                "optimizer": "rmsprop",
                "lr": 0.01,
                "sample_temperatures": [0.2, 0.5, 1.0, 1.2],
                "sample_length": 400,
                "sample_window": 60,
            },
            vocab_size=57,
        ),
        Preset(
            "recipes",
            "Generative Deep Learning: word-level LSTM on recipes",
            "lowercased words with punctuation split off, embedding 100, one LSTM of 128, one record per recipe "
            "ended by <eot>, prompt 'recipe for', samples at 1.0 and 0.2 each epoch; Fannie Farmer's recipes",
            {
                "corpus": [str(bundled_corpus("recipes.txt"))],
                "level": "word",
                "lowercase": True,
                "min_freq": 2,
                "records": True,
                "record_prefix": "recipe for ",
                "embedding_dim": 100,
                "cell": "lstm",
                "layers": 1,
                "hidden_size": 128,
                "seq_len": 200,
                "batch_size": 32,
                "mode": "shuffled",
                "random_offset": False,  # the tutorial cuts the text at the same places every epoch
                "optimizer": "adam",
                "lr": 1e-3,
                "sample_prompt": "recipe for",
                "sample_temperatures": [1.0, 0.2],
                "sample_length": 100,
            },
            vocab_size=10000,
        ),
        Preset(
            "translate",
            "PyTorch: NLP from scratch, translation with a sequence to sequence network and attention",
            "French to English (the tutorial's direction; --no-reverse for English to French), lowercased words, "
            "GRU encoder-decoder of 128 with attention scored as Bahdanau's (additive), teacher forcing, "
            "dropout 0.1, batch 32, Adam; the tutorial's 10,922 short 'i am / he is / you are...' pairs from Tatoeba",
            {
                "task": "translate",
                "pairs": [str(bundled_corpus("eng-fra-tutorial.tsv"))],
                "reverse": True,
                "level": "word",
                "lowercase": True,
                "embedding_dim": 128,
                "cell": "gru",
                "layers": 1,
                "hidden_size": 128,
                "attention": "additive",
                "dropout": 0.1,
                "batch_size": 32,
                "optimizer": "adam",
                "lr": 1e-3,
                "epochs": 80,
            },
            vocab_size=2795,  # what textgen's word tokenizer makes of the bundled training pairs
            source_vocab_size=4583,
        ),
    ]
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a ConfigError."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
