"""``POST /v1/translate``, the translation models' route: one translation call at a time per model,
in a worker thread, with the request's work bounded by the server's limits."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import anyio
from fastapi import FastAPI, Request

from textgen.errors import TextgenError
from textgen.kinds.base import Kind
from textgen.serve.errors import ApiError, busy, only
from textgen.serve.routes import Served, resolve
from textgen.serve.schemas import Limits, TranslateRequest, Translation


@dataclasses.dataclass
class ServedTranslator(Served):
    """A translation model: it translates one call at a time (``lock``), greedy or beams, in fp32."""

    decode_precision: str = "fp32"
    precision_reason: str = "fp32: translation models decode in fp32"
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    waiting: int = 0  # requests running or waiting for the lock (counted on the event loop)


def add_route(app: FastAPI, kind: Kind) -> None:
    app.state.bodies[kind.route] = TranslateRequest

    @app.post(
        kind.route,
        response_model=Translation,
        responses=only(400, 401, 404, 413),
        summary="Translate sentences with a sequence-to-sequence model",
    )
    async def translate(body: TranslateRequest, request: Request) -> dict[str, Any]:
        target: ServedTranslator = resolve(request.app, body.model, kind)  # type: ignore[assignment]
        limits: Limits = request.app.state.limits
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

        if target.waiting >= request.app.state.options.max_waiting:
            raise busy(f"{target.waiting} requests are already waiting for this model; try again soon")
        target.waiting += 1
        try:
            out = await anyio.to_thread.run_sync(run)
        except (TextgenError, ValueError) as e:
            raise ApiError(400, f"input: {e}", "input") from None
        finally:
            target.waiting -= 1
        return {"object": "translation", "model": target.name, "translations": list(out)}
