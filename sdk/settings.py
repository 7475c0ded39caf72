"""The SDK's settings: `configure()` arguments first, then `LABTEL_*`, then the standard `OTEL_*`
environment variables, then defaults."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Protocol = Literal["grpc", "http"]
Signal = Literal["logs", "traces", "metrics"]
SIGNALS: tuple[Signal, ...] = ("logs", "traces", "metrics")
LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "exception", "critical", "fatal")
"""The level names `level` takes (case-insensitive)."""


class SdkSettings(BaseSettings):
    """Everything configure() can set; each field also reads `LABTEL_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="LABTEL_", extra="ignore")

    service_name: str | None = None
    endpoint: str | None = Field(None, description="Collector address, e.g. http://localhost:4317")
    traces_endpoint: str | None = Field(None, description="Where spans go (default: derived from `endpoint`)")
    metrics_endpoint: str | None = Field(None, description="Where metrics go (default: derived from `endpoint`)")
    protocol: Protocol | None = None
    lab_name: str | None = None
    level: str = Field("debug", description="Lowest level sent: trace, debug, info, warning, error, critical")
    console: bool = Field(False, description="Also print events to stderr")
    headers: str | None = Field(None, description="Extra request headers: k=v,k=v (e.g. authorization)")
    api_key: str | None = Field(
        None, description="API key of the collector's labtel_auth extension, sent as 'authorization: Bearer <key>'"
    )
    certificate_file: Path | None = Field(
        None, description="CA certificate (PEM) to trust for an https:// endpoint (default: the system's)"
    )
    timeout_s: float = Field(10.0, gt=0, description="Per-request send timeout")
    batch_max_records: int = Field(512, ge=1)
    batch_interval_s: float = Field(1.0, gt=0, description="Longest time a record waits before it is sent")
    queue_max_records: int = Field(100_000, ge=1, description="Records held in memory before spooling to disk")
    spool_dir: Path | None = Field(None, description="Where records wait while the collector is away")
    spool_max_bytes: int = Field(256 * 1024 * 1024, ge=0, description="Spool bound; past it records are dropped")
    metrics_interval_s: float = Field(10.0, gt=0)
    traces: bool = Field(True, description="Export spans (labtel.sdk.span and OTel instrumentation)")
    metrics: bool = Field(True, description="Export metrics (device I/O, lifecycle)")

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in LEVELS:
            raise ValueError(f"unknown level {value!r}; one of {', '.join(LEVELS)}")
        return value


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def otel_resource_attributes() -> dict[str, str]:
    """`OTEL_RESOURCE_ATTRIBUTES` (k=v,k=v, values percent-encoded: `lab.name=Chem%20Lab`) as a
    dict, read as OpenTelemetry's own resource detector reads it (the spans' resource)."""
    from urllib.parse import unquote

    raw = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    pairs = (item.split("=", 1) for item in raw.split(",") if "=" in item)
    return {key.strip(): unquote(value.strip()) for key, value in pairs}


def resolve(settings: SdkSettings) -> SdkSettings:
    """Fill what LABTEL_* and the arguments left open from OTEL_* and defaults."""
    service = (
        settings.service_name
        or _env("OTEL_SERVICE_NAME")
        or otel_resource_attributes().get("service.name")
        or Path(sys.argv[0] or "python").stem
        or "python"
    )
    protocol = settings.protocol
    if protocol is None:
        wanted = _env("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
        if wanted:
            protocol = "grpc" if wanted == "grpc" else "http"
    given = settings.endpoint or _env("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    if protocol is None:
        protocol = "http" if given and (given.rstrip("/").endswith(":4318") or "/v1/" in given) else "grpc"
    endpoints = signal_endpoints(settings, protocol)
    headers = settings.headers or _env("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
    certificate = settings.certificate_file or _env(
        "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"
    )
    return settings.model_copy(
        update={
            "service_name": service,
            "protocol": protocol,
            "endpoint": endpoints["logs"],
            "traces_endpoint": endpoints["traces"],
            "metrics_endpoint": endpoints["metrics"],
            "headers": headers,
            "certificate_file": Path(certificate) if certificate else None,
        }
    )


def signal_endpoints(settings: SdkSettings, protocol: Protocol) -> dict[Signal, str]:
    """Where each signal goes, as the OTLP exporter specification has it: the `<SIGNAL>_ENDPOINT`
    settings and variables are used as they are; `endpoint` (or OTEL_EXPORTER_OTLP_ENDPOINT) is
    the base the others derive from, with `/v1/<signal>` for OTLP/HTTP. A base that names one
    signal's path (`http://c:4318/v1/logs`) gives the others their own. `endpoint`, given, wins
    over every OTEL_* variable."""
    base = settings.endpoint or _env("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not base:
        base = "http://localhost:4317" if protocol == "grpc" else "http://localhost:4318"
    own_settings = {"traces": settings.traces_endpoint, "metrics": settings.metrics_endpoint}
    found: dict[Signal, str] = {}
    for signal in SIGNALS:
        own = own_settings.get(signal) or (
            None if settings.endpoint else _env(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
        )
        found[signal] = _with_scheme(own) if own else _derived(_with_scheme(base), signal, protocol)
    return found


def _with_scheme(endpoint: str) -> str:
    """`localhost:4318` as `http://localhost:4318`: plain HTTP, as OTLP exporters take it."""
    return endpoint if "://" in endpoint else f"http://{endpoint}"


def _derived(base: str, signal: Signal, protocol: Protocol) -> str:
    """The endpoint of `signal` from the base address: gRPC takes the address as it is (the
    service names the signal); OTLP/HTTP posts to `/v1/<signal>` under the base's path."""
    if protocol == "grpc":
        return base
    root = base.rstrip("/")
    for other in SIGNALS:
        root = root.removesuffix(f"/v1/{other}")
    return f"{root}/v1/{signal}"


def request_headers(settings: SdkSettings) -> dict[str, str]:
    """The headers every request carries: `headers`, and the API key as `authorization: Bearer`
    unless `headers` already holds an authorization."""
    headers = parse_headers(settings.headers)
    if settings.api_key and "authorization" not in headers:
        headers["authorization"] = f"Bearer {settings.api_key.strip()}"
    return headers


def parse_headers(text: str | None) -> dict[str, str]:
    """`k=v,k=v` as a dict (values may be URL-encoded, as in OTEL_EXPORTER_OTLP_HEADERS)."""
    from urllib.parse import unquote

    if not text:
        return {}
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {key.strip().lower(): unquote(value.strip()) for key, value in pairs}
