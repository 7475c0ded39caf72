"""labtel.sdk delivery against a real collector: what is stored is what was logged, when it was
logged; bad values, oversized requests, refused keys and partial successes lose nothing
uncounted; forked and multiprocessing children deliver."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import labtel.sdk as lab
from labtel.sdk import core, encoding
from labtel.sdk.logger import ORIGINAL_TIME
from labtel.sdk.spool import Spool
from tests.helpers import LabtelServer, wait_for, write_config


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabtelServer]:
    """One collector for the module (default limits: 4 MiB gRPC messages, 64 KiB attribute values)."""
    tmp = tmp_path_factory.mktemp("collector")
    running = LabtelServer(config=write_config(tmp / "otel-config.yaml", tmp / "data"), workdir=tmp).start()
    yield running
    running.kill()


def configure(server: LabtelServer, spool: Path, protocol: str = "grpc", **options: Any) -> str:
    """Point the SDK at `server` with a fresh service name (its spool in `spool`); returns the name."""
    service = f"sdk-{uuid.uuid4().hex[:8]}"
    lab.configure(
        service_name=service,
        endpoint=f"http://{server.grpc}" if protocol == "grpc" else server.http,
        protocol=protocol,
        spool_dir=spool,
        batch_interval_s=0.05,
        metrics=False,
        traces=False,
        **options,
    )
    return service


@pytest.fixture
def sdk(collector: LabtelServer, tmp_path: Path) -> Iterator[tuple[LabtelServer, str]]:
    service = configure(collector, tmp_path / "spool")
    yield collector, service
    lab.shutdown()


def stored(server: LabtelServer, service: str, count: int) -> list[dict[str, Any]]:
    """The events of `service` once `count` of them are stored."""
    return wait_for(
        lambda: (e := server.all_events(service=service, limit=1000)) and len(e) >= count and e,
        what=f"{count} events of {service}",
    )


def by_body(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["body"]: e for e in events}


def test_values_are_stored_as_they_were_when_logged(sdk: tuple[LabtelServer, str]) -> None:
    server, service = sdk
    log = lab.get_logger("drv")
    handler = lab.capture_stdlib(logging.INFO, logger="incubator")
    status = {"temp_c": 0, "door": "closed"}
    readings: list[int] = []
    seen = {"v"}
    try:
        for step in range(3):
            status["temp_c"] = 20 + step
            readings.append(step)
            seen.add(str(step))
            log.info(f"status {step}", status=status, readings=readings, seen=seen)
            logging.getLogger("incubator").info(f"stdlib {step}", extra={"readings": readings})
            lab.mlog(f"mlog {step}", metadata={"status": status})
            with lab.device_io(device="incubator", operation=f"read {step}", status=status):
                pass
        status["temp_c"] = 99
        readings.append(99)
        result = lab.flush(10)
    finally:
        logging.getLogger("incubator").removeHandler(handler)
    assert (result.delivered, result.pending, result.rejected) == (12, 0, 0)
    events = by_body(stored(server, service, 12))
    for step in range(3):
        wanted = list(range(step + 1))
        attributes = events[f"status {step}"]["attributes"]
        assert attributes["status"] == f'{{"temp_c":{20 + step},"door":"closed"}}'
        assert attributes["readings"] == str(wanted).replace(" ", "")
        assert len(attributes["seen"].split(",")) == step + 2
        assert events[f"stdlib {step}"]["attributes"]["readings"] == str(wanted).replace(" ", "")
        assert events[f"mlog {step}"]["attributes"]["status"] == f'{{"temp_c":{20 + step},"door":"closed"}}'
        io = next(e for e in events.values() if e["attributes"].get("lab.device.operation") == f"read {step}")
        assert io["attributes"]["status"] == f'{{"temp_c":{20 + step},"door":"closed"}}'


def test_a_value_that_cannot_be_rendered_loses_nothing(sdk: tuple[LabtelServer, str]) -> None:
    server, service = sdk

    class Weird:
        def __str__(self) -> str:
            raise RuntimeError("cannot render")

    log = lab.get_logger("robust")
    log.info("before")
    log.info("odd value", obj=Weird())
    log.info("after")
    assert lab.flush(10).delivered == 3
    events = by_body(stored(server, service, 3))
    assert events["odd value"]["attributes"]["obj"] == "<unrepresentable Weird: RuntimeError>"


def test_one_bad_string_or_time_loses_no_other_record(sdk: tuple[LabtelServer, str]) -> None:
    server, service = sdk
    log = lab.get_logger("drv")
    for i in range(3):
        log.info("good", i=i)
    log.info("wrote file", path=os.fsdecode(b"scan_\xff.tif"))  # a file name that is not UTF-8
    logged = time.time_ns()
    lab.mlog("imported old", created_at="1960-01-01T00:00:00Z")
    lab.mlog("imported future", created_at="2300-01-01T00:00:00Z")
    lab.mlog("not a time", created_at="yesterday-ish")
    lab.get_logger(42).info("a scope name that is not text")  # type: ignore[arg-type]  # cannot be encoded
    for i in range(3):
        log.info("good after", i=i)
    result = lab.flush(10)
    assert (result.delivered, result.rejected, result.pending) == (10, 1, 0)
    events = stored(server, service, 10)
    assert sorted(e["body"] for e in events if e["body"].startswith("good")) == ["good"] * 3 + ["good after"] * 3
    named = by_body(events)
    assert named["wrote file"]["attributes"]["path"] == "scan_\\udcff.tif"
    old, future = named["imported old"], named["imported future"]
    assert old["attributes"][ORIGINAL_TIME] == "1960-01-01T00:00:00+00:00"
    assert future["attributes"][ORIGINAL_TIME] == "2300-01-01T00:00:00+00:00"
    assert named["not a time"]["attributes"][ORIGINAL_TIME] == "yesterday-ish"
    for event in (old, future, named["not a time"]):
        assert abs(int(event["time_unix_nano"]) - logged) < 60e9  # kept at the time it was logged


def test_requests_stay_below_the_collectors_message_limit(sdk: tuple[LabtelServer, str], tmp_path: Path) -> None:
    server, service = sdk
    log = lab.get_logger("spectra")
    for i in range(600):  # 6 MB in one 512-record batch would be over the 4 MiB gRPC limit
        log.info("spectrum", i=i, points="0.125," * 1700)
    log.info("camera frame", image=b"\x00" * 5_000_000)  # too large for any request
    log.info("small after")
    result = lab.flush(30)
    assert (result.delivered, result.rejected, result.pending, result.dropped) == (601, 1, 0, 0)
    assert not list((tmp_path / "spool").glob("*.otlp*"))  # nothing was spooled
    events = stored(server, service, 601)
    assert len(events) == 601
    assert "camera frame" not in by_body(events)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_request_over_the_limit_is_split(
    protocol: str, tmp_path: Path, server_factory: Any, collector: LabtelServer
) -> None:
    """Requests under labtel's own cap that a collector with lower limits refuses are sent in parts."""
    config = write_config(
        tmp_path / "otel-config.yaml",
        tmp_path / "data",
        grpc_extra=", max_recv_msg_size_mib: 1",
        http_extra=", max_request_body_size: 1048576",
    )
    small = server_factory(config=config, workdir=tmp_path).start()
    service = configure(small, tmp_path / "spool", protocol)
    try:
        log = lab.get_logger("spectra")
        for i in range(250):  # 2.5 MB: one request of labtel's, four of this collector's
            log.info("spectrum", i=i, points="0.125," * 1700)
        log.info("large alone", points="1," * 600_000)  # 1.2 MB: over this collector's limit alone
        result = lab.flush(30)
        assert (result.delivered, result.rejected, result.pending) == (250, 1, 0)
        assert not list((tmp_path / "spool").glob("*.otlp*"))
        assert sorted(int(e["attributes"]["i"]) for e in stored(small, service, 250)) == list(range(250))
    finally:
        lab.shutdown()


def test_a_spooled_request_too_large_does_not_block_the_others(collector: LabtelServer, tmp_path: Path) -> None:
    """The spool an earlier version left: a 5 MB request first, small ones behind it."""
    spool_dir = tmp_path / "spool"
    service = f"sdk-{uuid.uuid4().hex[:8]}"
    resource = encoding.resource({"service.name": service})
    scope = encoding.scope("old")
    attributes = encoding.AttributeEncoder()

    def request(count: int, size: int) -> bytes:
        records = [
            encoding.log_record(
                encoding.LogRecordData(time.time_ns(), 9, "INFO", f"old {size}", {"pad": "x" * size}, "old"), attributes
            )
            for _ in range(count)
        ]
        return encoding.logs_request(resource, [(scope, records)])

    old = Spool(spool_dir, 1 << 30)
    assert old.put(request(512, 10_000), 512)
    assert old.put(request(5, 10), 5)
    lab.configure(service_name=service, endpoint=f"http://{collector.grpc}", spool_dir=spool_dir, metrics=False)
    try:
        result = lab.flush(30)
        assert (result.delivered, result.pending) == (517, 0)
        assert len(stored(collector, service, 517)) == 517
    finally:
        lab.shutdown()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_records_a_partial_success_rejects_are_counted(
    protocol: str, collector: LabtelServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = configure(collector, tmp_path / "spool", protocol)
    try:
        log = lab.get_logger("limits")
        log.info("fine 1")
        log.info("over the value limit", blob="x" * 70_000)  # the collector's limit: 64 KiB
        log.info("fine 2")
        with caplog.at_level(logging.WARNING, logger="labtel.sdk"):
            result = lab.flush(10)
        assert (result.delivered, result.rejected, result.pending) == (2, 1, 0)
        assert [r for r in caplog.records if "rejected 1 of 3" in r.getMessage()]
        assert sorted(e["body"] for e in stored(collector, service, 2)) == ["fine 1", "fine 2"]
    finally:
        lab.shutdown()


def test_events_outside_structlog_carry_the_context(sdk: tuple[LabtelServer, str]) -> None:
    server, service = sdk
    handler = lab.capture_stdlib(logging.INFO, logger="ctxlib")
    try:
        with lab.context(experiment_id="exp-5", node_id="ot2"), lab.run(run_id="run-5"):
            lab.mlog("via mlog")
            lab.mlog("explicit wins", node_id="other")
            logging.getLogger("ctxlib").info("via stdlib")
            lab.health_check_failed("extraction", "pressure", message="via health check")
            with lab.phase("measure"):
                pass
        assert lab.flush(10).pending == 0
    finally:
        logging.getLogger("ctxlib").removeHandler(handler)
    events = stored(server, service, 8)
    named = by_body(events)
    for event in events:
        assert event["experiment_id"] == "exp-5", event["body"]
        assert event["run_id"] == "run-5", event["body"]
    assert named["via mlog"]["node_id"] == "ot2"
    assert named["explicit wins"]["node_id"] == "other"


def test_a_forked_child_does_not_inherit_a_held_spool_lock(sdk: tuple[LabtelServer, str]) -> None:
    server, service = sdk
    spool_lock = core.state().pipeline._spool._lock
    with spool_lock:  # as if the export thread held it at the fork
        pid = os.fork()
        if pid == 0:
            try:
                lab.get_logger("child").info("from the child")
                os._exit(0 if lab.flush(10).delivered == 1 else 3)
            except BaseException:
                os._exit(4)
    deadline = time.monotonic() + 20
    while (waited := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    if waited == (0, 0):
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the child hung on the spool lock")
    assert os.waitstatus_to_exitcode(waited[1]) == 0
    assert [e["body"] for e in stored(server, service, 1)] == ["from the child"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_an_endpoint_without_an_otlp_logs_receiver_keeps_the_records(
    protocol: str, collector: LabtelServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong port or path (gRPC UNIMPLEMENTED, HTTP 404) says nothing about the records: they
    are spooled with one warning, and delivered once the endpoint is right."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    no_logs_service = grpc.server(ThreadPoolExecutor(1))  # a gRPC server without the logs service
    port = no_logs_service.add_insecure_port("127.0.0.1:0")
    no_logs_service.start()
    wrong = f"http://127.0.0.1:{port}" if protocol == "grpc" else collector.api  # the query API: 404
    spool = tmp_path / "spool"
    service = f"sdk-{uuid.uuid4().hex[:8]}"
    settings: dict[str, Any] = {"service_name": service, "spool_dir": spool, "metrics": False, "traces": False}
    try:
        lab.configure(endpoint=wrong, protocol=protocol, batch_interval_s=0.05, **settings)
        lab.get_logger("misdirected").info("kept while misdirected")
        with caplog.at_level(logging.WARNING, logger="labtel.sdk"):
            result = lab.flush(5)
        assert (result.rejected, result.pending) == (0, 1), result
        assert [r for r in caplog.records if "no OTLP logs receiver answers" in r.getMessage()]
        right = f"http://{collector.grpc}" if protocol == "grpc" else collector.http
        lab.configure(endpoint=right, protocol=protocol, batch_interval_s=0.05, **settings)
        result = lab.flush(10)
        assert (result.delivered, result.pending) == (1, 0), result
    finally:
        lab.shutdown()
        no_logs_service.stop(None)
    assert [e["body"] for e in stored(collector, service, 1)] == ["kept while misdirected"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_other_protocols_port_is_named_in_the_warning(
    protocol: str, collector: LabtelServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """gRPC sent to the OTLP/HTTP port (or HTTP to the gRPC port) is a setting to fix, not a
    collector that is away: the warning says which protocol answers, and the records wait."""
    wrong = collector.http if protocol == "grpc" else f"http://{collector.grpc}"
    other = "http" if protocol == "grpc" else "grpc"
    service = f"sdk-{uuid.uuid4().hex[:8]}"
    settings: dict[str, Any] = {"service_name": service, "spool_dir": tmp_path / "spool", "metrics": False}
    try:
        lab.configure(endpoint=wrong, protocol=protocol, batch_interval_s=0.05, traces=False, **settings)
        lab.get_logger("crossed").info("sent to the other port")
        with caplog.at_level(logging.WARNING, logger="labtel.sdk"):
            result = lab.flush(5)
        assert (result.rejected, result.pending) == (0, 1), result
        [warning] = [r.getMessage() for r in caplog.records if "no OTLP logs receiver answers" in r.getMessage()]
        assert f"use protocol '{other}'" in warning
        lab.configure(endpoint=wrong, protocol=other, batch_interval_s=0.05, traces=False, **settings)
        assert lab.flush(10).delivered == 1
    finally:
        lab.shutdown()
    assert [e["body"] for e in stored(collector, service, 1)] == ["sent to the other port"]


def _worker(endpoint: str, service: str, spool: str) -> None:
    """A multiprocessing worker that logs and returns without flushing."""
    if core._state is None:  # forkserver: a fresh interpreter
        lab.configure(service_name=service, endpoint=endpoint, spool_dir=Path(spool), metrics=False, traces=False)
    lab.get_logger("worker").info("from the worker", pid=os.getpid())


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_multiprocessing_workers_deliver_what_they_logged_last(
    method: str, sdk: tuple[LabtelServer, str], tmp_path: Path
) -> None:
    server, service = sdk
    endpoint = f"http://{server.grpc}"
    process = multiprocessing.get_context(method).Process(
        target=_worker, args=(endpoint, service, str(tmp_path / "worker-spool"))
    )
    process.start()
    process.join(60)
    assert process.exitcode == 0
    [event] = stored(server, service, 1)
    assert event["body"] == "from the worker"
    assert event["attributes"]["pid"] != str(os.getpid())


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_pool_workers_stopped_at_the_end_of_a_with_block_deliver(
    method: str, sdk: tuple[LabtelServer, str], tmp_path: Path
) -> None:
    """`with Pool() as pool:` ends with Pool.terminate(): its workers get SIGTERM right after the
    last result, while what they logged is still queued."""
    server, service = sdk
    args = (f"http://{server.grpc}", service, str(tmp_path / "worker-spool"))
    with multiprocessing.get_context(method).Pool(2) as pool:
        pool.starmap(_worker, [args] * 4)
    events = stored(server, service, 4)
    assert [e["body"] for e in events] == ["from the worker"] * 4
    assert str(os.getpid()) not in {e["attributes"]["pid"] for e in events}


def test_a_spooled_request_the_collector_keeps_failing_is_set_aside(tmp_path: Path) -> None:
    """A request that fails while the ones behind it pass blocks them only a few times."""
    from labtel.sdk.pipeline import Pipeline
    from labtel.sdk.transport import Accepted, SendError

    poison = encoding.logs_request(encoding.resource({"service.name": "p"}), [])

    class Picky:
        def send(self, data: bytes) -> Accepted:
            if data == poison:
                raise SendError("INTERNAL: cannot store this", retryable=True)
            return Accepted()

        def close(self) -> None:
            pass

    spool = Spool(tmp_path / "spool", 1 << 20)
    spool.put(poison, 3)
    pipeline = Pipeline({"service.name": "p"}, Picky, tmp_path / "spool", 1 << 20, batch_interval_s=0.01)
    try:
        for sent in range(1, 11):  # the application keeps logging: its records queue behind the poison
            pipeline.emit(encoding.LogRecordData(time.time_ns(), 9, "INFO", f"r{sent}", {}, "s"))
            pipeline.flush(2)
            if not list((tmp_path / "spool").glob("*.otlp")):
                break
        result = pipeline.result()
    finally:
        pipeline.shutdown(1)
    assert (result.delivered, result.rejected, result.pending) == (sent, 3, 0)
    assert sent == 3  # set aside at its third failure while the others passed
    assert len(list((tmp_path / "spool").glob("*.failed"))) == 1


def test_a_bad_setting_in_the_environment_warns_once_and_logging_goes_on(
    collector: LabtelServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    service = f"sdk-{uuid.uuid4().hex[:8]}"
    for name, value in {
        "LABTEL_SERVICE_NAME": service,
        "LABTEL_ENDPOINT": f"http://{collector.grpc}",
        "LABTEL_SPOOL_DIR": str(tmp_path / "spool"),
        "LABTEL_BATCH_INTERVAL_S": "0.05",
        "LABTEL_METRICS": "false",
        "LABTEL_PROTOCOL": "grpcc",
        "LABTEL_LEVEL": "verbose",
    }.items():
        monkeypatch.setenv(name, value)
    lab.shutdown()
    handler = lab.capture_stdlib(logging.INFO, logger="badenv")
    try:
        with caplog.at_level(logging.WARNING, logger="labtel.sdk"):
            lab.get_logger("badenv").info("via structlog")
            with lab.span("a span"):
                lab.mlog("via mlog")
            logging.getLogger("badenv").info("via stdlib")
            result = lab.flush(10)
        assert (result.delivered, result.pending) == (3, 0)
        warned = [r.getMessage() for r in caplog.records if "is not valid" in r.getMessage()]
        assert len(warned) == 2
        assert "LABTEL_LEVEL='verbose'" in warned[0]
        assert "LABTEL_PROTOCOL='grpcc'" in warned[1]
        assert sorted(e["body"] for e in stored(collector, service, 3)) == ["via mlog", "via stdlib", "via structlog"]
    finally:
        logging.getLogger("badenv").removeHandler(handler)
        lab.shutdown()


def test_configure_refuses_unknown_arguments_and_levels(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="'levle'"):
        lab.configure(levle="error")
    with pytest.raises(ValueError, match="unknown level 'verbose'"):
        lab.configure(level="verbose", spool_dir=tmp_path)


def test_enum_values_and_an_endpoint_without_a_scheme(collector: LabtelServer, tmp_path: Path) -> None:
    from enum import Enum

    class EventType(str, Enum):  # noqa: UP042  # as application code (MADSci) defines them
        WORKFLOW_COMPLETE = "workflow_complete"

    class Color(Enum):
        RED = "red"

    service = f"sdk-{uuid.uuid4().hex[:8]}"
    bare = collector.http.split("://", 1)[1]  # `127.0.0.1:4318`, as people write it
    lab.configure(service_name=service, endpoint=bare, protocol="http", spool_dir=tmp_path, metrics=False, traces=False)
    try:
        lab.get_logger("enums").info(
            "done", event_type=EventType.WORKFLOW_COMPLETE, color=Color.RED, colors=[Color.RED]
        )
        assert lab.flush(10).delivered == 1
        [event] = stored(collector, service, 1)
    finally:
        lab.shutdown()
    assert (event["event_type"], event["event_name"]) == ("workflow_complete", "workflow_complete")
    assert event["attributes"]["color"] == "red"
    assert event["attributes"]["colors"] == '["red"]'


def test_spool_files_named_with_digits_int_refuses_are_read_not_a_crash(tmp_path: Path) -> None:
    """A claim owned by "\u00b2" (str.isdigit takes it, int() does not) is put back, and a request
    whose name ends in one counts no records; opening the spool raised ValueError."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / "00000000000000000001-1-000000-2.otlp.sending-\u00b2").write_bytes(b"x")
    (spool_dir / "00000000000000000002-1-000001-\u00b2.otlp").write_bytes(b"y")
    spool = Spool(spool_dir, 1 << 20)
    assert spool.pending_files == 2
    assert spool.pending_records == 2  # the claim put back holds 2, the other counts none
