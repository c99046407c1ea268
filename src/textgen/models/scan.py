"""A diagonal linear recurrence over a whole window at once: h_t = a_t * h_{t-1} + b_t, no loop over time.

Heinsen's log-space method: with the cumulative sum A_t = log a_1 + ... + log a_t,

    h_t = exp(A_t) * (h_0 + sum_{s <= t} b_s / exp(A_s))

so a window needs only cumulative sums, exponentials and products. (The paper's log-sum-exp form,
``torch.logcumsumexp``, is ~10x slower on a CPU than a cumulative sum.) 1 / exp(A_s) leaves fp32's
range once the decay passes ~88 nats, so the window is cut into chunks of at most ``CHUNK`` steps,
each summed from its own start; with every log a_t at least ``LOG_DECAY_FLOOR`` a chunk spans at
most 8 * 8 = 64 nats, inside fp32 both ways (e^64 ~ 6e27)::

    t:       1 ... 8 | 9 ... 16 | 17 ... 24     within a chunk: a cumulative sum (a tiny matmul)
    chunk:      0    |    1     |     2         across chunks: the state entering each chunk,
                                                 by doubling (log2 K steps over K chunk summaries)

The backward pass is the same kind of recurrence run backwards, so ``linear_scan`` has its own
autograd function (two scans and a few products) rather than recording a few dozen small ops.
Cells clamp their log decay at ``LOG_DECAY_FLOOR`` in both forms (the parallel scan here and the
one-step update of their steppers), so the two compute the same thing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from textgen.models.blocks import Mixer, MixerStep, ShortConv, StepLinear, Window
from textgen.models.protocol import State

CHUNK = 8  # steps per chunk
LOG_DECAY_FLOOR = -8.0  # a_t >= e^-8 ~ 3.4e-4: a chunk's decay stays within 8 * 8 = 64 nats


def linear_scan(log_a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h (B, T, H) with h_t = exp(log_a_t) * h_{t-1} + b_t from h0 (B, H), in fp32.

    ``log_a`` (B, T, H) must lie in [LOG_DECAY_FLOOR, 0]; ``b`` (B, T, H) may have any sign."""
    with torch.autocast(log_a.device.type, enabled=False):
        return _LinearScan.apply(log_a.float(), b.float(), h0.float())


class _LinearScan(torch.autograd.Function):
    """Forward: the scan. Backward: with g_t = dL/dh_t (through every later step) and g'_t = a_t g_t,
    g'_t = a_t g'_{t+1} + a_t dL_t/dh_t, the same recurrence run from the end; then dL/db_t = g_t,
    dL/dlog a_t = g_t a_t h_{t-1} = g_t (h_t - b_t) and dL/dh_0 = g'_1."""

    @staticmethod
    def forward(ctx, log_a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h = _scan(log_a, b, h0)
        ctx.save_for_backward(log_a, b, h)
        return h

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        log_a, b, h = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            a = log_a.exp()  # (B, T, H)
            g = _scan(log_a, a * grad.to(a.dtype), torch.zeros_like(h[:, 0]), reverse=True)  # (B, T, H): g'
            first = g[:, 0].clone()  # dL/dh_0
            g.div_(a)  # g'/a = g = dL/db
            return g * (h - b), g, first


def _scan(log_a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """The recurrence's values (no autograd): chunked cumulative sums, then the chunks' entry states.

    ``reverse`` runs it from the end, h_t = a_t h_{t+1} + b_t with h0 after the last step."""
    B, T, H = b.shape
    c = chunk_length(T, CHUNK)
    chunks = -(-T // c)
    pad = chunks * c - T
    if pad:  # a = 1, b = 0 after the end: the state just carries through
        log_a, b = F.pad(log_a, (0, 0, 0, pad)), F.pad(b, (0, 0, 0, pad))
    la, bb = log_a.reshape(B, chunks, c, H), b.reshape(B, chunks, c, H)
    ones = torch.ones(c, c, device=b.device, dtype=b.dtype)
    side = ones.triu() if reverse else ones.tril()  # side[t, s] = 1 where s comes before t in the scan
    e = torch.matmul(side, la).exp_()  # (B, K, C, H): decay from the chunk's start through t
    u = torch.matmul(side, bb / e)  # (B, K, C, H): sum of b_s / exp(A_s)
    last = 0 if reverse else -1  # the chunk's last step, in the scan's order
    decay = e[:, :, last, None]  # (B, K, 1, H): the whole chunk's decay
    own = u[:, :, last, None] * decay  # (B, K, 1, H): the chunk's own final state from zero
    if reverse:  # chunks in the scan's order
        decay, own = decay.flip(1), own.flip(1)
    after = chunk_states(decay, own, h0[:, None])  # (B, K, 1, H): the state after each chunk
    entry = torch.cat([h0[:, None, None], after[:, :-1]], 1)  # (B, K, 1, H): the state entering each chunk
    h = u.add_(entry.flip(1) if reverse else entry).mul_(e)  # (B, K, C, H)
    return h.reshape(B, chunks * c, H)[:, :T]


def chunk_length(steps: int, most: int) -> int:
    """Steps per chunk: a divisor of ``steps`` from ``most`` down to half of it (no padding), else ``most``."""
    for c in range(min(most, steps), most // 2 - 1, -1):
        if steps % c == 0:
            return c
    return most


def chunk_states(decay: torch.Tensor, own: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """The state after each of K chunks, (B, K, ...), from each chunk's decay (broadcast against ``own``), its
    own final state from a zero start ``own`` (B, K, ...) and the state before the first, ``start`` (B, ...).

    Chunk k ends in S_k = decay_k * S_{k-1} + own_k: a recurrence over K chunks, solved by doubling
    (after the step with shift 2^j each S_k covers the 2^(j+1) chunks up to k). Autograd-safe (no in-place)."""
    K = decay.shape[1]
    S = torch.cat([own[:, :1] + decay[:, :1] * start[:, None], own[:, 1:]], 1)
    D = decay
    shift = 1
    while shift < K:
        S = torch.cat([S[:, :shift], S[:, shift:] + D[:, shift:] * S[:, :-shift]], 1)
        D = torch.cat([D[:, :shift], D[:, shift:] * D[:, :-shift]], 1)
        shift *= 2
    return S


class ScanMixer(Mixer):
    """A mixer whose recurrence is ``linear_scan``, its gates from the input alone (Feng et al. 2024):

        u = short_conv(x)    pre_t = W u_t + c    log a_t, b_t = gates(pre_t)    h_t = a_t * h_{t-1} + b_t    y = out(h)

    Training runs the scan over the window; the step runs the same ``gates`` and one update per token.
    Subclasses set ``inputs`` (pre-activations per channel) and ``gates``.
    State: h (1, rows, H) and the short convolution's window (3, rows, H)."""

    inputs = 2

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.short = ShortConv(width)
        self.proj = nn.Linear(width, self.inputs * width)
        self.out = nn.Linear(width, width)

    def gates(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-activations (..., inputs * H), fp32 -> log a (in [LOG_DECAY_FLOOR, 0]) and b, (..., H) each."""
        raise NotImplementedError

    def init_state(self, rows: int, device: torch.device, dtype: torch.dtype) -> State:
        h = torch.zeros(1, rows, self.width, device=device, dtype=dtype)
        return h, self.short.init_state(rows, device, dtype)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        u, window = self.short(x, state[1])  # (B, T, H)
        log_a, b = self.gates(self.proj(u).float())  # (B, T, H) each
        h = linear_scan(log_a, b, state[0][0])  # (B, T, H)
        return self.out(h), (h[:, -1][None], window)

    def stepper(self, state: State, capacity: int, precision: str) -> MixerStep:
        return ScanStep(self, state, capacity, precision)


class ScanStep(MixerStep):
    """One update of ``ScanMixer``'s recurrence for the first n rows of h."""

    def __init__(self, mixer: ScanMixer, state: State, capacity: int, precision: str) -> None:
        self.h = state[0][0]  # (capacity, H), a view of the stepper's buffer
        self.window = Window(state[1])
        self.short = mixer.short
        self.proj = StepLinear(mixer.proj, capacity, precision)
        self.out = StepLinear(mixer.out, capacity, precision)
        self.gates = mixer.gates

    def step(self, x: torch.Tensor) -> torch.Tensor:
        log_a, b = self.gates(self.proj(self.short.step(x, self.window)))  # (n, H) each
        h = self.h[: x.shape[0]]
        h.mul_(log_a.exp_()).add_(b)  # h = a * h + b
        return self.out(h)
