"""The labtel query API: a FastAPI app over the storage the collector writes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI

from labtel.collector.auth import Authenticator
from labtel.collector.component import Consumer
from labtel.collector.config import QueryApiConfig
from labtel.collector.storage.client import Storage
from labtel.query_api import errors, security
from labtel.query_api.body_limit import BodyLimit
from labtel.query_api.compat import install as install_compat
from labtel.query_api.known_params import refuse_unknown_parameters
from labtel.query_api.routes import alerts as alerts_routes
from labtel.query_api.routes import (
    events,
    export,
    health,
    metrics,
    series,
    sql,
    stats,
    stream,
    traces,
    utilization,
)
from labtel.query_api.sandbox import Sandbox, SandboxLimits
from labtel.sdk import __version__

if TYPE_CHECKING:
    from labtel.collector.exporters.alerts import AlertsExporter

DESCRIPTION = """Events from lab instruments, schedulers, workflow engines and telescopes,
stored by the labtel collector as OpenTelemetry log records in ClickHouse, and the metrics
they send (`/series`)."""


def create_app(
    storage: Storage,
    config: QueryApiConfig | None = None,
    ingest: Consumer | None = None,
    alerts: Sequence[AlertsExporter] = (),
    authenticator: Authenticator | None = None,
) -> FastAPI:
    """A query API reading `storage`, with the limits of the `query_api` extension's `config`;
    the compatibility routes write through `ingest` (the logs pipeline) when given, else into
    storage; `alerts` are the running alerts exporters whose rules and notifiers `/alerts/*` show
    and test; with `authenticator`, every route but health needs an API key with its scope
    (`query_api/security.py`)."""
    config = config or QueryApiConfig()
    app = FastAPI(title="labtel query API", version=__version__, description=DESCRIPTION)
    app.state.storage = storage
    app.state.config = config
    app.state.alerts = list(alerts)
    app.state.closing = asyncio.Event()  # set as the server shuts down: live tails end
    app.state.export_slots = threading.BoundedSemaphore(config.export.max_concurrent)
    app.state.sandbox = Sandbox(
        storage,
        SandboxLimits(
            max_execution_time_s=config.sql.timeout.total_seconds(),
            max_rows_to_read=config.sql.max_rows_to_read,
            max_result_rows=config.sql.max_result_rows,
            max_result_bytes=config.sql.max_result_bytes,
            max_memory_usage=config.sql.max_memory_usage,
            max_concurrent_queries=config.sql.max_concurrent_queries,
        ),
    )
    errors.install(app)
    security.install(app, authenticator)
    app.add_middleware(BodyLimit, max_bytes=config.max_request_body_size)
    # stream before events: /events/stream must not be read as /events/{event_id}
    for router in (health.router, metrics.router, series.router):  # /series checks its parameters itself
        app.include_router(router)
    # stream before events: /events/stream must not be read as /events/{event_id}
    for router in (
        stream.router,
        events.router,
        stats.router,
        sql.router,
        export.router,
        utilization.router,
        traces.router,
        alerts_routes.router,
    ):
        app.include_router(router, dependencies=[Depends(refuse_unknown_parameters)])
    install_compat(app, storage, config, ingest)
    _document_error_shapes(app)
    return app


def _document_error_shapes(app: FastAPI) -> None:
    """Say in the OpenAPI schema what a 422 really holds: FastAPI's list of validation errors, or
    (the compatibility routes, as the servers they stand in for answer) a message."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            error = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
            if error is not None:
                listed = error["properties"]["detail"]
                error["properties"]["detail"] = {"anyOf": [listed, {"type": "string"}], "title": "Detail"}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
