"""A Keras-style layer table for any model: output shapes and parameter counts per layer.

A RecurrentLM or a Seq2Seq gets its layers by name; any other model lists its own named parts
(``parts()``: name, kind, module, output width), each counted once however often it is shared.
PyTorch's recurrent layers carry two bias vectors per gate set (``bias_ih`` and ``bias_hh``)
where Keras' LSTM and SimpleRNN carry one; the table shows PyTorch's counts and states the
Keras-equivalent total beside them so the tutorials' figures can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from textgen.models.lm import RecurrentLM
from textgen.models.seq2seq import Seq2Seq

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


@dataclass
class Row:
    name: str
    kind: str
    shape: str
    params: int


def summarize(model: RecurrentLM, batch_size: int | None = None) -> tuple[list[Row], int, int]:
    """The layer rows, the total parameter count and the Keras-equivalent count."""
    cfg = model.cfg
    b = str(batch_size) if batch_size else "B"
    count = lambda module: sum(p.numel() for p in module.parameters(recurse=False))  # noqa: E731
    rows: list[Row] = []
    if model.embedding is not None:
        rows.append(Row("embedding", "Embedding", f"({b}, T, {cfg.embedding_dim})", count(model.embedding)))
    else:
        rows.append(Row("one_hot", "OneHot", f"({b}, T, {cfg.vocab_size})", 0))
    rnn = model.rnn
    for layer in range(cfg.layers):
        n = sum(getattr(rnn, f"{k}_l{layer}").numel() for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        rows.append(Row(f"{cfg.cell}_{layer}", type(rnn).__name__, f"({b}, T, {cfg.hidden_size})", n))
    head = sum(p.numel() for p in model.head.parameters() if not _shared(p, model))
    rows.append(Row("head", "Linear", f"({b}, T, {cfg.vocab_size})", head))
    total = sum(p.numel() for p in model.parameters())
    # Keras' GRU (reset_after=True) also has two biases; its LSTM and SimpleRNN have one.
    keras = total - (cfg.layers * GATES[cfg.cell] * cfg.hidden_size if cfg.cell != "gru" else 0)
    return rows, total, keras


def _shared(p: object, model: RecurrentLM) -> bool:
    return model.embedding is not None and p is model.embedding.weight


def summarize_seq2seq(model: Seq2Seq, batch_size: int | None = None) -> tuple[list[Row], int, int]:
    """The rows of an encoder-decoder (S source and T target steps), its total and Keras-equivalent counts."""
    cfg = model.cfg
    b, h, v = str(batch_size) if batch_size else "B", cfg.hidden_size, cfg.vocab_size + 2
    seen: set[int] = set()

    def count(module: nn.Module) -> int:  # a shared embedding is counted once, where it first appears
        fresh = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        return sum(p.numel() for p in fresh)

    rows: list[Row] = []
    for name, emb, size, steps in (
        ("source", model.src_embedding, model.source_inputs, "S"),
        ("target", model.tgt_embedding, model.target_inputs, "T"),
    ):
        if emb is None:
            rows.append(Row(f"{name}_one_hot", "OneHot", f"({b}, {steps}, {size})", 0))
        else:
            shared = " shared" if id(emb.weight) in seen else ""
            rows.append(
                Row(f"{name}_embedding", f"Embedding{shared}", f"({b}, {steps}, {emb.embedding_dim})", count(emb))
            )
    directions = " x2" if cfg.bidirectional else ""
    rows.append(Row("encoder", type(model.encoder).__name__ + directions, f"({b}, S, {h})", count(model.encoder)))
    rows.append(Row("decoder", type(model.decoder).__name__, f"({b}, T, {h})", count(model.decoder)))
    if model.attention is not None and model.combine is not None:
        rows.append(Row("attention", cfg.attention.capitalize(), f"({b}, T, S)", count(model.attention)))
        rows.append(Row("combine", "Linear tanh", f"({b}, T, {h})", count(model.combine)))
    rows.append(Row("head", "Linear", f"({b}, T, {v})", count(model.head)))
    total = sum(p.numel() for p in model.parameters())
    per_layer = GATES[cfg.cell] * h
    second_biases = 0 if cfg.cell == "gru" else per_layer * cfg.layers * (3 if cfg.bidirectional else 2)
    return rows, total, total - second_biases


def summarize_parts(model: nn.Module, batch_size: int | None = None) -> tuple[list[Row], int, int]:
    """The rows of a model that lists its named parts (``parts()``), and its total (Keras would count the same)."""
    b = str(batch_size) if batch_size else "B"
    seen: set[int] = set()
    rows: list[Row] = []
    for name, kind, module, width in model.parts():  # type: ignore[operator]
        fresh = [p for p in module.parameters() if id(p) not in seen]  # a shared matrix counts where it first appears
        seen.update(id(p) for p in fresh)
        rows.append(Row(name, kind, f"({b}, T, {width})", sum(p.numel() for p in fresh)))
    total = sum(p.numel() for p in model.parameters())
    return rows, total, total


def format_summary(model: nn.Module, batch_size: int | None = None, title: str = "RecurrentLM") -> str:
    if isinstance(model, Seq2Seq):
        rows, total, keras = summarize_seq2seq(model, batch_size)
    elif isinstance(model, RecurrentLM):
        rows, total, keras = summarize(model, batch_size)
    else:
        rows, total, keras = summarize_parts(model, batch_size)
    width = max(28, *(len(f"{r.name} ({r.kind})") + 2 for r in rows))
    header = f"{'Layer (type)':<{width}}{'Output Shape':<22}{'Param #':>12}"
    rule = "=" * len(header)
    lines = [f"Model: {title}", rule, header, rule]
    lines += [f"{r.name + ' (' + r.kind + ')':<{width}}{r.shape:<22}{r.params:>12,}" for r in rows]
    lines += [rule, f"Total params: {total:,}"]
    recurrent = sum(r.params for r in rows if r.kind.split()[0] in ("LSTM", "GRU", "RNN"))
    blocks = sum(r.params for r in rows if r.kind.endswith(" block"))
    if blocks:
        lines.append(f"Block params: {blocks:,} (mixers, feed-forwards and their norms)")
    else:
        lines.append(f"Recurrent params: {recurrent:,}")
    if keras != total:
        lines.append(
            f"Keras would count: {keras:,} (PyTorch keeps a second bias vector per gate: {total - keras:,} more)"
        )
    if model.cfg.tie_weights:
        lines.append("The output layer shares the embedding matrix (counted once, in the embedding).")
    if isinstance(model, Seq2Seq):
        lines.append(f"Target vocabulary {model.cfg.vocab_size:,} + start and end tokens; S, T: source, target steps.")
    return "\n".join(lines)
