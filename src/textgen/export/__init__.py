"""Take a trained language model elsewhere: ONNX graphs for any runtime, or one web page that writes on its own.

``export(checkpoint, "onnx" | "html", out)`` checks everything it can before loading the model, then
writes ``out`` whole (a folder for ONNX, one file for HTML) or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from textgen import __version__
from textgen.export.quantize import WEIGHTS
from textgen.export.steps import CELLS, ExportError, unsupported

__all__ = ["FORMATS", "WEIGHTS", "ExportError", "export", "export_info"]

# format -> (default weights, what it writes); each writer is imported only when used (ONNX needs extras)
FORMATS: dict[str, tuple[str, str]] = {
    "onnx": ("fp32", "a folder: step.onnx, prompt.onnx, tokenizer.json, config.json"),
    "html": ("int8", "one self-contained web page that generates text in the browser"),
}


def export(
    checkpoint_dir: str | Path,
    fmt: str,
    out: str | Path,
    overwrite: bool = False,
    weights: str | None = None,
) -> Path:
    """Write the checkpoint's language model as ``fmt`` to ``out``; returns ``out``.

    ``weights``: "fp32", "fp16" or "int8" (one scale per row); by default fp32 for ONNX and int8 for
    HTML, where the page's size matters most.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: choose {' or '.join(FORMATS)}")
    weights = weights or FORMATS[fmt][0]
    if weights not in WEIGHTS:
        raise ExportError(f"unknown weights {weights!r}: choose {', '.join(WEIGHTS)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists: pass --overwrite to replace it")
    writer = _writer(fmt)  # a missing extra is reported before the model is loaded
    from textgen.checkpoint import load_checkpoint
    from textgen.kinds import kind_of

    ckpt = load_checkpoint(checkpoint_dir, "cpu")
    kind, cfg = kind_of(ckpt.config), ckpt.config.model
    if kind.not_exported:
        raise ExportError(f"{ckpt.path} holds {kind.title}; export writes language models only ({kind.not_exported})")
    why = unsupported(ckpt.model, cfg.cell)
    if why:
        raise ExportError(f"{ckpt.path}: {why}")
    writer(ckpt, out, weights)
    return out


def _writer(fmt: str) -> Callable[[Any, Path, str], None]:
    if fmt == "onnx":
        from textgen.export.onnx import require_onnx, write_onnx

        require_onnx()
        return write_onnx
    from textgen.export.html import write_html

    return write_html


def export_info(ckpt: Any, weights: str) -> dict[str, Any]:
    """What a runtime needs besides the weights: the shape, the state, the tokens that start and end text."""
    from textgen.sampling.text import encode_prompt

    cfg, tok = ckpt.config.model, ckpt.tokenizer
    info = ckpt.info
    return {
        "textgen_version": __version__,
        "cell": cfg.cell,
        "layers": cfg.layers,
        "hidden_size": cfg.hidden_size,
        "vocab_size": ckpt.model.cfg.vocab_size,
        "state": list(CELLS[cfg.cell].state),  # each (layers, rows, hidden_size)
        "weights": weights,
        "tokenizer_kind": tok.kind,
        "start_ids": encode_prompt(tok, ""),  # an empty prompt starts from these (a new document)
        "banned_ids": [tok.unk_id],  # never drawn: the unknown token is not text
        "eot_id": tok.eot_id,  # ends a sample (None: character models have none)
        "trained": {k: info[k] for k in ("step", "val_loss") if k in info},
    }
