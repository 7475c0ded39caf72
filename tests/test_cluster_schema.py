"""Cluster mode's DDL: ON CLUSTER on every statement, Replicated engines, Distributed tables, quoting;
run with the cluster parts stripped, the tables equal the single-server schema's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from labtel.collector.config import ClickHouseExporterConfig, ConfigError, parse_config
from labtel.collector.storage import migrations, schema
from labtel.collector.storage.client import Storage, parse_endpoint
from labtel.collector.storage.schema import SchemaNames
from labtel.collector.storage.topology import LOCAL_SUFFIX, STATE_REPLICA_PARAMS, Topology
from tests.cluster_helpers import (
    CLUSTER_NAME,
    DDL,
    REPLICA_PARAMS,
    REPLICATED,
    SHARDED,
    StrippedStorage,
    strip_cluster,
    table_shapes,
)

ON = f"ON CLUSTER `{CLUSTER_NAME}`"
_OBJECT = re.compile(
    r"^(?:CREATE (?:TABLE|MATERIALIZED VIEW|VIEW|DATABASE)(?: IF NOT EXISTS)?|ALTER TABLE|DROP TABLE(?: IF EXISTS)?|"
    r"DELETE FROM) (`(?:[^`\\]|\\.)*`(?:\.`(?:[^`\\]|\\.)*`)?) (ON CLUSTER `[^`]*`)"
)
_ENGINE = re.compile(r"ENGINE = (\w+)(?:\((.*?)\))?(?=\s|$)", re.MULTILINE)
_STATE_TABLES = {
    "labtel_schema_migrations",
    "labtel_madsci_archive",
    "labtel_panoptes_current",
    "labtel_panoptes_runs",
    "labtel_panoptes_seq",
    "labtel_alerts",
    "labtel_alert_state",
}


def names(topology: Topology, database: str = "lab-db") -> SchemaNames:
    return SchemaNames(database, "my-logs.v1", "my-traces", topology=topology)


def _table_of(statement: str) -> str:
    match = _OBJECT.match(statement)
    assert match, f"no ON CLUSTER after the object name in: {statement[:200]}"
    return match.group(1)


@pytest.mark.parametrize("topology", [REPLICATED, SHARDED], ids=["replicated", "sharded"])
def test_every_statement_of_every_migration_runs_on_the_cluster(topology: Topology) -> None:
    n = names(topology)
    statements = migrations.schema_statements(n)
    ddl = [s for s in statements if DDL.match(s)]
    assert len(ddl) > 50
    for statement in ddl:
        assert _OBJECT.match(statement), statement[:200]
        assert statement.count(ON) == 1, statement[:200]
    # names with '-' and '.' are quoted wherever they appear; the cluster name too
    assert all("`lab-db`." in s for s in ddl if not s.startswith("CREATE DATABASE"))
    assert "CREATE DATABASE IF NOT EXISTS `lab-db` ON CLUSTER `lab-cluster`" in statements
    assert not any(re.search(r"(?<![`'\w])lab-db(?!`)", s) for s in ddl)


@pytest.mark.parametrize("topology", [REPLICATED, SHARDED], ids=["replicated", "sharded"])
def test_engines_are_replicated_data_tables_with_the_params_and_state_tables_on_every_node(topology: Topology) -> None:
    n = names(topology)
    engines: dict[str, tuple[str, str]] = {}
    for statement in migrations.schema_statements(n):
        if statement.startswith("CREATE TABLE"):
            match = _ENGINE.search(statement)
            assert match, statement[:200]
            table = re.findall(r"`((?:[^`\\]|\\.)*)`", _table_of(statement))[-1]
            engines[table] = (match.group(1), match.group(2) or "")
    for table, (engine, params) in engines.items():
        if engine in ("Null", "Distributed"):
            continue
        assert engine.startswith("Replicated"), (table, engine)
        assert engine.endswith("MergeTree"), (table, engine)
        expected = STATE_REPLICA_PARAMS if table in _STATE_TABLES else REPLICA_PARAMS
        assert params.startswith(expected), (table, params)
    assert engines["labtel_alerts"] == ("ReplicatedReplacingMergeTree", f"{STATE_REPLICA_PARAMS}, Version")
    trace_ids = f"my-traces_trace_id_ts{LOCAL_SUFFIX if topology.distributed else ''}"
    assert engines[trace_ids] == ("ReplicatedAggregatingMergeTree", REPLICA_PARAMS)
    data = n.data_tables()
    if not topology.distributed:
        assert not any(engine == "Distributed" for engine, _ in engines.values())
        assert set(data) <= set(engines)
        return
    for table in data:
        engine, params = engines[table]
        assert engine == "Distributed", table
        key = "rand()" if table.startswith("otel_metrics") else "if(TraceId = '', rand(), cityHash64(TraceId))"
        assert params == f"'lab-cluster', 'lab-db', '{table}{LOCAL_SUFFIX}', {key}", table
        assert engines[table + LOCAL_SUFFIX][0].startswith("Replicated")


def test_distributed_alters_change_the_columns_of_both_tables_and_the_rest_only_where_rows_are_stored() -> None:
    n = names(SHARDED)
    alters = [s for s in migrations.schema_statements(n) if s.startswith("ALTER")]
    logs, local = "`lab-db`.`my-logs.v1`", "`lab-db`.`my-logs.v1_local`"
    columns = [s for s in alters if " ADD COLUMN " in s]
    others = [s for s in alters if " ADD COLUMN " not in s]
    assert {_table_of(s) for s in columns} == {logs, local}
    assert sum(_table_of(s) == logs for s in columns) == sum(_table_of(s) == local for s in columns) == 7
    assert others
    assert all(_table_of(s) == local for s in others)
    assert any("MATERIALIZE PROJECTION" in s for s in others)
    assert any("MODIFY SETTING lightweight_mutation_projection_mode" in s for s in others)


def test_sharded_ingest_writes_through_the_distributed_tables_and_the_trace_lookup_stays_on_each_shard() -> None:
    n = names(SHARDED)
    views = [s for s in migrations.schema_statements(n) if s.startswith("CREATE MATERIALIZED VIEW")]
    logs_view = next(v for v in views if n.ingest_view("logs") in v)
    assert f" TO {n.logs} AS" in logs_view
    for kind in schema.METRIC_TYPES:
        assert f" TO {n.metrics_table(kind)} AS" in next(v for v in views if n.ingest_view("metrics", kind) in v)
    lookup = next(v for v in views if "trace_id_ts_mv" in v)
    assert f"TO {n.trace_id_ts_store} AS" in lookup
    assert f"FROM {n.traces_store}\n" in lookup
    assert n.trace_id_ts_store.endswith("_local`")
    assert SHARDED.insert_settings == {"distributed_foreground_insert": 1}
    assert schema.delete_rows(n, n.logs_store, "IngestBatch = 'b'") == (
        f"DELETE FROM `lab-db`.`my-logs.v1_local` {ON} WHERE IngestBatch = 'b'"
    )


def test_single_server_statements_have_no_cluster_parts() -> None:
    statements = migrations.schema_statements(names(Topology()))
    assert not any("ON CLUSTER" in s or "Replicated" in s or "Distributed" in s for s in statements)
    assert strip_cluster(migrations.schema_statements(names(REPLICATED))[1], REPLICATED) == statements[1]


def test_a_cluster_schema_stripped_of_its_cluster_parts_makes_the_same_tables(chdb_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    plain = Storage(parse_endpoint(f"chdb://{chdb_path}"), SchemaNames(f"plain-{suffix}"))
    cluster = StrippedStorage(parse_endpoint(f"chdb://{chdb_path}"), SchemaNames(f"cl-{suffix}", topology=REPLICATED))
    try:
        migrations.migrate(plain)
        report = migrations.migrate(cluster)
        assert report.current_version == migrations.latest_version()
        assert table_shapes(cluster, cluster.names.database) == table_shapes(plain, plain.names.database)
        # what ran is what labtel wrote for the cluster: every DDL statement ON CLUSTER, engines replicated
        ddl = [s for s in cluster.statements if DDL.match(s)]
        assert ddl
        assert all(ON in s for s in ddl), [s[:120] for s in ddl if ON not in s]
        assert any(s.startswith("ALTER") and "MODIFY SETTING merge_selector_base" in s for s in ddl)
        assert "SYSTEM SYNC REPLICA `cl-" + suffix + "`.`labtel_schema_migrations`" in cluster.statements
        changed = migrations.reconcile_ttl(cluster, {"logs": timedelta(days=3)})
        assert changed == ["otel_logs"]
        assert cluster.statements[-1].startswith(f"ALTER TABLE `cl-{suffix}`.`otel_logs` {ON} MODIFY TTL")
        assert migrations.migrate(cluster).applied == []
    finally:
        for store in (plain, cluster):
            store.command(f"DROP DATABASE IF EXISTS `{store.names.database}`")
            store.close()


def _exporter(**options: object) -> ClickHouseExporterConfig:
    config = parse_config(
        {
            "receivers": {"otlp": {"protocols": {"grpc": {}}}},
            "exporters": {"clickhouse": {"endpoint": "http://ch:8123", **options}},
            "service": {"pipelines": {"logs": {"receivers": ["otlp"], "exporters": ["clickhouse"]}}},
        }
    )
    return config.storage_exporter()


def test_exporter_options_make_the_topology_with_the_contrib_exporters_names() -> None:
    exporter = _exporter(
        cluster_name="lab-cluster",
        table_engine={"name": "ReplicatedMergeTree", "params": REPLICA_PARAMS},
        distributed=True,
        sharding_key="TraceId",
        endpoints=["http://ch2:8123"],
        secure=True,
        verify=False,
        connect_timeout="3s",
    )
    assert exporter.topology() == SHARDED
    storage = Storage.from_config(exporter)
    assert [t.url for t in storage.targets] == ["http://ch:8123", "http://ch2:8123"]
    assert storage.names.topology == SHARDED
    assert storage._server_options.client_kwargs() == {"secure": True, "verify": False}
    assert storage._server_options.connect_timeout_s == 3.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"distributed": True}, "distributed: true needs cluster_name"),
        ({"table_engine": {"name": "Log"}}, "must be a MergeTree-family engine"),
        ({"table_engine": {"name": "ReplicatedMergeTree"}}, "table_engine.params is needed"),
        ({"table_engine": {"name": "MergeTree", "params": "x); DROP TABLE y"}}, "without ';'"),
        ({"cluster_name": "a b"}, "not a usable ClickHouse cluster name"),
        ({"sharding_key": "Body"}, "sharding_key"),
        ({"endpoints": ["ftp://x"]}, "must be chdb://"),
        ({"endpoint": "chdb://./x", "cluster_name": "c"}, "needs a ClickHouse server"),
    ],
)
def test_bad_cluster_options_are_refused_with_the_reason(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _exporter(**options)


@pytest.mark.parametrize("topology", [REPLICATED, SHARDED], ids=["replicated", "sharded"])
def test_clickhouse_parses_every_cluster_statement_as_written(storage: Storage, topology: Topology) -> None:
    """ClickHouse's own parser (formatQuery) reads each statement, ON CLUSTER and engines included."""
    statements = migrations.schema_statements(names(topology))
    statements.append(schema.delete_rows(names(topology), names(topology).logs_store, "IngestBatch = 'b'"))
    for statement in statements:
        formatted = str(storage.command("SELECT formatQuerySingleLine({q:String})", parameters={"q": statement}))
        if DDL.match(statement):
            assert "ON CLUSTER `lab-cluster`" in formatted, formatted[:200]
        if "ENGINE = Replicated" in statement:
            assert "ENGINE = Replicated" in formatted


def test_migrate_print_sql_gives_the_operator_the_cluster_schema_without_connecting(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parent.parent / "deploy" / "labtel-cluster.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "labtel.cli", "migrate", "--config", str(config), "--print-sql"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LABTEL_CLICKHOUSE_ENDPOINT": "http://127.0.0.1:9"},  # nothing listens there
    )
    assert done.returncode == 0, done.stderr
    statements = [s.strip() for s in done.stdout.split(";\n") if s.strip()]
    topology = Topology("labtel", "ReplicatedMergeTree", REPLICA_PARAMS, distributed=True, sharding_key="TraceId")
    assert statements == migrations.schema_statements(SchemaNames("otel", topology=topology))
    assert all("ON CLUSTER `labtel`" in s for s in statements if DDL.match(s))
