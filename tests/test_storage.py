"""Schema migrations, TTL, restarts, and the same storage code against a ClickHouse server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from labtel.collector.storage import migrations, schema
from labtel.collector.storage.client import Storage, parse_endpoint
from labtel.collector.storage.schema import SchemaNames
from labtel.query_api.events import EventFilter, list_events
from tests.conftest import make_storage
from tests.helpers import LabtelServer, log_record, logs_request, store_at_version, write_config

CONTRIB_LOG_COLUMNS = {
    "Timestamp": "DateTime64(9)",
    "TraceId": "String",
    "SpanId": "String",
    "TraceFlags": "UInt8",
    "SeverityText": "LowCardinality(String)",
    "SeverityNumber": "UInt8",
    "ServiceName": "LowCardinality(String)",
    "Body": "String",
    "ResourceSchemaUrl": "LowCardinality(String)",
    "ResourceAttributes": "Map(LowCardinality(String), String)",
    "ScopeSchemaUrl": "LowCardinality(String)",
    "ScopeName": "String",
    "ScopeVersion": "LowCardinality(String)",
    "ScopeAttributes": "Map(LowCardinality(String), String)",
    "LogAttributes": "Map(LowCardinality(String), String)",
    "EventName": "String",
}
CONTRIB_TRACE_COLUMNS = {
    "Timestamp": "DateTime64(9)",
    "TraceId": "String",
    "SpanId": "String",
    "ParentSpanId": "String",
    "TraceState": "String",
    "SpanName": "LowCardinality(String)",
    "SpanKind": "LowCardinality(String)",
    "ServiceName": "LowCardinality(String)",
    "ResourceAttributes": "Map(LowCardinality(String), String)",
    "ScopeName": "String",
    "ScopeVersion": "String",
    "SpanAttributes": "Map(LowCardinality(String), String)",
    "Duration": "UInt64",
    "StatusCode": "LowCardinality(String)",
    "StatusMessage": "String",
    "Events.Timestamp": "Array(DateTime64(9))",
    "Events.Name": "Array(LowCardinality(String))",
    "Events.Attributes": "Array(Map(LowCardinality(String), String))",
    "Links.TraceId": "Array(String)",
    "Links.SpanId": "Array(String)",
    "Links.TraceState": "Array(String)",
    "Links.Attributes": "Array(Map(LowCardinality(String), String))",
}


def columns(storage: Storage, table: str) -> dict[str, tuple[str, str]]:
    rows = storage.rows(
        "SELECT name, type, default_kind FROM system.columns WHERE database = {db:String} AND table = {t:String}",
        parameters={"db": storage.names.database, "t": table},
    )
    return {r["name"]: (r["type"], r["default_kind"]) for r in rows}


def test_tables_match_the_contrib_exporter_columns(storage: Storage) -> None:
    logs = columns(storage, "otel_logs")
    for name, kind in CONTRIB_LOG_COLUMNS.items():
        assert logs[name][0] == kind, name
    assert logs["TimestampTime"] == ("DateTime", "ALIAS")  # Grafana's older OTel mode
    for lab in ("EventType", "NodeId", "RunId", "WorkflowId", "ExperimentId"):
        assert logs[lab] == ("LowCardinality(String)", "MATERIALIZED")
    traces = columns(storage, "otel_traces")
    for name, kind in CONTRIB_TRACE_COLUMNS.items():
        assert traces[name][0] == kind, name
    assert set(columns(storage, "otel_traces_trace_id_ts")) == {"TraceId", "Start", "End"}
    sorting = storage.command(
        "SELECT sorting_key FROM system.tables WHERE database = {db:String} AND name = 'otel_logs'",
        parameters={"db": storage.names.database},
    )
    assert sorting == "toStartOfFiveMinutes(Timestamp), ServiceName, Timestamp"


def test_migrations_apply_once(chdb_path: Path) -> None:
    store = make_storage(chdb_path)
    first = migrations.migrate(store)
    assert [m.version for m in first.applied] == [m.version for m in migrations.MIGRATIONS]
    second = migrations.migrate(store)
    assert second.applied == []
    assert second.current_version == migrations.latest_version()
    assert store.command(f"SELECT count() FROM {store.names.migrations}") == len(migrations.MIGRATIONS)


def test_word_search_moves_to_a_text_index_keeping_stored_events_findable(chdb_path: Path) -> None:
    store = make_storage(chdb_path)
    store_at_version(store, 3)  # a store of the version before the text index
    records = [log_record(f"Pump {i} primed", time_ns=1_780_000_000_000_000_000 + i) for i in range(20)]
    records.append(log_record("Valve STUCK open", time_ns=1_780_000_000_000_000_100))
    store.insert_otlp("logs", logs_request(records).SerializeToString(), "b-before")
    assert 4 in [m.version for m in migrations.migrate(store).applied]
    indexes = store.rows(
        "SELECT name, type FROM system.data_skipping_indices WHERE database = {db:String} AND table = 'otel_logs' "
        "AND type IN ('tokenbf_v1', 'text')",
        parameters={"db": store.names.database},
    )
    # migration 4's idx_body_text is replaced in turn by migration 11's (tests/test_word_search.py)
    assert [(r["name"], r["type"]) for r in indexes] == [(schema.BODY_WORDS_INDEX, "text")]
    store.insert_otlp("logs", logs_request([log_record("valve stuck again")]).SerializeToString(), "b-after")
    stuck = f"SELECT Body FROM {store.names.logs} WHERE {schema.has_word('word')}"
    found = store.rows(f"{stuck} ORDER BY Timestamp", parameters={"word": "stuck"})
    assert [r["Body"] for r in found][:1] == ["Valve STUCK open"]
    assert len(found) == 2
    plan = store.raw(f"EXPLAIN indexes = 1 {stuck}", None, parameters={"word": "stuck"})
    assert schema.BODY_WORDS_INDEX.encode() in plan
    store.command(f"DROP DATABASE {schema.quote_identifier(store.names.database)}")


def test_skip_indexes_of_an_ingested_part_are_built_by_its_merge_with_the_same_answers(storage: Storage) -> None:
    records = [
        log_record(f"pump {i} {'stalled' if i % 7 == 0 else 'ok'}", {"lab.node.id": f"n{i % 3}"}) for i in range(60)
    ]
    for start in range(0, 60, 20):  # three parts
        storage.insert_otlp("logs", logs_request(records[start : start + 20]).SerializeToString(), uuid.uuid4().hex)
    parts = (
        f"SELECT count() AS parts, sum(secondary_indices_compressed_bytes) AS index_bytes FROM system.parts "
        f"WHERE database = '{storage.names.database}' AND table = 'otel_logs' AND active"
    )
    search = EventFilter(tokens=["stalled"], node="n1")
    before, _ = list_events(storage, search, 100, None)
    fresh = storage.rows(parts)[0]
    assert fresh["parts"] == 3
    if "materialize_skip_indexes_on_insert" in storage.supported({"materialize_skip_indexes_on_insert": 0}):
        assert fresh["index_bytes"] == 0  # not built at insert
    storage.command(f"OPTIMIZE TABLE {storage.names.logs} FINAL")
    merged = storage.rows(parts)[0]
    assert merged["parts"] == 1
    assert merged["index_bytes"] > 0  # the merge built them
    after, _ = list_events(storage, search, 100, None)
    expected = sorted(f"pump {i} stalled" for i in range(60) if i % 7 == 0 and i % 3 == 1)
    assert sorted(e.body for e in before) == sorted(e.body for e in after) == expected


def test_storage_tables_get_the_part_policy(storage: Storage) -> None:
    for table in ("otel_logs", "otel_traces", "otel_metrics_sum"):
        engine = storage.command(
            "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            parameters={"db": storage.names.database, "t": table},
        )
        for name, value in migrations.PART_POLICY.items():
            assert f"{name} = {value}" in engine, (table, name)
    assert migrations.reconcile_part_policy(storage) == []  # already applied by migrate
    storage.command(f"ALTER TABLE {storage.names.logs} MODIFY SETTING merge_selector_base = 5")
    assert migrations.reconcile_part_policy(storage) == ["otel_logs"]
    assert migrations.reconcile_part_policy(storage) == []


def test_ttl_follows_the_configuration(storage: Storage) -> None:
    # A fresh logs table already has a TTL: events may carry their own expiry.
    assert migrations.current_ttl(storage, "otel_logs") is None
    changed = migrations.reconcile_ttl(storage, {"logs": timedelta(days=30), "traces": timedelta(hours=72)})
    assert changed == ["otel_logs", "otel_traces", "otel_traces_trace_id_ts"]
    retention = "toDateTime(Timestamp) + toIntervalSecond(2592000)"
    assert migrations.current_ttl(storage, "otel_logs") == (
        f"if(ExpiresAt = 0, {retention}, least(toDateTime(ExpiresAt), {retention}))"
    )
    assert migrations.current_ttl(storage, "otel_traces") == "toDateTime(Timestamp) + toIntervalSecond(259200)"
    assert migrations.reconcile_ttl(storage, {"logs": timedelta(days=30), "traces": timedelta(hours=72)}) == []
    assert migrations.reconcile_ttl(storage, {"logs": timedelta(0), "traces": timedelta(0)}) == [
        "otel_logs",
        "otel_traces",
        "otel_traces_trace_id_ts",
    ]
    assert migrations.current_ttl(storage, "otel_logs") == schema.logs_ttl_clause(0)
    assert migrations.current_ttl(storage, "otel_traces") is None


def test_events_expire_at_their_own_ttl(storage: Storage) -> None:
    migrations.reconcile_ttl(storage, {"logs": timedelta(0), "traces": timedelta(0)})
    now = time.time_ns()
    records = [
        log_record("short-lived", {"lab.ttl_seconds": 3}, time_ns=now),  # long enough to be seen first
        log_record("already expired", {"lab.expires_at": "2020-01-01T00:00:00Z"}, time_ns=now),
        log_record("hour-long", {"lab.ttl_seconds": 3600}, time_ns=now),
        log_record("forever", time_ns=now),
    ]
    storage.insert_otlp("logs", logs_request(records).SerializeToString(), "ttl")

    def visible() -> list[str]:
        return sorted(e.body for e in list_events(storage, EventFilter(), 10, None)[0])

    assert visible() == ["forever", "hour-long", "short-lived"]
    time.sleep(max(0.0, (now + 3_200_000_000 - time.time_ns()) / 1e9))
    assert visible() == ["forever", "hour-long"]  # hidden as soon as it expires
    storage.command(f"OPTIMIZE TABLE {storage.names.logs} FINAL")
    stored = storage.rows(f"SELECT Body FROM {storage.names.logs} ORDER BY Body")
    assert [r["Body"] for r in stored] == ["forever", "hour-long"]  # and deleted by the TTL


def test_scans_read_no_expiry_where_nothing_has_expired(storage: Storage) -> None:
    """schema.not_expired: with no expired event in the scanned range, ClickHouse folds the expiry
    condition away (no ExpiresAt is read); an expired one in range brings the row check back."""
    day = 86_400_000_000_000
    now = time.time_ns()
    records = [
        log_record("old, expired", {"lab.expires_at": "2020-01-01T00:00:00Z"}, time_ns=now - 3 * day),
        log_record("old, kept", time_ns=now - 3 * day + 1),
        log_record("new, expiring later", {"lab.ttl_seconds": 3600}, time_ns=now),
        log_record("new, kept", time_ns=now + 1),
    ]
    storage.insert_otlp("logs", logs_request(records).SerializeToString(), "expiry")
    logs = storage.names.logs

    def plan_reads_expiry(since_ns: int) -> bool:
        within = f"Timestamp >= fromUnixTimestamp64Nano({since_ns})"
        plan = storage.raw(
            f"EXPLAIN actions = 1 SELECT count() FROM {logs} WHERE {schema.not_expired(logs, within)} AND {within}",
            None,
        ).decode()
        return "ExpiresAt" in "".join(line for line in plan.splitlines() if "filter column" in line.lower())

    assert not plan_reads_expiry(now - day)
    assert plan_reads_expiry(now - 4 * day)

    def bodies(start_ns: int | None) -> list[str]:
        return sorted(e.body for e in list_events(storage, EventFilter(start_ns=start_ns), 10, None)[0])

    assert bodies(now - day) == ["new, expiring later", "new, kept"]
    assert bodies(now - 4 * day) == ["new, expiring later", "new, kept", "old, kept"]
    assert bodies(None) == ["new, expiring later", "new, kept", "old, kept"]


def test_concurrent_first_inserts_write_the_schema_file_once(tmp_path: Path) -> None:
    from labtel.collector.storage import client

    def first_inserts(folder: Path) -> list[dict[str, object]]:
        client._schema_settings.cache_clear()  # as in a fresh process, whose first inserts run at once
        barrier = threading.Barrier(4)

        def first_insert(_: int) -> dict[str, object]:
            barrier.wait()
            return client._schema_settings("logs", str(folder))

        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(first_insert, range(4)))

    try:
        for attempt in range(20):
            folder = tmp_path / f"format_schemas_{attempt}"
            results = first_inserts(folder)
            assert all(result == results[0] for result in results)
            assert [p.name for p in folder.iterdir()] == [f"labtel_logs_{schema.ingest_fingerprint('logs')}.proto"]
    finally:
        client._schema_settings.cache_clear()


def test_names_with_dashes_and_dots_are_quoted(chdb_path: Path) -> None:
    store = Storage(
        parse_endpoint(f"chdb://{chdb_path}"),
        SchemaNames(f"lab-{uuid.uuid4().hex[:6]}", "my-logs.v1", "my-traces"),
    )
    migrations.migrate(store)
    store.insert_otlp("logs", logs_request([log_record("quoted")]).SerializeToString(), "t")
    events, _ = list_events(store, EventFilter(), 10, None)
    assert [e.body for e in events] == ["quoted"]


def test_restart_keeps_data_and_does_not_migrate_again(
    tmp_path: Path, server_factory: Callable[..., LabtelServer]
) -> None:
    config = write_config(tmp_path / "otel-config.yaml", tmp_path / "data")
    first = server_factory(config=config, workdir=tmp_path).start()
    request = logs_request([log_record(f"kept {i}") for i in range(3)])
    httpx.post(
        first.http + "/v1/logs",
        content=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    ).raise_for_status()
    assert first.stop() == 0
    assert "applying migration 1" in first.output()
    assert "stopped." in first.output()
    first.log_file.unlink()

    second = server_factory(config=config, workdir=tmp_path).start()
    assert sorted(e["body"] for e in second.get("/events").json()["events"]) == ["kept 0", "kept 1", "kept 2"]
    assert "applying migration" not in second.output()
    assert second.get("/ready").json()["schema_version"] == migrations.latest_version()
    assert second.stop() == 0


def test_migrate_command_and_locked_data_dir(tmp_path: Path, server_factory: Callable[..., LabtelServer]) -> None:
    config = write_config(tmp_path / "otel-config.yaml", tmp_path / "data")
    cmd = [sys.executable, "-m", "labtel.cli", "migrate", "--config", str(config)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "applied migration 1" in result.stderr
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0
    assert "already current" in " ".join(result.stderr.split())
    server = server_factory(config=config, workdir=tmp_path).start()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 1  # the embedded store belongs to the running server
    assert holding(tmp_path / "data", server) in " ".join(result.stderr.split())
    server.stop()


def holding(data: Path, server: LabtelServer) -> str:
    """How labtel names a running `labtel serve` that holds the embedded store in `data`."""
    assert server.process is not None
    return f"embedded ClickHouse (chDB) in {data} is in use by pid {server.process.pid} (labtel.cli serve --config "


def test_the_query_api_on_an_embedded_store_another_process_holds_stops_at_start_naming_it(
    tmp_path: Path, server_factory: Callable[..., LabtelServer]
) -> None:
    data = tmp_path / "data"
    server = server_factory(config=write_config(tmp_path / "otel-config.yaml", data), workdir=tmp_path).start()
    for command in ("api", "serve"):
        workdir = tmp_path / command
        workdir.mkdir()
        # The same store, a write-ahead log of its own (a shared one would be refused first).
        config = write_config(workdir / "otel-config.yaml", workdir / "data", endpoint=f"chdb://{data}")
        second = server_factory(config=config, workdir=workdir, command=command)
        with pytest.raises(AssertionError, match="exited with 1"):
            second.start(timeout=60)
        said = [line for line in second.output().splitlines() if not re.match(r"\d{4}-\d\d-\d\d ", line)]
        assert len(said) == 1, said  # one line, and no "is running"
        assert said[0].startswith(f"labtel: cannot start: {holding(data, server)}"), said
        assert said[0].endswith("an embedded store can be open in one process only"), said
    assert server.get("/ready").status_code == 200  # the holder is unaffected
    assert server.stop() == 0


def test_version_command() -> None:
    from labtel.sdk import __version__

    result = subprocess.run([sys.executable, "-m", "labtel.cli", "version"], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == __version__


# --- a ClickHouse server: the same code path over HTTP -------------------------------------------


@pytest.mark.clickhouse_server
def test_clickhouse_server_stores_and_reads_like_the_embedded_store(server_url: str) -> None:
    store = Storage(parse_endpoint(server_url), SchemaNames(f"labtel_test_{uuid.uuid4().hex[:8]}"))
    try:
        report = migrations.migrate(store)
        assert report.current_version == migrations.latest_version()
        request = logs_request([log_record("from a server", {"lab.node.id": "telescope"})])
        store.insert_otlp("logs", request.SerializeToString(), uuid.uuid4().hex)
        events, _ = list_events(store, EventFilter(node="telescope"), 10, None)
        assert [e.body for e in events] == ["from a server"]
        assert migrations.migrate(store).applied == []
    finally:
        store.command(f"DROP DATABASE IF EXISTS `{store.names.database}`")
        store.close()


@pytest.mark.clickhouse_server
def test_labtel_serve_against_a_clickhouse_server(
    server_url: str, tmp_path: Path, server_factory: Callable[..., LabtelServer]
) -> None:
    database = f"labtel_test_{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path / "otel-config.yaml", tmp_path / "data", endpoint=server_url, database=database)
    server = server_factory(config=config, workdir=tmp_path, env={**os.environ}).start()
    request = logs_request([log_record("via server mode")])
    httpx.post(
        server.http + "/v1/logs",
        content=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    ).raise_for_status()
    assert [e["body"] for e in server.get("/events").json()["events"]] == ["via server mode"]
    server.stop()


OLD_STORE = """
import sys, time
from labtel.collector.storage import migrations, schema
from labtel.collector.storage.client import Storage, parse_endpoint
from labtel.collector.storage.schema import SchemaNames
from tests.helpers import log_record, logs_request, store_at_version
from tests.metrics_requests import metrics_request

store = Storage(parse_endpoint("chdb://" + sys.argv[1]), SchemaNames("otel"))
store_at_version(store, 3)  # a store of the version before the text index
now = time.time_ns()
records = [log_record(f"kept {i}", {"lab.node.id": "ot2_1"}, time_ns=now - i * 10**6) for i in range(300)]
store.insert_otlp("logs", logs_request(records).SerializeToString(), "before-logs")
store.insert_otlp("metrics", metrics_request("old-store").SerializeToString(), "before-metrics")
store.close()
"""
SCHEMA_DUMP = """
import json, re, sys
from datetime import timedelta
from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage, parse_endpoint
from labtel.collector.storage.schema import SchemaNames

fresh = Storage(parse_endpoint("chdb://" + sys.argv[1]), SchemaNames("fresh"))
migrations.migrate(fresh)
migrations.reconcile_ttl(fresh, dict.fromkeys(("logs", "traces", "metrics"), timedelta(0)))  # as `labtel serve` does
tables = {}
for database in ("otel", "fresh"):
    rows = fresh.rows(
        "SELECT name, create_table_query FROM system.tables WHERE database = {db:String} AND name NOT LIKE '%ingest%'",
        parameters={"db": database},
    )
    tables[database] = {
        r["name"]: re.sub(r" UUID '[0-9a-f-]+'", "", r["create_table_query"]).replace(f"{database}.", "db.").replace(f"'{database}'", "'db'")
        for r in rows
    }
print(json.dumps(tables))
"""


def _in_subprocess(script: str, *args: str) -> str:
    """Run a script on an embedded store in a process of its own (chDB opens one path per process)."""
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _serve_until(server: LabtelServer, line: str) -> LabtelServer:
    """`server`'s `labtel serve` started in a subprocess, once its output shows `line` (before it is ready)."""
    server.process = subprocess.Popen(
        [sys.executable, "-m", "labtel.cli", "serve", "--config", str(server.config)],
        cwd=server.workdir,
        stdout=server.log_file.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    while line not in server.output():
        assert server.process.poll() is None, server.output()
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.01)
    return server


def test_a_start_killed_while_migrating_a_populated_store_recovers_at_once(
    tmp_path: Path, server_factory: Callable[..., LabtelServer]
) -> None:
    """kill -9 during `labtel serve` start-up, half way through the migrations of a populated older
    store: the next start finishes them without waiting out the migration lock's lease, keeps the
    data, and ends with the schema of a fresh store."""
    data = tmp_path / "data"
    config = write_config(tmp_path / "otel-config.yaml", data, signals=("logs", "traces", "metrics"))
    _in_subprocess(OLD_STORE, str(data))

    killed = _serve_until(server_factory(config=config, workdir=tmp_path), "applying migration 5")
    assert killed.process is not None
    killed.process.send_signal(9)
    killed.process.wait()
    killed.log_file.unlink()

    started = time.monotonic()
    again = server_factory(config=config, workdir=tmp_path).start(timeout=120)
    assert time.monotonic() - started < 60, again.output()  # not the lease (10 minutes)
    assert "applying migration 10" in again.output()
    assert again.get("/ready").json()["schema_version"] == migrations.latest_version()
    assert len(again.all_events(since="1d", limit=1000)) == 300
    assert again.get("/series", name="hand.sum", service="old-store").json()["series"]
    assert again.stop() == 0

    tables = json.loads(_in_subprocess(SCHEMA_DUMP, str(data)))
    assert "labtel_migration_lock" not in tables["otel"]
    assert tables["otel"] == tables["fresh"]


BIG_OLD_STORE = """
import sys
from labtel.collector.storage.client import Storage, parse_endpoint
from labtel.collector.storage.schema import SchemaNames
from tests.helpers import store_at_version

store = Storage(parse_endpoint("chdb://" + sys.argv[1]), SchemaNames("otel"))
store_at_version(store, 3)  # before the text index: the next start builds indexes over every row
store.command(
    "INSERT INTO otel.otel_logs (Timestamp, ServiceName, Body, LogAttributes) SELECT "
    "fromUnixTimestamp64Nano(toInt64(1780000000000000000 + number * 1000000)), 'big', "
    "concat('pump ', toString(number), ' primed at 21 C'), map('lab.node.id', concat('node-', toString(number % 50))) "
    "FROM numbers(" + sys.argv[2] + ")"
)
store.close()
"""
VERSIONS_AND_ROWS = """
import json, sys
from labtel.collector.storage.client import Storage, parse_endpoint
from labtel.collector.storage.schema import SchemaNames

store = Storage(parse_endpoint("chdb://" + sys.argv[1]), SchemaNames("otel"))
versions = [r["version"] for r in store.rows("SELECT version FROM otel.labtel_schema_migrations ORDER BY version")]
locks = store.command("SELECT count() FROM system.tables WHERE database = 'otel' AND name = 'labtel_migration_lock'")
print(json.dumps({"versions": versions, "rows": store.command("SELECT count() FROM otel.otel_logs"), "locks": locks}))
"""


def test_sigterm_while_migrating_a_big_store_stops_at_once_and_the_next_start_finishes(
    tmp_path: Path, server_factory: Callable[..., LabtelServer]
) -> None:
    """SIGTERM during `labtel serve` start-up, while a migration builds an index over two million
    rows: the process stops within seconds (the statement under way is cancelled) instead of
    first applying every migration, exits 0, and leaves the store at the last recorded migration,
    which the next start goes on from, ending with the schema of a fresh store and every row."""
    data = tmp_path / "data"
    config = write_config(tmp_path / "otel-config.yaml", data)
    _in_subprocess(BIG_OLD_STORE, str(data), "2000000")
    stopped = _serve_until(server_factory(config=config, workdir=tmp_path), "applying migration 4")
    assert stopped.process is not None
    time.sleep(0.3)  # into its statements (building the text index)
    stopped.process.send_signal(signal.SIGTERM)
    terminated = time.monotonic()
    assert stopped.process.wait(timeout=60) == 0, stopped.output()
    assert time.monotonic() - terminated < 10, stopped.output()
    output = " ".join(stopped.output().split())
    assert "labtel: stopped during migration 4 (" in output, output
    assert "runs again at the next start" in output
    assert "applying migration 11" not in output and "is running" not in output  # noqa: PT018
    after_stop = json.loads(_in_subprocess(VERSIONS_AND_ROWS, str(data)))
    assert after_stop == {"versions": [1, 2, 3], "rows": 2_000_000, "locks": 0}
    stopped.log_file.unlink()

    again = server_factory(config=config, workdir=tmp_path).start(timeout=180)
    assert "applying migration 4" in again.output()
    assert again.get("/ready").json()["schema_version"] == migrations.latest_version()
    assert again.get("/events", service="big", q="pump 1999999").json()["events"][0]["body"].startswith("pump 1999999 ")
    assert again.stop() == 0
    finished = json.loads(_in_subprocess(VERSIONS_AND_ROWS, str(data)))
    assert finished == {"versions": list(range(1, migrations.latest_version() + 1)), "rows": 2_000_000, "locks": 0}
    tables = json.loads(_in_subprocess(SCHEMA_DUMP, str(data)))
    assert tables["otel"] == tables["fresh"]


BROKEN_STORE = """
import sys
from labtel.collector.storage import migrations, schema
from labtel.collector.storage.client import Storage, parse_endpoint
from labtel.collector.storage.schema import SchemaNames

store = Storage(parse_endpoint("chdb://" + sys.argv[1]), SchemaNames("otel"))
store.command("CREATE DATABASE otel")
store.command(schema.migrations_table(store.names))
for statement in migrations.MIGRATIONS[0].statements(store.names):
    store.command(statement)
# Version 2 recorded, but not what migration 2 is now (the first labtel's migration 2 made the ingest path).
store.command(f"INSERT INTO {store.names.migrations} (version, name) VALUES (1, 'tables'), (2, 'ingest path v1')")
store.close()
"""


def test_a_migration_the_store_refuses_stops_the_start_with_one_line_naming_it(
    tmp_path: Path, server_factory: Callable[..., LabtelServer]
) -> None:
    data = tmp_path / "data"
    config = write_config(tmp_path / "otel-config.yaml", data)
    _in_subprocess(BROKEN_STORE, str(data))
    server = server_factory(config=config, workdir=tmp_path)
    with pytest.raises(AssertionError, match="exited with 1") as failed:
        server.start()
    output = str(failed.value)
    assert "labtel: cannot start: migration 5 (otel_logs: hourly event counts" in " ".join(output.split())
    assert "the database stays at version 4" in " ".join(output.split())
    assert "ExpiresAt" in output  # ClickHouse's reason
    assert "Traceback" not in output
