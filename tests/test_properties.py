"""Property-based tests (hypothesis): what goes into OTLP ingest comes out of the query API, and
selectors translate into parameterized SQL that selects what a Python reading of them selects."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labtel.collector.component import Payload
from labtel.collector.config import ClickHouseExporterConfig, QueryApiConfig
from labtel.collector.exporters.clickhouse import ClickHouseExporter
from labtel.collector.otlp.framing import count_records
from labtel.collector.otlp.signals import LOGS
from labtel.collector.otlp.values import value_text
from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage
from labtel.collector.storage.schema import MAX_TIME_NANOS
from labtel.query_api.app import create_app
from labtel.query_api.selector import translate
from tests.conftest import make_storage
from tests.helpers import any_value, log_record, logs_request
from tests.strategies import scalars, text


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
        derandomize=True,
        database=None,
    )


# --- OTLP → storage → query API ------------------------------------------------------------

value = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)),
    max_leaves=6,
)
record_strategy = st.fixed_dictionaries(
    {
        "body": value,
        "attributes": st.dictionaries(st.text(min_size=1, max_size=10), value, max_size=6),
        "severity": st.integers(min_value=0, max_value=24),
        "trace_id": st.one_of(st.just(b""), st.binary(min_size=16, max_size=16)),
        "span_id": st.one_of(st.just(b""), st.binary(min_size=8, max_size=8)),
        "time_ns": st.integers(min_value=1, max_value=MAX_TIME_NANOS),
    }
)


@pytest.fixture(scope="module")
def roundtrip(chdb_path: Path) -> Iterator[tuple[ClickHouseExporter, TestClient]]:
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    exporter = ClickHouseExporter("clickhouse", ClickHouseExporterConfig(), storage)
    with TestClient(create_app(storage, QueryApiConfig())) as client:
        yield exporter, client
    storage.command(f"DROP DATABASE IF EXISTS `{storage.names.database}`")


@_settings(12)
@given(records=st.lists(record_strategy, min_size=1, max_size=5))
def test_what_goes_in_comes_out(
    roundtrip: tuple[ClickHouseExporter, TestClient], records: list[dict[str, Any]]
) -> None:
    exporter, client = roundtrip
    service = f"prop-{uuid.uuid4().hex}"
    built = [
        log_record(
            r["body"],
            r["attributes"],
            severity=r["severity"],
            trace_id=r["trace_id"],
            span_id=r["span_id"],
            time_ns=r["time_ns"],
        )
        for r in records
    ]
    data = logs_request(built, resource={"service.name": service}).SerializeToString()
    verdicts = exporter.store([Payload(LOGS, data, count_records(LOGS, data))], uuid.uuid4().hex)
    assert verdicts == [None]
    page = client.get("/events", params={"service": service, "limit": 100, "order": "asc"})
    assert page.status_code == 200, page.text
    events = page.json()["events"]
    assert len(events) == len(records)
    expected = sorted(
        (
            r["time_ns"],
            value_text(any_value(r["body"])),
            {k: value_text(any_value(v)) for k, v in r["attributes"].items()},
            r["severity"],
            r["trace_id"].hex(),
            r["span_id"].hex(),
        )
        for r in records
    )
    got = sorted(
        (e["time_unix_nano"], e["body"], e["attributes"], e["severity_number"], e["trace_id"], e["span_id"])
        for e in events
    )
    assert got == expected


# --- selector → SQL ----------------------------------------------------------------------------

NODES = ["zqa", "zqb", ""]
TAGS = ["zqa", "zqb", "zqc", None]
NUMBERS = ["1", "5", "12", "zqx", None]
BODIES = ["zqalpha", "zqbeta", ""]
TABLE = [
    {
        "i": i,
        "body": BODIES[i % 3],
        "node_id": NODES[i % 3 if i % 4 else 2],
        "severity_number": 1 + (i * 5) % 24,
        "tag": TAGS[i % 4],
        "n": NUMBERS[i % 5],
    }
    for i in range(16)
]
"""The fixed events the selectors run over; None: the attribute is absent."""

STRING_FIELDS = {"body": "body", "node_id": "node_id", "attributes.lab.tagzq": "tag"}
NUMBER_FIELDS = {"severity_number": "severity_number", "attributes.nzq": "n"}
STRINGS = st.sampled_from(["zqa", "zqb", "zqalpha", "zqbeta", "zqzz"])
NUMBERS_IN = st.integers(min_value=0, max_value=25)
COMPARE = st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"])


def _condition() -> st.SearchStrategy[dict[str, Any]]:
    string_field = st.sampled_from(sorted(STRING_FIELDS))
    number_field = st.sampled_from(sorted(NUMBER_FIELDS))
    attribute = st.sampled_from(["attributes.lab.tagzq", "attributes.nzq"])
    expressions = st.one_of(
        st.tuples(string_field, st.builds(lambda op, v: {op: v}, COMPARE, STRINGS)),
        st.tuples(string_field, STRINGS),  # implicit $eq
        st.tuples(number_field, st.builds(lambda op, v: {op: v}, COMPARE, NUMBERS_IN)),
        st.tuples(
            st.sampled_from([*sorted(STRING_FIELDS)]),
            st.builds(lambda op, v: {op: v}, st.sampled_from(["$in", "$nin"]), st.lists(STRINGS, max_size=3)),
        ),
        st.tuples(attribute, st.builds(lambda b: {"$exists": b}, st.booleans())),
        st.tuples(attribute, st.sampled_from([None, {"$ne": None}])),
        st.tuples(string_field, st.builds(lambda p: {"$regex": p}, st.sampled_from(["^zqa", "ta$", "zqb", "^$"]))),
        st.tuples(string_field, st.builds(lambda p: {"$not": {"$regex": p}}, st.sampled_from(["^zqa", "beta"]))),
    )
    return expressions.map(lambda pair: {pair[0]: pair[1]})


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        for key, val in part.items():
            merged.setdefault(key, val)  # one condition per field in an implicit AND
    return merged


selectors = st.recursive(
    _condition(),
    lambda inner: st.one_of(
        st.builds(
            lambda op, xs: {op: xs}, st.sampled_from(["$and", "$or", "$nor"]), st.lists(inner, min_size=1, max_size=3)
        ),
        st.lists(inner, min_size=2, max_size=3).map(_merge),
    ),
    max_leaves=8,
)


def _field_value(event: dict[str, Any], name: str) -> Any:
    return event[STRING_FIELDS.get(name) or NUMBER_FIELDS[name]]


def _compare(op: str, left: Any, right: Any) -> bool:
    return {
        "$eq": left == right,
        "$ne": left != right,
        "$gt": left > right,
        "$gte": left >= right,
        "$lt": left < right,
        "$lte": left <= right,
    }[op]


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _matches_operator(event: dict[str, Any], name: str, op: str, operand: Any) -> bool:
    """What the SQL of one field condition means, read in Python (a missing attribute reads as '')."""
    attribute = name.startswith("attributes.")
    raw = _field_value(event, name)
    text_value = "" if raw is None else str(raw)
    if op == "$exists":
        return (raw is not None) == bool(operand)
    if op == "$regex":
        return re.search(operand, text_value) is not None
    if op == "$not":
        return not all(_matches_operator(event, name, inner, v) for inner, v in operand.items())
    if op in ("$in", "$nin"):
        found = any(_matches_operator(event, name, "$eq", v) for v in operand)
        return found if op == "$in" else not found
    if operand is None:
        if attribute:
            return (raw is None) if op == "$eq" else (raw is not None) if op == "$ne" else False
        return _compare(op, text_value, "") if op in ("$eq", "$ne") else False
    if isinstance(operand, int) and attribute:  # text equality or numeric comparison
        number = _number(raw)
        if op == "$eq":
            return text_value == str(operand) or (number is not None and number == operand)
        if op == "$ne":
            return text_value != str(operand) and (number is None or number != operand)
        return number is not None and _compare(op, number, operand)
    if isinstance(operand, int):
        return _compare(op, raw, operand)
    return _compare(op, text_value, operand)


def matches(event: dict[str, Any], selector: dict[str, Any]) -> bool:
    """A Python reading of a selector over one event of TABLE."""
    for key, val in selector.items():
        if key in ("$and", "$or", "$nor"):
            results = [matches(event, part) for part in val]
            ok = all(results) if key == "$and" else any(results) if key == "$or" else not any(results)
        elif isinstance(val, dict):
            ok = all(_matches_operator(event, key, op, operand) for op, operand in val.items())
        else:
            ok = _matches_operator(event, key, "$eq", val)
        if not ok:
            return False
    return True


@pytest.fixture(scope="module")
def table(chdb_path: Path) -> Iterator[Storage]:
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    records = []
    for event in TABLE:
        attributes: dict[str, Any] = {"i": event["i"]}
        if event["node_id"]:
            attributes["lab.node.id"] = event["node_id"]
        if event["tag"] is not None:
            attributes["lab.tagzq"] = event["tag"]
        if event["n"] is not None:
            attributes["nzq"] = event["n"]
        records.append(log_record(event["body"], attributes, severity=event["severity_number"]))
    storage.insert_otlp("logs", logs_request(records).SerializeToString(), uuid.uuid4().hex)
    yield storage
    storage.command(f"DROP DATABASE IF EXISTS `{storage.names.database}`")


def _literals(selector: Any) -> Iterator[str]:
    """Every string value and attribute key of a selector."""
    if isinstance(selector, dict):
        for key, val in selector.items():
            if key.startswith("attributes."):
                yield key.removeprefix("attributes.")
            yield from _literals(val)
    elif isinstance(selector, list):
        for item in selector:
            yield from _literals(item)
    elif isinstance(selector, str) and selector:
        yield selector


@_settings(40)
@given(selector=selectors)
def test_selectors_select_what_they_say(table: Storage, selector: dict[str, Any]) -> None:
    sql, parameters = translate(selector)
    for literal in _literals(selector):
        assert literal not in sql, (literal, sql)  # values and keys travel only as parameters
    rows = table.rows(
        f"SELECT toInt64(LogAttributes['i']) AS i FROM {table.names.logs} WHERE {sql} ORDER BY i",
        parameters=parameters,
    )
    assert [r["i"] for r in rows] == [e["i"] for e in TABLE if matches(e, selector)], sql
