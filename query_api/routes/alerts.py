"""`GET /alerts` (the alert history), `GET /alerts/rules` (rules and what they are doing now) and
`POST /alerts/test` (a test notification through one notifier or all)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from labtel.collector.alerts.history import STATUSES, list_alerts
from labtel.collector.storage.client import Storage
from labtel.query_api.deps import get_storage
from labtel.query_api.params import ParamError, ordered_range, parse_time_ns, since_ns

if TYPE_CHECKING:
    from labtel.collector.exporters.alerts import AlertsExporter

router = APIRouter(tags=["alerts"])


def _exporters(request: Request) -> list[AlertsExporter]:
    found: list[AlertsExporter] = request.app.state.alerts
    return found


def _ms(value: str | None, name: str) -> int | None:
    return None if value is None else parse_time_ns(value, name) // 1_000_000


@router.get("/alerts", summary="The alert history, newest first")
def alerts(
    storage: Annotated[Storage, Depends(get_storage)],
    start: Annotated[str | None, Query(description="Alerts fired at or after this time")] = None,
    end: Annotated[str | None, Query(description="Alerts fired before this time")] = None,
    since: Annotated[str | None, Query(description="Relative start: 15m, 24h, 7d")] = None,
    rule: Annotated[str | None, Query(description="Only this rule's alerts")] = None,
    kind: Annotated[str | None, Query(description="firing, resolved or test")] = None,
    status: Annotated[str | None, Query(description=f"One of {', '.join(STATUSES)}")] = None,
    key: Annotated[str | None, Query(description="The group, e.g. node_id=ot2_1")] = None,
    notifier: Annotated[str | None, Query(description="Alerts sent (or meant) to this notifier")] = None,
    exporter: Annotated[str | None, Query(description="Alerts of this alerts exporter")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """What fired, when, by which rule and key, over which events, to which notifiers, and how
    delivery went (`status` and per-notifier `deliveries`)."""
    try:
        start_ms = _ms(start, "start")
        if since is not None:
            start_ms = since_ns(since, time.time_ns()) // 1_000_000
        end_ms = _ms(end, "end")
        if start_ms is not None and end_ms is not None:
            ordered_range(start_ms * 1_000_000, end_ms * 1_000_000, start_name="since" if since else "start")
    except (ParamError, ValueError) as error:
        raise HTTPException(400, str(error)) from None
    if kind is not None and kind not in ("firing", "resolved", "test"):
        raise HTTPException(400, f"kind: {kind!r} is not one of firing, resolved, test")
    if status is not None and status not in STATUSES:
        raise HTTPException(400, f"status: {status!r} is not one of {', '.join(STATUSES)}")
    found = list_alerts(
        storage,
        start_ms=start_ms,
        end_ms=end_ms,
        exporter=exporter,
        rule=rule,
        kind=kind,
        status=status,
        key=key,
        notifier=notifier,
        limit=limit,
    )
    return {"alerts": found}


@router.get("/alerts/rules", summary="The alert rules, their settings and their current state")
def rules(request: Request) -> dict[str, Any]:
    """Each rule of each alerts exporter: what it matches, how it groups and de-duplicates, who
    hears of it, and its state (`ok`, `grouping` events to send, or `firing` groups of an
    aggregate rule); and the notifiers."""
    found: list[dict[str, Any]] = []
    notifiers: list[dict[str, Any]] = []
    for exporter in _exporters(request):
        found += exporter.engine.rule_states()
        for name, notifier in exporter.dispatcher.notifiers.items():
            limit = notifier.config.rate_limit
            notifiers.append(
                {
                    "exporter": exporter.name,
                    "name": name,
                    "type": name.split("/", 1)[0],
                    "rate_limit": {"count": limit.count, "per": limit.per.total_seconds()},
                }
            )
    return {"rules": found, "notifiers": notifiers}


class TestRequest(BaseModel):
    """Which notifier to test: one by name (`email/oncall`), or every notifier when omitted."""

    notifier: str | None = Field(None, description="A notifier's name; all of them when omitted")
    exporter: str | None = Field(None, description="Only this alerts exporter's notifiers")


@router.post(
    "/alerts/test",
    summary="Send a test notification",
    responses={404: {"description": "no such notifier"}, 502: {"description": "a notifier could not deliver"}},
)
async def send_test(request: Request, body: Annotated[TestRequest | None, Body()] = None) -> JSONResponse:
    """Sends a test notification through the named notifier (or all) once, without retries or
    rate limit; 200 when every one delivered, 502 with the errors otherwise."""
    wanted = body or TestRequest()
    results: list[dict[str, Any]] = []
    alert_ids: list[str] = []
    for exporter in _exporters(request):
        if wanted.exporter is not None and exporter.name != wanted.exporter:
            continue
        names = [n for n in exporter.dispatcher.notifiers if wanted.notifier in (None, n)]
        if not names:
            continue
        alert, deliveries = await exporter.test(names)
        alert_ids.append(alert.alert_id)
        results += [{"exporter": exporter.name, **d.as_dict()} for d in deliveries]
    if not results:
        what = f"notifier {wanted.notifier!r}" if wanted.notifier else "notifiers"
        raise HTTPException(404, f"no {what} configured (alerts exporters: {len(_exporters(request))})")
    ok = all(r["status"] == "delivered" for r in results)
    return JSONResponse({"alert_ids": alert_ids, "results": results}, status_code=200 if ok else 502)
