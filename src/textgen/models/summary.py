"""A Keras-style layer table for a RecurrentLM: output shapes and parameter counts per layer.

PyTorch's recurrent layers carry two bias vectors per gate set (``bias_ih`` and ``bias_hh``)
where Keras' LSTM and SimpleRNN carry one; the table shows PyTorch's counts and states the
Keras-equivalent total beside them so the tutorials' figures can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from textgen.models.lm import RecurrentLM

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


def format_summary(model: RecurrentLM, batch_size: int | None = None, title: str = "RecurrentLM") -> str:
    rows, total, keras = summarize(model, batch_size)
    header = f"{'Layer (type)':<28}{'Output Shape':<22}{'Param #':>12}"
    rule = "=" * len(header)
    lines = [f"Model: {title}", rule, header, rule]
    lines += [f"{r.name + ' (' + r.kind + ')':<28}{r.shape:<22}{r.params:>12,}" for r in rows]
    lines += [rule, f"Total params: {total:,}"]
    recurrent = sum(r.params for r in rows if r.kind in ("LSTM", "GRU", "RNN"))
    lines.append(f"Recurrent params: {recurrent:,}")
    if keras != total:
        lines.append(
            f"Keras would count: {keras:,} (PyTorch keeps a second bias vector per gate: {total - keras:,} more)"
        )
    if model.cfg.tie_weights:
        lines.append("The output layer shares the embedding matrix (counted once, in the embedding).")
    return "\n".join(lines)
