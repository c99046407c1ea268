"""mLSTM (Beck et al. 2024, xLSTM): an LSTM whose memory is a matrix per head, written with key-value
outer products and read with a query, its gates from the input alone:

    C_t = f_t C_{t-1} + i_t k_t v_t^T        n_t = f_t n_{t-1} + i_t k_t        (per head: d x d and d)
    h_t = o_t * norm(C_t^T q_t / max(|n_t . q_t|, 1))

Here the input gate is a sigmoid (xLSTM's is exponential, which needs a running stabiliser in the
state); the forget gate is a sigmoid per head. As in xLSTM a short causal convolution
(``blocks.ShortConv``) feeds the queries, keys and gates.

Training is chunkwise parallel (no loop over time): within a chunk of at most ``CHUNK`` steps,
causal attention weighted by the decay exp(F_t - F_s) (F a cumulative sum of log f); across
chunks, each chunk's own memory decayed and summed the same way, by a (K x K) product. Every exponent is a decay
(<= 0), so nothing overflows. Decoding updates C and n one token at a time. The mixer of pre-norm
residual blocks with a feed-forward (``models/blocks.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from textgen.config import ModelSpec
from textgen.models.blocks import BlockLM, Mixer, MixerStep, ShortConv, StepLinear, Window
from textgen.models.protocol import State

CHUNK = 32  # steps per chunk: the work within chunks grows with it, the chunk memories shrink
FORGET_BIAS = (3.0, 6.0)  # initial forget-gate biases, spread over the heads (f from 0.95 to 0.998), as xLSTM


class MatrixMemory(Mixer):
    """The mLSTM mixer: q, k, v, output gate (H each) and input and forget gates (one per head).

    State: C (heads, rows, d, d), n (heads, rows, d) and the short convolution's window (3, rows, H)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.width, self.heads, self.head_dim = width, heads, width // heads
        self.short = ShortConv(width)
        self.qk = nn.Linear(width, 2 * width + 2 * heads)  # q, k and the gates, from the convolved input
        self.vo = nn.Linear(width, 2 * width)  # v and the output gate, from the input itself
        self.out = nn.Linear(width, width)

    @torch.no_grad()
    def reset_gates(self) -> None:
        self.qk.bias[2 * self.width + self.heads :] = torch.linspace(*FORGET_BIAS, self.heads)

    def inputs(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Input x and convolved input u (..., H) -> q, k' = i k / sqrt(d), v (..., heads, d), o (..., H) and
        log f (..., heads), in fp32: the same in both forms."""
        h, n, d = self.width, self.heads, self.head_dim
        q, k, i_pre, f_pre = self.qk(u).float().split([h, h, n, n], -1)
        v, o = self.vo(x).float().split([h, h], -1)
        k = k.unflatten(-1, (n, d)) * (torch.sigmoid(i_pre) / math.sqrt(d))[..., None]
        return q.unflatten(-1, (n, d)), k, v.unflatten(-1, (n, d)), o, F.logsigmoid(f_pre)

    def read(self, num: torch.Tensor, den: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """C^T q (..., heads, d) and n . q (..., heads) -> normalised, per-head layer-normed, output-gated (..., H)."""
        h = num / den.abs().clamp_min(1.0)[..., None]
        return F.layer_norm(h, (self.head_dim,)).flatten(-2) * torch.sigmoid(o)

    def init_state(self, rows: int, device: torch.device, dtype: torch.dtype) -> State:
        n, d = self.heads, self.head_dim
        zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=dtype)  # noqa: E731
        return zeros(n, rows, d, d), zeros(n, rows, d), self.short.init_state(rows, device, dtype)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        u, window = self.short(x, state[2])  # (B, T, H)
        q, k, v, o, log_f = self.inputs(x, u)  # (B, T, heads, d) x3, (B, T, H), (B, T, heads)
        with torch.autocast(x.device.type, enabled=False):
            heads_first = (t.transpose(1, 2) for t in (q, k, v, log_f))  # (B, heads, T, ...)
            num, den, C, n = chunked_memory(*heads_first, state[0].transpose(0, 1), state[1].transpose(0, 1))
        y = self.out(self.read(num.transpose(1, 2), den.transpose(1, 2), o))  # (B, T, H)
        return y, (C.transpose(0, 1), n.transpose(0, 1), window)

    def stepper(self, state: State, capacity: int, precision: str) -> MixerStep:
        return MemoryStep(self, state, capacity, precision)


def chunked_memory(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_f: torch.Tensor, C0: torch.Tensor, n0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reads C_t^T q_t and n_t . q_t at every step, and the final C and n, chunkwise.

    q, k, v (B, heads, T, d), log f (B, heads, T); the memory before the window C0 (B, heads, d, d), n0
    (B, heads, d); C_t = f_t C_{t-1} + k_t v_t^T, n_t = f_t n_{t-1} + k_t.
    Returns (B, heads, T, d), (B, heads, T), (B, heads, d, d), (B, heads, d)."""
    B, heads, T, d = q.shape
    chunks = -(-T // CHUNK)
    c = -(-T // chunks)
    pad = chunks * c - T
    if pad:  # f = 1 and k = 0 after the end: the memory carries through unchanged
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        log_f = F.pad(log_f, (0, pad))
    q, k, v = (t.unflatten(2, (chunks, c)) for t in (q, k, v))  # (B, heads, K, C, d)
    A = log_f.unflatten(2, (chunks, c)).cumsum(-1)  # (B, heads, K, C): log decay from the chunk's start through t
    total = A[..., -1:]  # (B, heads, K, 1)
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    decay = (A[..., :, None] - A[..., None, :]).masked_fill(~causal, -math.inf).exp()  # (B, heads, K, C, C): s -> t
    scores = (q @ k.transpose(-1, -2)) * decay  # (B, heads, K, C, C)
    num, den = scores @ v, scores.sum(-1)  # (B, heads, K, C, d), (B, heads, K, C): within the chunk
    k_end = k * (total - A).exp()[..., None]  # (B, heads, K, C, d): each key decayed to the chunk's end
    own_C, own_n = k_end.transpose(-1, -2) @ v, k_end.sum(-2)  # (B, heads, K, d, d), (B, heads, K, d)
    # The memory after chunk k: sum over j <= k of exp(G_k - G_j) own_j + exp(G_k) start, G the chunks'
    # cumulative log decay, as one (K x K) product per head (K is small: T / CHUNK).
    G = total[..., 0].cumsum(-1)  # (B, heads, K)
    across = torch.ones(chunks, chunks, dtype=torch.bool, device=q.device).tril()
    weights = (G[..., :, None] - G[..., None, :]).masked_fill(~across, -math.inf).exp()  # (B, heads, K, K)
    from_start = G.exp()[..., None]  # (B, heads, K, 1)
    C = (weights @ own_C.flatten(-2) + from_start * C0.flatten(-2)[:, :, None]).unflatten(-1, (d, d))
    n = weights @ own_n + from_start * n0[:, :, None]  # (B, heads, K, d)
    C_in = torch.cat([C0[:, :, None], C[:, :, :-1]], 2)  # (B, heads, K, d, d): the memory each chunk starts from
    n_in = torch.cat([n0[:, :, None], n[:, :, :-1]], 2)  # (B, heads, K, d)
    carried = A.exp()  # (B, heads, K, C): how much of the entry memory is left at t
    num = num + carried[..., None] * (q @ C_in)  # (B, heads, K, C, d)
    den = den + carried * (q @ n_in[..., None])[..., 0]  # (B, heads, K, C)
    return num.flatten(2, 3)[:, :, :T], den.flatten(2, 3)[:, :, :T], C[:, :, -1], n[:, :, -1]


class MemoryStep(MixerStep):
    """One mLSTM update of the first n rows' memories, and their read."""

    def __init__(self, mixer: MatrixMemory, state: State, capacity: int, precision: str) -> None:
        self.C, self.n = state[0], state[1]  # (heads, capacity, d, d), (heads, capacity, d): the stepper's buffers
        self.window = Window(state[2])
        self.qk = StepLinear(mixer.qk, capacity, precision)
        self.vo = StepLinear(mixer.vo, capacity, precision)
        self.out = StepLinear(mixer.out, capacity, precision)
        self.mixer = mixer

    def step(self, x: torch.Tensor) -> torch.Tensor:
        rows, m = x.shape[0], self.mixer
        h, heads, d = m.width, m.heads, m.head_dim
        u = m.short.step(x, self.window)
        q, k, i_pre, f_pre = self.qk(u).split([h, h, heads, heads], -1)
        v, o = self.vo(x).split([h, h], -1)
        q, v = (t.view(rows, heads, d).transpose(0, 1) for t in (q, v))  # (heads, n, d)
        k = (k.view(rows, heads, d) * (torch.sigmoid(i_pre) / math.sqrt(d))[..., None]).transpose(0, 1)
        f = F.logsigmoid(f_pre).exp().t()  # (heads, n)
        C, n = self.C[:, :rows], self.n[:, :rows]  # (heads, n, d, d), (heads, n, d)
        C.mul_(f[..., None, None]).addcmul_(k[..., :, None], v[..., None, :])  # C = f C + k v^T
        n.mul_(f[..., None]).add_(k)  # n = f n + k
        num = (q[..., None, :] @ C)[..., 0, :]  # (heads, n, d)
        den = (q * n).sum(-1)  # (heads, n)
        return self.out(m.read(num.transpose(0, 1), den.t(), o))


class MLSTMLM(BlockLM):
    kind = "mLSTM"

    def make_mixer(self, cfg: ModelSpec, layer: int) -> Mixer:
        return MatrixMemory(cfg.hidden_size, cfg.heads)
