"""`labtel keys create` and `labtel keys hash`: API keys for the `labtel_auth` extension."""

from __future__ import annotations

import sys
from typing import Annotated, Literal

import typer
import yaml

from labtel.collector.auth import SCOPES, hash_token, new_token

keys_app = typer.Typer(help="API keys (bearer tokens with scopes) for the labtel_auth extension.", no_args_is_help=True)

KdfOption = Annotated[
    str,
    typer.Option(help="sha256 (for generated tokens) or pbkdf2 (for tokens people choose)"),
]


def _kdf(value: str) -> Literal["sha256", "pbkdf2"]:
    if value == "sha256":
        return "sha256"
    if value == "pbkdf2":
        return "pbkdf2"
    raise typer.BadParameter(f"{value!r}: use sha256 or pbkdf2", param_hint="--kdf")


def parse_scopes(text: str) -> list[str]:
    """`ingest,read` as a checked list of scopes."""
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise typer.BadParameter(
            f"{', '.join(unknown) or text!r}: scopes are {', '.join(SCOPES)}", param_hint="--scopes"
        )
    return list(dict.fromkeys(scopes))


def config_snippet(name: str, hashed: str, scopes: list[str]) -> str:
    """The `extensions.labtel_auth` YAML holding one key, and the listeners referring to it."""
    extension = {"extensions": {"labtel_auth": {"keys": [{"name": name, "hash": hashed, "scopes": scopes}]}}}
    return (
        yaml.safe_dump(extension, sort_keys=False, default_flow_style=None)
        + "# and on each listener (receivers.otlp.protocols.grpc/http, extensions.query_api):\n"
        + "#   auth: {authenticator: labtel_auth}\n"
        + "# with labtel_auth listed in service.extensions.\n"
    )


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="The key's name (shown in logs and errors, never the token)")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: ingest, read, sql, admin")] = "ingest",
    kdf: KdfOption = "sha256",
) -> None:
    """Make a new random token; print it once (stdout, first line) and the config snippet with its hash."""
    chosen = parse_scopes(scopes)
    token = new_token()
    hashed = hash_token(token, _kdf(kdf))
    typer.echo(token)
    typer.echo(
        "# The line above is the token: give it to the client (Authorization: Bearer <token>,\n"
        "# LABTEL_API_KEY for labtel.sdk and the labtel CLI). It is not stored anywhere and cannot\n"
        "# be shown again. Add this to otel-config.yaml:",
        err=True,
    )
    typer.echo(config_snippet(name, hashed, chosen))


@keys_app.command("hash")
def hash_command(
    token: Annotated[str | None, typer.Argument(help="The token; read from standard input when omitted")] = None,
    kdf: KdfOption = "sha256",
) -> None:
    """Print the config `hash:` of an existing token."""
    text = token if token is not None else sys.stdin.readline().strip()
    if not text:
        raise typer.BadParameter("no token given", param_hint="TOKEN")
    typer.echo(hash_token(text, _kdf(kdf)))


def register(app: typer.Typer) -> None:
    """Add `labtel keys ...` to the command line."""
    app.add_typer(keys_app, name="keys")
