"""`GET /events`, `GET /events/{event_id}` and `POST /events/query`."""

from __future__ import annotations

import inspect
import math
import re
import time
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from labtel.collector.storage.client import Storage
from labtel.query_api.deps import get_storage
from labtel.query_api.events import EventFilter, get_event, list_events, search_words
from labtel.query_api.known_params import reads_parameters
from labtel.query_api.models import Event, EventPage
from labtel.query_api.params import (
    ParamError,
    ordered_range,
    parse_hex_id,
    parse_severity,
    parse_time_ns,
    since_ns,
)
from labtel.query_api.selector import SelectorError

router = APIRouter(tags=["events"])

ATTRIBUTE_FILTERS = """Filter on any attribute with `attr.<key>` (log attributes) or `resource.<key>`
(resource attributes), e.g. `attr.lab.node.id=ot2_1`. Operators: `attr.duration_ms=>100`,
`attr.duration_ms>=100`, `attr.duration_ms=<5`, `attr.status=!=failed` (or `attr.status!=failed`),
`attr.status=in:failed,cancelled`. Numbers compare as numbers; anything else as text."""

_PREFIXES = {"attr.": "attributes.", "resource.": "resource."}
ID_ALIASES = {"node_id": "node", "run_id": "run", "workflow_id": "workflow", "experiment_id": "experiment"}
"""The lab columns' names in events and selectors, taken as the filters' own names."""


def _aliased(request: Request, values: dict[str, str | None]) -> dict[str, str | None]:
    """The lab column filters with `node_id=` ... taken for `node=` ...; both at once is a 400."""
    found = dict(values)
    for alias, name in ID_ALIASES.items():
        given = request.query_params.get(alias)
        if given is None:
            continue
        if found[name] is not None and found[name] != given:
            raise ParamError(f"{alias}: the same filter as {name}; give one of them")
        found[name] = given
    return found


_ANY_OF = {
    "service": "service",
    "event_type": "event_type",
    **{name: alias for alias, name in ID_ALIASES.items()},
    **{alias: alias for alias in ID_ALIASES},
}
"""Filters a selector can match against several values: its field for each."""


def _given_once(request: Request) -> None:
    """A filter of `_SINGLE` given twice is a 400 (the query would keep one of the values)."""
    for name in _SINGLE:
        if len(values := request.query_params.getlist(name)) > 1:
            hint = ""
            if name in _ANY_OF:
                hint = f' For any of several, POST /events/query with {{"{_ANY_OF[name]}": {{"$in": [...]}}}}.'
            raise ParamError(f"{name} is given {len(values)} times; give it once (filters combine with AND).{hint}")


_OPERATORS = {">=": "$gte", "<=": "$lte", "!=": "$ne", ">": "$gt", "<": "$lt", "=": "$eq"}


_INTEGER = re.compile(r"^[+-]?\d+$")


def _typed(text: str) -> Any:
    """A parameter's value as a number where it is one: an integer exactly (ids beyond 2^53), else a float."""
    if _INTEGER.match(text.strip()):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def attribute_selector(items: list[tuple[str, str]]) -> dict[str, Any]:
    """`attr.<key>=<op><value>` query parameters as a selector (one engine for every filter)."""
    conditions: list[dict[str, Any]] = []
    for raw_key, raw_value in items:
        prefix = next((p for p in _PREFIXES if raw_key.startswith(p)), None)
        if prefix is None:
            continue
        key, value, operator = raw_key[len(prefix) :], raw_value, "="
        if key[-1:] in ("<", ">", "!"):  # attr.x>=5 arrives as key "attr.x>" and value "5"
            key, operator = key[:-1], key[-1] + "="
        elif not value and any(c in key for c in "<>"):  # attr.x>5 arrives as a key alone
            cut = min(i for i in (key.find("<"), key.find(">")) if i >= 0)
            key, operator, value = key[:cut], key[cut], key[cut + 1 :]
        else:
            for symbol in (">=", "<=", "!=", ">", "<", "="):
                if value.startswith(symbol):
                    operator, value = symbol, value[len(symbol) :]
                    break
        if not key:
            raise ParamError(f"{raw_key}: the attribute key is missing")
        field = _PREFIXES[prefix] + key
        if value.startswith("in:") and operator == "=":
            conditions.append({field: {"$in": [v for v in value[3:].split(",") if v]}})
            continue
        typed = _typed(value) if operator in (">", "<", ">=", "<=") else value
        if operator in (">", "<", ">=", "<=") and isinstance(typed, str):
            conditions.append({field: {_OPERATORS[operator]: typed}})
        elif operator in ("=", "!="):
            conditions.append({field: {_OPERATORS[operator]: _typed(value)}})
        else:
            conditions.append({field: {_OPERATORS[operator]: typed}})
    return {"$and": conditions} if conditions else {}


@reads_parameters(*ID_ALIASES, prefixes=tuple(_PREFIXES))
def event_filter(
    request: Request,
    start: Annotated[str | None, Query(description="Events at or after this time (RFC 3339 or epoch seconds)")] = None,
    end: Annotated[str | None, Query(description="Events before this time")] = None,
    since: Annotated[str | None, Query(description="Relative start: 15m, 24h, 7d (instead of start)")] = None,
    severity_min: Annotated[
        str | None, Query(description="Minimum severity: 1-24 or TRACE/DEBUG/INFO/WARN/ERROR/FATAL")
    ] = None,
    severity_max: Annotated[
        str | None, Query(description="Maximum severity: 1-24, or a name meaning the top of its range (WARN: 16)")
    ] = None,
    service: Annotated[str | None, Query(description="service.name")] = None,
    event_type: Annotated[str | None, Query(description="lab.event.type (case-insensitive)")] = None,
    node: Annotated[str | None, Query(description="lab.node.id (or node_id=)")] = None,
    run: Annotated[str | None, Query(description="lab.run.id (or run_id=)")] = None,
    workflow: Annotated[str | None, Query(description="lab.workflow.id (or workflow_id=)")] = None,
    experiment: Annotated[str | None, Query(description="lab.experiment.id (or experiment_id=)")] = None,
    trace_id: Annotated[str | None, Query(description="32-digit hex trace id")] = None,
    span_id: Annotated[str | None, Query(description="16-digit hex span id")] = None,
    q: Annotated[
        str | None,
        Query(
            description="Words the body contains, whole and case-insensitive (token index); a search "
            "without letters or digits is a 400"
        ),
    ] = None,
    contains: Annotated[str | None, Query(description="Text the body contains anywhere (case-insensitive)")] = None,
) -> EventFilter:
    """The filters of a request; `attr.<key>` / `resource.<key>` parameters included."""
    try:
        _given_once(request)
        lab = _aliased(request, {"node": node, "run": run, "workflow": workflow, "experiment": experiment})
        start_ns = parse_time_ns(start, "start") if start else None
        if since:
            start_ns = since_ns(since, time.time_ns())
        start_ns, end_ns = ordered_range(
            start_ns, parse_time_ns(end, "end") if end else None, start_name="since" if since else "start"
        )
        return EventFilter(
            start_ns=start_ns,
            end_ns=end_ns,
            severity_min=parse_severity(severity_min, "severity_min") if severity_min else None,
            severity_max=parse_severity(severity_max, "severity_max", top=True) if severity_max else None,
            service=service,
            event_type=event_type,
            node=lab["node"],
            run=lab["run"],
            workflow=lab["workflow"],
            experiment=lab["experiment"],
            trace_id=parse_hex_id(trace_id, 32, "trace_id") if trace_id else None,
            span_id=parse_hex_id(span_id, 16, "span_id") if span_id else None,
            tokens=search_words(q) if q else [],  # an empty q is no search, as for the other filters
            contains=contains or None,
            selector=attribute_selector(list(request.query_params.multi_items())) or None,
        )
    except (ParamError, SelectorError) as error:
        raise HTTPException(400, str(error)) from None


_SINGLE = (*(name for name in inspect.signature(event_filter).parameters if name != "request"), *ID_ALIASES)
"""The filters given at most once (`event_filter`'s parameters): a second value would be ignored, not OR-ed."""


Order = Literal["desc", "asc"]


@router.get(
    "/events",
    response_model=EventPage,
    summary="Events, newest first, filtered and paged",
    description=f"Filters combine with AND. {ATTRIBUTE_FILTERS}",
)
def events(
    storage: Annotated[Storage, Depends(get_storage)],
    flt: Annotated[EventFilter, Depends(event_filter)],
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 100,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    order: Annotated[Order, Query(description="desc: newest first; asc: oldest first")] = "desc",
) -> EventPage:
    return _page(storage, flt, limit, cursor, order)


def _page(storage: Storage, flt: EventFilter, limit: int, cursor: str | None, order: str) -> EventPage:
    try:
        page, next_cursor = list_events(storage, flt, limit, cursor, ascending=order == "asc")
    except (ParamError, SelectorError) as error:
        raise HTTPException(400, str(error)) from None
    return EventPage(events=page, next_cursor=next_cursor)


class EventQuery(BaseModel):
    """A selector query, MongoDB-style, with paging."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        """A body with other keys is most likely a selector sent unwrapped: say where it goes."""
        if isinstance(data, dict):
            unknown = [key for key in data if key not in cls.model_fields]
            if unknown:
                raise ValueError(
                    f'unknown key {unknown[0]!r}: the selector goes under "selector", e.g. '
                    f'{{"selector": {{"{unknown[0]}": ...}}, "limit": 100}}; other keys: limit, cursor, order'
                )
        return data

    selector: dict[str, Any] = Field(
        default_factory=dict,
        description='e.g. {"log_level": {"$gte": 40}, "source.node_id": "ot2_1"}; see the selector guide',
        examples=[{"$and": [{"event_type": "action_failed"}, {"attributes.duration_ms": {"$gt": 1000}}]}],
    )
    limit: int = Field(100, ge=1, le=1000)
    cursor: str | None = None
    order: Order = "desc"


@router.post(
    "/events/query",
    response_model=EventPage,
    summary="Events matching a MongoDB-style selector",
    description="Operators: $eq $ne $gt $gte $lt $lte $in $nin $regex ($options: i, m, s) $exists $not $and $or $nor. "
    "Fields: event columns (timestamp, log_level, severity, event_type, service, node_id, run_id, workflow_id, "
    "experiment_id, trace_id, body ...), MADSci's source.<x>_id and event_data.<key>, attributes.<key>, "
    "resource.<key>; any other name is a log attribute. An unsupported operator is a 400 naming it.",
)
def query_events(
    storage: Annotated[Storage, Depends(get_storage)],
    query: Annotated[EventQuery, Body()],
) -> EventPage:
    return _page(storage, EventFilter(selector=query.selector or None), query.limit, query.cursor, query.order)


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
