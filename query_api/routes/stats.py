"""`GET /stats`: event counts by group and time bucket."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from labtel.collector.storage.client import Storage
from labtel.query_api.deps import get_storage
from labtel.query_api.events import EventFilter
from labtel.query_api.params import ParamError
from labtel.query_api.routes.events import ATTRIBUTE_FILTERS, event_filter
from labtel.query_api.stats import GROUPS, count_events, now_ns, parse_bucket, parse_timezone

router = APIRouter(tags=["events"])


@router.get(
    "/stats",
    summary="Event counts by group and time bucket",
    description="Counts of the events the filters select (default: the last 24 hours), per `group_by` "
    f"({', '.join(GROUPS)} or none) and per `bucket` (e.g. 1m, 1h, 1d in `tz`), empty buckets as zeros. "
    f"{ATTRIBUTE_FILTERS}",
)
def stats(
    storage: Annotated[Storage, Depends(get_storage)],
    flt: Annotated[EventFilter, Depends(event_filter)],
    group_by: Annotated[
        str, Query(description="event_type, service, severity, node, run, workflow, experiment, scope or none")
    ] = "event_type",
    bucket: Annotated[str | None, Query(description="30s, 1m, 5m, 1h, 1d, 1w, 1mo; omit for totals only")] = None,
    tz: Annotated[str, Query(description="Time zone of day, week and month buckets")] = "UTC",
) -> dict[str, Any]:
    try:
        if group_by != "none" and group_by not in GROUPS:
            raise ParamError(f"group_by: {group_by!r} is not one of {', '.join(GROUPS)}, none")
        zone = parse_timezone(tz)
        width = parse_bucket(bucket) if bucket else None
        end = flt.end_ns or now_ns()
        start = flt.start_ns if flt.start_ns is not None else end - 24 * 3600 * 1_000_000_000
        flt.start_ns, flt.end_ns = start, end
        return count_events(storage, flt, group_by, width, zone, start, end)
    except ParamError as error:
        raise HTTPException(400, str(error)) from None
