"""One ClickHouse, embedded (chDB) or a server, reached through clickhouse-connect.

The collector and the query API share a `Storage`: a small pool of clients (chDB allows many
handles on its one engine per process; each handle runs one statement at a time, so parallel
inserts and queries each take their own).
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from labtel.collector.config import ClickHouseExporterConfig
from labtel.collector.storage import schema
from labtel.collector.storage.schema import SchemaNames

log = logging.getLogger(__name__)


class StorageError(RuntimeError):
    """ClickHouse could not be reached or refused a statement."""


class TextNotUnicode(ValueError):
    """A statement's parameter holds text that is not valid Unicode (a lone surrogate, which a
    JSON `\\ud800` escape makes): the caller's input, never storage trouble."""


def check_text(parameters: dict[str, Any] | None) -> None:
    """Raise TextNotUnicode for a parameter holding text that cannot be sent (ASCII, the usual
    case, is known valid without encoding)."""
    for name, value in (parameters or {}).items():
        for text in _texts(value):
            if not text.isascii():
                try:
                    text.encode()
                except UnicodeEncodeError:
                    raise TextNotUnicode(
                        f"{name}: the text is not valid Unicode (a lone surrogate such as \\ud800)"
                    ) from None


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _texts(key)
            yield from _texts(item)


class StorageUnavailable(StorageError):
    """No client could be made: no endpoint answered, or the embedded store cannot be opened (its
    directory held by another process, another store open in this one). Never a statement's fault,
    whatever ClickHouse error code the message carries."""


@dataclass(frozen=True)
class StorageTarget:
    """Where the data lives: a chDB directory (None = in memory) or a server URL."""

    embedded: bool
    path: str | None = None
    url: str = ""
    options: tuple[tuple[str, str], ...] = ()
    """Engine options of an embedded store (`chdb://dir?max_server_memory_usage=...`)."""

    def describe(self) -> str:
        if self.embedded:
            return f"embedded ClickHouse (chDB) in {self.path or 'memory'}"
        parsed = urlparse(self.url)
        return f"ClickHouse server at {parsed.scheme}://{parsed.hostname}:{parsed.port or ''}"


def parse_endpoint(endpoint: str, base_dir: Path | None = None) -> StorageTarget:
    """Read an exporter endpoint: `chdb://./dir`, `chdb:///abs/dir`, `chdb://memory`, or http(s)://.

    Relative chDB paths are resolved against `base_dir` (default: the working directory), so
    `chdb://./labtel-data` means `./labtel-data` (clickhouse-connect would read `.` as a host).
    """
    if endpoint.startswith("chdb:"):
        rest, _, query = endpoint[len("chdb:") :].removeprefix("//").partition("?")
        options = tuple((key, value) for key, value in parse_qsl(query))
        if rest in ("", "memory", ":memory:"):
            return StorageTarget(embedded=True, options=options)
        path = Path(rest).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        return StorageTarget(embedded=True, path=str(path.resolve()), options=options)
    return StorageTarget(embedded=False, url=endpoint)


_INGEST_SETTINGS: dict[str, Any] = {
    "input_format_protobuf_oneof_presence": 1,
    "output_format_json_escape_forward_slashes": 0,
    "throw_on_max_partitions_per_insert_block": 0,
}
_INGEST_TUNING: dict[str, Any] = {"materialize_skip_indexes_on_insert": 0}
"""Ingest settings of newer ClickHouse versions (left out where unknown). The skip indexes of a
new part are built by the merge that soon rewrites it, which builds them anyway, instead of also
at insert: 6-11 % more records/s (bench/ingest.py, 16 clients, alternated runs). Until that merge,
queries read the few newest small parts without skipping any of their granules (same answers)."""


_SCHEMA_FILES = threading.Lock()
"""Serializes writing the schema files: concurrent first inserts would race for one file."""


@cache
def _schema_settings(signal: str, schema_dir: str | None) -> dict[str, Any]:
    """How ClickHouse finds a signal's ingest schema.

    A server gets the schema inline (it cannot read our files). chDB reads it from a file in the
    store's own directory: given inline, chDB would cache it under the working directory."""
    text = schema.ingest_proto(signal)
    message = schema.ingest_message(signal)
    if schema_dir is None:
        return {"format_schema_source": "string", "format_schema": text, "format_schema_message_name": message}
    folder = Path(schema_dir)
    path = folder / f"labtel_{signal}_{schema.ingest_fingerprint(signal)}.proto"
    with _SCHEMA_FILES:
        folder.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(text)
            tmp.replace(path)
    return {"format_schema": f"{path}:{message}"}


EMBEDDED_ALLOCATOR = "dirty_decay_ms:1000"
"""jemalloc options for the embedded engine (its `JE_MALLOC_CONF`), unless the environment sets
them. chDB keeps freed memory for 5 s before returning it to the system (`dirty_decay_ms:5000`);
under sustained ingest that retained ~150 MB more resident memory than returning it after 1 s."""


def embedded_holder(path: str) -> str | None:
    """The other process holding the embedded store in `path` open, as `pid N (its command)`, or
    None when no other process holds it.

    ClickHouse keeps a `status` file in the store's directory, naming its process and locked
    (flock) while the store is open. Another process opening the store fails on that lock, and
    chDB prints ClickHouse's own lines about it, so labtel asks the lock first: a lock it can take
    it lets go at once. The process that wrote the file is this one once it has the store open:
    then nothing is asked (the lock would be its own, on another open file)."""
    status = Path(path) / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None  # a new store, or not one ClickHouse opened
    try:
        found = re.search(rb"^PID: (\d+)$", os.pread(fd, 4096, 0), re.MULTILINE)
        if found is None or int(found.group(1)) == os.getpid():
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe_process(int(found.group(1)))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _describe_process(pid: int) -> str:
    """`pid N (its command line)`, the interpreter left out (`labtel serve ...`)."""
    try:
        argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return f"pid {pid}"
    if argv and os.path.basename(argv[0]).startswith("python"):
        argv = argv[2:] if argv[1:2] == ["-m"] else argv[1:]  # the program the interpreter runs
    if argv:
        argv[0] = os.path.basename(argv[0])
    command = " ".join(argv)
    return f"pid {pid} ({command[:200] + '...' if len(command) > 200 else command})" if command else f"pid {pid}"


def _configure_embedded_allocator() -> None:
    """Set the embedded engine's allocator options; they only take effect before chDB is loaded."""
    if "chdb" not in sys.modules:
        os.environ.setdefault("JE_MALLOC_CONF", EMBEDDED_ALLOCATOR)


@dataclass(frozen=True)
class ServerOptions:
    """How to reach a ClickHouse server (clickhouse-connect's options); the URL's own query
    parameters (`?secure=true&...`) still apply."""

    secure: bool | None = None
    verify: bool = True
    ca_cert: str | None = None
    connect_timeout_s: float = 10.0

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"verify": self.verify}
        if self.secure is not None:
            kwargs["secure"] = self.secure
        if self.ca_cert:
            kwargs["ca_cert"] = self.ca_cert
        return kwargs


class Storage:
    """The ClickHouse labtel writes to and reads from.

    Several targets are failover endpoints: clients are made for the first that answers, and a
    connection error moves every later client to the next one (back to the first after the last)."""

    def __init__(
        self,
        target: StorageTarget | Sequence[StorageTarget],
        names: SchemaNames,
        username: str = "default",
        password: str = "",
        timeout_s: float = 30.0,
        compress: str = "lz4",
        pool_size: int = 8,
        current_database: str | None = None,
        server_options: ServerOptions | None = None,
    ) -> None:
        self.targets: tuple[StorageTarget, ...] = (target,) if isinstance(target, StorageTarget) else tuple(target)
        if not self.targets:
            raise ValueError("Storage needs at least one target")
        self._active = 0
        self._client_target: dict[int, int] = {}
        """Which target each pooled client was made for (by id of the client)."""
        self._server_options = server_options or ServerOptions()
        self._current_database = current_database
        self.names = names
        self._username = username
        self._password = password
        self._timeout_s = timeout_s
        self._compress = compress
        self._pool: queue.LifoQueue[Client] = queue.LifoQueue()
        self._created = 0
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._closed = False
        self._known_settings: frozenset[str] | None = None
        self._fault_file = os.environ.get("LABTEL_FAULT_INJECTION_FILE") or None

    @property
    def target(self) -> StorageTarget:
        """The endpoint new clients are made for."""
        return self.targets[self._active]

    @classmethod
    def from_config(cls, config: ClickHouseExporterConfig, base_dir: Path | None = None) -> Storage:
        tables = config.metrics_tables.by_type()
        names = SchemaNames(
            config.database,
            config.logs_table_name,
            config.traces_table_name,
            tuple(tables[kind] for kind in schema.METRIC_TYPES),
            config.topology(),
            config.limits.record_limits(),
        )
        return cls(
            [parse_endpoint(endpoint, base_dir) for endpoint in config.failover_order()],
            names,
            username=config.username,
            password=config.password.get_secret_value(),
            timeout_s=max(config.timeout.total_seconds(), 30.0),
            compress=config.compress or "none",
            pool_size=max(8, config.sending_queue.num_consumers + 4),
            server_options=ServerOptions(
                config.secure, config.verify, config.ca_cert, config.connect_timeout.total_seconds()
            ),
        )

    def in_database(self, pool_size: int = 4) -> Storage:
        """Another Storage on the same ClickHouse whose statements resolve unqualified table
        names in labtel's database (the SQL sandbox's)."""
        other = Storage(
            self.targets,
            self.names,
            username=self._username,
            password=self._password,
            timeout_s=self._timeout_s,
            compress=self._compress,
            pool_size=pool_size,
            current_database=self.names.database,
            server_options=self._server_options,
        )
        other._active = self._active
        return other

    # --- clients -------------------------------------------------------------------------

    def _client_for(self, target: StorageTarget) -> Client:
        if target.embedded:
            _configure_embedded_allocator()
            if target.path:
                Path(target.path).mkdir(parents=True, exist_ok=True)
                holder = embedded_holder(target.path)
                if holder is not None:
                    raise StorageUnavailable(
                        f"{target.describe()} is in use by {holder}: an embedded store can be open in one process only"
                    )
            return clickhouse_connect.get_client(
                interface="chdb",
                path=target.path,
                database=self._current_database,
                chdb_options=dict(target.options) or None,
            )
        return clickhouse_connect.get_client(
            dsn=target.url,
            database=self._current_database,
            username=self._username,
            password=self._password,
            connect_timeout=min(self._timeout_s, self._server_options.connect_timeout_s),
            send_receive_timeout=self._timeout_s,
            compress=self._compress if self._compress != "none" else False,
            autogenerate_session_id=False,
            **self._server_options.client_kwargs(),
        )

    def _new_client(self) -> Client:
        """A client for the active target, or the next that answers (failover, in order)."""
        start = self._active
        errors = []
        for step in range(len(self.targets)):
            index = (start + step) % len(self.targets)
            target = self.targets[index]
            try:
                client = self._client_for(target)
            except (OperationalError, OSError) as error:  # cannot connect: try the next endpoint
                errors.append(f"cannot reach {target.describe()}: {error}")
                continue
            except ClickHouseError as error:
                raise StorageUnavailable(f"cannot open {target.describe()}: {error}") from error
            if index != self._active:
                log.warning("ClickHouse failover: %s answers, using it", target.describe())
                self._active = index
            self._client_target[id(client)] = index
            return client
        raise StorageUnavailable("; ".join(errors))

    def _failed_over(self, client: Client, error: BaseException) -> bool:
        """After a connection error of a server client, make new clients for the next endpoint;
        True when the client is to be dropped."""
        if not isinstance(error, OperationalError):
            return False
        index = self._client_target.pop(id(client), self._active)
        if len(self.targets) > 1 and index == self._active:
            self._active = (index + 1) % len(self.targets)
            log.warning(
                "ClickHouse at %s failed (%s); next: %s", self.targets[index].describe(), error, self.target.describe()
            )
        return True

    def _acquire(self) -> Client:
        while True:
            try:
                return self._pool.get_nowait()
            except queue.Empty:
                pass
            with self._lock:
                grow = self._created < self._pool_size
                if grow:
                    self._created += 1
            if grow:
                try:
                    return self._new_client()
                except BaseException:
                    with self._lock:
                        self._created -= 1
                    raise
            try:  # wait for a client to come back, or for room to make one (a discarded client)
                return self._pool.get(timeout=0.05)
            except queue.Empty:
                continue

    @contextmanager
    def client(self) -> Iterator[Client]:
        """Borrow a client for one statement (or a few); it goes back to the pool afterwards."""
        if self._closed:
            raise StorageError("storage is closed")
        client = self._acquire()
        try:
            yield client
        except BaseException as error:
            embedded = self.targets[self._client_target.get(id(client), self._active)].embedded
            if not embedded and not self._failed_over(client, error):
                self._pool.put(client)
                raise
            # A chDB handle whose statement failed can hand part of that statement's output to
            # its next statement (seen with text formats): never reuse it. Nor a server client
            # whose connection failed (the next one is made for the next endpoint).
            with self._lock:
                self._created -= 1
            self._client_target.pop(id(client), None)
            client.close()
            raise
        self._pool.put(client)

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                break

    def _schema_dir(self) -> str | None:
        if not self.target.embedded:
            return None
        if self.target.path:
            return str(Path(self.target.path) / "format_schemas")
        return str(Path(tempfile.gettempdir()) / f"labtel-format-schemas-{os.getuid()}")

    # --- statements ----------------------------------------------------------------------

    def command(
        self, sql: str, parameters: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
    ) -> Any:
        """Run a statement that returns at most a scalar (DDL, small inserts, counts)."""
        check_text(parameters)
        with self.client() as client:
            return client.command(sql, parameters=parameters, settings=settings)

    def kill_queries(self, marker: str) -> None:
        """Cancel the statements under way whose text holds `marker` (KILL QUERY: a user may kill
        its own queries), waiting until they have stopped."""
        self.command(
            "KILL QUERY WHERE position(query, {marker:String}) > 0 AND NOT startsWith(query, 'KILL') SYNC",
            parameters={"marker": marker},
        )

    def rows(
        self, sql: str, parameters: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Run a SELECT and return its rows as dicts keyed by column name."""
        check_text(parameters)
        with self.client() as client:
            result = client.query(sql, parameters=parameters, settings=settings)
            return list(result.named_results())

    def raw(
        self,
        sql: str,
        fmt: str | None,
        parameters: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> bytes:
        """Run a SELECT and return its result as ClickHouse writes it in format `fmt` (CSV, Parquet, ...);
        None leaves the statement's text as it is (its own FORMAT, or TabSeparated)."""
        check_text(parameters)
        with self.client() as client:
            data: bytes = client.raw_query(sql, parameters=parameters, settings=settings, fmt=fmt)
            return data

    def supported(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The query settings of `settings` this ClickHouse knows: tuning settings of newer
        versions are left out on older servers instead of failing the query."""
        if self._known_settings is None:
            rows = self.rows("SELECT name FROM system.settings")
            self._known_settings = frozenset(row["name"] for row in rows)
        return {name: value for name, value in settings.items() if name in self._known_settings}

    def ping(self) -> bool:
        """True when ClickHouse answers a trivial query."""
        try:
            self._check_fault()
            return bool(self.command("SELECT 1") == 1)
        except Exception:
            return False

    def insert_otlp(self, signal: str, data: bytes, batch_id: str, *, deduplicate: bool = True) -> None:
        """Insert serialized Export requests of one signal (concatenated requests form one).

        Every stored row keeps `batch_id` (column IngestBatch), so `batch_rows` can tell whether
        an insert whose outcome is unknown (a crash, a timeout) landed. The batch id is also the
        insert's deduplication token, which replicated tables remember: `deduplicate=False` for
        an insert that must land although its batch id was used before (rows of it deleted, or
        a batch stored one request at a time)."""
        self._check_fault()
        settings = {
            **_INGEST_SETTINGS,
            **self.supported(_INGEST_TUNING),
            **self.names.topology.insert_settings,
            **_schema_settings(signal, self._schema_dir()),
            "insert_deduplication_token": batch_id,
        }
        if not deduplicate:
            settings["insert_deduplicate"] = 0
        with self.client() as client:
            client.raw_insert(
                self.names.ingest_table(signal), insert_block=data, settings=settings, fmt="ProtobufSingle"
            )

    def batch_rows(self, signal: str, batch_id: str) -> int:
        """How many rows of a batch are stored (for metrics: data points, over the five tables)."""
        self._check_fault()
        counts = " + ".join(
            f"(SELECT count() FROM {table} WHERE IngestBatch = {{b:String}})"
            for table in self.names.storage_tables(signal).values()
        )
        return int(self.command(f"SELECT {counts}", parameters={"b": batch_id}))

    def delete_batch(self, signal: str, batch_id: str) -> None:
        """Remove the rows of a partially stored batch before it is inserted again."""
        self._check_fault()
        for table in self.names.store_tables(signal).values():
            self.command(schema.delete_rows(self.names, table, "IngestBatch = {b:String}"), parameters={"b": batch_id})

    def _check_fault(self) -> None:
        """Fault injection for tests and soak runs: while the file named by
        $LABTEL_FAULT_INJECTION_FILE exists, writes fail as if storage were away."""
        if self._fault_file and os.path.exists(self._fault_file):
            raise StorageError(f"injected storage fault ({self._fault_file} exists)")
