"""A single-token decode step for RecurrentLM, built for speed; the same numbers as ``forward``.

Calling ``nn.LSTM`` once per token spends most of its time in per-call overhead on a CPU. This
step instead:
- precomputes each vocabulary entry's layer-0 input projection once (embedding x input weights
  + biases), so the first layer's input is a row lookup;
- runs each cell as fused ``addmm`` calls into preallocated buffers, with the gate
  nonlinearities applied in place on views made once;
so a step allocates no tensors. It holds transposed copies of the weights (inference only, no
dropout): build a new one after the weights change.
"""

from __future__ import annotations

import torch

from textgen.models.lm import RecurrentLM, State


class FastStep:
    """``step(tokens)`` advances B sequences by one token and returns their (B, V) logits."""

    @torch.no_grad()
    def __init__(self, model: RecurrentLM, batch: int, state: State | None = None, precision: str = "fp32") -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        cfg, rnn = model.cfg, model.rnn
        self.cell, self.layers, h = cfg.cell, cfg.layers, cfg.hidden_size
        p = model.head.weight
        dev, dt = p.device, p.dtype
        gates = {"lstm": 4, "gru": 3, "rnn": 1}[cfg.cell] * h
        inputs = (
            model.embedding.weight if model.embedding is not None else torch.eye(cfg.vocab_size, device=dev, dtype=dt)
        )
        # Biases folded into the input side; a GRU keeps its hidden bias apart (it is gated by r).
        self.w_ih, self.w_hh, self.b_in, self.b_hh = [], [], [], []
        for layer in range(self.layers):
            w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
            b_ih, b_hh = getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
            # Contiguous (in, out) copies: a batch-1 matmul reads them about 1.7x faster than a transposed view.
            self.w_ih.append(w_ih.t().contiguous())  # (I, G)
            self.w_hh.append(w_hh.t().contiguous())  # (H, G)
            self.b_in.append((b_ih if cfg.cell == "gru" else b_ih + b_hh).expand(batch, gates))
            self.b_hh.append(b_hh.expand(batch, gates))
        self.table = torch.addmm(self.b_in[0][:1], inputs, self.w_ih[0])  # (V, G) layer-0 input per token
        # bf16: the recurrent and output matmuls read half the bytes; gates, cell and logits stay fp32.
        self.low = precision == "bf16"
        if self.low:
            bf = torch.bfloat16
            self.w_ih = [w.to(bf) for w in self.w_ih]
            self.w_hh = [w.to(bf) for w in self.w_hh]
            self.h_low = [torch.zeros(batch, h, device=dev, dtype=bf) for _ in range(self.layers)]
            self.mm_out = torch.zeros(batch, gates, device=dev, dtype=bf)
            self.head_low = model.head.weight.t().contiguous().to(bf)
            self.logits_low = torch.zeros(batch, cfg.vocab_size, device=dev, dtype=bf)
        self.head_w, self.head_b = model.head.weight.t().contiguous(), model.head.bias.expand(batch, cfg.vocab_size)
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
        if state is not None:
            self.load_state(state)

    def load_state(self, state: State) -> None:
        """Copy a (layers, B, H) state, or an LSTM's (h, c) pair, into the step's buffers."""
        h, c = state if isinstance(state, tuple) else (state, None)
        for layer in range(self.layers):
            self.h[layer].copy_(h[layer])
            if c is not None:
                self.c[layer].copy_(c[layer])

    def _matmul_add(self, out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, x_low: int | None = None) -> None:
        """out += x @ w (in bf16 when asked: x is first copied into its low-precision buffer)."""
        if not self.low:
            out.addmm_(x, w)
            return
        self.h_low[x_low].copy_(x)  # type: ignore[index]
        out.add_(torch.mm(self.h_low[x_low], w, out=self.mm_out[:, : w.shape[1]]))  # type: ignore[index]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B,) ids. Returns the (B, V) logits buffer (overwritten by the next step)."""
        for layer in range(self.layers):
            gi, h = self.gi[layer], self.h[layer]
            if layer == 0:
                torch.index_select(self.table, 0, tokens, out=gi)  # (B, G)
            else:
                gi.copy_(self.b_in[layer])
                self._matmul_add(gi, self.h[layer - 1], self.w_ih[layer], layer - 1)
            if self.cell == "lstm":
                self._matmul_add(gi, h, self.w_hh[layer], layer)
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
                self._matmul_add(gh, h, self.w_hh[layer], layer)
                self.rz_i[layer].add_(self.rz_h[layer]).sigmoid_()  # r, z
                n = self.n_i[layer].addcmul_(self.r[layer], self.n_h[layer]).tanh_()  # n = tanh(i_n + r*h_n)
                h.sub_(n).mul_(self.z[layer]).add_(n)  # h = (1 - z)*n + z*h
            else:
                self._matmul_add(gi, h, self.w_hh[layer], layer)
                h.copy_(gi.tanh_())
        if self.low:
            self.h_low[-1].copy_(self.h[-1])
            self.logits.copy_(self.head_b)
            return self.logits.add_(torch.mm(self.h_low[-1], self.head_low, out=self.logits_low))
        return torch.addmm(self.head_b, self.h[-1], self.head_w, out=self.logits)
