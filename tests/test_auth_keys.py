"""API keys without servers: hashes and their checks, the `labtel_auth` config and its errors,
the scope of every query API route, loopback detection, `labtel keys`, the SDK's key header."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from labtel.cli import app as cli
from labtel.collector.auth import (
    ApiKey,
    Authenticator,
    AuthError,
    HashFormatError,
    bearer_token,
    check_hash,
    hash_token,
    is_loopback,
    new_token,
)
from labtel.collector.config import ConfigError, parse_config
from labtel.query_api.app import create_app
from labtel.query_api.security import OPEN_ROUTES, ROUTE_SCOPES, required_scope
from labtel.sdk.settings import SdkSettings, request_headers, resolve
from tests.auth_helpers import make_certificates


def test_tokens_and_hashes() -> None:
    token = new_token()
    assert token.startswith("labtel_")
    assert len(token) == len("labtel_") + 43
    assert new_token() != token
    assert hash_token(token) == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    slow = hash_token(token, "pbkdf2", iterations=1000)
    assert slow.startswith("pbkdf2_sha256$1000$")
    assert token not in slow
    assert hash_token(token, "pbkdf2", iterations=1000) != slow  # salted
    for good in (hash_token(token), slow):
        assert check_hash(good) == good


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("sha256:abc", "bad sha256 hash"),
        ("sha256:" + "z" * 64, "bad sha256 hash"),
        ("pbkdf2_sha256$10$00$00", "at least 1000 iterations"),
        ("pbkdf2_sha256$1000$00", "bad pbkdf2_sha256 hash"),
        ("pbkdf2_sha256$\u00b2$00$00", "at least 1000 iterations"),  # a digit int() refuses
        ("labtel_abcdef", "looks like a token"),
        ("hunter2", "expected 'sha256:"),
    ],
)
def test_bad_hashes_are_refused(value: str, message: str) -> None:
    with pytest.raises(HashFormatError, match=message):
        check_hash(value)


def test_the_authenticator_checks_tokens_and_scopes() -> None:
    tokens = {name: new_token() for name in ("ingest", "admin", "slow")}
    auth = Authenticator(
        "labtel_auth",
        [
            ApiKey("ingest", hash_token(tokens["ingest"]), frozenset({"ingest"})),
            ApiKey("admin", hash_token(tokens["admin"]), frozenset({"admin"})),
            ApiKey("slow", hash_token(tokens["slow"], "pbkdf2", 1000), frozenset({"read"})),
        ],
    )
    assert auth.authorize(f"Bearer {tokens['ingest']}", "ingest").name == "ingest"
    assert auth.authorize(f"bearer  {tokens['admin']} ", "sql").name == "admin"  # admin may do all
    assert auth.authorize(f"Bearer {tokens['slow']}", "read").name == "slow"
    assert auth.authorize(f"Bearer {tokens['slow']}", "read").name == "slow"  # cached
    cases: list[tuple[str | None, str, int]] = [
        (None, "ingest", 401),
        ("", "ingest", 401),
        ("Bearer", "ingest", 401),
        (f"Basic {tokens['ingest']}", "ingest", 401),
        ("Bearer labtel_unknown", "ingest", 401),
        (f"Bearer {tokens['ingest']}x", "ingest", 401),
        (f"Bearer {tokens['ingest']}", "read", 403),
        (f"Bearer {tokens['slow']}", "ingest", 403),
    ]
    for header, scope, status in cases:
        with pytest.raises(AuthError) as refused:
            auth.authorize(header, scope)  # type: ignore[arg-type]
        assert refused.value.status == status, header
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("Token abc") is None


def config_with(keys: Any, listener_auth: str | None = "labtel_auth", listed: bool = True) -> dict[str, Any]:
    auth = {"auth": {"authenticator": listener_auth}} if listener_auth else {}
    return {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "0.0.0.0:4317", **auth}}}},
        "exporters": {"clickhouse": {"endpoint": "chdb://./data"}},
        "extensions": {"labtel_auth": {"keys": keys}, "query_api": {"endpoint": "localhost:8000", **auth}},
        "service": {
            "extensions": ["query_api", *(["labtel_auth"] if listed else [])],
            "pipelines": {"logs": {"receivers": ["otlp"], "exporters": ["clickhouse"]}},
        },
    }


GOOD_KEY = {"name": "bot", "hash": hash_token("labtel_x"), "scopes": ["ingest", "read"]}


def test_a_labtel_auth_config_loads() -> None:
    config = parse_config(config_with([GOOD_KEY]))
    grpc = config.receivers["otlp"].protocols.grpc
    assert grpc is not None
    assert grpc.auth is not None
    authenticator = config.authenticator(grpc.auth)
    assert authenticator is not None
    assert authenticator.authorize("Bearer labtel_x", "read").name == "bot"
    assert config.authenticator(None) is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            config_with([{**GOOD_KEY, "hash": "labtel_plain"}]),
            "extensions.labtel_auth.keys.0.hash: this looks like a token",
        ),
        (config_with([{**GOOD_KEY, "scopes": ["write"]}]), "extensions.labtel_auth.keys.0.scopes.0"),
        (config_with([{**GOOD_KEY, "scopes": []}]), "extensions.labtel_auth.keys.0.scopes"),
        (config_with([{**GOOD_KEY, "token": "labtel_x"}]), "extensions.labtel_auth.keys.0.token: unknown key"),
        (config_with([GOOD_KEY, GOOD_KEY]), "every key needs a name of its own"),
        (config_with([]), "extensions.labtel_auth.keys"),
        (config_with([GOOD_KEY], listener_auth="nope"), "auth.authenticator: 'nope' is not a labtel_auth extension"),
        (config_with([GOOD_KEY], listed=False), "list 'labtel_auth' in service.extensions"),
    ],
)
def test_bad_auth_configs_name_the_key(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_config(config)


def test_tls_files_must_exist_and_hold_a_certificate_and_its_key(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    cases = [
        (
            {"cert_file": str(certificates.cert), "key_file": str(tmp_path / "no")},
            r"key_file: .* is not a readable file",
        ),
        ({"cert_file": str(garbage), "key_file": str(certificates.key)}, r"cannot use cert_file .*garbage\.pem"),
        ({"cert_file": str(certificates.cert), "key_file": str(certificates.cert)}, r"cannot use cert_file"),
        (
            {"cert_file": str(certificates.cert), "key_file": str(certificates.key), "client_ca_file": str(garbage)},
            r"client_ca_file .* is not a PEM CA certificate",
        ),
    ]
    for tls, message in cases:
        config = config_with([GOOD_KEY])
        config["receivers"]["otlp"]["protocols"]["grpc"]["tls"] = tls
        with pytest.raises(ConfigError, match=r"receivers\.otlp\.protocols\.grpc\.tls: " + message):
            parse_config(config)
    good = config_with([GOOD_KEY])
    good["extensions"]["query_api"]["tls"] = {"cert_file": str(certificates.cert), "key_file": str(certificates.key)}
    assert parse_config(good).extensions["query_api"].tls is not None  # type: ignore[union-attr]


def test_every_route_has_a_scope(storage: Any) -> None:
    """Every route of the real app is open (health only), or needs the scope its class calls for."""
    paths = create_app(storage).openapi()["paths"]
    seen = set()
    for path, operations in paths.items():
        for method in operations:
            method = method.upper()
            scope = required_scope(method, path)
            seen.add((method, path))
            if (method, path) in OPEN_ROUTES:
                assert scope is None
                assert path.endswith(("/health", "/ready"))
            elif method == "GET":
                assert scope == "read", path
            else:
                assert (method, path) in ROUTE_SCOPES, f"{method} {path} has no scope of its own"
    assert len(seen) > 40
    assert set(ROUTE_SCOPES) <= seen
    assert seen >= OPEN_ROUTES
    assert required_scope("POST", "/some/new/write") == "admin"  # never open by default
    assert required_scope("HEAD", "/events") == "read"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.0.0.5", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("", False),
        ("::", False),
        ("192.168.1.20", False),
        ("no-such-host.invalid", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_keys_create_prints_the_token_once_and_a_snippet_with_its_hash() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["keys", "create", "--name", "ot2-bot", "--scopes", "ingest,read,ingest"])
    assert result.exit_code == 0, result.output
    token = result.stdout.splitlines()[0]
    assert token.startswith("labtel_")
    snippet = yaml.safe_load("\n".join(result.stdout.splitlines()[1:]))
    (key,) = snippet["extensions"]["labtel_auth"]["keys"]
    assert key == {"name": "ot2-bot", "hash": hash_token(token), "scopes": ["ingest", "read"]}
    assert result.stdout.count(token) == 1
    assert "be shown again" in result.stderr
    parsed = parse_config(
        {**config_with([key]), "extensions": {**config_with([key])["extensions"], **snippet["extensions"]}}
    )
    assert parsed.authenticator(parsed.extensions["query_api"].auth).authorize(f"Bearer {token}", "read")  # type: ignore[union-attr]

    bad = runner.invoke(cli, ["keys", "create", "--name", "x", "--scopes", "ingest,write"])
    assert bad.exit_code == 2
    assert "write" in bad.output

    hashed = runner.invoke(cli, ["keys", "hash", token])
    assert hashed.stdout.strip() == hash_token(token)
    from_stdin = runner.invoke(cli, ["keys", "hash", "--kdf", "pbkdf2"], input=token + "\n")
    stored = from_stdin.stdout.strip()
    assert stored.startswith("pbkdf2_sha256$")
    assert Authenticator("a", [ApiKey("k", stored, frozenset({"read"}))]).authorize(f"Bearer {token}", "read")


def test_the_sdk_sends_its_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LABTEL_API_KEY", "LABTEL_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_LOGS_HEADERS"):
        monkeypatch.delenv(name, raising=False)
    assert request_headers(resolve(SdkSettings())) == {}
    assert request_headers(resolve(SdkSettings(api_key="labtel_k"))) == {"authorization": "Bearer labtel_k"}
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20labtel_std")
    assert request_headers(resolve(SdkSettings(api_key="labtel_k"))) == {"authorization": "Bearer labtel_std"}
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/labtel/ca.pem")
    assert resolve(SdkSettings()).certificate_file == Path("/etc/labtel/ca.pem")


async def test_kdf_checks_run_off_the_event_loop() -> None:
    token = new_token()
    auth = Authenticator("labtel_auth", [ApiKey("slow", hash_token(token, "pbkdf2", 200_000), frozenset({"read"}))])
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    running = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    before = ticks
    results = await asyncio.gather(
        auth.authorize_async(f"Bearer {token}", "read"),
        *(auth.authorize_async(f"Bearer {new_token()}", "read") for _ in range(3)),
        return_exceptions=True,
    )
    running.cancel()
    assert isinstance(results[0], ApiKey)
    assert all(isinstance(r, AuthError) and r.status == 401 for r in results[1:])
    assert ticks - before > 5  # the loop kept running while four KDF checks ran
    assert (await auth.authorize_async(f"Bearer {token}", "read")).name == "slow"  # cached now
