"""ONNX export: the graphs give PyTorch's logits, greedy text through onnxruntime is textgen's, bad input is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fresh_checkpoint, run_cli

from textgen.checkpoint import build_model, load_checkpoint, save_checkpoint
from textgen.config import RunConfig, RunSpec
from textgen.data.tokenizers import CharTokenizer, WordTokenizer
from textgen.export import ExportError, export
from textgen.export.steps import CELLS

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def sessions(out: Path) -> tuple[dict, ort.InferenceSession, ort.InferenceSession]:
    config = json.loads((out / "config.json").read_text())
    return config, ort.InferenceSession(str(out / "step.onnx")), ort.InferenceSession(str(out / "prompt.onnx"))


@pytest.mark.parametrize(
    "shape",
    [
        {"cell": "lstm", "layers": 2},
        {"cell": "gru", "layers": 2},
        {"cell": "rnn"},
        {"cell": "lstm", "embedding_dim": 0},  # one-hot input
        {"cell": "gru", "embedding_dim": 4},  # a vocabulary wider than the embedding: no lookup table
    ],
    ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()),
)
def test_graphs_give_pytorchs_logits_and_state(tmp_path: Path, shape: dict) -> None:
    ckpt = load_checkpoint(fresh_checkpoint(tmp_path / "ckpt", **shape))
    out = export(ckpt.path, "onnx", tmp_path / "onnx")
    config, step, prompt = sessions(out)
    assert config["state"] == list(CELLS[shape["cell"]].state)
    model = ckpt.model
    g = torch.Generator().manual_seed(1)
    state = tuple(torch.randn(s.shape, generator=g) * 0.5 for s in model.init_state(3))
    feed = dict(zip(config["state"], (s.numpy() for s in state)))
    tokens = torch.tensor([1, 4, 9])
    want, want_state = model(tokens[:, None], state)
    got = step.run(None, {"tokens": tokens.numpy(), **feed})
    np.testing.assert_allclose(got[0], want[:, 0].detach().numpy(), atol=1e-4, rtol=0)
    for a, b in zip(got[1:], want_state):
        np.testing.assert_allclose(a, b.detach().numpy(), atol=1e-4, rtol=0)
    ids = torch.randint(1, 10, (3, 7), generator=g)
    want, want_state = model(ids, state)
    got = prompt.run(None, {"ids": ids.numpy(), **feed})
    np.testing.assert_allclose(got[0], want.detach().numpy(), atol=1e-4, rtol=0)
    for a, b in zip(got[1:], want_state):
        np.testing.assert_allclose(a, b.detach().numpy(), atol=1e-4, rtol=0)


def greedy(out: Path, prompt_text: str, tokens: int) -> str:
    """Greedy decoding written against the exported files alone: the prompt graph, then the step graph."""
    config, step, prompt = sessions(out)
    tok = json.loads((out / "tokenizer.json").read_text())
    vocab = ["\ufffd", *tok["chars"]]
    ids = [vocab.index(c) for c in prompt_text] or config["start_ids"]
    state = [np.zeros((config["layers"], 1, config["hidden_size"]), np.float32) for _ in config["state"]]
    logits, *state = prompt.run(None, {"ids": np.array([ids]), **dict(zip(config["state"], state))})
    logits = logits[:, -1]
    text = ""
    for _ in range(tokens):
        logits[:, config["banned_ids"]] = -np.inf
        token = int(logits[0].argmax())
        text += vocab[token]
        logits, *state = step.run(None, {"tokens": np.array([token]), **dict(zip(config["state"], state))})
    return text


def test_greedy_text_through_onnxruntime_is_textgen_generates(tiny_run: Path, tmp_path: Path) -> None:
    out = export(tiny_run, "onnx", tmp_path / "onnx")
    cli = run_cli("generate", str(tiny_run), "--prompt", "Shall I", "--temperature", "0", "--max-new-tokens", "60")
    assert cli.returncode == 0, cli.stderr
    assert "Shall I" + greedy(out, "Shall I", 60) + "\n" == cli.stdout
    cli = run_cli("generate", str(tiny_run), "--temperature", "0", "--max-new-tokens", "30")
    assert greedy(out, "", 30) + "\n" == cli.stdout  # an empty prompt starts from config's start_ids


@pytest.mark.parametrize("weights, tolerance, ratio", [("fp16", 1e-2, 0.5), ("int8", 0.1, 0.25)])
def test_smaller_weights_stay_close(tmp_path: Path, weights: str, tolerance: float, ratio: float) -> None:
    ckpt = fresh_checkpoint(tmp_path / "ckpt", hidden_size=64, embedding_dim=32)
    full = export(ckpt, "onnx", tmp_path / "fp32")
    small = export(ckpt, "onnx", tmp_path / weights, weights=weights)
    for graph in ("step.onnx", "prompt.onnx"):
        assert (small / graph).stat().st_size < (ratio + 0.1) * (full / graph).stat().st_size
    feed = {"tokens": np.arange(1, 11), "h": np.zeros((1, 10, 64), np.float32), "c": np.zeros((1, 10, 64), np.float32)}
    want = sessions(full)[1].run(None, feed)[0]
    config, step, _ = sessions(small)
    assert config["weights"] == weights
    got = step.run(None, feed)[0]
    np.testing.assert_allclose(got, want, atol=tolerance, rtol=0)
    assert not np.allclose(got, want, atol=1e-7, rtol=0)  # it did store them differently


def test_word_model_exports_its_tokenizer(tmp_path: Path) -> None:
    tok = WordTokenizer(["<unk>", "<eot>", "the", "cat", "sat", "."])
    out = export(fresh_checkpoint(tmp_path / "ckpt", tok=tok), "onnx", tmp_path / "onnx")
    config = json.loads((out / "config.json").read_text())
    assert (config["start_ids"], config["eot_id"], config["tokenizer_kind"]) == ([1], 1, "word")
    assert json.loads((out / "tokenizer.json").read_text())["words"][2:] == ["the", "cat", "sat", "."]


def test_refuses_what_it_cannot_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = fresh_checkpoint(tmp_path / "ckpt", cell="gru")
    with pytest.raises(ExportError, match="^unknown export format 'pdf': choose onnx or html$"):
        export(ckpt, "pdf", tmp_path / "x")
    with pytest.raises(ExportError, match="^unknown weights 'int4': choose fp32, fp16, int8$"):
        export(ckpt, "onnx", tmp_path / "x", weights="int4")
    monkeypatch.delitem(CELLS, "gru")  # as a cell without an exported step would be
    with pytest.raises(ExportError, match=r"cell 'gru' cannot be exported yet \(export supports lstm, rnn\)$"):
        export(ckpt, "onnx", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_refuses_a_translation_model(tmp_path: Path) -> None:
    tok = CharTokenizer(list("abc "))
    settings = {"task": "translate", "pairs": ["pairs.tsv"], "hidden_size": 16, "embedding_dim": 8, "level": "char"}
    cfg, spec = RunConfig().updated(settings), RunSpec(vocab_size=tok.vocab_size)
    save_checkpoint(tmp_path / "s2s", build_model(cfg, spec), cfg, spec, tok, {})
    with pytest.raises(ExportError, match="holds a translation model; export writes language models only"):
        export(tmp_path / "s2s", "html", tmp_path / "page.html")


def test_missing_onnx_packages_are_named_with_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ExportError, match=r"needs the onnxscript package\(s\): pip install 'textgen\[export\]'$"):
        export(fresh_checkpoint(tmp_path / "ckpt"), "onnx", tmp_path / "onnx")


def test_cli_refuses_an_existing_output_in_one_line_and_overwrites_when_asked(tmp_path: Path) -> None:
    ckpt = fresh_checkpoint(tmp_path / "ckpt")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    r = run_cli("export", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "taken"))
    assert r.returncode == 2
    assert r.stderr == f"textgen: error: {tmp_path / 'taken'} already exists: pass --overwrite to replace it\n"
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    r = run_cli("export", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "taken"), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == [
        "config.json",
        "prompt.onnx",
        "step.onnx",
        "tokenizer.json",
    ]
    r = run_cli("export", str(ckpt), "--format", "svg", "--out", str(tmp_path / "y"))
    assert (r.returncode, r.stderr) == (2, "textgen: error: unknown export format 'svg': choose onnx or html\n")


def test_the_guides_onnxruntime_example_prints_what_textgen_generates(tiny_run: Path, tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    guide = (Path(__file__).resolve().parents[1] / "docs" / "sharing.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(import json\n.*?)```", guide, re.S).group(1)
    example = example.replace('"ROMEO:"', '"Shall I"')  # the tiny model's corpus has no capital O
    export(tiny_run, "onnx", tmp_path / "mine-onnx")
    ran = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    cli = run_cli("generate", str(tiny_run), "--prompt", "Shall I", "--temperature", "0", "--max-new-tokens", "200")
    assert ran.stdout == cli.stdout
