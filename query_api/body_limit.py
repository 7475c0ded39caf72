"""A bound on the size of request bodies of the query API (selectors, SQL, compatibility posts).

An ASGI middleware: a body announced larger than the limit (Content-Length) is refused before it
is read, and a body that grows past the limit while it is read (chunked uploads) is cut off, in
both cases with 413 and a message naming the limit, so no request can make the API hold more
than `max_bytes` of one body in memory.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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
        if announced is not None and announced > self.max_bytes:
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
