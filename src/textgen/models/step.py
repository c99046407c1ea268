"""A single-token decode step for RecurrentLM, built for speed; the same numbers as ``forward``.

Calling ``nn.LSTM`` once per token spends most of its time in per-call overhead on a CPU. This
step instead:
- precomputes each vocabulary entry's layer-0 input projection once (embedding x input weights
  + biases), so the first layer's input is a row lookup;
- runs each cell as fused ``addmm`` calls into preallocated buffers, with the gate
  nonlinearities applied in place on views made once;
so an fp32 step allocates no tensors. It holds transposed copies of the weights (inference only,
no dropout): build a new one after the weights change. ``precision`` trades exactness for speed:
bf16 halves the bytes each matmul reads, int8 (CPU) quarters them; state and logits stay fp32.
"""

from __future__ import annotations

import warnings

import torch

from textgen.errors import ConfigError
from textgen.models.lm import RecurrentLM, State

PRECISIONS = ("fp32", "bf16", "int8")


def _int8_weight(w: torch.Tensor) -> object:
    """fbgemm's packed int8 weight (per output row scales) for ``torch.ops.quantized.linear_dynamic``."""
    try:
        scales = (w.abs().amax(1) / 127).clamp_min(1e-12).double()
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # the quantized-tensor API warns that it will move to torchao
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(w.float().cpu(), scales, zero, 0, torch.qint8)
            return torch.ops.quantized.linear_prepack(q, None)
    except (AttributeError, RuntimeError) as e:
        raise ConfigError(
            f"decode precision int8 needs PyTorch's quantized CPU kernels, which this build lacks: {e}"
        ) from None


class _Product:
    """Adds ``x @ w`` into an output buffer in one precision, with any buffers it needs made once.

    fp32 is exact; bf16 rounds x and w to bfloat16 (half the bytes read); int8 uses fbgemm's
    dynamically quantized matmul (w per row, x per call; a quarter of the bytes, CPU only).
    """

    def __init__(self, w: torch.Tensor, batch: int, precision: str) -> None:
        self.precision = precision  # w: (in, out), contiguous
        if precision == "int8":
            self.packed = _int8_weight(w.t())
        elif precision == "bf16":
            self.w = w.to(torch.bfloat16)
            self.x = torch.zeros(batch, w.shape[0], device=w.device, dtype=torch.bfloat16)
            self.out = torch.zeros(batch, w.shape[1], device=w.device, dtype=torch.bfloat16)
        else:
            self.w = w

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "fp32":
            return out.addmm_(x, self.w)
        if self.precision == "bf16":
            self.x.copy_(x)
            return out.add_(torch.mm(self.x, self.w, out=self.out))
        return out.add_(torch.ops.quantized.linear_dynamic(x, self.packed, True))


class FastStep:
    """``step(tokens)`` advances B sequences by one token and returns their (B, V) logits.

    On CUDA the step is captured once as a CUDA graph (``cuda_graph=False`` turns that off).
    """

    @torch.no_grad()
    def __init__(
        self,
        model: RecurrentLM,
        batch: int,
        state: State | None = None,
        precision: str = "fp32",
        cuda_graph: bool = True,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        cfg, rnn = model.cfg, model.rnn
        self.cell, self.layers, h = cfg.cell, cfg.layers, cfg.hidden_size
        p = model.head.weight
        dev, dt = p.device, p.dtype
        if precision == "int8" and dev.type != "cpu":
            raise ConfigError(f"decode precision int8 runs on the CPU only, not on {dev.type}; use bf16 there")
        gates = {"lstm": 4, "gru": 3, "rnn": 1}[cfg.cell] * h
        inputs = (
            model.embedding.weight if model.embedding is not None else torch.eye(cfg.vocab_size, device=dev, dtype=dt)
        )
        # Biases folded into the input side; a GRU keeps its hidden bias apart (it is gated by r).
        # Contiguous (in, out) weight copies: a batch-1 matmul reads them about 1.7x faster than a transposed view.
        self.w_ih, self.w_hh, self.b_in, self.b_hh = [], [], [], []
        for layer in range(self.layers):
            w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
            b_ih, b_hh = getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
            b_in = b_ih if cfg.cell == "gru" else b_ih + b_hh
            if layer == 0:  # (V, G): each token's layer-0 input projection, looked up by id
                self.table = torch.addmm(b_in, inputs, w_ih.t())
            self.w_ih.append(_Product(w_ih.t().contiguous(), batch, precision) if layer else None)
            self.w_hh.append(_Product(w_hh.t().contiguous(), batch, precision))
            self.b_in.append(b_in.expand(batch, gates))
            self.b_hh.append(b_hh.expand(batch, gates))
        # The output layer is small; int8 would cost accuracy for no speed, so it stays fp32 there.
        self.head = _Product(model.head.weight.t().contiguous(), batch, "fp32" if precision == "int8" else precision)
        self.head_b = model.head.bias.expand(batch, cfg.vocab_size)
        zeros = lambda *shape: torch.zeros(*shape, device=dev, dtype=dt)  # noqa: E731
        self.h = [zeros(batch, h) for _ in range(self.layers)]
        self.c = [zeros(batch, h) for _ in range(self.layers)] if cfg.cell == "lstm" else []
        self.gi = [zeros(batch, gates) for _ in range(self.layers)]
        self.gh = [zeros(batch, gates) for _ in range(self.layers)] if cfg.cell == "gru" else []
        self.tmp = zeros(batch, h)
        self.logits = zeros(batch, cfg.vocab_size)
        # Views of the gate buffers, made once (PyTorch's gate order: LSTM i f g o; GRU r z n).
        g = self.gi
        if cfg.cell == "lstm":
            self.sig = [x[:, : 2 * h] for x in g]  # i and f
            self.i, self.f = [x[:, :h] for x in g], [x[:, h : 2 * h] for x in g]
            self.g, self.o = [x[:, 2 * h : 3 * h] for x in g], [x[:, 3 * h :] for x in g]
        elif cfg.cell == "gru":
            self.rz_i, self.rz_h = [x[:, : 2 * h] for x in g], [x[:, : 2 * h] for x in self.gh]
            self.r, self.z = [x[:, :h] for x in g], [x[:, h : 2 * h] for x in g]
            self.n_i, self.n_h = [x[:, 2 * h :] for x in g], [x[:, 2 * h :] for x in self.gh]
        self.graph: torch.cuda.CUDAGraph | None = None
        if dev.type == "cuda" and cuda_graph:
            self._capture()
        if state is not None:
            self.load_state(state)

    def load_state(self, state: State) -> None:
        """Copy a (layers, B, H) state, or an LSTM's (h, c) pair, into the step's buffers."""
        h, c = state if isinstance(state, tuple) else (state, None)
        for layer in range(self.layers):
            self.h[layer].copy_(h[layer])
            if c is not None:
                self.c[layer].copy_(c[layer])

    def _capture(self) -> None:
        """Record one step as a CUDA graph: each later step is a single replay, not ~10 kernel launches.

        Capture runs the step, so the state is saved first and put back afterwards.
        """
        self.tokens = torch.zeros(self.logits.shape[0], dtype=torch.long, device=self.logits.device)
        saved = [t.clone() for t in self.h + self.c]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(2):
                self._step(self.tokens)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other threads' CUDA calls (NCCL's watchdog, when sampling during a torchrun) are
        # not part of the capture and must not invalidate it.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self._step(self.tokens)
        for t, keep in zip(self.h + self.c, saved):
            t.copy_(keep)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B,) ids. Returns the (B, V) logits buffer (overwritten by the next step)."""
        if self.graph is None:
            return self._step(tokens)
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.logits

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        for layer in range(self.layers):
            gi, h = self.gi[layer], self.h[layer]
            if layer == 0:
                torch.index_select(self.table, 0, tokens, out=gi)  # (B, G)
            else:
                gi.copy_(self.b_in[layer])
                self.w_ih[layer].add_to(gi, self.h[layer - 1])
            if self.cell == "lstm":
                self.w_hh[layer].add_to(gi, h)
                self.sig[layer].sigmoid_()
                self.g[layer].tanh_()
                self.o[layer].sigmoid_()
                c = self.c[layer]
                c.mul_(self.f[layer]).addcmul_(self.i[layer], self.g[layer])  # c = f*c + i*g
                torch.tanh(c, out=self.tmp)
                torch.mul(self.o[layer], self.tmp, out=h)  # h = o * tanh(c)
            elif self.cell == "gru":
                gh = self.gh[layer]
                gh.copy_(self.b_hh[layer])
                self.w_hh[layer].add_to(gh, h)
                self.rz_i[layer].add_(self.rz_h[layer]).sigmoid_()  # r, z
                n = self.n_i[layer].addcmul_(self.r[layer], self.n_h[layer]).tanh_()  # n = tanh(i_n + r*h_n)
                h.sub_(n).mul_(self.z[layer]).add_(n)  # h = (1 - z)*n + z*h
            else:
                self.w_hh[layer].add_to(gi, h)
                h.copy_(gi.tanh_())
        return self.head.add_to(self.logits.copy_(self.head_b), self.h[-1])
