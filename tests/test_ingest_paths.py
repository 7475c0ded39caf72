"""The fast path (ClickHouse parses OTLP) and the exact path (Python normalizes) store the same thing.

Stored values are text. These tests hold the SQL rendering (labtel.collector.storage.schema) and
the Python rendering (labtel.collector.otlp.values) to each other on random values, and check that
a record stores identically whichever path it took. Records holding only scalar values take the
fast path; a record holding an array or key-value list value sends its batch to the exact path.
Both store an attribute list that repeats a key (OTLP forbids it, senders still do) with the key
once, holding its last value, and `ServiceName` is the resource's last `service.name`.
"""

from __future__ import annotations

import math
import struct
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from labtel.collector import telemetry
from labtel.collector.component import ExportUnavailable, Payload
from labtel.collector.config import ClickHouseExporterConfig
from labtel.collector.exporters.clickhouse import ClickHouseExporter
from labtel.collector.otlp.exact import triage
from labtel.collector.otlp.framing import count_records
from labtel.collector.otlp.signals import LOGS, TRACES
from labtel.collector.otlp.values import format_double, json_string, value_text
from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage
from labtel.collector.storage.schema import EXACT_PATH_ERROR, MAX_TIME_NANOS, MAX_TIME_TEXT
from tests.conftest import make_storage
from tests.helpers import any_value, kv, log_record, logs_request, wrong_wire_type_request
from tests.strategies import scalars, text

one_level = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(text, scalars, max_size=4))
attributes = st.dictionaries(st.text(min_size=1, max_size=12), one_level, max_size=6)


def pairs(column: str) -> str:
    """SQL: a stored Map as its (key, value) entries, in order: a repeated key shows (the dict a
    client reads a Map into keeps one of them)."""
    return f"CAST({column}, 'Array(Tuple(String, String))')"


def last_wins(attributes: Iterable[KeyValue]) -> list[tuple[str, str]]:
    """The entries labtel stores for an attribute list: each key once with its last value, by key."""
    return sorted({kv.key: value_text(kv.value) for kv in attributes}.items())


def stored_logs(storage: Storage) -> list[dict[str, Any]]:
    return storage.rows(
        f"SELECT Body, LogAttributes, ResourceAttributes, ScopeAttributes, TraceId, SpanId, SeverityText, "
        f"SeverityNumber, toUnixTimestamp64Nano(Timestamp) AS ts, ScopeName, ServiceName, EventType, NodeId, "
        f"{pairs('LogAttributes')} AS log_pairs, {pairs('ResourceAttributes')} AS resource_pairs, "
        f"{pairs('ScopeAttributes')} AS scope_pairs, ResourceAttributes['service.name'] AS service_attribute "
        f"FROM {storage.names.logs} ORDER BY ts, Body"
    )


def stored_by(path: str) -> float:
    """Records the `clickhouse` exporters of this process stored on a path so far (self-metrics)."""
    labels = {"exporter": "clickhouse", "signal": "logs", "path": path}
    return telemetry.REGISTRY.get_sample_value("labtel_exporter_stored_records_total", labels) or 0.0


def inserts(outcome: str) -> float:
    """Inserts of logs the `clickhouse` exporters of this process made so far, by outcome."""
    labels = {"exporter": "clickhouse", "signal": "logs", "outcome": outcome}
    return telemetry.REGISTRY.get_sample_value("labtel_exporter_inserts_total", labels) or 0.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(st.tuples(one_level, attributes), min_size=1, max_size=8))
def test_sql_and_python_render_every_value_identically(
    storage: Storage, records: list[tuple[Any, dict[str, Any]]]
) -> None:
    marker = uuid.uuid4().hex
    built = [
        log_record(body, {**attrs, "marker": marker}, time_ns=1_700_000_000_000_000_000 + i)
        for i, (body, attrs) in enumerate(records)
    ]
    # Scalar-only records: ClickHouse renders them (the fast path takes them as they are).
    scalars = [r for r, (body, attrs) in zip(built, records, strict=True) if not _holds_any_list(body, attrs)]
    if scalars:
        storage.insert_otlp("logs", logs_request(scalars).SerializeToString(), uuid.uuid4().hex)
    # Records holding a list: the fast path refuses them, the exact path renders them.
    lists = [r for r, (body, attrs) in zip(built, records, strict=True) if _holds_any_list(body, attrs)]
    if lists:
        data = logs_request(lists).SerializeToString()
        with pytest.raises(Exception, match=EXACT_PATH_ERROR):
            storage.insert_otlp("logs", data, uuid.uuid4().hex)
        exporter = ClickHouseExporter("clickhouse", ClickHouseExporterConfig(), storage)
        assert exporter.store([Payload(LOGS, data, len(lists))], uuid.uuid4().hex) == [None]
    rows = storage.rows(
        f"SELECT Body, LogAttributes FROM {storage.names.logs} WHERE LogAttributes['marker'] = {{m:String}} "
        "ORDER BY Timestamp",
        parameters={"m": marker},
    )
    assert len(rows) == len(records)
    for row, (body, attrs) in zip(rows, records, strict=True):
        assert row["Body"] == value_text(any_value(body))
        expected = {key: value_text(any_value(value)) for key, value in attrs.items()}
        expected["marker"] = marker
        assert row["LogAttributes"] == expected


def _holds_any_list(body: Any, attrs: dict[str, Any]) -> bool:
    return any(isinstance(value, list | dict) for value in (body, *attrs.values()))


@pytest.mark.parametrize(
    "value",
    [0.0, -0.0, 1.5, 0.1, 1e21, 1e20, 1e-7, 1e-6, 5e-324, 1.7976931348623157e308, 123456789.125, -2.5e-300],
)
def test_doubles_render_like_clickhouse(storage: Storage, value: float) -> None:
    bits = struct.pack("<d", value).hex()
    rendered = storage.rows("SELECT toString(reinterpretAsFloat64(unhex({h:String}))) AS s", parameters={"h": bits})
    assert format_double(value) == rendered[0]["s"]


def test_json_strings_escape_like_clickhouse(storage: Storage) -> None:
    sample = 'a/b"\\ é \x7f \u2028 \x00 \x1f \t\n\r\b\f 😀'
    rendered = storage.rows(
        "SELECT toJSONString(unhex({h:String})) AS s SETTINGS output_format_json_escape_forward_slashes = 0",
        parameters={"h": sample.encode().hex()},
    )
    assert json_string(sample) == rendered[0]["s"]
    assert math.isnan(float(format_double(float("nan"))))


ZERO_IDS = (bytes(16), bytes(8))
"""A trace id and a span id of all zero bytes: OTLP's invalid ids, for ids that are not set."""


def ids(item: dict[str, Any], i: int) -> tuple[bytes, bytes]:
    """The trace and span id of corpus item `i`: its own `ids`, or ones made from `i`."""
    default: tuple[bytes, bytes] = (bytes([i + 1]) * 16, bytes([i + 1]) * 8)
    return item.get("ids", default)


def stored_ids(item: dict[str, Any], i: int) -> tuple[str, str]:
    """What corpus item `i`'s TraceId and SpanId are stored as: hex, or '' for all zeros."""
    return ("", "") if item.get("ids") == ZERO_IDS else (ids(item, i)[0].hex(), ids(item, i)[1].hex())


CORPUS: list[dict[str, Any]] = [
    {
        "body": "plain",
        "attributes": {"s": "x", "i": 7, "d": 2.5, "b": True, "raw": b"\x00\xff"},
        "repeated": [("s", "y"), ("i", [7])],  # a scalar repeated as a scalar, and as a list
    },
    {
        "body": 42,
        "attributes": {"tags": ["imaging", "m31"], "mixed": [1, "two", 3.0, False, b"\x01"]},
        "repeated": [("tags", "a scalar now")],  # a list repeated as a scalar
    },
    {"body": ["list", "body"], "attributes": {"limits": {"min": -1.5, "max": 1e21, "name": "ra/dec"}}},
    {"body": {"kv": "body", "n": 1}, "attributes": {"empty_list": [], "empty_map": {}}},
    {"body": "deep", "attributes": {"matrix": [[1, 2], [3, 4]], "tree": {"a": {"b": {"c": "d"}}}}},
    {"body": [{"step": 1, "wells": ["A1", "A2"]}], "attributes": {"ok": False}},
    {
        "body": "unicode ✓ 😀 \u2028",
        "attributes": {"ключ": "значение", "nan": float("nan"), "inf": float("-inf")},
    },
    {"body": "", "attributes": {}},
    {"body": ["zero", "ids"], "attributes": {"n": 1}, "ids": ZERO_IDS},  # ids "not set" (OTLP), stored as ''
]


def repeat_keys(request: ExportLogsServiceRequest, repeated: Sequence[tuple[str, Any]] = ()) -> None:
    """Make every attribute list of a one-record request repeat a key, the last value being the one
    to store: `service.name` ("corpus") in the resource, `scope.k` in the scope, and in the record
    `lab.node.id` (a column is read from it), then the `repeated` pairs."""
    resource_logs = request.resource_logs[0]
    resource_logs.resource.attributes.append(kv("service.name", "corpus"))
    scope_logs = resource_logs.scope_logs[0]
    scope_logs.scope.attributes.extend([kv("scope.k", "first"), kv("scope.k", "last")])
    record = scope_logs.log_records[0]
    stale = next(a.value.string_value for a in record.attributes if a.key == "lab.node.id")
    record.attributes.append(kv("lab.node.id", stale.removeprefix("stale-")))
    record.attributes.extend(kv(key, value) for key, value in repeated)


def corpus_requests() -> list[ExportLogsServiceRequest]:
    requests = [
        logs_request(
            [
                log_record(
                    item["body"],
                    {**item["attributes"], "lab.node.id": f"stale-node-{i}"},
                    time_ns=1_750_000_000_000_000_000 + i * 1000,
                    severity=1 + i,
                    trace_id=ids(item, i)[0],
                    span_id=ids(item, i)[1],
                )
            ],
            resource={"service.name": "stale", "lab.node.id": "resource-node", "depth": {"x": [1]}},
        )
        for i, item in enumerate(CORPUS)
    ]
    for request, item in zip(requests, CORPUS, strict=True):
        repeat_keys(request, item.get("repeated", []))
    return requests


def payloads(requests: Sequence[ExportLogsServiceRequest]) -> list[Payload]:
    return [Payload(LOGS, r.SerializeToString(), count_records(LOGS, r.SerializeToString())) for r in requests]


def fresh_exporter(chdb_path: Any) -> ClickHouseExporter:
    store = make_storage(chdb_path)
    migrations.migrate(store)
    return ClickHouseExporter("clickhouse", ClickHouseExporterConfig(), store)


def test_fast_and_exact_paths_store_identical_rows(chdb_path: Any) -> None:
    requests = corpus_requests()
    # One store gets the whole corpus as one batch: a list value fails the fast path, so every
    # request takes the exact path. The other gets each request alone (every request here holds
    # a list in its resource, so each takes the exact path on its own; the scalar corpus below
    # holds the fast path to the exact path).
    together, alone = fresh_exporter(chdb_path), fresh_exporter(chdb_path)
    assert together.store(payloads(requests), uuid.uuid4().hex) == [None] * len(requests)
    for payload in payloads(requests):
        assert alone.store([payload], uuid.uuid4().hex) == [None]
    rows_together, rows_alone = stored_logs(together.storage), stored_logs(alone.storage)
    assert len(rows_together) == len(CORPUS)
    assert rows_together == rows_alone
    for i, (row, request) in enumerate(zip(rows_alone, requests, strict=True)):
        resource_logs = request.resource_logs[0]
        record = resource_logs.scope_logs[0].log_records[0]
        assert row["Body"] == value_text(record.body)
        assert row["log_pairs"] == last_wins(record.attributes)  # each key once, its last value
        assert row["resource_pairs"] == last_wins(resource_logs.resource.attributes)
        assert row["scope_pairs"] == [("scope.k", "last")]
        assert row["ServiceName"] == row["service_attribute"] == "corpus"
        assert row["ResourceAttributes"]["depth"] == '{"x":[1]}'
        assert row["NodeId"] == f"node-{i}"  # the record's own last value, over the resource's
        assert (row["TraceId"], row["SpanId"]) == stored_ids(CORPUS[i], i)
    assert (rows_alone[0]["LogAttributes"]["s"], rows_alone[0]["LogAttributes"]["i"]) == ("y", "[7]")
    assert rows_alone[1]["LogAttributes"]["tags"] == "a scalar now"
    deep = rows_alone[4]["LogAttributes"]
    assert deep["matrix"] == "[[1,2],[3,4]]"
    assert deep["tree"] == '{"a":{"b":{"c":"d"}}}'
    assert rows_alone[1]["LogAttributes"]["mixed"] == '[1,"two",3,false,"AQ=="]'
    assert rows_alone[6]["LogAttributes"]["nan"] == "nan"


SCALAR_CORPUS: list[dict[str, Any]] = [
    {
        "body": "plain",
        "attributes": {"s": "x", "i": 7, "d": 2.5, "b": True, "raw": b"\x00\xff"},
        "repeated": [("s", "y"), ("i", 8), ("s", "z")],  # three times, and as another type
    },
    {"body": 42, "attributes": {"min": -(2**63), "max": 2**63 - 1, "zero": 0, "no": False}},
    {"body": 1e21, "attributes": {"e20": 1e20, "small": 1e-7, "tiny": 5e-324, "negzero": -0.0, "third": 1 / 3}},
    {"body": float("nan"), "attributes": {"inf": float("inf"), "ninf": float("-inf"), "huge": 1.7976931348623157e308}},
    {"body": b"\x01\x02\x03", "attributes": {"empty": "", "empty_bytes": b"", "zero_double": 0.0}},
    {"body": "unicode ✓ 😀 \u2028", "attributes": {"ключ": "значение", "quote": 'a"b\\c/d', "nl": "a\nb"}},
    {"body": True, "attributes": {"unset": None}},
    {"body": None, "attributes": {}},
    {"body": "zero ids", "attributes": {"n": 1}, "ids": ZERO_IDS},
]


def scalar_corpus_requests() -> list[ExportLogsServiceRequest]:
    requests = [
        logs_request(
            [
                log_record(
                    item["body"],
                    {**item["attributes"], "lab.node.id": f"stale-node-{i}"},
                    time_ns=1_750_000_000_000_000_000 + i * 1000,
                    severity=1 + i,
                    trace_id=ids(item, i)[0],
                    span_id=ids(item, i)[1],
                )
            ],
            resource={"service.name": "stale", "lab.node.id": "resource-node", "n": i, "ok": True},
        )
        for i, item in enumerate(SCALAR_CORPUS)
    ]
    for request, item in zip(requests, SCALAR_CORPUS, strict=True):
        repeat_keys(request, item.get("repeated", []))
    return requests


def test_scalar_records_store_identically_on_the_fast_and_exact_paths(chdb_path: Any) -> None:
    requests = scalar_corpus_requests()
    fast, exact = fresh_exporter(chdb_path), fresh_exporter(chdb_path)
    before = stored_by("fast")
    for payload in payloads(requests):
        assert fast.store([payload], uuid.uuid4().hex) == [None]
    assert stored_by("fast") - before == len(requests)  # every scalar request took the fast path
    # One list value in a batch sends the whole batch to the exact path.
    with_list = logs_request([log_record("holds a list", {"tags": ["a", 1]})], resource={"service.name": "other"})
    before_fast, before_exact = stored_by("fast"), stored_by("exact")
    assert exact.store(payloads([*requests, with_list]), uuid.uuid4().hex) == [None] * (len(requests) + 1)
    assert (stored_by("fast") - before_fast, stored_by("exact") - before_exact) == (0, len(requests) + 1)
    rows_fast = stored_logs(fast.storage)
    rows_exact = [row for row in stored_logs(exact.storage) if row["ServiceName"] == "corpus"]
    assert len(rows_fast) == len(SCALAR_CORPUS)
    assert rows_fast == rows_exact
    for i, (row, request) in enumerate(zip(rows_fast, requests, strict=True)):
        resource_logs = request.resource_logs[0]
        record = resource_logs.scope_logs[0].log_records[0]
        assert row["Body"] == value_text(record.body)
        assert row["log_pairs"] == last_wins(record.attributes)
        assert row["resource_pairs"] == last_wins(resource_logs.resource.attributes)
        assert row["scope_pairs"] == [("scope.k", "last")]
        assert (row["ServiceName"], row["service_attribute"], row["NodeId"]) == ("corpus", "corpus", f"node-{i}")
        assert (row["TraceId"], row["SpanId"]) == stored_ids(SCALAR_CORPUS[i], i)
    assert (rows_fast[0]["LogAttributes"]["s"], rows_fast[0]["LogAttributes"]["i"]) == ("z", "8")
    assert rows_fast[3]["Body"] == "nan"
    assert rows_fast[2]["LogAttributes"]["negzero"] == "-0"
    assert rows_fast[4]["Body"] == "AQID"


def test_the_api_reads_and_filters_the_last_value_of_a_repeated_key(storage: Storage) -> None:
    from fastapi.testclient import TestClient

    from labtel.query_api.app import create_app

    request = logs_request(
        [log_record("repeated", {"k": "first", "lab.node.id": "stale-node-1"})], resource={"service.name": "stale"}
    )
    repeat_keys(request, [("k", "last")])
    storage.insert_otlp("logs", request.SerializeToString(), uuid.uuid4().hex)
    client = TestClient(create_app(storage))
    [event] = client.get("/events", params={"service": "corpus"}).json()["events"]
    assert (event["service_name"], event["resource"]["service.name"]) == ("corpus", "corpus")
    assert (event["attributes"]["k"], event["attributes"]["lab.node.id"], event["node_id"]) == (
        "last",
        "node-1",
        "node-1",
    )
    assert event["scope"]["attributes"] == {"scope.k": "last"}
    for params in ({"resource.service.name": "corpus"}, {"attr.k": "last"}, {"node": "node-1"}):
        assert [e["body"] for e in client.get("/events", params=params).json()["events"]] == ["repeated"], params
    for params in ({"service": "stale"}, {"resource.service.name": "stale"}, {"attr.k": "first"}):
        assert client.get("/events", params=params).json()["events"] == [], params


def test_invalid_requests_in_a_batch_are_rejected_and_the_rest_stored(chdb_path: Any) -> None:
    exporter = fresh_exporter(chdb_path)
    good = logs_request([log_record("good one")])
    bad_trace = logs_request([log_record("bad trace id", trace_id=b"\x01" * 5)])
    bad_severity = logs_request([log_record("loud", severity=99)])
    marker = "ZZZZZZZZ"
    bad_utf8 = logs_request([log_record(marker)]).SerializeToString().replace(marker.encode(), b"\xff\xfe\xff\xfe" * 2)
    batch = [*payloads([good, bad_trace, bad_severity]), Payload(LOGS, bad_utf8, 1), *payloads([good])]
    verdicts = exporter.store(batch, uuid.uuid4().hex)
    assert verdicts[0] is None
    assert verdicts[4] is None
    assert verdicts[1] == "resource_logs[0].scope_logs[0].log_records[0].trace_id: must be 0 or 16 bytes, got 5"
    assert verdicts[2] == "resource_logs[0].scope_logs[0].log_records[0].severity_number: 99 is outside 0..24"
    assert verdicts[3] is not None
    assert "ExportLogsServiceRequest" in verdicts[3]
    assert [r["Body"] for r in stored_logs(exporter.storage)] == ["good one", "good one"]


def test_a_field_of_the_wrong_wire_type_is_dropped_not_the_batch(chdb_path: Any) -> None:
    exporter = fresh_exporter(chdb_path)
    odd = wrong_wire_type_request("body sent twice")
    parsed = ExportLogsServiceRequest.FromString(odd)  # a valid request to protobuf readers
    assert parsed.resource_logs[0].scope_logs[0].log_records[0].body.string_value == "body sent twice"
    good = [logs_request([log_record(f"victim {i}")]) for i in range(3)]
    batch = [*payloads(good[:2]), Payload(LOGS, odd, 1), *payloads(good[2:])]
    before = {outcome: inserts(outcome) for outcome in ("ok", "failed", "refused")}
    assert exporter.store(batch, uuid.uuid4().hex) == [None] * 4
    # Refused by the fast path, stored by the exact path: not a storage failure.
    assert {outcome: inserts(outcome) - n for outcome, n in before.items()} == {"ok": 1, "failed": 0, "refused": 1}
    bodies = {r["ServiceName"]: [] for r in stored_logs(exporter.storage)}
    for row in stored_logs(exporter.storage):
        bodies[row["ServiceName"]].append(row["Body"])
    # The misread repetition is dropped, as OTLP receivers drop fields they do not know; the
    # body as protobuf reads it is kept.
    assert bodies["odd"] == ["body sent twice"]
    assert sorted(b for service, rows in bodies.items() if service != "odd" for b in rows) == [
        "victim 0",
        "victim 1",
        "victim 2",
    ]


def test_a_request_storage_refuses_costs_only_its_caller(chdb_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Should the exact path pass a request that ClickHouse still refuses, the others of its
    batch are stored and only that caller is told, instead of the batch being given up."""
    from labtel.collector.exporters import clickhouse

    def triage_missing_a_case(signal: Any, data: bytes, limits: Any) -> Any:
        result = triage(signal, data, limits)
        if data == odd and result.data is not None:
            return type(result)(data, None, result.records)  # the request as sent, not normalized
        return result

    odd = wrong_wire_type_request("body sent twice")
    monkeypatch.setattr(clickhouse, "triage", triage_missing_a_case)
    exporter = fresh_exporter(chdb_path)
    good = [logs_request([log_record(f"victim {i}")]) for i in range(3)]
    batch_id = uuid.uuid4().hex
    verdicts = exporter.store([*payloads(good[:2]), Payload(LOGS, odd, 1), *payloads(good[2:])], batch_id)
    assert [verdicts[0], verdicts[1], verdicts[3]] == [None, None, None]
    assert str(verdicts[2]).startswith("storage refuses this request: ")
    assert sorted(r["Body"] for r in stored_logs(exporter.storage)) == ["victim 0", "victim 1", "victim 2"]
    assert exporter.storage.batch_rows("logs", batch_id) == 3  # under the batch's id, as a replay looks for them


def spans_request(
    name: str,
    attributes: dict[str, Any],
    event: dict[str, Any],
    link: dict[str, Any],
    *,
    repeat: bool = False,
    trace_id: bytes = b"\x01" * 16,
    span_id: bytes = b"\x02" * 8,
    parent_span_id: bytes = b"",
    link_ids: tuple[bytes, bytes] = (b"\x03" * 16, b"\x04" * 8),
) -> bytes:
    """A one-span request; with `repeat`, each attribute list (resource, span, event, link) holds
    each of its keys twice, first with the value "stale"."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    def key_values(items: dict[str, Any]) -> list[KeyValue]:
        stale = [kv(k, "stale") for k in items] if repeat else []
        return [*stale, *(kv(k, v) for k, v in items.items())]

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(key_values({"service.name": "spans", "lab.name": "chem"}))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name, scope_spans.scope.version = "tests", "1.0"
    scope_spans.scope.attributes.extend([kv("scope.tags", ["not", "stored"])])  # otel_traces has no scope attributes
    span = scope_spans.spans.add()
    span.trace_id, span.span_id, span.parent_span_id = trace_id, span_id, parent_span_id
    span.name, span.kind = name, 2
    span.start_time_unix_nano, span.end_time_unix_nano = 1_750_000_000_000_000_000, 1_750_000_000_500_000_000
    span.attributes.extend(key_values(attributes))
    span_event = span.events.add(time_unix_nano=1_750_000_000_100_000_000, name="step")
    span_event.attributes.extend(key_values(event))
    span_link = span.links.add(trace_id=link_ids[0], span_id=link_ids[1], trace_state="k=v")
    span_link.attributes.extend(key_values(link))
    span.status.code, span.status.message = 2, "failed ✗"
    return request.SerializeToString()


def stored_spans(storage: Storage) -> list[dict[str, Any]]:
    return storage.rows(
        "SELECT SpanName, TraceId, SpanId, ParentSpanId, SpanKind, ServiceName, ScopeName, ScopeVersion, ResourceAttributes, "
        "SpanAttributes, Duration, StatusCode, StatusMessage, toString(`Events.Timestamp`) AS event_times, "
        "`Events.Name` AS event_names, `Events.Attributes` AS event_attributes, `Links.TraceId` AS link_traces, "
        "`Links.SpanId` AS link_spans, `Links.TraceState` AS link_states, `Links.Attributes` AS link_attributes, "
        f"{pairs('ResourceAttributes')} AS resource_pairs, {pairs('SpanAttributes')} AS span_pairs, "
        f"arrayMap(m -> {pairs('m')}, `Events.Attributes`) AS event_pairs, "
        f"arrayMap(m -> {pairs('m')}, `Links.Attributes`) AS link_pairs "
        f"FROM {storage.names.traces} ORDER BY SpanName"
    )


def test_spans_store_identically_on_the_fast_and_exact_paths(chdb_path: Any) -> None:
    # Every attribute list repeats each key (first as "stale"): the last value is stored, once.
    span = {"n": 1, "d": 0.5, "ok": True, "raw": b"\xff"}
    scalar = spans_request("scalar", span, {"e": "v", "i": -3}, {"l": 2.0}, repeat=True)
    listed = spans_request("listed", {"s": "x"}, {"wells": ["A1", "A2"]}, {"m": {"k": 1}}, repeat=True)
    fast, exact = fresh_exporter(chdb_path), fresh_exporter(chdb_path)
    with pytest.raises(Exception, match=EXACT_PATH_ERROR):
        fast.storage.insert_otlp("traces", listed, uuid.uuid4().hex)
    fast.storage.insert_otlp("traces", scalar, uuid.uuid4().hex)  # the fast path takes scalar spans
    assert exact.store([Payload(TRACES, scalar, 1), Payload(TRACES, listed, 1)], uuid.uuid4().hex) == [None, None]
    [fast_row] = stored_spans(fast.storage)
    listed_row, scalar_row = stored_spans(exact.storage)
    assert fast_row == scalar_row
    assert scalar_row["SpanAttributes"] == {"n": "1", "d": "0.5", "ok": "true", "raw": "/w=="}
    assert scalar_row["event_attributes"] == [{"e": "v", "i": "-3"}]
    assert scalar_row["link_attributes"] == [{"l": "2"}]
    assert scalar_row["ResourceAttributes"] == {"service.name": "spans", "lab.name": "chem"}
    assert (scalar_row["ServiceName"], scalar_row["ScopeName"], scalar_row["ScopeVersion"]) == ("spans", "tests", "1.0")
    assert (scalar_row["event_names"], scalar_row["link_states"]) == (["step"], ["k=v"])
    assert (scalar_row["link_traces"], scalar_row["link_spans"]) == (["03" * 16], ["04" * 8])
    assert (scalar_row["TraceId"], scalar_row["SpanId"], scalar_row["SpanKind"]) == (
        "01" * 16,
        "02" * 8,
        "SPAN_KIND_SERVER",
    )
    assert (scalar_row["Duration"], scalar_row["StatusCode"], scalar_row["StatusMessage"]) == (
        500_000_000,
        "STATUS_CODE_ERROR",
        "failed ✗",
    )
    assert listed_row["event_attributes"] == [{"wells": '["A1","A2"]'}]
    assert listed_row["link_attributes"] == [{"m": '{"k":1}'}]
    for row in (scalar_row, listed_row):  # the Maps themselves hold each key once
        for column in ("ResourceAttributes", "SpanAttributes"):
            assert row[column.removesuffix("Attributes").lower() + "_pairs"] == sorted(row[column].items())
        assert row["event_pairs"] == [sorted(m.items()) for m in row["event_attributes"]]
        assert row["link_pairs"] == [sorted(m.items()) for m in row["link_attributes"]]


def test_traces_with_bad_ids_are_rejected(chdb_path: Any) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 7, "short span id"
    result = triage(TRACES, request.SerializeToString())
    assert result.error == "resource_spans[0].scope_spans[0].spans[0].span_id: must be 8 bytes, got 7"
    exporter = fresh_exporter(chdb_path)
    assert exporter.store([Payload(TRACES, request.SerializeToString(), 1)], "b1") == [result.error]


def test_spans_with_all_zero_ids_are_refused_by_name_and_zero_parents_stored_empty(chdb_path: Any) -> None:
    # OTLP: a trace id or span id of all zero bytes is invalid. A span must have both; a parent
    # span id or a link's ids of zeros are "not set", stored as '' (as the contrib exporter does).
    where = "resource_spans[0].scope_spans[0].spans[0]"
    zero_trace = spans_request("zero trace", {}, {}, {}, trace_id=bytes(16))
    zero_span = spans_request("zero span", {}, {}, {}, span_id=bytes(8))
    assert triage(TRACES, zero_trace).error == f"{where}.trace_id: all zero bytes, an invalid trace id (OTLP)"
    assert triage(TRACES, zero_span).error == f"{where}.span_id: all zero bytes, an invalid span id (OTLP)"
    root = spans_request("root", {"n": 1}, {}, {}, parent_span_id=bytes(8), link_ids=ZERO_IDS)
    child = spans_request("child", {"n": 2}, {}, {}, parent_span_id=b"\x05" * 8)
    listed = spans_request("listed", {"s": ["x"]}, {}, {}, parent_span_id=bytes(8), link_ids=ZERO_IDS)
    fast, exact = fresh_exporter(chdb_path), fresh_exporter(chdb_path)
    for bad in (zero_trace, zero_span):  # the fast path refuses them too
        with pytest.raises(Exception, match=EXACT_PATH_ERROR):
            fast.storage.insert_otlp("traces", bad, uuid.uuid4().hex)
    for good in (root, child):
        fast.storage.insert_otlp("traces", good, uuid.uuid4().hex)
    batch = [Payload(TRACES, data, 1) for data in (root, zero_trace, child, zero_span, listed)]
    assert exact.store(batch, uuid.uuid4().hex) == [
        None,
        triage(TRACES, zero_trace).error,
        None,
        triage(TRACES, zero_span).error,
        None,
    ]
    assert stored_spans(fast.storage) == [row for row in stored_spans(exact.storage) if row["SpanName"] != "listed"]
    by_name = {row["SpanName"]: row for row in stored_spans(exact.storage)}
    assert set(by_name) == {"root", "child", "listed"}
    for name in ("root", "listed"):
        row = by_name[name]
        assert (row["TraceId"], row["SpanId"], row["ParentSpanId"]) == ("01" * 16, "02" * 8, "")
        assert (row["link_traces"], row["link_spans"]) == ([""], [""])
    assert by_name["child"]["ParentSpanId"] == "05" * 8


def test_rows_remember_their_batch(storage: Storage) -> None:
    data = logs_request([log_record("one"), log_record("two")]).SerializeToString()
    storage.insert_otlp("logs", data, "batch-1")
    storage.insert_otlp("logs", data, "batch-2")
    assert storage.batch_rows("logs", "batch-1") == 2
    assert storage.batch_rows("logs", "batch-3") == 0
    storage.delete_batch("logs", "batch-1")
    assert storage.batch_rows("logs", "batch-1") == 0
    assert storage.command(f"SELECT count() FROM {storage.names.logs}") == 2


def test_storage_failure_is_unavailable_not_rejection(chdb_path: Any) -> None:
    exporter = fresh_exporter(chdb_path)
    exporter.storage.command(f"DROP TABLE {exporter.storage.names.ingest_table('logs')}")
    with pytest.raises(ExportUnavailable, match="storage refuses inserts"):
        exporter.store(payloads([logs_request([log_record("kept by the client")])]), "b2")


def test_severity_text_is_filled_from_the_number(storage: Storage) -> None:
    records = [log_record(f"sev {n}", severity=n) for n in (0, 1, 6, 9, 13, 17, 24)]
    for record in records:
        record.severity_text = ""
    storage.insert_otlp("logs", logs_request(records).SerializeToString(), uuid.uuid4().hex)
    texts = {r["Body"]: r["SeverityText"] for r in stored_logs(storage)}
    assert texts == {
        "sev 0": "",
        "sev 1": "TRACE",
        "sev 6": "DEBUG2",
        "sev 9": "INFO",
        "sev 13": "WARN",
        "sev 17": "ERROR",
        "sev 24": "FATAL4",
    }


def test_zero_timestamps_fall_back_to_observed_then_now(storage: Storage) -> None:
    observed_only = log_record("observed", time_ns=0)
    observed_only.observed_time_unix_nano = 1_760_000_000_000_000_000
    neither = log_record("neither", time_ns=0)
    storage.insert_otlp("logs", logs_request([observed_only, neither]).SerializeToString(), uuid.uuid4().hex)
    rows = {
        r["Body"]: r
        for r in storage.rows(
            f"SELECT Body, toUnixTimestamp64Nano(Timestamp) AS ts, toUnixTimestamp64Nano(ObservedTimestamp) AS obs, "
            f"toUnixTimestamp64Nano(now64(9)) AS now FROM {storage.names.logs}"
        )
    }
    assert rows["observed"]["ts"] == rows["observed"]["obs"] == 1_760_000_000_000_000_000
    assert rows["neither"]["ts"] == rows["neither"]["obs"]
    assert abs(rows["neither"]["now"] - rows["neither"]["ts"]) < 600 * 10**9


def _with_schema_url(signal: str, where: str, url: str) -> bytes:
    """A one-record request of `signal` whose resource or scope (`where`) has schema_url `url`."""
    from tests.metrics_requests import metrics_request

    if signal == "logs":
        request: Any = logs_request([log_record("schema url")])
        resource, scope = request.resource_logs[0], request.resource_logs[0].scope_logs[0]
    elif signal == "traces":
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        request = ExportTraceServiceRequest.FromString(spans_request("schema url", {}, {}, {}))
        resource, scope = request.resource_spans[0], request.resource_spans[0].scope_spans[0]
    else:
        request = metrics_request("schema-url")
        resource, scope = request.resource_metrics[0], request.resource_metrics[0].scope_metrics[0]
    (resource if where == "resource" else scope).schema_url = url
    data: bytes = request.SerializeToString()
    return data


def test_invalid_utf8_in_a_schema_url_is_refused_on_both_paths(chdb_path: Any) -> None:
    from labtel.collector.otlp.signals import SIGNALS

    exporter = fresh_exporter(chdb_path)
    marker = "https://example.org/ZZZZZZZZ"
    for signal in ("logs", "traces", "metrics"):
        for where in ("resource", "scope"):
            valid = _with_schema_url(signal, where, marker)
            data = valid.replace(b"ZZZZZZZZ", b"\xff\xfe\xff\xfe" * 2)
            with pytest.raises(Exception, match=EXACT_PATH_ERROR):  # the fast path sends it to triage
                exporter.storage.insert_otlp(signal, data, uuid.uuid4().hex)
            payload = Payload(SIGNALS[signal], data, count_records(SIGNALS[signal], data))
            [verdict] = exporter.store([payload], uuid.uuid4().hex)
            assert verdict is not None, (signal, where)  # and the exact path rejects it: a 400
            valid_payload = Payload(SIGNALS[signal], valid, payload.records)
            assert exporter.store([valid_payload], uuid.uuid4().hex) == [None]
    assert exporter.storage.rows(f"SELECT count() AS n FROM {exporter.storage.names.logs}") == [{"n": 2}]


def test_times_after_2106_are_refused_by_the_fast_path(storage: Storage) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tests.metrics_requests import metrics_request

    last = logs_request([log_record("the last storable second", time_ns=MAX_TIME_NANOS)])
    storage.insert_otlp("logs", last.SerializeToString(), uuid.uuid4().hex)
    assert storage.rows(
        "SELECT toUnixTimestamp64Nano(Timestamp) AS ns, toString(TimestampTime) AS seconds, "
        f"toString(toDate(Timestamp)) AS day FROM {storage.names.logs}"
    ) == [{"ns": MAX_TIME_NANOS, "seconds": "2106-02-07 06:28:15", "day": "2106-02-07"}]
    later = MAX_TIME_NANOS + 10**9
    span = ExportTraceServiceRequest.FromString(spans_request("ends late", {}, {}, {}))
    span.resource_spans[0].scope_spans[0].spans[0].end_time_unix_nano = later
    requests = {
        "logs": logs_request([log_record("too late", time_ns=later)]).SerializeToString(),
        "traces": span.SerializeToString(),
        "metrics": metrics_request("too-late", at_ns=later).SerializeToString(),
    }
    for signal, data in requests.items():
        with pytest.raises(Exception, match=EXACT_PATH_ERROR):
            storage.insert_otlp(signal, data, uuid.uuid4().hex)
    assert MAX_TIME_TEXT == "2106-02-07T06:28:15Z"
