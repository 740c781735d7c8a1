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


async def read_body(request: Request, cls: type[BaseModel]) -> Any:
    try:
        data = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"We could not parse the JSON body of your request: {e}") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.")
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
