"""The routes every server has (playground, /health, /v1/models), and what each kind's route shares:
the loaded models (``Served``) and finding the one a request names (``resolve``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

from textgen.errors import did_you_mean
from textgen.serve.errors import ApiError, only
from textgen.serve.schemas import Health, ModelCard, ModelList

if TYPE_CHECKING:
    from textgen.kinds.base import Kind
    from textgen.serve.engine import EngineStats

STATIC = Path(__file__).parent / "static"


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """The server's settings that shape how each model is served."""

    max_batch: int = 64  # rows decoded together per language model
    max_waiting: int = 256  # requests that may wait per model
    decode_precision: str = "auto"  # resolved once per model (sampling/precision.py)
    stream_interval: float = 0.02  # seconds a reply waits for more tokens once some are ready (engine.updates)


@dataclasses.dataclass
class Served:
    """A loaded model under its id, as the routes see it; its kind's ``serve`` makes one."""

    name: str
    obj: Any  # what textgen.load returned
    kind: Kind
    decode_precision: str = "fp32"
    precision_reason: str = ""

    def start(self) -> None:
        """Begin work with the app (a language model's engine thread)."""

    def stop(self) -> None:
        """End work with the app (blocking: run it in a thread)."""

    @property
    def stats(self) -> EngineStats | None:
        """Rows and requests of its engine, for /health (None without one)."""
        return None

    def card(self, created: int) -> dict[str, Any]:
        card: dict[str, Any] = {"id": self.name, "object": "model", "created": created, "owned_by": "textgen"}
        card["kind"] = self.kind.name
        tok, cfg = getattr(self.obj, "tokenizer", None), getattr(self.obj, "config", None)
        if tok is not None:
            card.update(tokenizer=tok.kind, vocab_size=tok.vocab_size)
        model_cfg = getattr(cfg, "model", None)
        if model_cfg is not None:
            card.update(cell=model_cfg.cell, hidden_size=model_cfg.hidden_size, layers=model_cfg.layers)
        return card

    def health(self) -> dict[str, Any]:
        return {
            "id": self.name,
            "kind": self.kind.name,
            "decode_precision": self.decode_precision,
            "decode_precision_reason": self.precision_reason,
        }


def resolve(app: FastAPI, name: str | None, kind: Kind) -> Served:
    """The model a request to ``kind``'s route names, or the only one of that kind; else a 400 or 404 saying why."""
    served: dict[str, Served] = app.state.served
    if name is None:
        fits = [s for s in served.values() if s.kind is kind]
        if len(fits) == 1:
            return fits[0]
        if not fits:
            routes = " and ".join(sorted({s.kind.route for s in served.values()}))
            raise ApiError(400, f"model: this server has no {kind.noun}s; its models answer at {routes}", "model")
        names = ", ".join(s.name for s in fits)
        raise ApiError(400, f"model: name the model to use (this server's {kind.noun}s: {names})", "model")
    if name not in served:
        raise ApiError(
            404,
            f"model {name!r} not found{did_you_mean(name, served)}; this server has: {', '.join(served)}",
            "model",
            "model_not_found",
        )
    s = served[name]
    if s.kind is not kind:
        raise ApiError(400, f"model {name!r} is a {s.kind.name} model: use POST {s.kind.route}", "model")
    return s


def add_common_routes(app: FastAPI) -> None:
    """The playground page and its files, /health, and the model list."""
    state = app.state

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", response_model=Health, summary="Liveness, load, limits and each model's decode precision")
    async def health() -> dict[str, Any]:
        stats = [s.stats for s in state.served.values() if s.stats is not None]
        return {
            "status": "ok",
            "active_rows": sum(s.active_rows for s in stats),
            "waiting": sum(s.waiting for s in stats),
            "completed": sum(s.completed for s in stats),
            "cancelled": sum(s.cancelled for s in stats),
            "limits": state.limits.model_dump(),
            "models": [s.health() for s in state.served.values()],
        }

    @app.get("/v1/models", response_model=ModelList, responses=only(401), summary="The loaded models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [s.card(state.created) for s in state.served.values()]}

    @app.get("/v1/models/{model_id}", response_model=ModelCard, responses=only(401, 404), summary="One model")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id not in state.served:
            raise ApiError(404, f"model {model_id!r} not found; this server has: {', '.join(state.served)}", "model")
        return state.served[model_id].card(state.created)
