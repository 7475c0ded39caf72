"""The process's global tracer provider while labtel.sdk sets it: a stand-in for the provider of
the setup now in place.

OpenTelemetry lets a process set its global tracer provider once, and instrumentation keeps the
tracers it got from it. Each `configure()` builds a provider of its own (its resource, its
endpoint) and shuts the previous one down; tracers handed out by the global hand each span to
the provider current when the span starts, so spans of an application's own tracer keep
arriving after a second `configure()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.util.types import Attributes

CurrentProvider = Callable[[], trace.TracerProvider | None]
"""The provider of the setup now in place, or None between a shutdown() and the next setup."""


class CurrentTracerProvider(trace.TracerProvider):
    """Tracers that start their spans with the provider `current()` returns."""

    def __init__(self, current: CurrentProvider) -> None:
        self._current = current

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> trace.Tracer:
        return CurrentTracer(
            self._current, (instrumenting_module_name, instrumenting_library_version, schema_url, attributes)
        )

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export the current provider's finished spans (as the SDK provider's force_flush)."""
        provider = self._current()
        flush = getattr(provider, "force_flush", None)
        return bool(flush(timeout_millis)) if flush is not None else True


class CurrentTracer(trace.Tracer):
    """One instrumentation's tracer: the current provider's tracer of the same name, fetched
    again when the provider changes; no-op while there is none."""

    def __init__(self, current: CurrentProvider, identity: tuple[str, str | None, str | None, Attributes]) -> None:
        self._current = current
        self._identity = identity
        self._provider: trace.TracerProvider | None = None
        self._tracer: trace.Tracer = trace.NoOpTracer()

    def _real(self) -> trace.Tracer:
        provider = self._current()
        if provider is None:
            return trace.NoOpTracer()
        if provider is not self._provider:
            self._provider, self._tracer = provider, provider.get_tracer(*self._identity)
        return self._tracer

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._real().start_span(*args, **kwargs)

    @contextmanager
    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Iterator[trace.Span]:  # type: ignore[override]
        with self._real().start_as_current_span(*args, **kwargs) as span:
            yield span
