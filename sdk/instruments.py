"""Lab instrumentation, like Pychron's: device I/O, health checks, experiment lifecycle.

Each helper logs an event and records OpenTelemetry metrics with low-cardinality labels only
(device, operation, result, phase, status — never a run id):

| metric (OTel name, unit) | Prometheus name | labels |
| --- | --- | --- |
| device_io_operations | device_io_operations_total | device, operation, result |
| device_io_duration (s) | device_io_duration_seconds | device, operation |
| device_last_success_timestamp (s) | device_last_success_timestamp_seconds | device |
| phase_healthcheck_failures | phase_healthcheck_failures_total | phase, kind |
| queue_starts, queue_completions | queue_starts_total, queue_completions_total | status |
| runs_started, runs_completed | runs_started_total, runs_completed_total | status |
| run_duration (s), phase_duration (s) | run_duration_seconds, phase_duration_seconds | phase |
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from labtel.sdk import core, semconv
from labtel.sdk.event_types import LabEventType
from labtel.sdk.logger import emit

P = ParamSpec("P")
R = TypeVar("R")

_SCOPE = "labtel.instruments"
_last_io: dict[str, dict[str, Any]] = {}
_last_io_lock = threading.Lock()
_run_starts: dict[str, float] = {}


SECONDS_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    *(120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0),
)
"""Bucket bounds of the duration histograms (seconds: a valve's milliseconds to a day-long run).
The OTel SDK's default bounds (0, 5, 10, 25, ... 10000) are made for milliseconds: in seconds
every device I/O would fall in the one bucket (0, 5] and its quantiles would say nothing."""


def _instrument(name: str, kind: str, unit: str = "", description: str = "") -> Any:
    sdk = core.state()
    found = sdk.instruments.get(name)
    if found is None:
        meter = sdk.meter()
        if kind == "histogram":
            bounds = {"explicit_bucket_boundaries_advisory": SECONDS_BUCKETS} if unit == "s" else {}
            found = meter.create_histogram(name, unit=unit, description=description, **bounds)
        else:
            factory = {"counter": meter.create_counter, "gauge": meter.create_gauge}[kind]
            found = factory(name, unit=unit, description=description)
        sdk.instruments[name] = found
    return found


def _safely(record: Callable[[], None]) -> None:
    try:
        record()
    except Exception:  # metrics must never break instrument code
        return


class device_io:
    """Time an operation on a device: `@device_io(device="valve_A", operation="open")` on a sync
    or async function, or `with device_io(device="gauge_1", operation="read"):`.

    Logs a `device_io` event (debug, or error on failure) with the duration and the outcome,
    records the device I/O metrics, and keeps the last I/O of each device (`last_device_io`).
    Exceptions are recorded and re-raised unchanged."""

    def __init__(self, device: str, operation: str, **fields: Any) -> None:
        self.device = device
        self.operation = operation
        self.fields = fields
        self._started: list[float] = []

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                started = time.perf_counter()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as error:
                    self._record(time.perf_counter() - started, error)
                    raise
                self._record(time.perf_counter() - started, None)
                return result

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:
                self._record(time.perf_counter() - started, error)
                raise
            self._record(time.perf_counter() - started, None)
            return result

        return run

    def __enter__(self) -> device_io:
        self._started.append(time.perf_counter())
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._record(time.perf_counter() - self._started.pop(), error)

    async def __aenter__(self) -> device_io:
        return self.__enter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(kind, error, tb)

    def _record(self, duration_s: float, error: BaseException | None) -> None:
        success = error is None
        now = time.time()
        snapshot = {
            "device": self.device,
            "operation": self.operation,
            "duration_ms": round(duration_s * 1000, 3),
            "success": success,
            "error": "" if success else f"{type(error).__name__}: {error}",
            "timestamp": now,
        }
        with _last_io_lock:
            _last_io[self.device] = snapshot
        emit(
            _SCOPE,
            5 if success else 17,
            f"{self.device} {self.operation} {'ok' if success else 'failed'} in {snapshot['duration_ms']} ms",
            {
                **self.fields,
                "event_type": LabEventType.DEVICE_IO,
                semconv.LAB_DEVICE: self.device,
                semconv.LAB_DEVICE_OPERATION: self.operation,
                "duration_ms": snapshot["duration_ms"],
                "success": success,
                **({"error": snapshot["error"]} if error else {}),
            },
            exc_info=error,
        )

        def metrics() -> None:
            labels = {"device": self.device, "operation": self.operation}
            _instrument("device_io_operations", "counter", "{operation}", "Device I/O operations").add(
                1, {**labels, "result": "success" if success else "error"}
            )
            _instrument("device_io_duration", "histogram", "s", "Device I/O duration").record(duration_s, labels)
            if success:
                _instrument(
                    "device_last_success_timestamp", "gauge", "s", "Unix time of the device's last successful I/O"
                ).set(now, {"device": self.device})

        _safely(metrics)


def last_device_io(device: str | None = None) -> dict[str, Any]:
    """The last I/O of one device (or of every device, by name)."""
    with _last_io_lock:
        if device is not None:
            return dict(_last_io.get(device, {}))
        return {name: dict(io) for name, io in _last_io.items()}


def health_check_failed(phase: str, kind: str, message: str = "", **fields: Any) -> None:
    """A health check failed: an error event and `phase_healthcheck_failures{phase, kind}`."""
    emit(
        _SCOPE,
        17,
        message or f"Health check failed: {kind} during {phase}",
        {**fields, "event_type": LabEventType.HEALTH_CHECK_FAILED, "phase": phase, "health_check.kind": kind},
    )
    _safely(
        lambda: _instrument("phase_healthcheck_failures", "counter", "{failure}", "Failed health checks").add(
            1, {"phase": phase, "kind": kind}
        )
    )


def queue_started(queue: str, runs: int | None = None, **fields: Any) -> None:
    """An experiment queue started."""
    emit(
        _SCOPE,
        9,
        f"Queue {queue} started",
        {**fields, "event_type": LabEventType.QUEUE_START, semconv.LAB_QUEUE_ID: queue, "queue.runs": runs},
    )
    _safely(lambda: _instrument("queue_starts", "counter", "{queue}").add(1))


def queue_completed(queue: str, status: str = "success", **fields: Any) -> None:
    """An experiment queue finished (status: success, failed, cancelled, ...)."""
    emit(
        _SCOPE,
        9 if status == "success" else 13,
        f"Queue {queue} {status}",
        {**fields, "event_type": LabEventType.QUEUE_COMPLETE, semconv.LAB_QUEUE_ID: queue, "status": status},
    )
    _safely(lambda: _instrument("queue_completions", "counter", "{queue}").add(1, {"status": status}))


def run_started(run_id: str, queue: str | None = None, **fields: Any) -> None:
    """A run started (sample, material, ... as fields)."""
    _run_starts[run_id] = time.monotonic()
    emit(
        _SCOPE,
        9,
        f"Run {run_id} started",
        {**fields, "event_type": LabEventType.RUN_START, semconv.LAB_RUN_ID: run_id, semconv.LAB_QUEUE_ID: queue},
    )
    _safely(lambda: _instrument("runs_started", "counter", "{run}").add(1))


def run_completed(run_id: str, status: str = "success", **fields: Any) -> None:
    """A run ended: status success, failed or cancelled (the event type follows)."""
    started = _run_starts.pop(run_id, None)
    duration_s = time.monotonic() - started if started is not None else None
    kind = {
        "success": LabEventType.RUN_COMPLETE,
        "failed": LabEventType.RUN_FAIL,
        "cancelled": LabEventType.RUN_CANCEL,
    }.get(status, LabEventType.RUN_COMPLETE)
    emit(
        _SCOPE,
        9 if status == "success" else 17 if status == "failed" else 13,
        f"Run {run_id} {status}",
        {
            **fields,
            "event_type": kind,
            semconv.LAB_RUN_ID: run_id,
            "status": status,
            "duration_ms": None if duration_s is None else round(duration_s * 1000, 3),
        },
    )

    def metrics() -> None:
        _instrument("runs_completed", "counter", "{run}").add(1, {"status": status})
        if duration_s is not None:
            _instrument("run_duration", "histogram", "s", "Run duration").record(duration_s, {"status": status})

    _safely(metrics)


def run_failed(run_id: str, **fields: Any) -> None:
    """A run failed."""
    run_completed(run_id, "failed", **fields)


def run_cancelled(run_id: str, **fields: Any) -> None:
    """A run was cancelled."""
    run_completed(run_id, "cancelled", **fields)


@contextmanager
def phase(name: str, **fields: Any) -> Iterator[None]:
    """Time a phase of a run (extraction, measurement, ...): `phase_start` / `phase_complete`
    events and `phase_duration{phase}`."""
    emit(_SCOPE, 5, f"Phase {name} started", {**fields, "event_type": LabEventType.PHASE_START, "phase": name})
    started = time.perf_counter()
    status = "success"
    try:
        yield
    except BaseException:
        status = "failed"
        raise
    finally:
        duration_s = time.perf_counter() - started
        emit(
            _SCOPE,
            9 if status == "success" else 17,
            f"Phase {name} {status}",
            {
                **fields,
                "event_type": LabEventType.PHASE_COMPLETE,
                "phase": name,
                "status": status,
                "duration_ms": round(duration_s * 1000, 3),
            },
        )
        _safely(
            lambda: _instrument("phase_duration", "histogram", "s", "Phase duration").record(
                duration_s, {"phase": name, "status": status}
            )
        )
