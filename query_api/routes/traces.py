"""`GET /traces/{trace_id}`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException

from labtel.collector.storage.client import Storage
from labtel.query_api.deps import get_storage
from labtel.query_api.models import Trace
from labtel.query_api.params import ParamError, parse_hex_id
from labtel.query_api.traces import get_trace

router = APIRouter(tags=["traces"])


@router.get(
    "/traces/{trace_id}",
    response_model=Trace,
    responses={404: {"description": "no such trace"}},
    summary="A trace's spans and the events that carry its id",
)
def trace(trace_id: str, storage: Annotated[Storage, Depends(get_storage)]) -> Trace:
    try:
        canonical = parse_hex_id(trace_id, 32, "trace_id")
    except ParamError as error:
        raise HTTPException(400, str(error)) from None
    found = get_trace(storage, canonical)
    if found is None:
        raise HTTPException(404, f"no spans or events with trace id {canonical}")
    return found
