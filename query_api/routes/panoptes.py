"""`/panoptes/...`: PANOPTES' telemetry server API (panoptes-utils' `TelemetryClient`), backed by
ClickHouse; see `labtel.query_api.compat.panoptes`. Point the client at it with
`TelemetryClient(base_url="http://host:8000/panoptes")`."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from labtel.query_api.compat.panoptes import Panoptes

router = APIRouter(prefix="/panoptes", tags=["PANOPTES telemetry"])
NDJSON = "application/x-ndjson"


class EventRequest(BaseModel):
    """`POST /event`, as PANOPTES' server takes it."""

    type: str = Field(min_length=1, max_length=256)
    data: Any = None
    make_current: bool = True
    store_permanently: bool = True
    meta: dict[str, Any] = Field(default_factory=dict)
    ts: str | None = None


class RunStartRequest(BaseModel):
    """`POST /run/start`: all optional."""

    run_dir: str | None = None
    run_id: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


def _service(request: Request) -> Panoptes:
    service: Panoptes = request.app.state.panoptes
    return service


@router.get("/health", summary="The telemetry server is alive")
def health() -> dict[str, bool]:
    return {"ok": True}


@router.get("/ready", summary="{ready, run_active, version}")
async def ready(request: Request) -> dict[str, Any]:
    return await _service(request).ready()


@router.get("/run", summary="The active run (404 when none)")
async def get_run(request: Request) -> dict[str, Any]:
    return await _service(request).get_run()


@router.post("/run/start", summary="Start a run (409 when one is active)")
async def start_run(request: Request, body: Annotated[RunStartRequest | None, Body()] = None) -> dict[str, Any]:
    body = body or RunStartRequest()
    return await _service(request).start_run(body.run_dir, body.run_id, body.meta)


@router.post("/run/stop", summary="Stop the active run (404 when none)")
async def stop_run(request: Request) -> dict[str, Any]:
    return await _service(request).stop_run()


@router.post("/event", summary="Post an event; answers its envelope {seq, ts, type, data, meta}")
async def post_event(request: Request, event: EventRequest) -> dict[str, Any]:
    return await _service(request).append_event(
        event.type, event.data, event.make_current, event.store_permanently, event.meta, event.ts
    )


@router.get("/current", summary="The latest envelope per type: {current: {type: envelope}}")
async def current(request: Request) -> dict[str, Any]:
    return {"current": await _service(request).current()}


@router.get("/current/{event_type}", summary="The latest envelope of one type (404 when none)")
async def current_event(request: Request, event_type: str) -> dict[str, Any]:
    found = await _service(request).current(event_type)
    if event_type not in found:
        raise HTTPException(404, f"No current event for type {event_type!r}")
    return found[event_type]


@router.post("/shutdown", summary="Not available: labtel is not stopped by its clients")
def shutdown() -> None:
    raise HTTPException(409, "Server shutdown not available")


@router.get("/site/{name}", summary="The site stream of one day key (local noon to noon) as NDJSON")
async def site_export(request: Request, name: str) -> Response:
    match = re.fullmatch(r"(\d{8})\.ndjson", name)
    if not match:
        raise HTTPException(404, "site exports are named YYYYMMDD.ndjson")
    body = await run_in_threadpool(_service(request).export, "site", match.group(1))
    return Response(body, media_type=NDJSON)


@router.get("/run/{name}", summary="One run's stream as NDJSON")
async def run_export(request: Request, name: str) -> Response:
    if not name.endswith(".ndjson") or len(name) <= len(".ndjson"):
        raise HTTPException(404, "run exports are named <run_id>.ndjson")
    run_id = name.removesuffix(".ndjson")
    service = _service(request)
    body = await run_in_threadpool(service.export, "run", None, run_id)
    if not body and not await run_in_threadpool(service.run_known, run_id):
        raise HTTPException(404, f"no run {run_id!r}")
    return Response(body, media_type=NDJSON)
