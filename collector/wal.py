"""The collector's write-ahead log: batches acknowledged before ClickHouse has stored them.

One file per batch: a header (batch id, signal, record count, request sizes, checksum) and the
concatenated requests. A file is written under a temporary name, fsynced, renamed and its
directory fsynced, so after a crash a batch is either wholly in the log or not at all. It is
deleted once the batch is stored. Files that fail their checksum are moved to `quarantine/`,
never silently dropped, and so are the requests of a batch that storage refuses: there a smaller
file of the same name holds only them, its header naming why (`reasons`, one per request).

Setting requests aside is two steps, writing the smaller file and deleting the entry, and a crash
may fall between them; the entry is then replayed after the restart. Setting them aside again
writes the same file (the same name and content, via a temporary file and a rename), and a replay
that stores the whole batch deletes the file, whose requests are then stored.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

log = logging.getLogger(__name__)

_MAGIC = b"LABTELWAL1\n"


class WALFull(Exception):
    """The log holds `max_bytes` already; the caller must push back."""


class WALInUse(OSError):
    """Another process (another collector) has this write-ahead log open."""


_HELD: dict[Path, int] = {}
"""The log directories this process holds the lock of (by resolved path: the lock file's fd)."""
_HELD_LOCK = threading.Lock()


def _hold(directory: Path) -> None:
    """Take the directory's lock for the life of this process, or fail when another process has it:
    each collector needs a log of its own (collectors side by side: one file_storage.directory each)."""
    key = directory.resolve()
    with _HELD_LOCK:
        if key in _HELD:
            return
        fd = os.open(key / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise WALInUse(
                f"write-ahead log {key} is in use by {holder}: give each collector its own "
                "file_storage.directory (LABTEL_WAL_DIR)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        _HELD[key] = fd


@dataclass(frozen=True)
class WALEntry:
    """One logged batch."""

    path: Path
    batch_id: str
    signal: str
    records: int
    sizes: tuple[int, ...]
    created: float
    size: int

    def read(self) -> bytes:
        """The batch's concatenated requests, verified against the checksum."""
        raw = self.path.read_bytes()
        header_end = raw.index(b"\n", len(_MAGIC))
        header = orjson.loads(raw[len(_MAGIC) : header_end])
        data = raw[header_end + 1 :]
        if len(data) != sum(self.sizes) or zlib.crc32(data) != header["crc32"]:
            raise ValueError(f"{self.path.name}: checksum mismatch")
        return data

    def requests(self, data: bytes) -> list[bytes]:
        """Split the batch back into its requests."""
        out, start = [], 0
        for size in self.sizes:
            out.append(data[start : start + size])
            start += size
        return out


class WriteAheadLog:
    """A directory of logged batches, bounded by `max_bytes`."""

    def __init__(self, directory: Path, max_bytes: int, fsync: bool = True) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self._entries: dict[str, WALEntry] = {}
        self._bytes = 0
        self._seq = 0
        self._full = False
        self._set_aside: set[str] = set()
        """Logged batches that also have a file in quarantine/: a crash fell between writing it
        and deleting the entry (see `quarantine_requests`)."""
        self.quarantined_on_load = 0
        """Files set aside while opening the log (unreadable headers)."""
        directory.mkdir(parents=True, exist_ok=True)
        _hold(directory)
        self._load()

    # --- state ---------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[WALEntry]:
        """Logged batches, oldest first."""
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: e.path.name)

    def has_room(self, size: int) -> bool:
        """Whether a batch of `size` bytes may be logged. Once the log has refused one, it refuses
        all until it drains below 80% (no flapping between accepting and pushing back)."""
        if self._full and self._bytes < self.max_bytes * 0.8:
            self._full = False
        if self._full:
            return False
        if self._bytes + size <= self.max_bytes or not self._entries:
            return True
        self._full = True
        return False

    def _load(self) -> None:
        for leftover in (*self.directory.glob("*.tmp"), *self.quarantine_directory.glob("*.tmp")):
            leftover.unlink(missing_ok=True)  # a write that never completed was never acknowledged
        for path in sorted(self.directory.glob("*.wal")):
            try:
                entry = self._read_header(path)
            except (OSError, ValueError, KeyError) as error:
                self._quarantine(path, str(error))
                self.quarantined_on_load += 1
                continue
            self._entries[entry.batch_id] = entry
            self._bytes += entry.size
            if (self.quarantine_directory / path.name).exists():
                self._set_aside.add(entry.batch_id)
            self._seq = max(self._seq, int(path.name.split("-", 1)[0]) + 1)
        if self._entries:
            log.info(
                "write-ahead log %s holds %d batches (%d bytes) to store",
                self.directory,
                len(self._entries),
                self._bytes,
            )

    @staticmethod
    def _read_header(path: Path) -> WALEntry:
        with path.open("rb") as file:
            if file.read(len(_MAGIC)) != _MAGIC:
                raise ValueError("not a labtel WAL file")
            header = orjson.loads(file.readline())
        return WALEntry(
            path,
            header["batch_id"],
            header["signal"],
            header["records"],
            tuple(header["sizes"]),
            header["created"],
            path.stat().st_size,
        )

    @property
    def quarantine_directory(self) -> Path:
        """Where files set aside are kept for an operator."""
        return self.directory / "quarantine"

    def _quarantine(self, path: Path, reason: str) -> None:
        target = self.quarantine_directory
        target.mkdir(exist_ok=True)
        path.replace(target / path.name)  # in one step: replaces a smaller file of the same name
        log.error("write-ahead log: moved %s to quarantine: %s", path.name, reason)

    def quarantine(self, entry: WALEntry, reason: str) -> None:
        """Set a batch aside that cannot be stored (kept on disk for an operator)."""
        self._forget(entry.batch_id)
        self._set_aside.discard(entry.batch_id)
        self._quarantine(entry.path, reason)

    def quarantine_requests(
        self, entry: WALEntry, requests: Sequence[bytes], records: int, reasons: Sequence[str]
    ) -> Path:
        """Set aside the requests of a batch that storage refuses (`records` records, `reasons`
        one per request), the batch's other requests being stored: they are written durably
        to a smaller WAL file of the entry's name in `quarantine/`, then the entry is forgotten.
        Written again after a crash in between, the file is the same one, replaced whole."""
        target = self.quarantine_directory
        target.mkdir(exist_ok=True)
        header, data = _encode(entry.batch_id, entry.signal, requests, records, entry.created, reasons=list(reasons))
        path = target / entry.path.name
        self._write(path, header, data)
        self._forget(entry.batch_id)
        self._set_aside.discard(entry.batch_id)
        entry.path.unlink(missing_ok=True)
        log.error(
            "write-ahead log: set aside %d of the %d requests (%d records) of %s in quarantine: %s",
            len(requests),
            len(entry.sizes),
            records,
            entry.path.name,
            "; ".join(reasons),
        )
        return path

    def _forget(self, batch_id: str) -> WALEntry | None:
        with self._lock:
            entry = self._entries.pop(batch_id, None)
            if entry is not None:
                self._bytes -= entry.size
        return entry

    # --- writing -------------------------------------------------------------------------

    def append(self, batch_id: str, signal: str, requests: Sequence[bytes], records: int) -> WALEntry:
        """Log a batch durably (fsynced) and return its entry; raises WALFull."""
        created = time.time()
        header, data = _encode(batch_id, signal, requests, records, created)
        size = len(_MAGIC) + len(header) + 1 + len(data)
        with self._lock:
            if not self.has_room(size):
                raise WALFull(f"write-ahead log is full ({self._bytes} of {self.max_bytes} bytes)")
            seq = self._seq
            self._seq += 1
            self._bytes += size  # reserved now, so concurrent appends respect the bound
        path = self.directory / f"{seq:016d}-{signal}-{batch_id}.wal"
        try:
            self._write(path, header, data)
        except BaseException:
            with self._lock:
                self._bytes -= size
            raise
        entry = WALEntry(path, batch_id, signal, records, tuple(len(r) for r in requests), created, size)
        with self._lock:
            self._entries[batch_id] = entry
        return entry

    def remove(self, batch_id: str) -> None:
        """Forget a batch that is now stored, and a file of its requests set aside before a crash
        (they are stored now): that one first, so that a crash in between leaves the entry, whose
        replay finds the batch stored and comes here again."""
        entry = self._forget(batch_id)
        if entry is None:
            return
        if batch_id in self._set_aside:
            self._set_aside.discard(batch_id)
            stale = self.quarantine_directory / entry.path.name
            stale.unlink(missing_ok=True)
            if self.fsync:
                self._fsync_directory(stale.parent)
            log.warning(
                "write-ahead log: %s is stored whole after all: deleted the copy of its requests in quarantine/",
                entry.path.name,
            )
        entry.path.unlink(missing_ok=True)

    def _write(self, path: Path, header: bytes, data: bytes) -> None:
        """Write a file whole or not at all: under a temporary name, fsynced, renamed."""
        tmp = path.with_suffix(".tmp")
        try:
            with tmp.open("wb") as file:
                file.write(_MAGIC + header + b"\n")
                file.write(data)
                file.flush()
                if self.fsync:
                    os.fsync(file.fileno())
            tmp.replace(path)
            if self.fsync:
                self._fsync_directory(path.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @staticmethod
    def _fsync_directory(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _encode(
    batch_id: str, signal: str, requests: Sequence[bytes], records: int, created: float, **extra: object
) -> tuple[bytes, bytes]:
    """A WAL file's header line (without its newline) and data: the concatenated requests;
    `created` is when the batch was first logged."""
    data = b"".join(requests)
    header = {
        "batch_id": batch_id,
        "signal": signal,
        "records": records,
        "sizes": [len(r) for r in requests],
        "created": created,
        "crc32": zlib.crc32(data),
        **extra,
    }
    return orjson.dumps(header), data
