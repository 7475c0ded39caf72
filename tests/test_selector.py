"""MongoDB-style selectors → parameterized SQL: a table of cases, injection attempts, errors, and
the same answers as the equivalent `GET /events` filters."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from labtel.collector.storage import migrations
from labtel.query_api.app import create_app
from labtel.query_api.selector import SelectorError, translate
from tests.conftest import make_storage
from tests.helpers import log_record, logs_request

BASE = 1_780_000_000_000_000_000
RECORDS = [
    # body, severity, attributes
    (
        "ot2 transfer ok",
        9,
        {
            "lab.node.id": "ot2_1",
            "lab.event.type": "action_complete",
            "duration_ms": 120.5,
            "status": "succeeded",
            "user": "alice",
        },
    ),
    (
        "ot2 transfer slow",
        13,
        {
            "lab.node.id": "ot2_1",
            "lab.event.type": "action_complete",
            "duration_ms": 2500,
            "status": "succeeded",
            "user": "bob",
        },
    ),
    (
        "reader failed",
        17,
        {
            "lab.node.id": "platereader_1",
            "lab.event.type": "action_failed",
            "duration_ms": 40,
            "status": "failed",
            "user": "alice",
            "lab.user.id": "alice",
        },
    ),
    (
        "arm cancelled",
        13,
        {"lab.node.id": "pf400_1", "lab.event.type": "ACTION_FAILED", "status": "cancelled", "retries": 3},
    ),
    ("lab critical", 21, {"lab.event.type": "manager_error", "weird key ' \" ]": "x"}),
]


@pytest.fixture(scope="module")
def client(chdb_path: Path) -> Iterator[TestClient]:
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    records = [
        log_record(body, attrs, time_ns=BASE + i * 1_000_000_000, severity=sev)
        for i, (body, sev, attrs) in enumerate(RECORDS)
    ]
    storage.insert_otlp(
        "logs",
        logs_request(records, resource={"service.name": "selector", "host.name": "pc-7"}).SerializeToString(),
        uuid.uuid4().hex,
    )
    with TestClient(create_app(storage)) as test_client:
        yield test_client
    storage.command(f"DROP DATABASE IF EXISTS `{storage.names.database}`")


def bodies(client: TestClient, selector: dict[str, Any]) -> list[str]:
    response = client.post("/events/query", json={"selector": selector, "order": "asc"})
    assert response.status_code == 200, response.text
    return [e["body"] for e in response.json()["events"]]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({"log_level": {"$gte": 40}}, ["reader failed", "lab critical"]),  # MADSci: ERROR and above
        ({"log_level": {"$lt": 30}}, ["ot2 transfer ok"]),
        ({"source.node_id": "ot2_1"}, ["ot2 transfer ok", "ot2 transfer slow"]),
        ({"node_id": {"$in": ["pf400_1", "platereader_1"]}}, ["reader failed", "arm cancelled"]),
        ({"event_type": "action_failed"}, ["reader failed", "arm cancelled"]),  # stored lower-case
        ({"event_type": "ACTION_FAILED"}, ["reader failed", "arm cancelled"]),
        ({"attributes.duration_ms": {"$gt": 100}}, ["ot2 transfer ok", "ot2 transfer slow"]),
        ({"duration_ms": {"$gte": 40, "$lte": 120.5}}, ["ot2 transfer ok", "reader failed"]),
        ({"duration_ms": 2500}, ["ot2 transfer slow"]),
        ({"retries": {"$exists": True}}, ["arm cancelled"]),
        ({"duration_ms": {"$exists": False}}, ["arm cancelled", "lab critical"]),
        ({"status": {"$nin": ["succeeded"]}}, ["reader failed", "arm cancelled", "lab critical"]),
        ({"status": {"$ne": "succeeded"}}, ["reader failed", "arm cancelled", "lab critical"]),
        ({"body": {"$regex": "^OT2", "$options": "i"}}, ["ot2 transfer ok", "ot2 transfer slow"]),
        ({"body": {"$not": {"$regex": "ot2"}}}, ["reader failed", "arm cancelled", "lab critical"]),
        ({"$or": [{"user": "bob"}, {"severity": {"$gte": 21}}]}, ["ot2 transfer slow", "lab critical"]),
        ({"$nor": [{"user": "alice"}, {"user": "bob"}]}, ["arm cancelled", "lab critical"]),
        ({"$and": [{"user": "alice"}, {"log_level": {"$gte": 40}}, {"source.user_id": "alice"}]}, ["reader failed"]),
        ({"event_data.status": "cancelled"}, ["arm cancelled"]),
        ({"resource.host.name": "pc-7", "severity_text": "FATAL"}, ["lab critical"]),
        ({"resource.host.name": "pc-8"}, []),
        ({"timestamp": {"$gte": (BASE + 3_000_000_000) / 1e9}}, ["arm cancelled", "lab critical"]),
        ({"event_timestamp": {"$lt": "2026-05-28T20:26:42Z"}}, ["ot2 transfer ok", "ot2 transfer slow"]),
        ({"weird key ' \" ]": "x"}, ["lab critical"]),
        ({}, [r[0] for r in RECORDS]),
    ],
)
def test_selectors(client: TestClient, selector: dict[str, Any], expected: list[str]) -> None:
    assert bodies(client, selector) == expected


@pytest.mark.parametrize(
    "selector",
    [
        {"user": "alice' OR 1=1 --"},
        {"alice') OR (1=1": "x"},
        {"body": {"$regex": ".*') OR 1=1 --"}},
        {"attributes.x'] OR 1 --": {"$exists": True}},
        {"node_id": {"$in": ["x') OR ('1'='1"]}},
        {"event_type": "'; DROP TABLE otel_logs; --"},
    ],
)
def test_injection_attempts_are_just_values(client: TestClient, selector: dict[str, Any]) -> None:
    response = client.post("/events/query", json={"selector": selector})
    if "$regex" in str(selector):  # not a valid RE2 pattern: a clear 400, not a server error
        assert response.status_code == 400
        assert "re2" in response.json()["detail"]
    else:
        assert response.json()["events"] == []
    assert len(bodies(client, {})) == len(RECORDS)  # the table is still there


def test_values_and_keys_never_enter_the_sql_text() -> None:
    sql, params = translate({"$or": [{"a'b": "x'y"}, {"body": {"$regex": "z'"}}], "log_level": {"$gt": 30}})
    assert "'" not in sql.replace("''", "")
    assert set(params.values()) >= {"a'b", "x'y", "z'"}


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ({"$where": "sleep(1)"}, "unsupported operator $where"),
        ({"field": {"$where": "x"}}, "unsupported operator $where"),
        ({"field": {"$elemMatch": {"a": 1}}}, "unsupported operator $elemMatch"),
        ({"$or": []}, "$or takes a non-empty list"),
        ({"$and": {"a": 1}}, "$and takes a non-empty list"),
        ({"field": {"$in": "x"}}, "$in takes a list"),
        ({"field": {"$regex": 5}}, "$regex takes a string"),
        ({"log_level": {"$gt": "high"}}, "compares with numbers"),
        ({"field": {"a": {"b": 1}}}, "not an object or list"),
        ({"timestamp": {"$gt": "yesterday"}}, "is not a time"),
        # integers of hundreds of digits, as JSON may hold them
        ({"field": 10**400}, "too large"),
        ({"field": {"$in": [1, 10**400]}}, "too large"),
        ({"severity": 10**400}, "too large"),
        ({"severity": {"$in": [10**400]}}, "too large"),
        ({"timestamp": {"$gt": 10**400}}, "too large"),
    ],
)
def test_bad_selectors_are_400_with_the_reason(client: TestClient, selector: dict[str, Any], message: str) -> None:
    response = client.post("/events/query", json={"selector": selector})
    assert response.status_code == 400
    assert message in response.json()["detail"]


def test_depth_and_size_are_bounded() -> None:
    deep: dict[str, Any] = {"a": 1}
    for _ in range(20):
        deep = {"$and": [deep]}
    with pytest.raises(SelectorError, match="deeper than"):
        translate(deep)
    with pytest.raises(SelectorError, match="more than 300 conditions"):
        translate({"$or": [{"a": i} for i in range(400)]})


@pytest.mark.parametrize(
    ("params", "selector"),
    [
        ({"attr.duration_ms": ">100"}, {"attributes.duration_ms": {"$gt": 100}}),
        ({"attr.duration_ms>": "120.5"}, {"attributes.duration_ms": {"$gte": 120.5}}),
        ({"attr.duration_ms<100": ""}, {"attributes.duration_ms": {"$lt": 100}}),
        ({"attr.status": "!=succeeded"}, {"attributes.status": {"$ne": "succeeded"}}),
        ({"attr.status!": "succeeded"}, {"attributes.status": {"$ne": "succeeded"}}),
        ({"attr.status": "in:failed,cancelled"}, {"attributes.status": {"$in": ["failed", "cancelled"]}}),
        ({"attr.lab.node.id": "ot2_1", "severity_min": "WARN"}, {"node_id": "ot2_1", "log_level": {"$gte": 30}}),
        ({"resource.host.name": "pc-7", "node": "pf400_1"}, {"resource.host.name": "pc-7", "node_id": "pf400_1"}),
        ({"event_type": "Action_Failed", "attr.user": "alice"}, {"event_type": "action_failed", "user": "alice"}),
    ],
)
def test_get_filters_equal_the_same_selector(
    client: TestClient, params: dict[str, str], selector: dict[str, Any]
) -> None:
    by_filter = client.get("/events", params={**params, "order": "asc"})
    assert by_filter.status_code == 200, by_filter.text
    assert [e["body"] for e in by_filter.json()["events"]] == bodies(client, selector)
    assert bodies(client, selector)  # not vacuous


def test_limits_are_named() -> None:
    with pytest.raises(SelectorError, match=r"more than 65536 \(max_selector_bytes\)"):
        translate({"$or": [{"body": "x" * 1000} for _ in range(70)]})
    deep: dict[str, Any] = {"a": 1}
    for _ in range(13):
        deep = {"$nor": [deep]}
    with pytest.raises(SelectorError, match=r"deeper than 12 levels \(max_selector_depth\)"):
        translate(deep)
    with pytest.raises(SelectorError, match=r"\(max_selector_conditions\)"):
        translate({"a": {"$in": [1]}, "$and": [{"b": i} for i in range(300)]})


@pytest.mark.parametrize("selector", [{"body": "\ud800"}, {"\udfff": 1}, {"x": {"$in": ["a", "b\ud800"]}}])
def test_text_that_is_not_valid_unicode_is_named(selector: dict[str, Any]) -> None:
    """A lone surrogate (a JSON \\ud800 escape) cannot be compared with stored text: the
    client's mistake, not storage trouble (it was a 503 saying to try again)."""
    with pytest.raises(SelectorError, match=r"not valid Unicode \(a lone surrogate"):
        translate(selector)


def test_trace_and_span_ids_match_in_any_case(chdb_path: Path) -> None:
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    trace, span = bytes.fromhex("ABCDEF0123456789ABCDEF0123456789"), bytes.fromhex("0123456789ABCDEF")
    records = [log_record("traced", trace_id=trace, span_id=span), log_record("untraced")]
    storage.insert_otlp(
        "logs", logs_request(records, resource={"service.name": "traced"}).SerializeToString(), uuid.uuid4().hex
    )
    upper_trace, upper_span = trace.hex().upper(), span.hex().upper()
    try:
        with TestClient(create_app(storage)) as client:
            by_get = client.get("/events", params={"trace_id": upper_trace, "span_id": upper_span}).json()["events"]
            assert [e["body"] for e in by_get] == ["traced"]
            for selector in (
                {"trace_id": upper_trace},
                {"span_id": upper_span, "trace_id": {"$in": [upper_trace, "x"]}},
                {"trace_id": {"$eq": upper_trace.lower()}},
            ):
                assert bodies(client, selector) == ["traced"], selector
            assert bodies(client, {"service": "traced", "trace_id": {"$ne": upper_trace}}) == ["untraced"]
    finally:
        storage.command(f"DROP DATABASE IF EXISTS `{storage.names.database}`")


def test_an_unwrapped_selector_is_refused_saying_where_it_goes(client: TestClient) -> None:
    response = client.post("/events/query", json={"body": {"$regex": "ot2"}})
    assert response.status_code == 422
    message = response.json()["detail"][0]["msg"]
    assert "unknown key 'body'" in message
    assert '"selector"' in message
    assert client.post("/events/query", json={"selector": {"body": {"$regex": "ot2"}}, "limit": 1}).status_code == 200


def test_lab_id_spellings_filter_too(client: TestClient) -> None:
    by_id = client.get("/events", params={"node_id": "ot2_1", "order": "asc"})
    assert [e["body"] for e in by_id.json()["events"]] == ["ot2 transfer ok", "ot2 transfer slow"]
    assert client.get("/events", params={"run_id": "nope"}).json()["events"] == []
    both = client.get("/events", params={"node_id": "ot2_1", "node": "pf400_1"})
    assert both.status_code == 400
    assert "node_id" in both.json()["detail"]


def test_regex_options_m_and_s_work_and_others_are_named(chdb_path: Path) -> None:
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    records = [log_record("first line\nsecond line"), log_record("one line")]
    storage.insert_otlp(
        "logs", logs_request(records, resource={"service.name": "lines"}).SerializeToString(), uuid.uuid4().hex
    )
    try:
        with TestClient(create_app(storage)) as own:
            for selector, expected in (
                ({"body": {"$regex": "^second", "$options": "m"}}, ["first line\nsecond line"]),
                ({"body": {"$regex": "^second"}}, []),
                ({"body": {"$regex": "line.second", "$options": "s"}}, ["first line\nsecond line"]),
                ({"body": {"$regex": "line.second"}}, ["first line\nsecond line"]),  # ClickHouse's default
                ({"body": {"$regex": "^SECOND", "$options": "mi"}}, ["first line\nsecond line"]),
            ):
                assert bodies(own, {"service": "lines", **selector}) == expected, selector
            for selector, message in (
                ({"body": {"$regex": "x", "$options": "x"}}, "$options: x not supported"),
                ({"body": {"$regex": "x", "$options": "iqz"}}, "$options: q, z not supported"),
                ({"attributes.k": {"$options": "i"}}, "$options needs $regex"),
                ({"body": {"$not": {"$options": "i"}}}, "$options needs $regex"),
            ):
                response = own.post("/events/query", json={"selector": selector})
                assert response.status_code == 400, selector
                assert message in response.json()["detail"]
                assert "SELECT" not in response.json()["detail"]
    finally:
        storage.command(f"DROP DATABASE IF EXISTS `{storage.names.database}`")


def test_large_integer_attributes_compare_exactly(chdb_path: Path) -> None:
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    barcodes = ["123456789012345678", "123456789012345679", "120.0", "9007199254740993"]
    records = [log_record(f"b{i}", {"barcode": code}) for i, code in enumerate(barcodes)]
    storage.insert_otlp(
        "logs", logs_request(records, resource={"service.name": "ids"}).SerializeToString(), uuid.uuid4().hex
    )
    try:
        with TestClient(create_app(storage)) as own:
            for value, expected in (
                (123456789012345678, ["b0"]),
                (123456789012345679, ["b1"]),
                (9007199254740992, []),  # 2^53: a neighbour of b3 as Float64
                (120, ["b2"]),  # "120.0" is still the number 120
                ({"$gt": 123456789012345678}, ["b1"]),
                ({"$ne": 123456789012345678}, ["b1", "b2", "b3"]),
                ({"$in": [123456789012345679, 9007199254740993]}, ["b1", "b3"]),
            ):
                selector = {"service": "ids", "barcode": value}
                assert sorted(bodies(own, selector)) == expected, value
            for text, expected in (("123456789012345678", ["b0"]), (">=123456789012345678", ["b0", "b1"])):
                found = own.get("/events", params={"service": "ids", "attr.barcode": text}).json()["events"]
                assert sorted(e["body"] for e in found) == expected, text
    finally:
        storage.command(f"DROP DATABASE IF EXISTS `{storage.names.database}`")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({"status": {"$in": [*(str(i) for i in range(8000)), "failed"]}}, ["reader failed"]),  # 55 KB as JSON
        ({"node_id": {"$in": [*(f"node {i}" for i in range(4000)), "pf400_1"]}}, ["arm cancelled"]),
        ({"event_type": {"$in": [*(f"t{i}" for i in range(3000)), "MANAGER_ERROR"]}}, ["lab critical"]),
        ({"severity": {"$in": list(range(14, 3000))}}, ["reader failed", "lab critical"]),
        ({"log_level": {"$in": [40, 50]}}, ["reader failed", "lab critical"]),
        (
            {"status": {"$nin": [*(f"v{i}" for i in range(3000)), "succeeded", None]}},
            ["reader failed", "arm cancelled"],
        ),
        (
            {"duration_ms": {"$in": ["40", 2500, None]}},
            ["ot2 transfer slow", "reader failed", "arm cancelled", "lab critical"],
        ),
        ({"duration_ms": {"$in": [*range(100_000, 106_000), 2500, 40.0]}}, ["ot2 transfer slow", "reader failed"]),
        (
            {"duration_ms": {"$nin": [*range(100_000, 106_000), 2500.5, 40]}},
            ["ot2 transfer ok", "ot2 transfer slow", "arm cancelled", "lab critical"],
        ),
        ({"duration_ms": {"$in": [120.5, 2500, 10**30, 9 * 10**200]}}, ["ot2 transfer ok", "ot2 transfer slow"]),
    ],
)
def test_in_takes_thousands_of_values(client: TestClient, selector: dict[str, Any], expected: list[str]) -> None:
    assert bodies(client, selector) == expected
