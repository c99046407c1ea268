"""The model as an export sees it: a token lookup table, each layer's matrices, the output layer, and each
cell's step as one function. The ONNX step graph runs these functions; the web page runs their JavaScript
twins (``web/textgen.js``: ``CELLS``). Adding a cell is one entry in ``CELLS`` here and one there.

A classic recurrent layer splits the same way for every cell::

    gi = x @ W_ih^T + b_ih          the input's projection   (n, G)   G = gates x H
    gh = h @ W_hh^T + b_hh          the state's projection   (n, G)   h = the layer's first state tensor
    h', state' = cell(gi, gh, state)                          elementwise only

Layer 0's input projection is a row lookup when that is smaller to ship than the embedding and
``W_ih`` (a character vocabulary is smaller than the embedding width), as it is for a one-hot model
(the one-hot vector times ``W_ih`` is a column of it): then ``inputs`` is (V, G) and layer 0 has no
``w_ih``. Otherwise ``inputs`` is the embedding (V, E).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from textgen.errors import TextgenError

StepFn = Callable[[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]


class ExportError(TextgenError):
    """A checkpoint cannot be exported as asked (its kind or cell, the format, the output path)."""


def lstm(gi: torch.Tensor, gh: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """PyTorch's gate order i f g o; state (h, c)."""
    i, f, g, o = (gi + gh).chunk(4, dim=-1)  # (n, H) each
    c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru(gi: torch.Tensor, gh: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Gate order r z n; the candidate reads r * (W_hn h + b_hn), so b_hh stays apart from b_ih."""
    ir, iz, in_ = gi.chunk(3, dim=-1)  # (n, H) each
    hr, hz, hn = gh.chunk(3, dim=-1)
    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
    n = torch.tanh(in_ + r * hn)
    return ((1 - z) * n + z * state[0],)


def rnn(gi: torch.Tensor, gh: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Elman: h = tanh(gi + gh)."""
    return (torch.tanh(gi + gh),)


@dataclass(frozen=True)
class Cell:
    gates: int  # G = gates x H
    state: tuple[str, ...]  # the state tensors' names; the first is the layer's output h
    step: StepFn  # (gi, gh, this layer's state) -> its new state


CELLS: dict[str, Cell] = {
    "lstm": Cell(4, ("h", "c"), lstm),
    "gru": Cell(3, ("h",), gru),
    "rnn": Cell(1, ("h",), rnn),
}


@dataclass(frozen=True)
class Layer:
    w_ih: torch.Tensor | None  # (G, in); None for layer 0 when ``inputs`` already holds the projection
    b_ih: torch.Tensor | None  # (G,)
    w_hh: torch.Tensor  # (G, H)
    b_hh: torch.Tensor  # (G,)


@dataclass(frozen=True)
class StepWeights:
    """Everything the single-token step reads, as plain float32 tensors (no module, no training state)."""

    cell: str
    inputs: torch.Tensor  # (V, E): embedding rows, or (V, G): layer 0's input projection per token
    layers: tuple[Layer, ...]
    head: torch.Tensor  # (V, H)
    head_b: torch.Tensor  # (V,)

    @property
    def hidden_size(self) -> int:
        return self.layers[0].w_hh.shape[1]

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor by a flat name (``inputs``, ``l0.w_hh``, ``head``...), in step order."""
        out = {"inputs": self.inputs}
        for k, layer in enumerate(self.layers):
            for name in ("w_ih", "b_ih", "w_hh", "b_hh"):
                t = getattr(layer, name)
                if t is not None:
                    out[f"l{k}.{name}"] = t
        return {**out, "head": self.head, "head_b": self.head_b}

    @classmethod
    def from_tensors(cls, cell: str, flat: dict[str, torch.Tensor]) -> StepWeights:
        """The inverse of ``tensors``."""
        count = 1 + max(int(name[1:].split(".")[0]) for name in flat if name.startswith("l"))
        layers = tuple(
            Layer(flat.get(f"l{k}.w_ih"), flat.get(f"l{k}.b_ih"), flat[f"l{k}.w_hh"], flat[f"l{k}.b_hh"])
            for k in range(count)
        )
        return cls(cell, flat["inputs"], layers, flat["head"], flat["head_b"])


def unsupported(model: nn.Module, cell: str) -> str | None:
    """Why ``model`` cannot be exported, or None."""
    from textgen.models.lm import RecurrentLM

    if cell not in CELLS or not isinstance(model, RecurrentLM):
        return f"cell {cell!r} cannot be exported yet (export supports {', '.join(CELLS)})"
    return None


@torch.no_grad()
def step_weights(model: nn.Module) -> StepWeights:
    """The step's weights of a RecurrentLM (see the module docstring for the layer-0 lookup)."""
    cfg, rnn_ = model.cfg, model.rnn
    f32 = lambda t: t.detach().float().cpu().clone()  # noqa: E731
    v = cfg.vocab_size
    emb = model.embedding.weight if model.embedding is not None else None
    w0, b0 = rnn_.weight_ih_l0, rnn_.bias_ih_l0
    fold = emb is None or v * w0.shape[0] <= emb.numel() + w0.numel()  # the projection table is no bigger
    layers = []
    for k in range(cfg.layers):
        w_ih, b_ih = getattr(rnn_, f"weight_ih_l{k}"), getattr(rnn_, f"bias_ih_l{k}")
        w_hh, b_hh = getattr(rnn_, f"weight_hh_l{k}"), getattr(rnn_, f"bias_hh_l{k}")
        folded = k == 0 and fold
        layers.append(Layer(None if folded else f32(w_ih), None if folded else f32(b_ih), f32(w_hh), f32(b_hh)))
    # (V, G) per-token projections, or the (V, E) embedding
    inputs = (w0.t() if emb is None else emb @ w0.t()) + b0 if fold else emb
    return StepWeights(cfg.cell, f32(inputs), tuple(layers), f32(model.head.weight), f32(model.head.bias))


def step(w: StepWeights, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """tokens (n,) and the state (each (layers, n, H)) -> logits (n, V) and the new state tensors."""
    cell = CELLS[w.cell]
    x = w.inputs[tokens]  # (n, E) or (n, G)
    new: list[list[torch.Tensor]] = [[] for _ in state]
    for k, layer in enumerate(w.layers):
        mine = tuple(s[k] for s in state)  # (n, H) each
        gi = x if layer.w_ih is None else x @ layer.w_ih.t() + layer.b_ih  # (n, G)
        gh = mine[0] @ layer.w_hh.t() + layer.b_hh  # (n, G)
        out = cell.step(gi, gh, mine)
        for kept, s in zip(new, out):
            kept.append(s)
        x = out[0]  # (n, H)
    logits = x @ w.head.t() + w.head_b  # (n, V)
    return (logits, *(torch.stack(s) for s in new))
