"""Live servers on 127.0.0.1: the official ``openai`` client, disconnects, and a bounded load test.

Traffic goes only to loopback, every loop is bounded in count and time, and each server stops
when its test ends.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time

import httpx
import pytest
from conftest import run_cli
from serving import serve_process, serve_thread

import textgen
from textgen.serve.app import create_app

openai = pytest.importorskip("openai")
KEY = "test-key"


@pytest.fixture(scope="module")
def live(tiny_run):
    """``textgen serve`` in a subprocess with an API key: (process, base URL)."""
    with serve_process(str(tiny_run), "--api-key", KEY, "--max-tokens", "256", "--decode-precision", "fp32") as server:
        yield server


def test_serve_reports_the_decode_precision_it_was_given_at_health(live, tiny_run):
    _, url = live
    (model,) = httpx.get(url + "/health", timeout=30).json()["models"]
    assert model == {
        "id": tiny_run.name,
        "kind": "lm",
        "decode_precision": "fp32",
        "decode_precision_reason": "fp32, as asked",
    }


@pytest.fixture(scope="module")
def poem(tiny_run):
    return textgen.load(tiny_run, "cpu")


def test_openai_client_completions_streaming_and_models(live, poem, tiny_run):
    _, url = live
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    name = tiny_run.name
    assert [m.id for m in client.models.list()] == [name]
    done = client.completions.create(model=name, prompt="Shall I", max_tokens=30, seed=4, temperature=0.7)
    want = poem.generate("Shall I", max_new_tokens=30, seed=4, temperature=0.7)
    assert done.choices[0].text == want and done.choices[0].finish_reason == "length"
    assert done.usage.completion_tokens == 30 and done.usage.prompt_tokens == 7
    pieces = client.completions.create(
        model=name,
        prompt=["Shall I", "Thou"],
        max_tokens=20,
        seed=4,
        n=2,
        stop=["\n"],
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    usage = None
    for chunk in pieces:
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    settings = dict(max_new_tokens=20, seed=4, num_samples=2, stop=["\n"])
    samples = [s for p in ("Shall I", "Thou") for s in poem.samples(p, **settings)]
    assert [texts[i] for i in range(4)] == [s.text for s in samples]
    assert [reasons[i] for i in range(4)] == [s.finish_reason for s in samples]  # no end-of-text in a char model
    assert usage is not None and usage.completion_tokens == sum(len(s.tokens) for s in samples)


def test_openai_client_sees_errors_as_its_exceptions(live, tiny_run):
    _, url = live
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=tiny_run.name, prompt="Shall", temperature=3)
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.completions.create(model="gpt-nothing", prompt="Shall")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(url + "/health").status_code == 200  # open without the key


def test_a_client_that_disconnects_mid_stream_stops_its_decoding(poem):
    app = create_app({"poem": poem}, max_tokens=1_000_000)
    engine = app.state.served["poem"].engine
    with serve_thread(app) as url, httpx.Client(timeout=30) as client:
        body = {"model": "poem", "prompt": "Shall I", "max_tokens": 1_000_000, "stream": True}
        with client.stream("POST", url + "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: {")
        # The connection is closed: the server notices and frees the rows long before a million tokens.
        assert engine.wait_until(lambda: engine.stats.cancelled == 1 and engine.stats.active_rows == 0, 30)
        assert engine.stats.tokens < 1_000_000
        non_stream = {**body, "stream": False}
        with pytest.raises(httpx.ReadTimeout):  # a non-streaming client that gives up is cancelled too
            client.post(url + "/v1/completions", json=non_stream, timeout=0.5)
        assert engine.wait_until(lambda: engine.stats.cancelled == 2 and engine.stats.active_rows == 0, 30)


async def _stream_once(client: httpx.AsyncClient, url: str, tokens: int) -> tuple[int, float, float]:
    """One streaming completion: (completion tokens, seconds to the end, seconds to the first text)."""
    start = time.perf_counter()
    first = None
    used = 0
    body = {"prompt": "Shall I", "max_tokens": tokens, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream(
        "POST", url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                first = first or time.perf_counter() - start
                event = json.loads(line[6:])
                assert "error" not in event
                if event.get("usage"):
                    used = event["usage"]["completion_tokens"]
    return used, time.perf_counter() - start, first or 0.0


async def _load(url: str, clients: int, rounds: int, tokens: int) -> tuple[float, list[float], list[float]]:
    """``clients`` concurrent streams, ``rounds`` times: (tokens/s, latencies, times to first text)."""
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as client:
        await _stream_once(client, url, 4)  # connections and the server warm
        start = time.perf_counter()
        results = []
        for _ in range(rounds):
            results += await asyncio.gather(*[_stream_once(client, url, tokens) for _ in range(clients)])
        seconds = time.perf_counter() - start
    assert all(used == tokens for used, _, _ in results), "every stream gets all its tokens"
    return len(results) * tokens / seconds, sorted(r[1] for r in results), sorted(r[2] for r in results)


def test_load_32_streaming_clients_get_at_least_4x_the_throughput_of_one(live, capsys):
    """Continuous batching: 32 concurrent clients are decoded together, so tokens/s rises with load.

    Bounded: 64 tokens per stream; one client runs 8 streams one after another, then 32 clients
    one stream each; the best of 3 alternating tries of each (a busy machine slows both alike).
    """
    _, url = live
    singles, crowds = [], []
    for _ in range(3):
        singles.append(asyncio.run(_load(url, 1, 8, 64)))
        crowds.append(asyncio.run(_load(url, 32, 1, 64)))
    one = max(s[0] for s in singles)
    rate, latency, first = max(crowds, key=lambda c: c[0])
    p50, p99 = statistics.median(latency), latency[min(len(latency) - 1, int(0.99 * len(latency)))]
    with capsys.disabled():
        print(
            f"\n[load] 1 client {one:,.0f} tokens/s; 32 clients {rate:,.0f} tokens/s ({rate / one:.1f}x); "
            f"32-client latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; "
            f"first text p50 {statistics.median(first) * 1000:.0f} ms"
        )
    assert rate >= 4 * one, f"32 clients: {rate:.0f} tokens/s, one client: {one:.0f} tokens/s"


def test_bad_serve_arguments_are_one_line_and_exit_2(tiny_run, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        cases = [
            ([str(tmp_path / "missing")], "checkpoint not found"),
            ([str(tiny_run), "--port", port], "Address already in use"),
            ([str(tiny_run), "--port", "70000"], "--port must be a number"),
            ([str(tiny_run), "--port", "http"], "--port must be a number"),
            ([str(tiny_run), "--max-tokens", "0"], "--max-tokens must be at least 1"),
            ([str(tiny_run), "--stream-interval", "-0.5"], "--stream-interval must be from 0 to 10 seconds"),
            ([str(tiny_run), f"a={tiny_run}", f"a={tiny_run}"], "both be called 'a'"),
        ]
        for args, message in cases:
            proc = run_cli("serve", *args) if "--port" in args else run_cli("serve", *args, "--port", "0")
            assert proc.returncode == 2, (args, proc.stderr)
            assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr
