"""Configs with API keys and TLS for the security tests: the usual test config, edited."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

from labtel.collector.auth import hash_token, new_token
from tests.helpers import write_config

QUERY_API = 'query_api: {endpoint: "127.0.0.1:0"}'
SERVICE_EXTENSIONS = "extensions: [query_api, file_storage]"
GRPC = 'grpc: {endpoint: "127.0.0.1:0"}'
HTTP = 'http: {endpoint: "127.0.0.1:0"}'


@dataclass(frozen=True)
class Key:
    """A key made for a test: its token (what clients send) and what the config holds."""

    name: str
    token: str
    scopes: tuple[str, ...]
    hash: str

    @property
    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_key(name: str, *scopes: str, kdf: str = "sha256") -> Key:
    token = new_token()
    hashed = hash_token(token, "pbkdf2", iterations=2000) if kdf == "pbkdf2" else hash_token(token)
    return Key(name, token, scopes, hashed)


def keys_yaml(keys: list[Key]) -> str:
    entries = ", ".join(f'{{name: {k.name}, hash: "{k.hash}", scopes: [{", ".join(k.scopes)}]}}' for k in keys)
    return f"labtel_auth: {{keys: [{entries}]}}"


def edit_config(
    path: Path,
    *,
    keys: list[Key] | None = None,
    grpc: str = "",
    http: str = "",
    query_api: str = "",
    host: str = "127.0.0.1",
) -> Path:
    """Add `labtel_auth` with `keys` (referenced by every listener), and `grpc`/`http`/`query_api`
    extras (e.g. a tls: mapping) to the config `write_config` made at `path`."""
    text = path.read_text()
    for part in (QUERY_API, SERVICE_EXTENSIONS, GRPC, HTTP):
        assert part in text, part
    auth = ", auth: {authenticator: labtel_auth}" if keys else ""
    text = text.replace(GRPC, f'grpc: {{endpoint: "{host}:0"{auth}{grpc}}}')
    text = text.replace(HTTP, f'http: {{endpoint: "{host}:0"{auth}{http}}}')
    extension = f"\n  {keys_yaml(keys)}" if keys else ""
    text = text.replace(QUERY_API, f'query_api: {{endpoint: "{host}:0"{auth}{query_api}}}{extension}')
    if keys:
        text = text.replace(SERVICE_EXTENSIONS, "extensions: [query_api, file_storage, labtel_auth]")
    path.write_text(text)
    return path


def auth_config(tmp: Path, keys: list[Key], **extra: str) -> Path:
    """A test config in `tmp` whose listeners all require one of `keys`."""
    return edit_config(write_config(tmp / "otel-config.yaml", tmp / "data"), keys=keys, **extra)


@dataclass(frozen=True)
class Certificates:
    """A test CA and a server certificate for localhost / 127.0.0.1, as PEM files."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path

    def tls_yaml(self, client_ca: bool = False) -> str:
        extra = f', client_ca_file: "{self.ca}"' if client_ca else ""
        return f', tls: {{cert_file: "{self.cert}", key_file: "{self.key}"{extra}}}'


def make_certificates(directory: Path) -> Certificates:
    """A fresh CA (trustme) with a server certificate and a client certificate (key and chain in one file)."""
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("client.labtel.test")
    files = Certificates(
        directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "client.pem"
    )
    ca.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.cert))
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(str(files.cert), append=True)
    server.private_key_pem.write_to_path(str(files.key))
    client.private_key_and_cert_chain_pem.write_to_path(str(files.client_cert))
    return files
