"""Which API-key scope each query API route needs, and the dependency that checks it.

Health and readiness are open (probes carry no keys). `POST /sql` needs `sql`; the routes that
write events (the MADSci, Master Log and PANOPTES compatibility posts) need `ingest`; alert
tests, MADSci archiving, deletion and backups need `admin`; every other route, `/metrics`
included, reads and needs `read`. A key with `admin` may do everything. Without an
authenticator (the embedded localhost default) nothing is checked.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from labtel.collector.auth import Authenticator, AuthError, Scope

OPEN_ROUTES = frozenset(
    {
        ("GET", "/health"),
        ("GET", "/ready"),
        ("GET", "/madsci/health"),
        ("GET", "/panoptes/health"),
        ("GET", "/panoptes/ready"),
    }
)
ROUTE_SCOPES: dict[tuple[str, str], Scope] = {
    ("POST", "/sql"): "sql",
    ("POST", "/madsci/event"): "ingest",
    ("POST", "/api/v1/logs"): "ingest",
    ("POST", "/api/v1/logs/batch"): "ingest",
    ("POST", "/panoptes/event"): "ingest",
    ("POST", "/panoptes/run/start"): "ingest",
    ("POST", "/panoptes/run/stop"): "ingest",
    ("POST", "/events/query"): "read",
    ("POST", "/madsci/events/query"): "read",
    ("POST", "/alerts/test"): "admin",
    ("POST", "/madsci/events/archive"): "admin",
    ("DELETE", "/madsci/events/archived"): "admin",
    ("POST", "/madsci/backup"): "admin",
    ("POST", "/panoptes/shutdown"): "admin",
}
SCHEME_NAME = "apiKey"

bearer = HTTPBearer(
    auto_error=False,
    scheme_name=SCHEME_NAME,
    description="An API key of the labtel_auth extension (`labtel keys create`): `Authorization: Bearer <token>`.",
)


def required_scope(method: str, path: str) -> Scope | None:
    """The scope a route (its path template) needs, None for open routes. Reads (GET, HEAD)
    need `read`; a write route not listed needs `admin`, so a new one is never left open."""
    method = method.upper()
    if method == "HEAD":
        method = "GET"
    if (method, path) in OPEN_ROUTES:
        return None
    if (method, path) in ROUTE_SCOPES:
        return ROUTE_SCOPES[(method, path)]
    return "read" if method == "GET" else "admin"


async def authorize(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> None:
    """Refuse the request (401 / 403) unless its bearer token grants the route's scope."""
    authenticator: Authenticator | None = request.app.state.authenticator
    if authenticator is None:
        return
    route = request.scope.get("route")
    # the route's path template; failing that the request's path (unknown writes then need admin)
    path = route.path if isinstance(route, APIRoute) else request.url.path
    scope = required_scope(request.method, path)
    if scope is None:
        return
    try:
        key = await authenticator.authorize_async(request.headers.get("authorization"), scope)
    except AuthError as error:
        headers = {"WWW-Authenticate": 'Bearer realm="labtel"'} if error.status == 401 else None
        raise HTTPException(error.status, error.message, headers=headers) from None
    request.state.api_key = key.name


def install(app: FastAPI, authenticator: Authenticator | None) -> None:
    """Check keys on every route of `app` (added afterwards) when `authenticator` is given, and
    show each operation's scope (`x-labtel-scope`) and the bearer scheme in the OpenAPI document."""
    app.state.authenticator = authenticator
    if authenticator is None:
        return
    app.router.dependencies.append(Security(authorize))
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                if not isinstance(operation, dict):
                    continue
                scope = required_scope(method, path)
                if scope is None:
                    operation.pop("security", None)
                    continue
                operation["x-labtel-scope"] = scope
                operation.setdefault("security", [{SCHEME_NAME: []}])
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
