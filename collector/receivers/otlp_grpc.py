"""OTLP/gRPC receiver: the LogsService, TraceService and MetricsService `Export` methods.

Requests arrive as raw bytes (no Python decoding): the framing is checked and the records
counted, then the payload goes down the signal's pipeline. Errors follow the OTLP
specification: INVALID_ARGUMENT for bad data, UNAVAILABLE with a RetryInfo delay for
backpressure, RESOURCE_EXHAUSTED (without RetryInfo) for messages over the size limit.
With an authenticator, the `authorization: Bearer <token>` metadata must name a key with the
`ingest` scope (UNAUTHENTICATED without a valid one, PERMISSION_DENIED without the scope);
with `tls`, the port serves TLS only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from labtel.collector import telemetry
from labtel.collector.auth import Authenticator, AuthError
from labtel.collector.component import Consumer, ExportRejected, ExportUnavailable, Payload
from labtel.collector.config import GrpcServerConfig
from labtel.collector.otlp.framing import FramingError, count_records
from labtel.collector.otlp.signals import Signal

log = logging.getLogger(__name__)

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def retry_status(message: str, retry_after_s: float) -> bytes:
    """The `grpc-status-details-bin` trailer telling OTLP clients when to retry."""
    seconds = int(retry_after_s)
    retry = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=seconds, nanos=int((retry_after_s - seconds) * 1e9))
    )
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message)
    status.details.add().Pack(retry)
    return bytes(status.SerializeToString())


class OTLPGrpcReceiver:
    """Serves OTLP/gRPC for the signals that have a pipeline."""

    def __init__(
        self,
        name: str,
        config: GrpcServerConfig,
        consumers: Mapping[str, tuple[Signal, Consumer]],
        authenticator: Authenticator | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._consumers = consumers
        self.authenticator = authenticator
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    def _handler(self, signal: Signal, consumer: Consumer) -> Handler:
        async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started = time.perf_counter()
            if self.authenticator is not None:
                await self._authorize(context, signal, started)
            try:
                records = count_records(signal, request)
            except FramingError as error:
                telemetry.record_export(signal.name, "grpc", 0, "rejected", started)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            if records == 0:  # an empty export: accepted, and counted as the HTTP receiver counts it
                telemetry.record_export(signal.name, "grpc", 0, "accepted", started)
                return b""
            try:
                partial = await consumer.consume(Payload(signal, request, records))
            except ExportRejected as error:
                telemetry.record_export(signal.name, "grpc", records, "rejected", started)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, error.message)
            except ExportUnavailable as error:
                telemetry.record_export(signal.name, "grpc", records, "refused", started)
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    error.message,
                    trailing_metadata=(("grpc-status-details-bin", retry_status(error.message, error.retry_after_s)),),
                )
            rejected = partial.rejected if partial is not None else 0
            telemetry.record_export(signal.name, "grpc", records, "accepted", started, rejected)
            if partial is not None:  # some records broke a limit: OTLP partial success
                return bytes(signal.response(partial.rejected, partial.message).SerializeToString())
            return b""  # an empty Export*ServiceResponse: everything was accepted

        return export

    async def _authorize(self, context: grpc.aio.ServicerContext, signal: Signal, started: float) -> None:
        assert self.authenticator is not None
        values = [str(v) for k, v in (context.invocation_metadata() or ()) if k == "authorization"]
        try:
            await self.authenticator.authorize_async(values[0] if values else None, "ingest")
        except AuthError as error:
            telemetry.record_export(signal.name, "grpc", 0, "unauthorized", started)
            code = grpc.StatusCode.UNAUTHENTICATED if error.status == 401 else grpc.StatusCode.PERMISSION_DENIED
            await context.abort(code, error.message)

    async def start(self) -> None:
        limit = int(self.config.max_recv_msg_size_mib * 1024 * 1024)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", 4 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=None,
        )
        for signal, consumer in self._consumers.values():
            handler = grpc.unary_unary_rpc_method_handler(self._handler(signal, consumer))
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(signal.grpc_service, {"Export": handler}),)
            )
        host, port = self.config.host, self.config.port
        address = f"{_grpc_host(host)}:{port}"
        try:
            if self.config.tls is not None:
                cert, key, client_ca = self.config.tls.read()
                credentials = grpc.ssl_server_credentials(
                    [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
                )
                self.port = server.add_secure_port(address, credentials)
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError as error:
            raise OSError(f"cannot listen for OTLP/gRPC on {self.config.endpoint}: {error}") from error
        if not self.port:
            raise OSError(f"cannot listen for OTLP/gRPC on {self.config.endpoint}: the address is in use")
        await server.start()
        self._server = server

    async def shutdown(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=5.0)
            self._server = None

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
