"""Which class builds each ``--cell``: adding an architecture is one line here (and its name in config.CELLS)."""

from __future__ import annotations

from torch import nn

from textgen.config import ModelSpec
from textgen.models.conv import ConvLM
from textgen.models.lm import RecurrentLM
from textgen.models.mingru import MinGRULM
from textgen.models.minlstm import MinLSTMLM
from textgen.models.mlstm import MLSTMLM

LANGUAGE_MODELS: dict[str, type[nn.Module]] = {
    "lstm": RecurrentLM,  # nn.LSTM / nn.GRU / nn.RNN (cuDNN, oneDNN)
    "gru": RecurrentLM,
    "rnn": RecurrentLM,
    "mingru": MinGRULM,  # parallel-scan residual blocks (models/blocks.py)
    "minlstm": MinLSTMLM,
    "mlstm": MLSTMLM,  # chunkwise matrix memory
    "conv": ConvLM,  # causal dilated convolutions
}


def language_model(cfg: ModelSpec) -> nn.Module:
    """A freshly initialised language model of ``cfg``'s cell and shape."""
    return LANGUAGE_MODELS[cfg.cell](cfg)
