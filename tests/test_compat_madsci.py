"""MADSci's real `EventClient` (madsci-client 0.8.1) against `labtel serve`'s `/madsci/` routes:
every method that talks to the server, field round trips, the client's quirks, and the events
being ordinary labtel events."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from madsci.client.event_client import EventClient
from madsci.common.types.auth_types import OwnershipInfo
from madsci.common.types.event_types import Event, EventLogLevel, EventType
from madsci.common.utils import new_ulid_str

from tests.compat_helpers import compat_server
from tests.helpers import LabtelServer, wait_for

ZONE = "Europe/Madrid"
NODE, WORKCELL, USER, EXPERIMENT = new_ulid_str(), new_ulid_str(), new_ulid_str(), new_ulid_str()
BASE = datetime(2026, 1, 15, 10, 0, 0)  # naive: Madrid local time, 09:00 UTC


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabtelServer]:
    """One `labtel serve` whose naive MADSci timestamps are Madrid time."""
    running = compat_server(tmp_path_factory.mktemp("madsci"), f"madsci: {{timezone: {ZONE}}}")
    yield running
    running.kill()


@pytest.fixture(scope="module")
def client(server: LabtelServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EventClient]:
    """MADSci's client, pointed at labtel with the one change a lab makes: the URL."""
    event_client = EventClient(
        name="labtel-test",
        event_server_url=f"{server.api}/madsci/",
        log_dir=str(tmp_path_factory.mktemp("madsci-logs")),
        source=OwnershipInfo(node_id=NODE, workcell_id=WORKCELL),
        fail_on_error=True,
    )
    yield event_client
    event_client.close()


def stored(server: LabtelServer, event_id: str) -> list[dict[str, Any]]:
    return server.all_events(**{"attr.lab.event.id": event_id})


def wait_stored(server: LabtelServer, event_id: str) -> dict[str, Any]:
    found = wait_for(lambda: stored(server, event_id), what=f"event {event_id}")
    return found[0]


def test_logging_methods_store_labtel_events_with_lab_columns(server: LabtelServer, client: EventClient) -> None:
    bound = client.bind(experiment_id=EXPERIMENT)
    bound.info("Workflow completed", event_type=EventType.WORKFLOW_COMPLETE, workflow_id="wf-123", duration_ms=1500)
    client.debug("debug detail", count=42)  # below the client's INFO level: not sent
    client.warning("Tip rack low", tips=3)
    client.error("Gripper stalled")
    client.critical("Door open")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        client.exception("Aspirate failed")
    client.log_info("legacy info")
    client.log_warning("legacy warning", warning_category=None)
    client.log_error("legacy error")
    client.log_critical("legacy critical")
    client.alert("Fire alarm")

    def arrived() -> list[dict[str, Any]]:
        events = server.all_events(service="madsci")
        return events if len(events) >= 11 else []  # alert() posts twice (a quirk)

    events = {e["body"]: e for e in wait_for(arrived, what="the client's events")}
    assert "debug detail" not in events
    completed = events["Workflow completed"]
    assert completed["event_type"] == "workflow_complete"  # the type the client hid in event_data
    assert completed["attributes"]["madsci.event_type"] == "log_info"
    assert completed["node_id"] == NODE  # source → lab columns
    assert completed["workflow_id"] == "wf-123"
    assert completed["experiment_id"] == EXPERIMENT
    assert completed["attributes"]["lab.workcell.id"] == WORKCELL
    assert completed["attributes"]["duration_ms"] == "1500"
    assert completed["severity_number"] == 9
    assert (events["Tip rack low"]["severity_text"], events["Tip rack low"]["attributes"]["tips"]) == ("WARN", "3")
    assert events["Gripper stalled"]["severity_number"] == 17
    assert events["Door open"]["severity_number"] == 21
    assert events["Aspirate failed"]["event_type"] == "log_error"
    assert events["Fire alarm"]["attributes"]["madsci.alert"] == "true"
    assert {"legacy info", "legacy warning", "legacy error", "legacy critical"} <= set(events)


def test_event_fields_round_trip(server: LabtelServer, client: EventClient) -> None:
    data = {"plate": "P1", "wells": [1, 2, 3], "nested": {"temp": 37.5, "ok": True}, "status": "running"}
    event = Event(
        event_type=EventType.ACTION_STATUS_CHANGE,
        log_level=EventLogLevel.WARNING,
        event_timestamp=BASE,
        source=OwnershipInfo(node_id=NODE, user_id=USER, workflow_id=new_ulid_str()),
        event_data=data,
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
    )
    client.log(event)
    row = wait_stored(server, event.event_id)
    assert row["timestamp"].startswith("2026-01-15T09:00:00")  # naive Madrid time read in the configured zone
    assert (row["trace_id"], row["span_id"]) == (event.trace_id, event.span_id)
    assert row["attributes"]["nested.temp"] == "37.5"
    assert row["attributes"]["wells"] == "[1,2,3]"
    assert row["attributes"]["status"] == "running"
    assert row["attributes"]["lab.user.id"] == USER
    back = client.get_event(event.event_id)
    assert back is not None
    assert back.model_dump() == event.model_dump()


def test_a_duplicate_event_id_is_stored_once(server: LabtelServer, client: EventClient) -> None:
    event = Event(event_type=EventType.NODE_STATUS_UPDATE, event_data={"state": "idle"})
    body = event.model_dump(mode="json")
    answers = [httpx.post(f"{server.api}/madsci/event", json=body, timeout=30) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].json()["_id"] == event.event_id
    client.log(event)
    wait_stored(server, event.event_id)
    server.wait_until_stored()
    assert len(stored(server, event.event_id)) == 1


def test_get_events_and_query_events(server: LabtelServer, client: EventClient) -> None:
    node = new_ulid_str()
    events = [
        Event(event_type=EventType.NODE_ERROR, log_level=EventLogLevel.ERROR, source=OwnershipInfo(node_id=node)),
        Event(event_type=EventType.NODE_START, log_level=EventLogLevel.INFO, source=OwnershipInfo(node_id=node)),
    ]
    for event in events:
        client.log(event)
    for event in events:
        wait_stored(server, event.event_id)
    latest = client.get_events(number=500, level=40)
    assert events[0].event_id in latest
    assert events[1].event_id not in latest  # below the level
    assert all(e.log_level >= 40 for e in latest.values())
    assert len(client.get_events(number=1)) == 1
    # madsci-client sends the selector as query parameters (Python text), not as the body
    by_node = client.query_events({"source": {"node_id": node}})
    assert set(by_node) == {e.event_id for e in events}
    errors = client.query_events({"source.node_id": node, "log_level": {"$gte": 40}})
    assert set(errors) == {events[0].event_id}

    async def async_methods() -> tuple[Any, ...]:  # the client's async httpx client lives in one loop
        return (
            await client.async_get_event(events[0].event_id),
            await client.async_get_events(number=500, level=40),
            await client.async_query_events({"source": {"node_id": node}}),
        )

    one, latest_async, by_node_async = asyncio.run(async_methods())
    assert one is not None
    assert one.event_id == events[0].event_id
    assert events[0].event_id in latest_async
    assert set(by_node_async) == set(by_node)
    # the selector in the JSON body, as MADSci's server reads it
    answer = httpx.post(f"{server.api}/madsci/events/query", json={"_id": events[1].event_id}, timeout=30)
    assert list(answer.json()) == [events[1].event_id]
    bad = httpx.post(f"{server.api}/madsci/events/query", json={"x": {"$where": "1"}}, timeout=30)
    assert bad.status_code == 400
    assert "$where" in bad.json()["detail"]


def test_archive_and_purge(server: LabtelServer, client: EventClient) -> None:
    old = Event(event_type=EventType.LOG_INFO, event_timestamp=BASE - timedelta(days=400), event_data="ancient")
    kept = Event(event_type=EventType.LOG_INFO, event_data="kept")
    for event in (old, kept):
        client.log(event)
        wait_stored(server, event.event_id)
    assert client.archive_events(event_ids=[old.event_id]) == {
        "archived_count": 1,
        "message": "Successfully archived 1 events",
    }
    assert old.event_id not in client.get_events(number=1000, level=0)
    listed = httpx.get(f"{server.api}/madsci/events", params={"include_archived": "true", "number": 1000}).json()
    assert listed[old.event_id]["archived"] is True
    assert client.query_events({"_id": old.event_id})[old.event_id].archived
    assert client.purge_events(older_than_days=1)["deleted_count"] == 0  # archived just now
    assert client.purge_events(older_than_days=0)["deleted_count"] == 1
    assert stored(server, old.event_id) == []
    assert stored(server, kept.event_id) != []
    before = httpx.post(f"{server.api}/madsci/events/archive", json={"before_date": "2000-01-01T00:00:00"})
    assert before.json()["archived_count"] == 0
    assert httpx.post(f"{server.api}/madsci/events/archive", json={}).status_code == 422


def test_backup_and_status(server: LabtelServer, client: EventClient) -> None:
    event = Event(event_type=EventType.BACKUP_CREATE, event_data="before the backup")
    client.log(event)
    wait_stored(server, event.event_id)
    made = client.create_backup()
    assert made["status"] == "completed"
    assert made["rows"] > 0
    assert (Path(made["backup_path"]) / "otel_logs.native").stat().st_size > 0
    status = client.get_backup_status()
    assert status["backup_enabled"] is True
    assert status["available_backups"][0]["path"] == made["backup_path"]
    assert status["available_backups"][0]["is_valid"] is True


def test_utilization_reports_in_madsci_shapes(server: LabtelServer, client: EventClient) -> None:
    node = new_ulid_str()
    source = OwnershipInfo(node_id=node, workcell_id=WORKCELL, user_id=USER, experiment_id=EXPERIMENT)
    start = BASE + timedelta(days=1)
    for offset, event_type, data in (
        (0, EventType.WORKFLOW_START, {"workflow_id": "wf-util", "author": USER}),
        (60, EventType.ACTION_START, {"action_id": "act-1"}),
        (60 + 1800, EventType.ACTION_COMPLETE, {"action_id": "act-1"}),
        (2000, EventType.WORKFLOW_COMPLETE, {"workflow_id": "wf-util", "author": USER}),
    ):
        event = Event(
            event_type=event_type, event_timestamp=start + timedelta(seconds=offset), source=source, event_data=data
        )
        client.log(event)
        wait_stored(server, event.event_id)
    window = {"start_time": "2026-01-16T09:00:00", "end_time": "2026-01-16T12:00:00"}

    sessions = client.get_session_utilization(**window)
    assert sessions is not None
    assert isinstance(sessions, dict)
    assert sessions["report_metadata"]["total_sessions"] == 1
    session = sessions["session_details"][0]
    assert session["session_id"] == WORKCELL
    assert session["active_time_hours"] == pytest.approx(0.5)
    assert session["node_utilizations"][node]["busy_time_hours"] == pytest.approx(0.5)
    assert sessions["overall_summary"]["node_summary"][node]["sessions_active"] == 1

    periods = client.get_utilization_periods(**window, analysis_type="hourly", user_timezone=ZONE)
    assert isinstance(periods, dict)
    assert periods["summary_metadata"]["total_periods"] == 3
    busy = [p["active_time_hours"] for p in periods["time_series"]["system"]]
    assert sum(busy) == pytest.approx(0.5)
    assert periods["user_utilization"]["top_users"][0]["author"] == USER
    assert periods["key_metrics"]["active_periods"] == 1

    users = client.get_user_utilization_report(**window)  # the client calls /utilization/users
    assert isinstance(users, dict)
    assert users["user_utilization"][USER]["completed_workflows"] == 1
    assert users["system_summary"]["total_workflows"] == 1
    same = httpx.get(f"{server.api}/madsci/utilization/user", params=window, timeout=60).json()
    assert same["user_utilization"] == users["user_utilization"]

    text = client.get_utilization_periods(**window, analysis_type="daily", user_timezone=ZONE, csv_export=True)
    assert isinstance(text, str)
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == ["=== UTILIZATION PERIODS REPORT ==="]
    header = lines.index(["=== TIME SERIES DATA ==="])
    assert lines[header + 1][:3] == ["Period Number", "Period Type", "Period Display"]
    assert ["=== USER UTILIZATION ==="] in lines
    session_csv = client.get_session_utilization(**window, csv_export=True)
    assert isinstance(session_csv, str)
    assert session_csv.startswith("=== UTILIZATION REPORT ===")
    assert "=== SESSION DETAILS ===" in session_csv
    users_csv = client.get_user_utilization_report(**window, csv_export=True)
    assert isinstance(users_csv, str)
    assert "=== USER DETAILS ===" in users_csv
    assert USER in users_csv
    monthly = client.get_utilization_periods(**window, analysis_type="monthly", user_timezone=ZONE, include_users=False)
    assert isinstance(monthly, dict)
    assert monthly["time_series"]["system"][0]["active_time_hours"] == pytest.approx(0.5)
    assert "user_utilization" not in monthly
    refused = httpx.get(
        f"{server.api}/madsci/utilization/sessions", params={"save_to_file": "true", "output_path": "/tmp/x"}
    )
    assert refused.status_code == 403


def test_a_sessions_active_time_never_exceeds_its_duration(server: LabtelServer, client: EventClient) -> None:
    """Busy time comes rounded to the millisecond, the session's bounds to the nanosecond: a
    session busy throughout (an action of 1.0006 s) is 1.0006 s active and 0 idle, not -0.0004 s."""
    node, workcell = new_ulid_str(), new_ulid_str()
    source = OwnershipInfo(node_id=node, workcell_id=workcell)
    start = BASE + timedelta(days=3)
    for offset, event_type in ((0.0, EventType.ACTION_START), (1.0006, EventType.ACTION_COMPLETE)):
        event = Event(
            event_type=event_type,
            event_timestamp=start + timedelta(seconds=offset),
            source=source,
            event_data={"action_id": f"act-{workcell}"},
        )
        client.log(event)
        wait_stored(server, event.event_id)
    window = {"start_time": "2026-01-18T09:00:00", "end_time": "2026-01-18T12:00:00"}
    sessions = client.get_session_utilization(**window)
    assert isinstance(sessions, dict)
    (session,) = [s for s in sessions["session_details"] if s["session_id"] == workcell]
    assert session["timing"]["duration"]["seconds"] == pytest.approx(1.0006)
    assert session["timing"]["active_time"]["seconds"] == pytest.approx(1.0006)
    assert session["timing"]["idle_time"]["seconds"] == 0
    assert session["raw_hours"]["idle"] == 0
    assert session["system_utilization_percent"] == 100.0


def test_other_labtel_events_read_as_madsci_events(server: LabtelServer, client: EventClient) -> None:
    from tests.helpers import log_record, logs_request

    record = log_record("valve opened", {"lab.node.id": "valve_A", "lab.event.type": "device_io"}, severity=13)
    answer = httpx.post(
        f"{server.http}/v1/logs",
        content=logs_request([record], resource={"service.name": "argon"}).SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert answer.status_code == 200
    wait_for(lambda: server.all_events(service="argon"), what="the OTLP event")
    found = client.query_events({"service": "argon"})  # validates as MADSci Events
    (event,) = found.values()
    assert event.event_type == EventType.UNKNOWN
    assert event.log_level == EventLogLevel.WARNING
    assert event.event_data["event_type"] == "device_io"
    assert event.event_data["lab.node.id"] == "valve_A"
    assert client.get_event(event.event_id) == event


def test_health_settings_and_bad_input(server: LabtelServer) -> None:
    # the test's own event: under xdist the module's other tests may run in another worker
    event = Event(event_type=EventType.NODE_STATUS_UPDATE, event_data={"state": "idle"})
    assert httpx.post(f"{server.api}/madsci/event", json=event.model_dump(mode="json"), timeout=30).status_code == 200
    wait_stored(server, event.event_id)
    health = httpx.get(f"{server.api}/madsci/health").json()
    assert health["healthy"] is True
    assert health["db_connected"] is True
    assert health["total_events"] > 0
    settings = httpx.get(f"{server.api}/madsci/settings").json()
    assert settings["naive_timestamp_timezone"] == ZONE
    assert "password" not in str(settings).lower()
    assert httpx.get(f"{server.api}/madsci/definition").json()["manager_type"] == "event_manager"
    assert httpx.get(f"{server.api}/madsci/event/{new_ulid_str()}").status_code == 404
    bad = httpx.post(f"{server.api}/madsci/event", json={"log_level": 25})
    assert bad.status_code == 422
    assert "log_level" in bad.json()["detail"]
    assert httpx.post(f"{server.api}/madsci/event", json={"event_timestamp": "yesterday"}).status_code == 422


def test_without_api_keys_master_log_accepts_any_key(server: LabtelServer) -> None:
    from master_log_client import MasterLogClient

    assert MasterLogClient(api_key="anything", endpoint=server.api, async_mode=False).info("open").ok
    assert "accept any key" in server.output()  # the start-up warning of a server without keys
