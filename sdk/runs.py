"""Runs, like PANOPTES': `with labtel.sdk.run(meta={...}) as run:` — every event inside carries
`lab.run.id`, and the run's start and end are events themselves."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from labtel.sdk import semconv
from labtel.sdk.event_types import LabEventType
from labtel.sdk.logger import emit


def new_run_id() -> str:
    """A readable, sortable, unique run id: run-20261124T081500Z-3f9a."""
    return f"run-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(2)}"


@dataclass
class Run:
    """The run a block of code belongs to."""

    id: str
    meta: dict[str, Any] = field(default_factory=dict)
    started_ns: int = 0
    status: str = "running"

    def event(self, message: str, level: str = "info", **fields: Any) -> None:
        """Log an event of this run."""
        from labtel.sdk.core import SEVERITY_OF_LEVEL

        emit("labtel.run", SEVERITY_OF_LEVEL.get(level, 9), message, {semconv.LAB_RUN_ID: self.id, **fields})


@contextmanager
def run(run_id: str | None = None, meta: dict[str, Any] | None = None, **fields: Any) -> Iterator[Run]:
    """A run: events inside carry its id and `fields` (as `context(**fields)`); `run_start` and
    `run_complete` / `run_fail` / `run_cancel` (with the duration, and the exception when there is
    one) are logged."""
    current = Run(run_id or new_run_id(), dict(meta or {}), time.time_ns())
    start_fields = {semconv.LAB_RUN_ID: current.id, **fields, **{f"run.meta.{k}": v for k, v in current.meta.items()}}
    emit("labtel.run", 9, f"Run {current.id} started", {**start_fields, "event_type": LabEventType.RUN_START})
    with structlog.contextvars.bound_contextvars(**fields, run_id=current.id):
        try:
            yield current
        except (KeyboardInterrupt, asyncio.CancelledError) as stop:
            current.status = "cancelled"
            _finish(current, LabEventType.RUN_CANCEL, 13, fields, stop)
            raise
        except BaseException as failure:
            current.status = "failed"
            _finish(current, LabEventType.RUN_FAIL, 17, fields, failure)
            raise
        current.status = "complete"
        _finish(current, LabEventType.RUN_COMPLETE, 9, fields, None)


def _finish(current: Run, kind: LabEventType, severity: int, fields: dict[str, Any], exc: BaseException | None) -> None:
    duration_ms = (time.time_ns() - current.started_ns) / 1e6
    verb = {LabEventType.RUN_COMPLETE: "completed", LabEventType.RUN_FAIL: "failed"}.get(kind, "was cancelled")
    emit(
        "labtel.run",
        severity,
        f"Run {current.id} {verb}",
        {
            semconv.LAB_RUN_ID: current.id,
            **fields,
            "event_type": kind,
            "duration_ms": duration_ms,
            "run.status": current.status,
        },
        exc_info=exc,
    )
