"""Liveness and readiness."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage
from labtel.query_api.deps import get_storage
from labtel.query_api.models import Health, Readiness
from labtel.sdk import __version__

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="The API process is alive")
def health() -> Health:
    return Health(status="ok", version=__version__)


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "storage unreachable or schema not migrated"}},
    summary="Storage is reachable and its schema is current",
)
def ready(storage: Annotated[Storage, Depends(get_storage)]) -> JSONResponse:
    expected = migrations.latest_version()
    version, reason = 0, ""
    try:
        versions = migrations.applied_versions(storage)
        version = max(versions, default=0)
        if version < expected:
            reason = f"schema is at version {version}, expected {expected}: run `labtel migrate`"
    except Exception as error:
        reason = f"storage unreachable: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    body = Readiness(
        ready=not reason,
        storage=storage.target.describe(),
        schema_version=version,
        expected_schema_version=expected,
        reason=reason,
    )
    return JSONResponse(body.model_dump(), status_code=200 if not reason else 503)
