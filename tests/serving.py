"""Helpers for the server tests: small models to serve, SSE parsing, and live servers on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from textgen.config import ModelSpec
from textgen.data.tokenizers import CharTokenizer, WordTokenizer
from textgen.models.lm import RecurrentLM

ROOT = Path(__file__).resolve().parents[1]


def random_lm(tokenizer: Any, cell: str = "lstm", layers: int = 1, hidden: int = 16, eot_bias: float = 0.0) -> Any:
    """An untrained model served like a loaded checkpoint (``kind``, ``model``, ``tokenizer``)."""
    torch.manual_seed(0)
    cfg = ModelSpec(vocab_size=tokenizer.vocab_size, cell=cell, layers=layers, hidden_size=hidden, embedding_dim=8)
    model = RecurrentLM(cfg).eval()
    if tokenizer.eot_id is not None:
        with torch.no_grad():
            model.head.bias[tokenizer.eot_id] += eot_bias
    return SimpleNamespace(kind="lm", model=model, tokenizer=tokenizer, config=SimpleNamespace(model=cfg))


def word_lm(eot_bias: float = 2.0) -> Any:
    """A word-level model that often ends its text with the end-of-text token."""
    return random_lm(WordTokenizer(["<unk>", "<eot>", "the", "cat", "sat", "on", "a", "mat", "."]), eot_bias=eot_bias)


def char_lm(cell: str = "lstm", layers: int = 1, hidden: int = 16) -> Any:
    return random_lm(CharTokenizer(list(" abcdefgh\n")), cell, layers, hidden)


class StubTranslator:
    """Stands in for a seq2seq checkpoint: the contract ``textgen.load`` gives translation models."""

    kind = "translate"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def translate(
        self, sources: list[str], *, beams: int = 1, length_penalty: float = 1.0, max_length: int | None = None
    ) -> list[str]:
        self.calls.append(
            {"sources": sources, "beams": beams, "length_penalty": length_penalty, "max_length": max_length}
        )
        return [s[::-1][:max_length] for s in sources]


def sse_events(body: str) -> list[Any]:
    """The events of a Server-Sent Events body, checking the framing: ``data: X`` blocks, blank-line separated,
    ending with ``data: [DONE]``. JSON events are decoded; [DONE] is returned as the string."""
    assert body.endswith("\n\n"), f"an SSE body ends with a blank line: {body[-40:]!r}"
    blocks = body[:-2].split("\n\n")
    events: list[Any] = []
    for block in blocks:
        assert block.startswith("data: ") and "\n" not in block, f"not one data line: {block!r}"
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    return events


def stream_texts(events: list[Any]) -> tuple[dict[int, str], dict[int, str]]:
    """Each choice's streamed text and finish reason (checking that a choice finishes exactly once, last)."""
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for e in events[:-1]:
        for c in e["choices"]:
            i = c["index"]
            assert i not in reasons, f"choice {i} got text after its finish_reason"
            texts[i] = texts.get(i, "") + c["text"]
            if c["finish_reason"] is not None:
                reasons[i] = c["finish_reason"]
    assert set(reasons) == set(texts)
    return texts, reasons


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def serve_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``textgen serve ARGS --port 0`` in a subprocess on 127.0.0.1: (process, base URL); stopped afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "textgen", "serve", *args, "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""  # printed once the models are loaded
        if not line.startswith("textgen: serving"):
            proc.kill()
            raise AssertionError(f"the server did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
        url = line.split(" at ")[1].split("/ ")[0]
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serve_thread(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread of this process on 127.0.0.1 (a free port): its base URL."""
    import uvicorn

    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    started = threading.Event()

    def run() -> None:
        server.config.callback_notify = None
        server.run(sockets=[sock])

    original = server.startup

    async def startup(sockets: Any = None) -> None:
        await original(sockets=sockets)
        started.set()

    server.startup = startup  # type: ignore[method-assign]
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert started.wait(30), "the server did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def rss_kib(pid: int) -> int:
    """Resident memory of a process, in KiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
