"""Spans: `with labtel.sdk.span("transfer plate", node_id="ot2"):` — events inside carry its ids."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace

from labtel.sdk import core, semconv


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[trace.Span]:
    """Start a span (a child of the active one); exceptions are recorded and re-raised.

    Uses labtel's tracer provider, or the one OpenTelemetry instrumentation already set up."""
    named = {semconv.FIELD_ALIASES.get(k, k): v for k, v in attributes.items() if v is not None}
    with core.state().tracer().start_as_current_span(name, attributes=named) as current:
        yield current
