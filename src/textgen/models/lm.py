"""RecurrentLM: embedding (or one-hot) -> stacked LSTM/GRU/RNN -> linear logits at every step.

Model code only: no I/O, no sampling. The recurrent core is ``nn.LSTM``/``nn.GRU``/``nn.RNN`` so
cuDNN (GPU) and oneDNN (CPU) run it in training; ``RecurrentStepper`` is its fast decode step
(``models/protocol.py``): calling ``nn.LSTM`` once per token spends most of its time in per-call
overhead on a CPU, so the step instead

- precomputes each vocabulary entry's layer-0 input projection once (embedding x input weights +
  biases), so the first layer's input is a row lookup;
- runs each cell as fused matrix multiplies into preallocated buffers, with the gate
  nonlinearities applied in place;

and an fp32 step allocates nothing. It holds transposed copies of the weights (inference only, no
dropout): build a new one after the weights change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from textgen.config import ModelSpec
from textgen.models.protocol import Matmul, State, Stepper, check_precision, check_spec, tie_output

RNN_CLASSES: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


class RecurrentLM(nn.Module):
    """A recurrent language model; ``forward`` returns logits for every position and the new state."""

    def __init__(self, cfg: ModelSpec) -> None:
        super().__init__()
        check_spec(cfg)
        self.cfg = cfg
        v, e, h = cfg.vocab_size, cfg.embedding_dim, cfg.hidden_size
        self.embedding = nn.Embedding(v, e) if e > 0 else None
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = RNN_CLASSES[cfg.cell](
            input_size=e if e > 0 else v,
            hidden_size=h,
            num_layers=cfg.layers,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(h, v)
        if cfg.tie_weights:
            assert self.embedding is not None
            tie_output(self.head, self.embedding)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) to recurrent inputs (B, T, E), or one-hot vectors (B, T, V)."""
        if self.embedding is None:
            return F.one_hot(x, self.cfg.vocab_size).to(self.head.weight.dtype)
        return self.embedding(x)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x: (B, T) token ids; state: from ``init_state`` or a previous call (None means zeros)."""
        inputs = self.drop(self.embed(x))  # (B, T, E)
        out, hidden = self.rnn(inputs, rnn_state(state))  # (B, T, H)
        return self.head(self.drop(out)), protocol_state(hidden)  # (B, T, V)

    def flatten_parameters(self) -> None:
        """Lay the recurrent weights out contiguously for cuDNN (after loading or moving them)."""
        self.rnn.flatten_parameters()

    def init_state(self, rows: int, device: torch.device | str | None = None) -> State:
        """Zero hidden (and cell) state, (layers, rows, H) each."""
        p = self.head.weight
        h = torch.zeros(self.cfg.layers, rows, self.cfg.hidden_size, device=device or p.device, dtype=p.dtype)
        return (h, h.clone()) if self.cfg.cell == "lstm" else (h,)

    def stepper(self, capacity: int, precision: str = "fp32", cuda_graph: bool = True) -> RecurrentStepper:
        return RecurrentStepper(self, capacity, precision, cuda_graph)


def rnn_state(state: State | None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
    """The protocol's tuple as nn.LSTM (a pair) or nn.GRU/nn.RNN (one tensor) take it."""
    if state is None:
        return None
    return (state[0], state[1]) if len(state) == 2 else state[0]


def protocol_state(hidden: torch.Tensor | tuple[torch.Tensor, ...]) -> State:
    return tuple(hidden) if isinstance(hidden, tuple) else (hidden,)


class RecurrentCells:
    """One time step of a stack of ``nn.LSTM``/``nn.GRU``/``nn.RNN`` layers over preallocated buffers.

    Layer 0's input projection comes from ``table`` (V, G): each token's embedding times the input
    weights, plus the biases, precomputed. The state lives in ``h`` (and ``c``): (layers, capacity, H).
    An LSTM's gates are kept in the order i f o g (PyTorch's is i f g o), so that one sigmoid covers three.
    The views of the buffers that a step over n rows uses are made once per n. Shared by the language
    model's step and the translation decoder's.
    """

    @torch.no_grad()
    def __init__(
        self, rnn: nn.RNNBase, cell: str, inputs: torch.Tensor, capacity: int, precision: str, dtype: torch.dtype
    ) -> None:
        self.cell, self.layers, h = cell, rnn.num_layers, rnn.hidden_size
        dev = inputs.device
        gates = GATES[cell] * h
        order = _gate_order(cell, h, dev)
        # Biases folded into the input side; a GRU keeps its hidden bias apart (it is gated by r).
        self.w_ih: list[Matmul | None] = []
        self.w_hh: list[Matmul] = []
        self.b_in, self.b_hh = [], []
        for layer in range(self.layers):
            w_ih, w_hh = (getattr(rnn, f"weight_{k}_l{layer}")[order] for k in ("ih", "hh"))  # (G, in), (G, H)
            b_ih, b_hh = (getattr(rnn, f"bias_{k}_l{layer}")[order] for k in ("ih", "hh"))
            b_in = b_ih if cell == "gru" else b_ih + b_hh
            if layer == 0:  # (V, G): each token's layer-0 input projection, looked up by id
                self.table = torch.addmm(b_in, inputs, w_ih.t())
            # Their inputs are hidden states, which lie in [-1, 1] (tanh, o * tanh, GRU's mixes of them).
            self.w_ih.append(Matmul(w_ih.t(), capacity, precision, bounded=True) if layer else None)
            self.w_hh.append(Matmul(w_hh.t(), capacity, precision, bounded=True))
            self.b_in.append(b_in.expand(capacity, gates))
            self.b_hh.append(b_hh.expand(capacity, gates))
        zeros = lambda *shape: torch.zeros(*shape, device=dev, dtype=dtype)  # noqa: E731
        self.h = zeros(self.layers, capacity, h)
        self.c = zeros(self.layers, capacity, h) if cell == "lstm" else None
        self.gi = zeros(self.layers, capacity, gates)
        self.gh = zeros(self.layers, capacity, gates) if cell == "gru" else None
        self.tmp = zeros(capacity, h)
        self.views: dict[int, list[dict[str, torch.Tensor]]] = {}

    @property
    def state(self) -> State:
        return (self.h, self.c) if self.c is not None else (self.h,)

    def _views(self, n: int) -> list[dict[str, torch.Tensor]]:
        """Each layer's buffers for rows 0..n-1, sliced once: slicing costs a step more than some of its math."""
        hs, out = self.h.shape[2], []
        for layer in range(self.layers):
            gi = self.gi[layer, :n]  # (n, G)
            v = {"gi": gi, "h": self.h[layer, :n], "below": self.h[layer - 1, :n], "b_in": self.b_in[layer][:n]}
            if self.cell == "lstm":  # i f o g
                v.update(sig=gi[:, : 3 * hs], i=gi[:, :hs], f=gi[:, hs : 2 * hs], o=gi[:, 2 * hs : 3 * hs])
                v.update(g=gi[:, 3 * hs :], c=self.c[layer, :n], tmp=self.tmp[:n])  # type: ignore[index]
            elif self.cell == "gru":  # r z n
                gh = self.gh[layer, :n]  # type: ignore[index]
                v.update(gh=gh, b_hh=self.b_hh[layer][:n], rz=gi[:, : 2 * hs], gh_rz=gh[:, : 2 * hs])
                v.update(r=gi[:, :hs], z=gi[:, hs : 2 * hs], new=gi[:, 2 * hs :], gh_n=gh[:, 2 * hs :])
            out.append(v)
        self.views[n] = out
        return out

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Advance rows 0..n-1 on ``tokens`` (n,); returns the top layer's h (n, H)."""
        n = tokens.shape[0]
        views = self.views.get(n) or self._views(n)
        for layer, v in enumerate(views):
            gi, h = v["gi"], v["h"]
            if layer == 0:
                torch.index_select(self.table, 0, tokens, out=gi)
            else:
                gi.copy_(v["b_in"])
                self.w_ih[layer].add_to(gi, v["below"])  # type: ignore[union-attr]
            if self.cell == "lstm":
                self.w_hh[layer].add_to(gi, h)
                v["sig"].sigmoid_()  # i, f, o
                c, g = v["c"], v["g"].tanh_()
                c.mul_(v["f"]).addcmul_(v["i"], g)  # c = f*c + i*g
                torch.mul(v["o"], torch.tanh(c, out=v["tmp"]), out=h)  # h = o * tanh(c)
            elif self.cell == "gru":
                gh = v["gh"]
                gh.copy_(v["b_hh"])
                self.w_hh[layer].add_to(gh, h)
                v["rz"].add_(v["gh_rz"]).sigmoid_()  # r, z
                new = v["new"].addcmul_(v["r"], v["gh_n"]).tanh_()  # n = tanh(i_n + r*h_n)
                h.sub_(new).mul_(v["z"]).add_(new)  # h = (1 - z)*n + z*h
            else:
                self.w_hh[layer].add_to(gi, h)
                h.copy_(gi.tanh_())
        return views[-1]["h"]


def _gate_order(cell: str, h: int, device: torch.device) -> torch.Tensor:
    """The rows of PyTorch's gate-stacked weights in the step's order: an LSTM's i f g o become i f o g."""
    order = torch.arange(GATES[cell] * h, device=device)
    return torch.cat([order[: 2 * h], order[3 * h :], order[2 * h : 3 * h]]) if cell == "lstm" else order


class RecurrentStepper(Stepper):
    """``RecurrentLM``'s fast step: the cells, then the output layer (see the module docstring)."""

    @torch.no_grad()
    def __init__(self, model: RecurrentLM, capacity: int, precision: str = "fp32", cuda_graph: bool = True) -> None:
        p = model.head.weight
        super().__init__(capacity, p.device, cuda_graph)
        check_precision(precision, p.device)
        cfg = model.cfg
        inputs = (
            model.embedding.weight
            if model.embedding is not None
            else torch.eye(cfg.vocab_size, device=p.device, dtype=p.dtype)
        )
        self.cells = RecurrentCells(model.rnn, cfg.cell, inputs, capacity, precision, p.dtype)
        self.state = self.cells.state
        # The output layer is small; int8 would cost accuracy for no speed, so it stays fp32 there.
        self.head = Matmul(model.head.weight.t(), capacity, "fp32" if precision == "int8" else precision)
        self.head_b = model.head.bias.expand(capacity, cfg.vocab_size)
        self.logits = torch.zeros(capacity, cfg.vocab_size, device=p.device, dtype=p.dtype)

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[0]
        top = self.cells.step(tokens)  # (n, H)
        return self.head.set_to(self.logits[:n], self.head_b[:n], top)  # (n, V)
