"""``POST /v1/completions``, the language models' route: requests become rows of the model's engine,
answered whole or as Server-Sent Events ending with ``data: [DONE]``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from textgen.config import SampleConfig
from textgen.errors import TextgenError
from textgen.kinds.base import Kind
from textgen.sampling.core import Update
from textgen.sampling.precision import choose_precision
from textgen.serve.engine import Engine, EngineBusy, EngineStats, Job, updates
from textgen.serve.errors import ApiError, busy, only
from textgen.serve.routes import Served, ServeOptions, resolve
from textgen.serve.schemas import Completion, CompletionRequest, Limits

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # OpenAI knows only stop and length


@dataclasses.dataclass
class ServedLanguageModel(Served):
    """A language model with its engine: rows of one decode core, fed by a thread of its own."""

    engine: Engine | None = None

    def start(self) -> None:
        assert self.engine is not None
        self.engine.start()

    def stop(self) -> None:
        assert self.engine is not None
        self.engine.stop()

    @property
    def stats(self) -> EngineStats | None:
        return self.engine.stats if self.engine is not None else None


def serve_language_model(name: str, obj: Any, kind: Kind, options: ServeOptions) -> ServedLanguageModel:
    """``obj`` (a loaded language model) with an engine in the decode precision chosen for it, once."""
    precision, why = choose_precision(obj.model, options.decode_precision)
    engine = Engine(
        obj.model, obj.tokenizer, max_rows=options.max_batch, max_waiting=options.max_waiting, precision=precision
    )
    return ServedLanguageModel(name, obj, kind, precision, why, engine)


def add_route(app: FastAPI, kind: Kind) -> None:
    app.state.bodies[kind.route] = CompletionRequest

    @app.post(
        kind.route,
        response_model=Completion,
        responses={
            200: {
                "description": "the completion; with stream=true, Server-Sent Events of completion chunks, then [DONE]",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **only(400, 401, 404, 413, 503),
        },
        summary="Continue one or more prompts (OpenAI's completions API)",
    )
    async def completions(body: CompletionRequest, request: Request) -> Any:
        target = resolve(request.app, body.model, kind)
        engine = target.engine  # type: ignore[attr-defined]
        limits: Limits = request.app.state.limits
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
            raise busy(str(e)) from None
        except (TextgenError, ValueError) as e:
            _cancel(jobs)
            param = "prompt" if isinstance(body.prompt, str) else f"prompt[{len(jobs)}]"  # the one that failed
            raise ApiError(400, f"{param}: {e}", "prompt") from None
        interval = request.app.state.options.stream_interval
        reply = _Reply(target.name, settings.num_samples, jobs, body.logprobs, target.obj.tokenizer, interval)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                reply.events(include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await reply.whole(request, ready)


class _Reply:
    """The answer to one completions request, from its jobs' updates: whole, or as SSE chunks."""

    def __init__(
        self, model: str, n: int, jobs: Sequence[Job], logprobs: int | None, tokenizer: Any, interval: float
    ) -> None:
        self.id, self.created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        self.model, self.n, self.jobs, self.logprobs, self.tokenizer = model, n, jobs, logprobs, tokenizer
        self.interval = interval  # seconds to let tokens pile up before a chunk (engine.updates)
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
            async for batch in updates(self.jobs, ready, self.interval):
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
            async for batch in updates(self.jobs, ready, self.interval):
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
