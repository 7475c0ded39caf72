"""`GET /export`: CSV, NDJSON and Parquet with the documented columns, the same events as `/events`,
and a large range streamed window by window in bounded memory."""

from __future__ import annotations

import csv
import gc
import io
import itertools
import json
import threading
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from labtel.collector.config import ExportConfig, QueryApiConfig
from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage
from labtel.query_api.app import create_app
from labtel.query_api.events import EventFilter
from labtel.query_api.export import EXPORT_COLUMNS, export_chunks, plan_windows
from tests.conftest import make_storage
from tests.helpers import LabtelServer, log_record, logs_request, serving, wait_for

BASE = 1_783_000_000_000_000_000
NAMES = [name for name, _, _ in EXPORT_COLUMNS]


def generate(storage: Storage, rows: int, start_ns: int, step_ns: int, service: str) -> None:
    """Insert `rows` events inside ClickHouse (one every `step_ns`), with attributes and resource."""
    storage.command(
        f"""INSERT INTO {storage.names.logs}
        (Timestamp, ObservedTimestamp, SeverityText, SeverityNumber, ServiceName, Body,
         ResourceAttributes, LogAttributes)
        SELECT fromUnixTimestamp64Nano(toInt64({start_ns} + number * {step_ns})) AS t, t,
               ['INFO', 'WARN', 'ERROR'][number % 3 + 1], [9, 13, 17][number % 3 + 1], '{service}',
               concat('reading ', toString(number), ' of gauge "P1", ok'),
               map('service.name', '{service}', 'host.name', 'bench-host'),
               map('lab.node.id', concat('node-', toString(number % 7)), 'lab.event.type', 'device_io',
                   'seq', toString(number), 'note', 'comma, "quote" and\nnewline')
        FROM numbers({rows})"""
    )


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[Storage]:
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    records = [
        log_record(
            f"event {i}",
            {"lab.node.id": f"n{i % 2}", "lab.event.type": "action_complete", "duration_ms": i},
            time_ns=BASE + i * 1_000_000,
            severity=9 if i % 5 else 17,
        )
        for i in range(30)
    ]
    storage.insert_otlp(
        "logs", logs_request(records, resource={"service.name": "small"}).SerializeToString(), uuid.uuid4().hex
    )
    yield storage
    storage.command(f"DROP DATABASE IF EXISTS `{storage.names.database}`")


@pytest.fixture(scope="module")
def client(store: Storage) -> Iterator[TestClient]:
    with TestClient(create_app(store, QueryApiConfig(export=ExportConfig(chunk_rows=7)))) as test_client:
        yield test_client


def events_oldest_first(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/events", params={"limit": 1000, "order": "asc", **params})
    assert response.status_code == 200
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def test_csv_has_the_documented_columns_and_the_events_of_the_filter(client: TestClient) -> None:
    response = client.get("/export", params={"service": "small", "node": "n1", "format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].startswith('attachment; filename="labtel-events-')
    rows = list(csv.DictReader(io.StringIO(response.text)))
    expected = events_oldest_first(client, service="small", node="n1")
    assert len(rows) == 15 == len(expected)
    assert list(rows[0]) == NAMES
    for row, event in zip(rows, expected, strict=True):
        assert row["event_id"] == event["event_id"]
        assert row["timestamp"] == event["timestamp"]
        assert int(row["time_unix_nano"]) == event["time_unix_nano"]
        assert row["body"] == event["body"]
        assert json.loads(row["attributes"]) == event["attributes"]
        assert json.loads(row["resource"]) == event["resource"]
        assert int(row["severity_number"]) == event["severity_number"]


def test_ndjson_and_parquet_hold_the_same_events(client: TestClient) -> None:
    expected = events_oldest_first(client, service="small", severity_min="error")
    ndjson = client.get("/export", params={"service": "small", "severity_min": "error", "format": "ndjson"})
    lines = [json.loads(line) for line in ndjson.text.splitlines()]
    assert [line["event_id"] for line in lines] == [e["event_id"] for e in expected]
    assert lines[0]["attributes"] == expected[0]["attributes"]
    assert list(lines[0]) == NAMES
    parquet = client.get(
        "/export",
        params={"service": "small", "severity_min": "error"},
        headers={"Accept": "application/vnd.apache.parquet"},
    )
    assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.column_names == NAMES
    assert table["event_id"].to_pylist() == [e["event_id"] for e in expected]
    assert table["time_unix_nano"].to_pylist() == [e["time_unix_nano"] for e in expected]
    assert pa.types.is_timestamp(table.schema.field("timestamp").type)
    assert dict(table["attributes"][0].as_py()) == expected[0]["attributes"]
    # ClickHouse sends its LowCardinality columns and the maps' keys as dictionaries; the file
    # holds plain strings, whichever reader opens it
    for name in ("severity_text", "service_name", "event_type", "node_id", "scope_version"):
        assert table.schema.field(name).type == pa.string(), name
    attributes = table.schema.field("attributes").type
    assert (attributes.key_type, attributes.item_type) == (pa.string(), pa.string())
    assert table["node_id"].to_pylist() == [e["node_id"] for e in expected]
    assert table["service_name"].to_pylist() == ["small"] * len(expected)


def test_limits_empty_results_and_bad_formats(client: TestClient) -> None:
    limited = client.get("/export", params={"service": "small", "format": "ndjson", "limit": 10})
    bodies = [json.loads(line)["body"] for line in limited.text.splitlines()]
    assert bodies == [f"event {i}" for i in range(10)]
    empty_csv = client.get("/export", params={"service": "nobody", "format": "csv"})
    assert empty_csv.text.splitlines() == [",".join(f'"{n}"' for n in NAMES)]
    empty_parquet = client.get("/export", params={"service": "nobody", "format": "parquet"})
    table = pq.read_table(io.BytesIO(empty_parquet.content))
    assert table.num_rows == 0
    assert table.column_names == NAMES
    assert client.get("/export", params={"service": "nobody", "format": "ndjson"}).content == b""
    assert client.get("/export", params={"format": "xlsx"}).status_code == 400
    assert client.get("/export", headers={"Accept": "image/png"}).status_code == 406
    assert client.get("/export", params={"since": "soon"}).status_code == 400


def test_csv_keeps_every_text_as_sent(client: TestClient, store: Storage) -> None:
    # Quoted, UTF-8 without a byte-order mark, formulas left as they are (the README says so).
    bodies = ['=HYPERLINK("http://x","y")', "+1", "-2+3", "@SUM(A1)", "Müller 温度 ✔️", "cr\rlf\r\nend", 'a,"b"']
    records = [log_record(body, {"cell": body}, time_ns=BASE + 10**9 + i) for i, body in enumerate(bodies)]
    store.insert_otlp(
        "logs", logs_request(records, resource={"service.name": "cells"}).SerializeToString(), uuid.uuid4().hex
    )
    response = client.get("/export", params={"service": "cells", "format": "csv"})
    assert response.content.startswith(b'"event_id",')
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8"), newline="")))
    assert [row["body"] for row in rows] == bodies
    assert [json.loads(row["attributes"])["cell"] for row in rows] == bodies


def test_accept_is_negotiated_as_http_has_it(client: TestClient) -> None:
    def served(accept: str) -> str:
        response = client.get("/export", params={"service": "nobody"}, headers={"Accept": accept})
        assert response.status_code == 200, (accept, response.text)
        return response.headers["content-type"].split(";")[0]

    assert served("text/*") == "text/csv"  # a range of types, not only one type or */*
    assert served("application/*") == "application/x-ndjson"
    assert served("text/csv;q=0, */*") == "application/x-ndjson"  # CSV refused, anything else welcome
    assert served("*/*, application/vnd.apache.parquet") == "application/vnd.apache.parquet"  # the type named
    assert served("text/csv;q=0.5, application/x-ndjson;q=0.8") == "application/x-ndjson"
    assert served("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8") == "text/csv"  # a browser
    assert served("image/png, text/csv;q=0.1") == "text/csv"
    refused = client.get("/export", headers={"Accept": "text/csv;q=0, application/json"})
    assert refused.status_code == 406
    assert "formats: csv, ndjson, parquet" in refused.json()["detail"]
    overridden = client.get("/export", params={"service": "nobody", "format": "ndjson"}, headers={"Accept": "text/csv"})
    assert overridden.headers["content-type"] == "application/x-ndjson"
    sql = client.post("/sql", json={"sql": "SELECT 1 AS one"}, headers={"Accept": "text/*"})
    assert sql.headers["content-type"].startswith("text/csv")
    assert sql.text.splitlines() == ['"one"', "1"]


def test_rows_stored_during_an_export_do_not_carry_it_past_its_limit(store: Storage) -> None:
    """Events stored into a window after the export planned it (a write-ahead log replayed while
    it runs) are not sent beyond `limit`."""
    service = f"late-{uuid.uuid4().hex[:6]}"
    generate(store, 100, BASE + 7 * 10**12, 1_000_000, service)
    chunks = export_chunks(store, EventFilter(service=service), "csv", 10_000, limit=150)
    header = next(chunks)  # the export is planned (one window of 100 events), nothing read yet
    generate(store, 100, BASE + 7 * 10**12 + 500_000, 1_000_000, service)  # into the same window
    rows = list(csv.reader(io.StringIO(b"".join([header, *chunks]).decode())))[1:]
    assert len(rows) == 100  # the window's planned events, not 200 (nor past the limit)


def test_exports_over_max_rows_are_refused_naming_the_limit(store: Storage) -> None:
    with TestClient(create_app(store, QueryApiConfig(export=ExportConfig(chunk_rows=7, max_rows=20)))) as capped:
        refused = capped.get("/export", params={"service": "small", "format": "ndjson"})
        assert refused.status_code == 413
        assert "selects 30 events, more than export.max_rows (20)" in refused.json()["detail"]
        assert capped.get("/export", params={"service": "small", "format": "ndjson", "limit": 25}).status_code == 413
        within = capped.get("/export", params={"service": "small", "format": "ndjson", "limit": 20})
        assert len(within.text.splitlines()) == 20
        narrowed = capped.get("/export", params={"service": "small", "format": "ndjson", "node": "n0"})
        assert len(narrowed.text.splitlines()) == 15


def test_windows_cover_every_event_and_split_dense_stretches(store: Storage) -> None:
    # 5,000 events within 5 ms: one five-minute bucket holds them all, so planning refines it.
    generate(store, 5_000, BASE + 10**12, 1_000, "dense")
    flt = EventFilter(service="dense")
    windows = plan_windows(store, flt, 1_000)
    assert sum(w.rows for w in windows) == 5_000
    assert all(w.rows <= 1_000 for w in windows)
    assert all(a.end_ns <= b.start_ns for a, b in itertools.pairwise(windows))


def test_a_large_range_streams_in_bounded_memory(store: Storage, tmp_path: Path) -> None:
    total, chunk_rows = 200_000, 10_000
    generate(store, total, BASE + 2 * 10**12, 15_000_000, "bulk")  # 200k events over 50 minutes
    flt = EventFilter(service="bulk")
    for fmt in ("csv", "parquet"):
        path = tmp_path / f"export.{fmt}"
        chunks = 0
        with path.open("wb") as out:
            tracemalloc.start()
            pa_peak = 0
            for chunk in export_chunks(store, flt, fmt, chunk_rows):
                chunks += 1
                out.write(chunk)
                pa_peak = max(pa_peak, pa.total_allocated_bytes())
            _, py_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        size = path.stat().st_size
        assert chunks >= total // chunk_rows
        # Python and Arrow hold a few windows at most (one is ~4 MB of CSV), never the whole export
        # (82 MB as CSV).
        assert py_peak < 24 * 1024 * 1024, (fmt, py_peak, size)
        assert pa_peak < 64 * 1024 * 1024, (fmt, pa_peak, size)
        if fmt == "csv":
            with path.open(newline="", encoding="utf-8") as text:
                rows = list(csv.DictReader(text))
            sequence = [int(json.loads(r["attributes"])["seq"]) for r in rows]
            assert rows[0]["body"] == 'reading 0 of gauge "P1", ok'
            assert json.loads(rows[0]["attributes"])["note"] == 'comma, "quote" and\nnewline'
        else:
            table = pq.read_table(path)
            sequence = [int(dict(m)["seq"]) for m in table["attributes"].to_pylist()]
        assert sequence == list(range(total))  # all of them, once, oldest first


def test_export_streams_from_a_real_server(server: LabtelServer) -> None:
    records = [log_record(f"served {i}", {"lab.node.id": "ot2"}, time_ns=BASE + i) for i in range(500)]
    httpx.post(
        f"{server.http}/v1/logs",
        content=logs_request(records, resource={"service.name": "served"}).SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    ).raise_for_status()
    lines: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{server.api}/export", params={"service": "served", "format": "ndjson"}, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers.get("transfer-encoding") == "chunked"
        lines += [json.loads(line) for line in r.iter_lines() if line]
    assert [line["body"] for line in lines] == [f"served {i}" for i in range(500)]


def _export_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("labtel-export")]


def test_a_client_leaving_mid_export_frees_its_windows_at_once(store: Storage) -> None:
    # A client that reads the first bytes of a large export and hangs up leaves no prefetch
    # thread, no window held in memory and no query running (the export was closed when the
    # response ended, not whenever the garbage collector would find it: the collector is off here).
    generate(store, 120_000, BASE + 3 * 10**12, 2_000_000, "leaving")
    app = create_app(store, QueryApiConfig(export=ExportConfig(chunk_rows=5_000)))
    gc.disable()
    try:
        with serving(app) as url:
            for fmt in ("csv", "parquet"):
                with httpx.stream("GET", url, params={"service": "leaving", "format": fmt}, timeout=30) as response:
                    assert response.status_code == 200
                    _read_some(response)
                    assert _export_threads()  # windows are being read ahead
                wait_for(lambda: not _export_threads(), timeout=10, what=f"the {fmt} export's threads end")
                running = store.rows(
                    "SELECT query FROM system.processes WHERE query LIKE '%window_lo%' "
                    "AND query NOT LIKE '%system.processes%'"
                )
                assert running == []
    finally:
        gc.enable()


def _read_some(response: httpx.Response) -> Iterator[bytes]:
    """Read a streaming export past CSV's header, into its windows; the rest of it (the caller
    keeps it while the export is to go on: dropping it closes the connection)."""
    chunks = response.iter_raw()
    received = 0
    for chunk in chunks:
        received += len(chunk)
        if received > 1 << 20:
            break
    return chunks


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # closed while a chunk was made
def test_exports_beyond_max_concurrent_are_a_429_and_a_slot_is_given_back_however_an_export_ends(
    store: Storage,
) -> None:
    # Each export holds up to three windows and a core: past `max_concurrent` a caller is told to
    # come back (429, Retry-After), and every way an export ends (done, hung up, refused as too
    # large) gives its slot back.
    generate(store, 120_000, BASE + 4 * 10**12, 2_000_000, "crowded")
    app = create_app(store, QueryApiConfig(export=ExportConfig(chunk_rows=5_000, max_rows=100_000, max_concurrent=1)))
    params = {"service": "crowded", "format": "csv", "limit": "100000"}
    with serving(app) as url:
        with httpx.stream("GET", url, params=params, timeout=30) as streaming:
            assert streaming.status_code == 200
            rest = _read_some(streaming)
            busy = httpx.get(url, params=params, timeout=30)
            assert busy.status_code == 429
            assert busy.headers["retry-after"] == "5"
            assert "1 exports are streaming (extensions.query_api.export.max_concurrent)" in busy.json()["detail"]
            assert sum(len(chunk) for chunk in rest) > 30 << 20  # the first export went on to its end

        def answer_once_free(query: dict[str, str], what: str) -> httpx.Response:
            """The first answer to `query` that is not a 429: a slot comes back as its response
            ends, which the server sees just after the client."""
            answers: list[httpx.Response] = []
            wait_for(
                lambda: answers.append(httpx.get(url, params=query, timeout=30)) or answers[-1].status_code != 429,
                timeout=10,
                what=what,
            )
            return answers[-1]

        too_large = answer_once_free({"service": "crowded"}, "the slot of the export that ended")
        assert too_large.status_code == 413  # more than max_rows
        done = httpx.get(url, params=params | {"limit": "10"}, timeout=30)  # the 413 gave its slot back
        assert done.status_code == 200
        assert len(done.text.splitlines()) == 11
        assert answer_once_free({"service": "crowded"}, "the slot of the export done").status_code == 413
        with httpx.stream("GET", url, params=params, timeout=30) as leaving:
            assert leaving.status_code == 200
            _read_some(leaving)  # and hang up
        assert answer_once_free(params | {"limit": "10"}, "the slot of the export the client left").status_code == 200
