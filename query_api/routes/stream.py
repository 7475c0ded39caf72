"""`GET /events/stream`: a live tail over Server-Sent Events, in insert order, resumable with Last-Event-ID."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
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
KEPT_TAILS = 64
"""Tails whose sent ids a reconnection may take up (each at most MAX_SENT ids)."""
KEPT_FOR_S = 600.0
"""How long after a tail ends a reconnection may take up what it sent."""


@dataclass
class Sent:
    """What one tail sent, in the order it sent it: event id -> (insert ms, the floor then).
    A reconnection with one of these ids as Last-Event-ID takes up the look-back from there: the
    events stored late with older ids (an insert that began earlier and committed after the
    resumed event was sent) are sent, those sent before the resumed one are not sent again."""

    key: tuple[tuple[str, str], ...]
    ids: dict[str, tuple[int, str]] = field(default_factory=dict)
    horizon: int = 0
    """The insert ms below which it let go of the ids it sent."""
    ended: float | None = None


_recent: deque[Sent] = deque(maxlen=KEPT_TAILS)


def _taken_up(key: tuple[tuple[str, str], ...], after_id: str) -> tuple[str, int, dict[str, tuple[int, str]]] | None:
    """(floor, position ms, sent ids) of a recent tail with these filters that sent `after_id`,
    as they were when it sent it; None when no tail kept here did."""
    now = time.monotonic()
    for kept in reversed(_recent):
        if kept.key != key or (kept.ended is not None and now - kept.ended > KEPT_FOR_S):
            continue
        if after_id not in kept.ids:
            continue
        prefix: dict[str, tuple[int, str]] = {}
        for event_id, entry in kept.ids.items():
            prefix[event_id] = entry
            if event_id == after_id:
                break
        floor = max(prefix[after_id][1], id_at(kept.horizon))  # what it let go of is not looked at again
        return floor, max(entry[0] for entry in prefix.values()), prefix
    return None


async def tail(
    request: Request,
    storage: Storage,
    flt: EventFilter,
    after_id: str | None,
    poll_s: float,
    key: tuple[tuple[str, str], ...] = (),
    closing: asyncio.Event | None = None,
) -> AsyncIterator[bytes]:
    """SSE frames: each matching event once it is stored, as `id: <event id>`, `event: event`,
    `data: <JSON>`, in insert order; after the event `after_id` when resuming (`key`: the
    filters, to take up a recent tail of the same ones, see `Sent`). A new tail's first frame
    names where it starts as its `id`, so a client that reconnects before any event came
    resumes from there (nothing stored meanwhile is missed). The tail ends when `closing` is
    set (the query API shutting down), and the client reconnects to the next server."""
    resumed = after_id is not None
    if after_id is None:  # from now on, or everything stored since `start` (event time)
        after_id = id_at(0 if flt.start_ns is not None else await asyncio.to_thread(now_ms, storage) - 1000)
    if closing is None:
        closing = asyncio.Event()
    floor = after_id  # the look-back catches late commits, never what came before the start
    position_ms = inserted_ms(floor)
    sent: dict[str, tuple[int, str]] = {}
    if (taken := _taken_up(key, after_id)) is not None:
        floor, position_ms, sent = taken
    record = Sent(key, sent)
    _recent.append(record)
    quiet_since = time.monotonic()
    try:
        yield b"retry: 2000\n" + (b"" if resumed else f"id: {after_id}\n".encode()) + b"\n"
        while not closing.is_set() and not await request.is_disconnected():
            since = max(inserted_ms(floor), position_ms - LOOKBACK_MS)
            found = await asyncio.to_thread(events_stored_after, storage, flt, since, floor, list(sent), 500)
            for event, stored_ms in found:
                sent[event.event_id] = (stored_ms, floor)
                position_ms = max(position_ms, stored_ms)
                yield (
                    f"id: {event.event_id}\nevent: event\ndata: ".encode() + event.model_dump_json().encode() + b"\n\n"
                )
            horizon = position_ms - LOOKBACK_MS
            sent = {event_id: entry for event_id, entry in sent.items() if entry[0] >= horizon}  # in sending order
            if len(sent) > MAX_SENT:
                lowest = sorted(sent)[-MAX_SENT]  # the text of the ids sorts in insert order
                floor = max(floor, lowest)
                sent = {event_id: entry for event_id, entry in sent.items() if event_id >= lowest}
            record.ids, record.horizon = sent, horizon
            if found:
                quiet_since = time.monotonic()
                if len(found) == 500:
                    continue  # more are waiting: no pause
            elif time.monotonic() - quiet_since > HEARTBEAT_S:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), poll_s)
    finally:
        record.ended = time.monotonic()


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
    "id; reconnecting with `Last-Event-ID` (browsers do it for you) resumes after that event. The first message of "
    "a new tail names where it starts as its `id`: a reconnection before any event came gets what was stored "
    "meanwhile. The stream ends when the server shuts down. "
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
    key = tuple(sorted((k, v) for k, v in request.query_params.multi_items() if k not in ("poll", "resume")))
    return StreamingResponse(
        tail(request, storage, flt, after, poll, key, request.app.state.closing),
        media_type="text/event-stream",
        headers=headers,
    )
