"""The playground in a real browser: Debian's headless Chromium driven by Playwright, on loopback."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import require_chromium
from serving import serve_thread

import textgen
from textgen.serve.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def page_url(tiny_run):
    require_chromium()
    gen = textgen.load(tiny_run, "cpu")
    with serve_thread(create_app({"poem": gen}, max_tokens=256)) as url:
        yield url, gen


def test_playground_streams_text_at_the_chosen_temperature(page_url, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, gen = page_url
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=ARGS
        )
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            assert page.locator("#model").input_value() == "poem"
            page.fill("#prompt", "Shall I")
            page.locator("#temperature").fill("0")  # greedy: the text is known in advance
            assert page.locator("#temperature_value").text_content() == "0.00"
            page.locator("#max_tokens").fill("40")
            page.click("#generate")
            page.wait_for_selector("#output .tok")  # streamed tokens arrive
            page.wait_for_selector("#output[data-state=done]")
            tokens = page.locator("#output .tok")
            assert tokens.count() == 40
            want = gen.generate("Shall I", max_new_tokens=40, temperature=0)
            assert page.locator("#output").inner_text() == "Shall I" + want
            # Greedy: every drawn token had all the probability of the distribution it was drawn from.
            style = "e => getComputedStyle(e).getPropertyValue('--p')"
            probs = [float(tokens.nth(i).evaluate(style)) for i in range(3)]
            assert probs == [1.0, 1.0, 1.0]
            page.locator("#temperature").fill("1")
            page.click("#generate")
            page.wait_for_selector("#output[data-state=done]")
            first = page.locator("#output .tok").first
            first.hover()
            tip = page.locator("#tip")
            tip.wait_for(state="visible")
            assert "%" in tip.inner_text()
            assert 0 < math.exp(float(first.get_attribute("data-logprob"))) <= 1
            assert "finished: length" in page.locator("#stats").inner_text()
            assert errors == []
        finally:
            context.close()
