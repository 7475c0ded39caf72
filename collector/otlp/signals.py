"""The OTLP signals labtel receives, and what differs between them."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


@dataclass(frozen=True)
class Signal:
    """One OTLP signal: its request and response messages, its gRPC method and HTTP path."""

    name: str
    request_type: type[Message]
    response_type: type[Message]
    grpc_service: str
    http_path: str
    resource_field: str
    scope_field: str
    rejected_field: str
    """The count field of the response's `partial_success`."""

    @property
    def grpc_method(self) -> str:
        return f"/{self.grpc_service}/Export"

    def response(self, rejected: int = 0, message: str = "") -> Message:
        """An Export response: empty when all was accepted, else an OTLP partial success."""
        response = self.response_type()
        if rejected:
            partial = response.partial_success  # type: ignore[attr-defined]
            setattr(partial, self.rejected_field, rejected)
            partial.error_message = message
        return response


LOGS = Signal(
    name="logs",
    request_type=logs_service_pb2.ExportLogsServiceRequest,
    response_type=logs_service_pb2.ExportLogsServiceResponse,
    grpc_service="opentelemetry.proto.collector.logs.v1.LogsService",
    http_path="/v1/logs",
    resource_field="resource_logs",
    scope_field="scope_logs",
    rejected_field="rejected_log_records",
)
TRACES = Signal(
    name="traces",
    request_type=trace_service_pb2.ExportTraceServiceRequest,
    response_type=trace_service_pb2.ExportTraceServiceResponse,
    grpc_service="opentelemetry.proto.collector.trace.v1.TraceService",
    http_path="/v1/traces",
    resource_field="resource_spans",
    scope_field="scope_spans",
    rejected_field="rejected_spans",
)
METRICS = Signal(
    name="metrics",
    request_type=metrics_service_pb2.ExportMetricsServiceRequest,
    response_type=metrics_service_pb2.ExportMetricsServiceResponse,
    grpc_service="opentelemetry.proto.collector.metrics.v1.MetricsService",
    http_path="/v1/metrics",
    resource_field="resource_metrics",
    scope_field="scope_metrics",
    rejected_field="rejected_data_points",
)

SIGNALS: dict[str, Signal] = {s.name: s for s in (LOGS, TRACES, METRICS)}
"""Every OTLP signal by name; pipelines exist for those the storage supports."""
