"""Nothing acknowledged is lost: the write-ahead log, storage outages, backpressure, kill -9."""

from __future__ import annotations

import collections
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from labtel.collector.config import ClickHouseExporterConfig
from labtel.collector.exporters.clickhouse import ClickHouseExporter
from labtel.collector.otlp.signals import LOGS
from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage, StorageError
from labtel.collector.storage.errors import error_code, transient
from labtel.collector.telemetry import REGISTRY
from labtel.collector.wal import WALEntry, WriteAheadLog
from tests.conftest import make_storage
from tests.helpers import LabtelServer, log_record, logs_request, wait_for, write_config, wrong_wire_type_request

EXPORT = LOGS.grpc_method


def marked_request(marker: str, records: int, size: int = 20) -> bytes:
    request = logs_request(
        [log_record(f"{marker} #{i} " + "x" * size, {"i": i}) for i in range(records)],
        resource={"service.name": "durability", "test.request": marker},
    )
    return request.SerializeToString()


def export(server: LabtelServer, data: bytes, timeout: float = 30) -> grpc.RpcError | None:
    with grpc.insecure_channel(server.grpc) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        try:
            call(data, timeout=timeout)
        except grpc.RpcError as error:
            return error
    return None


def stored_per_request(server: LabtelServer) -> collections.Counter[str]:
    """How many records of each marked request the API returns."""
    return collections.Counter(
        e["resource"]["test.request"] for e in server.all_events(service="durability", limit=1000)
    )


def metric(server: LabtelServer, name: str) -> float:
    return server.metric(name)


@pytest.fixture
def faulty(tmp_path: Path, server_factory: Callable[..., LabtelServer]) -> Callable[..., LabtelServer]:
    """A labtel server whose inserts fail while `tmp_path/fault` exists."""

    def make(**config: Any) -> LabtelServer:
        path = write_config(tmp_path / "otel-config.yaml", tmp_path / "data", **config)
        return server_factory(
            config=path, workdir=tmp_path, env={"LABTEL_FAULT_INJECTION_FILE": str(tmp_path / "fault")}
        )

    return make


def test_outage_is_acknowledged_from_the_wal_and_replayed_once_after_restart(
    tmp_path: Path, faulty: Callable[..., LabtelServer]
) -> None:
    fault = tmp_path / "fault"
    fault.touch()
    server = faulty().start()
    markers = [f"outage-{i}" for i in range(12)]
    for marker in markers:
        assert export(server, marked_request(marker, 50)) is None  # acknowledged: fsynced to the WAL
    assert metric(server, "labtel_wal_batches") >= 1
    assert metric(server, 'labtel_storage_up{exporter="clickhouse"}') == 0
    assert stored_per_request(server) == {}
    assert server.stop() == 0
    assert list((tmp_path / "wal" / "clickhouse").glob("*.wal"))

    fault.unlink()
    server.start()
    wait_for(lambda: metric(server, "labtel_wal_batches") == 0, what="the WAL to drain")
    assert stored_per_request(server) == dict.fromkeys(markers, 50)
    assert not list((tmp_path / "wal" / "clickhouse").glob("*.wal"))


def test_storage_coming_back_drains_the_wal_without_a_restart(
    tmp_path: Path, faulty: Callable[..., LabtelServer]
) -> None:
    fault = tmp_path / "fault"
    fault.touch()
    server = faulty().start()
    for i in range(5):
        assert export(server, marked_request(f"live-{i}", 30)) is None
    fault.unlink()
    wait_for(lambda: metric(server, "labtel_wal_batches") == 0, what="the WAL to drain")
    assert stored_per_request(server) == {f"live-{i}": 30 for i in range(5)}
    assert (
        metric(server, 'labtel_exporter_stored_records_total{exporter="clickhouse",path="replay",signal="logs"}') == 150
    )


def test_replay_recognizes_batches_that_already_landed(chdb_path: Path, tmp_path: Path) -> None:
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    wal = WriteAheadLog(tmp_path / "wal", 1 << 30)
    exporter = ClickHouseExporter("clickhouse", ClickHouseExporterConfig(), storage, wal)
    first, second = marked_request("a", 10), marked_request("b", 15)

    # Landed wholly before a crash (the log entry was not yet removed): nothing is added.
    storage.insert_otlp("logs", first + second, "landed")
    exporter.replay(wal.append("landed", "logs", [first, second], 25))
    # Landed partly (one partition of two, say): the rows are replaced, not doubled.
    storage.insert_otlp("logs", first, "partial")
    exporter.replay(wal.append("partial", "logs", [first, second], 25))
    # Never landed.
    exporter.replay(wal.append("lost", "logs", [first, second], 25))

    for batch in ("landed", "partial", "lost"):
        assert storage.batch_rows("logs", batch) == 25
    assert len(wal) == 0

    broken = wal.append("broken", "logs", [first], 10)
    broken.path.write_bytes(broken.path.read_bytes()[:-5])
    exporter.replay(broken)
    assert len(wal) == 0
    assert (tmp_path / "wal" / "quarantine" / broken.path.name).exists()


def replayer(storage: Storage, wal: WriteAheadLog) -> ClickHouseExporter:
    """An exporter replaying `wal`, named apart so that its self-metrics are its own."""
    return ClickHouseExporter(f"replay-{uuid.uuid4().hex[:8]}", ClickHouseExporterConfig(), storage, wal)


def quarantined(exporter: ClickHouseExporter) -> float:
    return REGISTRY.get_sample_value("labtel_wal_quarantined_total", {"exporter": exporter.name}) or 0.0


def stored_requests(storage: Storage, batch_id: str) -> dict[str, int]:
    """Rows of a batch per marked request (the test.request resource attribute)."""
    rows = storage.rows(
        f"SELECT ResourceAttributes['test.request'] AS marker, count() AS n FROM {storage.names.logs} "
        "WHERE IngestBatch = {b:String} GROUP BY marker",
        parameters={"b": batch_id},
    )
    return {row["marker"]: row["n"] for row in rows}


def read_quarantined(path: Path) -> tuple[dict[str, Any], list[bytes]]:
    """A quarantined WAL file's header and requests (checksum verified)."""
    header = orjson.loads(path.read_bytes().split(b"\n", 2)[1])
    entry = WriteAheadLog._read_header(path)
    return header, entry.requests(entry.read())


GOOD = {"good-a": 10, "good-b": 15, "good-c": 5}
REFUSED = wrong_wire_type_request("storage refuses this one")  # passes Python's checks, not ClickHouse's


def mixed_batch(wal: WriteAheadLog, batch_id: str) -> WALEntry:
    """A logged batch of four requests, the third of which storage refuses."""
    a, b, c = (marked_request(marker, n) for marker, n in GOOD.items())
    return wal.append(batch_id, "logs", [a, b, REFUSED, c], sum(GOOD.values()) + 1)


def test_replay_sets_aside_only_the_request_storage_refuses(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="Code: "):
        storage.insert_otlp("logs", REFUSED, "alone")  # storage is up and refuses it
    wal = WriteAheadLog(tmp_path / "wal", 1 << 30)
    exporter = replayer(storage, wal)
    entry = mixed_batch(wal, "mixed")
    logged = entry.path.read_bytes()

    exporter.replay(entry)
    assert stored_requests(storage, "mixed") == GOOD  # each good request once, under the batch's id
    assert len(wal) == 0
    assert not entry.path.exists()
    [aside] = (tmp_path / "wal" / "quarantine").iterdir()
    assert aside.name == entry.path.name
    header, requests = read_quarantined(aside)
    assert requests == [REFUSED]
    assert (header["batch_id"], header["signal"], header["records"]) == ("mixed", "logs", 1)
    [reason] = header["reasons"]
    assert reason.startswith("request 3 of 4: storage refused it: ")
    assert "Code: " in reason
    assert quarantined(exporter) == 1  # files set aside
    replayed = {"exporter": exporter.name, "signal": "logs", "path": "replay"}
    assert REGISTRY.get_sample_value("labtel_exporter_stored_records_total", replayed) == 30

    # A restart finds nothing left to store.
    reopened = WriteAheadLog(tmp_path / "wal", 1 << 30)
    assert reopened.entries() == []
    # A crash after the quarantine file was written but before the entry was deleted: the
    # entry is replayed again, and its good requests are still stored once.
    entry.path.write_bytes(logged)
    again = WriteAheadLog(tmp_path / "wal", 1 << 30)
    restarted = replayer(storage, again)
    for left in again.entries():
        restarted.replay(left)
    assert stored_requests(storage, "mixed") == GOOD
    assert len(again) == 0
    [aside_again] = (tmp_path / "wal" / "quarantine").iterdir()
    assert read_quarantined(aside_again)[1] == [REFUSED]


class _Crash(BaseException):
    """The process dying at a chosen point (not an Exception: nothing catches it)."""


def refusing(storage: Storage, monkeypatch: pytest.MonkeyPatch, marker: bytes) -> None:
    """Storage (up) refuses every insert holding `marker`, as it would a request it cannot parse."""
    insert = storage.insert_otlp

    def refuse(signal: str, data: bytes, batch_id: str, *, deduplicate: bool = True) -> None:
        if marker in data:
            raise DatabaseError("Code: 27. DB::Exception: Cannot parse input. (CANNOT_PARSE_INPUT)")
        insert(signal, data, batch_id, deduplicate=deduplicate)

    monkeypatch.setattr(storage, "insert_otlp", refuse)


def crash_after_quarantine_written(wal: WriteAheadLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dies once a file in quarantine/ is durably written, before anything else."""
    write = wal._write

    def write_then_crash(path: Path, header: bytes, data: bytes) -> None:
        write(path, header, data)
        if path.parent == wal.quarantine_directory:
            raise _Crash(path)

    monkeypatch.setattr(wal, "_write", write_then_crash)


def test_quarantine_is_idempotent_across_a_crash_between_its_two_steps(storage: Storage, tmp_path: Path) -> None:
    a, b, c = (marked_request(marker, n) for marker, n in GOOD.items())
    batch = [a, b, c]
    records = sum(GOOD.values())
    for case in ("stored-later", "refused-again"):
        directory = tmp_path / case
        wal = WriteAheadLog(directory, 1 << 30)
        entry = wal.append(case, "logs", batch, records)
        with pytest.MonkeyPatch.context() as patch:
            refusing(storage, patch, b"good-b")
            crash_after_quarantine_written(wal, patch)
            with pytest.raises(_Crash):
                replayer(storage, wal).replay(entry)
        assert entry.path.exists()  # the crash left the entry in the log...
        [aside] = (directory / "quarantine").iterdir()  # ...and its refused request set aside
        first = aside.read_bytes()
        assert read_quarantined(aside)[1] == [b]
        assert stored_requests(storage, case) == {"good-a": 10, "good-c": 5}

        reopened = WriteAheadLog(directory, 1 << 30)  # the restart
        [left] = reopened.entries()
        with pytest.MonkeyPatch.context() as patch:
            if case == "refused-again":
                refusing(storage, patch, b"good-b")
            replayer(storage, reopened).replay(left)
        assert len(reopened) == 0
        assert not left.path.exists()
        if case == "stored-later":
            # Storage takes the whole batch now: nothing of it is left set aside.
            assert stored_requests(storage, case) == GOOD
            assert list((directory / "quarantine").iterdir()) == []
        else:
            # Set aside again: the same one file, the good requests stored once.
            assert stored_requests(storage, case) == {"good-a": 10, "good-c": 5}
            assert [p.name for p in (directory / "quarantine").iterdir()] == [aside.name]
            assert aside.read_bytes() == first


def test_replay_keeps_the_whole_batch_while_storage_is_away(storage: Storage, tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal", 1 << 30)
    exporter = replayer(storage, wal)
    entry = mixed_batch(wal, "outage")
    logged = entry.path.read_bytes()
    fault = tmp_path / "fault"
    fault.touch()
    storage._fault_file = str(fault)  # writes (and pings) fail as if storage were away
    try:
        for _ in range(12):  # more than a refused batch gets: an outage is never a refusal
            with pytest.raises(StorageError, match="injected storage fault"):
                exporter.replay(entry)
    finally:
        storage._fault_file = None
    assert [e.batch_id for e in wal.entries()] == ["outage"]
    assert entry.path.read_bytes() == logged
    assert not (tmp_path / "wal" / "quarantine").exists()
    assert quarantined(exporter) == 0
    assert stored_requests(storage, "outage") == {}

    exporter.replay(entry)  # storage is back
    assert stored_requests(storage, "outage") == GOOD
    assert len(wal) == 0
    assert quarantined(exporter) == 1


def test_replay_keeps_the_batch_when_storage_goes_away_request_by_request(
    storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = WriteAheadLog(tmp_path / "wal", 1 << 30)
    exporter = replayer(storage, wal)
    entry = mixed_batch(wal, "midway")
    fault = tmp_path / "fault"
    storage._fault_file = str(fault)
    insert, calls = storage.insert_otlp, []

    def insert_then_fail(signal: str, data: bytes, batch_id: str, *, deduplicate: bool = True) -> None:
        calls.append(deduplicate)
        if len(calls) == 3:
            fault.touch()  # storage goes away after the batch was refused and one request stored
        insert(signal, data, batch_id, deduplicate=deduplicate)

    monkeypatch.setattr(storage, "insert_otlp", insert_then_fail)
    with pytest.raises(StorageError, match="injected storage fault"):
        exporter.replay(entry)
    assert calls == [True, False, False]  # the batch, then request by request without dedup
    assert stored_requests(storage, "midway") == {"good-a": 10}
    assert [e.batch_id for e in wal.entries()] == ["midway"]
    assert not (tmp_path / "wal" / "quarantine").exists()

    fault.unlink()
    exporter.replay(entry)  # the partial rows are replaced, not doubled
    assert stored_requests(storage, "midway") == GOOD
    assert len(wal) == 0
    assert quarantined(exporter) == 1


def test_replay_keeps_a_batch_storage_refuses_with_a_code_of_being_overloaded(
    storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = WriteAheadLog(tmp_path / "wal", 1 << 30)
    exporter = replayer(storage, wal)
    entry = mixed_batch(wal, "overloaded")
    calls = []

    def too_many_parts(signal: str, data: bytes, batch_id: str, *, deduplicate: bool = True) -> None:
        calls.append(len(data))
        raise DatabaseError("Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)")

    monkeypatch.setattr(storage, "insert_otlp", too_many_parts)
    for _ in range(12):
        with pytest.raises(DatabaseError, match="TOO_MANY_PARTS"):
            exporter.replay(entry)
    assert calls == [sum(entry.sizes)] * 12  # never split: storage is up but overloaded
    assert [e.batch_id for e in wal.entries()] == ["overloaded"]
    assert not (tmp_path / "wal" / "quarantine").exists()


def test_a_batch_whose_every_request_is_refused_is_set_aside_whole_after_retries(
    storage: Storage, tmp_path: Path
) -> None:
    wal = WriteAheadLog(tmp_path / "wal", 1 << 30)
    exporter = replayer(storage, wal)
    entry = wal.append("refused", "logs", [REFUSED, wrong_wire_type_request("and this one")], 2)
    logged = entry.path.read_bytes()
    for _ in range(7):
        with pytest.raises(Exception, match="Code: "):
            exporter.replay(entry)
        assert len(wal) == 1
    exporter.replay(entry)  # the 8th refusal
    assert len(wal) == 0
    assert (tmp_path / "wal" / "quarantine" / entry.path.name).read_bytes() == logged
    assert quarantined(exporter) == 1
    assert storage.batch_rows("logs", "refused") == 0


def test_storage_errors_tell_an_outage_from_a_refusal() -> None:
    assert transient(OperationalError("connection refused"))
    assert transient(DatabaseError("Code: 252. DB::Exception: Too many parts (TOO_MANY_PARTS)"))
    assert transient(DatabaseError("Code: 159. DB::Exception: Timeout exceeded (TIMEOUT_EXCEEDED)"))
    assert not transient(DatabaseError("Code: 395. DB::Exception: labtel: record needs validation"))
    assert not transient(DatabaseError("Code: 60. DB::Exception: Table x doesn't exist. (UNKNOWN_TABLE)"))
    assert error_code(DatabaseError("Code: 444. DB::Exception: Code: 27. DB::Exception: x")) == 27


def test_wal_survives_reopening_and_drops_incomplete_writes(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, 1 << 20)
    entry = wal.append("b1", "logs", [b"abc", b"defg"], 2)
    (tmp_path / "0000000000000099-logs-b2.tmp").write_bytes(b"half written")
    (tmp_path / "quarantine").mkdir()
    (tmp_path / "quarantine" / "0000000000000000-logs-b1.tmp").write_bytes(b"half set aside")
    reopened = WriteAheadLog(tmp_path, 1 << 20)
    [again] = reopened.entries()
    assert (again.batch_id, again.records) == ("b1", 2)
    assert again.requests(again.read()) == [b"abc", b"defg"]
    assert reopened.size_bytes == entry.size
    assert not list(tmp_path.glob("*.tmp"))
    assert not list((tmp_path / "quarantine").iterdir())
    assert reopened.append("b3", "logs", [b"x"], 1).path.name.startswith("0000000000000001-")


def test_backpressure_when_storage_is_away_and_the_wal_is_full(
    tmp_path: Path, faulty: Callable[..., LabtelServer]
) -> None:
    fault = tmp_path / "fault"
    fault.touch()
    server = faulty(queue_extra=", wal_max_bytes: 1048576").start()
    big = marked_request("fill-0", 100, size=3000)  # ~0.3 MB
    refused = None
    for i in range(10):
        refused = export(server, marked_request(f"fill-{i}", 100, size=3000))
        if refused is not None:
            break
    assert refused is not None, "the WAL limit never pushed back"
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    details = dict(refused.trailing_metadata() or ())["grpc-status-details-bin"]
    retry = error_details_pb2.RetryInfo()
    assert status_pb2.Status.FromString(details).details[0].Unpack(retry)
    assert retry.retry_delay.seconds >= 1

    response = httpx.post(f"{server.http}/v1/logs", content=big, headers={"Content-Type": "application/x-protobuf"})
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1

    # The stock OpenTelemetry exporters retry on their own; once storage is back, they get through.
    results: dict[str, Any] = {}

    def send(name: str, exporter: Any) -> None:
        provider = LoggerProvider(resource=Resource.create({"service.name": "durability", "test.request": name}))
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        started = time.monotonic()
        provider.get_logger("t").emit(body=f"{name} after backpressure", severity_number=SeverityNumber.INFO)
        results[name] = time.monotonic() - started
        provider.shutdown()

    threads = [
        threading.Thread(
            target=send, args=("otel-grpc", GrpcLogExporter(endpoint=server.grpc, insecure=True, timeout=30))
        ),
        threading.Thread(
            target=send, args=("otel-http", HttpLogExporter(endpoint=f"{server.http}/v1/logs", timeout=30))
        ),
    ]
    for thread in threads:
        thread.start()
    time.sleep(2.5)
    fault.unlink()
    for thread in threads:
        thread.join(60)
    assert set(results) == {"otel-grpc", "otel-http"}
    assert min(results.values()) > 2.0  # they were pushed back, then retried
    wait_for(lambda: metric(server, "labtel_wal_batches") == 0, what="the WAL to drain")
    stored = stored_per_request(server)
    assert (stored["otel-grpc"], stored["otel-http"]) == (1, 1)
    assert all(count == 100 for name, count in stored.items() if name.startswith("fill-"))


def test_kill_9_during_load_loses_no_acknowledged_record(tmp_path: Path, faulty: Callable[..., LabtelServer]) -> None:
    fault = tmp_path / "fault"
    server = faulty(queue_extra=", wal_ack_after: 50ms").start()
    acked: set[str] = set()
    stop = threading.Event()
    lock = threading.Lock()

    def client(worker: int) -> None:
        with grpc.insecure_channel(server.grpc) as channel:
            call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
            for n in range(10_000):
                if stop.is_set():
                    return
                marker = f"w{worker}-{n}"
                try:
                    call(marked_request(marker, 20), timeout=10)
                except grpc.RpcError:
                    if stop.is_set():
                        return
                    time.sleep(0.05)
                    continue
                with lock:
                    acked.add(marker)
                time.sleep(0.01)

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client, w) for w in range(6)]
        time.sleep(1.5)
        fault.touch()  # storage goes away: acknowledgements now come from the WAL
        time.sleep(1.5)
        fault.unlink()
        time.sleep(1.0)
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(30)
        server.process = None
        stop.set()
        for future in futures:
            future.result()
    assert len(acked) > 50

    server.start()
    wait_for(lambda: metric(server, "labtel_wal_batches") == 0, timeout=60, what="the WAL to drain")
    stored = stored_per_request(server)
    missing = {m for m in acked if stored.get(m, 0) != 20}
    assert not missing, f"{len(missing)} acknowledged requests are missing or incomplete"
    assert all(count == 20 for count in stored.values()), "a request was stored twice"


def test_metrics_report_ingest(server: LabtelServer) -> None:
    marker = uuid.uuid4().hex
    assert export(server, marked_request(marker, 7)) is None
    assert export(server, b"\x0a\x03abc") is not None
    text = server.get("/metrics").text
    assert 'labtel_receiver_records_total{outcome="accepted",signal="logs",transport="grpc"} 7.0' in text
    assert 'labtel_receiver_requests_total{outcome="rejected",signal="logs",transport="grpc"} 1.0' in text
    assert 'labtel_exporter_stored_records_total{exporter="clickhouse",path="fast",signal="logs"} 7.0' in text
    for name in (
        "labtel_queue_records",
        "labtel_wal_bytes",
        "labtel_exporter_insert_duration_seconds_bucket",
        "labtel_receiver_export_duration_seconds_count",
        "labtel_storage_up",
    ):
        assert name in text
    assert httpx.get(f"{server.http}/metrics").status_code == 200
