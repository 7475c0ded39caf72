"""`GET /events` and `GET /events/{event_id}`."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query

from labtel.collector.storage.client import Storage
from labtel.query_api.deps import get_storage
from labtel.query_api.events import EventFilter, get_event, list_events
from labtel.query_api.models import Event, EventPage
from labtel.query_api.params import ParamError, parse_hex_id, parse_severity, parse_time_ns

router = APIRouter(tags=["events"])


def event_filter(
    start: Annotated[str | None, Query(description="Events at or after this time (RFC 3339 or epoch seconds)")] = None,
    end: Annotated[str | None, Query(description="Events before this time")] = None,
    severity_min: Annotated[
        str | None, Query(description="Minimum severity: 1-24 or TRACE/DEBUG/INFO/WARN/ERROR/FATAL")
    ] = None,
    service: Annotated[str | None, Query(description="service.name")] = None,
    event_type: Annotated[str | None, Query(description="lab.event.type (case-insensitive)")] = None,
    node: Annotated[str | None, Query(description="lab.node.id")] = None,
    run: Annotated[str | None, Query(description="lab.run.id")] = None,
    trace_id: Annotated[str | None, Query(description="32-digit hex trace id")] = None,
    q: Annotated[str | None, Query(description="Text the body contains (case-insensitive)")] = None,
) -> EventFilter:
    try:
        return EventFilter(
            start_ns=parse_time_ns(start, "start") if start else None,
            end_ns=parse_time_ns(end, "end") if end else None,
            severity_min=parse_severity(severity_min, "severity_min") if severity_min else None,
            service=service,
            event_type=event_type,
            node=node,
            run=run,
            trace_id=parse_hex_id(trace_id, 32, "trace_id") if trace_id else None,
            text=q or None,
        )
    except ParamError as error:
        raise HTTPException(400, str(error)) from None


@router.get("/events", response_model=EventPage, summary="Events, newest first, filtered and paged")
def events(
    storage: Annotated[Storage, Depends(get_storage)],
    flt: Annotated[EventFilter, Depends(event_filter)],
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 100,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> EventPage:
    try:
        page, next_cursor = list_events(storage, flt, limit, cursor)
    except ParamError as error:
        raise HTTPException(400, str(error)) from None
    return EventPage(events=page, next_cursor=next_cursor)


@router.get(
    "/events/{event_id}",
    response_model=Event,
    responses={404: {"description": "no such event"}},
    summary="One event by its id",
)
def event(event_id: str, storage: Annotated[Storage, Depends(get_storage)]) -> Event:
    try:
        canonical = str(UUID(event_id))
    except ValueError:
        raise HTTPException(400, f"event_id: {event_id!r} is not an event id (a UUID)") from None
    found = get_event(storage, canonical)
    if found is None:
        raise HTTPException(404, f"no event with id {canonical}")
    return found
