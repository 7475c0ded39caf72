"""The fast path (ClickHouse parses OTLP) and the exact path (Python normalizes) store the same thing.

Stored values are text. These tests hold the SQL rendering (labtel.collector.storage.schema) and
the Python rendering (labtel.collector.otlp.values) to each other on random values, and check that
a record stores identically whichever path it took.
"""

from __future__ import annotations

import math
import struct
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from labtel.collector.component import ExportUnavailable, Payload
from labtel.collector.config import ClickHouseExporterConfig
from labtel.collector.exporters.clickhouse import ClickHouseExporter
from labtel.collector.otlp.exact import triage
from labtel.collector.otlp.framing import count_records
from labtel.collector.otlp.signals import LOGS, TRACES
from labtel.collector.otlp.values import format_double, json_string, value_text
from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage
from tests.conftest import make_storage
from tests.helpers import any_value, log_record, logs_request

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
scalars = st.one_of(
    text,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.binary(max_size=12),
)
one_level = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(text, scalars, max_size=4))
attributes = st.dictionaries(st.text(min_size=1, max_size=12), one_level, max_size=6)


def stored_logs(storage: Storage) -> list[dict[str, Any]]:
    return storage.rows(
        f"SELECT Body, LogAttributes, ResourceAttributes, ScopeAttributes, TraceId, SpanId, SeverityText, "
        f"SeverityNumber, toUnixTimestamp64Nano(Timestamp) AS ts, ScopeName, ServiceName, EventType, NodeId "
        f"FROM {storage.names.logs} ORDER BY ts, Body"
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(st.tuples(one_level, attributes), min_size=1, max_size=8))
def test_sql_and_python_render_every_value_identically(
    storage: Storage, records: list[tuple[Any, dict[str, Any]]]
) -> None:
    marker = uuid.uuid4().hex
    request = logs_request(
        [
            log_record(body, {**attrs, "marker": marker}, time_ns=1_700_000_000_000_000_000 + i)
            for i, (body, attrs) in enumerate(records)
        ]
    )
    storage.insert_otlp("logs", request.SerializeToString(), uuid.uuid4().hex)
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


CORPUS: list[dict[str, Any]] = [
    {"body": "plain", "attributes": {"s": "x", "i": 7, "d": 2.5, "b": True, "raw": b"\x00\xff"}},
    {"body": 42, "attributes": {"tags": ["imaging", "m31"], "mixed": [1, "two", 3.0, False, b"\x01"]}},
    {"body": ["list", "body"], "attributes": {"limits": {"min": -1.5, "max": 1e21, "name": "ra/dec"}}},
    {"body": {"kv": "body", "n": 1}, "attributes": {"empty_list": [], "empty_map": {}}},
    {"body": "deep", "attributes": {"matrix": [[1, 2], [3, 4]], "tree": {"a": {"b": {"c": "d"}}}}},
    {"body": [{"step": 1, "wells": ["A1", "A2"]}], "attributes": {"ok": False}},
    {
        "body": "unicode ✓ 😀 \u2028",
        "attributes": {"ключ": "значение", "nan": float("nan"), "inf": float("-inf")},
    },
    {"body": "", "attributes": {}},
]


def corpus_requests() -> list[ExportLogsServiceRequest]:
    return [
        logs_request(
            [
                log_record(
                    item["body"],
                    {**item["attributes"], "lab.node.id": f"node-{i}"},
                    time_ns=1_750_000_000_000_000_000 + i * 1000,
                    severity=1 + i,
                    trace_id=bytes([i + 1]) * 16,
                    span_id=bytes([i + 1]) * 8,
                )
            ],
            resource={"service.name": "corpus", "lab.node.id": "resource-node", "depth": {"x": [1]}},
        )
        for i, item in enumerate(CORPUS)
    ]


def payloads(requests: Sequence[ExportLogsServiceRequest]) -> list[Payload]:
    return [Payload(LOGS, r.SerializeToString(), count_records(LOGS, r.SerializeToString())) for r in requests]


def fresh_exporter(chdb_path: Any) -> ClickHouseExporter:
    store = make_storage(chdb_path)
    migrations.migrate(store)
    return ClickHouseExporter("clickhouse", ClickHouseExporterConfig(), store)


def test_fast_and_exact_paths_store_identical_rows(chdb_path: Any) -> None:
    requests = corpus_requests()
    # One store gets the whole corpus as one batch: a deep value fails the fast path, so every
    # request takes the exact path. The other gets each request alone: scalar and one-level
    # values take the fast path, deep ones the exact path.
    together, alone = fresh_exporter(chdb_path), fresh_exporter(chdb_path)
    assert together.store(payloads(requests), uuid.uuid4().hex) == [None] * len(requests)
    for payload in payloads(requests):
        assert alone.store([payload], uuid.uuid4().hex) == [None]
    rows_together, rows_alone = stored_logs(together.storage), stored_logs(alone.storage)
    assert len(rows_together) == len(CORPUS)
    assert rows_together == rows_alone
    for row, request in zip(rows_alone, requests, strict=True):
        record = request.resource_logs[0].scope_logs[0].log_records[0]
        assert row["Body"] == value_text(record.body)
        assert row["LogAttributes"] == {kv.key: value_text(kv.value) for kv in record.attributes}
        assert row["ResourceAttributes"]["depth"] == '{"x":[1]}'
        assert row["NodeId"].startswith("node-")  # the record's own attribute wins over the resource's
    deep = rows_alone[4]["LogAttributes"]
    assert deep["matrix"] == "[[1,2],[3,4]]"
    assert deep["tree"] == '{"a":{"b":{"c":"d"}}}'
    assert rows_alone[1]["LogAttributes"]["mixed"] == '[1,"two",3,false,"AQ=="]'
    assert rows_alone[6]["LogAttributes"]["nan"] == "nan"


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


def test_traces_with_bad_ids_are_rejected(chdb_path: Any) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 7, "short span id"
    result = triage(TRACES, request.SerializeToString())
    assert result.error == "resource_spans[0].scope_spans[0].spans[0].span_id: must be 8 bytes, got 7"
    exporter = fresh_exporter(chdb_path)
    assert exporter.store([Payload(TRACES, request.SerializeToString(), 1)], "b1") == [result.error]


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
