"""Sends the simulated labs' items through labtel.sdk, each service with its own identity.

Every simulated service (a workcell engine, each node, the telescope, the extraction line) has
its own resource and delivery pipeline, as separate processes would. Spans keep the ids the
simulation gave them, so a seed reproduces traces too.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

from labtel.demo.sim import Item, Log, SpanEnd, SpanStart
from labtel.sdk import semconv
from labtel.sdk.logger import build_record
from labtel.sdk.pipeline import FlushResult, Pipeline
from labtel.sdk.transport import Transport, make_transport

_SITES = {
    "madsci": ("chem-lab-A", "chem-ws-01"),
    "panoptes": ("PAN001", "pan001-control"),
    "pychron": ("argon-lab", "argon-lab-pc"),
}
_BACKLOG_LIMIT = 50_000


class _PresetIds(IdGenerator):
    """Hands OpenTelemetry the ids the simulation chose for the next span."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0
        self._fallback = random.Random(0)

    def generate_span_id(self) -> int:
        return self.span_id or self._fallback.getrandbits(64)

    def generate_trace_id(self) -> int:
        return self.trace_id or self._fallback.getrandbits(128)


class Emitter:
    """Delivers items to a collector."""

    def __init__(
        self,
        endpoint: str,
        protocol: str,
        spool_dir: Path,
        demo_id: str = "",
        transport: Callable[[], Transport] | None = None,
    ) -> None:
        """`transport` makes each service's delivery channel (default: OTLP to `endpoint`)."""
        self._transport = transport
        self._endpoint = endpoint
        self._protocol = protocol
        self.spool_dir = spool_dir
        """Where each service's pipeline spools what it could not send yet."""
        self._demo_id = demo_id
        self._pipelines: dict[str, Pipeline] = {}
        self._tracers: dict[str, tuple[TracerProvider, _PresetIds]] = {}
        self._spans: dict[int, trace.Span] = {}

    def _resource(self, service: str) -> dict[str, Any]:
        lab, host = _SITES.get(service.split(".", 1)[0], ("demo-lab", "demo-host"))
        attributes: dict[str, Any] = {
            semconv.SERVICE_NAME: service,
            semconv.HOST_NAME: host,
            semconv.LAB_NAME: lab,
            "telemetry.sdk.name": "labtel",
            "deployment.environment.name": "demo",
        }
        if self._demo_id:
            attributes["labtel.demo.id"] = self._demo_id
        return attributes

    def _pipeline(self, service: str) -> Pipeline:
        found = self._pipelines.get(service)
        if found is None:
            endpoint, protocol = self._endpoint, self._protocol
            found = self._pipelines[service] = Pipeline(
                self._resource(service),
                self._transport or (lambda: make_transport(protocol, endpoint, {}, 30.0)),
                self.spool_dir / service,
                1 << 30,
                batch_max_records=2000,
                batch_interval_s=0.2,
                queue_max_records=1 << 22,
            )
        return found

    def _tracer(self, service: str) -> tuple[trace.Tracer, _PresetIds]:
        found = self._tracers.get(service)
        if found is None:
            ids = _PresetIds()
            provider = TracerProvider(resource=Resource.create(self._resource(service)), id_generator=ids)
            provider.add_span_processor(
                BatchSpanProcessor(self._span_exporter(), max_queue_size=1 << 16, schedule_delay_millis=500)
            )
            found = self._tracers[service] = (provider, ids)
        return found[0].get_tracer("labtel.demo"), found[1]

    def _span_exporter(self) -> Any:
        if self._protocol == "http":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

            return HttpSpanExporter(endpoint=self._endpoint.rstrip("/") + "/v1/traces")
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        return GrpcSpanExporter(endpoint=self._endpoint, insecure=not self._endpoint.startswith("https"))

    def emit(self, item: Item) -> None:
        if isinstance(item, Log):
            record = build_record(item.scope, item.severity, item.body, item.fields, time_ns=item.time_ns)
            if item.span is not None:
                record.trace_id = item.span.trace_id.to_bytes(16, "big")
                record.span_id = item.span.span_id.to_bytes(8, "big")
                record.trace_flags = 1
            pipeline = self._pipeline(item.service)
            pipeline.emit(record)
            if pipeline.backlog > _BACKLOG_LIMIT:
                while pipeline.backlog > _BACKLOG_LIMIT // 2:
                    time.sleep(0.01)  # let delivery catch up rather than overflow
        elif isinstance(item, SpanStart):
            tracer, ids = self._tracer(item.span.service)
            ids.trace_id, ids.span_id = item.span.trace_id, item.span.span_id
            parent_context = context.Context()
            if item.parent is not None:
                parent = SpanContext(
                    item.parent.trace_id,
                    item.parent.span_id,
                    is_remote=item.parent.service != item.span.service,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                )
                parent_context = trace.set_span_in_context(NonRecordingSpan(parent))
            attributes = {semconv.FIELD_ALIASES.get(k, k): v for k, v in item.attributes.items()}
            self._spans[item.span.span_id] = tracer.start_span(
                item.name, context=parent_context, attributes=attributes, start_time=item.time_ns
            )
        elif isinstance(item, SpanEnd):
            span = self._spans.pop(item.span.span_id, None)
            if span is not None:
                if item.error:
                    span.set_status(Status(StatusCode.ERROR, item.error))
                span.end(end_time=item.time_ns)

    def emit_all(self, items: Iterable[Item]) -> None:
        for item in items:
            self.emit(item)

    def flush(self, timeout_s: float = 60.0) -> FlushResult:
        """Deliver everything; the combined counts of all services."""
        for provider, _ in self._tracers.values():
            provider.force_flush(int(timeout_s * 1000))
        results = [pipeline.flush(timeout_s) for pipeline in self._pipelines.values()]
        return FlushResult(
            sum(r.delivered for r in results),
            sum(r.pending for r in results),
            sum(r.dropped for r in results),
            sum(r.rejected for r in results),
        )

    def close(self, timeout_s: float = 30.0) -> FlushResult:
        result = self.flush(timeout_s)
        for provider, _ in self._tracers.values():
            provider.shutdown()
        for pipeline in self._pipelines.values():
            pipeline.shutdown(1.0)
        return result
