"""labtel.sdk against a real collector: every public call, trace correlation, context, spool, fork."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

import labtel.sdk as lab
from labtel.collector.otlp.values import value_text
from labtel.sdk import core, encoding, textform
from labtel.sdk.event_types import MADSCI_EVENT_TYPES, LabEventType
from labtel.sdk.instruments import SECONDS_BUCKETS
from labtel.sdk.settings import SdkSettings, resolve
from tests.helpers import LabtelServer, wait_for, write_config


def configure(server: LabtelServer | str, tmp_path: Path, protocol: str = "grpc", **options: Any) -> str:
    """Point the SDK at a collector (or an address) with a fresh service name; returns the name."""
    service = f"sdk-{uuid.uuid4().hex[:8]}"
    if isinstance(server, LabtelServer):
        endpoint = f"http://{server.grpc}" if protocol == "grpc" else server.http
    else:
        endpoint = server
    lab.configure(
        service_name=service,
        endpoint=endpoint,
        protocol=protocol,
        lab_name="chem-lab-A",
        spool_dir=tmp_path / f"spool-{service}",
        batch_interval_s=0.05,
        metrics=False,
        **options,
    )
    return service


@pytest.fixture
def sdk_server(server: LabtelServer, tmp_path: Path) -> Iterator[tuple[LabtelServer, str]]:
    service = configure(server, tmp_path)
    yield server, service
    lab.shutdown()


def delivered(server: LabtelServer, service: str, count: int) -> list[dict[str, Any]]:
    result = lab.flush(10)
    assert result.pending == 0, result
    return wait_for(
        lambda: (e := server.all_events(service=service, limit=1000)) and len(e) >= count and e,
        what=f"{count} events of {service}",
    )


def by_body(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["body"]: e for e in events}


def test_structlog_calls_arrive_with_their_fields(sdk_server: tuple[LabtelServer, str]) -> None:
    server, service = sdk_server
    log = lab.get_logger("ot2", node_id="ot2_1")
    log.debug("debug line", step=1)
    log.info(
        "Workflow completed",
        event_type=LabEventType.WORKFLOW_COMPLETE,
        workflow_id="wf-7",
        duration_ms=1234.5,
        plates=["P1", "P2"],
        settings={"speed": 2},
    )
    bound = log.bind(user_id="alice", experiment_id="exp-1")
    bound.warning("Tip rack low", tips=3)
    bound.unbind("user_id").error("Plate stuck", event_type="NODE_ERROR")
    try:
        raise ValueError("lid jammed")
    except ValueError:
        log.exception("Lid failed")
        log.critical("Lid failed hard", exc_info=True)
    events = by_body(delivered(server, service, 6))

    assert events["debug line"]["severity_number"] == 5
    assert events["debug line"]["attributes"] == {"lab.node.id": "ot2_1", "step": "1"}
    completed = events["Workflow completed"]
    assert completed["severity_text"] == "INFO"
    assert completed["event_type"] == "workflow_complete"
    assert completed["event_name"] == "workflow_complete"
    assert completed["workflow_id"] == "wf-7"
    assert completed["node_id"] == "ot2_1"
    assert completed["attributes"]["duration_ms"] == "1234.5"
    assert completed["attributes"]["plates"] == '["P1","P2"]'
    assert completed["attributes"]["settings"] == '{"speed":2}'
    assert completed["scope"]["name"] == "ot2"
    low = events["Tip rack low"]
    assert (low["severity_number"], low["attributes"]["lab.user.id"], low["experiment_id"]) == (13, "alice", "exp-1")
    stuck = events["Plate stuck"]
    assert stuck["severity_number"] == 17
    assert stuck["event_type"] == "node_error"
    assert "lab.user.id" not in stuck["attributes"]
    assert stuck["experiment_id"] == "exp-1"
    for body, severity in (("Lid failed", 17), ("Lid failed hard", 21)):
        attributes = events[body]["attributes"]
        assert events[body]["severity_number"] == severity
        assert attributes["exception.type"] == "ValueError"
        assert attributes["exception.message"] == "lid jammed"
        assert 'raise ValueError("lid jammed")' in attributes["exception.stacktrace"]
    resource = completed["resource"]
    assert resource["service.name"] == service
    assert resource["lab.name"] == "chem-lab-A"
    assert resource["process.pid"] == str(os.getpid())
    assert resource["host.name"] == socket.gethostname()
    assert resource["telemetry.sdk.name"] == "labtel"
    assert resource["telemetry.sdk.version"] == lab.__version__
    assert {"host.fqdn", "process.executable.name", "process.working_directory", "process.runtime.version"} <= set(
        resource
    )


def test_values_of_scientific_types_are_stored_as_what_they_mean(sdk_server: tuple[LabtelServer, str]) -> None:
    """numpy, Decimal, dataclasses, pydantic models and dates are stored as their values, not
    as a repr (a numpy repr elides a long array's middle; a Decimal through float loses digits)."""
    import dataclasses
    import datetime as dt
    from decimal import Decimal

    import numpy as np
    import pydantic

    @dataclasses.dataclass
    class Sample:
        name: str
        mass_mg: float
        taken: dt.date

    class Plate(pydantic.BaseModel):
        barcode: str
        volume_ul: Decimal

    server, service = sdk_server
    log = lab.get_logger("values")
    log.info(
        "values",
        counts=np.arange(2000),
        grid=np.zeros((2, 2)),
        reads=np.int64(7),
        ok=np.bool_(True),
        mass=Decimal("12345678901234567890.123"),
        sample=Sample("NaCl", 5.5, dt.date(2026, 1, 2)),
        plate=Plate(barcode="P1", volume_ul=Decimal("1.10")),
        when=[dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)],
    )
    lab.mlog("metadata values", metadata={"reads": np.int64(8), "mass": Decimal("0.10")})
    events = by_body(delivered(server, service, 2))
    attributes = events["values"]["attributes"]
    assert attributes["counts"] == "[" + ",".join(str(i) for i in range(2000)) + "]"
    assert attributes["grid"] == "[[0,0],[0,0]]"
    assert (attributes["reads"], attributes["ok"]) == ("7", "true")
    assert attributes["mass"] == "12345678901234567890.123"
    assert attributes["sample"] == '{"name":"NaCl","mass_mg":5.5,"taken":"2026-01-02"}'
    assert attributes["plate"] == '{"barcode":"P1","volume_ul":"1.10"}'
    assert attributes["when"] == '["2026-01-02T03:04:05+00:00"]'
    metadata = events["metadata values"]["attributes"]
    assert (metadata["reads"], metadata["mass"]) == ("8", "0.10")


def test_mlog_and_severity_helpers(sdk_server: tuple[LabtelServer, str], tmp_path: Path) -> None:
    server, _ = sdk_server
    service = configure(server, tmp_path, level="trace")  # trace is below the default level (debug)
    lab.mlog("Captured frame", 42, "for", "M31", tags="imaging, m31 ,imaging", metadata={"exposure_s": 30.0})
    lab.mlog("Satellite glint\nsecond line", title="Glint alert", created_at="2026-01-02T03:04:05Z")
    lab.mlog("Dome check", ttl_seconds=3600)
    for helper, _number in (
        (lab.trace, 1),
        (lab.debug, 5),
        (lab.info, 9),
        (lab.warn, 13),
        (lab.error, 17),
        (lab.fatal, 21),
    ):
        helper(f"via {helper.__name__}", tags=["sev"])
    lab.mlog("odd severity", severity="loud")
    events = by_body(delivered(server, service, 10))
    frame = events["Captured frame 42 for M31"]
    assert frame["attributes"]["tags"] == '["imaging","m31"]'
    assert frame["attributes"]["title"] == "Captured frame 42 for M31"
    assert frame["attributes"]["exposure_s"] == "30"
    glint = events["Satellite glint\nsecond line"]
    assert glint["attributes"]["title"] == "Glint alert"
    assert glint["timestamp"].startswith("2026-01-02T03:04:05")
    assert events["Dome check"]["attributes"]["lab.ttl_seconds"] == "3600"
    assert {events[f"via {h}"]["severity_number"] for h in ("trace", "debug", "info", "warn", "error", "fatal")} == {
        1,
        5,
        9,
        13,
        17,
        21,
    }
    assert events["odd severity"]["severity_number"] == 9
    assert events["odd severity"]["attributes"]["labtel.sdk.unknown_severity"] == "loud"


def test_ttl_events_expire(sdk_server: tuple[LabtelServer, str]) -> None:
    server, service = sdk_server
    sent = time.monotonic()
    lab.mlog("short-lived", ttl_seconds=4)  # long enough to be seen delivered first, even on a busy machine
    lab.mlog("kept")
    assert len(delivered(server, service, 2)) == 2
    time.sleep(max(0.0, sent + 4.3 - time.monotonic()))
    assert [e["body"] for e in server.all_events(service=service)] == ["kept"]


def test_runs_spans_and_trace_correlation(sdk_server: tuple[LabtelServer, str]) -> None:
    server, service = sdk_server
    log = lab.get_logger("scheduler")
    with lab.run(meta={"plate": "P1"}, experiment_id="exp-9") as run:
        with lab.span("transfer plate", node_id="robot_arm_1") as span:
            log.info("moving plate")
        run.event("run note", level="warning")
    with pytest.raises(RuntimeError), lab.run(run_id="run-fail-1"):
        raise RuntimeError("vacuum lost")
    events = delivered(server, service, 6)
    types = sorted(e["event_type"] for e in events if e["event_type"])
    assert types == ["run_complete", "run_fail", "run_start", "run_start"]
    moving = by_body(events)["moving plate"]
    context = span.get_span_context()
    assert moving["trace_id"] == f"{context.trace_id:032x}"
    assert moving["span_id"] == f"{context.span_id:016x}"
    assert moving["run_id"] == run.id
    assert moving["experiment_id"] == "exp-9"  # the run's fields are carried inside it, as context()'s
    assert by_body(events)["run note"]["run_id"] == run.id
    assert by_body(events)["run note"]["experiment_id"] == "exp-9"
    start = next(e for e in events if e["event_type"] == "run_start" and e["run_id"] == run.id)
    assert start["attributes"]["run.meta.plate"] == "P1"
    failed = next(e for e in events if e["event_type"] == "run_fail")
    assert failed["run_id"] == "run-fail-1"
    assert failed["attributes"]["exception.message"] == "vacuum lost"
    trace = wait_for(lambda: (t := server.get(f"/traces/{context.trace_id:032x}").json()).get("spans") and t)
    assert trace["spans"][0]["name"] == "transfer plate"
    assert trace["spans"][0]["attributes"]["lab.node.id"] == "robot_arm_1"
    assert moving["event_id"] in trace["spans"][0]["event_ids"]


def test_context_nests_and_crosses_threads_and_tasks(sdk_server: tuple[LabtelServer, str]) -> None:
    server, service = sdk_server
    log = lab.get_logger("ctx")
    with lab.context(experiment_id="exp-9"):
        with lab.context(workflow_id="wf-1"):
            log.info("inner")
            thread = threading.Thread(target=lab.propagate(lambda: log.info("in thread")))
            thread.start()
            thread.join()

            async def task(name: str) -> None:
                with lab.context(step_id=name):
                    await asyncio.sleep(0.01)
                    log.info(f"in task {name}")

            async def both() -> None:
                await asyncio.gather(task("a"), task("b"))

            asyncio.run(both())
        log.info("outer")
    log.info("outside")
    events = by_body(delivered(server, service, 6))
    assert (events["inner"]["experiment_id"], events["inner"]["workflow_id"]) == ("exp-9", "wf-1")
    assert (events["in thread"]["experiment_id"], events["in thread"]["workflow_id"]) == ("exp-9", "wf-1")
    assert events["in task a"]["attributes"]["lab.step.id"] == "a"
    assert events["in task b"]["attributes"]["lab.step.id"] == "b"
    assert (events["outer"]["experiment_id"], events["outer"]["workflow_id"]) == ("exp-9", "")
    assert events["outside"]["experiment_id"] == ""


def test_device_io_health_checks_and_lifecycle(sdk_server: tuple[LabtelServer, str]) -> None:
    server, service = sdk_server

    @lab.device_io(device="valve_A", operation="open")
    def open_valve() -> str:
        return "open"

    @lab.device_io(device="pump_1", operation="start")
    async def start_pump() -> None:
        raise TimeoutError("no response")

    assert open_valve() == "open"
    with pytest.raises(TimeoutError):
        asyncio.run(start_pump())
    with lab.device_io(device="gauge_1", operation="read", unit="torr"):
        time.sleep(0.01)
    lab.health_check_failed("extraction", "pressure", message="pressure above limit", node_id="line-1")
    lab.queue_started("q-1", runs=2)
    lab.run_started("r-1", queue="q-1", sample="S-12")
    with lab.phase("extraction", run_id="r-1"):
        pass
    lab.run_completed("r-1")
    lab.run_failed("r-2")
    lab.queue_completed("q-1")
    snapshot = lab.last_device_io("pump_1")
    assert snapshot["success"] is False
    assert snapshot["error"] == "TimeoutError: no response"
    assert set(lab.last_device_io()) >= {"valve_A", "pump_1", "gauge_1"}
    events = delivered(server, service, 11)
    io = {e["attributes"]["lab.device"]: e for e in events if e["event_type"] == "device_io"}
    assert io["valve_A"]["severity_number"] == 5
    assert io["valve_A"]["attributes"]["success"] == "true"
    assert io["pump_1"]["severity_number"] == 17
    assert io["pump_1"]["attributes"]["exception.type"] == "TimeoutError"
    assert io["gauge_1"]["attributes"]["unit"] == "torr"
    assert float(io["gauge_1"]["attributes"]["duration_ms"]) >= 10
    failed = next(e for e in events if e["event_type"] == "health_check_failed")
    assert failed["body"] == "pressure above limit"
    assert failed["node_id"] == "line-1"
    kinds = [
        e["event_type"] for e in sorted(events, key=lambda e: e["time_unix_nano"]) if e["event_type"] != "device_io"
    ]
    assert kinds[1:] == [
        "queue_start",
        "run_start",
        "phase_start",
        "phase_complete",
        "run_complete",
        "run_fail",
        "queue_complete",
    ]


def test_stdlib_logging_is_bridged(sdk_server: tuple[LabtelServer, str]) -> None:
    server, service = sdk_server
    handler = lab.capture_stdlib(logging.INFO, logger="thirdparty")
    try:
        third = logging.getLogger("thirdparty.driver")
        third.debug("below the level")
        third.warning("serial port %s reset", "/dev/ttyUSB0", extra={"retries": 2})
        events = delivered(server, service, 1)
    finally:
        logging.getLogger("thirdparty").removeHandler(handler)
    [event] = events
    assert event["body"] == "serial port /dev/ttyUSB0 reset"
    assert event["severity_number"] == 13
    assert event["attributes"]["retries"] == "2"
    assert event["scope"]["name"] == "thirdparty.driver"


def test_http_protocol(server: LabtelServer, tmp_path: Path) -> None:
    service = configure(server, tmp_path, protocol="http")
    try:
        lab.get_logger("http").info("over http", n=1)
        assert by_body(delivered(server, service, 1))["over http"]["attributes"] == {"n": "1"}
    finally:
        lab.shutdown()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def every_signal_server(tmp_path: Path, factory: Callable[..., LabtelServer]) -> LabtelServer:
    """A running collector storing logs, traces and metrics (the `server` fixture stores no metrics)."""
    config = write_config(tmp_path / "otel-config.yaml", tmp_path / "data", signals=("logs", "traces", "metrics"))
    return factory(config=config, workdir=tmp_path).start()


def server_on(port: int, tmp_path: Path, factory: Callable[..., LabtelServer]) -> LabtelServer:
    config = write_config(tmp_path / "otel-config.yaml", tmp_path / "data", grpc_extra="")
    config.write_text(
        config.read_text().replace('grpc: {endpoint: "127.0.0.1:0"', f'grpc: {{endpoint: "127.0.0.1:{port}"')
    )
    return factory(config=config, workdir=tmp_path)


def test_collector_down_spools_and_delivers_exactly_once(
    tmp_path: Path, server_factory: Callable[..., LabtelServer]
) -> None:
    port = free_port()
    service = configure(f"http://127.0.0.1:{port}", tmp_path, batch_max_records=50)
    try:
        log = lab.get_logger("offline")
        started = time.perf_counter()
        for i in range(400):
            log.info("while away", i=i)
        assert (time.perf_counter() - started) / 400 < 0.005  # never blocks on the network
        away = lab.flush(2)
        assert (away.delivered, away.pending, away.dropped) == (0, 400, 0)
        assert list((tmp_path / f"spool-{service}").glob("*.otlp"))
        server = server_on(port, tmp_path, server_factory).start()
        back = lab.flush(20)
        assert (back.delivered, back.pending, back.dropped) == (400, 0, 0)
        events = server.all_events(service=service, limit=1000)
        assert sorted(int(e["attributes"]["i"]) for e in events) == list(range(400))
        assert not list((tmp_path / f"spool-{service}").glob("*.otlp*"))
    finally:
        lab.shutdown()


def test_a_full_spool_drops_and_says_so(tmp_path: Path, server_factory: Callable[..., LabtelServer]) -> None:
    port = free_port()
    service = configure(f"http://127.0.0.1:{port}", tmp_path, batch_max_records=10, spool_max_bytes=5000)
    try:
        log = lab.get_logger("overflow")
        for i in range(300):
            log.info("overflowing", i=i, padding="x" * 50)
        away = lab.flush(2)
        assert away.dropped > 0
        assert away.pending > 0
        assert away.delivered == 0
        assert away.pending + away.dropped == 300
        server = server_on(port, tmp_path, server_factory).start()
        back = lab.flush(20)
        assert back.pending == 0
        assert back.dropped == away.dropped
        events = server.all_events(service=service, limit=1000)
        warning = [e for e in events if e["event_type"] == "sdk_records_dropped"]
        assert len(warning) == 1
        assert warning[0]["attributes"]["labtel.sdk.dropped_records"] == str(away.dropped)
        assert len(events) == 300 - away.dropped + 1
    finally:
        lab.shutdown()


def test_fork_gives_the_child_its_own_exporter(sdk_server: tuple[LabtelServer, str]) -> None:
    server, service = sdk_server
    log = lab.get_logger("fork")
    log.info("before fork")
    pid = os.fork()
    if pid == 0:  # the child: log, flush, leave without running the parent's atexit handlers
        try:
            log.info("from the child", child=True)
            result = lab.flush(10)
            os._exit(0 if result.delivered >= 1 and result.pending == 0 else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    log.info("after fork")
    bodies = sorted(e["body"] for e in delivered(server, service, 3))
    assert bodies == ["after fork", "before fork", "from the child"]


def test_logging_never_raises(tmp_path: Path) -> None:
    configure("http://127.0.0.1:9", tmp_path)
    try:
        log = lab.get_logger("robust")

        class Weird:
            def __str__(self) -> str:
                raise RuntimeError("cannot render")

        log.info("odd values", obj=Weird(), when=object(), nested={"a": {"b": [1, {2, 3}]}})
        lab.mlog("bad created_at", created_at="not a time")
        lab.mlog(None, 1.5, b"x")
        assert lab.flush(1).dropped == 0
    finally:
        lab.shutdown()


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-otel")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "lab.name=observatory,site=la-palma")
    resolved = resolve(SdkSettings())
    assert (resolved.service_name, resolved.endpoint, resolved.protocol) == (
        "from-otel",
        "http://collector:4318/v1/logs",
        "http",
    )
    monkeypatch.setenv("LABTEL_SERVICE_NAME", "from-labtel")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert resolve(SdkSettings()).service_name == "from-labtel"
    assert resolve(SdkSettings()).protocol == "grpc"
    assert resolve(SdkSettings(service_name="explicit")).service_name == "explicit"


def test_each_signal_has_its_own_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the OTLP exporter specification has it: `<SIGNAL>_ENDPOINT` is used as it is, the
    general endpoint is a base (`/v1/<signal>` over HTTP), and a logs URL is no base for spans."""
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "LABTEL_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    endpoints = lambda r: (r.endpoint, r.traces_endpoint, r.metrics_endpoint)  # noqa: E731
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://c:4318/v1/logs")
    assert endpoints(resolve(SdkSettings())) == (
        "http://c:4318/v1/logs",
        "http://localhost:4318/v1/traces",
        "http://localhost:4318/v1/metrics",
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318/otlp/")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://spans:4318/custom")
    assert endpoints(resolve(SdkSettings())) == (
        "http://c:4318/v1/logs",
        "http://spans:4318/custom",
        "http://base:4318/otlp/v1/metrics",
    )
    given = resolve(SdkSettings(endpoint="http://given:4318/v1/logs"))  # an argument wins over OTEL_*
    assert endpoints(given) == (
        "http://given:4318/v1/logs",
        "http://given:4318/v1/traces",
        "http://given:4318/v1/metrics",
    )
    grpc = resolve(SdkSettings(endpoint="given:4317", metrics_endpoint="meter:4317"))
    assert (grpc.protocol, *endpoints(grpc)) == ("grpc", "http://given:4317", "http://given:4317", "http://meter:4317")


def test_spans_and_metrics_reach_the_collector_from_a_logs_url(
    tmp_path: Path, server_factory: Callable[..., LabtelServer]
) -> None:
    """An endpoint that names the logs path (`http://c:4318/v1/logs`) still sends spans and
    metrics to their own paths, not under it."""
    server = every_signal_server(tmp_path, server_factory)
    service = f"sdk-{uuid.uuid4().hex[:8]}"
    lab.configure(
        service_name=service,
        endpoint=f"{server.http}/v1/logs",
        spool_dir=tmp_path / "spool",
        batch_interval_s=0.05,
        metrics_interval_s=60,
    )
    try:
        assert core.state().settings.protocol == "http"
        lab.device_io(device="valve_B", operation="open")(lambda: None)()
        with lab.span("over http"):
            lab.get_logger("app").info("spans too")
        event = by_body(delivered(server, service, 2))["spans too"]
    finally:
        lab.shutdown()
    spans = wait_for(lambda: server.get(f"/traces/{event['trace_id']}").json()["spans"], what="the span")
    assert [s["name"] for s in spans] == ["over http"]
    names = wait_for(lambda: server.get("/series/names", service=service).json()["names"], what="the metrics")
    assert "device_io_operations" in {n["name"] for n in names}


def test_the_global_tracer_and_meter_keep_exporting_after_a_second_configure(
    tmp_path: Path, server_factory: Callable[..., LabtelServer]
) -> None:
    """Instrumentation keeps the tracer and the instruments it got from the global providers: its
    spans and metrics go to the setup now in place, not to the providers the first configure()
    made and the second shut down; after shutdown() they go nowhere."""
    import subprocess
    import sys

    server = every_signal_server(tmp_path, server_factory)
    first, second = f"first-{uuid.uuid4().hex[:6]}", f"second-{uuid.uuid4().hex[:6]}"
    script = f"""
from opentelemetry import metrics, trace
import labtel.sdk as lab
setup = dict(endpoint="http://{server.grpc}", metrics_interval_s=60)
lab.configure(service_name={first!r}, spool_dir={str(tmp_path / "a")!r}, **setup)
tracer = trace.get_tracer("app.instrumentation")
plates = metrics.get_meter("app.instrumentation").create_counter("app.plates")
with tracer.start_as_current_span("under the first"):
    pass
lab.configure(service_name={second!r}, spool_dir={str(tmp_path / "b")!r}, **setup)
with tracer.start_as_current_span("under the second") as span:
    lab.get_logger("app").info("inside the second")
plates.add(3)
print(f"{{span.get_span_context().trace_id:032x}}")
lab.shutdown()
with tracer.start_as_current_span("after shutdown") as idle:
    assert not idle.get_span_context().is_valid
plates.add(100)  # recorded nowhere, without an error
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    trace_id = result.stdout.strip()
    spans = wait_for(lambda: server.get(f"/traces/{trace_id}").json()["spans"], what="the span")
    assert [(s["name"], s["resource"]["service.name"]) for s in spans] == [("under the second", second)]
    [event] = wait_for(lambda: server.all_events(service=second, q="inside"), what="the event")
    assert event["trace_id"] == trace_id
    names = wait_for(lambda: server.get("/series/names", service=second).json()["names"], what="the metrics")
    assert "app.plates" in {n["name"] for n in names}
    assert "app.plates" not in {n["name"] for n in server.get("/series/names", service=first).json()["names"]}


def test_otel_resource_attributes_are_percent_decoded(
    server: LabtelServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values of OTEL_RESOURCE_ATTRIBUTES are percent-encoded (a space, a comma): events carry
    them decoded, as OpenTelemetry's detector gives them to the spans of the same process."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=bench%2C%20north,site=La%20Palma")
    service = f"sdk-{uuid.uuid4().hex[:8]}"
    lab.configure(
        service_name=service,
        endpoint=f"http://{server.grpc}",
        spool_dir=tmp_path / "spool",
        batch_interval_s=0.05,
        metrics=False,
    )
    try:
        with lab.span("observe"):
            lab.get_logger("obs").info("observing")
        [event] = delivered(server, service, 1)
    finally:
        lab.shutdown()
    assert event["resource"]["site"] == "La Palma"
    assert event["resource"]["deployment.environment"] == "bench, north"
    [span] = wait_for(lambda: server.get(f"/traces/{event['trace_id']}").json()["spans"], what="the span")
    assert span["resource"]["site"] == "La Palma"
    assert [e["body"] for e in server.all_events(**{"resource.site": "La Palma"})] == ["observing"]


def test_event_type_catalog() -> None:
    assert len(MADSCI_EVENT_TYPES) == 63
    assert LabEventType("Workflow_Complete") is LabEventType.WORKFLOW_COMPLETE
    assert LabEventType("device-io") is LabEventType.DEVICE_IO
    assert {LabEventType.STATE_TRANSITION, LabEventType.HEALTH_CHECK, LabEventType.DEVICE_IO} <= set(LabEventType)
    assert LabEventType.DEVICE_IO.description.startswith("One operation on a device")


scalars = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(attributes=st.dictionaries(st.text(min_size=1, max_size=10), values, max_size=6), body=values)
def test_encoding_matches_the_protobuf_library_and_storage_text(attributes: dict[str, Any], body: Any) -> None:
    record = encoding.LogRecordData(
        1_790_000_000_000_000_001,
        9,
        "INFO",
        body,
        attributes,
        "scope",
        trace_id=b"\x01" * 16,
        span_id=b"\x02" * 8,
        trace_flags=1,
        event_name="e",
    )
    data = encoding.logs_request(
        encoding.resource({"service.name": "s"}),
        [(encoding.scope("scope"), [encoding.log_record(record, encoding.AttributeEncoder())])],
    )
    decoded = ExportLogsServiceRequest.FromString(data).resource_logs[0].scope_logs[0].log_records[0]
    assert decoded.time_unix_nano == record.time_ns
    assert decoded.event_name == "e"
    assert decoded.trace_id == b"\x01" * 16
    assert decoded.flags == 1
    stored = {kv.key: value_text(kv.value) for kv in decoded.attributes}
    assert stored == {k: textform.scalar_text(v) for k, v in attributes.items()}
    assert value_text(decoded.body) == textform.scalar_text(body)


def test_events_join_spans_of_the_applications_own_tracer(sdk_server: tuple[LabtelServer, str]) -> None:
    from opentelemetry import trace

    server, service = sdk_server
    with trace.get_tracer("app.instrumentation").start_as_current_span("http GET /plates") as span:
        lab.get_logger("app").info("handled request")
    [event] = delivered(server, service, 1)
    assert event["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert event["span_id"] == f"{span.get_span_context().span_id:016x}"


def test_configure_keeps_an_existing_tracer_provider(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = f"""
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
import labtel.sdk as lab
mine = TracerProvider()
trace.set_tracer_provider(mine)
lab.configure(service_name="keeps", endpoint="http://127.0.0.1:9", spool_dir={str(tmp_path / "spool")!r}, metrics=False)
assert trace.get_tracer_provider() is mine
with trace.get_tracer("app").start_as_current_span("outer"):
    with lab.span("inner") as inner:
        assert inner.get_span_context().trace_id == trace.get_current_span().get_span_context().trace_id
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LABTEL_EXIT_FLUSH_TIMEOUT_S": "0.1"},
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_instrument_metrics_reach_the_collector(tmp_path: Path, server_factory: Callable[..., LabtelServer]) -> None:
    server = every_signal_server(tmp_path, server_factory)
    service = f"sdk-{uuid.uuid4().hex[:8]}"
    lab.configure(
        service_name=service,
        endpoint=f"http://{server.grpc}",
        spool_dir=tmp_path / "spool",
        batch_interval_s=0.05,
        metrics_interval_s=60,
    )
    try:

        @lab.device_io(device="valve_A", operation="open")
        def open_valve(fail: bool) -> None:
            if fail:
                raise OSError("stuck")

        for fail in (False, False, True):
            with contextlib.suppress(OSError):
                open_valve(fail)
        lab.health_check_failed("extraction", "pressure")
        lab.run_started("r-9")
        with lab.phase("measurement"):
            pass
        lab.run_completed("r-9")
        lab.flush(10)  # also exports the metrics now
        names = {s["name"]: s for s in server.get("/series/names", service=service).json()["names"]}
        assert {
            "device_io_operations",
            "device_io_duration",
            "device_last_success_timestamp",
            "phase_healthcheck_failures",
            "runs_started",
            "runs_completed",
            "run_duration",
            "phase_duration",
        } <= set(names)
        operations = server.get("/series", name="device_io_operations", service=service, agg="last").json()
        by_result = {s["labels"]["result"]: s["points"][-1]["value"] for s in operations["series"]}
        assert by_result == {"success": 2, "error": 1}
        for series in operations["series"]:
            assert set(series["labels"]) == {"device", "operation", "result"}  # low cardinality: no run ids
        durations = server.get("/series", name="device_io_duration", service=service, agg="count").json()
        assert sum(s["points"][-1]["value"] for s in durations["series"]) == 3
        # bounds in seconds (the OTel default, 0, 5, 10, ..., is for milliseconds: every I/O in (0, 5])
        median = server.get("/series", name="device_io_duration", service=service, quantile=0.5).json()
        point = median["series"][0]["points"][-1]
        assert point["explicit_bounds"] == list(SECONDS_BUCKETS)
        assert 0 <= point["value"] <= 0.001  # a function that returns at once: within the first bucket
        run_labels = server.get("/series", name="run_duration", service=service, agg="count").json()["series"]
        assert all("run_id" not in s["labels"] and "lab.run.id" not in s["labels"] for s in run_labels)
    finally:
        lab.shutdown()


def test_flush_and_exit_keep_to_their_timeouts_while_the_collector_is_away(tmp_path: Path) -> None:
    """Spans and metrics waiting for a collector that is away held flush(timeout_s=1) and the
    interpreter's exit for 8 s and more (OpenTelemetry's exporters retry for their own 10 s)."""
    import subprocess
    import sys

    away = f"http://127.0.0.1:{free_port()}"
    script = f"""
import time
import labtel.sdk as lab
lab.configure(service_name="away", endpoint={away!r}, spool_dir={str(tmp_path / "spool")!r})
lab.device_io(device="valve_A", operation="open")(lambda: None)()
with lab.span("transfer"):
    lab.get_logger("app").info("moving plate")
started = time.monotonic()
result = lab.flush(timeout_s=1)
print(round(time.monotonic() - started, 1), result.pending)
with lab.span("after the flush"):
    pass
"""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LABTEL_EXIT_FLUSH_TIMEOUT_S": "1"},
    )
    took = time.monotonic() - started
    flush_s, pending = result.stdout.split()
    assert float(flush_s) <= 1.5, result.stderr
    assert int(pending) == 2  # the event and the device_io event, spooled
    assert took < 5, result.stderr  # start-up, the flush (1 s) and the exit (1 s)


def test_spans_and_metrics_are_delivered_at_exit(tmp_path: Path, server_factory: Callable[..., LabtelServer]) -> None:
    import subprocess
    import sys

    server = every_signal_server(tmp_path, server_factory)
    service = f"sdk-{uuid.uuid4().hex[:8]}"
    script = f"""
import labtel.sdk as lab
lab.configure(service_name={service!r}, endpoint="http://{server.grpc}", spool_dir={str(tmp_path / "spool")!r})
lab.device_io(device="valve_A", operation="open")(lambda: None)()
with lab.span("transfer"):
    lab.get_logger("app").info("moving plate")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [event] = wait_for(lambda: server.all_events(service=service, q="moving"), what="the event")
    spans = wait_for(lambda: server.get(f"/traces/{event['trace_id']}").json()["spans"], what="the span")
    assert [s["name"] for s in spans] == ["transfer"]
    names = wait_for(lambda: server.get("/series/names", service=service).json()["names"], what="the metrics")
    assert "device_io_operations" in {n["name"] for n in names}
