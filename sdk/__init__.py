"""labtel.sdk: the library lab code imports to emit events as OpenTelemetry log records."""

from __future__ import annotations

from labtel.sdk._version import __version__

__all__ = ["__version__"]
