"""Storage errors as HTTP answers: the client's mistake is a 4xx that says what, never a 500."""

from __future__ import annotations

import re

from clickhouse_connect.driver.exceptions import ClickHouseError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from labtel.collector.storage.client import StorageError

# ClickHouse error codes caused by what the client asked (a pattern, a type, a name, a value).
_CLIENT_CODES = {
    *(6, 25, 26, 27, 32, 36, 38, 41, 42, 43, 44, 46, 47, 53, 60, 62, 69, 70, 72, 81, 130, 184, 190),
    *(215, 386, 395, 427, 456, 457),  # 395: throwIf, the query's own error
}
_REFUSED_CODES = {164, 446, 497}  # READONLY, FUNCTION_NOT_ALLOWED, ACCESS_DENIED
_LIMIT_CODES = {158, 241, 306, 307, 396}  # 306: recursion too deep (WITH RECURSIVE)
_TIMEOUT_CODES = {159, 160}
_CODE = re.compile(r"Code: (\d+)")
_TRAILER = re.compile(r"\s*\((?:version [^)]*|[A-Z_]+)\)\.?\s*$")


def describe(error: Exception) -> tuple[int, str]:
    """The HTTP status and message for a storage error."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    codes = [int(c) for c in _CODE.findall(text)]
    code = codes[-1] if codes else 0
    message = _TRAILER.sub("", first.split("DB::Exception: ")[-1]).strip()
    if code in _CLIENT_CODES:
        return 400, message
    if code in _REFUSED_CODES:
        return 403, f"not allowed: {message}"
    if code in _LIMIT_CODES:
        return 413, f"the query exceeds a limit: {message}"
    if code in _TIMEOUT_CODES:
        return 408, f"the query took too long: {message}"
    return 503, f"storage error, try again: {message}"


def install(app: FastAPI) -> None:
    """Answer storage errors from any route with a clear status and message."""

    async def on_storage_error(request: Request, error: Exception) -> JSONResponse:
        status, message = describe(error)
        headers = {"Retry-After": "2"} if status == 503 else None
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    app.add_exception_handler(ClickHouseError, on_storage_error)
    app.add_exception_handler(StorageError, on_storage_error)
