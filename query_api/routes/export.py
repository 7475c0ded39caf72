"""`GET /export`: the events of `/events`' filters as a CSV, NDJSON or Parquet download."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from labtel.collector.config import QueryApiConfig
from labtel.collector.storage.client import Storage
from labtel.query_api.deps import get_storage
from labtel.query_api.events import EventFilter
from labtel.query_api.export import EXPORT_COLUMNS, ExportTooLarge, export_chunks
from labtel.query_api.formats import EXPORT_FORMATS, choose_format
from labtel.query_api.routes.events import ATTRIBUTE_FILTERS, event_filter

router = APIRouter(tags=["export"])

_EXTENSIONS = {"csv": "csv", "ndjson": "ndjson", "parquet": "parquet"}
COLUMNS_DOC = "\n".join(f"- `{name}`: {meaning}" for name, _, meaning in EXPORT_COLUMNS)


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that calls `close` when the response ends, however it ends: a client
    hanging up mid-export stops the export at once (its read-ahead threads end, its windows are
    let go), rather than whenever the garbage collector finds the abandoned generator."""

    def __init__(self, content: Iterator[bytes], close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # closing waits for a window being read: not on the event loop
                await anyio.to_thread.run_sync(self._close)


@router.get(
    "/export",
    summary="Download events as CSV, NDJSON or Parquet",
    description="The events `/events` would select, oldest first, streamed in bounded memory whatever their "
    "number; without `end`, up to the moment of the request. Format by `format` or Accept (CSV by default). "
    f"{ATTRIBUTE_FILTERS}\n\nColumns, in order (CSV has a header row):\n{COLUMNS_DOC}",
    response_class=StreamingResponse,
    responses={
        200: {"content": {media: {} for _, media in EXPORT_FORMATS.values()}},
        429: {"description": "max_concurrent exports are streaming; try again (Retry-After)"},
    },
)
def export(
    request: Request,
    storage: Annotated[Storage, Depends(get_storage)],
    flt: Annotated[EventFilter, Depends(event_filter)],
    format: Annotated[str | None, Query(description="csv, ndjson or parquet")] = None,
    limit: Annotated[int | None, Query(ge=1, description="At most this many events (the oldest)")] = None,
) -> StreamingResponse:
    try:
        name, (_, media_type) = choose_format(EXPORT_FORMATS, format, request.headers.get("accept"))
    except LookupError as error:
        raise HTTPException(406 if format is None else 400, str(error)) from None
    if flt.end_ns is None:
        flt.end_ns = time.time_ns()
    config: QueryApiConfig = request.app.state.config
    slots: threading.BoundedSemaphore = request.app.state.export_slots
    if not slots.acquire(blocking=False):
        raise HTTPException(
            429,
            f"{config.export.max_concurrent} exports are streaming (extensions.query_api.export.max_concurrent); "
            "try again when one ends",
            headers={"Retry-After": "5"},
        )
    chunks = export_chunks(storage, flt, name, config.export.chunk_rows, limit, config.export.max_rows)
    reading = threading.Lock()
    """Held while a chunk is made: closing waits for it (a generator cannot be closed while it runs,
    and a client that hangs up leaves a worker thread inside `next`)."""

    def close() -> None:
        try:
            with reading:
                chunks.close()
        finally:
            slots.release()

    try:
        first = next(chunks, b"")  # planning runs now, so its errors are a proper 4xx/503
    except ExportTooLarge as error:
        close()
        raise HTTPException(413, str(error)) from None
    except BaseException:
        close()
        raise
    filename = f"labtel-events-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.{_EXTENSIONS[name]}"

    def body() -> Iterator[bytes]:
        yield first
        while True:
            with reading:
                chunk = next(chunks, None)
            if chunk is None:
                return
            yield chunk

    return ClosingStreamingResponse(
        body(),
        close,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
