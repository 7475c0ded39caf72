"""Resource attributes every event carries: who, where, what process."""

from __future__ import annotations

import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any

from labtel.sdk import semconv
from labtel.sdk._version import __version__
from labtel.sdk.settings import otel_resource_attributes


def detect(service_name: str, lab_name: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Service, host, process and runtime attributes, plus OTEL_RESOURCE_ATTRIBUTES and `extra`."""
    hostname = socket.gethostname()
    try:
        fqdn = socket.getfqdn()
    except OSError:
        fqdn = hostname
    attributes: dict[str, Any] = {
        semconv.SERVICE_NAME: service_name,
        semconv.HOST_NAME: hostname,
        "host.fqdn": fqdn,
        "process.pid": os.getpid(),
        "process.executable.name": Path(sys.executable).name,
        "process.command": Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python",
        "process.working_directory": os.getcwd(),
        "process.runtime.name": platform.python_implementation().lower(),
        "process.runtime.version": platform.python_version(),
        "telemetry.sdk.name": "labtel",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": __version__,
    }
    attributes.update(otel_resource_attributes())
    if lab_name:
        attributes[semconv.LAB_NAME] = lab_name
    attributes.update(extra or {})
    attributes[semconv.SERVICE_NAME] = service_name
    return attributes
