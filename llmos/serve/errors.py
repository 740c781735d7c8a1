"""OpenAI's error shape and the HTTP plumbing around it: every error a client sees is
{"error": {"message", "type", "param", "code"}}, whether a body fails to parse, a field is out
of range, the key is wrong, a route is unknown or the server has a bug."""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

log = logging.getLogger("llmos")


class APIError(Exception):
    def __init__(self, status: int, message: str, param=None, code=None, kind=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")


def error_body(e: APIError) -> dict:
    return {"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}}


MAX_BODY_BYTES = 8 << 20  # 8 MiB: far above any prompt the context holds
MAX_DEPTH = 32  # nesting of JSON arrays and objects; real requests use 5 or so


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def check_json(data: Any, where: str = "body") -> None:
    """Reject what parses as JSON but cannot be used or stored: nesting deeper than MAX_DEPTH
    and strings that are not valid Unicode (JSON's \\ud800 escapes decode to lone surrogates,
    which no UTF-8 encoder, tokenizer or database accepts)."""
    todo = [(data, where, 0)]
    while todo:
        x, path, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise APIError(400, f"{path}: JSON nested more than {MAX_DEPTH} levels deep")
        if isinstance(x, dict):
            todo += [(k, f"{path} (a key)", depth + 1) for k in x]
            todo += [(v, f"{path}.{k}"[:200], depth + 1) for k, v in x.items()]
        elif isinstance(x, list):
            todo += [(v, f"{path}.{i}", depth + 1) for i, v in enumerate(x)]
        elif isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                raise APIError(400, f"{path}: not valid Unicode (a lone surrogate)") from None


async def read_body(request: Request, cls: type[BaseModel]) -> Any:
    """The request's JSON body as `cls`, or a 400/413 in OpenAI's shape saying what is wrong."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise APIError(413, f"The request body is larger than {MAX_BODY_BYTES >> 20} MiB.")
    try:
        data = json.loads(bytes(raw), parse_constant=_reject_constant)
    except RecursionError:
        raise APIError(400, f"JSON nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, NaN and Infinity
        raise APIError(400, f"We could not parse the JSON body of your request: {e}") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.")
    check_json(data)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"])
        raise APIError(400, f"Invalid value for '{param}': {err['msg']}", param=param) from None


def add_error_handlers(app: FastAPI) -> None:
    """Every exception a route raises becomes a JSON error in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(_, e: APIError):
        return JSONResponse(error_body(e), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_, e: RequestValidationError):
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"][1:])
        return JSONResponse(error_body(APIError(400, err["msg"], param=param)), 400)

    @app.exception_handler(HTTPException)
    async def _http(_, e: HTTPException):
        code = "not_found" if e.status_code == 404 else None
        return JSONResponse(
            error_body(APIError(e.status_code, str(e.detail), code=code)), e.status_code
        )

    @app.exception_handler(Exception)
    async def _crash(_, e: Exception):
        log.exception("request failed")
        return JSONResponse(error_body(APIError(500, f"internal error: {type(e).__name__}")), 500)


class BearerAuth:
    """/v1 and /api need "Authorization: Bearer KEY" (compared in constant time). A plain
    ASGI middleware: Starlette's BaseHTTPMiddleware cancels streaming responses early."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(("/v1/", "/api/")):
            got = dict(scope["headers"]).get(b"authorization", b"")
            if not got.startswith(b"Bearer "):
                msg = "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'."
            elif not hmac.compare_digest(got[7:], self.key):
                msg = "Incorrect API key provided."
            else:
                return await self.app(scope, receive, send)
            e = APIError(401, msg, code="invalid_api_key")
            return await JSONResponse(error_body(e), 401)(scope, receive, send)
        return await self.app(scope, receive, send)
