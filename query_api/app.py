"""The labtel query API: a FastAPI app over the storage the collector writes."""

from __future__ import annotations

from fastapi import FastAPI

from labtel.collector.storage.client import Storage
from labtel.query_api import errors
from labtel.query_api.routes import events, health, metrics, series, stats, stream, traces
from labtel.sdk import __version__

DESCRIPTION = """Events from lab instruments, schedulers, workflow engines and telescopes,
stored by the labtel collector as OpenTelemetry log records in ClickHouse, and the metrics
they send (`/series`)."""


def create_app(storage: Storage) -> FastAPI:
    """A query API reading `storage`."""
    app = FastAPI(title="labtel query API", version=__version__, description=DESCRIPTION)
    app.state.storage = storage
    errors.install(app)
    # stream before events: /events/stream must not be read as /events/{event_id}
    for router in (
        health.router,
        metrics.router,
        stream.router,
        events.router,
        stats.router,
        traces.router,
        series.router,
    ):
        app.include_router(router)
    return app
