"""`/madsci/...`: MADSci's Event Manager API, so `EventClient(event_server_url=".../madsci/")`
works unchanged (madsci-client 0.8.1). See `labtel.query_api.compat.madsci` for how fields map."""

from __future__ import annotations

import time
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from labtel.collector.storage import migrations
from labtel.query_api.compat import jsontext
from labtel.query_api.compat.madsci import (
    LEVELS,
    MadsciError,
    madsci_selector,
    parse_madsci_time,
    selector_from_text,
    severity_of,
    zone_name,
)
from labtel.query_api.compat.madsci_reports import (
    ANALYSIS_TYPES,
    periods_csv,
    periods_report_madsci,
    session_report,
    sessions_csv,
    user_report,
    users_csv,
)
from labtel.query_api.compat.madsci_store import MAX_OFFSET, MAX_QUERY_EVENTS, MadsciStore
from labtel.query_api.events import EventFilter, time_extent
from labtel.query_api.params import ParamError, ordered_range
from labtel.query_api.selector import SelectorError
from labtel.query_api.utilization import SECOND, Scope
from labtel.sdk import __version__
from labtel.sdk.textform import digits

router = APIRouter(prefix="/madsci", tags=["MADSci Event Manager"])
DAY_NS = 86_400 * SECOND


def _store(request: Request) -> MadsciStore:
    store: MadsciStore = request.app.state.madsci
    return store


def _bad(error: Exception) -> HTTPException:
    return HTTPException(400, str(error))


def _time(store: MadsciStore, value: str | None, name: str) -> int | None:
    if not value:
        return None
    try:
        return parse_madsci_time(value, store.zone, name)
    except ParamError as error:
        raise _bad(error) from None


@router.get("/health", summary="MADSci's manager health: storage reachable, events stored")
def health(request: Request) -> dict[str, Any]:
    store = _store(request)
    try:
        total = int(store.storage.command(f"SELECT count() FROM {store.storage.names.logs}"))
        connected, description = True, "labtel is running normally"
    except Exception as error:
        total, connected = 0, False
        description = f"storage unreachable: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    return {
        "healthy": connected,
        "description": description,
        "version": __version__,
        "db_connected": connected,
        "total_events": total,
        "otel_enabled": True,
        "otel_exporter_type": "otlp",
        "otel_endpoint": None,
    }


@router.get("/settings", summary="The settings MADSci clients may read (no secrets)")
def settings(request: Request) -> dict[str, Any]:
    store = _store(request)
    names = store.storage.names
    return {
        "manager_type": "event_manager",
        "server_url": str(request.base_url).rstrip("/") + "/madsci/",
        "storage": store.storage.target.describe(),
        "database_name": names.database,
        "collection_name": names.logs_table,
        "alert_level": LEVELS["ERROR"],
        "email_alerts": None,
        "naive_timestamp_timezone": zone_name(store.zone),
        "retention_enabled": False,
        "backup_enabled": True,
        "backup_dir": store.backup_dir,
        "schema_version": migrations.latest_version(),
    }


@router.get("/definition", summary="A MADSci manager definition of this Event Manager")
def definition(request: Request) -> dict[str, Any]:
    return {
        "name": "labtel",
        "manager_type": "event_manager",
        "description": "labtel's MADSci Event Manager compatibility API: events are labtel events in ClickHouse",
        "version": __version__,
    }


@router.post(
    "/event", summary="Log an event (MADSci Event JSON); answers it as stored; a known event_id is not stored again"
)
async def post_event(request: Request, event: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    try:
        return await _store(request).post(event)
    except MadsciError as error:
        raise HTTPException(422, str(error)) from None


@router.get("/event/{event_id}", summary="One event by its id", responses={404: {"description": "no such event"}})
def get_event(request: Request, event_id: str) -> dict[str, Any]:
    found = _store(request).find(event_id)
    if found is None:
        raise HTTPException(404, f"Event with ID {event_id} not found")
    return found


@router.get("/events", summary="The latest events at or above a level, newest first, as {id: event}")
def get_events(
    request: Request,
    number: Annotated[int, Query(ge=1, le=MAX_QUERY_EVENTS)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Events to skip, newest first")] = 0,
    level: Annotated[str, Query(description="Minimum log level (stdlib number or name)")] = "0",
    start_time: str | None = None,
    end_time: str | None = None,
    include_archived: bool = False,
) -> dict[str, Any]:
    store = _store(request)
    try:
        minimum = int(level) if digits(level.strip().lstrip("-")) else LEVELS[level.strip().upper()]
    except KeyError:
        raise HTTPException(400, f"level: {level!r} is not a log level") from None
    start, end = _time(store, start_time, "start_time"), _time(store, end_time, "end_time")
    try:
        ordered_range(start, end, "start_time", "end_time")
    except ParamError as error:
        raise _bad(error) from None
    flt = EventFilter(
        start_ns=start,
        end_ns=end + 1 if end is not None else None,  # MADSci's end_time is inclusive
        severity_min=severity_of(minimum) if minimum > 0 else None,
    )
    return store.listing(flt, number, offset, include_archived)


@router.post("/events/query", summary="Events matching a MongoDB-style selector, as {id: event}")
async def query_events(
    request: Request,
    selector: Annotated[str | None, Query(description="The selector, when it is not in the body")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_QUERY_EVENTS)] = MAX_QUERY_EVENTS,
) -> dict[str, Any]:
    store = _store(request)
    body = await request.body()
    try:
        if body.strip():
            try:
                raw = jsontext.loads(body)
            except orjson.JSONDecodeError:
                raise MadsciError("the body is not JSON; send the selector as a JSON object") from None
            if isinstance(raw, dict) and set(raw) == {"selector"} and isinstance(raw["selector"], dict):
                raw = raw["selector"]
        elif selector is not None:  # madsci-client 0.8.1 sends it as a query parameter
            raw = selector_from_text(selector)
        else:
            raw = {}
        translated = madsci_selector(raw, store.zone)
    except MadsciError as error:
        raise _bad(error) from None
    try:
        return await run_in_threadpool(store.query, translated, limit)
    except (SelectorError, ParamError) as error:
        raise _bad(error) from None


@router.post("/events/archive", summary="Archive (soft-delete) events by id or before a date")
def archive_events(request: Request, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    store = _store(request)
    ids, before = body.get("event_ids"), body.get("before_date")
    if not ids and not before:
        raise HTTPException(422, "Either event_ids or before_date must be provided")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
        raise HTTPException(422, "event_ids: expected a list of event ids")
    before_ns = _time(store, str(before), "before_date") if before and not ids else None
    count = store.archive_events(ids, before_ns)
    return {"archived_count": count, "message": f"Successfully archived {count} events"}


@router.get("/events/archived", summary="Archived events, most recently archived first")
def archived_events(
    request: Request,
    number: Annotated[int, Query(ge=1, le=MAX_QUERY_EVENTS)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    return _store(request).archived(number, offset)


@router.delete("/events/archived", summary="Delete archived events for good, archived more than N days ago")
def purge_archived(request: Request, older_than_days: Annotated[int, Query(ge=0, le=100_000)] = 365) -> dict[str, Any]:
    count = _store(request).purge(older_than_days)
    return {
        "deleted_count": count,
        "purged_count": count,
        "message": f"Permanently deleted {count} archived events older than {older_than_days} days",
    }


@router.post("/backup", summary="Back up the events (ClickHouse writes Native files into the backup directory)")
async def create_backup(request: Request) -> dict[str, Any]:
    raw = await request.body()
    description = None
    if raw.strip():
        try:
            parsed = jsontext.loads(raw)
        except orjson.JSONDecodeError:
            raise HTTPException(422, 'the body must be JSON, e.g. {"description": "before upgrade"}') from None
        description = parsed.get("description") if isinstance(parsed, dict) else None
    return await _store(request).backup(str(description) if description else None)


@router.get("/backup", summary="Backups made, as /backup/status", include_in_schema=False)
@router.get("/backup/status", summary="The backup directory and the backups made")
def backup_status(request: Request) -> dict[str, Any]:
    store = _store(request)
    return {"backup_enabled": True, "backup_dir": store.backup_dir, "available_backups": store.backups()}


# --- utilization -----------------------------------------------------------------------------------


def _scope(store: MadsciStore, start_time: str | None, end_time: str | None, tz: str = "UTC") -> Scope:
    """MADSci's window: the given bounds; one bound alone spans 24 hours; none, the stored events' range."""
    now = time.time_ns()
    start, end = _time(store, start_time, "start_time"), _time(store, end_time, "end_time")
    if start is None and end is None:
        extent = time_extent(store.storage)
        start, end = (extent[0], now) if extent else (now - DAY_NS, now)
    elif start is None:
        assert end is not None
        start = end - DAY_NS
    elif end is None:
        end = start + DAY_NS
    if end <= start:
        raise HTTPException(400, "end_time: must be after start_time")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise HTTPException(400, f"user_timezone: {tz!r} is not a time zone, e.g. America/Chicago") from None
    return Scope(start_ns=start, end_ns=end, now_ns=now, tz=tz)


def _answer(report: dict[str, Any], csv_format: bool, save_to_file: bool, to_csv: Any, filename: str) -> Any:
    if save_to_file:
        raise HTTPException(
            403, "save_to_file: labtel does not write files at paths a client names; fetch the CSV instead"
        )
    if not csv_format:
        return report
    return Response(
        to_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f"attachment; filename={filename}"},
    )


def _run(report: Any) -> Any:
    try:
        return report()
    except ParamError as error:
        raise _bad(error) from None


@router.get("/utilization/sessions", summary="MADSci's session utilization report (labtel's utilization SQL)")
def utilization_sessions(
    request: Request,
    start_time: str | None = None,
    end_time: str | None = None,
    csv_format: bool = False,
    save_to_file: bool = False,
    output_path: str | None = None,
) -> Any:
    store = _store(request)
    scope = _scope(store, start_time, end_time)
    report = _run(lambda: session_report(store.storage, scope))
    return _answer(report, csv_format, save_to_file, sessions_csv, "session_utilization_report.csv")


@router.get("/utilization/periods", summary="MADSci's utilization per hour, day, week or month")
def utilization_periods(
    request: Request,
    start_time: str | None = None,
    end_time: str | None = None,
    analysis_type: str = "daily",
    user_timezone: str = "America/Chicago",
    include_users: bool = True,
    csv_format: bool = False,
    save_to_file: bool = False,
    output_path: str | None = None,
) -> Any:
    store = _store(request)
    if analysis_type not in ANALYSIS_TYPES:
        raise HTTPException(400, f"analysis_type: {analysis_type!r} is not one of {', '.join(ANALYSIS_TYPES)}")
    scope = _scope(store, start_time, end_time, user_timezone)
    report = _run(lambda: periods_report_madsci(store.storage, scope, analysis_type, include_users))
    return _answer(report, csv_format, save_to_file, periods_csv, "utilization_periods_report.csv")


@router.get("/utilization/user", summary="MADSci's user utilization report")
@router.get("/utilization/users", summary="The same (madsci-client 0.8.1 calls this path)", include_in_schema=False)
def utilization_users(
    request: Request,
    start_time: str | None = None,
    end_time: str | None = None,
    csv_format: bool = False,
    save_to_file: bool = False,
    output_path: str | None = None,
) -> Any:
    store = _store(request)
    scope = _scope(store, start_time, end_time)
    report = _run(lambda: user_report(store.storage, scope))
    return _answer(report, csv_format, save_to_file, users_csv, "user_utilization_report.csv")
