"""`GET /events/stream`: a live tail over Server-Sent Events, in insert order, resumable with Last-Event-ID."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from labtel.collector.storage.client import Storage
from labtel.query_api.deps import get_storage
from labtel.query_api.events import EventFilter, decode_cursor
from labtel.query_api.params import ParamError
from labtel.query_api.routes.events import ATTRIBUTE_FILTERS, event_filter
from labtel.query_api.tail import events_stored_after, id_at, inserted_ms, now_ms

router = APIRouter(tags=["events"])

LOOKBACK_MS = 30_000
"""How far back in insert time each poll looks again: an insert that began earlier (its event ids
are older) may commit after a later one."""
MAX_SENT = 10_000
"""Ids remembered to skip in the look-back; a busier tail shortens its look-back to them."""
HEARTBEAT_S = 15.0


async def tail(
    request: Request, storage: Storage, flt: EventFilter, after_id: str | None, poll_s: float
) -> AsyncIterator[bytes]:
    """SSE frames: each matching event once it is stored, as `id: <event id>`, `event: event`,
    `data: <JSON>`, in insert order; after the event `after_id` when resuming."""
    if after_id is None:  # from now on, or everything stored since `start` (event time)
        after_id = id_at(0 if flt.start_ns is not None else await asyncio.to_thread(now_ms, storage) - 1000)
    floor = after_id  # the look-back catches late commits, never what came before the start
    position_ms = inserted_ms(floor)
    sent: dict[str, int] = {}
    quiet_since = time.monotonic()
    yield b"retry: 2000\n\n"
    while not await request.is_disconnected():
        since = max(inserted_ms(floor), position_ms - LOOKBACK_MS)
        found = await asyncio.to_thread(events_stored_after, storage, flt, since, floor, list(sent), 500)
        for event, stored_ms in found:
            sent[event.event_id] = stored_ms
            position_ms = max(position_ms, stored_ms)
            yield f"id: {event.event_id}\nevent: event\ndata: ".encode() + event.model_dump_json().encode() + b"\n\n"
        horizon = position_ms - LOOKBACK_MS
        sent = {event_id: ms for event_id, ms in sent.items() if ms >= horizon}
        if len(sent) > MAX_SENT:
            kept = sorted(sent)[-MAX_SENT:]  # the text of the ids sorts in insert order
            floor = max(floor, kept[0])
            sent = {event_id: sent[event_id] for event_id in kept}
        if found:
            quiet_since = time.monotonic()
            if len(found) == 500:
                continue  # more are waiting: no pause
        elif time.monotonic() - quiet_since > HEARTBEAT_S:
            quiet_since = time.monotonic()
            yield b": keep-alive\n\n"
        await asyncio.sleep(poll_s)


def resume_id(token: str) -> str:
    """The event id of a Last-Event-ID: an event id, or a cursor of /events (ascending)."""
    try:
        return str(UUID(token))
    except ValueError:
        pass
    try:
        return decode_cursor(token, ascending=True)[1]
    except ParamError:
        raise ParamError(f"Last-Event-ID: {token!r} is not an event id sent by this stream") from None


@router.get(
    "/events/stream",
    summary="Live tail of events (Server-Sent Events)",
    description="Events that match the filters, in the order they are stored, however late their event time "
    "(a batch stored from the write-ahead log after an outage, a client's spool): without `start`, from the moment "
    "of connecting; with `start`, first the stored events from `start` on. Each SSE message's `id` is the event "
    "id; reconnecting with `Last-Event-ID` (browsers do it for you) resumes after that event. "
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
    try:
        after = resume_id(token) if token else None
    except ParamError as error:
        raise HTTPException(400, str(error)) from None
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(tail(request, storage, flt, after, poll), media_type="text/event-stream", headers=headers)
