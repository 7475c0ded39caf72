"""`GET /series/names` and `GET /series`: the metrics labtel stores, bucketed in time."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from labtel.collector.storage.client import Storage
from labtel.query_api.deps import get_storage
from labtel.query_api.models import MetricNames, SeriesResult
from labtel.query_api.params import ParamError, ordered_range, parse_time_ns
from labtel.query_api.series import NotFound, get_series, list_names
from labtel.query_api.series_query import parse_series_query

router = APIRouter(tags=["metrics"])


@router.get("/series/names", response_model=MetricNames, summary="The stored metrics, with their type and points")
def series_names(
    storage: Annotated[Storage, Depends(get_storage)],
    start: Annotated[str | None, Query(description="Points at or after this time (RFC 3339 or epoch seconds)")] = None,
    end: Annotated[str | None, Query(description="Points before this time")] = None,
    service: Annotated[str | None, Query(description="service.name")] = None,
) -> MetricNames:
    try:
        start_ns, end_ns = ordered_range(
            parse_time_ns(start, "start") if start else None, parse_time_ns(end, "end") if end else None
        )
    except ParamError as error:
        raise HTTPException(400, str(error)) from None
    return MetricNames(names=list_names(storage, start_ns, end_ns, service or None))


@router.get(
    "/series",
    response_model=SeriesResult,
    responses={400: {"description": "a bad parameter (named)"}, 404: {"description": "no such metric"}},
    summary="A metric's points bucketed in time, one series per service and label set",
)
def series(
    request: Request,
    storage: Annotated[Storage, Depends(get_storage)],
    name: Annotated[str | None, Query(description="The metric's name")] = None,
    start: Annotated[
        str | None, Query(description="From (RFC 3339 or epoch seconds); default: an hour before end")
    ] = None,
    end: Annotated[str | None, Query(description="Until (exclusive); default: now")] = None,
    step: Annotated[str | None, Query(description="Bucket width, whole seconds: 30s, 1m (default), 1h")] = None,
    agg: Annotated[
        str | None,
        Query(description="avg (default), sum, min, max, count, last, rate (sums); histograms: count, sum, avg"),
    ] = None,
    quantile: Annotated[str | None, Query(description="Histograms: the quantile (0..1) from bucket counts")] = None,
    service: Annotated[str | None, Query(description="service.name")] = None,
    type: Annotated[str | None, Query(description="The metric's type, when a name is stored as several")] = None,
) -> SeriesResult:
    """Filter by label with `label.<key>=<value>` (data point attributes), e.g. `label.room=B12`."""
    try:
        query = parse_series_query(list(request.query_params.multi_items()), time.time_ns())
        return get_series(storage, query)
    except ParamError as error:
        raise HTTPException(400, str(error)) from None
    except NotFound as error:
        raise HTTPException(404, str(error)) from None
