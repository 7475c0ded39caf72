"""`GET /events` filters, search, order and paging, and `GET /stats`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage, parse_endpoint
from labtel.collector.storage.schema import MAX_TIME_NANOS
from labtel.query_api.app import create_app
from labtel.query_api.params import parse_time_ns
from labtel.query_api.stats import parse_bucket
from tests.conftest import make_storage
from tests.helpers import log_record, logs_request

HOUR = 3600 * 1_000_000_000


def insert(storage: Storage, records: list[Any], service: str = "query") -> None:
    storage.insert_otlp(
        "logs", logs_request(records, resource={"service.name": service}).SerializeToString(), uuid.uuid4().hex
    )


@pytest.fixture(scope="module")
def world(chdb_path: Path) -> Iterator[tuple[TestClient, Storage, int]]:
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    now = time.time_ns()
    records = []
    for i in range(48):  # one event every half hour for a day, ending now
        records.append(
            log_record(
                f"reading {i} of the pressure gauge" if i % 2 else f"valve_{i} opened quickly",
                {
                    "lab.node.id": f"node-{i % 3}",
                    "lab.event.type": "device_io" if i % 2 else "state_transition",
                    "lab.workflow.id": f"wf-{i // 12}",
                    "lab.experiment.id": "exp-1" if i < 24 else "exp-2",
                },
                time_ns=now - (47 - i) * HOUR // 2,
                severity=(9, 13, 17)[i % 3],
            )
        )
    insert(storage, records)
    with TestClient(create_app(storage)) as client:
        yield client, storage, now
    storage.command(f"DROP DATABASE IF EXISTS `{storage.names.database}`")


def bodies(client: TestClient, **params: Any) -> list[str]:
    response = client.get("/events", params={"service": "query", "limit": 1000, **params})
    assert response.status_code == 200, response.text
    return [e["body"] for e in response.json()["events"]]


def paged(client: TestClient, field: str, **params: Any) -> list[Any]:
    """`field` of every event `/events` lists with `params`, following the cursors to the end."""
    seen: list[Any] = []
    cursor = None
    while True:
        response = client.get("/events", params=params | ({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [e[field] for e in page["events"]]
        cursor = page["next_cursor"]
        if not cursor:
            return seen


def test_relative_time_and_severity_range(world: tuple[TestClient, Storage, int]) -> None:
    client, _, _ = world
    assert len(bodies(client, since="3h")) == 6
    assert len(bodies(client, since="30m")) == 1
    assert len(bodies(client)) == 48
    warnings = bodies(client, severity_min="WARN", severity_max="warn")
    assert len(warnings) == 16
    assert all(b.startswith(("reading", "valve")) for b in warnings)
    assert client.get("/events", params={"since": "soon"}).status_code == 400


def test_token_search_and_substring_search(world: tuple[TestClient, Storage, int]) -> None:
    client, _, _ = world
    assert len(bodies(client, q="PRESSURE gauge")) == 24  # whole words, any case
    assert bodies(client, q="pressure valve") == []  # every word must be there
    assert bodies(client, q="pres") == []  # tokens are whole words...
    assert len(bodies(client, contains="pres")) == 24  # ...substrings are `contains`
    assert bodies(client, q="valve_10") == ["valve_10 opened quickly"]  # `_` separates tokens, as in ClickHouse
    assert bodies(client, contains="reading 1 ") == ["reading 1 of the pressure gauge"]


def test_lab_columns_and_span_filters(world: tuple[TestClient, Storage, int]) -> None:
    client, _, _ = world
    assert len(bodies(client, workflow="wf-1")) == 12
    assert len(bodies(client, experiment="exp-2", node="node-0")) == 8
    assert len(bodies(client, event_type="DEVICE_IO", **{"attr.lab.node.id": "in:node-1,node-2"})) == 16
    assert client.get("/events", params={"span_id": "xyz"}).status_code == 400
    # a filter given twice would keep one of its values: a 400 that says how to ask for several
    twice = client.get("/events", params=[("service", "query"), ("service", "other")])
    assert twice.status_code == 400
    assert "service is given 2 times" in twice.json()["detail"]
    hinted = client.post("/events/query", json={"selector": {"service": {"$in": ["query", "other"]}}, "limit": 1000})
    assert '{"service": {"$in": [...]}}' in twice.json()["detail"]
    assert len(hinted.json()["events"]) == len(bodies(client))  # what the hint says works
    assert client.get("/stats", params=[("node_id", "node-0"), ("node_id", "node-1")]).status_code == 400


def test_both_orders_page_with_cursors(world: tuple[TestClient, Storage, int]) -> None:
    client, _, _ = world
    newest_first = bodies(client)
    for order, expected in (("desc", newest_first), ("asc", list(reversed(newest_first)))):
        assert paged(client, "body", service="query", limit=7, order=order) == expected
    first = client.get("/events", params={"service": "query", "limit": 5}).json()["next_cursor"]
    wrong = client.get("/events", params={"service": "query", "cursor": first, "order": "asc"})
    assert wrong.status_code == 400
    assert "other sort order" in wrong.json()["detail"]


def test_paging_never_repeats_or_skips_while_events_arrive(world: tuple[TestClient, Storage, int]) -> None:
    client, storage, now = world
    base = now - 1000 * HOUR
    insert(storage, [log_record(f"p{i}", time_ns=base + i * 1_000_000) for i in range(300)], service="pager")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"service": "pager", "limit": 40, **({"cursor": cursor} if cursor else {})}
        page = client.get("/events", params=params).json()
        seen += [e["event_id"] for e in page["events"]]
        cursor = page["next_cursor"]
        pages += 1
        # Meanwhile, more events arrive: newer ones, and late ones inside the range being paged.
        insert(storage, [log_record(f"new{pages}-{i}") for i in range(5)], service="pager")
        insert(
            storage, [log_record(f"late{pages}-{i}", time_ns=base + 150_000_000 + i) for i in range(3)], service="pager"
        )
        if not cursor:
            break
    assert len(seen) == len(set(seen))  # no repeats
    originals = {
        e["event_id"]
        for e in client.get(
            "/events", params={"service": "pager", "limit": 1000, "end": str((base + 300_000_000) / 1e9)}
        ).json()["events"]
        if e["body"].startswith("p")
    }
    assert len(originals) == 300
    assert originals <= set(seen)  # no skips


def test_stats_counts_by_group_and_bucket(world: tuple[TestClient, Storage, int]) -> None:
    client, _, now = world
    totals = client.get("/stats", params={"service": "query", "group_by": "event_type"}).json()
    assert totals["totals"] == {"device_io": 24, "state_transition": 24}
    assert totals["total"] == 48
    assert totals["buckets"] == []
    hourly = client.get(
        "/stats", params={"service": "query", "group_by": "node", "bucket": "1h", "since": "24h"}
    ).json()
    assert hourly["groups"] == ["node-0", "node-1", "node-2"]
    assert len(hourly["buckets"]) in (24, 25)
    assert sum(sum(b["counts"].values()) for b in hourly["buckets"]) == 48
    assert all(set(b["counts"]) == {"node-0", "node-1", "node-2"} for b in hourly["buckets"])  # zeros present
    empty = client.get(
        "/stats",
        params={
            "service": "query",
            "bucket": "1h",
            "start": str((now - 200 * HOUR) / 1e9),
            "end": str((now - 190 * HOUR) / 1e9),
        },
    ).json()
    assert len(empty["buckets"]) in (10, 11)  # an unaligned range touches a partial bucket at each end
    assert empty["total"] == 0
    none = client.get("/stats", params={"service": "query", "group_by": "none", "bucket": "1d", "tz": "Europe/Madrid"})
    assert none.status_code == 200
    assert none.json()["total"] == 48
    for bad in ({"group_by": "colour"}, {"bucket": "7x"}, {"tz": "Mars/Olympus"}, {"bucket": "1s", "since": "30d"}):
        response = client.get("/stats", params=bad)
        assert response.status_code == 400, bad


def test_day_buckets_follow_the_time_zone_across_dst(storage: Storage) -> None:
    # 2026-03-29: Madrid moves from UTC+1 to UTC+2; days there are 23 hours long.
    march_28 = 1_774_652_400_000_000_000  # 2026-03-28T00:00:00+01:00
    insert(storage, [log_record(f"e{h}", time_ns=march_28 + h * HOUR) for h in range(0, 72, 6)], service="dst")
    with TestClient(create_app(storage)) as client:
        result = client.get(
            "/stats",
            params={
                "service": "dst",
                "group_by": "none",
                "bucket": "1d",
                "tz": "Europe/Madrid",
                "start": "2026-03-28T00:00:00+01:00",
                "end": "2026-03-31T00:00:00+02:00",
            },
        ).json()
    assert [b["t"] for b in result["buckets"]] == [
        "2026-03-27T23:00:00.000000000Z",
        "2026-03-28T23:00:00.000000000Z",
        "2026-03-29T22:00:00.000000000Z",
    ]
    assert [b["counts"][""] for b in result["buckets"]] == [4, 4, 4]


def test_pages_are_found_across_both_looks_in_time(storage: Storage) -> None:
    # Events from a second to 400 days before now: a page is looked for from its end in the first
    # six hours, then in the rest, and must come out whole and in order whatever looks it spans.
    now = time.time_ns()
    ages_s = [1, 30, 600, 3599, 3601, 7200, 21_599, 21_601, 86_400, 5 * 86_400, 40 * 86_400, 400 * 86_400]
    insert(storage, [log_record(f"age {age}", time_ns=now - age * 1_000_000_000) for age in ages_s], service="ages")
    with TestClient(create_app(storage)) as client:
        for order, expected in (("desc", ages_s), ("asc", list(reversed(ages_s)))):
            for limit in (1, 3, 4, 100):
                seen = paged(client, "body", service="ages", limit=limit, order=order)
                assert seen == [f"age {age}" for age in expected], (order, limit)
        window = client.get("/events", params={"service": "ages", "since": "6d", "end": str((now - 2 * 10**9) / 1e9)})
        assert [e["body"] for e in window.json()["events"]] == [f"age {a}" for a in ages_s[1:10]]


def test_pages_from_a_stale_extent_still_find_every_event(storage: Storage) -> None:
    # A page splits its two looks at six hours from the stored extent, which it reuses for a few
    # seconds: events stored meanwhile, newer or older than it and on both sides of the split,
    # must all be listed, in order, both ways.
    from labtel.query_api import events

    day = 24 * HOUR
    now = time.time_ns()
    insert(storage, [log_record("before", time_ns=now - 10 * day)], service="stale")
    cached = events.recent_extent(storage)
    assert cached == (now - 10 * day, now - 10 * day)
    ages = {"future": -3 * day, "now": 0, "5 h": 5 * HOUR, "7 h": 7 * HOUR, "9.9 d": 10 * day - HOUR, "40 d": 40 * day}
    insert(storage, [log_record(name, time_ns=now - age) for name, age in ages.items()], service="stale")
    assert events.recent_extent(storage) == cached  # the pages below start from the stale extent
    newest_first = ["future", "now", "5 h", "7 h", "9.9 d", "before", "40 d"]
    with TestClient(create_app(storage)) as client:
        for order, expected in (("desc", newest_first), ("asc", newest_first[::-1])):
            for limit in (1, 2, 100):
                assert paged(client, "body", service="stale", limit=limit, order=order) == expected, (order, limit)
    assert events.recent_extent(storage) == cached


def test_events_at_the_first_and_last_instants_labtel_stores_are_listed(storage: Storage) -> None:
    # Found by test_properties: a page's window ends one nanosecond after the latest event (once
    # 2^63 - 1 ns, past Int64; now MAX_TIME_NANOS, 2106-02-07T06:28:15Z, the last DateTime second).
    last = MAX_TIME_NANOS
    insert(storage, [log_record("first", time_ns=1), log_record("last", time_ns=last)], service="edges")
    with TestClient(create_app(storage)) as client:
        for order, expected in (("asc", ["first", "last"]), ("desc", ["last", "first"])):
            page = client.get("/events", params={"service": "edges", "order": order})
            assert page.status_code == 200, page.text
            assert [e["body"] for e in page.json()["events"]] == expected
            assert page.json()["events"][0 if order == "desc" else 1]["time_unix_nano"] == last


def test_pages_read_in_key_order_keep_the_order_of_time_and_event_id(storage: Storage) -> None:
    # Past the first windows a page is read in the table's key order (five minutes, service,
    # time): events of several services at the same instants, ten days ago, must still page in
    # (Timestamp, EventId) order, both ways, without repeats or gaps.
    ten_days_ago = time.time_ns() - 240 * HOUR
    for service in ("keyorder-b", "keyorder-a", "keyorder-c"):
        records = [
            log_record(f"{service} {i}", {"test.case": "keyorder"}, time_ns=ten_days_ago + (i % 4) * 1_000_000_000)
            for i in range(12)
        ]
        insert(storage, records, service=service)
    stored = storage.rows(
        f"SELECT toString(EventId) AS id FROM {storage.names.logs} "
        "WHERE LogAttributes['test.case'] = 'keyorder' ORDER BY Timestamp, EventId"
    )
    oldest_first = [row["id"] for row in stored]
    assert len(oldest_first) == 36
    with TestClient(create_app(storage)) as client:
        for order, expected in (("asc", oldest_first), ("desc", oldest_first[::-1])):
            seen = paged(client, "event_id", limit=7, order=order, **{"attr.test.case": "keyorder"})
            assert seen == expected, order


def test_hourly_counts_come_from_the_projection_and_equal_counting_rows(storage: Storage) -> None:
    from zoneinfo import ZoneInfo

    from labtel.query_api.events import EventFilter
    from labtel.query_api.stats import _count_sql, count_events, parse_bucket

    start = 1_774_652_400_000_000_000 - 1_234_567_891  # not on an hour
    records = [
        log_record(
            f"e{i}",
            {"lab.event.type": ("action_start", "action_complete", "node_error")[i % 3]}
            | ({"lab.ttl_seconds": 3600 * 24 * 365 * 30} if i % 10 == 0 else {})  # expiring, not yet
            | ({"lab.expires_at": "2020-01-01T00:00:00Z"} if i % 25 == 1 else {}),  # already expired: hidden
            time_ns=start + i * 97_000_000_000,
            severity=(9, 13, 17)[i % 3],
        )
        for i in range(400)
    ]
    insert(storage, records, service="hourly")
    insert(storage, records[:50], service="other")
    end = start + 400 * 97_000_000_000 + 1
    cases = [
        ("event_type", "1h", "UTC"),
        ("severity", "3h", "Europe/Madrid"),
        ("service", "1d", "Europe/Madrid"),
        ("none", None, "America/New_York"),
        ("event_type", "1w", "UTC"),
    ]
    for group_by, width, zone in cases:
        bucket = parse_bucket(width) if width else None
        flt = EventFilter(service="hourly", severity_min=13)
        found = count_events(storage, flt, group_by, bucket, ZoneInfo(zone), start, end)
        # The same counts from rows only: a filter the projection cannot hold (always true).
        rows_only = EventFilter(service="hourly", severity_min=13, contains="e")
        expected = count_events(storage, rows_only, group_by, bucket, ZoneInfo(zone), start, end)
        assert found == expected, (group_by, width, zone)
        assert found["total"] == sum(1 for i in range(400) if i % 3 and i % 25 != 1)
        sql, params = _count_sql(storage, EventFilter(service="hourly"), group_by, bucket, ZoneInfo(zone), start, end)
        plan = storage.raw(f"EXPLAIN {sql}", None, parameters=params)
        assert b"p_counts_hourly" in plan, (group_by, width, zone)
    # Half-hour zones, minute buckets and node groups count rows.
    for group_by, width, zone in (
        ("event_type", "1d", "Asia/Kolkata"),
        ("event_type", "30m", "UTC"),
        ("node", "1h", "UTC"),
    ):
        sql, params = _count_sql(storage, EventFilter(), group_by, parse_bucket(width), ZoneInfo(zone), start, end)
        assert b"p_counts_hourly" not in storage.raw(f"EXPLAIN {sql}", None, parameters=params)


@pytest.mark.parametrize(
    ("width", "zone", "start", "end"),
    [
        ("1h", "Asia/Kolkata", "2026-12-03T00:00:00Z", "2026-12-03T03:00:00Z"),
        ("20m", "Asia/Kathmandu", "2026-12-03T00:00:00Z", "2026-12-03T03:00:00Z"),
        ("3h", "Europe/Madrid", "2026-10-24T18:00:00Z", "2026-10-26T06:00:00Z"),  # clocks go back
        ("3h", "America/New_York", "2026-03-07T18:00:00Z", "2026-03-09T06:00:00Z"),  # clocks go forward
        ("5h", "Europe/Madrid", "2026-12-03T00:00:00Z", "2026-12-04T00:00:00Z"),
    ],
)
def test_fixed_buckets_in_a_zone_are_one_alignment_for_counts_and_empty_buckets(
    storage: Storage, width: str, zone: str, start: str, end: str
) -> None:
    # An event every minute: every bucket holds some, none is a zero beside its twin.
    first, last = parse_time_ns(start, "start"), parse_time_ns(end, "end")
    every = 60 * 1_000_000_000
    insert(storage, [log_record(f"e{t}", time_ns=t) for t in range(first, last, every)], service="aligned")
    params = {"service": "aligned", "group_by": "none", "bucket": width, "tz": zone, "start": start, "end": end}
    with TestClient(create_app(storage)) as client:
        result = client.get("/stats", params=params).json()
    starts = [b["t_unix_nano"] for b in result["buckets"]]
    counts = [b["counts"][""] for b in result["buckets"]]
    assert starts == sorted(set(starts))
    assert all(counts), list(zip([b["t"] for b in result["buckets"]], counts, strict=True))
    assert sum(counts) == result["total"] == len(range(first, last, every))
    seconds = parse_bucket(width).seconds
    if 86_400 % seconds == 0:  # widths that divide a day begin on the zone's own hours and minutes
        local = [datetime.fromtimestamp(t / 1e9, ZoneInfo(zone)) for t in starts[1:]]
        assert all((m.hour * 3600 + m.minute * 60) % seconds == 0 for m in local), local


def test_utilization_hours_follow_the_zone(storage: Storage) -> None:
    with TestClient(create_app(storage)) as client:
        periods = client.get(
            "/utilization/periods",
            params={
                "bucket": "hour",
                "tz": "Asia/Kolkata",
                "start": "2026-12-03T00:00:00Z",
                "end": "2026-12-03T03:00Z",
            },
        ).json()["periods"]
    assert [p["start"][11:16] for p in periods] == ["23:30", "00:30", "01:30", "02:30"]  # local 05:00, 06:00, ...


def test_a_severity_name_as_maximum_means_the_top_of_its_range(storage: Storage) -> None:
    insert(storage, [log_record(f"s{n}", severity=n) for n in range(9, 25)], service="levels")
    with TestClient(create_app(storage)) as client:

        def numbers(**params: str) -> list[int]:
            response = client.get("/events", params={"service": "levels", "limit": 100, **params})
            assert response.status_code == 200, response.text
            return sorted(e["severity_number"] for e in response.json()["events"])

        assert numbers(severity_min="WARN", severity_max="WARN") == [13, 14, 15, 16]  # WARN to WARN4
        assert numbers(severity_max="error") == list(range(9, 21))
        assert numbers(severity_min="ERROR", severity_max="FATAL") == list(range(17, 25))
        assert numbers(severity_max="14") == [9, 10, 11, 12, 13, 14]  # numbers are exact
        assert numbers(severity_max="NOTICE") == [9, 10]


def test_a_store_that_cannot_be_opened_is_503_not_the_requests_fault(storage: Storage, tmp_path: Path) -> None:
    """chDB refuses a second store (a directory another process holds, or, as here, another path
    in a process with one open) with BAD_ARGUMENTS: storage is unavailable, which is a 503 with
    Retry-After, never a 400 that tells the client its request was wrong."""
    elsewhere = Storage(parse_endpoint(f"chdb://{tmp_path / 'other-store'}"), storage.names)
    try:
        with TestClient(create_app(elsewhere)) as client:
            answers = [
                client.get("/events"),
                client.get("/stats"),
                client.post("/events/query", json={"selector": {}}),
                client.post("/sql", json={"sql": "SELECT 1"}),
            ]
            for answer in answers:
                assert answer.status_code == 503, answer.text
                assert answer.headers["Retry-After"] == "2"
                assert "storage error, try again" in answer.json()["detail"]
    finally:
        elsewhere.close()


@pytest.mark.parametrize(
    ("route", "given", "named", "hint"),
    [
        ("/events", "severity=WARN", "severity", "did you mean severity_min?"),
        ("/events", "sort=asc", "sort", "did you mean order?"),
        ("/events", "lab.node.id=node-1", "lab.node.id", "attribute filters are attr.<key> or resource.<key>"),
        ("/export", "limt=5", "limt", "did you mean limit?"),
        ("/stats", "by=service", "by", "did you mean group_by?"),
        ("/events/stream", "sinse=1h", "sinse", "did you mean since?"),
        ("/utilization/nodes", "nodes=a", "nodes", "did you mean node?"),
        ("/alerts", "rules=x", "rules", "did you mean rule?"),
        ("/sql/tables", "x=1", "x", "it takes no query parameters"),
    ],
)
def test_a_parameter_a_route_does_not_take_is_a_400_naming_it(
    world: tuple[TestClient, Storage, int], route: str, given: str, named: str, hint: str
) -> None:
    """A mistyped filter would otherwise be ignored and answer as if it were not there."""
    client, _, _ = world
    response = client.get(f"{route}?{given}")
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"{named}: not a parameter of {route}")
    assert hint in detail


def test_every_parameter_a_route_takes_passes_the_check(world: tuple[TestClient, Storage, int]) -> None:
    """Declared parameters, the aliases and prefixes the filters read themselves, and the
    routes' own parameters together."""
    client, _, _ = world
    everything = (
        "since=2d&severity_min=INFO&severity_max=ERROR&service=query&event_type=device_io&node_id=node-1"
        "&workflow=wf-1&experiment_id=exp-1&contains=gauge&q=reading&attr.lab.node.id=node-1"
        "&resource.service.name=query"
    )
    listed = client.get(f"/events?{everything}&limit=100&order=asc")
    assert listed.status_code == 200, listed.text
    assert listed.json()["events"]
    assert all(e["node_id"] == "node-1" for e in listed.json()["events"])
    assert client.get(f"/stats?{everything}&group_by=node&bucket=1h&tz=UTC").status_code == 200
    assert client.get(f"/export?{everything}&format=ndjson&limit=3").status_code == 200
    # the compatibility routes answer their clients as before: MADSci's list takes what it takes
    madsci = client.get("/madsci/events?number=2&unknown=1")
    assert madsci.status_code == 200, madsci.text
    assert len(madsci.json()) == 2


@pytest.mark.parametrize(
    "query",
    [
        "/events?severity_min=\u00b2",
        "/events?severity_max=\u00b2",
        "/utilization/periods?day_start=\u00b2:00",
        "/utilization/periods?day_start=\u00b2",
        "/madsci/events?level=\u00b2",
    ],
)
def test_digits_int_refuses_are_a_400_not_a_500(world: tuple[TestClient, Storage, int], query: str) -> None:
    """str.isdigit() takes "\u00b2" (superscript two), which int() refuses: such a value was a 500."""
    client, _, _ = world
    response = client.get(query)
    assert response.status_code == 400, response.text
    assert "\u00b2" in response.json()["detail"]
