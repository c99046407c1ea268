"""The exported web page: its kernel, its size, and in a real browser (Debian's headless Chromium via Playwright)
the same greedy text as ``textgen generate --temperature 0``, sliders that change the sampling, and tokenizers
that read and write text as textgen's do."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CHROMIUM, POEM, fresh_checkpoint, require_chromium, run_cli

from textgen.data.tokenizers import BPETokenizer, CharTokenizer, WordTokenizer
from textgen.export import export
from textgen.export.html import pack_weights

WEB = Path(__file__).resolve().parents[1] / "src" / "textgen" / "export" / "web"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def test_wasm_kernel_is_built_from_its_source_and_multiplies() -> None:
    wasmtime = pytest.importorskip("wasmtime")
    wasm = (WEB / "matvec.wasm").read_bytes()
    assert wasm == wasmtime.wat2wasm((WEB / "matvec.wat").read_text()), "rebuild matvec.wasm (see matvec.wat)"
    store = wasmtime.Store()
    memory = wasmtime.Memory(store, wasmtime.MemoryType(wasmtime.Limits(1, None)))
    matvec = wasmtime.Instance(store, wasmtime.Module(store.engine, wasm), [memory]).exports(store)["matvec"]
    rng = np.random.default_rng(0)
    w, x, y = rng.standard_normal((8, 12), np.float32), rng.standard_normal(12, np.float32), np.ones(8, np.float32)
    data = np.concatenate([w.ravel(), x, y]).astype(np.float32).tobytes()
    memory.write(store, data, 0)
    matvec(store, 0, 4 * 96, 4 * 108, 8, 12)
    got = np.frombuffer(memory.read(store, 4 * 108, 4 * 116), np.float32)
    np.testing.assert_allclose(got, 1 + w @ x, rtol=1e-5, atol=1e-5)


def test_weights_blob_holds_what_the_page_decodes() -> None:
    w = torch.linspace(-1, 1, 64 * 32).reshape(64, 32)
    specs, blob = pack_weights({"m": w, "b": torch.ones(3)}, "int8")
    m, b = specs
    assert (m["dtype"], b["dtype"], m["offset"] % 4, m["scale_offset"] % 4) == ("int8", "float32", 0, 0)
    q = np.frombuffer(blob, np.int8, 64 * 32, m["offset"]).reshape(64, 32)
    scale = np.frombuffer(blob, np.float32, 64, m["scale_offset"])
    np.testing.assert_allclose(q * scale[:, None], w.numpy(), atol=w.abs().max().item() / 254 + 1e-7)
    assert np.abs(q).max(axis=1).tolist() == [127] * 64  # each row uses its whole range
    assert np.frombuffer(blob, np.float32, 3, b["offset"]).tolist() == [1, 1, 1]


def test_page_of_a_1x256_char_model_is_under_2_mb(tmp_path: Path) -> None:
    chars = sorted(set((Path(__file__).parents[1] / "src/textgen/corpora/tinyshakespeare.txt").read_text()))
    ckpt = fresh_checkpoint(tmp_path / "ckpt", CharTokenizer(chars), hidden_size=256, embedding_dim=64)
    sizes = {w: export(ckpt, "html", tmp_path / f"{w}.html", weights=w).stat().st_size for w in ("int8", "fp16")}
    assert sizes["int8"] < 2_000_000, sizes
    assert sizes["int8"] < 0.6 * sizes["fp16"]


@pytest.fixture(scope="module")
def browser():
    require_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield b
        b.close()


class Page:
    """One exported page open in the browser, driven through its controls."""

    def __init__(self, browser, path: Path, hash: str = "") -> None:
        self.page = browser.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(path.as_uri() + hash)
        self.page.wait_for_selector("#generate:not([disabled])")

    def generate(self, prompt: str, tokens: int, temperature: float, top_k=0, top_p=1.0, seed: int | None = None):
        p = self.page
        p.fill("#prompt", prompt)
        for name, value in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p), ("max_tokens", tokens)):
            p.locator(f"#{name}").fill(str(value))
        p.fill("#seed", "" if seed is None else str(seed))
        p.click("#generate")
        p.wait_for_selector("#output[data-state=done]")
        text = p.locator("#output").inner_text()
        p.evaluate("document.getElementById('output').dataset.state = ''")
        assert self.errors == []
        return text

    def close(self) -> None:
        self.page.close()


@functools.cache
def cli_greedy(ckpt: Path, prompt: str, tokens: int) -> str:
    r = run_cli("generate", str(ckpt), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", str(tokens))
    assert r.returncode == 0, r.stderr
    return r.stdout.removesuffix("\n")


def test_greedy_page_text_is_textgen_generates(browser, tiny_run: Path, tmp_path: Path) -> None:
    page = Page(browser, export(tiny_run, "html", tmp_path / "page.html", weights="fp32"))
    try:
        assert page.generate("Shall I", 80, temperature=0) == cli_greedy(tiny_run, "Shall I", 80)
        assert page.generate("", 40, temperature=0) == cli_greedy(tiny_run, "", 40)
        style = "e => getComputedStyle(e).getPropertyValue('--p')"
        tokens = page.page.locator("#output .tok")
        assert [float(tokens.nth(i).evaluate(style)) for i in range(3)] == [1.0, 1.0, 1.0]  # greedy: all the mass
        assert "finished: length" in page.page.locator("#stats").inner_text()
        page.page.fill("#prompt", "Shall I ~")  # a character the model never saw
        page.page.click("#generate")
        assert page.page.locator("#status").inner_text() == (
            'the prompt has characters outside the model\'s vocabulary: "~"'
        )
    finally:
        page.close()
    plain = Page(browser, tmp_path / "page.html", "#nowasm")  # the fallback where WebAssembly SIMD is missing
    try:
        assert "(JavaScript)" in plain.page.locator("#about").inner_text()
        assert plain.generate("Shall I", 80, temperature=0) == cli_greedy(tiny_run, "Shall I", 80)
    finally:
        plain.close()


def test_sliders_change_the_sampling(browser, tiny_run: Path, tmp_path: Path) -> None:
    page = Page(browser, export(tiny_run, "html", tmp_path / "page.html"))  # int8 weights
    try:
        assert "int8 weights" in page.page.locator("#about").inner_text()
        greedy = page.generate("Thou", 60, temperature=0)
        # One token left by top-k 1, or by a nucleus of 5%: sampling at temperature 1 is greedy again.
        assert page.generate("Thou", 60, temperature=1, top_k=1, seed=1) == greedy
        assert page.generate("Thou", 60, temperature=1, top_p=0.05, seed=2) == greedy
        hot = [page.generate("Thou", 60, temperature=1.5, seed=s) for s in (3, 3, 4)]
        assert hot[0] == hot[1]  # a seed repeats its sample
        assert hot[0] != greedy and hot[2] != hot[0]
        probs = page.page.locator("#output .tok").evaluate_all(
            "spans => spans.map(e => Number(getComputedStyle(e).getPropertyValue('--p')))"
        )
        assert len(probs) == 60 and min(probs) < 0.9  # drawn from a spread distribution
    finally:
        page.close()


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_word_and_bpe_pages_read_and_write_as_textgen(browser, tmp_path: Path, kind: str) -> None:
    text = POEM * 3 + 'He said: "it\'s 3.5 well-known (sic)" — naïve café 😀!\n'
    tok = WordTokenizer.train([text]) if kind == "word" else BPETokenizer.train([text], vocab_size=300)
    ckpt = fresh_checkpoint(tmp_path / "ckpt", tok)
    page = Page(browser, export(ckpt, "html", tmp_path / "page.html", weights="fp32"))
    try:
        for sample in ["Shall I compare thee", 'He said: "it\'s 3.5 well-known (sic)"', "naïve café 😀!\n  x", ""]:
            got = page.page.evaluate("t => tokenizer.encode(t)", sample)
            assert got == tok.encode(sample), sample
        ids = tok.encode(text)[:60]
        decoded = page.page.evaluate("ids => { const d = tokenizer.decoder([]); return ids.map(d.push).join('') }", ids)
        assert decoded == tok.decode(ids)
        assert page.generate("Shall I", 30, temperature=0) == cli_greedy(ckpt, "Shall I", 30)
        assert page.generate("", 20, temperature=0) == cli_greedy(ckpt, "", 20)
    finally:
        page.close()


def test_page_knows_its_model(tiny_run: Path, tmp_path: Path) -> None:
    html = export(tiny_run, "html", tmp_path / "page.html").read_text(encoding="utf-8")
    tag = '<script type="application/json" id="model">'
    start = html.index(tag) + len(tag)
    model = json.loads(html[start : html.index("</script>", start)])
    assert (model["cell"], model["hidden_size"], model["weights"], model["banned_ids"]) == ("lstm", 32, "int8", [0])
    assert "http://" not in html and "https://" not in html  # nothing to fetch: it works offline
