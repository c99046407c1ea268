"""The FastAPI app: each loaded model served by its kind, the routes, the middleware and the error mapping.

Routes: ``POST /v1/completions`` (JSON, or Server-Sent Events ending with ``data: [DONE]``;
``completions.py``), ``GET /v1/models``, ``POST /v1/translate`` (``translations.py``), ``GET /health``
(``routes.py``), the OpenAPI schema at ``/openapi.json`` and the playground at ``/``. Every error
is OpenAI's shape (``errors.py``); the API key and the body limit are middleware (``middleware.py``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI

from textgen import __version__
from textgen.errors import ConfigError
from textgen.kinds import all_kinds, get_kind
from textgen.kinds.base import Kind
from textgen.serve.errors import add_error_handlers
from textgen.serve.middleware import ApiKey, BodyLimit
from textgen.serve.routes import ServeOptions, add_common_routes
from textgen.serve.schemas import Limits


def create_app(
    models: Mapping[str, Any],
    *,
    api_key: str | None = None,
    max_tokens: int = 2048,
    max_prompt_tokens: int = 4096,
    max_body_bytes: int = 1 << 20,
    max_batch: int = 64,
    max_waiting: int = 256,
    decode_precision: str = "auto",
    stream_interval: float = 0.02,
) -> FastAPI:
    """The app serving ``models`` (id -> ``textgen.load(...)`` result, whose ``kind`` picks how it is served).

    Language models decode in an engine thread each, started and stopped with the app's lifespan, in
    the ``decode_precision`` chosen once per model (``auto``: sampling/precision.py). ``max_batch``
    rows are decoded together per model; ``max_waiting`` requests may wait for rows. A reply sends what
    ``stream_interval`` seconds of decoding made in one chunk (0: every token as it comes).
    """
    if not models:
        raise ValueError("create_app needs at least one model")
    if not 0 <= stream_interval <= 10:
        raise ValueError(f"stream_interval must be from 0 to 10 seconds, got {stream_interval}")
    options = ServeOptions(
        max_batch=max_batch, max_waiting=max_waiting, decode_precision=decode_precision, stream_interval=stream_interval
    )
    served = {name: _kind(name, obj).serve(name, obj, options) for name, obj in models.items()}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for s in served.values():
            s.start()
        try:
            yield
        finally:
            for s in served.values():
                await anyio.to_thread.run_sync(s.stop)

    app = FastAPI(
        title="textgen",
        summary="OpenAI-style completions from recurrent text generators, with a playground at /",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads its scripts from a CDN; the schema is at /openapi.json
        redoc_url=None,
    )
    app.state.served, app.state.options, app.state.created = served, options, int(time.time())
    app.state.limits = Limits(
        max_tokens=max_tokens, max_prompt_tokens=max_prompt_tokens, max_body_bytes=max_body_bytes, max_batch=max_batch
    )
    app.state.bodies = {}  # route -> its request model, for explaining a body that does not validate
    add_common_routes(app)
    for kind in all_kinds():
        kind.add_route(app)
    add_error_handlers(app)
    app.openapi = lambda: _schema(app, api_key)  # type: ignore[method-assign]
    app.add_middleware(ApiKey, key=api_key)
    app.add_middleware(BodyLimit, limit=max_body_bytes)  # outermost: runs first
    return app


def _kind(name: str, obj: Any) -> Kind:
    """The kind of a model given to create_app (its ``kind``); another is a ValueError, as any bad argument."""
    try:
        return get_kind(getattr(obj, "kind", None))
    except ConfigError as e:
        raise ValueError(f"model {name!r}: {e}") from None


def _schema(app: FastAPI, api_key: str | None) -> dict[str, Any]:
    """FastAPI's schema, without the 422 it documents for every body (this app answers 400), with the key."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
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
