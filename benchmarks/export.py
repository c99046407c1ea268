"""Export sizes and speeds: the web page's characters per second in headless Chromium, and the files' sizes.

    python benchmarks/export.py            # about a minute; run it alone (two cores)

Uses untrained models (speed and size do not depend on training): the ``shakespeare`` preset's shape
(embedding 256, one LSTM of 1024, the bundled corpus's characters) and a 1x256 LSTM character model.
The page's speed is what its own status line reports for 1000 characters at temperature 1, best of
three, with the WebAssembly SIMD kernel and with the plain JavaScript fallback (``#nowasm``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from textgen.api import build_config
from textgen.checkpoint import build_model, save_checkpoint
from textgen.config import RunSpec
from textgen.data.tokenizers import CharTokenizer
from textgen.export import export

CORPUS = Path(__file__).resolve().parents[1] / "src" / "textgen" / "corpora" / "tinyshakespeare.txt"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def checkpoint(path: Path, **settings: object) -> Path:
    tok = CharTokenizer(sorted(set(CORPUS.read_text(encoding="utf-8"))))
    cfg, _ = build_config(**settings)
    spec = RunSpec(vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    save_checkpoint(path, build_model(cfg, spec), cfg, spec, tok, {"step": 0})
    return path


def page_speed(browser: object, page_file: Path, hash: str, tokens: int, tries: int) -> tuple[float, str]:
    """Best characters/s of ``tries`` generations of ``tokens`` characters, and the kernel the page used."""
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(page_file.as_uri() + hash)
    page.wait_for_selector("#generate:not([disabled])", timeout=120_000)
    kernel = "WebAssembly SIMD" if "(WebAssembly SIMD)" in page.locator("#about").inner_text() else "JavaScript"
    page.fill("#prompt", "ROMEO:")
    page.locator("#temperature").fill("1")
    page.locator("#max_tokens").fill(str(tokens))
    best = 0.0
    for _ in range(tries):
        page.evaluate("document.getElementById('output').dataset.state = ''")
        page.click("#generate")
        page.wait_for_selector("#output[data-state=done]", timeout=300_000)
        best = max(best, float(page.locator("#stats").get_attribute("data-chars-per-second") or 0))
    page.close()
    return best, kernel


def onnx_steps_per_second(folder: Path, seconds: float = 3.0) -> float:
    import json

    import onnxruntime as ort

    config = json.loads((folder / "config.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    step = ort.InferenceSession(str(folder / "step.onnx"), options)
    feed = {"tokens": np.array([1])}
    feed |= {n: np.zeros((config["layers"], 1, config["hidden_size"]), np.float32) for n in config["state"]}
    step.run(None, feed)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step.run(None, feed)
        n += 1
    return n / (time.perf_counter() - start)


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1000, help="characters per timed generation")
    ap.add_argument("--tries", type=int, default=3)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        shakespeare = checkpoint(d / "shakespeare", preset="shakespeare")
        small = checkpoint(d / "small", hidden_size=256, layers=1, cell="lstm")
        print("file sizes")
        for name, ckpt in (("shakespeare-shaped (LSTM 1x1024, embedding 256)", shakespeare), ("LSTM 1x256", small)):
            for fmt, weights in (("html", "int8"), ("html", "fp16"), ("onnx", "fp32"), ("onnx", "int8")):
                out = export(ckpt, fmt, d / f"{ckpt.name}-{weights}.{fmt}", weights=weights)
                print(f"  {name:<48} {fmt:<5} {weights:<5} {size(out) / 1e6:7.2f} MB")
        print("\nshakespeare-shaped model, one sequence")
        for weights in ("fp32", "int8"):
            rate = onnx_steps_per_second(d / f"shakespeare-{weights}.onnx")
            print(f"  onnxruntime (CPU, 1 thread), {weights} step graph: {rate:7.0f} tokens/s")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
            for hash in ("", "#nowasm"):
                rate, kernel = page_speed(browser, d / "shakespeare-int8.html", hash, args.tokens, args.tries)
                print(f"  web page in headless Chromium, {kernel:<16}: {rate:7.0f} characters/s")
            browser.close()


if __name__ == "__main__":
    main()
