"""Request-scoped access to what the app was built with."""

from __future__ import annotations

from fastapi import Request

from labtel.collector.storage.client import Storage


def get_storage(request: Request) -> Storage:
    """The storage this API instance reads."""
    storage: Storage = request.app.state.storage
    return storage
