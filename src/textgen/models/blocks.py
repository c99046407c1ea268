"""BlockLM: the skeleton the modern cells share, with a fast step; each cell supplies only its mixer.

    ids (B, T) -> embedding (-> E to H) -> [ x + mixer(norm(x)) ; x + feed-forward(norm(x)) ] x layers
               -> norm -> linear head -> logits (B, T, V)

A mixer is the only part that reads other time steps: a parallel scan (``mingru``, ``minlstm``),
a chunked matrix memory (``mlstm``) or a dilated convolution (``conv``). It has a training form
over a whole window from a carried state, and a step form over rows of state for decoding (a
``MixerStep``). Everything else here works one position at a time, so ``BlockStepper`` runs it
as matrix multiplies (``Matmul``: fp32, bf16 or int8) on the rows being decoded.

The model's state is each layer's mixer state, one layer after another (every tensor with the
rows on dim 1, as the protocol wants).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from textgen.config import ModelSpec
from textgen.models.protocol import Matmul, State, Stepper, check_precision, check_spec, tie_output


class MixerStep:
    """A mixer's single-token step over the first n rows of its state buffers (views of the stepper's)."""

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """x (n, H), the normalised input of the rows being decoded -> the mixer's output (n, H)."""
        raise NotImplementedError


class Mixer(nn.Module):
    """What a cell supplies: the sequence-mixing layer of one block, in a training form and a step form."""

    def init_state(self, rows: int, device: torch.device, dtype: torch.dtype) -> State:
        """This layer's zero state for ``rows`` sequences (rows on dim 1)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x (B, T, H) and this layer's state -> output (B, T, H) and the state after the last position."""
        raise NotImplementedError

    def stepper(self, state: State, capacity: int, precision: str) -> MixerStep:
        """A step over ``state`` (this layer's buffers, ``capacity`` rows), its matrices in ``precision``."""
        raise NotImplementedError

    def reset_gates(self) -> None:
        """Set the gates' initial biases (after PyTorch's default initialisation); none by default."""


SHORT_CONV = 4  # taps of the depthwise causal convolution in front of a recurrent mixer (as in Mamba and xLSTM)


class ShortConv(nn.Module):
    """y_t = c + w_0 * x_{t-3} + ... + w_3 * x_t per channel: a recurrent mixer's gates then read the last few
    tokens, not one (on Tiny Shakespeare it cut minGRU's loss after 150 steps from 1.90 to 1.82 nats).
    Its state is the last SHORT_CONV - 1 inputs, (3, rows, H)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(SHORT_CONV)  # nn.Conv1d's default initialisation for a depthwise kernel
        self.weight = nn.Parameter(torch.empty(SHORT_CONV, width).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(width).uniform_(-bound, bound))

    def init_state(self, rows: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(SHORT_CONV - 1, rows, self.weight.shape[1], device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, H) after the window (3, B, H) -> y (B, T, H) and the window after x."""
        seq = after_window(window, x)  # (B, 3 + T, H)
        T = x.shape[1]
        y = self.bias + sum(self.weight[j] * seq[:, j : j + T] for j in range(SHORT_CONV))
        return y, seq[:, -(SHORT_CONV - 1) :].transpose(0, 1)  # type: ignore[return-value]

    def step(self, x: torch.Tensor, window: Window) -> torch.Tensor:
        """x (n, H) -> y (n, H), the window moved on by x."""
        past = window.rows(x.shape[0])  # (3, n, H)
        y = torch.addcmul(self.bias, self.weight[-1], x)
        for j in range(SHORT_CONV - 1):
            y.addcmul_(self.weight[j], past[j])
        window.push(x)
        return y


def after_window(window: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A carried window of past inputs (W, B, H) and the new inputs x (B, T, H) as one sequence (B, W + T, H)."""
    return torch.cat([window.transpose(0, 1).to(x.dtype), x], 1)


class Window:
    """A stepper's buffer of each row's last W inputs, (W, capacity, H), oldest first, moved on one token at a time."""

    def __init__(self, buffer: torch.Tensor) -> None:
        self.buffer = buffer
        self.spare = buffer.new_zeros(buffer.shape[0] - 1, *buffer.shape[1:])

    def rows(self, n: int) -> torch.Tensor:
        return self.buffer[:, :n]  # (W, n, H)

    def push(self, x: torch.Tensor) -> None:
        """Drop the oldest input of the first n rows and append x (n, H)."""
        n = x.shape[0]
        window = self.buffer[:, :n]
        if len(window) > 1:  # through the spare buffer: the two ranges overlap
            spare = self.spare[:, :n]
            spare.copy_(window[1:])
            window[:-1] = spare
        window[-1] = x


class FeedForward(nn.Module):
    """H -> mult * H -> SiLU -> H, at every position (SiLU, not GELU: as good, and GELU's exact form costs
    about 0.2 ms a call on a single row on a CPU, which a decode step pays at every layer)."""

    def __init__(self, width: int, mult: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, mult * width)
        self.down = nn.Linear(mult * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.up(x)))  # (B, T, H)


class Block(nn.Module):
    """x + mixer(norm(x)), then x + feed-forward(norm(x)) (pre-norm residual, as in the paper's LM)."""

    def __init__(self, mixer: Mixer, width: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.mix_norm = nn.LayerNorm(width)
        self.mixer = mixer
        self.ffn_norm = nn.LayerNorm(width) if ffn_mult else None
        self.ffn = FeedForward(width, ffn_mult) if ffn_mult else None
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        y, state = self.mixer(self.mix_norm(x), state)  # (B, T, H)
        x = x + self.drop(y)
        if self.ffn is not None and self.ffn_norm is not None:
            x = x + self.drop(self.ffn(self.ffn_norm(x)))
        return x, state


class BlockLM(nn.Module):
    """A stack of residual blocks around a cell's mixer (see the module docstring).

    Subclasses set ``kind`` (the name ``summary`` shows) and ``make_mixer(cfg, layer)``."""

    kind = "Block"

    def __init__(self, cfg: ModelSpec) -> None:
        super().__init__()
        check_spec(cfg)
        self.cfg = cfg
        v, h = cfg.vocab_size, cfg.hidden_size
        e = cfg.embedding_dim or h  # a one-hot input times a matrix is a table of h per token
        self.embedding = nn.Embedding(v, e)
        self.embed_proj = nn.Linear(e, h, bias=False) if e != h else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(self.make_mixer(cfg, layer), h, cfg.ffn_mult, cfg.dropout) for layer in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(h)
        self.head = nn.Linear(h, v)
        self._init_weights()
        if cfg.tie_weights:
            tie_output(self.head, self.embedding)
        # Where each layer's tensors sit in the model's state tuple.
        counts = [len(b.mixer.init_state(1, torch.device("meta"), torch.float32)) for b in self.blocks]
        bounds = [sum(counts[:i]) for i in range(len(counts) + 1)]
        self.state_slices = [slice(a, b) for a, b in zip(bounds, bounds[1:])]

    def make_mixer(self, cfg: ModelSpec, layer: int) -> Mixer:
        raise NotImplementedError

    def _init_weights(self) -> None:
        """PyTorch's default initialisation, then each mixer's gate biases. (GPT-2's N(0, 0.02) with depth-scaled
        residual outputs learnt several times slower in the first hundred steps on Tiny Shakespeare.)"""
        for block in self.blocks:
            block.mixer.reset_gates()

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)  # (B, T, E)
        return self.embed_proj(x) if self.embed_proj is not None else x  # (B, T, H)

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """ids (B, T); state from ``init_state`` or a previous call (None means zeros) -> logits (B, T, V), state."""
        if state is None:
            state = self.init_state(ids.shape[0], ids.device)
        x = self.drop(self.embed(ids))  # (B, T, H)
        new: list[torch.Tensor] = []
        for block, rows in zip(self.blocks, self.state_slices):
            x, layer_state = block(x, state[rows])
            new.extend(layer_state)
        return self.head(self.drop(self.norm(x))), tuple(new)  # (B, T, V)

    def init_state(self, rows: int, device: torch.device | str | None = None) -> State:
        p = self.head.weight
        dev = torch.device(device) if device is not None else p.device
        return tuple(t for b in self.blocks for t in b.mixer.init_state(rows, dev, p.dtype))

    def flatten_parameters(self) -> None:
        """Nothing to lay out: the weights are plain matrices."""

    def stepper(self, capacity: int, precision: str = "fp32", cuda_graph: bool = True) -> BlockStepper:
        return BlockStepper(self, capacity, precision, cuda_graph)

    def parts(self) -> list[tuple[str, str, nn.Module, int]]:
        """The named parts ``summary`` lists: (name, kind, module, output width)."""
        cfg = self.cfg
        e = self.embedding.embedding_dim
        out: list[tuple[str, str, nn.Module, int]] = [("embedding", "Embedding", self.embedding, e)]
        if self.embed_proj is not None:
            out.append(("embed_proj", "Linear", self.embed_proj, cfg.hidden_size))
        for i, block in enumerate(self.blocks):
            out.append((f"block_{i}", f"{self.kind} block", block, cfg.hidden_size))
        out += [("norm", "LayerNorm", self.norm, cfg.hidden_size), ("head", "Linear", self.head, cfg.vocab_size)]
        return out


class StepLinear:
    """out = bias + x @ W^T into a preallocated buffer, the multiply in the stepper's precision."""

    def __init__(self, layer: nn.Linear, capacity: int, precision: str) -> None:
        self.matmul = Matmul(layer.weight.detach().t(), capacity, precision)
        w = layer.weight
        bias = layer.bias.detach() if layer.bias is not None else w.new_zeros(w.shape[0])
        self.bias = bias.expand(capacity, w.shape[0])
        self.out = w.new_zeros(capacity, w.shape[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return self.matmul.add_to(self.out[:n].copy_(self.bias[:n]), x)  # (n, out)


class BlockStepper(Stepper):
    """``BlockLM``'s fast step: an embedding row lookup, then per block the norms and feed-forward as
    matrix multiplies in ``precision`` and the cell's ``MixerStep``, then the head (fp32 under int8,
    as for the LSTM: it is small and int8 would cost accuracy there). Built from a snapshot of the
    weights (inference only, no dropout): build a new one after they change."""

    @torch.no_grad()
    def __init__(self, model: BlockLM, capacity: int, precision: str = "fp32", cuda_graph: bool = True) -> None:
        p = model.head.weight
        super().__init__(capacity, p.device, cuda_graph)
        check_precision(precision, p.device)
        self.state = model.init_state(capacity, p.device)
        self.table = model.embed(torch.arange(model.cfg.vocab_size, device=p.device)).detach()  # (V, H)
        self.x = torch.zeros(capacity, model.cfg.hidden_size, device=p.device, dtype=p.dtype)
        self.layers = []
        for block, rows in zip(model.blocks, model.state_slices):
            mixer = block.mixer.stepper(self.state[rows], capacity, precision)  # type: ignore[operator]
            ffn = None
            if block.ffn is not None:
                ffn = (StepLinear(block.ffn.up, capacity, precision), StepLinear(block.ffn.down, capacity, precision))
            self.layers.append((block.mix_norm, mixer, block.ffn_norm, ffn))
        self.norm = model.norm
        self.head = StepLinear(model.head, capacity, "fp32" if precision == "int8" else precision)

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[0]
        x = torch.index_select(self.table, 0, tokens, out=self.x[:n])  # (n, H)
        for mix_norm, mixer, ffn_norm, ffn in self.layers:
            x += mixer.step(_norm(mix_norm, x))
            if ffn is not None:
                up, down = ffn
                x += down(F.silu(up(_norm(ffn_norm, x))))
        return self.head(_norm(self.norm, x))  # (n, V)


def _norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
