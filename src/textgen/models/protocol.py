"""The model protocol every architecture implements, and the rows of decode state it steps.

A language model (``LanguageModel``) has three entry points:

- ``init_state(rows)``: the zero state of ``rows`` sequences;
- ``forward(ids, state) -> (logits, state)``: training, validation and prompts, a whole window at once;
- ``stepper(capacity, precision) -> Stepper``: a fast single-token step over rows of state, for decoding.

A state is a tuple of tensors, each with the rows (sequences) on dim 1, e.g. an LSTM's
``(h, c)``, each ``(layers, rows, hidden)``. Carrying it across batches, cutting it into
micro-batch bands, saving it in a checkpoint, reordering beams and packing server rows are
therefore the same few functions here whatever the architecture.

A ``Stepper`` holds ``capacity`` rows of state in preallocated buffers::

    rows   0    1    2    3    4    5    6    7
         [ A0 | A1 | B0 | C0 |  - |  - |  - |  - ]     step(tokens) advances rows 0..n-1 (n = len(tokens))
    take([0, 0, 3]):                                   rows 0..2 become copies of old rows 0, 0 and 3 (beams)
         [ A0 | A0 | C0 |  ...                         copy(src, dst): one row over another (packing)

``write(rows, state)`` puts a prompt's state (from ``forward``) into some rows, ``read(rows)`` gets
it back. A new architecture implements ``_step`` over views of its buffers and inherits the rest;
one with no fast step of its own can use ``ReferenceStepper``, which calls ``forward`` per token.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from textgen.config import ModelSpec
from textgen.errors import ConfigError

State = tuple[torch.Tensor, ...]  # every tensor has the rows on dim 1
PRECISIONS = ("fp32", "bf16", "int8")


def check_spec(cfg: ModelSpec) -> None:
    """What every model checks before building: a valid shape, and a vocabulary set from the data."""
    cfg.validate()
    if cfg.vocab_size < 1:
        raise ValueError(f"vocab_size must be set, got {cfg.vocab_size}")


def as_state(state: torch.Tensor | Sequence[torch.Tensor] | None) -> State | None:
    """A state as a tuple (a single tensor, or a list as checkpoints store it, becomes one)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return (state,)
    return tuple(state)


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: State) -> State:
    return tuple(fn(s) for s in state)


def detach_state(state: State | None) -> State | None:
    """Cut the graph at a batch boundary (truncated BPTT) but keep the values."""
    return None if state is None else map_state(torch.Tensor.detach, state)


def select_rows(state: State, index: torch.Tensor | slice) -> State:
    """Rows ``index`` of every tensor of the state (dim 1)."""
    if isinstance(index, slice):
        return map_state(lambda s: s[:, index], state)
    return map_state(lambda s: s.index_select(1, index), state)


def concat_rows(states: Sequence[State]) -> State:
    """States of several row bands side by side (dim 1)."""
    return tuple(torch.cat(parts, dim=1) for parts in zip(*states))


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout) for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@runtime_checkable
class LanguageModel(Protocol):
    """What the trainer, the decoder, the server and beam search need of a language model."""

    def init_state(self, rows: int, device: torch.device | str | None = None) -> State:
        """Zero state for ``rows`` sequences."""

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """ids (B, T) -> logits (B, T, V) and the state after the last position (None means zeros)."""

    def stepper(self, capacity: int, precision: str = "fp32") -> Stepper:
        """A fast single-token step over ``capacity`` rows, its logits within rounding of ``forward``'s."""

    def flatten_parameters(self) -> None:
        """Lay weights out for the device after loading or moving them (cuDNN); may do nothing."""


def tie_output(head: nn.Linear, embedding: nn.Embedding) -> None:
    """Make ``embedding``'s table the output layer's weights, started as an output layer should be: small,
    U(-0.1, 0.1) with a zero bias (Zaremba et al. 2014; pytorch/examples' word model). nn.Embedding's own
    N(0, 1) would start the logits at the scale of sqrt(H): a word model at the example's settings then
    ended 5% worse than the example in the same minutes (docs/recipe.md)."""
    nn.init.uniform_(embedding.weight, -0.1, 0.1)
    nn.init.zeros_(head.bias)
    head.weight = embedding.weight


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"decode precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and device.type != "cpu":
        raise ConfigError(f"decode precision int8 runs on the CPU only, not on {device.type}; use bf16 there")


def _int8_pack(w: torch.Tensor) -> object:
    """fbgemm's packed int8 weight, one scale per output row, for ``torch.ops.quantized.linear_dynamic``.

    ``w`` is (out, in) and gains two zero input columns: ``Matmul`` feeds them +1 and -1 so that
    every call quantizes its inputs on the same fixed grid (see ``Matmul``)."""
    try:
        w = torch.cat([w.float().cpu(), w.new_zeros(w.shape[0], 2).float().cpu()], dim=1)
        scales = (w.abs().amax(1) / 127).clamp_min(1e-12).double()
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # the quantized-tensor API warns that it will move to torchao
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(w, scales, zero, 0, torch.qint8)
            return torch.ops.quantized.linear_prepack(q, None)
    except (AttributeError, RuntimeError) as e:
        raise ConfigError(
            f"decode precision int8 needs PyTorch's quantized CPU kernels, which this build lacks: {e}"
        ) from None


def int8_available() -> bool:
    """Whether this PyTorch build has the quantized CPU matmul that int8 decoding uses."""
    try:
        _int8_pack(torch.ones(2, 2))
    except ConfigError:
        return False
    return True


class Matmul:
    """Adds ``x @ w`` into an output buffer in one precision, for up to ``capacity`` rows of ``x``.

    - fp32 is exact;
    - bf16 rounds x and w to bfloat16: half the bytes read per step;
    - int8 (CPU) uses fbgemm's dynamically quantized matmul: a quarter of the bytes. fbgemm picks
      one quantization grid for the whole input, which would make a row's result depend on the
      other rows of the batch. So two extra input columns (with zero weights) hold +1 and -1, and
      each row is scaled to a largest magnitude of 1 (and the output row scaled back): the grid is
      then always [-1, 1], every row is quantized alone, and its result is the same batched or
      not. ``bounded=True`` says the inputs already lie in [-1, 1] (a recurrent cell's hidden
      state), so they go in unscaled.
    """

    def __init__(self, w: torch.Tensor, capacity: int, precision: str, bounded: bool = False) -> None:
        self.precision, self.bounded = precision, bounded  # w: (in, out)
        dev = w.device
        if precision == "int8":
            self.packed = _int8_pack(w.t())
            self.x = torch.zeros(capacity, w.shape[0] + 2, device=dev)
            self.x[:, -2], self.x[:, -1] = 1.0, -1.0
            self.scale = torch.zeros(capacity, 1, device=dev)
        elif precision == "bf16":
            self.w = w.to(torch.bfloat16)
            self.x = torch.zeros(capacity, w.shape[0], device=dev, dtype=torch.bfloat16)
            self.out = torch.zeros(capacity, w.shape[1], device=dev, dtype=torch.bfloat16)
        else:
            self.w = w.contiguous()  # a batch-1 matmul reads a contiguous (in, out) copy ~1.7x faster than a view

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """out (n, out) += x (n, in) @ w; returns ``out``."""
        if self.precision == "fp32":
            return out.addmm_(x, self.w)
        n = x.shape[0]
        if self.precision == "bf16":
            self.x[:n].copy_(x)
            return out.add_(torch.mm(self.x[:n], self.w, out=self.out[:n]))
        xs = self.x[:n]
        if self.bounded:
            xs[:, :-2] = x
            return out.add_(torch.ops.quantized.linear_dynamic(xs, self.packed, True))
        scale = torch.amax(x.abs(), dim=1, keepdim=True, out=self.scale[:n]).clamp_(min=1e-30)  # (n, 1)
        torch.div(x, scale, out=xs[:, :-2])
        return out.addcmul_(torch.ops.quantized.linear_dynamic(xs, self.packed, True), scale)

    def set_to(self, out: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """out (n, out) = bias + x @ w (one fused call in fp32)."""
        if self.precision == "fp32":
            return torch.addmm(bias, x, self.w, out=out)
        return self.add_to(out.copy_(bias), x)


class Stepper:
    """Rows of decode state and a fast step over the first n of them (see the module's diagram).

    Subclasses set ``self.state`` (a State of ``capacity`` rows, rows on dim 1), optionally
    ``self.extras`` (per-row tensors with the rows on dim 0, such as a translation model's encoder
    outputs), ``self.logits`` (capacity, V), and implement ``_step(tokens)`` for n = len(tokens)
    rows, returning ``self.logits[:n]`` filled. On CUDA each batch size's step is captured once
    as a CUDA graph and replayed (``cuda_graph=False`` turns that off).
    """

    state: State
    extras: list[torch.Tensor]
    logits: torch.Tensor

    def __init__(self, capacity: int, device: torch.device, cuda_graph: bool = True) -> None:
        if capacity < 1:
            raise ValueError(f"a stepper needs at least one row, got {capacity}")
        self.capacity, self.device = capacity, device
        self.extras = []
        self.use_graphs = device.type == "cuda" and cuda_graph
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    # -- the step ---------------------------------------------------------------------------
    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (n,) ids for rows 0..n-1 -> their (n, V) logits (a buffer the next step overwrites).

        No gradients: the buffers and weight copies were made without them."""
        if not self.use_graphs:
            return self._step(tokens)
        n = tokens.shape[0]
        if n not in self.graphs:
            self.graphs[n] = self._capture(n)
        graph, fed, out = self.graphs[n]
        fed.copy_(tokens)
        graph.replay()
        return out

    def _capture(self, n: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        """Record the step of n rows as a CUDA graph: each later step is one replay, not dozens of launches.

        Capture runs the step, so the state is saved first and put back afterwards."""
        fed = torch.zeros(n, dtype=torch.long, device=self.device)
        saved = [t.clone() for t in self._tensors()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(2):
                self._step(fed)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads' CUDA calls (NCCL's watchdog during a torchrun) stay out of the capture.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = self._step(fed)
        for t, keep in zip(self._tensors(), saved):
            t.copy_(keep)
        return graph, fed, out

    # -- rows ---------------------------------------------------------------------------------
    def _tensors(self) -> list[torch.Tensor]:
        return [*self.state, *self.extras]

    @torch.no_grad()
    def write(self, rows: slice | Sequence[int], state: State) -> None:
        """Put ``state`` (from ``forward``: one row, repeated, or one per row) into ``rows``."""
        index = _rows(rows, self.device)
        for buf, s in zip(self.state, state):
            s = s.to(buf.dtype)
            buf[:, index] = s if s.shape[1] != 1 else s.expand(-1, _count(rows, self.capacity), *s.shape[2:])

    def read(self, rows: slice | Sequence[int]) -> State:
        """A copy of ``rows``' state, as ``forward`` returns it."""
        index = _rows(rows, self.device)
        return tuple(buf[:, index].clone() for buf in self.state)

    @torch.no_grad()
    def take(self, index: torch.Tensor) -> None:
        """Rows 0..k-1 become copies of the old rows ``index`` (k = len(index)): beams reordered, rows picked."""
        k = index.shape[0]
        for buf in self.state:
            buf[:, :k] = buf.index_select(1, index)
        for buf in self.extras:
            buf[:k] = buf.index_select(0, index)

    @torch.no_grad()
    def copy(self, src: int, dst: int) -> None:
        """Row ``dst`` becomes a copy of row ``src`` (its old content is freed)."""
        for buf in self.state:
            buf[:, dst] = buf[:, src]
        for buf in self.extras:
            buf[dst] = buf[src]


def _rows(rows: slice | Sequence[int], device: torch.device) -> slice | torch.Tensor:
    return rows if isinstance(rows, slice) else torch.tensor(list(rows), dtype=torch.long, device=device)


def _count(rows: slice | Sequence[int], capacity: int) -> int:
    return len(range(capacity)[rows]) if isinstance(rows, slice) else len(rows)


class StepperPool:
    """Steppers kept for reuse: building one copies (and for int8 quantizes) every weight, which costs
    more than hundreds of steps of a large model, so a stepper is built once per model, capacity and
    precision and lent out again while the weights are unchanged (PyTorch counts in-place changes in
    each tensor's version). A stepper already lent out is never lent twice: a second borrower gets a
    new one."""

    def __init__(self) -> None:
        self.kept: weakref.WeakKeyDictionary[object, dict[tuple, tuple[int, Stepper]]] = weakref.WeakKeyDictionary()
        self.lent: set[int] = set()
        self.lock = threading.Lock()

    def borrow(self, model: LanguageModel, capacity: int, precision: str) -> Stepper:
        version = sum(p._version for p in model.parameters())  # type: ignore[attr-defined]
        key = (capacity, precision)
        with self.lock:
            kept = self.kept.setdefault(model, {})
            found = kept.get(key)
            if found is not None and found[0] == version and id(found[1]) not in self.lent:
                self.lent.add(id(found[1]))
                return found[1]
        stepper = model.stepper(capacity, precision)
        with self.lock:
            if key not in kept or id(kept[key][1]) not in self.lent:
                kept[key] = (version, stepper)
            self.lent.add(id(stepper))
        return stepper

    def give_back(self, stepper: Stepper) -> None:
        with self.lock:
            self.lent.discard(id(stepper))


STEPPERS = StepperPool()


class ReferenceStepper(Stepper):
    """A step that calls the model's ``forward`` on one token per row: exact, and slow on a CPU (per-call
    overhead). The reference the fast steppers are tested and benchmarked against, and a working
    step for any architecture that has none of its own."""

    def __init__(self, model: LanguageModel, capacity: int, device: torch.device) -> None:
        super().__init__(capacity, device, cuda_graph=False)
        self.model = model
        self.state = model.init_state(capacity, device)
        self.logits = torch.zeros(0)

    @torch.no_grad()
    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[0]
        logits, state = self.model.forward(tokens[:, None], select_rows(self.state, slice(0, n)))  # (n, 1, V)
        for buf, s in zip(self.state, state):
            buf[:, :n] = s
        return logits[:, -1]
