"""An HTTP server (uvicorn) that runs beside others on one event loop.

The OTLP/HTTP receiver and the query API each run one. Sockets are bound here, so port 0
works and the real port can be reported; signal handling is left to the service that owns
the loop (uvicorn's own handlers would fight over SIGINT when several servers share it).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Generator
from typing import Any

import uvicorn

from labtel.collector.config import TLSServerSetting


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening TCP sockets for every address `host` resolves to, all on the same port."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in infos:
            key = (family, address[0])
            if key in seen:
                continue
            seen.add(key)
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            bound_port = sockets[0].getsockname()[1] if sockets else port
            try:
                sock.bind((address[0], bound_port, *address[2:]))
            except OSError:
                sock.close()
                if sockets and family == socket.AF_INET6:
                    continue  # no IPv6 on this host: IPv4 alone will do
                raise
            sock.listen(2048)
            sock.setblocking(False)
            sockets.append(sock)
    except OSError as error:
        for sock in sockets:
            sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    return sockets


class HttpServer:
    """An ASGI app served by uvicorn on pre-bound sockets; HTTPS when `tls` is given (with
    `client_ca_file`, clients must present a certificate that CA signed)."""

    def __init__(self, app: Any, host: str, port: int, tls: TLSServerSetting | None = None) -> None:
        self._app = app
        self._tls = tls
        self._host = host
        self._requested_port = port
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(self) -> None:
        sockets = bind_sockets(self._host, self._requested_port)
        self.port = sockets[0].getsockname()[1]
        tls: dict[str, Any] = {}
        if self._tls is not None:
            cert, key, client_ca = self._tls.paths()
            tls = {"ssl_certfile": cert, "ssl_keyfile": key}
            if client_ca:
                tls |= {"ssl_ca_certs": client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
            limit_concurrency=None,
            backlog=2048,
            **tls,
        )
        self._server = _Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=sockets))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise OSError(f"HTTP server on {self._host}:{self.port} stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = None
            self._task = None
