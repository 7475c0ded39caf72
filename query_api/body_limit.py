"""A bound on the size of request bodies of the query API (selectors, SQL, compatibility posts).

An ASGI middleware: a body announced larger than the limit (Content-Length) is refused without
passing it on, and a body that grows past the limit while it is read (chunked uploads) is cut
off, in both cases with 413 and a message naming the limit, so no request can make the API hold
more than `max_bytes` of one body in memory. Before answering, the rest of the body is read and
thrown away (up to DRAIN_FACTOR times the limit, and not when the client waits for
`100 Continue`): a client that sends its whole body before it reads the answer, as Python's
urllib does (master-log-client), would otherwise see its connection reset instead of the 413.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DRAIN_FACTOR = 10
"""How much of a body over the limit is read and thrown away before the 413, in limits."""


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413 (`query_api.max_request_body_size`)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced = _content_length(scope)
        drain = 0 if _expects_continue(scope) else self.max_bytes * DRAIN_FACTOR
        if announced is not None and announced > self.max_bytes:
            if announced <= drain:
                await _discard(receive, announced)
            await self._refuse(send, f"request body of {announced} bytes")
            return
        received = 0
        refused = started = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Answer now, and let the app see a client that went away: it stops reading.
                    refused = True
                    if not started:
                        if message.get("more_body", False):
                            await _discard(receive, drain - received)
                        await self._refuse(send, f"request body of more than {self.max_bytes} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:  # once refused, what the app says is not sent
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, send: Send, what: str) -> None:
        detail = f"{what} is over the limit of {self.max_bytes} bytes (query_api.max_request_body_size)"
        body = orjson.dumps({"detail": detail})
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _expects_continue(scope: Scope) -> bool:
    """Whether the client sends its body only once told to (`Expect: 100-continue`)."""
    return any(name == b"expect" and value.lower() == b"100-continue" for name, value in scope.get("headers", []))


async def _discard(receive: Receive, most: int) -> None:
    """Read the rest of a request body and throw it away, until it ends, the client goes away,
    or more than `most` bytes were read (the connection is then closed under the client)."""
    read = 0
    while read <= most:
        message = await receive()
        if message["type"] != "http.request":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
