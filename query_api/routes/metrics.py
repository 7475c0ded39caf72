"""`GET /metrics`: the collector's self-metrics, in Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from labtel.collector import telemetry

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Collector self-metrics (Prometheus text format)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics() -> Response:
    body, content_type = telemetry.exposition()
    return Response(body, media_type=content_type)
