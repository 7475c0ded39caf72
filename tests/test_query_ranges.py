"""Times and durations beyond what storage holds: instants clamp to 1970..2262 instead of wrapping
around Int64, milliseconds given as seconds are a 400 that says so, and no value is ever a 500."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from labtel.collector.storage import migrations
from labtel.query_api.app import create_app
from labtel.query_api.params import MAX_TIME_NS, ParamError, parse_time_ns
from tests.conftest import make_storage
from tests.helpers import log_record, logs_request


@pytest.fixture(scope="module")
def client(chdb_path: Path) -> Iterator[TestClient]:
    """An API over two events of the last minute."""
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    now = time.time_ns()
    records = [log_record(f"recent {i}", time_ns=now - (i + 1) * 1_000_000_000) for i in range(2)]
    storage.insert_otlp(
        "logs", logs_request(records, resource={"service.name": "ranges"}).SerializeToString(), uuid.uuid4().hex
    )
    with TestClient(create_app(storage), raise_server_exceptions=False) as test_client:
        yield test_client
    storage.command(f"DROP DATABASE IF EXISTS `{storage.names.database}`")


def bodies(client: TestClient, **params: Any) -> list[str]:
    response = client.get("/events", params={"service": "ranges", **params})
    assert response.status_code == 200, response.text
    return sorted(e["body"] for e in response.json()["events"])


BOTH = ["recent 0", "recent 1"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"end": "9999-12-31T00:00:00Z"}, BOTH),  # "no upper bound"
        ({"end": "1e10"}, BOTH),  # epoch seconds in 2286
        ({"start": "2300-01-01"}, []),
        ({"start": "1e10"}, []),
        ({"start": "1900-01-01T00:00:00Z", "end": "9999-12-31T23:59:59Z"}, BOTH),
        ({"since": "999999999d"}, BOTH),  # from the beginning
        ({"end": "1900-01-01T00:00:00Z"}, []),
    ],
)
def test_times_past_what_storage_holds_clamp_instead_of_wrapping(
    client: TestClient, params: dict[str, str], expected: list[str]
) -> None:
    assert bodies(client, **params) == expected


def test_a_clamped_end_counts_and_exports_everything(client: TestClient) -> None:
    far = {"service": "ranges", "start": "2000-01-01T00:00:00Z", "end": "9999-12-31T00:00:00Z"}
    stats = client.get("/stats", params=far)
    assert stats.status_code == 200, stats.text
    assert stats.json()["total"] == 2
    assert stats.json()["end"] == "2262-04-11T23:47:16.854775807Z"
    export = client.get("/export", params={**far, "format": "ndjson"})
    assert export.status_code == 200, export.text
    assert len(export.text.splitlines()) == 2


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({"timestamp": {"$lt": "9999-01-01T00:00:00Z"}}, BOTH),
        ({"timestamp": {"$gt": "2300-01-01T00:00:00Z"}}, []),
        ({"timestamp": {"$lt": 1e10}}, BOTH),
        ({"timestamp": {"$gte": 0, "$lt": 2**63 + 5}}, BOTH),  # nanoseconds past Int64
    ],
)
def test_selector_times_clamp_too(client: TestClient, selector: dict[str, Any], expected: list[str]) -> None:
    response = client.post("/events/query", json={"selector": {"service": "ranges", **selector}})
    assert response.status_code == 200, response.text
    assert sorted(e["body"] for e in response.json()["events"]) == expected


def test_parse_time_clamps_to_the_storable_range() -> None:
    assert parse_time_ns("9999-12-31T00:00:00Z", "end") == MAX_TIME_NS
    assert parse_time_ns("1969-12-31T00:00:00Z", "start") == 0
    assert parse_time_ns("-5", "start") == 0
    assert parse_time_ns("1796126400.5", "start") == 1_796_126_400_500_000_000
    with pytest.raises(ParamError, match=r"start: .*looks like milliseconds"):
        parse_time_ns("1796126400000", "start")
    with pytest.raises(ParamError, match=r"end: .*looks like nanoseconds"):
        parse_time_ns("1796126400000000000", "end")


ROUTES = [
    "/events",
    "/stats",
    "/export",
    "/events/stream",
    "/alerts",
    "/utilization/nodes",
    "/utilization/periods",
    "/utilization/sessions",
    "/utilization/users",
    "/utilization/timeseries",
]
UTILIZATION = [r for r in ROUTES if r.startswith("/utilization/")]
CASES = [
    *((route, {"since": "1000000000d"}, "since") for route in ROUTES),
    *((route, {"start": "1796126400000"}, "milliseconds") for route in ROUTES),
    *((route, {"end": "1796126400000"}, "milliseconds") for route in ROUTES),
    *((route, {"gap": "1000000000d"}, "gap") for route in UTILIZATION),
    *((route, {"lookback": "1000000000d"}, "lookback") for route in UTILIZATION),
    *((route, {"open_limit": "100000d"}, "open_limit: '100000d' is too long; at most 13343d") for route in UTILIZATION),
    ("/series", {"name": "x", "step": "1000000000d"}, "step"),
    ("/series", {"name": "x", "start": "1796126400000"}, "milliseconds"),
    ("/alerts", {"end": "1e15"}, "microseconds"),
]


@pytest.mark.parametrize(("route", "params", "message"), CASES)
def test_values_out_of_range_are_a_4xx_naming_them(
    client: TestClient, route: str, params: dict[str, str], message: str
) -> None:
    response = client.get(route, params=params)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert message in response.json()["detail"]


@pytest.mark.parametrize(
    "params",
    [
        {"bucket": "2000h"},
        {"bucket": "1h", "end": "9999-12-31T00:00:00Z"},
        {"bucket": "day", "start": "2262-04-01T00:00:00Z", "end": "9999-12-31T00:00:00Z"},
        {"bucket": "hour", "since": "100000d", "end": "1971-01-01T00:00:00Z"},
    ],
)
def test_utilization_periods_answer_at_the_edges(client: TestClient, params: dict[str, str]) -> None:
    response = client.get("/utilization/periods", params=params)
    assert response.status_code == 200, response.text
    periods = response.json()["periods"]
    assert all(p["start"] < p["end"] for p in periods)


SWAPPED = {"start": "2026-11-24T09:00:00Z", "end": "2026-11-24T08:00:00Z"}


@pytest.mark.parametrize(
    ("route", "params", "message"),
    [
        *((route, SWAPPED, "start: 2026-11-24T09:00:00.000000000Z is after end") for route in ROUTES),
        ("/series/names", SWAPPED, "start: 2026-11-24T09:00:00.000000000Z is after end"),
        ("/series", {"name": "x", **SWAPPED}, "start: 2026-11-24T09:00:00.000000000Z is after end"),
        ("/events", {"since": "1h", "end": "2026-11-24T08:00:00Z"}, "since: "),
        ("/alerts", {"since": "1h", "end": "2026-11-24T08:00:00Z"}, "since: "),
        (
            "/madsci/events",
            {"start_time": "2026-11-24T09:00:00Z", "end_time": "2026-11-24T08:00:00Z"},
            "start_time: 2026-11-24T09:00:00.000000000Z is after end_time",
        ),
    ],
)
def test_a_start_after_the_end_is_a_400_naming_both(
    client: TestClient, route: str, params: dict[str, str], message: str
) -> None:
    """Swapped bounds hold nothing: every route says so instead of answering with nothing."""
    response = client.get(route, params=params)
    assert response.status_code == 400, (response.status_code, response.text)
    assert message in response.json()["detail"]


def test_an_empty_range_is_no_error(client: TestClient) -> None:
    """start == end is a range of nothing, asked for on purpose (a cursor at the edge)."""
    assert bodies(client, start="2026-11-24T08:00:00Z", end="2026-11-24T08:00:00Z") == []
