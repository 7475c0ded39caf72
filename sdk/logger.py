"""The structlog front end: `get_logger(name)` and the processor that turns an event into a record.

labtel does not touch the application's own structlog configuration: its loggers are wrapped
individually. The last processor maps the event dict to an OpenTelemetry log record (message →
body, level → severity, fields → attributes with lab names, the active span's trace and span
ids) and queues it for delivery.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import structlog
from opentelemetry import trace
from structlog.typing import Processor

from labtel.sdk import core, semconv
from labtel.sdk.encoding import LogRecordData, snapshot
from labtel.sdk.event_types import event_type_value

P = ParamSpec("P")
R = TypeVar("R")

_SEVERITY_TEXT = {1: "TRACE", 5: "DEBUG", 9: "INFO", 13: "WARN", 17: "ERROR", 21: "FATAL"}
_INVALID_SPAN = trace.INVALID_SPAN_CONTEXT


def exception_attributes(exc: BaseException) -> dict[str, str]:
    """OpenTelemetry's exception.type / .message / .stacktrace for an exception."""
    kind = type(exc)
    name = (
        kind.__qualname__ if kind.__module__ in ("builtins", "__main__") else f"{kind.__module__}.{kind.__qualname__}"
    )
    return {
        semconv.EXCEPTION_TYPE: name,
        semconv.EXCEPTION_MESSAGE: str(exc),
        semconv.EXCEPTION_STACKTRACE: "".join(traceback.format_exception(exc)),
    }


def _exception_from(exc_info: Any) -> BaseException | None:
    if exc_info is True:
        return sys.exc_info()[1]
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        return exc_info[1] if isinstance(exc_info[1], BaseException) else None
    return None


_MAX_TIME_NS = (2**32 - 1) * 10**9
"""The latest time the collector stores (2106-02-07T06:28:15Z, the last second of a ClickHouse
DateTime): OTLP times are unsigned, from 1970 on."""
ORIGINAL_TIME = "labtel.sdk.original_time"
"""The attribute keeping an event time that storage cannot hold (the record has the time it was logged)."""


def _time_text(time_ns: int) -> str:
    """An event time as ISO 8601 UTC text (its nanoseconds when even that cannot show it)."""
    try:
        return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_ns // 1000)).isoformat()
    except OverflowError:
        return f"{time_ns} ns"


def build_record(
    scope: str,
    severity: int,
    body: Any,
    fields: Mapping[str, Any],
    time_ns: int | None = None,
    exc_info: Any = None,
) -> LogRecordData:
    """A log record from a message and keyword fields (`workflow_id=` → `lab.workflow.id`, ...)."""
    attributes: dict[str, Any] = {}
    event_name = ""
    aliases = semconv.FIELD_ALIASES
    for key, value in fields.items():
        if value is None:
            continue
        name = aliases.get(key, key)
        kind = type(value)
        if name == semconv.LAB_EVENT_TYPE:
            value = event_name = event_type_value(value)
        elif kind is str or kind is int or kind is float or kind is bool:
            pass  # immutable: kept as it is (the hot path)
        elif key == "metadata" and isinstance(value, Mapping):
            attributes.update((str(k), snapshot(v)) for k, v in value.items() if v is not None)
            continue
        elif isinstance(value, datetime):
            value = value.isoformat()
        else:
            value = snapshot(value)  # encoded now: a later change by the caller must not show
        attributes[name] = value
    exc = _exception_from(exc_info)
    if exc is not None:
        attributes.update(exception_attributes(exc))
    body = snapshot(body)
    span = trace.get_current_span().get_span_context()
    now = time.time_ns()
    if time_ns is not None and not 0 < time_ns <= _MAX_TIME_NS:
        attributes[ORIGINAL_TIME] = _time_text(time_ns)
        time_ns = now  # storable times are 1970 to 2106: the event is kept, at the time it was logged
    if span is _INVALID_SPAN or not span.is_valid:
        return LogRecordData(
            time_ns or now,
            severity,
            _SEVERITY_TEXT.get(severity, ""),
            body,
            attributes,
            scope,
            event_name=event_name,
            observed_ns=now,
        )
    return LogRecordData(
        time_ns or now,
        severity,
        _SEVERITY_TEXT.get(severity, ""),
        body,
        attributes,
        scope,
        trace_id=span.trace_id.to_bytes(16, "big"),
        span_id=span.span_id.to_bytes(8, "big"),
        trace_flags=int(span.trace_flags),
        event_name=event_name,
        observed_ns=now,
    )


def emit(
    scope: str, severity: int, body: Any, fields: Mapping[str, Any], time_ns: int | None = None, exc_info: Any = None
) -> None:
    """Queue one record for delivery, with the fields of `context()` / `run()` (the explicit
    `fields` win); never raises (a failure here is not the caller's problem)."""
    try:
        sdk = core.state()
        if severity < sdk.min_severity:
            return
        bound = structlog.contextvars.get_contextvars()
        if bound:
            fields = {**bound, **fields}
        sdk.pipeline.emit(build_record(scope, severity, body, fields, time_ns, exc_info))
    except Exception:
        logging.getLogger("labtel.sdk").debug("labtel.sdk could not emit a record", exc_info=True)


class _Sink:
    """What a labtel structlog logger writes to after its processors: nothing, or the console."""

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, *args: Any, **kwargs: Any) -> None:
        if args and core.state().settings.console:
            print(args[0], file=sys.stderr)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


_console_renderer = structlog.dev.ConsoleRenderer(colors=False)


def _to_record(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
    """The final processor: queue the event as a log record."""
    try:
        sdk = core.state()
        severity = core.SEVERITY_OF_LEVEL.get(method_name, 9)
        if severity < sdk.min_severity:
            raise structlog.DropEvent
        fields = dict(event_dict)
        body = fields.pop("event", "")
        exc_info = fields.pop("exc_info", True if method_name == "exception" else None)
        fields.pop("stack_info", None)
        sdk.pipeline.emit(build_record(logger.name, severity, body, fields, exc_info=exc_info))
        if sdk.settings.console:
            return str(_console_renderer(logger, method_name, {**event_dict, "level": method_name}))
    except structlog.DropEvent:
        raise
    except Exception:
        logging.getLogger("labtel.sdk").debug("labtel.sdk could not emit a record", exc_info=True)
    return ""


_PROCESSORS: list[Processor] = [structlog.contextvars.merge_contextvars, _to_record]
_BoundLogger = structlog.make_filtering_bound_logger(logging.DEBUG)


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger whose events become OpenTelemetry log records sent to the collector.

    `log.info("Run started", run_id="r1", node_id="ot2")`, `log.bind(...)`, `log.exception(...)`;
    keyword fields become attributes (`node_id` is stored as `lab.node.id`)."""
    logger = structlog.wrap_logger(
        _Sink(name or core.state().settings.service_name or "labtel"),
        processors=_PROCESSORS,
        wrapper_class=_BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=True,
    )
    return logger.bind(**initial) if initial else logger


@contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Fields that every event inside the block carries (they nest, and follow asyncio tasks;
    wrap callables with `propagate` to take them into threads)."""
    with structlog.contextvars.bound_contextvars(**fields):
        yield


def propagate(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn`, running in a copy of the caller's context (its labtel context and active span),
    e.g. for `threading.Thread(target=propagate(work))` or `executor.submit(propagate(work))`."""
    captured = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return captured.copy().run(fn, *args, **kwargs)

    return run
