"""The configured SDK: settings, resource, the delivery pipeline, and the tracer and meter providers.

`configure()` builds it; anything that needs it and finds none configures one from the
environment, so `from labtel.sdk import get_logger` is enough to start.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from pydantic import ValidationError

from labtel.sdk import resource as resource_detection
from labtel.sdk._version import __version__
from labtel.sdk.global_providers import CurrentMeterProvider, CurrentTracerProvider, meter_provider_unset
from labtel.sdk.pipeline import FlushResult, Pipeline, exit_timeout_s
from labtel.sdk.settings import SdkSettings, request_headers, resolve
from labtel.sdk.transport import make_transport

log = logging.getLogger("labtel.sdk")

SEVERITY_OF_LEVEL = {
    "trace": 1,
    "debug": 5,
    "info": 9,
    "warning": 13,
    "warn": 13,
    "error": 17,
    "exception": 17,
    "critical": 21,
    "fatal": 21,
}


@dataclass
class Sdk:
    """Everything one configure() call set up."""

    settings: SdkSettings
    resource: dict[str, Any]
    pipeline: Pipeline
    min_severity: int
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    instruments: dict[str, Any] = field(default_factory=dict)

    def tracer(self) -> trace.Tracer:
        provider = self.tracer_provider or trace.get_tracer_provider()
        return provider.get_tracer("labtel.sdk", __version__)

    def meter(self) -> metrics.Meter:
        provider = self.meter_provider or metrics.get_meter_provider()
        return provider.get_meter("labtel.sdk", __version__)

    def flush_providers(self, timeout_s: float) -> None:
        """Export the spans and metrics recorded so far. OpenTelemetry's force_flush does not keep
        to `timeout_s` while the collector is away (an exporter retries for its own 10 s): callers
        run it on a thread of its own and wait for it as long as they may."""
        millis = int(timeout_s * 1000)
        for provider in (self.meter_provider, self.tracer_provider):
            if provider is not None:
                try:
                    provider.force_flush(millis)
                except Exception:
                    log.debug("labtel.sdk: provider flush failed", exc_info=True)

    def shutdown(self, timeout_s: float = 5.0) -> FlushResult:
        """Deliver what can be within `timeout_s`, then stop: the log pipeline and the providers
        at once (a provider's shutdown, waiting on a collector that is away, is left to finish
        on its own thread: a span processor's shutdown waits up to 30 s)."""

        def stop_providers() -> None:
            for provider in (self.tracer_provider, self.meter_provider):
                if provider is not None:
                    try:
                        provider.shutdown()
                    except Exception:
                        log.debug("labtel.sdk: provider shutdown failed", exc_info=True)

        deadline = time.monotonic() + timeout_s
        providers = _start(stop_providers, "labtel-sdk-provider-shutdown")
        result = self.pipeline.shutdown(timeout_s)
        providers.join(max(0.0, deadline - time.monotonic()))
        return result


def _start(action: Callable[[], None], name: str) -> threading.Thread:
    """`action` running on a daemon thread of its own."""
    thread = threading.Thread(target=action, name=name, daemon=True)
    thread.start()
    return thread


_state: Sdk | None = None
_lock = threading.RLock()


def configure(
    service_name: str | None = None,
    endpoint: str | None = None,
    protocol: str | None = None,
    resource: dict[str, Any] | None = None,
    lab_name: str | None = None,
    **options: Any,
) -> Sdk:
    """Set up labtel.sdk: where events go and what they say about their source.

    Arguments override `LABTEL_*` environment variables, which override the standard `OTEL_*`
    ones (OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_ENDPOINT and its per-signal
    OTEL_EXPORTER_OTLP_{LOGS,TRACES,METRICS}_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_CERTIFICATE). Other
    options: level, console, headers, api_key (LABTEL_API_KEY), certificate_file, timeout_s, batch_max_records, batch_interval_s, queue_max_records, spool_dir,
    spool_max_bytes, metrics_interval_s, traces, metrics. Calling it again replaces the setup
    (what the previous one had queued is delivered first).
    """
    unknown = sorted(set(options) - set(SdkSettings.model_fields))
    if unknown:
        raise TypeError(f"configure() got an unexpected keyword argument {unknown[0]!r}")
    given = {"service_name": service_name, "endpoint": endpoint, "protocol": protocol, "lab_name": lab_name, **options}
    settings = resolve(_settings({k: v for k, v in given.items() if v is not None}))
    global _state
    with _lock:
        if _state is not None:
            _state.shutdown()
            _state = None
        _state = _build(settings, resource or {})
        _bind_global_meters(_state.meter_provider)
        return _state


def _settings(given: dict[str, Any]) -> SdkSettings:
    """The settings from `given` and the environment. A bad argument raises; a bad `LABTEL_*`
    variable is named in one warning and its setting takes its default, so logging calls go on
    the same way everywhere (and never raise)."""
    try:
        return SdkSettings(**given)
    except ValidationError as error:
        bad = {str(problem["loc"][0]): problem["msg"] for problem in error.errors() if problem["loc"]}
        if not bad or set(bad) & set(given):
            raise
    fields = SdkSettings.model_fields
    for name, problem in sorted(bad.items()):
        variable = f"LABTEL_{name.upper()}"
        log.warning(
            "labtel.sdk: %s=%r is not valid (%s); using the default, %r",
            variable,
            os.environ.get(variable, os.environ.get(variable.lower(), "")),
            problem,
            fields[name].default,
        )
    return SdkSettings(**given, **{name: fields[name].default for name in bad})


def _build(settings: SdkSettings, extra_resource: dict[str, Any]) -> Sdk:
    assert settings.service_name is not None
    assert settings.endpoint is not None
    assert settings.protocol is not None
    attributes = resource_detection.detect(settings.service_name, settings.lab_name, extra_resource)
    headers = request_headers(settings)
    protocol, endpoint, certificate = settings.protocol, settings.endpoint, settings.certificate_file
    spool = settings.spool_dir or _default_spool_dir(settings.service_name)
    pipeline = Pipeline(
        attributes,
        lambda: make_transport(protocol, endpoint, headers, settings.timeout_s, certificate),
        spool,
        settings.spool_max_bytes,
        batch_max_records=settings.batch_max_records,
        batch_interval_s=settings.batch_interval_s,
        queue_max_records=settings.queue_max_records,
    )
    level = settings.level.lower()
    sdk = Sdk(settings, attributes, pipeline, SEVERITY_OF_LEVEL.get(level, 5))
    otel_resource = Resource.create({k: v for k, v in attributes.items() if isinstance(v, (str, int, float, bool))})
    if settings.traces:
        assert settings.traces_endpoint is not None
        sdk.tracer_provider = _tracer_provider(otel_resource, protocol, settings.traces_endpoint, headers, certificate)
    if settings.metrics:
        assert settings.metrics_endpoint is not None
        sdk.meter_provider = _meter_provider(
            otel_resource, protocol, settings.metrics_endpoint, headers, settings.metrics_interval_s, certificate
        )
    return sdk


def _default_spool_dir(service_name: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in service_name)
    return cache / "labtel" / "spool" / safe


def _grpc_credentials(endpoint: str, certificate: Path | None) -> Any:
    """TLS credentials trusting `certificate` for an https:// endpoint; None otherwise."""
    if certificate is None or not endpoint.startswith("https"):
        return None
    import grpc

    return grpc.ssl_channel_credentials(root_certificates=certificate.read_bytes())


def _tracer_provider(
    resource: Resource, protocol: str, endpoint: str, headers: dict[str, str], certificate: Path | None = None
) -> TracerProvider:
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

        exporter: Any = HttpSpanExporter(
            endpoint=endpoint,
            headers=headers,
            certificate_file=str(certificate) if certificate else None,
        )
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        exporter = GrpcSpanExporter(
            endpoint=endpoint,
            insecure=not endpoint.startswith("https"),
            headers=headers,
            credentials=_grpc_credentials(endpoint, certificate),
        )
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)  # _at_exit shuts it down
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(CurrentTracerProvider(_current_tracer_provider))
    return provider


def _current_tracer_provider() -> TracerProvider | None:
    """The tracer provider of the setup now in place: where the process's global tracers send
    their spans (the global is set once; each configure() makes a provider of its own)."""
    current = _state
    return current.tracer_provider if current is not None else None


def _meter_provider(
    resource: Resource,
    protocol: str,
    endpoint: str,
    headers: dict[str, str],
    interval_s: float,
    certificate: Path | None = None,
) -> MeterProvider:
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter

        exporter: Any = HttpMetricExporter(
            endpoint=endpoint,
            headers=headers,
            certificate_file=str(certificate) if certificate else None,
        )
    else:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter

        exporter = GrpcMetricExporter(
            endpoint=endpoint,
            insecure=not endpoint.startswith("https"),
            headers=headers,
            credentials=_grpc_credentials(endpoint, certificate),
        )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=int(interval_s * 1000))
    return MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)


_GLOBAL_METERS = CurrentMeterProvider()
"""The process's global meter provider, when the process had none of its own (set once)."""


def _bind_global_meters(provider: MeterProvider | None) -> None:
    """Point the global meters at the setup now in place (None: at nothing), first setting
    labtel's stand-in as the global provider if the process has none (OTel instrumentation then
    records into ours)."""
    if provider is not None and meter_provider_unset():
        metrics.set_meter_provider(_GLOBAL_METERS)
    _GLOBAL_METERS.use(provider)


def state() -> Sdk:
    """The current setup, configuring one from the environment if there is none."""
    current = _state
    if current is not None:
        return current
    with _lock:
        return _state if _state is not None else configure()


def flush(timeout_s: float = 5.0) -> FlushResult:
    """Deliver everything queued or spooled now; says how many were delivered, are pending, were dropped."""
    current = _state
    if current is None:
        return FlushResult(0, 0, 0)
    deadline = time.monotonic() + timeout_s
    providers = _start(lambda: current.flush_providers(timeout_s), "labtel-sdk-flush")
    result = current.pipeline.flush(timeout_s)
    providers.join(max(0.0, deadline - time.monotonic()))
    return result


def _at_exit() -> None:
    """At interpreter exit: deliver what can be within $LABTEL_EXIT_FLUSH_TIMEOUT_S (the
    providers are made without OpenTelemetry's own exit handlers, which wait far longer while the
    collector is away)."""
    current = _state
    if current is not None:
        try:
            current.shutdown(exit_timeout_s())
        except Exception:
            log.debug("labtel.sdk: shutdown at exit failed", exc_info=True)


atexit.register(_at_exit)  # registered after the pipeline module's: runs before it


def shutdown(timeout_s: float = 5.0) -> FlushResult:
    """Flush and stop; the next logging call configures labtel.sdk afresh."""
    global _state
    with _lock:
        current, _state = _state, None
        _bind_global_meters(None)
    if current is None:
        return FlushResult(0, 0, 0)
    return current.shutdown(timeout_s)
