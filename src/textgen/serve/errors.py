"""Every error the server answers, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

400 for a bad value (naming the parameter), 401 for a missing or wrong key, 404 for an unknown
model or route, 413 for a body over the limit, 503 when too many requests are waiting, 500 for a
bug (logged, never shown). FastAPI's own errors (a body that does not validate, a route that does
not exist) are mapped here to the same shape.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from textgen.errors import did_you_mean
from textgen.serve.schemas import ErrorResponse

log = logging.getLogger("textgen.serve")
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
OPENAI_UNSUPPORTED = {"echo", "best_of", "suffix", "logit_bias"}
NO_ROUTE = (
    "this server answers POST /v1/completions (not chat), GET /v1/models, POST /v1/translate, GET /health "
    "and the playground at /"
)


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


def busy(message: str) -> ApiError:
    """503: too many requests are waiting for a model."""
    return ApiError(503, message, code="server_busy", kind="server_busy")


def only(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error responses of a route."""
    return {c: ERRORS[c] for c in codes}


def add_error_handlers(app: FastAPI) -> None:
    """Answer ApiError, FastAPI's validation and routing errors, and anything unexpected in OpenAI's shape.

    A body that fails validation is explained against the request model of its route
    (``app.state.bodies``: path -> pydantic model, filled as routes are added)."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        body = request.app.state.bodies.get(request.url.path)
        error = validation_error(exc.errors(), body.model_fields if body is not None else {})
        kind = request.headers.get("content-type", "")
        if error.code == "invalid_body" and "json" not in kind:  # curl -d sends a form unless told otherwise
            error.message = f"send the body as a JSON object with Content-Type: application/json (got {kind or 'none'})"
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.url.path}: {NO_ROUTE}"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return ApiError(exc.status_code, message, code=code).response()

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return ApiError(500, "internal server error", code="internal_error").response()


def validation_error(errors: Sequence[Any], fields: Any) -> ApiError:
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
        return ApiError(400, f"{param}: unknown parameter{did_you_mean(param, fields)}", param, "unknown_parameter")
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
