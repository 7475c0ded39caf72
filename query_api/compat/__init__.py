"""Drop-in backends for existing lab clients: MADSci's Event Manager (`/madsci/`), Master Log
(`/api/v1/logs`) and PANOPTES telemetry (`/panoptes/`). Whatever they send becomes ordinary
labtel events in `otel_logs`."""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI

from labtel.collector.component import Consumer
from labtel.collector.config import QueryApiConfig
from labtel.collector.storage.client import Storage

log = logging.getLogger(__name__)


def api_keys(config: QueryApiConfig) -> frozenset[str]:
    """Master Log bearer keys: the config's `compat.api_keys` and `$LABTEL_API_KEYS` (comma-separated)."""
    keys = {key.get_secret_value().strip() for key in config.compat.api_keys}
    keys |= {key.strip() for key in os.environ.get("LABTEL_API_KEYS", "").split(",")}
    return frozenset(key for key in keys if key)


def install(app: FastAPI, storage: Storage, config: QueryApiConfig, ingest: Consumer | None) -> None:
    """Add the compatibility routes to the query API, writing through `ingest` when given."""
    from labtel.query_api.compat.ingest import EventWriter
    from labtel.query_api.compat.madsci import naive_zone
    from labtel.query_api.compat.madsci_store import MadsciStore
    from labtel.query_api.compat.panoptes import Panoptes
    from labtel.query_api.compat.unanswered import Unanswered
    from labtel.query_api.routes import madsci, masterlog, panoptes

    writer = EventWriter(storage, ingest)
    app.state.api_keys = api_keys(config)
    if app.state.authenticator is not None:
        if app.state.api_keys:
            log.warning(
                "extensions.query_api.compat.api_keys / $LABTEL_API_KEYS are not used: the query API has an "
                "authenticator, so Master Log clients send one of its keys (scope 'ingest')"
            )
    elif not app.state.api_keys:
        log.warning(
            "no API keys are configured (extensions.query_api.compat.api_keys, $LABTEL_API_KEYS): "
            "the Master Log routes (/api/v1/logs) accept any key"
        )
    app.state.compat_writer = writer
    app.state.masterlog_unanswered = Unanswered()
    app.state.madsci = MadsciStore(
        storage, writer, naive_zone(config.compat.madsci.timezone), config.compat.madsci.backup_dir
    )
    app.include_router(madsci.router)
    app.include_router(masterlog.router)
    site = config.compat.panoptes
    app.state.panoptes = Panoptes(storage, writer, naive_zone(site.timezone), site.site_dir)
    app.include_router(panoptes.router)
