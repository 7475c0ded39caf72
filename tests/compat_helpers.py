"""A `labtel serve` for the compatibility-route tests: the usual test config plus a `compat` section."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import LabtelServer, write_config

QUERY_API = 'query_api: {endpoint: "127.0.0.1:0"}'


def compat_server(tmp: Path, compat: str, env: dict[str, str] | None = None) -> LabtelServer:
    """A started `labtel serve` in `tmp` whose query API has `compat: {<compat>}`."""
    config = write_config(tmp / "otel-config.yaml", tmp / "data")
    text = config.read_text()
    assert QUERY_API in text
    config.write_text(text.replace(QUERY_API, f'query_api: {{endpoint: "127.0.0.1:0", compat: {{{compat}}}}}'))
    return LabtelServer(config=config, workdir=tmp, env=env or {}).start()
