"""Storage errors as HTTP answers: the client's mistake is a 4xx that says what, never a 500."""

from __future__ import annotations

import json
import re
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from labtel.collector.storage.client import StorageError, StorageUnavailable, TextNotUnicode
from labtel.collector.storage.errors import RETRY_CODES, TIMEOUT_CODES, error_code

# Storage being unreachable, overloaded or broken (RETRY_CODES) is a 503: try again later. Any
# other error the server raises while running a request's query is the query's own (a bad pattern,
# type, name or value, division by zero, an unsupported clause): a 400, never the same again.
_REFUSED_CODES = {164, 446, 497}  # READONLY, FUNCTION_NOT_ALLOWED, ACCESS_DENIED
_LIMIT_CODES = {158, 241, 306, 307, 396}  # 306: recursion too deep (WITH RECURSIVE)
_TRAILER = re.compile(r"\s*\((?:version [^)]*|[A-Z_0-9]+)\)\.?\s*$")
_SANDBOX_SETTINGS = re.compile(r" SETTINGS readonly = 1(?:, \w+ = (?:'[^']*'|[\w.+-]+))*")
"""The SETTINGS clause the SQL sandbox appends, which ClickHouse repeats in its messages."""
_CANONICAL = re.compile(r":? In scope SELECT formatQuery\(.*\) AS q")
"""The sandbox's call of formatQuery around the user's SQL, repeated in a syntax error."""


def _message(text: str) -> str:
    """ClickHouse's message without its code, name and version trailers and the sandbox's wrappers."""
    first = text.splitlines()[0] if text else ""
    message = first.split("DB::Exception: ")[-1]
    message = _CANONICAL.sub("", _SANDBOX_SETTINGS.sub("", message))
    while (shorter := _TRAILER.sub("", message)) != message:
        message = shorter
    return message.strip()


def describe(error: Exception) -> tuple[int, str]:
    """The HTTP status and message for a storage error."""
    text = str(error).strip()
    code = error_code(error)
    message = _message(text) or type(error).__name__
    if isinstance(error, StorageUnavailable):  # e.g. chDB's BAD_ARGUMENTS for a store it cannot open
        return 503, f"storage error, try again: {message}"
    if code in _REFUSED_CODES:
        return 403, f"not allowed: {message}"
    if code in _LIMIT_CODES:
        return 413, f"the query exceeds a limit: {message}"
    if code in TIMEOUT_CODES:
        return 408, f"the query took too long: {message}"
    if code and code not in RETRY_CODES:
        return 400, message
    return 503, f"storage error, try again: {message}"


class _AsciiJSON(JSONResponse):
    """JSON with every character past ASCII escaped: it can carry a lone surrogate (`\\ud800`)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


async def on_invalid_request(request: Request, error: Exception) -> Response:
    """FastAPI's 422 for a request that does not validate; its errors repeat the input, so one
    holding a lone surrogate (a JSON `\\ud800` escape) is written escaped instead of failing."""
    assert isinstance(error, RequestValidationError)
    try:
        return await request_validation_exception_handler(request, error)
    except UnicodeEncodeError:
        return _AsciiJSON({"detail": jsonable_encoder(error.errors())}, status_code=422)


INVALID_TEXT = "holds text that is not valid Unicode (a lone surrogate such as \\ud800)"


def install(app: FastAPI) -> None:
    """Answer storage errors from any route with a clear status and message, requests that do
    not validate with FastAPI's 422, whatever text they hold, and text that is not valid Unicode
    (a parameter's, a posted event's) with a 400."""

    async def on_storage_error(request: Request, error: Exception) -> JSONResponse:
        status, message = describe(error)
        headers = {"Retry-After": "2"} if status == 503 else None
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    app.add_exception_handler(ClickHouseError, on_storage_error)
    app.add_exception_handler(StorageError, on_storage_error)
    app.add_exception_handler(RequestValidationError, on_invalid_request)

    async def on_text_not_unicode(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"the request {INVALID_TEXT}"}, status_code=400)

    app.add_exception_handler(TextNotUnicode, on_text_not_unicode)
