"""The web page export: one self-contained HTML file that generates text in the browser, with no server.

The page (``web/page.html``) carries the playground's look and token colouring (``serve/static``), the
runtime (``web/textgen.js``), the 600-byte matrix-vector kernel (``web/matvec.wasm``, from
``matvec.wat``), the tokenizer and the step's weights (``steps.step_weights``) as one base64 blob:
int8 with one float32 scale per row, float16, or float32. Why not onnxruntime-web: its smallest
WebAssembly build alone is 14 MB, seven times the whole page of a 1x256 character model.
"""

from __future__ import annotations

import base64
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from textgen.data.tokenizers import tokenizer_to_json
from textgen.export.quantize import MIN_ELEMENTS, quantize_int8
from textgen.export.steps import step_weights
from textgen.files import atomic_write


def pack_weights(tensors: dict[str, Any], weights: str) -> tuple[list[dict[str, Any]], bytes]:
    """Each tensor's description (name, shape, dtype, byte offsets) and the blob holding them all.

    Matrices are stored as ``weights`` (int8 rows with a float32 scale each); vectors and small
    matrices stay float32. Every part starts at a multiple of 4 bytes, so the page can view it in place."""
    specs, parts, size = [], [], 0

    def put(data: bytes) -> int:
        nonlocal size
        at = size
        pad = -len(data) % 4
        parts.append(data + b"\0" * pad)
        size += len(data) + pad
        return at

    for name, t in tensors.items():
        a = t.numpy().astype(np.float32)
        spec: dict[str, Any] = {"name": name, "shape": list(a.shape)}
        small = a.ndim < 2 or a.size < MIN_ELEMENTS
        if small or weights == "fp32":
            spec |= {"dtype": "float32", "offset": put(a.tobytes())}
        elif weights == "fp16":
            spec |= {"dtype": "float16", "offset": put(a.astype("<f2").tobytes())}
        else:
            q, scale = quantize_int8(a, axis=0)
            spec |= {"dtype": "int8", "offset": put(q.tobytes()), "scale_offset": put(scale.astype("<f4").tobytes())}
        specs.append(spec)
    return specs, b"".join(parts)


def page_html(ckpt: Any, weights: str) -> str:
    """The page's text."""
    from textgen.export import export_info

    tensors, blob = pack_weights(step_weights(ckpt.model).tensors(), weights)
    model = {**export_info(ckpt, weights), "tensors": tensors, "tokenizer": tokenizer_to_json(ckpt.tokenizer)}
    web = resources.files("textgen.export") / "web"
    static = resources.files("textgen.serve") / "static"
    run = ckpt.path.parent.name if ckpt.path.name in ("best", "latest") else ckpt.path.name
    parts = {
        "VERSION": model["textgen_version"],
        "TITLE": _escape(f"textgen · {run}"),
        "STYLE": (static / "style.css").read_text(encoding="utf-8"),
        "MODEL": _script_json(model),
        "WEIGHTS": base64.b64encode(blob).decode("ascii"),
        "KERNEL": base64.b64encode((web / "matvec.wasm").read_bytes()).decode("ascii"),
        "TOKENS_JS": (static / "tokens.js").read_text(encoding="utf-8"),
        "PAGE_JS": (web / "textgen.js").read_text(encoding="utf-8"),
    }
    template = (web / "page.html").read_text(encoding="utf-8")
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: parts[m.group(1)], template)  # one pass: inserted text stays as is


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element (no "</script>" or "<!--" can appear in it)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def write_html(ckpt: Any, out: Path, weights: str) -> None:
    """Write the page to ``out`` atomically, so ``out`` is whole or untouched."""
    text = page_html(ckpt, weights)
    if out.is_dir():
        raise OSError(21, "Is a directory", str(out))
    atomic_write(out, text)
