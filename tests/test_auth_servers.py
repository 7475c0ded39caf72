"""API keys against a real `labtel serve`: the stock OpenTelemetry exporters over gRPC and HTTP
with good, wrong, missing and under-scoped tokens; the query API's scope per route class; the
OpenAPI security scheme; a compatibility client with a key; the warning of open listeners."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from master_log_client import MasterLogClient
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from typer.testing import CliRunner

import labtel.sdk as lab
from labtel.cli import app
from labtel.sdk.settings import SdkSettings, request_headers, resolve
from labtel.sdk.transport import SendError, make_transport
from tests.auth_helpers import Key, auth_config, edit_config, make_key
from tests.helpers import LabtelServer, log_record, logs_request, wait_for, write_config

INGEST = make_key("ingest-bot", "ingest")
READ = make_key("dashboard", "read")
SQL = make_key("analyst", "sql")
ADMIN = make_key("operator", "admin")
SLOW = make_key("people-chosen", "ingest", "read", kdf="pbkdf2")
KEYS = [INGEST, READ, SQL, ADMIN, SLOW]
LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabtelServer]:
    """One `labtel serve` whose OTLP receivers and query API all require a key."""
    tmp = tmp_path_factory.mktemp("auth")
    running = LabtelServer(config=auth_config(tmp, KEYS), workdir=tmp, token=READ.token).start()
    yield running
    running.kill()


def export_with(protocol: str, server: LabtelServer, service: str, headers: dict[str, str] | None) -> bool:
    """One log record through the stock OTel exporter; whether the exporter reported success."""
    if protocol == "grpc":
        grpc_headers = tuple((k.lower(), v) for k, v in (headers or {}).items())
        exporter: Any = GrpcLogExporter(endpoint=server.grpc, insecure=True, headers=grpc_headers, timeout=10)
    else:
        exporter = HttpLogExporter(endpoint=f"{server.http}/v1/logs", headers=headers or {}, timeout=10)
    results: list[Any] = []

    class Recording(SimpleLogRecordProcessor):
        def on_emit(self, log_data: Any) -> None:
            results.append(self._exporter.export((log_data,)))

    provider = LoggerProvider(resource=Resource.create({"service.name": service}))
    provider.add_log_record_processor(Recording(exporter))
    provider.get_logger("auth-test").emit(body=f"hello from {service}")
    provider.shutdown()
    assert len(results) == 1
    return bool(results[0].name == "SUCCESS")


def stored(server: LabtelServer, service: str) -> int:
    server.wait_until_stored()
    return len(server.all_events(service=service))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ingest_needs_a_key_with_the_ingest_scope(server: LabtelServer, protocol: str) -> None:
    service = f"auth-{protocol}-{time.time_ns()}"
    assert export_with(protocol, server, service, INGEST.header)
    assert export_with(protocol, server, service, {"Authorization": f"bearer {ADMIN.token}"})  # admin may all
    assert export_with(protocol, server, service, SLOW.header)  # a pbkdf2-hashed key
    assert export_with(protocol, server, service, SLOW.header)  # (and again, from the cache)
    assert not export_with(protocol, server, service, None)
    assert not export_with(protocol, server, service, {"Authorization": "Bearer labtel_not-a-key"})
    assert not export_with(protocol, server, service, {"Authorization": f"Basic {INGEST.token}"})
    assert not export_with(protocol, server, service, READ.header)
    assert stored(server, service) == 4


def raw_grpc(server: LabtelServer, metadata: tuple[tuple[str, str], ...]) -> tuple[grpc.StatusCode, str]:
    """The status code and message of one Export call with `metadata`."""
    with grpc.insecure_channel(server.grpc) as channel:
        call = channel.unary_unary(LOGS_EXPORT, request_serializer=None, response_deserializer=None)
        body = logs_request([log_record("raw grpc")], {"service.name": "auth-raw-grpc"}).SerializeToString()
        try:
            call(body, timeout=10, metadata=metadata)
        except grpc.RpcError as error:
            return error.code(), error.details()  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def test_grpc_status_codes(server: LabtelServer) -> None:
    code, message = raw_grpc(server, ())
    assert (code, message) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "an API key is required: send 'Authorization: Bearer <token>'",
    )
    code, message = raw_grpc(server, (("authorization", "Bearer wrong"),))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "not valid" in message
    code, message = raw_grpc(server, (("authorization", f"Bearer {SQL.token}"),))
    assert (code, message) == (grpc.StatusCode.PERMISSION_DENIED, "the API key 'analyst' lacks the 'ingest' scope")
    assert raw_grpc(server, (("authorization", f"Bearer {INGEST.token}"),)) == (grpc.StatusCode.OK, "")


def test_http_status_codes(server: LabtelServer) -> None:
    body = logs_request([log_record("raw http")], {"service.name": "auth-raw-http"}).SerializeToString()
    post = lambda headers: httpx.post(  # noqa: E731
        f"{server.http}/v1/logs", content=body, headers={"Content-Type": "application/x-protobuf", **headers}
    )
    missing = post({})
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = post({"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    denied = post(READ.header)
    assert denied.status_code == 403
    assert b"ingest" in denied.content
    assert post(INGEST.header).status_code == 200
    # the receiver's own /metrics reads
    assert httpx.get(f"{server.http}/metrics").status_code == 401
    assert httpx.get(f"{server.http}/metrics", headers=INGEST.header).status_code == 403
    assert httpx.get(f"{server.http}/metrics", headers=READ.header).status_code == 200


# (method, path, JSON body, the scope it needs (None: open), the answer with a key that has it)
ROUTES: list[tuple[str, str, Any, str | None, int]] = [
    ("GET", "/health", None, None, 200),
    ("GET", "/ready", None, None, 200),
    ("GET", "/madsci/health", None, None, 200),
    ("GET", "/metrics", None, "read", 200),
    ("GET", "/events", None, "read", 200),
    ("GET", "/stats", None, "read", 200),
    ("GET", "/export?format=ndjson&limit=1", None, "read", 200),
    ("GET", "/utilization/nodes?since=1h", None, "read", 200),
    ("GET", "/series/names", None, "read", 200),
    ("GET", "/alerts", None, "read", 200),
    ("GET", "/madsci/events", None, "read", 200),
    ("GET", "/panoptes/current", None, "read", 200),
    ("POST", "/events/query", {"selector": {}}, "read", 200),
    ("POST", "/sql", {"sql": "SELECT 1"}, "sql", 200),
    ("POST", "/api/v1/logs", {"message": "scoped", "severity": "info"}, "ingest", 200),
    ("POST", "/panoptes/event", {"type": "weather", "data": {"ok": True}}, "ingest", 200),
    ("POST", "/alerts/test", {}, "admin", 404),  # authorized; this server has no notifiers
    ("POST", "/madsci/events/archive", {"event_ids": ["no-such-event"]}, "admin", 200),
]


@pytest.mark.parametrize(("method", "path", "body", "scope", "status"), ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES])
def test_query_api_scopes(
    server: LabtelServer, method: str, path: str, body: Any, scope: str | None, status: int
) -> None:
    def call(key: Key | None) -> httpx.Response:
        headers = key.header if key else {}
        return httpx.request(method, server.api + path, json=body, headers=headers, timeout=30)

    holders = {k.name for k in KEYS if scope is None or scope in k.scopes or "admin" in k.scopes}
    for key in [None, *KEYS]:
        response = call(key)
        allowed = scope is None or (key is not None and key.name in holders)
        if allowed:
            assert response.status_code == status, (key and key.name, response.text)
        elif key is None:
            assert response.status_code == 401, response.text
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        else:
            assert response.status_code == 403, (key.name, response.text)
            assert scope in response.json()["detail"]


def test_stream_needs_read(server: LabtelServer) -> None:
    assert httpx.get(f"{server.api}/events/stream", headers=INGEST.header).status_code == 403
    with httpx.stream("GET", f"{server.api}/events/stream", headers=READ.header, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")


def test_openapi_shows_the_bearer_scheme(server: LabtelServer) -> None:
    document = httpx.get(f"{server.api}/openapi.json").json()  # the docs stay open
    scheme = document["components"]["securitySchemes"]["apiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    paths = document["paths"]
    assert "security" not in paths["/health"]["get"]
    assert paths["/sql"]["post"]["security"] == [{"apiKey": []}]
    assert paths["/sql"]["post"]["x-labtel-scope"] == "sql"
    assert paths["/events"]["get"]["x-labtel-scope"] == "read"
    assert paths["/api/v1/logs"]["post"]["x-labtel-scope"] == "ingest"
    assert paths["/alerts/test"]["post"]["x-labtel-scope"] == "admin"


def test_master_log_client_sends_a_labtel_key(server: LabtelServer) -> None:
    tag = f"keyed-{time.time_ns()}"
    good = MasterLogClient(api_key=INGEST.token, endpoint=server.api, async_mode=False)
    assert good.log("with a labtel key", tags=[tag]).ok
    refused = MasterLogClient(api_key=READ.token, endpoint=server.api, async_mode=False).log("no", tags=[tag])
    assert not refused.ok
    assert refused.error
    assert "HTTP 403" in refused.error
    found = wait_for(lambda: server.all_events(q="with a labtel key"), what="the Master Log event")
    assert len(found) == 1


def test_the_config_holds_hashes_only(server: LabtelServer) -> None:
    text = server.config.read_text()
    for key in KEYS:
        assert key.token not in text
        assert key.hash in text
    output = server.output()
    assert "auth: labtel_auth" in output  # the start-up banner
    assert not any(key.token in output for key in KEYS)


def test_non_loopback_listeners_without_auth_are_warned_about(
    tmp_path: Path, server_factory: Callable[..., LabtelServer]
) -> None:
    config = edit_config(write_config(tmp_path / "otel-config.yaml", tmp_path / "data"), host="0.0.0.0")
    running = server_factory(config=config, workdir=tmp_path).start()
    output = running.output()
    warnings = [line for line in output.splitlines() if "WITHOUT AUTHENTICATION" in line]
    assert len(warnings) == 3, output  # OTLP/gRPC, OTLP/HTTP, the query API
    assert all("0.0.0.0:0" in line and "labtel_auth" in line for line in warnings)
    assert "no auth" in output  # the banner says it too
    assert running.stop() == 0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_labtel_sdk_sends_its_api_key(server: LabtelServer, protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    service = f"sdk-key-{protocol}-{time.time_ns()}"
    endpoint = f"http://{server.grpc}" if protocol == "grpc" else server.http
    body = logs_request([log_record("from labtel.sdk")], {"service.name": service}).SerializeToString()
    monkeypatch.setenv("LABTEL_API_KEY", INGEST.token)  # as a lab machine would set it
    keyed = resolve(SdkSettings(endpoint=endpoint, protocol=protocol))  # type: ignore[arg-type]
    assert request_headers(keyed) == {"authorization": f"Bearer {INGEST.token}"}
    make_transport(protocol, endpoint, request_headers(keyed), 10).send(body)
    monkeypatch.delenv("LABTEL_API_KEY")
    bare = resolve(SdkSettings(endpoint=endpoint, protocol=protocol))  # type: ignore[arg-type]
    with pytest.raises(SendError) as refused:
        make_transport(protocol, endpoint, request_headers(bare), 10).send(body)
    assert refused.value.auth
    assert refused.value.retryable  # kept (spooled) until the key is fixed
    # the collector's words (OTLP/HTTP: a google.rpc.Status, once printed as raw protobuf bytes)
    said = str(refused.value).split(": ", 1)[1]  # after "HTTP 401" / "UNAUTHENTICATED"
    assert said == "an API key is required: send 'Authorization: Bearer <token>'"
    assert stored(server, service) == 1


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_labtel_sdk_keeps_what_a_refused_key_sent(
    server: LabtelServer, protocol: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = f"sdk-refused-{protocol}-{time.time_ns()}"
    options: dict[str, Any] = {
        "service_name": service,
        "endpoint": f"http://{server.grpc}" if protocol == "grpc" else server.http,
        "protocol": protocol,
        "spool_dir": tmp_path / "spool",
        "batch_interval_s": 0.05,
        "metrics": False,
        "traces": False,
    }
    lab.configure(api_key="labtel_expired", **options)
    try:
        with caplog.at_level(logging.WARNING, logger="labtel.sdk"):
            for i in range(3):
                lab.get_logger("keyed").info("while the key is wrong", i=i)
            away = lab.flush(3)
            lab.flush(3)
        assert (away.delivered, away.pending, away.dropped, away.rejected) == (0, 3, 0, 0)
        assert len([r for r in caplog.records if "refused the API key" in r.getMessage()]) == 1
        lab.configure(api_key=INGEST.token, **options)  # the key fixed: the spooled events go
        back = lab.flush(10)
        assert (back.delivered, back.pending) == (3, 0)
        assert stored(server, service) == 3
    finally:
        lab.shutdown()


def test_cli_query_commands_take_a_token(server: LabtelServer, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.delenv("LABTEL_API_KEY", raising=False)
    refused = runner.invoke(app, ["sql", "SELECT 1 AS one", "--api", server.api])
    assert refused.exit_code == 1
    assert "401" in refused.output
    assert "API key" in refused.output
    answered = runner.invoke(app, ["sql", "SELECT 1 AS one", "--api", server.api, "--token", SQL.token, "-F", "json"])
    assert answered.exit_code == 0, answered.output
    assert '"one"' in answered.output
    wrong_scope = runner.invoke(app, ["events", "--api", server.api, "--token", SQL.token])
    assert wrong_scope.exit_code == 1
    assert "403" in wrong_scope.output
    from_env = runner.invoke(app, ["events", "--api", server.api, "--json"], env={"LABTEL_API_KEY": READ.token})
    assert from_env.exit_code == 0, from_env.output


def test_madsci_event_client_with_a_key_on_its_session(server: LabtelServer, tmp_path: Path) -> None:
    """madsci-client 0.8.1 has no API-key setting; its httpx session takes the header."""
    from madsci.client.event_client import EventClient
    from madsci.common.types.event_types import Event, EventType

    client = EventClient(
        name="labtel-auth-test", event_server_url=f"{server.api}/madsci/", log_dir=str(tmp_path), fail_on_error=True
    )
    try:
        client.session.headers["Authorization"] = f"Bearer {SLOW.token}"  # ingest + read
        event = Event(event_type=EventType.NODE_STATUS_UPDATE, event_data={"state": "keyed"})
        client.log(event)
        wait_for(lambda: server.all_events(**{"attr.lab.event.id": event.event_id}), what="the MADSci event")
        back = client.get_event(event.event_id)
        assert back is not None
        assert back.event_data == {"state": "keyed"}
        client.session.headers.pop("Authorization")
        with pytest.raises(httpx.HTTPStatusError) as refused:
            client.get_event(event.event_id)
        assert refused.value.response.status_code == 401
    finally:
        client.close()
