"""The HTTP server through FastAPI's test client, and its batching engine directly.

Texts are compared exactly against the Python API (``textgen.load(...).samples``): a seeded
request gives the generation engine's text, whether it ran alone or batched with others.
"""

from __future__ import annotations

import json
import math

import pytest
from fastapi.testclient import TestClient
from serving import StubTranslator, char_lm, sse_events, stream_texts, word_lm

import textgen
from textgen.config import SampleConfig
from textgen.sampling.decode import Generation
from textgen.serve.app import create_app
from textgen.serve.engine import Engine

PROMPT = "Shall I"
CAP = 64  # the test server's --max-tokens


@pytest.fixture(scope="module")
def poem(tiny_run):
    return textgen.load(tiny_run, "cpu")


@pytest.fixture(scope="module")
def words():
    return word_lm()


@pytest.fixture(scope="module")
def translator():
    return StubTranslator()


@pytest.fixture(scope="module")
def client(poem, words, translator):
    app = create_app({"poem": poem, "words": words, "fr": translator}, max_tokens=CAP, max_prompt_tokens=200)
    with TestClient(app) as c:
        yield c


def reference(gen, prompt: str, **settings) -> list:
    """What the generation engine gives for these settings (the server must give the same)."""
    run = Generation(gen.model, gen.tokenizer, prompt, SampleConfig(**settings))
    for _ in run:
        pass
    return run.samples


def complete(client, **body) -> dict:
    r = client.post("/v1/completions", json={"model": "poem", "prompt": PROMPT, **body})
    assert r.status_code == 200, r.text
    return r.json()


# ----- the engine -----


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_engine_batches_seeded_requests_with_the_text_each_gets_alone(cell):
    gen = char_lm(cell, layers=2)
    engine = Engine(gen.model, gen.tokenizer, max_rows=16)
    requests = [
        dict(max_new_tokens=30, seed=1),
        dict(max_new_tokens=12, seed=2, num_samples=3, temperature=0.7),
        dict(max_new_tokens=40, seed=3, stop=["a"], top_p=0.8),
        dict(max_new_tokens=25, seed=4, repetition_penalty=1.5, top_k=4),
        dict(max_new_tokens=20, seed=5, num_samples=2, presence_penalty=1.0, no_repeat_ngram=2),
        dict(max_new_tokens=33, seed=6, min_p=0.1, typical_p=0.9),
        dict(max_new_tokens=18, temperature=0),
    ]
    jobs = [engine.submit("bad cafe", SampleConfig(**r)) for r in requests]  # all queued before the engine starts
    engine.start()
    try:
        for job in jobs:
            assert job.finished.wait(30)
    finally:
        engine.stop()
    assert engine.stats.peak_rows == sum(r.get("num_samples", 1) for r in requests)  # decoded together
    for job, r in zip(jobs, requests):
        got = [(s.text, s.tokens, s.finish_reason) for s in job.samples]
        want = [(s.text, s.tokens, s.finish_reason) for s in reference(gen, "bad cafe", **r)]
        assert got == want, r
    assert engine.stats.active_rows == 0 and engine.stats.completed == len(requests)


def test_engine_admits_requests_while_others_run_and_frees_rows_as_they_end():
    gen = char_lm()
    engine = Engine(gen.model, gen.tokenizer, max_rows=4)
    engine.start()
    try:
        long = engine.submit("abc", SampleConfig(max_new_tokens=400, seed=7))
        assert engine.wait_until(lambda: engine.stats.ticks > 0, 30)
        more = [engine.submit("h", SampleConfig(max_new_tokens=5 + i, seed=i, num_samples=2)) for i in range(6)]
        for job in [long, *more]:
            assert job.finished.wait(30)
    finally:
        engine.stop()
    assert engine.stats.peak_rows <= 4  # never more rows than the batch has
    assert long.samples[0].text == reference(gen, "abc", max_new_tokens=400, seed=7)[0].text
    for i, job in enumerate(more):
        assert [s.text for s in job.samples] == [
            s.text for s in reference(gen, "h", max_new_tokens=5 + i, seed=i, num_samples=2)
        ]


def test_engine_cancel_frees_the_rows():
    gen = char_lm()
    engine = Engine(gen.model, gen.tokenizer, max_rows=4)
    engine.start()
    try:
        job = engine.submit("abc", SampleConfig(max_new_tokens=1_000_000))
        assert engine.wait_until(lambda: engine.stats.ticks > 3, 30)
        job.cancel()
        assert job.finished.wait(30)
        assert engine.stats.cancelled == 1 and engine.stats.active_rows == 0
        assert len(job.samples[0].tokens) < 1_000_000
    finally:
        engine.stop()


def test_a_request_that_fails_to_start_ends_with_an_error_and_the_engine_keeps_serving(monkeypatch):
    # Admitting a request runs its prompt through the model (out of memory, say): the requests taken with
    # it must end with an error, not wait for ever, and later requests must still be served.
    gen = char_lm()
    engine = Engine(gen.model, gen.tokenizer, max_rows=4)
    admit = engine._admit

    def fail_once(job):
        if job.request.settings.max_new_tokens == 11:
            raise RuntimeError("out of memory")
        admit(job)

    monkeypatch.setattr(engine, "_admit", fail_once)
    engine.start()
    try:
        doomed = engine.submit("abc", SampleConfig(max_new_tokens=11, seed=1))
        assert doomed.finished.wait(30) and "out of memory" in doomed.error
        later = engine.submit("abc", SampleConfig(max_new_tokens=5, seed=1))
        assert later.finished.wait(30) and later.error is None
        assert later.samples[0].text == reference(gen, "abc", max_new_tokens=5, seed=1)[0].text
    finally:
        engine.stop()


# ----- completions: every field against the generation engine -----


def test_completion_is_the_python_api_text_with_usage(client, poem):
    body = complete(client, max_tokens=20, seed=3)
    want = poem.generate(PROMPT, max_new_tokens=20, seed=3)
    assert body["object"] == "text_completion" and body["model"] == "poem" and body["id"].startswith("cmpl-")
    assert body["choices"] == [{"index": 0, "text": want, "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": len(PROMPT), "completion_tokens": 20, "total_tokens": len(PROMPT) + 20}


FIELDS = [
    ({"temperature": 0.5}, {"temperature": 0.5}),
    ({"temperature": 0}, {"temperature": 0}),
    ({"top_p": 0.6}, {"top_p": 0.6}),
    ({"top_k": 3}, {"top_k": 3}),
    ({"min_p": 0.2}, {"min_p": 0.2}),
    ({"typical_p": 0.7}, {"typical_p": 0.7}),
    ({"repetition_penalty": 1.8}, {"repetition_penalty": 1.8}),
    ({"presence_penalty": 1.5}, {"presence_penalty": 1.5}),
    ({"frequency_penalty": -1.0}, {"frequency_penalty": -1.0}),
    ({"no_repeat_ngram": 2}, {"no_repeat_ngram": 2}),
    ({"stop": "e"}, {"stop": ["e"]}),
    ({"stop": ["xx", "o "]}, {"stop": ["xx", "o "]}),
    ({"n": 3}, {"num_samples": 3}),
    ({"max_tokens": 7}, {"max_new_tokens": 7}),
    ({"max_tokens": None, "temperature": None, "top_p": None, "n": None, "stop": None}, {"max_new_tokens": 16}),
]


@pytest.mark.parametrize("fields, settings", FIELDS, ids=[",".join(f) for f, _ in FIELDS])
def test_every_field_gives_what_the_generation_engine_gives(client, poem, fields, settings):
    body = complete(client, **{"max_tokens": 30, "seed": 11, **fields})
    want = reference(poem, PROMPT, **{"max_new_tokens": 30, "seed": 11, **settings})
    got = [(c["index"], c["text"], c["finish_reason"]) for c in body["choices"]]
    assert got == [(i, s.text, "stop" if s.finish_reason == "eos" else s.finish_reason) for i, s in enumerate(want)]
    assert body["usage"]["completion_tokens"] == sum(len(s.tokens) for s in want)


def test_stop_string_ends_a_choice_with_finish_reason_stop(client):
    free = complete(client, max_tokens=40, temperature=0)["choices"][0]["text"]
    stop = free[5:7]
    cut = complete(client, max_tokens=40, temperature=0, stop=stop)["choices"][0]
    assert cut == {"index": 0, "text": free[: free.index(stop)], "logprobs": None, "finish_reason": "stop"}


def test_end_of_text_is_finish_reason_stop(client, words):
    body = client.post(
        "/v1/completions", json={"model": "words", "prompt": "the cat", "max_tokens": 50, "n": 4, "seed": 2}
    )
    want = reference(words, "the cat", max_new_tokens=50, seed=2, num_samples=4)
    assert "eos" in [s.finish_reason for s in want]  # the model does end texts itself
    mapped = ["stop" if s.finish_reason == "eos" else s.finish_reason for s in want]
    assert [c["finish_reason"] for c in body.json()["choices"]] == mapped
    assert [c["text"] for c in body.json()["choices"]] == [s.text for s in want]


def test_a_list_of_prompts_gets_n_choices_each_in_order(client, poem):
    body = complete(client, prompt=["Shall I", "Thou art"], n=2, max_tokens=9, seed=5)
    texts = [c["text"] for c in body["choices"]]
    want = [
        s.text for p in ("Shall I", "Thou art") for s in reference(poem, p, max_new_tokens=9, seed=5, num_samples=2)
    ]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3] and texts == want
    assert body["usage"]["prompt_tokens"] == len("Shall I") + len("Thou art")
    assert body["usage"]["completion_tokens"] == 4 * 9


def test_seeded_requests_repeat_and_differ_by_seed(client):
    a, b, c = (complete(client, max_tokens=30, seed=s)["choices"][0]["text"] for s in (1, 1, 2))
    assert a == b != c


def test_logprobs_are_the_sampled_distribution(client, poem):
    body = complete(client, max_tokens=12, seed=4, logprobs=3, temperature=0.8)
    choice = body["choices"][0]
    lp = choice["logprobs"]
    run = Generation(poem.model, poem.tokenizer, PROMPT, SampleConfig(max_new_tokens=12, seed=4, temperature=0.8), 3)
    for _ in run:
        pass
    steps = run.samples[0].choices
    assert "".join(lp["tokens"]) == choice["text"] == run.samples[0].text
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    for got, top, step in zip(lp["token_logprobs"], lp["top_logprobs"], steps):
        assert math.exp(got) == pytest.approx(step.prob, rel=1e-5)
        want = {poem.tokenizer.token_text(t): math.log(p) for t, p in step.top}
        assert top.keys() == want.keys() and all(top[k] == pytest.approx(want[k], abs=1e-5) for k in want)
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 12


def test_logprobs_zero_gives_the_chosen_tokens_only(client):
    lp = complete(client, max_tokens=5, seed=4, logprobs=0)["choices"][0]["logprobs"]
    assert lp["top_logprobs"] == [{}] * 5 and all(x <= 0 for x in lp["token_logprobs"])


# ----- streaming -----


def test_stream_framing_done_and_the_same_text_as_without_streaming(client):
    body = {"model": "poem", "prompt": ["Shall I", "Thou"], "n": 2, "max_tokens": 25, "seed": 9, "stop": "o"}
    whole = client.post("/v1/completions", json=body).json()
    r = client.post("/v1/completions", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert {e["id"] for e in events[:-1]} == {events[0]["id"]}
    assert all(e["object"] == "text_completion" and e["model"] == "poem" and "usage" not in e for e in events[:-1])
    texts, reasons = stream_texts(events)
    assert texts == {c["index"]: c["text"] for c in whole["choices"]}
    assert reasons == {c["index"]: c["finish_reason"] for c in whole["choices"]}


def test_a_stream_interval_gathers_the_tokens_of_many_ticks_into_one_chunk(poem):
    # A tiny model draws 40 tokens in a few milliseconds: with half a second to gather them, they come in a
    # chunk or two (at most one per half second), with the same text as without streaming.
    body = {"model": "poem", "prompt": PROMPT, "max_tokens": 40, "seed": 5}
    with TestClient(create_app({"poem": poem}, stream_interval=0.5)) as c:
        whole = c.post("/v1/completions", json=body).json()["choices"][0]["text"]
        events = sse_events(c.post("/v1/completions", json={**body, "stream": True}).text)
    chunks = [ch for e in events[:-1] for ch in e["choices"]]
    assert 1 <= len(chunks) <= 3 and "".join(ch["text"] for ch in chunks) == whole
    with pytest.raises(ValueError, match="stream_interval"):
        create_app({"poem": poem}, stream_interval=-1)


def test_stream_usage_chunk_and_logprobs(client):
    r = client.post(
        "/v1/completions",
        json={
            "prompt": PROMPT,
            "model": "poem",
            "max_tokens": 10,
            "seed": 1,
            "stream": True,
            "logprobs": 2,
            "stream_options": {"include_usage": True},
        },
    )
    events = sse_events(r.text)
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 10,
        "total_tokens": 17,
    }
    chunks = [c for e in events[:-2] for c in e["choices"]]
    tokens = [t for c in chunks for t in c["logprobs"]["tokens"]]
    offsets = [o for c in chunks for o in c["logprobs"]["text_offset"]]
    assert "".join(tokens) == "".join(c["text"] for c in chunks) and len(tokens) == 10
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(10)]


# ----- bad input: a 4xx that names the parameter -----

BAD = [
    ({"prompt": 3}, 400, "prompt"),
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": ["ok", 1]}, 400, "prompt[1]"),
    ({"prompt": ["ok", ""]}, 400, "prompt[1]"),
    ({"prompt": ["a"] * 17}, 400, "prompt"),
    ({"prompt": "€uro"}, 400, "prompt"),
    ({"prompt": "x" * 201}, 400, "prompt"),
    ({}, 400, "prompt"),
    ({"model": "nope"}, 404, "nope"),
    ({"model": ""}, 400, "model"),
    ({"model": 7}, 400, "model"),
    ({"model": "fr"}, 400, "/v1/translate"),
    ({"max_tokens": -1}, 400, "max_tokens"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": CAP + 1}, 400, "max_tokens"),
    ({"max_tokens": 10**30}, 400, "max_tokens"),
    ({"max_tokens": 5.5}, 400, "max_tokens"),
    ({"max_tokens": "16"}, 400, "max_tokens"),
    ({"temperature": -0.1}, 400, "temperature"),
    ({"temperature": 2.5}, 400, "temperature"),
    ({"temperature": "hot"}, 400, "temperature"),
    ({"temperature": True}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"top_p": 1.01}, 400, "top_p"),
    ({"top_k": -1}, 400, "top_k"),
    ({"top_k": 1.5}, 400, "top_k"),
    ({"top_k": 10**9}, 400, "top_k"),
    ({"min_p": 2}, 400, "min_p"),
    ({"typical_p": 0}, 400, "typical_p"),
    ({"repetition_penalty": 0}, 400, "repetition_penalty"),
    ({"repetition_penalty": 11}, 400, "repetition_penalty"),
    ({"repetition_penalty": 5e-324}, 400, "repetition_penalty"),  # would overflow the scores to inf
    ({"presence_penalty": 3}, 400, "presence_penalty"),
    ({"frequency_penalty": -2.5}, 400, "frequency_penalty"),
    ({"no_repeat_ngram": -2}, 400, "no_repeat_ngram"),
    ({"n": 0}, 400, "n"),
    ({"n": 17}, 400, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"stop": ""}, 400, "stop"),
    ({"stop": [3]}, 400, "stop[0]"),
    ({"stop": "x" * 65}, 400, "stop"),
    ({"seed": -1}, 400, "seed"),
    ({"seed": 2**64}, 400, "seed"),
    ({"stream": "yes"}, 400, "stream"),
    ({"stream_options": {"include_usage": 1}}, 400, "stream_options.include_usage"),
    ({"stream_options": {"other": True}}, 400, "stream_options"),
    ({"logprobs": 21}, 400, "logprobs"),
    ({"logprobs": -1}, 400, "logprobs"),
    ({"logprobs": True}, 400, "logprobs"),
    ({"temprature": 1}, 400, "did you mean 'temperature'"),
    ({"echo": True}, 400, "echo is not supported"),
    ({"user": "x" * 300}, 400, "user"),
]


@pytest.mark.parametrize("fields, status, named", BAD, ids=[json.dumps(b)[:40] for b, _, _ in BAD])
def test_malformed_bodies_are_refused_naming_the_parameter(client, fields, status, named):
    body = {"model": "poem", "prompt": PROMPT, **fields}
    if fields == {}:
        del body["prompt"]
    r = client.post("/v1/completions", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert named in error["message"]
    assert client.get("/health").json()["active_rows"] == 0  # nothing was started


@pytest.mark.parametrize(
    "content, named",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"text"', "JSON object"),
        (b"", "JSON object"),
        (b'{"prompt": "a", "temperature": NaN}', "temperature"),
        (b'{"prompt": "a", "top_p": Infinity}', "top_p"),
    ],
)
def test_bodies_that_are_not_json_objects(client, content, named):
    r = client.post("/v1/completions", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400 and named in r.json()["error"]["message"]


@pytest.mark.parametrize("kind", ["application/x-www-form-urlencoded", "text/plain", None])
def test_a_body_that_is_not_sent_as_json_says_how_to_send_it(client, kind):
    headers = {"content-type": kind} if kind else {}
    r = client.post("/v1/completions", content=b'{"prompt": "Shall"}', headers=headers)
    assert r.status_code == 400 and "Content-Type: application/json" in r.json()["error"]["message"]


def test_model_may_be_left_out_only_when_it_is_the_only_one(client, poem):
    r = client.post("/v1/completions", json={"prompt": PROMPT})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model" and "poem, words" in r.text
    app = create_app({"poem": poem}, max_tokens=CAP)
    with TestClient(app) as alone:
        r = alone.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 5, "seed": 1})
        assert r.json()["model"] == "poem"


def test_unknown_route_and_method_are_errors_in_the_same_shape(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/v1/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_a_full_queue_answers_503(poem):
    with TestClient(create_app({"poem": poem}, max_waiting=0)) as c:
        r = c.post("/v1/completions", json={"prompt": PROMPT})
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy"


# ----- models, health, auth, limits, translate, the page -----


def test_models_and_health(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    cards = {m["id"]: m for m in models["data"]}
    assert set(cards) == {"poem", "words", "fr"}
    assert cards["poem"]["kind"] == "lm" and cards["poem"]["tokenizer"] == "char" and cards["fr"]["kind"] == "translate"
    assert client.get("/v1/models/words").json()["tokenizer"] == "word"
    assert client.get("/v1/models/nope").status_code == 404
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["limits"]["max_tokens"] == CAP


def test_health_shows_each_models_decode_precision_and_why(client, poem, words):
    # Chosen once per model at start (serve --decode-precision, auto by default), and what its engine decodes in.
    models = {m["id"]: m for m in client.get("/health").json()["models"]}
    assert list(models) == ["poem", "words", "fr"]
    for name, gen in (("poem", poem), ("words", words)):
        params = sum(p.numel() for p in gen.model.parameters())  # below the size at which int8 pays on a CPU
        assert models[name] == {
            "id": name,
            "kind": "lm",
            "decode_precision": "fp32",
            "decode_precision_reason": f"fp32: {params:,} parameters are too few for int8 to gain on a CPU",
        }
        assert client.app.state.served[name].engine.precision == "fp32"
    assert models["fr"]["kind"] == "translate" and models["fr"]["decode_precision"] == "fp32"
    with TestClient(create_app({"poem": poem}, decode_precision="bf16")) as c:
        (only,) = c.get("/health").json()["models"]
        assert (only["decode_precision"], only["decode_precision_reason"]) == ("bf16", "bf16, as asked")
        assert c.app.state.served["poem"].engine.precision == "bf16"
        r = c.post("/v1/completions", json={"prompt": "Sh", "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) == 3


def test_api_key_guards_the_v1_routes_but_not_health_or_the_page(poem):
    with TestClient(create_app({"poem": poem}, api_key="s3cret")) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/").status_code == 200
        missing = c.get("/v1/models")
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = c.post("/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "wrong API key"
        bad_body = c.post("/v1/completions", content=b"{", headers={"Authorization": "Bearer nope"})
        assert bad_body.status_code == 401  # the key is checked before anything else
        ok = c.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_request_bodies_over_the_limit_are_413(poem):
    with TestClient(create_app({"poem": poem}, max_body_bytes=1000)) as c:
        r = c.post("/v1/completions", json={"prompt": "a" * 2000})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunks():  # no Content-Length: the limit applies as the body streams in
            for _ in range(10):
                yield b" " * 200

        r = c.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/v1/completions", json={"prompt": "Shall", "max_tokens": 2}).status_code == 200


def test_translate_calls_the_model_with_the_settings(client, translator):
    r = client.post("/v1/translate", json={"model": "fr", "input": ["hello", "good day"], "beams": 4, "max_length": 6})
    assert r.status_code == 200
    assert r.json() == {"object": "translation", "model": "fr", "translations": ["olleh", "yad do"]}
    assert translator.calls[-1] == {
        "sources": ["hello", "good day"],
        "beams": 4,
        "length_penalty": 1.0,
        "max_length": 6,
    }
    one = client.post("/v1/translate", json={"input": "abc", "length_penalty": 0.5})  # the only translate model
    assert one.json()["translations"] == ["cba"] and translator.calls[-1]["length_penalty"] == 0.5


@pytest.mark.parametrize(
    "body, status, named",
    [
        ({"model": "poem", "input": "x"}, 400, "/v1/completions"),
        ({"model": "de", "input": "x"}, 404, "de"),
        ({"input": ""}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"input": "x", "beams": 0}, 400, "beams"),
        ({"input": "x", "beams": 17}, 400, "beams"),
        ({"input": "x", "length_penalty": -1}, 400, "length_penalty"),
        ({"input": "x", "max_length": CAP + 1}, 400, "max_length"),
        ({"input": "x" * 201}, 400, "input"),
        ({"input": "x", "prompt": "y"}, 400, "prompt"),
    ],
)
def test_translate_refuses_bad_requests(client, body, status, named):
    r = client.post("/v1/translate", json=body)
    assert r.status_code == status and named in r.json()["error"]["message"]


def test_playground_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for needle in ('id="prompt"', 'id="temperature"', 'id="top_k"', 'id="top_p"', 'id="max_tokens"', 'id="model"'):
        assert needle in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


def test_openapi_schema_lists_the_routes_with_their_bounds(client):
    schema = client.get("/openapi.json").json()
    assert {"/v1/completions", "/v1/models", "/v1/translate", "/health"} <= set(schema["paths"])
    props = schema["components"]["schemas"]["CompletionRequest"]["properties"]
    assert props["top_k"]["maximum"] == 100_000 and props["repetition_penalty"]["minimum"] == 0.01
    assert all("422" not in op["responses"] for item in schema["paths"].values() for op in item.values())


def test_create_app_refuses_models_of_unknown_kinds():
    with pytest.raises(ValueError, match="kind"):
        create_app({"x": type("Odd", (), {"kind": "vision"})()})


def test_greedy_runs_are_batched_deterministically_on_a_word_model(words):
    """Several greedy requests at once: each the same as alone (rows never leak into each other)."""
    engine = Engine(words.model, words.tokenizer, max_rows=8)
    prompts = ["the", "the cat", "a mat .", "on"]
    jobs = [engine.submit(p, SampleConfig(max_new_tokens=15, temperature=0)) for p in prompts]
    engine.start()
    try:
        for job in jobs:
            assert job.finished.wait(30)
    finally:
        engine.stop()
    for p, job in zip(prompts, jobs):
        assert job.samples[0].text == reference(words, p, max_new_tokens=15, temperature=0)[0].text
