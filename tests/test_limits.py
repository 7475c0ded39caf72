"""Record limits: configured on the clickhouse exporter, checked by the logs ingest view (fast
path) and named by the exact path; records over a limit are rejected, the rest stored."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from labtel.collector.component import PartialSuccess, Payload
from labtel.collector.config import ClickHouseExporterConfig, QueryApiConfig, RecordLimitsConfig, load_config
from labtel.collector.exporters.clickhouse import ClickHouseExporter
from labtel.collector.otlp.exact import triage
from labtel.collector.otlp.framing import count_records
from labtel.collector.otlp.limits import DEFAULT_LIMITS, RecordLimits
from labtel.collector.otlp.signals import LOGS
from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage, parse_endpoint
from labtel.collector.storage.schema import SchemaNames, ingest_fingerprint
from tests.helpers import LabtelServer, log_record, logs_request
from tests.test_ingest_paths import stored_by

SMALL = RecordLimits(
    max_attributes_per_record=3, max_attribute_value_length=10, max_body_length=20, max_nesting_depth=2
)


def payload(*records: object) -> Payload:
    data = logs_request(list(records)).SerializeToString()  # type: ignore[arg-type]
    return Payload(LOGS, data, count_records(LOGS, data))


@pytest.mark.parametrize(
    ("body", "attributes", "problem"),
    [
        ("b" * 21, {}, "body: 21 bytes exceed max_body_length (20)"),
        ("é" * 11, {}, "body: 22 bytes exceed max_body_length (20)"),  # bytes of UTF-8, not characters
        ("ok", {"a": 1, "b": 2, "c": 3, "d": 4}, "4 attributes exceed max_attributes_per_record (3)"),
        ("ok", {"k": "v" * 11}, "attribute 'k': 11 bytes exceed max_attribute_value_length (10)"),
        ("ok", {"k": b"\x00" * 11}, "attribute 'k': 11 bytes exceed max_attribute_value_length (10)"),
        ("ok", {"k": ["ab", "cd"]}, "attribute 'k': 11 bytes exceed max_attribute_value_length (10)"),  # as JSON
        ("ok", {"k": {"a": {"b": {"c": 1}}}}, "attribute 'k': 3 levels of nesting exceed max_nesting_depth (2)"),
        (["x" * 17], {}, "body: 21 bytes exceed max_body_length (20)"),
    ],
)
def test_exact_path_names_the_limit(body: object, attributes: dict[str, object], problem: str) -> None:
    data = logs_request([log_record("fine"), log_record(body, attributes)]).SerializeToString()
    result = triage(LOGS, data, SMALL)
    assert result.error is None
    assert (result.records, result.rejected) == (1, 1)
    assert result.rejection == f"resource_logs[0].scope_logs[0].log_records[1]: {problem}"
    alone = triage(LOGS, logs_request([log_record(body, attributes)]).SerializeToString(), SMALL)
    assert alone.data is None
    assert alone.error == f"resource_logs[0].scope_logs[0].log_records[0]: {problem}"


def test_at_the_limits_is_accepted() -> None:
    record = log_record("b" * 20, {"a": "v" * 10, "b": {"c": [1]}, "c": b"\x00" * 10})
    result = triage(LOGS, logs_request([record]).SerializeToString(), SMALL)
    assert (result.error, result.records, result.rejected) == (None, 1, 0)


def test_limits_are_part_of_the_logs_view_name() -> None:
    assert ingest_fingerprint("logs", SMALL) != ingest_fingerprint("logs", DEFAULT_LIMITS)
    assert ingest_fingerprint("logs") == ingest_fingerprint("logs", RecordLimits())
    assert SchemaNames(limits=SMALL).ingest_name("traces") == SchemaNames().ingest_name("traces")


def test_config_limits_reach_the_storage(tmp_path: Path) -> None:
    config = tmp_path / "otel-config.yaml"
    config.write_text(
        "receivers: {otlp: {protocols: {grpc: {endpoint: 'localhost:0'}}}}\n"
        "exporters: {clickhouse: {limits: {max_attributes_per_record: 3, max_body_length: 20}}}\n"
        "service: {pipelines: {logs: {receivers: [otlp], exporters: [clickhouse]}}}\n"
    )
    exporter_config = load_config(config).exporters["clickhouse"]
    assert isinstance(exporter_config, ClickHouseExporterConfig)
    limits = Storage.from_config(exporter_config, tmp_path).names.limits
    assert (limits.max_attributes_per_record, limits.max_body_length) == (3, 20)
    assert limits.max_attribute_value_length == DEFAULT_LIMITS.max_attribute_value_length
    with pytest.raises(ValueError, match="max_attributes_per_record"):
        RecordLimitsConfig(max_attributes_per_record=0)


def test_batches_over_a_limit_store_the_rest(chdb_path: Path) -> None:
    """The fast path refuses a batch holding a record over a limit; the exact path stores the
    rest and reports a partial success, or rejects a request with nothing left."""
    store = Storage(parse_endpoint(f"chdb://{chdb_path}"), SchemaNames(f"t_{uuid.uuid4().hex[:12]}", limits=SMALL))
    migrations.migrate(store)
    exporter = ClickHouseExporter("clickhouse", ClickHouseExporterConfig(), store)
    try:
        batch = [
            payload(log_record("first")),
            payload(log_record("kept"), log_record("too many", {"a": 1, "b": 2, "c": 3, "d": 4}), log_record("kept 2")),
            payload(log_record("long value", {"k": "v" * 11})),
            payload(log_record("scalar attrs", {"a": 1, "b": 2.5, "c": True})),
        ]
        verdicts = exporter.store(batch, uuid.uuid4().hex)
        assert verdicts[0] is None
        assert verdicts[1] == PartialSuccess(
            1, "resource_logs[0].scope_logs[0].log_records[1]: 4 attributes exceed max_attributes_per_record (3)"
        )
        assert verdicts[2] == (
            "resource_logs[0].scope_logs[0].log_records[0]: attribute 'k': 11 bytes exceed "
            "max_attribute_value_length (10)"
        )
        assert verdicts[3] is None
        bodies = store.rows(f"SELECT Body FROM {store.names.logs} ORDER BY Body")
        assert [r["Body"] for r in bodies] == ["first", "kept", "kept 2", "scalar attrs"]
        # Within the limits, the fast path takes the batch as it is.
        fast = stored_by("fast")
        assert exporter.store([payload(log_record("b" * 20, {"k": "v" * 10}))], uuid.uuid4().hex) == [None]
        assert stored_by("fast") == fast + 1
        # A list value is measured as the JSON text stored for it, so what the exact path
        # accepts (normalized) passes the view's checks when it is inserted again.
        exact = stored_by("exact")
        within = payload(
            log_record("list", {"l": ["a", "b"], "m": ["c" * 6]}), log_record("too long", {"l": ["ab", "cd"]})
        )
        assert exporter.store([within], uuid.uuid4().hex) == [
            PartialSuccess(
                1,
                "resource_logs[0].scope_logs[0].log_records[1]: attribute 'l': 11 bytes exceed "
                "max_attribute_value_length (10)",
            )
        ]
        assert stored_by("exact") == exact + 1
        # Values longer together than one may be, each within: the fast path stores them.
        fast = stored_by("fast")
        two = payload(log_record("two", {"a": "v" * 8, "b": b"\x01" * 8}))
        assert exporter.store([two], uuid.uuid4().hex) == [None]
        assert stored_by("fast") == fast + 1
        stored = store.rows(f"SELECT LogAttributes FROM {store.names.logs} WHERE Body = 'list'")
        assert stored == [{"LogAttributes": {"l": '["a","b"]', "m": '["cccccc"]'}}]
        for bad in (log_record("b" * 21), log_record("x", {"k": b"\x00" * 11})):
            (verdict,) = exporter.store([payload(bad)], uuid.uuid4().hex)
            assert isinstance(verdict, str)
            assert "exceed max_" in verdict
    finally:
        store.command(f"DROP DATABASE IF EXISTS `{store.names.database}`")
        store.close()


def test_query_api_bodies_over_the_limit_are_a_413_naming_the_limit(server: LabtelServer) -> None:
    # A real uvicorn server: a body announced too large, and a chunked one that grows too large,
    # are both 413 naming the limit; the API keeps answering and a normal selector still works.
    import socket
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    import httpx

    limit = QueryApiConfig().max_request_body_size
    padding = orjson.dumps({"selector": {"body": "x" * (limit + 10)}})
    with httpx.Client(base_url=server.api, timeout=60) as client:
        announced = client.post("/events/query", content=padding, headers={"content-type": "application/json"})
        assert announced.status_code == 413
        assert "query_api.max_request_body_size" in announced.json()["detail"]

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(padding), 1 << 20):
                yield padding[start : start + (1 << 20)]

        streamed = client.post("/events/query", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert f"more than {limit} bytes" in streamed.json()["detail"]
        small = client.post("/events/query", json={"selector": {"service": "nobody"}, "limit": 5})
        assert small.status_code == 200, small.text
        assert small.json()["events"] == []
    # urllib sends the whole body before it reads the answer: the rest of the body is read and
    # thrown away, so it reads the 413 rather than a reset connection.
    request = urllib.request.Request(
        f"{server.api}/events/query", data=padding, headers={"content-type": "application/json"}, method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    assert "query_api.max_request_body_size" in refused.value.read().decode()
    # A client that waits for `100 Continue` is answered at once, without being asked for the body.
    address = urlsplit(server.api)
    with socket.create_connection((address.hostname, address.port), timeout=30) as conn:
        conn.sendall(
            f"POST /events/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(padding)}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        assert conn.recv(65536).startswith(b"HTTP/1.1 413 ")


def test_the_body_limit_is_configurable(storage: Storage) -> None:
    from fastapi.testclient import TestClient

    from labtel.query_api.app import create_app

    with TestClient(create_app(storage, QueryApiConfig(max_request_body_size=4096))) as client:
        refused = client.post("/sql", json={"sql": "SELECT 1 -- " + "y" * 5000})
        assert refused.status_code == 413
        assert "limit of 4096 bytes" in refused.json()["detail"]
        assert client.post("/sql", json={"sql": "SELECT 1 AS one"}).json()["data"] == [{"one": 1}]
