"""Schemathesis fuzzes the live server from its own OpenAPI schema: valid and invalid requests, never a 500.

Bounded: a fixed number of derandomized examples per operation and mode, against a server on
127.0.0.1 in this process. Each response must also match the schema (status codes, content
types, bodies), and invalid requests must be refused with a 4xx.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from serving import StubTranslator, serve_thread, word_lm

import textgen
from textgen.serve.app import create_app

schemathesis = pytest.importorskip("schemathesis")
EXAMPLES = 100  # per operation and generation mode
MODELS = ["poem", "words", None]  # a generated model name is replaced by one of these (None: keep it)


@pytest.fixture(scope="module")
def schema(tiny_run):
    app = create_app(
        {"poem": textgen.load(tiny_run, "cpu"), "words": word_lm(), "fr": StubTranslator()},
        max_tokens=32,
        max_prompt_tokens=500,
    )
    with serve_thread(app) as url:
        yield schemathesis.openapi.from_url(url + "/openapi.json")


def _checks():
    c = schemathesis.checks
    return [
        c.not_a_server_error,
        c.status_code_conformance,
        c.content_type_conformance,
        c.response_schema_conformance,
        c.negative_data_rejection,
    ]


def _fuzz(operation, mode, statuses: dict[int, int]) -> int:
    """Run up to EXAMPLES derandomized cases of one operation; the number run."""
    count = 0

    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case) -> None:
        nonlocal count
        count += 1
        valid = mode == schemathesis.GenerationMode.POSITIVE  # invalid cases stay invalid
        if valid and operation.path == "/v1/completions" and isinstance(case.body, dict) and "model" in case.body:
            pick = MODELS[count % len(MODELS)]  # real model names, so some requests generate text
            if pick is not None:
                case.body["model"] = pick
        response = case.call_and_validate(checks=_checks(), timeout=60)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    try:
        fuzz()
    except Exception as e:  # no invalid data exists for an operation without inputs
        if "unsatisfiable" not in f"{type(e).__name__} {e}".lower():
            raise
    return count


def test_fuzz_every_operation_from_the_openapi_schema_without_a_server_error(schema, capsys):
    ran: dict[str, int] = {}
    statuses: dict[int, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in schemathesis.GenerationMode:
            ran[f"{operation.label} ({mode.value})"] = _fuzz(operation, mode, statuses)
    total = sum(ran.values())
    with capsys.disabled():
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
        print(f"\n[fuzz] {total} cases over {len(ran)} operation/mode pairs; status codes {shown}")
    assert 500 not in statuses and total >= 200
    assert statuses.get(200, 0) >= 20  # some of them really generated text
