"""The process's global tracer and meter providers while labtel.sdk sets them: stand-ins for the
providers of the setup now in place.

OpenTelemetry lets a process set its global providers once, and instrumentation keeps the tracers
and instruments it got from them. Each `configure()` builds providers of its own (its resource,
its endpoint) and shuts the previous ones down. Tracers handed out by the global hand each span to
the provider current when the span starts; instruments of the meters it hands out are bound again
to each new provider. So an application's own spans and metrics keep arriving after a second
`configure()`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics._internal import _ProxyMeter, _ProxyMeterProvider
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


class RebindingMeter(_ProxyMeter):
    """OpenTelemetry's proxy meter (what the API hands out before a provider is set), kept a
    proxy: each instrument it makes is bound to the current provider's meter at once, and again at
    each `on_set_meter_provider` (the API's own binds once, then hands out real instruments)."""

    def __init__(self, name: str, version: str | None, schema_url: str | None, provider: metrics.MeterProvider) -> None:
        super().__init__(name, version, schema_url)
        self._bound = provider.get_meter(name, version, schema_url)

    def on_set_meter_provider(self, meter_provider: metrics.MeterProvider) -> None:
        real = meter_provider.get_meter(self._name, self._version, self._schema_url)
        with self._lock:
            self._bound = real
            for instrument in self._instruments:
                instrument.on_meter_set(real)


def _bound_when_made(create: Callable[..., Any]) -> Callable[..., Any]:
    def made(self: RebindingMeter, *args: Any, **kwargs: Any) -> Any:
        instrument = create(self, *args, **kwargs)  # a proxy instrument: the meter holds no real one
        instrument.on_meter_set(self._bound)
        return instrument

    return made


for _create in [name for name in vars(_ProxyMeter) if name.startswith("create_")]:
    setattr(RebindingMeter, _create, _bound_when_made(getattr(_ProxyMeter, _create)))


class CurrentMeterProvider(metrics.MeterProvider):
    """Meters whose instruments record into the provider `use` bound last (none: they do nothing)."""

    def __init__(self) -> None:
        self._meters: list[RebindingMeter] = []
        self._provider: metrics.MeterProvider = metrics.NoOpMeterProvider()
        self._lock = threading.Lock()

    def get_meter(
        self,
        name: str,
        version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> metrics.Meter:
        with self._lock:
            meter = RebindingMeter(name, version, schema_url, self._provider)
            self._meters.append(meter)
        return meter

    def use(self, provider: metrics.MeterProvider | None) -> None:
        """Bind every meter handed out, and those to come, to `provider` (None: to nothing)."""
        with self._lock:
            self._provider = provider if provider is not None else metrics.NoOpMeterProvider()
            for meter in self._meters:
                meter.on_set_meter_provider(self._provider)


def meter_provider_unset() -> bool:
    """Whether the process has set no global meter provider yet (the API's own proxy is in place)."""
    return isinstance(metrics.get_meter_provider(), _ProxyMeterProvider)
