"""`GET /events/stream`: a live tail over Server-Sent Events, resumable with Last-Event-ID."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from labtel.collector.storage.client import Storage
from labtel.query_api.deps import get_storage
from labtel.query_api.events import EventFilter, decode_cursor, encode_cursor, list_events
from labtel.query_api.params import ParamError
from labtel.query_api.routes.events import ATTRIBUTE_FILTERS, event_filter

router = APIRouter(tags=["events"])

LOOKBACK_NS = 10 * 1_000_000_000
"""How far behind the tail each poll looks again, for events that arrive a little out of order."""
HEARTBEAT_S = 15.0


async def tail(
    request: Request, storage: Storage, flt: EventFilter, after: tuple[int, str] | None, poll_s: float
) -> AsyncIterator[bytes]:
    """SSE frames: each new event as `id: <cursor>`, `event: event`, `data: <JSON>`."""
    position = after or (time.time_ns() - 1_000_000_000, "00000000-0000-0000-0000-000000000000")
    floor = position  # the look-back below catches late arrivals, never what came before the start
    sent: dict[str, int] = {}
    strict = after is not None  # resuming: continue exactly after the last event the client saw
    quiet_since = time.monotonic()
    yield b"retry: 2000\n\n"
    while not await request.is_disconnected():
        look_from = position[0] if strict else max(0, position[0] - LOOKBACK_NS)
        cursor = encode_cursor(
            look_from, position[1] if strict else "00000000-0000-0000-0000-000000000000", ascending=True
        )
        events, _ = await asyncio.to_thread(list_events, storage, flt, 500, cursor, True)
        strict = False
        fresh = [e for e in events if e.event_id not in sent and (e.time_unix_nano, e.event_id) > floor]
        for event in fresh:
            sent[event.event_id] = event.time_unix_nano
            if (event.time_unix_nano, event.event_id) > position:
                position = (event.time_unix_nano, event.event_id)
            frame = f"id: {encode_cursor(event.time_unix_nano, event.event_id, True)}\nevent: event\ndata: "
            yield frame.encode() + event.model_dump_json().encode() + b"\n\n"
        horizon = position[0] - LOOKBACK_NS
        for event_id in [i for i, ts in sent.items() if ts < horizon]:
            del sent[event_id]
        if fresh:
            quiet_since = time.monotonic()
            if len(events) == 500:
                continue  # more are waiting: no pause
        elif time.monotonic() - quiet_since > HEARTBEAT_S:
            quiet_since = time.monotonic()
            yield b": keep-alive\n\n"
        await asyncio.sleep(poll_s)


@router.get(
    "/events/stream",
    summary="Live tail of events (Server-Sent Events)",
    description="Events that match the filters, as they are stored, oldest first. Each SSE message has an `id`; "
    "reconnecting with `Last-Event-ID` (browsers do it for you) resumes after that event. The tail follows "
    "event time and looks back 10 s for late arrivals; use /events for older history. "
    f"{ATTRIBUTE_FILTERS}",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream(
    request: Request,
    storage: Annotated[Storage, Depends(get_storage)],
    flt: Annotated[EventFilter, Depends(event_filter)],
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    resume: Annotated[str | None, Query(description="Like Last-Event-ID, for clients that cannot set headers")] = None,
    poll: Annotated[float, Query(ge=0.1, le=10, description="Seconds between storage polls")] = 0.5,
) -> StreamingResponse:
    token = last_event_id or resume
    after = None
    try:
        if token:
            after = decode_cursor(token, ascending=True)
        elif flt.start_ns is not None:
            after = (flt.start_ns - 1, "00000000-0000-0000-0000-000000000000")
    except ParamError as error:
        raise HTTPException(400, str(error)) from None
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(tail(request, storage, flt, after, poll), media_type="text/event-stream", headers=headers)
