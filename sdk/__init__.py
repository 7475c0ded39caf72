"""labtel.sdk: the library lab code imports to emit events as OpenTelemetry log records.

import labtel.sdk as lab

lab.configure(service_name="ot2-driver")          # optional: OTEL_* / LABTEL_* work too
log = lab.get_logger("ot2")
with lab.context(experiment_id="exp-1"), lab.run(meta={"plate": "P1"}):
    log.info("Workflow completed", event_type=lab.LabEventType.WORKFLOW_COMPLETE, workflow_id="wf-7")
lab.mlog("Captured frame", 42, "for", "M31", tags=["imaging"], ttl_seconds=120)
"""

from __future__ import annotations

from labtel.sdk._version import __version__
from labtel.sdk.core import configure, flush, shutdown
from labtel.sdk.event_types import LabEventType
from labtel.sdk.instruments import (
    device_io,
    health_check_failed,
    last_device_io,
    phase,
    queue_completed,
    queue_started,
    run_cancelled,
    run_completed,
    run_failed,
    run_started,
)
from labtel.sdk.logger import context, get_logger, propagate
from labtel.sdk.messages import debug, error, fatal, info, mlog, trace, warn
from labtel.sdk.pipeline import FlushResult
from labtel.sdk.runs import Run, run
from labtel.sdk.stdlib import capture_stdlib
from labtel.sdk.tracing import span

log = mlog
warning = warn

__all__ = [
    "FlushResult",
    "LabEventType",
    "Run",
    "__version__",
    "capture_stdlib",
    "configure",
    "context",
    "debug",
    "device_io",
    "error",
    "fatal",
    "flush",
    "get_logger",
    "health_check_failed",
    "info",
    "last_device_io",
    "log",
    "mlog",
    "phase",
    "propagate",
    "queue_completed",
    "queue_started",
    "run",
    "run_cancelled",
    "run_completed",
    "run_failed",
    "run_started",
    "shutdown",
    "span",
    "trace",
    "warn",
    "warning",
]
