"""`POST /sql`: results in every format, parameters, and the sandbox: what it refuses, what it bounds."""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import clickhouse_connect
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clickhouse_connect.driver.exceptions import ClickHouseError
from fastapi.testclient import TestClient

from labtel.collector.config import QueryApiConfig, SqlSandboxConfig
from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage, StorageError
from labtel.query_api.app import create_app
from labtel.query_api.errors import describe
from tests.conftest import make_storage
from tests.helpers import log_record, logs_request

BASE = 1_785_000_000_000_000_000


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[Storage]:
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    records = [
        log_record(
            f"step {i}",
            {"lab.node.id": f"node-{i % 4}", "lab.event.type": "action_complete", "duration_ms": i * 10},
            time_ns=BASE + i * 1_000_000_000,
        )
        for i in range(40)
    ]
    storage.insert_otlp(
        "logs", logs_request(records, resource={"service.name": "sql"}).SerializeToString(), uuid.uuid4().hex
    )
    yield storage
    storage.command(f"DROP DATABASE IF EXISTS `{storage.names.database}`")


@pytest.fixture(scope="module")
def client(store: Storage) -> Iterator[TestClient]:
    config = QueryApiConfig(sql=SqlSandboxConfig(max_result_rows=1000, max_rows_to_read=50_000_000))
    with TestClient(create_app(store, config)) as test_client:
        yield test_client


def sql(client: TestClient, query: str, **kwargs: Any) -> Any:
    return client.post("/sql", json={"sql": query, **kwargs})


PER_NODE = "SELECT NodeId AS node, count() AS n FROM otel_logs GROUP BY node ORDER BY node"


def test_json_is_the_default_with_meta_and_rows(client: TestClient) -> None:
    response = sql(client, PER_NODE)
    assert response.status_code == 200, response.text
    result = response.json()
    assert [m["name"] for m in result["meta"]] == ["node", "n"]
    assert result["data"] == [{"node": f"node-{i}", "n": 10} for i in range(4)]  # 64-bit integers as numbers
    assert result["rows"] == 4


def test_every_format_by_name_and_by_accept(client: TestClient) -> None:
    expected = [(f"node-{i}", 10) for i in range(4)]
    as_csv = sql(client, PER_NODE, format="csv")
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert list(csv.reader(io.StringIO(as_csv.text))) == [["node", "n"], *[[a, str(b)] for a, b in expected]]
    as_tsv = client.post("/sql?format=tsv", json={"sql": PER_NODE})
    assert as_tsv.text.splitlines()[0] == "node\tn"
    ndjson = client.post("/sql", json={"sql": PER_NODE}, headers={"Accept": "application/x-ndjson"})
    assert [tuple(json.loads(line).values()) for line in ndjson.text.splitlines()] == expected
    parquet = client.post("/sql", json={"sql": PER_NODE}, headers={"Accept": "application/vnd.apache.parquet"})
    assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(parquet.content))
    assert list(zip(table["node"].to_pylist(), table["n"].to_pylist(), strict=True)) == expected
    arrow = sql(client, PER_NODE, format="arrow")
    assert pa.ipc.open_file(io.BytesIO(arrow.content)).read_all()["n"].to_pylist() == [10] * 4
    stream = client.post("/sql", json={"sql": PER_NODE}, headers={"Accept": "application/vnd.apache.arrow.stream"})
    assert pa.ipc.open_stream(io.BytesIO(stream.content)).read_all().num_rows == 4
    preferred = client.post("/sql", json={"sql": PER_NODE}, headers={"Accept": "text/html;q=0.9, text/csv;q=0.5"})
    assert preferred.headers["content-type"].startswith("text/csv")  # the first Accept entry it can serve
    assert client.post("/sql", json={"sql": PER_NODE}, headers={"Accept": "image/png"}).status_code == 406
    assert sql(client, PER_NODE, format="xlsx").status_code == 400


def test_plain_text_body_and_parameters(client: TestClient) -> None:
    text = client.post(
        "/sql?format=csv",
        content=b"SELECT count() FROM otel_logs WHERE NodeId = 'node-1'",
        headers={"Content-Type": "text/plain"},
    )
    assert text.status_code == 200, text.text
    assert text.text.splitlines()[1] == "10"
    bound = sql(
        client,
        "SELECT count() AS n FROM otel_logs WHERE NodeId = {node:String} AND toFloat64(LogAttributes['duration_ms']) >= {d:Float64}",
        parameters={"node": "node-2", "d": 200},
    )
    assert bound.json()["data"] == [{"n": 5}]  # node-2: i = 22, 26, 30, 34, 38
    injected = sql(
        client, "SELECT count() AS n FROM otel_logs WHERE NodeId = {node:String}", parameters={"node": "x' OR 1=1 --"}
    )
    assert injected.json()["data"] == [{"n": 0}]


def test_parameters_are_never_pasted_into_the_text(client: TestClient) -> None:
    # Parameters of a query without placeholders are unused, not Python-%-formatted into its text.
    percent = sql(client, "SELECT 'a%' AS x, '%(y)s' AS y", parameters={"y": "' /*"})
    assert percent.status_code == 200, percent.text
    assert percent.json()["data"] == [{"x": "a%", "y": "%(y)s"}]
    mixed = sql(client, "SELECT {y:String} AS y, '100%' AS p", parameters={"y": "v"})
    assert mixed.json()["data"] == [{"y": "v", "p": "100%"}]
    for name in ("$x$", "a b", "x}", ""):
        refused = sql(client, "SELECT '$x$' AS x", parameters={name: "v"})
        assert refused.status_code == 400, (name, refused.text)
        assert "placeholder name" in refused.json()["detail"]


def test_schema_discovery(client: TestClient) -> None:
    tables = client.get("/sql/tables").json()
    names = [t["table"] for t in tables["tables"]]
    assert {"otel_logs", "otel_traces"} <= set(names)
    assert not any("_ingest_" in n or n.endswith("_mv") for n in names)
    assert not {"labtel_schema_migrations", "labtel_parts"} & set(names)
    logs = next(t for t in tables["tables"] if t["table"] == "otel_logs")
    assert {"Timestamp", "Body", "LogAttributes", "NodeId"} <= {c["name"] for c in logs["columns"]}
    described = sql(client, "DESCRIBE TABLE otel_logs", format="ndjson")
    assert described.status_code == 200
    assert "EventType" in described.text


REFUSED = [
    # statements other than SELECT
    "DROP TABLE otel_logs",
    "TRUNCATE TABLE otel_logs",
    "ALTER TABLE otel_logs DELETE WHERE 1",
    "CREATE TABLE stolen (x Int8) ENGINE = Memory",
    "INSERT INTO otel_logs (Body) VALUES ('forged')",
    "SET readonly = 0",
    "SYSTEM DROP MARK CACHE",
    "KILL QUERY WHERE 1",
    "GRANT ALL ON *.* TO default",
    "OPTIMIZE TABLE otel_logs FINAL",
    "SHOW TABLES FROM system",
    "EXPLAIN SELECT * FROM system.users",
    # the query's own settings, format and output file
    "SELECT 1 SETTINGS readonly = 0",
    "SELECT count() FROM otel_logs SETTINGS max_rows_to_read = 0, max_execution_time = 0",
    "SELECT * FROM (SELECT 1 SETTINGS readonly = 0)",
    "SELECT 1 FORMAT Vertical",
    "SELECT 1 INTO OUTFILE '{outfile}'",
    "DESCRIBE TABLE otel_logs INTO OUTFILE '{outfile}'",
    "DESCRIBE (SELECT 'line' AS `x`) INTO OUTFILE '{outfile}' APPEND",
    "DESCRIBE TABLE otel_logs FORMAT Vertical",
    # system tables outside the allow-list, and other databases
    "SELECT * FROM system.tables",
    "SELECT * FROM system.processes",
    "SELECT name FROM system.users",
    "SELECT * FROM `system`.`settings`",
    "SELECT * FROM SYSTEM.TABLES",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM INFORMATION_SCHEMA.COLUMNS",
    "SELECT * FROM default.anything",
    "SELECT 1 WHERE 1 IN system.tables",
    "SELECT globalNotNullIn('default', system.users)",
    "SELECT nullIn('default', system.users) OR notNullIn(1, system.users) OR globalNullIn(1, system.tables)",
    "SELECT * FROM otel_logs AS l JOIN system.parts AS p ON l.Body = p.name",
    "WITH x AS (SELECT * FROM system.grants) SELECT * FROM x",
    "SELECT 1 UNION ALL SELECT 2 FROM system.query_log",
    # table functions that reach outside, and functions that read files or dictionaries
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT * FROM FILE('/etc/passwd', 'LineAsString')",
    "SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')",
    "SELECT * FROM s3('http://127.0.0.1:9/b/k.csv')",
    "SELECT * FROM remote('127.0.0.1', system.one)",
    "SELECT * FROM remoteSecure('127.0.0.1', system.one)",
    "SELECT * FROM cluster('default', system.one)",
    "SELECT * FROM mysql('127.0.0.1:3306', 'db', 't', 'u', 'p')",
    "SELECT * FROM postgresql('127.0.0.1:5432', 'db', 't', 'u', 'p')",
    "SELECT * FROM executable('id', 'TSV', 'x String')",
    "SELECT * FROM merge('system', '.*')",
    "SELECT * FROM view(SELECT * FROM system.tables)",
    "SELECT * FROM (SELECT * FROM file('/etc/hostname', 'LineAsString'))",
    "SELECT file('/etc/passwd')",
    "SELECT dictGet('secrets', 'value', 1)",
    "SELECT DICTGETSTRING('secrets', 'value', 1)",
    "SELECT joinGet('db.t', 'v', 1)",
    "SELECT * APPLY(file) FROM values('p String', '/etc/hostname')",
    "SELECT COLUMNS('p') APPLY file FROM values('p String', '/etc/hostname')",
    "SELECT * APPLY(x -> file(x)) FROM values('p String', '/etc/hostname')",
    "SELECT * EXCEPT(q) APPLY(x -> dictGet('secrets', 'value', x)) FROM values('p String, q String', ('a', 'b'))",
    "SELECT showCertificate()",
    "SELECT getServerPort('tcp_port')",
    "SELECT getSetting('max_memory_usage')",
    "SELECT GETSETTING('readonly')",
    "SELECT getSettingOrDefault('max_threads', 0)",
    # the dashboards' view over system.parts (host names, every table's parts)
    "SELECT * FROM labtel_parts",
    "SELECT node FROM {database}.labtel_parts",
]


@pytest.mark.parametrize("query", REFUSED)
def test_the_sandbox_refuses(client: TestClient, store: Storage, query: str, tmp_path: Path) -> None:
    outfile = tmp_path / "stolen.csv"
    response = sql(client, query.format(outfile=outfile, database=store.names.database))
    assert response.status_code == 403, (query, response.status_code, response.text)
    assert response.json()["detail"].startswith("not allowed: ")
    assert not outfile.exists()
    assert store.command(f"SELECT count() FROM {store.names.logs}") == 40


@pytest.mark.parametrize(
    "query",
    [
        "SELECT 1; DROP TABLE otel_logs",
        "SELECT 1 -- a comment\n; DROP TABLE otel_logs",
        "SELECT 1 /* ; */ ; TRUNCATE TABLE otel_logs",
        "SELECT count() FROM otel_logs;\nINSERT INTO otel_logs (Body) VALUES ('x')",
    ],
)
def test_one_statement_only(client: TestClient, store: Storage, query: str) -> None:
    response = sql(client, query)
    assert response.status_code == 400
    assert "Multi-statements" in response.json()["detail"]
    assert store.command(f"SELECT count() FROM {store.names.logs}") == 40


def test_comments_and_semicolons_inside_strings_are_just_text(client: TestClient) -> None:
    response = sql(client, "SELECT 'a; DROP TABLE otel_logs' AS s /* ; */ -- trailing\n;")
    assert response.status_code == 200, response.text
    assert response.json()["data"] == [{"s": "a; DROP TABLE otel_logs"}]


def test_harmless_generators_and_reference_tables_are_allowed(client: TestClient) -> None:
    assert sql(client, "SELECT sum(number) AS s FROM numbers(10)").json()["data"] == [{"s": 45}]
    assert sql(client, "SELECT count() AS n FROM system.one").json()["data"] == [{"n": 1}]
    assert sql(client, "SELECT count() > 100 AS many FROM system.functions").json()["data"] == [{"many": True}]
    with_cte = sql(
        client, "WITH recent AS (SELECT * FROM otel_logs WHERE NodeId = 'node-0') SELECT count() AS n FROM recent"
    )
    assert with_cte.json()["data"] == [{"n": 10}]
    qualified = sql(client, f"SELECT count() AS n FROM `{client.app.state.storage.names.database}`.otel_logs")  # type: ignore[attr-defined]
    assert qualified.json()["data"] == [{"n": 40}]


def test_limits_bound_rows_time_and_memory(store: Storage) -> None:
    config = QueryApiConfig(
        sql=SqlSandboxConfig(
            max_result_rows=100,
            max_result_bytes=1024 * 1024,
            max_rows_to_read=20_000_000,
            max_memory_usage=64 * 1024 * 1024,
        )
    )
    with TestClient(create_app(store, config)) as tight:
        too_many = sql(tight, "SELECT number FROM numbers(1000)")
        assert too_many.status_code == 413
        assert "exceeds a limit" in too_many.json()["detail"]
        huge_scan = sql(tight, "SELECT count() FROM numbers(1000000000000)")
        assert huge_scan.status_code == 413
        unbounded = sql(tight, "SELECT count() FROM system.numbers")
        assert unbounded.status_code == 413
        memory = sql(tight, "SELECT length(groupArray(toString(number))) FROM numbers(10000000)")
        assert memory.status_code == 413
        # ClickHouse counts a constant column once per block: the formatted result is checked too
        repeated = sql(tight, "SELECT number, repeat('a', 100000) AS text FROM numbers(90)")
        assert repeated.status_code == 413, repeated.status_code
        assert "more than max_result_bytes" in repeated.json()["detail"]
        # A failed query leaves nothing behind for the next one on the same connection.
        assert sql(tight, "SELECT 7 AS x", format="csv").text == '"x"\n7\n'
    slow = QueryApiConfig(sql=SqlSandboxConfig(timeout="300ms"))  # type: ignore[arg-type]
    with TestClient(create_app(store, slow)) as impatient:
        response = sql(impatient, "SELECT count() FROM numbers_mt(1500000000) WHERE sipHash64(number) % 7 = 3")
        assert response.status_code == 408, response.text
        assert "too long" in response.json()["detail"]


def test_describe_runs_within_the_limits_too(store: Storage) -> None:
    # Describing a subquery evaluates its scalar subqueries: the limits bound them as any SELECT.
    config = QueryApiConfig(sql=SqlSandboxConfig(max_rows_to_read=1_000_000))
    with TestClient(create_app(store, config)) as tight:
        scalar = sql(tight, "DESCRIBE (SELECT (SELECT count() FROM numbers_mt(100000000) WHERE number % 7 = 3) AS x)")
        assert scalar.status_code == 413, scalar.text
        assert "exceeds a limit" in scalar.json()["detail"]
        described = sql(tight, "DESCRIBE TABLE otel_logs", format="ndjson")
        assert described.status_code == 200, described.text
        assert "EventType" in described.text


def test_queries_beyond_max_concurrent_queries_are_429(store: Storage) -> None:
    # Each query may use max_memory_usage: only so many run at once, the others are told to retry.
    config = QueryApiConfig(sql=SqlSandboxConfig(max_concurrent_queries=2, timeout="20s"))  # type: ignore[arg-type]
    slow = "SELECT count() FROM numbers_mt(50) WHERE sleepEachRow(0.05) = 0"  # 2.5 s
    with TestClient(create_app(store, config)) as limited, ThreadPoolExecutor(3) as pool:
        running = [pool.submit(sql, limited, slow) for _ in range(2)]
        time.sleep(1.0)
        refused = sql(limited, "SELECT 1 AS x")
        assert refused.status_code == 429, refused.text
        assert refused.headers["Retry-After"] == "1"
        assert "max_concurrent_queries" in refused.json()["detail"]
        assert [future.result().status_code for future in running] == [200, 200]
        after = sql(limited, "SELECT 1 AS x")  # the slots are free again, after errors too
        assert after.json()["data"] == [{"x": 1}]
        assert sql(limited, "SELECT intDiv(1, 0)").status_code == 400
        assert sql(limited, "SELECT * FROM system.users").status_code == 403
        assert [sql(limited, "SELECT 2 AS x").status_code for _ in range(3)] == [200, 200, 200]


def test_bad_queries_are_400_with_the_reason(client: TestClient) -> None:
    syntax = sql(client, "SELEC count() FROM otel_logs")
    assert syntax.status_code == 400
    assert "Syntax error" in syntax.json()["detail"]
    column = sql(client, "SELECT no_such_column FROM otel_logs")
    assert column.status_code == 400
    assert "no_such_column" in column.json()["detail"]
    table = sql(client, "SELECT * FROM no_such_table")
    assert table.status_code == 400
    assert sql(client, "   ").status_code == 400
    assert client.post("/sql", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    assert client.post("/sql", json={"query": "SELECT 1"}).status_code == 400
    assert client.post("/sql", content=b"SELECT '\xff'", headers={"Content-Type": "text/plain"}).status_code == 400


@pytest.mark.parametrize(
    ("query", "fmt", "reason"),
    [
        ("SELECT intDiv(1, 0)", None, "Division by zero"),
        ("SELECT 1 AS a, 2 AS a", None, "Multiple expressions"),
        ("SELECT quantile(2)(number) FROM numbers(3)", None, "Quantile level"),
        ("SELECT toFixedString('abc', 2)", None, "String too long"),
        ("SELECT toDecimal32(1e20, 2)", None, "Decimal convert overflow"),
        ("SELECT repeat('a', 10000000000)", None, "Too large string size"),
        ("SELECT 1 WHERE 'abc'", None, "Invalid type for filter"),
        ("SELECT count() FROM otel_logs FINAL", None, "FINAL"),
        ("SELECT count() FROM otel_logs SAMPLE 0.1", None, "sampling"),
        ("SELECT NULL AS x", "parquet", "Parquet"),
        ("SELEC 1", None, "Syntax error"),
    ],
)
def test_errors_of_the_query_itself_are_400_without_the_sandbox_internals(
    client: TestClient, query: str, fmt: str | None, reason: str
) -> None:
    response = sql(client, query, **({"format": fmt} if fmt else {}))
    assert response.status_code == 400, response.text
    assert "Retry-After" not in response.headers
    detail = response.json()["detail"]
    assert reason in detail
    for internal in ("SETTINGS readonly", "max_result_rows", "formatQuery", "(version", "storage error"):
        assert internal not in detail
    assert not detail.endswith(")"), detail  # no "(ILLEGAL_DIVISION)" / "(UNKNOWN_TYPE)" trailers


def test_storage_that_cannot_answer_is_still_503() -> None:
    with pytest.raises(ClickHouseError) as refused:  # a real connection refused, from the real client
        clickhouse_connect.get_client(host="127.0.0.1", port=1, connect_timeout=2)
    assert describe(refused.value)[0] == 503
    assert describe(StorageError("cannot open embedded ClickHouse"))[0] == 503
    overloaded = (
        "Code: 202. DB::Exception: Too many simultaneous queries. Maximum: 100. (TOO_MANY_SIMULTANEOUS_QUERIES)"
    )
    assert describe(ClickHouseError(overloaded)) == (
        503,
        "storage error, try again: Too many simultaneous queries. Maximum: 100.",
    )
