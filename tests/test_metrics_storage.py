"""Metrics storage: the five contrib tables, the migration and TTLs, the ingest views against the
exact path, exactly-once replays, configuration, OTLP/JSON ids and histogram quantiles."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from labtel.collector.component import Payload
from labtel.collector.config import ClickHouseExporterConfig, ConfigError, parse_config
from labtel.collector.exporters.clickhouse import ClickHouseExporter
from labtel.collector.otlp.exact import triage
from labtel.collector.otlp.framing import count_records
from labtel.collector.otlp.jsonfmt import json_to_protobuf
from labtel.collector.otlp.signals import METRICS
from labtel.collector.otlp.values import value_json
from labtel.collector.storage import migrations, schema
from labtel.collector.storage.client import Storage, StorageError
from labtel.collector.storage.schema import METRIC_TYPES, SchemaNames
from labtel.collector.wal import WriteAheadLog
from labtel.query_api.histogram_quantile import histogram_quantile
from tests.conftest import make_storage
from tests.helpers import kv
from tests.metrics_requests import NOW_NS, SPAN_ID, TRACE_ID, metrics_request

COMMON = {
    "ResourceAttributes": "Map(LowCardinality(String), String)",
    "ResourceSchemaUrl": "String",
    "ScopeName": "String",
    "ScopeVersion": "String",
    "ScopeAttributes": "Map(LowCardinality(String), String)",
    "ScopeDroppedAttrCount": "UInt32",
    "ScopeSchemaUrl": "String",
    "ServiceName": "LowCardinality(String)",
    "MetricDescription": "String",
    "MetricUnit": "String",
    "Attributes": "Map(LowCardinality(String), String)",
    "Flags": "UInt32",
    "IngestBatch": "String",
}


def exemplar_columns(time_type: str) -> dict[str, str]:
    return {
        "Exemplars.FilteredAttributes": "Array(Map(LowCardinality(String), String))",
        "Exemplars.TimeUnix": f"Array({time_type})",
        "Exemplars.Value": "Array(Float64)",
        "Exemplars.SpanId": "Array(String)",
        "Exemplars.TraceId": "Array(String)",
    }


def times(time_type: str, name_type: str) -> dict[str, str]:
    return {"StartTimeUnix": time_type, "TimeUnix": time_type, "MetricName": name_type}


DISTRIBUTION = {"Count": "UInt64", "Sum": "Float64"}
HISTOGRAM_EXTRA = {"Min": "Float64", "Max": "Float64", "AggregationTemporality": "Int32"}
CONTRIB_METRIC_COLUMNS: dict[str, dict[str, str]] = {
    "gauge": {
        **COMMON,
        **times("DateTime64(9)", "String"),
        "Value": "Float64",
        **exemplar_columns("DateTime64(9)"),
    },
    "sum": {
        **COMMON,
        **times("DateTime", "LowCardinality(String)"),
        "Value": "Float64",
        **exemplar_columns("DateTime"),
        "AggregationTemporality": "Int32",
        "IsMonotonic": "Bool",
    },
    "histogram": {
        **COMMON,
        **times("DateTime64(9)", "String"),
        **DISTRIBUTION,
        "BucketCounts": "Array(UInt64)",
        "ExplicitBounds": "Array(Float64)",
        **exemplar_columns("DateTime64(9)"),
        **HISTOGRAM_EXTRA,
    },
    "exponential_histogram": {
        **COMMON,
        **times("DateTime", "LowCardinality(String)"),
        **DISTRIBUTION,
        "Scale": "Int32",
        "ZeroCount": "UInt64",
        "PositiveOffset": "Int32",
        "PositiveBucketCounts": "Array(UInt64)",
        "NegativeOffset": "Int32",
        "NegativeBucketCounts": "Array(UInt64)",
        **exemplar_columns("DateTime"),
        **HISTOGRAM_EXTRA,
    },
    "summary": {
        **COMMON,
        **times("DateTime64(9)", "String"),
        **DISTRIBUTION,
        "ValueAtQuantiles.Quantile": "Array(Float64)",
        "ValueAtQuantiles.Value": "Array(Float64)",
    },
}


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[Storage]:
    """One migrated database for the module (tests keep apart by batch id and service)."""
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    yield storage
    storage.command(f"DROP DATABASE IF EXISTS `{storage.names.database}`")
    storage.close()


def rows(storage: Storage, kind: str, batch: str) -> list[dict[str, Any]]:
    return storage.rows(
        f"SELECT *, toUnixTimestamp64Nano(toDateTime64(TimeUnix, 9)) AS time_ns FROM {storage.names.metrics_table(kind)} "
        "WHERE IngestBatch = {b:String} ORDER BY MetricName, toString(Attributes)",
        parameters={"b": batch},
    )


def test_tables_have_the_contrib_exporter_columns(store: Storage) -> None:
    for kind, expected in CONTRIB_METRIC_COLUMNS.items():
        found = {
            row["name"]: row["type"]
            for row in store.rows(
                "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                parameters={"db": store.names.database, "t": f"otel_metrics_{kind}"},
            )
        }
        assert found == expected, kind
    sorting = store.command(
        "SELECT sorting_key FROM system.tables WHERE database = {db:String} AND name = 'otel_metrics_sum'",
        parameters={"db": store.names.database},
    )
    assert sorting == "ServiceName, MetricName, toStartOfHour(TimeUnix), cityHash64(Attributes), TimeUnix"


def test_the_migration_applies_once(chdb_path: Path) -> None:
    storage = make_storage(chdb_path)
    (metrics,) = [m for m in migrations.MIGRATIONS if "otel_metrics_gauge" in m.name]
    assert metrics.version == 3
    assert [m.version for m in migrations.migrate(storage).applied] == [m.version for m in migrations.MIGRATIONS]
    again = migrations.migrate(storage)
    assert (again.applied, again.current_version) == ([], migrations.latest_version())
    assert migrations.ingest_ready(storage) == []
    tables = storage.rows(
        "SELECT name FROM system.tables WHERE database = {db:String} AND name LIKE 'otel_metrics_%'",
        parameters={"db": storage.names.database},
    )
    assert sorted(r["name"] for r in tables) == sorted(f"otel_metrics_{kind}" for kind in METRIC_TYPES)
    storage.command(f"DROP DATABASE `{storage.names.database}`")


def test_ttl_covers_the_metrics_tables(chdb_path: Path) -> None:
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    tables = [f"otel_metrics_{kind}" for kind in METRIC_TYPES]
    assert migrations.reconcile_ttl(storage, {"metrics": timedelta(days=30)}) == tables
    for table in tables:
        assert migrations.current_ttl(storage, table) == schema.ttl_clause("TimeUnix", 30 * 86400)
    assert migrations.reconcile_ttl(storage, {"metrics": timedelta(days=30)}) == []
    assert migrations.reconcile_ttl(storage, {"metrics": timedelta(0)}) == tables
    assert migrations.current_ttl(storage, "otel_metrics_sum") is None
    config = ClickHouseExporterConfig.model_validate({"ttl": "72h", "metrics_ttl": "720h"})
    assert config.signal_ttl("metrics") == timedelta(days=30)
    assert ClickHouseExporterConfig.model_validate({"ttl": "72h"}).signal_ttl("metrics") == timedelta(hours=72)
    storage.command(f"DROP DATABASE `{storage.names.database}`")


def test_every_type_lands_in_its_table(store: Storage) -> None:
    batch = uuid.uuid4().hex
    store.insert_otlp("metrics", metrics_request("unit").SerializeToString(), batch)
    assert store.batch_rows("metrics", batch) == 6
    (exponential,) = rows(store, "exponential_histogram", batch)
    assert (exponential["MetricName"], exponential["MetricUnit"], exponential["Count"]) == ("hand.exponential", "ms", 6)
    assert (exponential["Scale"], exponential["ZeroCount"], exponential["Sum"]) == (2, 1, 30.5)
    assert (exponential["PositiveOffset"], exponential["PositiveBucketCounts"]) == (-1, [1, 0, 3])
    assert (exponential["NegativeOffset"], exponential["NegativeBucketCounts"]) == (3, [1])
    assert (exponential["AggregationTemporality"], exponential["Max"]) == (2, 12.0)
    assert exponential["time_ns"] == NOW_NS
    (summary,) = rows(store, "summary", batch)
    assert (summary["Count"], summary["Sum"]) == (4, 10.0)
    assert summary["ValueAtQuantiles.Quantile"] == [0.5, 0.99]
    assert summary["ValueAtQuantiles.Value"] == [2.0, 4.5]
    assert summary["ServiceName"] == "unit"
    assert summary["ResourceAttributes"] == {"lab.name": "observatory", "service.name": "unit"}
    assert (summary["ScopeName"], summary["ScopeVersion"], summary["ScopeAttributes"]) == (
        "lab.telescope",
        "0.9",
        {"site": "ridge"},
    )
    assert summary["ResourceSchemaUrl"] == "https://opentelemetry.io/schemas/1.26.0"
    north, south = rows(store, "gauge", batch)
    assert (north["Attributes"], north["Value"], north["time_ns"]) == ({"dome": "north"}, 12.5, NOW_NS)
    assert (south["Attributes"], south["Value"]) == ({"dome": "south"}, -3.0)
    assert north["Exemplars.TraceId"] == [TRACE_ID.hex()]
    assert north["Exemplars.SpanId"] == [SPAN_ID.hex()]
    assert north["Exemplars.Value"] == [12.75]
    assert north["Exemplars.FilteredAttributes"] == [{"probe": "p1"}]
    assert south["Exemplars.TraceId"] == []
    (total,) = rows(store, "sum", batch)
    assert (total["Value"], total["AggregationTemporality"], total["IsMonotonic"]) == (42.0, 2, True)
    (histogram,) = rows(store, "histogram", batch)
    assert (histogram["BucketCounts"], histogram["ExplicitBounds"]) == ([1, 2, 3, 1], [1.0, 2.0, 5.0])
    assert (histogram["Min"], histogram["Max"], histogram["AggregationTemporality"]) == (0.5, 9.0, 1)


def deep_request() -> ExportMetricsServiceRequest:
    """Values nested deeper than the fast path parses, on data points and exemplars."""
    request = metrics_request("deep")
    gauge = request.resource_metrics[0].scope_metrics[0].metrics[0].gauge
    gauge.data_points[0].attributes.extend([kv("matrix", [[1, 2], [3]]), kv("flat", ["a", 1])])
    gauge.data_points[0].exemplars[0].filtered_attributes.extend([kv("tree", {"a": {"b": "c"}})])
    return request


def exporter(storage: Storage, wal: WriteAheadLog | None = None) -> ClickHouseExporter:
    return ClickHouseExporter("clickhouse", ClickHouseExporterConfig(), storage, wal)


def payload(data: bytes) -> Payload:
    return Payload(METRICS, data, count_records(METRICS, data))


def test_deep_values_take_the_exact_path_and_store_as_json(store: Storage) -> None:
    request = deep_request()
    data = request.SerializeToString()
    assert count_records(METRICS, data) == 5  # Metric messages: what batching counts
    checked = triage(METRICS, data)
    assert (checked.error, checked.records) == (None, 6)  # data points: what rows are
    batch = uuid.uuid4().hex
    with pytest.raises(Exception, match="exact path"):
        store.insert_otlp("metrics", data, batch)
    assert store.batch_rows("metrics", batch) == 0  # refused before any table was written
    assert exporter(store).store([payload(data)], batch) == [None]
    north = rows(store, "gauge", batch)[0]
    point = request.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0]
    assert north["Attributes"]["matrix"] == value_json(point.attributes[1].value) == "[[1,2],[3]]"
    assert north["Attributes"]["flat"] == '["a",1]'
    assert north["Exemplars.FilteredAttributes"] == [{"probe": "p1", "tree": '{"a":{"b":"c"}}'}]
    assert store.batch_rows("metrics", batch) == 6


def repeated_keys_request() -> ExportMetricsServiceRequest:
    """metrics_request with each attribute list repeating a key, the last value being the one to
    store: the resource's `service.name` ("repeated"), the scope's, a data point's, an exemplar's."""
    request = metrics_request("stale")
    resource_metrics = request.resource_metrics[0]
    resource_metrics.resource.attributes.append(kv("service.name", "repeated"))
    scope_metrics = resource_metrics.scope_metrics[0]
    scope_metrics.scope.attributes.extend([kv("site", "summit"), kv("site", "summit, again")])
    north = scope_metrics.metrics[0].gauge.data_points[0]
    north.attributes.extend([kv("dome", 7), kv("dome", "north-east")])
    north.exemplars[0].filtered_attributes.append(kv("probe", "p2"))
    return request


def pairs(column: str) -> str:
    """SQL: a stored Map as its (key, value) entries, a repeated key included."""
    return f"CAST({column}, 'Array(Tuple(String, String))')"


def test_repeated_keys_store_their_last_value_once_on_both_paths(store: Storage) -> None:
    data = repeated_keys_request().SerializeToString()
    fast, exact = uuid.uuid4().hex, uuid.uuid4().hex
    store.insert_otlp("metrics", data, fast)
    # A request with list values in the same batch sends both to the exact path.
    assert exporter(store).store([payload(data), payload(deep_request().SerializeToString())], exact) == [None, None]
    for kind in METRIC_TYPES:
        stored = {
            batch: [r for r in rows(store, kind, batch) if r["ServiceName"] == "repeated"] for batch in (fast, exact)
        }
        for row in (*stored[fast], *stored[exact]):
            del row["IngestBatch"]
        assert stored[fast] == stored[exact] != [], kind
    entries = store.rows(
        f"SELECT IngestBatch, ServiceName, ResourceAttributes['service.name'] AS service, "
        f"{pairs('ResourceAttributes')} AS resource, {pairs('ScopeAttributes')} AS scope, "
        f"{pairs('Attributes')} AS point, arrayMap(m -> {pairs('m')}, `Exemplars.FilteredAttributes`) AS exemplars "
        f"FROM {store.names.metrics_table('gauge')} WHERE IngestBatch IN ({{f:String}}, {{e:String}}) "
        "AND Attributes['dome'] = 'north-east' ORDER BY IngestBatch = {e:String}",
        parameters={"f": fast, "e": exact},
    )
    assert [e.pop("IngestBatch") for e in entries] == [fast, exact]
    assert (
        entries[0]
        == entries[1]
        == {
            "ServiceName": "repeated",
            "service": "repeated",
            "resource": [("lab.name", "observatory"), ("service.name", "repeated")],
            "scope": [("site", "summit, again")],
            "point": [("dome", "north-east")],
            "exemplars": [[("probe", "p2")]],
        }
    )


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    key, size, out = (number << 3) | 2, len(payload), bytearray()
    for value in (key, size):
        while value >= 0x80:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


def test_a_metric_with_two_data_fields_keeps_the_last(store: Storage) -> None:
    first, second = Metric(name="twice"), Metric(name="twice")
    first.gauge.data_points.add(time_unix_nano=NOW_NS, as_double=1.0)
    second.sum.data_points.add(time_unix_nano=NOW_NS, as_double=2.0)
    second.sum.is_monotonic, second.sum.aggregation_temporality = True, 2
    # One Metric whose bytes set `gauge`, then `sum`: protobuf keeps the last field of a oneof.
    resource = metrics_request("twice").resource_metrics[0]
    del resource.scope_metrics[:]
    metric = first.SerializeToString() + second.SerializeToString()
    data = _field(1, resource.SerializeToString() + _field(2, _field(2, metric)))
    parsed = ExportMetricsServiceRequest.FromString(data).resource_metrics[0].scope_metrics[0].metrics[0]
    assert parsed.WhichOneof("data") == "sum"
    batch = uuid.uuid4().hex
    assert exporter(store).store([payload(data)], batch) == [None]
    assert [(r["ServiceName"], r["Value"]) for r in rows(store, "sum", batch)] == [("twice", 2.0)]
    assert rows(store, "gauge", batch) == []


def test_invalid_points_are_rejected_and_store_nothing(store: Storage) -> None:
    request = metrics_request("rejected")
    scope = request.resource_metrics[0].scope_metrics[0]
    scope.metrics[0].gauge.data_points[0].exemplars[0].span_id = b"\x01"
    good = metrics_request("accepted").SerializeToString()
    batch = uuid.uuid4().hex
    verdicts = exporter(store).store([payload(request.SerializeToString()), payload(good)], batch)
    assert verdicts == [
        "resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0].exemplars[0].span_id: "
        "must be 0 or 8 bytes, got 1",
        None,
    ]
    assert store.batch_rows("metrics", batch) == 6
    assert {r["ServiceName"] for kind in METRIC_TYPES for r in rows(store, kind, batch)} == {"accepted"}
    late = metrics_request("late")
    late.resource_metrics[0].scope_metrics[0].metrics[1].sum.data_points[0].time_unix_nano = 2**63
    assert "sum.data_points[0].time_unix_nano" in str(triage(METRICS, late.SerializeToString()).error)


def test_replay_counts_data_points_across_the_tables(store: Storage, tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal", 1 << 30)
    replayer = exporter(store, wal)
    first, second = metrics_request("replay-a").SerializeToString(), metrics_request("replay-b").SerializeToString()
    records = triage(METRICS, first).records + triage(METRICS, second).records
    assert records == 12
    store.insert_otlp("metrics", first + second, "m-landed")
    replayer.replay(wal.append("m-landed", "metrics", [first, second], records))
    store.insert_otlp("metrics", first, "m-partial")
    replayer.replay(wal.append("m-partial", "metrics", [first, second], records))
    replayer.replay(wal.append("m-lost", "metrics", [first, second], records))
    for batch in ("m-landed", "m-partial", "m-lost"):
        assert store.batch_rows("metrics", batch) == 12
    assert len(wal) == 0
    store.delete_batch("metrics", "m-lost")
    assert store.batch_rows("metrics", "m-lost") == 0


def test_replay_sets_aside_only_the_metrics_request_storage_refuses(store: Storage, tmp_path: Path) -> None:
    """Across the five tables too: the refused request leaves no rows, the others land once."""
    wal = WriteAheadLog(tmp_path / "wal", 1 << 30)
    replayer = exporter(store, wal)
    first, second = metrics_request("split-a").SerializeToString(), metrics_request("split-b").SerializeToString()
    late = metrics_request("split-late")
    late.resource_metrics[0].scope_metrics[0].metrics[1].sum.data_points[0].time_unix_nano = 2**63
    refused = late.SerializeToString()  # logged as is: ClickHouse's checks refuse it
    entry = wal.append("m-split", "metrics", [first, refused, second], 18)
    replayer.replay(entry)
    assert store.batch_rows("metrics", "m-split") == 12
    services = {r["ServiceName"] for kind in METRIC_TYPES for r in rows(store, kind, "m-split")}
    assert services == {"split-a", "split-b"}
    assert len(wal) == 0
    aside = tmp_path / "wal" / "quarantine" / entry.path.name
    kept = WriteAheadLog._read_header(aside)
    assert (kept.records, kept.requests(kept.read())) == (6, [refused])


def test_replay_clears_a_batch_whose_refused_request_left_rows(
    store: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should a refused request leave rows in some of the five tables, they cannot be told from
    the others' (one batch id): the batch is cleared and kept, to be tried again."""
    wal = WriteAheadLog(tmp_path / "wal", 1 << 30)
    replayer = exporter(store, wal)
    first, second = metrics_request("torn-a").SerializeToString(), metrics_request("torn-b").SerializeToString()
    entry = wal.append("m-torn", "metrics", [first, second], 12)
    insert = store.insert_otlp

    def second_tears(signal: str, data: bytes, batch_id: str, *, deduplicate: bool = True) -> None:
        if data == second or data == first + second:
            if data == second:
                insert(signal, gauge_only, batch_id, deduplicate=deduplicate)  # one table written, then refused
            raise DatabaseError(
                "Code: 395. DB::Exception: refused after one table (FUNCTION_THROW_IF_VALUE_IS_NON_ZERO)"
            )
        insert(signal, data, batch_id, deduplicate=deduplicate)

    only = metrics_request("torn-b")
    del only.resource_metrics[0].scope_metrics[0].metrics[1:]
    gauge_only = only.SerializeToString()
    monkeypatch.setattr(store, "insert_otlp", second_tears)
    with pytest.raises(StorageError, match="after storing part of it"):
        replayer.replay(entry)
    assert store.batch_rows("metrics", "m-torn") == 0
    assert [e.batch_id for e in wal.entries()] == ["m-torn"]
    monkeypatch.setattr(store, "insert_otlp", insert)
    replayer.replay(entry)
    assert store.batch_rows("metrics", "m-torn") == 12


def test_metrics_tables_are_configurable(chdb_path: Path) -> None:
    config = parse_config(
        {
            "receivers": {"otlp": {"protocols": {"grpc": None}}},
            "exporters": {
                "clickhouse": {
                    "endpoint": f"chdb://{chdb_path}",
                    "database": f"m_{uuid.uuid4().hex[:8]}",
                    "metrics_ttl": "24h",
                    "metrics_tables": {"gauge": {"name": "lab-gauges"}, "sum": {"name": "lab.sums"}},
                }
            },
            "service": {"pipelines": {"metrics": {"receivers": ["otlp"], "exporters": ["clickhouse"]}}},
        }
    )
    exporter_config = config.exporters["clickhouse"]
    assert exporter_config.metrics_tables.by_type()["histogram"] == "otel_metrics_histogram"
    storage = Storage.from_config(exporter_config)
    assert storage.names.metrics_table_name("sum") == "lab.sums"
    assert storage.names.ingest_name("metrics") != SchemaNames(storage.names.database).ingest_name("metrics")
    migrations.migrate(storage)
    assert migrations.reconcile_ttl(storage, {"metrics": exporter_config.signal_ttl("metrics")})[:2] == [
        "lab-gauges",
        "lab.sums",
    ]
    storage.insert_otlp("metrics", metrics_request("renamed").SerializeToString(), "renamed")
    assert storage.command(f"SELECT count() FROM {storage.names.qualified('lab-gauges')}") == 2
    assert storage.batch_rows("metrics", "renamed") == 6
    storage.command(f"DROP DATABASE `{storage.names.database}`")
    storage.close()


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"gauge": {"name": "a b"}}, "metrics_tables.gauge.name: 'a b' is not a usable ClickHouse name"),
        ({"gauge": {"name": "same"}, "sum": {"name": "same"}}, "every metric type needs a table of its own"),
        ({"counter": {"name": "x"}}, "metrics_tables.counter: unknown key"),
        ({"sum": {"table": "x"}}, "metrics_tables.sum.table: unknown key"),
    ],
)
def test_bad_metrics_tables_are_rejected(tables: dict[str, Any], message: str) -> None:
    raw = {
        "receivers": {"otlp": {"protocols": {"grpc": None}}},
        "exporters": {"clickhouse": {"metrics_tables": tables}},
        "service": {"pipelines": {"metrics": {"receivers": ["otlp"], "exporters": ["clickhouse"]}}},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert message in str(caught.value)


def test_otlp_json_exemplar_ids_are_hex() -> None:
    request = metrics_request("json")
    tree = json_format.MessageToDict(request)
    exemplar = tree["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][2]["histogram"]["dataPoints"][0]["exemplars"][0]
    exemplar["traceId"], exemplar["spanId"] = TRACE_ID.hex(), SPAN_ID.hex()
    gauge = tree["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["gauge"]["dataPoints"][0]["exemplars"][0]
    gauge["traceId"], gauge["spanId"] = TRACE_ID.hex().upper(), SPAN_ID.hex()
    assert json_to_protobuf(METRICS, orjson.dumps(tree)) == request.SerializeToString()


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.0, 0.5),  # the first bucket starts at Min
        (0.25, 1.25),  # rank 1.5 of 6: a quarter into (1, 2], which holds ranks 1..3
        (0.5, 2.0),  # rank 3: the end of (1, 2]
        (1.0, 9.0),  # the last bucket ends at Max
    ],
)
def test_histogram_quantiles_interpolate_inside_buckets(q: float, expected: float) -> None:
    counts, bounds = [1, 2, 2, 1], [1.0, 2.0, 5.0]
    assert histogram_quantile(q, counts, bounds, 0.5, 9.0) == pytest.approx(expected)


def test_histogram_quantile_edges() -> None:
    assert histogram_quantile(0.5, [0, 0], [1.0], 0, 0) is None
    assert histogram_quantile(0.5, [1, 2], [1.0, 2.0], 0, 0) is None  # malformed: counts != bounds + 1
    assert histogram_quantile(0.9, [4], [], 2.0, 6.0) == pytest.approx(5.6)  # one bucket: Min..Max
    assert histogram_quantile(1.0, [0, 3], [10.0], 0, 0) == 10.0  # no Max recorded: the last bound
    assert histogram_quantile(0.0, [2, 0], [-5.0], 0, 0) == -5.0  # Min above the first bound


async def test_metrics_are_acknowledged_from_the_wal_while_storage_is_away(store: Storage, tmp_path: Path) -> None:
    fault = tmp_path / "fault"
    fault.touch()
    wal = WriteAheadLog(tmp_path / "wal", 1 << 30)
    logged = exporter(store, wal)
    store._fault_file = str(fault)  # writes fail as if storage were away
    try:
        data = metrics_request("walled").SerializeToString()
        assert await logged.consume_batch([payload(data)]) == [None]
        (entry,) = wal.entries()
        assert (entry.signal, entry.records) == ("metrics", 6)  # data points, not Metric messages
    finally:
        store._fault_file = None
    logged.replay(entry)
    assert store.batch_rows("metrics", entry.batch_id) == 6
    assert len(wal) == 0
    await logged.shutdown()


def test_rate_counts_restarts_and_decreases(store: Storage) -> None:
    from labtel.query_api.series import get_series
    from labtel.query_api.series_query import SeriesQuery

    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    resource.resource.attributes.extend([kv("service.name", "rates")])
    scope = resource.scope_metrics.add()
    counter, level = scope.metrics.add(name="rate.counter").sum, scope.metrics.add(name="rate.level").sum
    counter.aggregation_temporality = level.aggregation_temporality = 2
    counter.is_monotonic = True
    second = 10**9
    started, restarted = NOW_NS - 100 * second, NOW_NS - 30 * second
    for i, (start, value) in enumerate([(started, 10), (started, 15), (restarted, 3), (restarted, 8)]):
        counter.data_points.add(
            start_time_unix_nano=start, time_unix_nano=NOW_NS - (40 - 10 * i) * second, as_int=value
        )
    for i, value in enumerate([10, 7, 9]):
        level.data_points.add(
            start_time_unix_nano=started, time_unix_nano=NOW_NS - (40 - 10 * i) * second, as_int=value
        )
    store.insert_otlp("metrics", request.SerializeToString(), uuid.uuid4().hex)
    step = 3600

    def growth(name: str) -> float:
        query = SeriesQuery(name, NOW_NS - step * second, NOW_NS + second, step_s=step, agg="rate", service="rates")
        points = [p for s in get_series(store, query).series for p in s.points]
        return sum(p.value or 0.0 for p in points) * step

    assert growth("rate.counter") == pytest.approx(5 + 3 + 5)  # 10 → 15, restart at 3, → 8
    assert growth("rate.level") == pytest.approx(-3 + 2)  # an up-down counter may fall


def test_processes_of_one_service_keep_their_own_running_totals(store: Storage) -> None:
    """Two processes of a service (two `service.instance.id`s) send cumulative metrics with the
    same labels: a series adds up each process's own growth and totals, never one's value minus
    the other's."""
    from labtel.query_api.series import get_series
    from labtel.query_api.series_query import SeriesQuery

    second = 10**9
    base = (NOW_NS // (60 * second) - 3) * 60 * second  # a whole minute, buckets begin there
    request = ExportMetricsServiceRequest()
    for instance, (first, step) in {"a": (1000, 10), "b": (0, 1)}.items():
        resource = request.resource_metrics.add()
        resource.resource.attributes.extend([kv("service.name", "workers"), kv("service.instance.id", instance)])
        scope = resource.scope_metrics.add()
        counter = scope.metrics.add(name="workers.done").sum
        counter.aggregation_temporality, counter.is_monotonic = 2, True
        histogram = scope.metrics.add(name="workers.latency").histogram
        histogram.aggregation_temporality = 2
        summary = scope.metrics.add(name="workers.summary").summary
        for i in range(6):
            at, value = base + i * 10 * second, first + step * i
            counter.data_points.add(start_time_unix_nano=base - 3600 * second, time_unix_nano=at, as_int=value)
            point = histogram.data_points.add(
                start_time_unix_nano=base - 3600 * second, time_unix_nano=at, count=value, sum=2.0 * value
            )
            point.bucket_counts.extend([value, 0])
            point.explicit_bounds.append(1.0)
            summary.data_points.add(start_time_unix_nano=base, time_unix_nano=at, count=value, sum=3.0 * value)
    store.insert_otlp("metrics", request.SerializeToString(), uuid.uuid4().hex)

    def points(name: str, **query: Any) -> list[Any]:
        found = get_series(store, SeriesQuery(name, base, base + 60 * second, service="workers", **query))
        assert len(found.series) == 1  # one service, one label set
        return found.series[0].points

    rates = points("workers.done", step_s=10, agg="rate")
    assert [p.value for p in rates] == pytest.approx([0, 1.1, 1.1, 1.1, 1.1, 1.1])  # (10 + 1) per 10 s
    assert [p.value for p in points("workers.done", step_s=60, agg="rate")] == pytest.approx([55 / 60])
    (latency,) = points("workers.latency", step_s=60, agg="count")
    assert latency.value == 1050 + 5  # each process's last total, added up
    assert (latency.count, latency.sum, latency.bucket_counts) == (1055, 2 * 1055.0, [1055, 0])
    assert [p.value for p in points("workers.summary", step_s=60, agg="sum")] == [3.0 * 1055]
