"""ONNX export: the model's single-token step and its prompt pass as two graphs, with the tokenizer and a config.

    out/
      step.onnx       tokens (rows,) int64, h [, c] (layers, rows, H)  ->  logits (rows, V), h_out [, c_out]
      prompt.onnx     ids (rows, T) int64,  h [, c]                     ->  logits (rows, T, V), h_out [, c_out]
      tokenizer.json  the checkpoint's tokenizer (textgen's JSON)
      config.json     shape, state names, start / banned / end-of-text token ids, weights format

The step graph is ``steps.step`` (each cell's step function, a lookup for layer 0's input); the
prompt graph is the model's own ``forward``, exported by PyTorch's TorchScript-based exporter, which
maps ``nn.LSTM``/``nn.GRU``/``nn.RNN`` to ONNX's LSTM/GRU/RNN operators with any number of time steps
(the dynamo exporter cannot export them in PyTorch 2.13). fp16 and int8 weights are stored as such and
turned back into float32 by a Cast or a DequantizeLinear node in front of the operator that reads them.
"""

from __future__ import annotations

import importlib.util
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from textgen.data.tokenizers import tokenizer_to_json
from textgen.export.quantize import MIN_ELEMENTS, quantize_int8
from textgen.export.steps import CELLS, ExportError, StepWeights, step, step_weights

FORMAT, VERSION = "textgen-onnx", 1
OPSET = 17
EXTRA = "pip install 'textgen[export]'"


def require_onnx() -> None:
    """Refuse at once, in one line, when the optional ONNX packages are missing."""
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"ONNX export needs the {' and '.join(missing)} package(s): {EXTRA}")


class StepGraph(nn.Module):
    """``steps.step`` over the weights held as buffers (so they become the graph's initializers)."""

    def __init__(self, w: StepWeights) -> None:
        super().__init__()
        self.cell, self.names = w.cell, list(w.tensors())
        for i, t in enumerate(w.tensors().values()):
            self.register_buffer(f"w{i}", t)

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        flat = {name: getattr(self, f"w{i}") for i, name in enumerate(self.names)}
        return step(StepWeights.from_tensors(self.cell, flat), tokens, state)


class PromptGraph(nn.Module):
    """The model's forward with the state as separate tensors: ids (rows, T) -> logits (rows, T, V), state."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, new = self.model(ids, state)
        return (logits, *new)


def write_onnx(ckpt: Any, out: Path, weights: str) -> None:
    from textgen.export import FORMATS, export_info
    from textgen.files import atomic_write_dir

    require_onnx()
    model, cfg = ckpt.model.float().eval(), ckpt.config.model
    names = list(CELLS[cfg.cell].state)
    state = model.init_state(2)
    graphs = {
        "step": _to_onnx(StepGraph(step_weights(model)), torch.zeros(2, dtype=torch.long), state, names, "tokens"),
        "prompt": _to_onnx(PromptGraph(model), torch.zeros(2, 3, dtype=torch.long), state, names, "ids"),
    }
    config = {
        "format": FORMAT,
        "version": VERSION,
        **export_info(ckpt, weights),
        "graphs": {name: f"{name}.onnx" for name in graphs},
        "inputs": {"step": ["tokens", *names], "prompt": ["ids", *names]},
        "outputs": ["logits", *(f"{n}_out" for n in names)],
        "tokenizer": "tokenizer.json",
        "about": FORMATS["onnx"][1],
    }

    def write(tmp: Path) -> None:
        for name, graph in graphs.items():
            _store_weights(graph, weights)
            (tmp / f"{name}.onnx").write_bytes(graph.SerializeToString())
        tok = json.dumps(tokenizer_to_json(ckpt.tokenizer), ensure_ascii=False)
        (tmp / "tokenizer.json").write_text(tok, encoding="utf-8")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    if out.exists() and not out.is_dir():
        out.unlink()  # --overwrite of a file by a folder
    atomic_write_dir(out, write)


def _to_onnx(module: nn.Module, first: torch.Tensor, state: tuple, names: list[str], first_name: str) -> Any:
    """Trace ``module`` on example inputs into an ONNX model with the rows (and the prompt's time) left free."""
    import onnx

    rows = {first_name: {0: "rows", **({1: "time"} if first.dim() == 2 else {})}}
    rows |= {n: {1: "rows"} for n in names} | {f"{n}_out": {1: "rows"} for n in names}
    rows["logits"] = {0: "rows", **({1: "time"} if first.dim() == 2 else {})}
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter warns that it is deprecated, and about LSTM batch sizes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (first, *state),
            buffer,
            input_names=[first_name, *names],
            output_names=["logits", *(f"{n}_out" for n in names)],
            dynamic_axes=rows,
            opset_version=OPSET,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


# The axis of a weight that indexes its outputs (one int8 scale each), by the operator reading it and the
# input's position; other weights get one scale in all.
_ROW_AXIS = {("Gather", 0): 0, ("MatMul", 1): -1, ("LSTM", 1): 1, ("LSTM", 2): 1, ("GRU", 1): 1, ("GRU", 2): 1}
_ROW_AXIS |= {("RNN", 1): 1, ("RNN", 2): 1}


def _store_weights(graph: Any, weights: str) -> None:
    """Store the large float32 initializers as ``weights`` (fp16 or int8), each decoded by one node in front."""
    if weights == "fp32":
        return
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = graph.graph
    readers = {name: (node.op_type, i) for node in g.node for i, name in enumerate(node.input)}
    kept, decoders = [], []
    for init in g.initializer:
        a = numpy_helper.to_array(init)
        if init.data_type != TensorProto.FLOAT or a.ndim < 2 or a.size < MIN_ELEMENTS or init.name not in readers:
            kept.append(init)
            continue
        if weights == "fp16":
            kept.append(numpy_helper.from_array(a.astype(np.float16), f"{init.name}.fp16"))
            decoders.append(helper.make_node("Cast", [f"{init.name}.fp16"], [init.name], to=TensorProto.FLOAT))
            continue
        axis = _ROW_AXIS.get(readers[init.name])
        q, scale = quantize_int8(a, axis)
        scale = scale if axis is not None else scale.reshape(())  # per tensor: a scalar scale
        kept += [numpy_helper.from_array(q, f"{init.name}.int8"), numpy_helper.from_array(scale, f"{init.name}.scale")]
        attrs = {"axis": axis % a.ndim} if axis is not None else {}
        decoders.append(
            helper.make_node("DequantizeLinear", [f"{init.name}.int8", f"{init.name}.scale"], [init.name], **attrs)
        )
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = [*decoders, *g.node]  # the decoders first: the graph stays in topological order
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(graph)
