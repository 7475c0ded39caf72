"""OTLP/HTTP receiver: `POST /v1/logs`, `/v1/traces` and `/v1/metrics`, protobuf or JSON bodies, gzip.

Responses use the request's content type. Per the OTLP specification: 400 for bad data, 413
for bodies over `max_request_body_size` (counted after decompression), 415 for unknown content
types or encodings, 503 with `Retry-After` for backpressure; error bodies are google.rpc.Status,
a path the receiver does not serve (404) and a method other than POST (405) included.
With an authenticator, `Authorization: Bearer <token>` must name a key with the `ingest` scope
(401 with `WWW-Authenticate: Bearer` without a valid one, 403 without the scope; `/metrics`
needs `read`); with `tls`, the port serves HTTPS only.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Mapping

from google.rpc import code_pb2, status_pb2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from labtel.collector import telemetry
from labtel.collector.auth import Authenticator, AuthError, Scope
from labtel.collector.component import Consumer, ExportRejected, ExportUnavailable, Payload
from labtel.collector.config import HttpServerConfig
from labtel.collector.otlp.framing import FramingError, count_records
from labtel.collector.otlp.jsonfmt import OTLPJSONError, json_to_protobuf, protobuf_to_json
from labtel.collector.otlp.signals import SIGNALS, Signal
from labtel.collector.servers import HttpServer

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_GZIP_MAGIC = b"\x1f\x8b"  # how every gzip member starts


class _HttpError(Exception):
    def __init__(self, status: int, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed, refusing more than `limit` bytes of either form."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "", "gzip", "deflate"):
        raise _HttpError(415, code_pb2.INVALID_ARGUMENT, f"unsupported Content-Encoding {encoding!r}; use gzip")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _HttpError(413, code_pb2.RESOURCE_EXHAUSTED, f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if encoding in ("identity", ""):
        return raw
    return decompress(raw, encoding, limit)


def decompress(raw: bytes, encoding: str, limit: int) -> bytes:
    """A gzip (every member, as Go's gzip reader reads them) or deflate body, refusing more than
    `limit` bytes decompressed (413) and anything but another gzip member after the end (400)."""
    parts: list[bytes] = []
    size = 0
    rest = raw
    wbits = 47 if encoding == "gzip" else 15  # the first member: gzip or zlib header
    while True:
        decompressor = zlib.decompressobj(wbits=wbits)
        try:
            part = decompressor.decompress(rest, limit - size + 1)
        except zlib.error as error:
            raise _HttpError(400, code_pb2.INVALID_ARGUMENT, f"cannot decompress {encoding} body: {error}") from None
        size += len(part)
        if size > limit or decompressor.unconsumed_tail:
            raise _HttpError(413, code_pb2.RESOURCE_EXHAUSTED, f"decompressed request body exceeds {limit} bytes")
        if not decompressor.eof:
            raise _HttpError(400, code_pb2.INVALID_ARGUMENT, f"truncated {encoding} body")
        parts.append(part)
        rest = decompressor.unused_data
        if not rest:
            return b"".join(parts)
        if encoding != "gzip" or not rest.startswith(_GZIP_MAGIC):
            raise _HttpError(400, code_pb2.INVALID_ARGUMENT, f"{len(rest)} bytes after the end of the {encoding} body")
        wbits = 31  # later members: gzip only


async def metrics_endpoint(request: Request) -> Response:
    """The collector's self-metrics in Prometheus text format."""
    body, content_type = telemetry.exposition()
    return Response(body, 200, media_type=content_type)


def _routing_error(request: Request, error: Exception) -> Response:
    """A request for no OTLP path (404) or with another method than POST (405), answered as every
    OTLP/HTTP error is: a google.rpc.Status in the request's encoding, saying what to send."""
    assert isinstance(error, HTTPException)
    paths = ", ".join(signal.http_path for signal in SIGNALS.values())
    if error.status_code == 404:
        failure = _HttpError(404, code_pb2.NOT_FOUND, f"no OTLP endpoint at {request.url.path!r}; POST to {paths}")
    elif error.status_code == 405:
        allowed = (error.headers or {}).get("allow", "POST")
        failure = _HttpError(
            405, code_pb2.UNIMPLEMENTED, f"{request.method} is not allowed on {request.url.path}; use {allowed}"
        )
    else:
        failure = _HttpError(error.status_code, code_pb2.UNKNOWN, str(error.detail))
    failure.headers.update(error.headers or {})
    return _status_response(failure, JSON if _media_type(request) == JSON else PROTOBUF)


def _status_response(error: _HttpError, media_type: str) -> Response:
    status = status_pb2.Status(code=error.code, message=error.message)
    if media_type == JSON:
        return Response(protobuf_to_json(status), error.status, error.headers, media_type=JSON)
    return Response(status.SerializeToString(), error.status, error.headers, media_type=PROTOBUF)


class OTLPHttpReceiver:
    """Serves OTLP/HTTP for the signals that have a pipeline."""

    def __init__(
        self,
        name: str,
        config: HttpServerConfig,
        consumers: Mapping[str, tuple[Signal, Consumer]],
        authenticator: Authenticator | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._consumers = consumers
        self.authenticator = authenticator
        self._server = HttpServer(self.app(), config.host, config.port, config.tls)

    def app(self) -> Starlette:
        routes = [Route(signal.http_path, self._endpoint(signal), methods=["POST"]) for signal in SIGNALS.values()]
        routes.append(Route("/metrics", self._metrics, methods=["GET"]))
        return Starlette(routes=routes, exception_handlers={HTTPException: _routing_error})

    async def _authorize(self, request: Request, scope: Scope) -> None:
        if self.authenticator is None:
            return
        try:
            await self.authenticator.authorize_async(request.headers.get("authorization"), scope)
        except AuthError as error:
            if error.status == 401:
                raise _HttpError(
                    401, code_pb2.UNAUTHENTICATED, error.message, {"WWW-Authenticate": 'Bearer realm="labtel"'}
                ) from None
            raise _HttpError(403, code_pb2.PERMISSION_DENIED, error.message) from None

    async def _metrics(self, request: Request) -> Response:
        try:
            await self._authorize(request, "read")
        except _HttpError as error:
            return Response(error.message + "\n", error.status, error.headers, media_type="text/plain")
        return await metrics_endpoint(request)

    def _endpoint(self, signal: Signal):  # type: ignore[no-untyped-def]
        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            media_type = _media_type(request)
            answer_type = JSON if media_type == JSON else PROTOBUF
            records = 0
            partial = None
            try:
                await self._authorize(request, "ingest")
                entry = self._consumers.get(signal.name)
                if entry is None:
                    raise _HttpError(404, code_pb2.UNIMPLEMENTED, f"this collector has no {signal.name} pipeline")
                if media_type not in (PROTOBUF, JSON):
                    raise _HttpError(
                        415,
                        code_pb2.INVALID_ARGUMENT,
                        f"unsupported Content-Type {media_type!r}; use {PROTOBUF} or {JSON}",
                    )
                body = await read_body(request, self.config.max_request_body_size)
                if media_type == JSON:
                    try:
                        body = json_to_protobuf(signal, body)
                    except OTLPJSONError as error:
                        raise _HttpError(400, code_pb2.INVALID_ARGUMENT, f"invalid OTLP/JSON: {error}") from None
                try:
                    records = count_records(signal, body)
                except FramingError as error:
                    raise _HttpError(400, code_pb2.INVALID_ARGUMENT, str(error)) from None
                if records:
                    try:
                        partial = await entry[1].consume(Payload(signal, body, records))
                    except ExportRejected as error:
                        raise _HttpError(400, code_pb2.INVALID_ARGUMENT, error.message) from None
                    except ExportUnavailable as error:
                        retry_after = str(max(1, math.ceil(error.retry_after_s)))
                        raise _HttpError(
                            503, code_pb2.UNAVAILABLE, error.message, {"Retry-After": retry_after}
                        ) from None
            except _HttpError as error:
                outcome = {503: "refused", 401: "unauthorized", 403: "unauthorized"}.get(error.status, "rejected")
                telemetry.record_export(signal.name, "http", records, outcome, started)
                return _status_response(error, answer_type)
            rejected = partial.rejected if partial is not None else 0
            telemetry.record_export(signal.name, "http", records, "accepted", started, rejected)
            response = signal.response() if partial is None else signal.response(partial.rejected, partial.message)
            if answer_type == JSON:
                return Response(protobuf_to_json(response), 200, media_type=JSON)
            return Response(response.SerializeToString(), 200, media_type=PROTOBUF)

        return endpoint

    async def start(self) -> None:
        await self._server.start()

    async def shutdown(self) -> None:
        await self._server.stop()

    @property
    def port(self) -> int | None:
        return self._server.port

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self._server.port}"
