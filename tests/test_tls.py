"""TLS on every listener of a real `labtel serve`, with certificates made at test time (trustme):
the stock OpenTelemetry exporters deliver over gRPC and HTTPS, the query API answers over HTTPS,
plain-text clients are refused, and a `client_ca_file` asks clients for a certificate."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from typer.testing import CliRunner

from labtel.cli import app
from labtel.sdk.settings import SdkSettings, resolve
from labtel.sdk.transport import SendError, make_transport
from tests.auth_helpers import Certificates, edit_config, make_certificates
from tests.helpers import LabtelServer, log_record, logs_request, wait_for, write_config

EVENTS = 25


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, certificates: Certificates) -> Iterator[LabtelServer]:
    """`labtel serve` with TLS on OTLP/gRPC, OTLP/HTTP and the query API (loopback, no keys)."""
    tmp = tmp_path_factory.mktemp("tls")
    tls = certificates.tls_yaml()
    config = edit_config(write_config(tmp / "otel-config.yaml", tmp / "data"), grpc=tls, http=tls, query_api=tls)
    running = LabtelServer(config=config, workdir=tmp).start()
    yield running
    running.kill()


def api_get(server: LabtelServer, certificates: Certificates, path: str, **params: Any) -> httpx.Response:
    url = f"https://{server.listeners['query API']}{path}"
    return httpx.get(url, params=params, verify=ssl.create_default_context(cafile=str(certificates.ca)), timeout=30)


def stored(server: LabtelServer, certificates: Certificates, service: str) -> int:
    page = api_get(server, certificates, "/events", service=service, limit=1000).json()
    return len(page["events"])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_otel_exporters_deliver_over_tls(
    server: LabtelServer, certificates: Certificates, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The OTel HTTP exporter sets its CA on a requests Session, which $REQUESTS_CA_BUNDLE and
    # $CURL_CA_BUNDLE override (requests#3829): without them, `certificate_file` is used.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    service = f"tls-{protocol}-{time.time_ns()}"
    if protocol == "grpc":
        credentials = grpc.ssl_channel_credentials(certificates.ca.read_bytes())
        exporter: Any = GrpcLogExporter(endpoint=server.grpc, insecure=False, credentials=credentials, timeout=10)
    else:
        exporter = HttpLogExporter(
            endpoint=f"https://{server.listeners['OTLP/HTTP']}/v1/logs", certificate_file=str(certificates.ca)
        )
    provider = LoggerProvider(resource=Resource.create({"service.name": service}))
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    logger = provider.get_logger("tls-test")
    for i in range(EVENTS):
        logger.emit(body=f"over TLS {i}")
    assert provider.force_flush(20_000)
    provider.shutdown()
    assert wait_for(lambda: stored(server, certificates, service) == EVENTS, what="the TLS events")
    assert stored(server, certificates, service) == EVENTS


def test_plain_text_is_refused(server: LabtelServer, certificates: Certificates) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{server.listeners['query API']}/health", timeout=10)
    with pytest.raises(httpx.HTTPError):  # a certificate the client does not trust
        httpx.get(f"https://{server.listeners['query API']}/health", timeout=10)
    with grpc.insecure_channel(server.grpc) as channel:
        call = channel.unary_unary("/opentelemetry.proto.collector.logs.v1.LogsService/Export")
        with pytest.raises(grpc.RpcError) as raised:
            call(b"", timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert api_get(server, certificates, "/health").json()["status"] == "ok"


def test_loopback_without_keys_is_open_and_quiet(server: LabtelServer, certificates: Certificates) -> None:
    assert "WITHOUT AUTHENTICATION" not in server.output()  # the embedded localhost mode
    assert api_get(server, certificates, "/events").status_code == 200
    assert "TLS, no auth" in server.output()


def test_client_certificates_when_a_client_ca_is_set(
    tmp_path: Path, certificates: Certificates, server_factory: Callable[..., LabtelServer]
) -> None:
    tls = certificates.tls_yaml(client_ca=True)
    config = edit_config(write_config(tmp_path / "otel-config.yaml", tmp_path / "data"), http=tls, query_api=tls)
    running = server_factory(config=config, workdir=tmp_path).start()
    url = f"https://{running.listeners['OTLP/HTTP']}/metrics"
    context = ssl.create_default_context(cafile=str(certificates.ca))
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, verify=context, timeout=10)
    context.load_cert_chain(str(certificates.client_cert))
    assert httpx.get(url, verify=context, timeout=10).status_code == 200


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_labtel_sdk_trusts_a_private_ca(
    server: LabtelServer, certificates: Certificates, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem")  # the SDK's own CA wins over it
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(certificates.ca))
    address = server.grpc if protocol == "grpc" else server.listeners["OTLP/HTTP"]
    settings = resolve(SdkSettings(endpoint=f"https://{address}", protocol=protocol))  # type: ignore[arg-type]
    assert settings.certificate_file == certificates.ca
    service = f"sdk-tls-{protocol}-{time.time_ns()}"
    body = logs_request([log_record("sdk over TLS")], {"service.name": service}).SerializeToString()
    transport = make_transport(protocol, settings.endpoint or "", {}, 10, settings.certificate_file)
    transport.send(body)
    transport.close()
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    untrusting = make_transport(protocol, f"https://{address}", {}, 5, None)  # the system's CAs
    with pytest.raises(SendError):
        untrusting.send(body)
    untrusting.close()
    assert wait_for(lambda: stored(server, certificates, service) == 1, what="the SDK's event")


def test_the_cli_says_when_tls_fails(
    server: LabtelServer, certificates: Certificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An untrusted certificate was "cannot reach the query API ...: is `labtel serve` running?",
    # and `-f` retried it forever as a lost connection.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    api = f"https://{server.listeners['query API']}"
    for args in (["events", "--api", api], ["events", "--api", api, "-f"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "TLS with the query API" in result.output
        assert "certificate verify failed" in result.output
        assert "REQUESTS_CA_BUNDLE" in result.output
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificates.ca))
    assert CliRunner().invoke(app, ["events", "--api", api]).exit_code == 0
