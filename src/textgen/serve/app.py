"""The FastAPI app: OpenAI-style routes over the batching engines, auth, limits, errors and the playground.

Routes: ``POST /v1/completions`` (JSON, or Server-Sent Events ending with ``data: [DONE]``),
``GET /v1/models``, ``POST /v1/translate`` (seq2seq checkpoints), ``GET /health``, the OpenAPI
schema at ``/openapi.json`` and the playground at ``/``. Every error is OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``: 400 for a bad value (naming the parameter),
401 for a missing or wrong key, 404 for an unknown model, 413 for a body over the limit, 503
when too many requests are waiting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import hmac
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from textgen.config import SampleConfig
from textgen.errors import TextgenError
from textgen.sampling.core import Update
from textgen.serve.engine import Engine, EngineBusy, Job, updates
from textgen.serve.schemas import (
    Completion,
    CompletionRequest,
    ErrorResponse,
    Health,
    Limits,
    ModelCard,
    ModelList,
    TranslateRequest,
    Translation,
)

log = logging.getLogger("textgen.serve")
STATIC = Path(__file__).parent / "static"
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # OpenAI knows only stop and length
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in [
        (400, "a parameter is missing, of the wrong type or out of range (the message names it)"),
        (401, "the server has an API key and the request's Authorization: Bearer header does not match it"),
        (404, "no such model"),
        (413, "the request body is larger than the server allows"),
        (503, "too many requests are waiting for this model"),
    ]
}


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, kind: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


@dataclasses.dataclass
class Served:
    """A loaded model under its id: a language model with its engine, or a translator."""

    name: str
    obj: Any
    engine: Engine | None = None
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)  # translators run one call at a time
    waiting: int = 0  # translate requests running or waiting for the lock (counted on the event loop)

    @property
    def kind(self) -> str:
        return getattr(self.obj, "kind", "lm")

    def card(self, created: int) -> dict[str, Any]:
        card: dict[str, Any] = {"id": self.name, "object": "model", "created": created, "owned_by": "textgen"}
        card["kind"] = self.kind
        tok, cfg = getattr(self.obj, "tokenizer", None), getattr(self.obj, "config", None)
        if tok is not None:
            card.update(tokenizer=tok.kind, vocab_size=tok.vocab_size)
        model_cfg = getattr(cfg, "model", None)
        if model_cfg is not None:
            card.update(cell=model_cfg.cell, hidden_size=model_cfg.hidden_size, layers=model_cfg.layers)
        return card


def create_app(
    models: Mapping[str, Any],
    *,
    api_key: str | None = None,
    max_tokens: int = 2048,
    max_prompt_tokens: int = 4096,
    max_body_bytes: int = 1 << 20,
    max_batch: int = 64,
    max_waiting: int = 256,
    decode_precision: str = "fp32",
) -> FastAPI:
    """The app serving ``models`` (id -> ``textgen.load(...)`` result: kind "lm", or "translate").

    Language models decode in an engine thread each, started and stopped with the app's lifespan.
    ``max_batch`` rows are decoded together per model; ``max_waiting`` requests may wait for rows.
    """
    if not models:
        raise ValueError("create_app needs at least one model")
    limits = Limits(
        max_tokens=max_tokens, max_prompt_tokens=max_prompt_tokens, max_body_bytes=max_body_bytes, max_batch=max_batch
    )
    served: dict[str, Served] = {}
    for name, obj in models.items():
        s = Served(name, obj)
        if s.kind == "lm":
            s.engine = Engine(
                obj.model, obj.tokenizer, max_rows=max_batch, max_waiting=max_waiting, precision=decode_precision
            )
        elif s.kind != "translate":
            raise ValueError(f"model {name!r} has kind {s.kind!r}; expected 'lm' or 'translate'")
        served[name] = s
    engines = [s.engine for s in served.values() if s.engine is not None]
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for engine in engines:
            engine.start()
        try:
            yield
        finally:
            for engine in engines:
                await anyio.to_thread.run_sync(engine.stop)

    app = FastAPI(
        title="textgen",
        summary="OpenAI-style completions from recurrent text generators, with a playground at /",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads its scripts from a CDN; the schema is at /openapi.json
        redoc_url=None,
    )
    app.state.served, app.state.limits = served, limits

    def resolve(name: str | None, kind: str) -> Served:
        if name is None:
            fits = [s for s in served.values() if s.kind == kind]
            if len(fits) == 1:
                return fits[0]
            if not fits:
                route = "/v1/translate" if kind == "lm" else "/v1/completions"
                raise ApiError(400, f"model: this server has no {KINDS[kind]}s; its models answer at {route}", "model")
            names = ", ".join(s.name for s in fits)
            raise ApiError(400, f"model: name the model to use (this server's {KINDS[kind]}s: {names})", "model")
        if name not in served:
            raise ApiError(
                404,
                f"model {name!r} not found{_did_you_mean(name, served)}; this server has: {', '.join(served)}",
                "model",
                "model_not_found",
            )
        s = served[name]
        if s.kind != kind:
            route = "/v1/translate" if s.kind == "translate" else "/v1/completions"
            raise ApiError(400, f"model {name!r} is a {s.kind} model: use POST {route}", "model")
        return s

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", response_model=Health, summary="Liveness, load and limits (never needs the API key)")
    async def health() -> dict[str, Any]:
        stats = [e.stats for e in engines]
        return {
            "status": "ok",
            "active_rows": sum(s.active_rows for s in stats),
            "waiting": sum(s.waiting for s in stats),
            "completed": sum(s.completed for s in stats),
            "cancelled": sum(s.cancelled for s in stats),
            "limits": limits.model_dump(),
        }

    @app.get("/v1/models", response_model=ModelList, responses=_only(401), summary="The loaded models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [s.card(created) for s in served.values()]}

    @app.get("/v1/models/{model_id}", response_model=ModelCard, responses=_only(401, 404), summary="One model")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id not in served:
            raise ApiError(404, f"model {model_id!r} not found; this server has: {', '.join(served)}", "model")
        return served[model_id].card(created)

    @app.post(
        "/v1/completions",
        response_model=Completion,
        responses={
            200: {
                "description": "the completion; with stream=true, Server-Sent Events of completion chunks, then [DONE]",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_only(400, 401, 404, 413, 503),
        },
        summary="Continue one or more prompts (OpenAI's completions API)",
    )
    async def completions(body: CompletionRequest, request: Request) -> Any:
        target = resolve(body.model, "lm")
        engine = target.engine
        assert engine is not None
        settings = _sample_config(body, limits)
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        loop, ready = asyncio.get_running_loop(), asyncio.Event()
        jobs: list[Job] = []
        try:
            for prompt in prompts:
                job = engine.submit(
                    prompt,
                    dataclasses.replace(settings, stop=list(settings.stop)),
                    body.logprobs,
                    loop,
                    ready,
                    max_prompt_tokens=limits.max_prompt_tokens,
                )
                jobs.append(job)
        except EngineBusy as e:
            _cancel(jobs)
            raise ApiError(503, str(e), code="server_busy", kind="server_busy") from None
        except (TextgenError, ValueError) as e:
            _cancel(jobs)
            param = "prompt" if isinstance(body.prompt, str) else f"prompt[{len(jobs)}]"  # the one that failed
            raise ApiError(400, f"{param}: {e}", "prompt") from None
        reply = _Reply(target.name, settings.num_samples, jobs, body.logprobs, target.obj.tokenizer)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                reply.events(include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await reply.whole(request, ready)

    @app.post(
        "/v1/translate",
        response_model=Translation,
        responses=_only(400, 401, 404, 413),
        summary="Translate sentences with a sequence-to-sequence model",
    )
    async def translate(body: TranslateRequest) -> dict[str, Any]:
        target = resolve(body.model, "translate")
        sources = [body.input] if isinstance(body.input, str) else list(body.input)
        tokenizer = getattr(target.obj, "source_tokenizer", None)
        for i, text in enumerate(sources):
            size, unit = (len(tokenizer.encode(text)), "tokens") if tokenizer is not None else (len(text), "characters")
            if size > limits.max_prompt_tokens:
                where = "input" if isinstance(body.input, str) else f"input[{i}]"
                raise ApiError(
                    400, f"{where}: {size:,} {unit}; this server takes at most {limits.max_prompt_tokens:,}", "input"
                )
        if body.max_length is not None and body.max_length > limits.max_tokens:
            raise ApiError(
                400,
                f"max_length must be at most {limits.max_tokens} on this server, got {body.max_length}",
                "max_length",
            )

        # A translation is at most max_length tokens, and by default at most the server's --max-tokens
        # (within its own limit relative to the source): with the bounds above, a request's work is bounded.
        max_length = body.max_length or limits.max_tokens

        def run() -> list[str]:
            with target.lock:
                return target.obj.translate(
                    sources, beams=body.beams, length_penalty=body.length_penalty, max_length=max_length
                )

        if target.waiting >= max_waiting:
            raise ApiError(
                503,
                f"{target.waiting} requests are already waiting for this model; try again soon",
                code="server_busy",
                kind="server_busy",
            )
        target.waiting += 1
        try:
            out = await anyio.to_thread.run_sync(run)
        except (TextgenError, ValueError) as e:
            raise ApiError(400, f"input: {e}", "input") from None
        finally:
            target.waiting -= 1
        return {"object": "translation", "model": target.name, "translations": list(out)}

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = TranslateRequest if request.url.path.endswith("/translate") else CompletionRequest
        error = _validation_error(exc.errors(), fields.model_fields)
        kind = request.headers.get("content-type", "")
        if error.code == "invalid_body" and "json" not in kind:  # curl -d sends a form unless told otherwise
            error.message = f"send the body as a JSON object with Content-Type: application/json (got {kind or 'none'})"
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = (
                f"no route {request.url.path}: this server answers POST /v1/completions (not chat), "
                "GET /v1/models, POST /v1/translate, GET /health and the playground at /"
            )
        return ApiError(exc.status_code, message, code=_code(exc.status_code)).response()

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return ApiError(500, "internal server error", code="internal_error").response()

    generate_schema = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, without the 422 it documents for every body (this app answers 400)."""
        if app.openapi_schema is None:
            schema = generate_schema()
            for path, item in schema["paths"].items():
                for operation in item.values():
                    operation.get("responses", {}).pop("422", None)
                    if api_key and path.startswith("/v1"):
                        operation["security"] = [{"bearer": []}]
            components = schema.setdefault("components", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
            if api_key:
                components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(_ApiKey, key=api_key)
    app.add_middleware(_BodyLimit, limit=max_body_bytes)  # outermost: runs first
    return app


class _Reply:
    """The answer to one completions request, from its jobs' updates: whole, or as SSE chunks."""

    def __init__(self, model: str, n: int, jobs: Sequence[Job], logprobs: int | None, tokenizer: Any) -> None:
        self.id, self.created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        self.model, self.n, self.jobs, self.logprobs, self.tokenizer = model, n, jobs, logprobs, tokenizer
        self.offsets = [0] * (n * len(jobs))  # each choice's text length so far, for text_offset

    def _logprobs(self, index: int, ups: Sequence[Update]) -> dict[str, list[Any]] | None:
        if self.logprobs is None:
            return None
        out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for u in ups:
            for t in u.tokens:
                out["tokens"].append(t.text)
                out["token_logprobs"].append(math.log(max(t.prob, 1e-45)))  # a drawn token always has some
                out["top_logprobs"].append({self.tokenizer.token_text(i): math.log(q) for i, q in t.top})
                out["text_offset"].append(self.offsets[index])
                self.offsets[index] += len(t.text)
        return out

    def _usage(self) -> dict[str, int]:
        prompt = sum(len(job.context) for job in self.jobs)
        completion = sum(len(s.tokens) for job in self.jobs for s in job.samples)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"

    async def events(self, include_usage: bool) -> AsyncIterator[str]:
        """SSE: a chunk per choice with its new text (all that is ready), its last with a finish reason; [DONE]."""
        ready = self.jobs[0].ready
        assert ready is not None
        try:
            async for batch in updates(self.jobs, ready):
                by_choice: dict[int, list[Update]] = {}
                for k, u in batch:
                    by_choice.setdefault(k * self.n + u.index, []).append(u)
                parts = []
                for index, ups in sorted(by_choice.items()):
                    reason = next((u.finish_reason for u in ups if u.finish_reason), None)
                    choice = {
                        "index": index,
                        "text": "".join(u.text for u in ups),
                        "logprobs": self._logprobs(index, ups),
                        "finish_reason": FINISH[reason] if reason else None,
                    }
                    parts.append(self._chunk([choice]))
                if parts:
                    yield "".join(parts)
            error = next((job.error for job in self.jobs if job.error), None)
            if error:
                body = {"error": {"message": error, "type": "server_error", "param": None, "code": "internal_error"}}
                yield f"data: {json.dumps(body)}\n\n"
            elif include_usage:
                yield self._chunk([], self._usage())
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or we are done): stop decoding whatever is left
            _cancel(self.jobs)

    async def whole(self, request: Request, ready: asyncio.Event) -> JSONResponse:
        """The whole completion; if the client disconnects first, its decoding stops."""
        collected: dict[int, list[Update]] = {}

        async def collect() -> None:
            async for batch in updates(self.jobs, ready):
                for k, u in batch:
                    collected.setdefault(k * self.n + u.index, []).append(u)

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        work, watch = asyncio.ensure_future(collect()), asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not work.done():
                work.cancel()
                _cancel(self.jobs)
        if not work.done() or work.cancelled():
            return JSONResponse({}, status_code=499)  # nobody is listening
        work.result()
        error = next((job.error for job in self.jobs if job.error), None)
        if error:
            raise ApiError(500, error, code="internal_error")
        choices = []
        for k, job in enumerate(self.jobs):
            for i, sample in enumerate(job.samples):
                index = k * self.n + i
                choices.append(
                    {
                        "index": index,
                        "text": sample.text,
                        "logprobs": self._logprobs(index, collected.get(index, [])),
                        "finish_reason": FINISH[sample.finish_reason],
                    }
                )
        return JSONResponse(
            {
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": choices,
                "usage": self._usage(),
            }
        )


def _cancel(jobs: Sequence[Job]) -> None:
    for job in jobs:
        if not job.finished.is_set():
            job.cancel()


def _sample_config(body: CompletionRequest, limits: Limits) -> SampleConfig:
    """The request as generation settings; the server's caps are checked here, never clamped."""
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    if max_tokens > limits.max_tokens:
        raise ApiError(
            400, f"max_tokens must be at most {limits.max_tokens} on this server, got {max_tokens}", "max_tokens"
        )
    n = body.n or 1
    if n > limits.max_batch:
        raise ApiError(400, f"n must be at most {limits.max_batch} on this server (its batch), got {n}", "n")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return SampleConfig(
        max_new_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_k=body.top_k,
        top_p=1.0 if body.top_p is None else body.top_p,
        min_p=body.min_p,
        typical_p=body.typical_p,
        repetition_penalty=body.repetition_penalty,
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        no_repeat_ngram=body.no_repeat_ngram,
        stop=stop,
        seed=body.seed,
        num_samples=n,
    )


OPENAI_UNSUPPORTED = {"echo", "best_of", "suffix", "logit_bias"}


def _validation_error(errors: Sequence[Any], fields: Any = CompletionRequest.model_fields) -> ApiError:
    """One 400 for pydantic's errors: the first parameter at fault, by name, with what was wrong."""
    errors = list(errors)
    if not errors:
        return ApiError(400, "invalid request")
    first = errors[0]
    loc = [p for p in first.get("loc", ()) if p != "body"]
    kind = first.get("type", "")
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return ApiError(
            400, f"the request body is not valid JSON{': ' + str(detail) if detail else ''}", code="json_invalid"
        )
    if not loc:
        return ApiError(400, "the request body must be a JSON object", code="invalid_body")
    param = str(loc[0])
    if kind == "extra_forbidden":
        if param in OPENAI_UNSUPPORTED:
            return ApiError(400, f"{param} is not supported by this server", param, "unsupported_parameter")
        hint = _did_you_mean(param, fields)
        return ApiError(400, f"{param}: unknown parameter{hint}", param, "unknown_parameter")
    # A union (prompt, stop, input: a string or a list) reports one error per branch. The branch that
    # got furthest into the value is the one the client meant; a type mismatch explains least.
    same = [e for e in errors if _where(e)[:1] == [param]]
    best = min(same or [first], key=lambda e: (e.get("type", "").endswith("_type"), -len(_where(e))))
    path = param + "".join(_step(p) for p in _where(best)[1:])
    shown = "" if best.get("type") == "missing" else f", got {_short(best.get('input'))}"
    return ApiError(400, f"{path}: {best.get('msg', 'invalid value')}{shown}", param, best.get("type"))


def _where(error: Any) -> list[Any]:
    """An error's location in the body, without pydantic's union branch tags (``str``, ``list[...]``)."""
    loc = [p for p in error.get("loc", ()) if p != "body"]
    return loc[:1] + [p for p in loc[1:] if isinstance(p, int) or (p.isidentifier() and p not in _TAGS)]


_TAGS = {"str", "int", "float", "bool", "list", "dict"}


def _step(part: Any) -> str:
    return f"[{part}]" if isinstance(part, int) else f".{part}"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if _jsonable(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


KINDS = {"lm": "language model", "translate": "translation model"}


def _did_you_mean(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, [k for k in known if k != name], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _code(status: int) -> str | None:
    return {404: "not_found", 405: "method_not_allowed"}.get(status)


def _only(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: ERRORS[c] for c in codes}


def _version() -> str:
    from textgen import __version__

    return __version__


class _BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, by Content-Length or as they stream in.

    The body is read here (it is small: JSON) and handed to the app whole.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        message = f"the request body is larger than this server's limit of {self.limit:,} bytes"
        await ApiError(413, message, code="request_too_large").response()(scope, _nothing, send)


class _ApiKey:
    """With a key set, every /v1 route needs ``Authorization: Bearer KEY``; the rest stays open."""

    def __init__(self, app: ASGIApp, key: str | None) -> None:
        self.app, self.key = app, key.encode() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is None or scope["type"] != "http" or not scope["path"].startswith("/v1"):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            await self.app(scope, receive, send)
            return
        message = "wrong API key" if given else "missing API key: send the header Authorization: Bearer KEY"
        await ApiError(401, message, code="invalid_api_key").response()(scope, receive, send)


async def _nothing() -> Message:
    return {"type": "http.disconnect"}
