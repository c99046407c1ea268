"""Seq2Seq: an LSTM/GRU/RNN encoder reads the source into states; a decoder writes the target.

Model code only: no I/O, no search. The decoder starts from the encoder's final states (the two
directions of a bidirectional encoder are summed) and, with attention, looks at every encoder
output at every step (Luong's global attention): the decoder's output ``h_t`` scores the encoder
outputs (dot ``h_t . e_s``, general ``h_t . W e_s``, or Bahdanau's additive ``v . tanh(W h_t + U e_s)``),
the softmax over real (non-padding) source positions weighs them into a context ``c_t``, and
``tanh(W_c [c_t; h_t])`` goes to the output layer. The attention sits on top of the recurrent
layers, so a whole teacher-forced target runs through ``nn.LSTM``/``nn.GRU`` in one call (cuDNN).

The target vocabulary is the target tokenizer's plus two tokens: start (fed first to the
decoder) and end (predicted last).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from textgen.config import ModelSpec
from textgen.models.lm import RNN_CLASSES, RecurrentCells, protocol_state, rnn_state
from textgen.models.protocol import Matmul, State, Stepper, check_precision, check_spec, tie_output

NEG_INF = float("-inf")


@dataclass
class Memory:
    """What the decoder attends to: encoder outputs (B, S, H), their projection for scoring, and the
    mask of real source positions (B, S)."""

    outputs: torch.Tensor
    keys: torch.Tensor
    mask: torch.Tensor


class Attention(nn.Module):
    """Scores the encoder outputs for each decoder output and returns their weighted mix."""

    def __init__(self, kind: str, hidden: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "general":
            self.w = nn.Linear(hidden, hidden, bias=False)
        elif kind == "additive":
            self.w_query = nn.Linear(hidden, hidden, bias=False)
            self.w_key = nn.Linear(hidden, hidden)
            self.v = nn.Linear(hidden, 1, bias=False)

    def keys(self, outputs: torch.Tensor) -> torch.Tensor:
        """The part of the score that depends on the source only, computed once per sentence."""
        if self.kind == "general":
            return self.w(outputs)
        if self.kind == "additive":
            return self.w_key(outputs)
        return outputs

    def forward(self, query: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        """query: (B, T, H). Returns the contexts (B, T, H) and the weights (B, T, S), which sum to 1
        over the real source positions and are 0 on padding."""
        if self.kind == "additive":
            scores = self.v(torch.tanh(self.w_query(query)[:, :, None] + memory.keys[:, None])).squeeze(-1)
        else:
            scores = query @ memory.keys.transpose(1, 2)  # (B, T, S)
        scores = scores.masked_fill(~memory.mask[:, None, :], NEG_INF)
        weights = scores.softmax(-1)  # (B, T, S)
        return weights @ memory.outputs, weights  # (B, T, H)


class Seq2Seq(nn.Module):
    """Encoder-decoder; ``forward`` is the teacher-forced pass, ``encode``/``decode`` the pieces that
    greedy and beam search call one step at a time."""

    def __init__(self, cfg: ModelSpec) -> None:
        super().__init__()
        check_spec(cfg)
        self.cfg = cfg
        self.start_id, self.end_id = cfg.vocab_size, cfg.vocab_size + 1
        v_out = cfg.vocab_size + 2
        shared = cfg.source_vocab_size == 0  # one vocabulary and one embedding for both sides
        v_src = v_out if shared else cfg.source_vocab_size
        e, h, layers = cfg.embedding_dim, cfg.hidden_size, cfg.layers
        self.source_inputs, self.target_inputs = v_src, v_out
        self.tgt_embedding = nn.Embedding(v_out, e) if e else None
        self.src_embedding = (self.tgt_embedding if shared else nn.Embedding(v_src, e)) if e else None
        self.drop = nn.Dropout(cfg.dropout)
        rnn = RNN_CLASSES[cfg.cell]
        between = cfg.dropout if layers > 1 else 0.0
        self.encoder = rnn(e or v_src, h, layers, dropout=between, batch_first=True, bidirectional=cfg.bidirectional)
        self.decoder = rnn(e or v_out, h, layers, dropout=between, batch_first=True)
        self.attention = Attention(cfg.attention, h) if cfg.attention != "none" else None
        self.combine = nn.Linear(2 * h, h) if self.attention is not None else None
        self.head = nn.Linear(h, v_out)
        if cfg.tie_weights:
            assert self.tgt_embedding is not None
            tie_output(self.head, self.tgt_embedding)

    def _inputs(self, ids: torch.Tensor, embedding: nn.Embedding | None, size: int) -> torch.Tensor:
        if embedding is None:
            return F.one_hot(ids, size).to(self.head.weight.dtype)
        return embedding(ids)

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[Memory, State]:
        """src: (B, S) ids, padded; src_len: (B,) lengths on the CPU. Padding never reaches the
        recurrent layers (the batch is packed), so a sentence encodes the same whatever it is batched with.

        Rows already sorted longest first (as textgen's batches are) are packed without moving any
        index to or from the device, so a training step never waits for it."""
        lengths = src_len.cpu()
        ordered = bool((lengths[:-1] >= lengths[1:]).all())
        x = self.drop(self._inputs(src, self.src_embedding, self.source_inputs))  # (B, S, E)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=ordered)
        out, hidden = self.encoder(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])  # (B, S, H * dirs)
        state = protocol_state(hidden)
        if self.cfg.bidirectional:
            out = out.view(*out.shape[:2], 2, -1).sum(2)  # (B, S, H)
            state = tuple(s.view(-1, 2, *s.shape[1:]).sum(1) for s in state)  # forward + backward
        mask = torch.arange(src.shape[1])[None, :] < lengths[:, None]  # (B, S), made on the host
        if src.is_cuda:
            mask = mask.pin_memory().to(src.device, non_blocking=True)
        keys = self.attention.keys(out) if self.attention is not None else out
        return Memory(out, keys, mask), state

    def decode(
        self, tgt_in: torch.Tensor, state: State, memory: Memory, with_attention: bool = False
    ) -> tuple[torch.Tensor, State] | tuple[torch.Tensor, State, torch.Tensor]:
        """tgt_in: (B, T) decoder inputs (start token first). Returns logits (B, T, V + 2), the new
        state and, when asked, the attention weights (B, T, S)."""
        x = self.drop(self._inputs(tgt_in, self.tgt_embedding, self.target_inputs))  # (B, T, E)
        out, hidden = self.decoder(x, rnn_state(state))  # (B, T, H)
        state = protocol_state(hidden)
        weights = None
        if self.attention is not None and self.combine is not None:
            context, weights = self.attention(out, memory)  # (B, T, H), (B, T, S)
            out = torch.tanh(self.combine(torch.cat([context, out], dim=-1)))  # (B, T, H)
        logits = self.head(self.drop(out))  # (B, T, V + 2)
        return (logits, state, weights) if with_attention else (logits, state)

    def forward(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the logits (B, T, V + 2) for every target position."""
        memory, state = self.encode(src, src_len)
        return self.decode(tgt_in, state, memory)[0]

    def flatten_parameters(self) -> None:
        self.encoder.flatten_parameters()
        self.decoder.flatten_parameters()

    def stepper(self, capacity: int, precision: str = "fp32", cuda_graph: bool = False) -> DecoderStepper:
        """The decoder's fast step over ``capacity`` rows; ``start`` gives rows their encoded source."""
        return DecoderStepper(self, capacity, precision, cuda_graph)


class DecoderStepper(Stepper):
    """``Seq2Seq``'s decoder one token at a time: the recurrent cells of the language model's step,
    then attention over each row's encoder outputs, which travel with the row (``extras``) when
    beams are reordered. The same logits as ``decode`` (to rounding)."""

    @torch.no_grad()
    def __init__(self, model: Seq2Seq, capacity: int, precision: str = "fp32", cuda_graph: bool = False) -> None:
        p = model.head.weight
        super().__init__(capacity, p.device, cuda_graph)
        check_precision(precision, p.device)
        self.model = model
        inputs = (
            model.tgt_embedding.weight
            if model.tgt_embedding is not None
            else torch.eye(model.target_inputs, device=p.device, dtype=p.dtype)
        )
        self.cells = RecurrentCells(model.decoder, model.cfg.cell, inputs, capacity, precision, p.dtype)
        self.state = self.cells.state
        self.head = Matmul(p.t(), capacity, "fp32" if precision == "int8" else precision)
        self.head_b = model.head.bias.expand(capacity, p.shape[0])
        self.logits = torch.zeros(capacity, p.shape[0], device=p.device, dtype=p.dtype)

    @torch.no_grad()
    def start(self, rows: slice, state: State, memory: Memory) -> None:
        """Rows ``rows`` begin from the encoder's ``state`` and attend to ``memory`` (one sentence per row)."""
        if not self.extras or self.extras[0].shape[1] != memory.outputs.shape[1]:
            self.extras = [
                t.new_zeros((self.capacity, *t.shape[1:])) for t in (memory.outputs, memory.keys, memory.mask)
            ]
        for buf, t in zip(self.extras, (memory.outputs, memory.keys, memory.mask)):
            buf[rows] = t
        self.write(rows, state)

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        n, model = tokens.shape[0], self.model
        out = self.cells.step(tokens)  # (n, H)
        if model.attention is not None and model.combine is not None:
            outputs, keys, mask = (t[:n] for t in self.extras)
            memory = Memory(outputs, keys, mask)
            context, _ = model.attention(out[:, None], memory)  # (n, 1, H)
            out = torch.tanh(model.combine(torch.cat([context[:, 0], out], dim=-1)))  # (n, H)
        return self.head.add_to(self.logits[:n].copy_(self.head_b[:n]), out)  # (n, V + 2)
