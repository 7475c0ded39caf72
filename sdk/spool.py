"""A bounded on-disk spool of encoded requests, for while the collector is away.

One file per request; the record count is part of the name so pending records can be counted
without reading files. A file is claimed by renaming it before it is sent, so several processes
sharing the spool never send the same request twice.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path

from labtel.sdk.textform import digits


class Spool:
    """Requests waiting on disk, oldest first, bounded by `max_bytes`."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._bytes = 0
        self._records = 0
        self._files = 0
        self._ready = False

    def _open(self) -> None:
        if self._ready:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for claimed in self.directory.glob("*.sending-*"):
            owner = claimed.name.rsplit("-", 1)[-1]
            # Claimed by a process that is gone (or by an earlier process with our pid): put it back.
            if not digits(owner) or int(owner) == os.getpid() or not _alive(int(owner)):
                claimed.rename(claimed.with_name(claimed.name.split(".sending-")[0]))
        for path in self.directory.glob("*.otlp"):
            self._count(path, +1)
        self._ready = True

    def _count(self, path: Path, sign: int) -> None:
        try:
            size = path.stat().st_size
        except OSError:
            return
        self._bytes += sign * size
        self._records += sign * _records_in(path.name)
        self._files += sign

    @property
    def pending_records(self) -> int:
        with self._lock:
            self._open()
            return self._records

    @property
    def pending_files(self) -> int:
        with self._lock:
            self._open()
            return self._files

    def put(self, data: bytes, records: int) -> bool:
        """Keep a request for later; False when the spool is full (the caller drops it)."""
        with self._lock:
            self._open()
            if self._bytes + len(data) > self.max_bytes:
                return False
            name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):06d}-{records}.otlp"
            path = self.directory / name
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
            self._count(path, +1)
            return True

    def claim_oldest(self, skip: set[str] | frozenset[str] = frozenset()) -> tuple[Path, bytes, int] | None:
        """Take the oldest request (but those named in `skip`) for sending: (claim, data,
        records), or None when there is none."""
        with self._lock:
            self._open()
            for path in sorted(self.directory.glob("*.otlp")):
                if path.name in skip:
                    continue
                claim = path.with_name(f"{path.name}.sending-{os.getpid()}")
                try:
                    path.rename(claim)
                except OSError:
                    continue  # another process took it
                self._count(claim, -1)
                return claim, claim.read_bytes(), _records_in(path.name)
            return None

    def done(self, claim: Path) -> None:
        """The claimed request was delivered."""
        claim.unlink(missing_ok=True)

    def release(self, claim: Path) -> None:
        """The claimed request could not be sent: put it back."""
        with self._lock:
            back = claim.with_name(claim.name.split(".sending-")[0])
            claim.rename(back)
            self._count(back, +1)

    @staticmethod
    def name_of(claim: Path) -> str:
        """The name of the request a claim holds."""
        return claim.name.split(".sending-")[0]

    def set_aside(self, name: str) -> bool:
        """Stop sending the request `name` (kept beside the spool as `<name>.failed`); False
        when it is not there any more."""
        with self._lock:
            path = self.directory / name
            try:
                path.rename(path.with_name(f"{name}.failed"))
            except OSError:
                return False
            self._count(path.with_name(f"{name}.failed"), -1)
            return True


def _records_in(name: str) -> int:
    stem = name.split(".", 1)[0]
    tail = stem.rsplit("-", 1)[-1]
    return int(tail) if digits(tail) else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
