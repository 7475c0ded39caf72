"""Sending encoded OTLP requests to the collector, over gRPC or HTTP."""

from __future__ import annotations

import gzip
import http.client
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol as TypingProtocol
from urllib.parse import urlparse

import grpc
import requests
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

LOGS_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
_RETRYABLE_GRPC = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
}
_AUTH_GRPC = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
_RETRYABLE_HTTP = {408, 429, 500, 502, 503, 504}
_AUTH_HTTP = {401, 403}
_NOT_OTLP_HTTP = {404, 405}
"""Answers of a server that has no OTLP logs receiver at the address (a wrong port or path):
the data was not looked at, so it is kept until the address is right."""


class SendError(Exception):
    """A request was not delivered. `retryable`: the collector may take it later; otherwise it
    refused the data for good (the records are counted as rejected). `too_large`: the request
    is over the collector's size limit (sent in smaller parts, it may pass). `auth`: the
    collector refused the API key (retryable: the key may be fixed). `not_otlp`: what answers at
    the endpoint is no OTLP logs receiver (gRPC UNIMPLEMENTED, HTTP 404 / 405: a wrong port,
    path or protocol; retryable: the setting may be fixed)."""

    def __init__(
        self, message: str, retryable: bool, too_large: bool = False, auth: bool = False, not_otlp: bool = False
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.too_large = too_large
        self.auth = auth
        self.not_otlp = not_otlp


@dataclass(frozen=True)
class Accepted:
    """The collector's answer to a request it took: how many of its records it still rejected
    (an OTLP partial success), and why."""

    rejected: int = 0
    message: str = ""


def accepted(response: bytes) -> Accepted:
    """The partial success of an ExportLogsServiceResponse (nothing rejected when empty or unreadable)."""
    if not response:
        return Accepted()
    try:
        partial = ExportLogsServiceResponse.FromString(response).partial_success
    except DecodeError:
        return Accepted()
    return Accepted(int(partial.rejected_log_records), partial.error_message)


def _has_retry_info(error: grpc.RpcError) -> bool:
    """Whether a gRPC error carries a RetryInfo (the collector asks to come back later, as
    opposed to gRPC's own refusal of a message over its size limit)."""
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                details = status_pb2.Status.FromString(value).details
            except DecodeError:
                return False
            return any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in details)
    return False


class Transport(TypingProtocol):
    def send(self, data: bytes) -> Accepted: ...

    def close(self) -> None: ...


class GrpcTransport:
    """OTLP/gRPC: LogsService/Export with the encoded request as the message; TLS for an
    https:// endpoint, trusting `certificate_file` (PEM) when given, else the system's CAs."""

    def __init__(
        self, endpoint: str, headers: dict[str, str], timeout_s: float, certificate_file: Path | None = None
    ) -> None:
        parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
        target = f"{parsed.hostname}:{parsed.port or 4317}"
        # Short reconnect back-off: the pipeline paces retries itself, and a collector that is
        # back must be reachable at the next try, not after gRPC's own minutes-long back-off.
        options = [
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.max_send_message_length", 64 << 20),
        ]
        if parsed.scheme == "https":
            root = certificate_file.read_bytes() if certificate_file else None
            credentials = grpc.ssl_channel_credentials(root_certificates=root)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._call = self._channel.unary_unary(LOGS_METHOD, request_serializer=None, response_deserializer=None)
        self._metadata = tuple(headers.items())
        self._timeout_s = timeout_s

    def send(self, data: bytes) -> Accepted:
        try:
            response = self._call(data, timeout=self._timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
            message = f"{code.name}: {error.details() if hasattr(error, 'details') else error}"
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                too_large = not _has_retry_info(error)
                raise SendError(message, retryable=not too_large, too_large=too_large) from None
            auth = code in _AUTH_GRPC
            not_otlp = code is grpc.StatusCode.UNIMPLEMENTED
            if code is grpc.StatusCode.UNAVAILABLE and "http1.x server" in message:
                not_otlp = True  # an HTTP/1 server: the OTLP/HTTP port, most likely
                message = (
                    f"an HTTP/1 server answers, not OTLP/gRPC (the OTLP/HTTP port? use protocol 'http'): {message}"
                )
            raise SendError(
                message, retryable=auth or not_otlp or code in _RETRYABLE_GRPC, auth=auth, not_otlp=not_otlp
            ) from None
        return accepted(response)

    def close(self) -> None:
        self._channel.close()


class HttpTransport:
    """OTLP/HTTP: POST /v1/logs with a (gzipped) protobuf body; HTTPS trusts `certificate_file`
    (PEM) when given."""

    def __init__(
        self, endpoint: str, headers: dict[str, str], timeout_s: float, certificate_file: Path | None = None
    ) -> None:
        base = endpoint.rstrip("/")
        self._url = base if base.endswith("/v1/logs") else f"{base}/v1/logs"
        self._session = requests.Session()
        # per request: a Session's own `verify` loses to $REQUESTS_CA_BUNDLE (requests#3829)
        self._verify: str | bool = str(certificate_file) if certificate_file is not None else True
        self._headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip", **headers}
        self._timeout_s = timeout_s

    def send(self, data: bytes) -> Accepted:
        try:
            response = self._session.post(
                self._url,
                data=gzip.compress(data, 1),
                headers=self._headers,
                timeout=self._timeout_s,
                verify=self._verify,
            )
        except (requests.RequestException, OSError) as error:  # OSError: e.g. an unreadable CA bundle
            if _answered_in_http2(error):
                raise SendError(
                    "an HTTP/2 server answers, not OTLP/HTTP (the OTLP/gRPC port? use protocol 'grpc')",
                    retryable=True,
                    not_otlp=True,
                ) from None
            raise SendError(str(error), retryable=True) from None
        status = response.status_code
        if status != 200:
            message = f"HTTP {status}: {_http_error_text(response)}"
            if status == 413:
                raise SendError(message, retryable=False, too_large=True)
            auth = status in _AUTH_HTTP
            not_otlp = status in _NOT_OTLP_HTTP
            raise SendError(
                message, retryable=auth or not_otlp or status in _RETRYABLE_HTTP, auth=auth, not_otlp=not_otlp
            )
        return accepted(response.content)

    def close(self) -> None:
        self._session.close()


def _answered_in_http2(error: BaseException) -> bool:
    """Whether a failed HTTP/1 request was answered by an HTTP/2-only server (a gRPC port): its
    first bytes, read as a status line, are a binary SETTINGS frame."""
    found: list[BaseException] = [error]
    while found:
        cause = found.pop()
        if isinstance(cause, http.client.BadStatusLine):
            return str(cause.args[0] if cause.args else "").startswith("\x00\x00")
        found.extend(arg for arg in cause.args if isinstance(arg, BaseException))
    return False


def _http_error_text(response: requests.Response) -> str:
    """What a refused OTLP/HTTP request's answer says: the message of its `google.rpc.Status`
    (protobuf, or JSON with `message`), else its first 300 characters of text."""
    content_type = response.headers.get("Content-Type", "")
    if content_type.startswith("application/x-protobuf"):
        found = status_pb2.Status()
        try:
            found.ParseFromString(response.content)
        except DecodeError:
            found.message = ""
        if found.message:
            return str(found.message)[:300]
    elif content_type.startswith("application/json"):
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if isinstance(answer, dict) and isinstance(answer.get("message"), str):
            return str(answer["message"])[:300]
    return response.text[:300]


def make_transport(
    protocol: str, endpoint: str, headers: dict[str, str], timeout_s: float, certificate_file: Path | None = None
) -> Transport:
    """The transport for `protocol` ("grpc" or "http")."""
    if protocol == "http":
        return HttpTransport(endpoint, headers, timeout_s, certificate_file)
    return GrpcTransport(endpoint, headers, timeout_s, certificate_file)
