"""The running collector: components built from `otel-config.yaml` and wired by its pipelines.

Start order: exporters (schema migrations), extensions (the query API), processors, receivers;
shutdown runs the other way, so everything accepted is stored before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from labtel.collector.alerts.config import AlertsExporterConfig
from labtel.collector.auth import Authenticator, is_loopback
from labtel.collector.component import (
    BatchConsumer,
    Consumer,
    Lifecycle,
    PartialSuccess,
    Payload,
    Verdict,
)
from labtel.collector.config import (
    AuthSettings,
    BatchProcessorConfig,
    ClickHouseExporterConfig,
    CollectorConfig,
    ConfigError,
    QueryApiConfig,
    component_type,
)
from labtel.collector.exporters.alerts import AlertsExporter
from labtel.collector.exporters.clickhouse import ClickHouseExporter
from labtel.collector.otlp.signals import SIGNALS, Signal
from labtel.collector.processors.batch import GroupCommit, Passthrough, merge_verdicts
from labtel.collector.receivers.otlp_grpc import OTLPGrpcReceiver
from labtel.collector.receivers.otlp_http import OTLPHttpReceiver
from labtel.collector.self_metrics import SelfMetrics
from labtel.collector.servers import HttpServer
from labtel.collector.storage.client import Storage
from labtel.collector.wal import WriteAheadLog

log = logging.getLogger(__name__)


class FanOut:
    """A BatchConsumer that stores a batch with every exporter of a pipeline, then tells the
    observers (alerts exporters, which read what was stored and return at once)."""

    def __init__(self, exporters: Sequence[BatchConsumer], observers: Sequence[BatchConsumer] = ()) -> None:
        self._exporters = list(exporters)
        self._observers = list(observers)

    async def consume_batch(self, batch: Sequence[Payload]) -> list[Verdict]:
        verdicts = await self._store(batch)
        for observer in self._observers:
            await observer.consume_batch(batch)
        return verdicts

    async def _store(self, batch: Sequence[Payload]) -> list[Verdict]:
        if len(self._exporters) == 1:
            return await self._exporters[0].consume_batch(batch)
        results = await asyncio.gather(*(e.consume_batch(batch) for e in self._exporters), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return merge_verdicts([r for r in results if not isinstance(r, BaseException)])


class ConsumerFanOut:
    """A Consumer that hands one payload to several pipelines (one receiver, many pipelines)."""

    def __init__(self, consumers: Sequence[Consumer]) -> None:
        self._consumers = list(consumers)

    async def consume(self, payload: Payload) -> PartialSuccess | None:
        if len(self._consumers) == 1:
            return await self._consumers[0].consume(payload)
        results = await asyncio.gather(*(c.consume(payload) for c in self._consumers), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return next((r for r in results if isinstance(r, PartialSuccess)), None)


class QueryApiExtension:
    """The `query_api` extension: labtel's query API served beside the receivers."""

    def __init__(
        self,
        name: str,
        config: QueryApiConfig,
        storage: Storage,
        ingest: Consumer | None = None,
        alerts: Sequence[AlertsExporter] = (),
        authenticator: Authenticator | None = None,
    ) -> None:
        from labtel.query_api.app import create_app  # the API is optional for a bare collector

        self.name = name
        self.config = config
        self.authenticator = authenticator
        self._storage = storage
        self._host = config.host
        self._app = create_app(storage, config, ingest, alerts=alerts, authenticator=authenticator)
        self._server = HttpServer(self._app, config.host, config.port, config.tls)

    async def start(self) -> None:
        """Listen; first open an embedded store, which no other process may hold (a ClickHouse
        server that is away may come back: /ready says so meanwhile)."""
        if self._storage.target.embedded:
            await asyncio.to_thread(self._storage.command, "SELECT 1")  # raises StorageUnavailable
        self._app.state.closing.clear()
        await self._server.start()

    async def shutdown(self) -> None:
        """Stop listening; live tails (`GET /events/stream`) end first, so their clients reconnect
        to the next server instead of holding the shutdown up until it cancels them."""
        self._app.state.closing.set()
        await self._server.stop()

    @property
    def address(self) -> str:
        return f"{self._host}:{self._server.port}"


@dataclass(frozen=True)
class Listener:
    """Something the service listens on, for the start-up banner and tests."""

    kind: str
    address: str
    tls: bool = False
    authenticator: str | None = None

    def describe(self) -> str:
        """`address (TLS, auth: name)` for the start-up banner."""
        notes = (["TLS"] if self.tls else []) + [f"auth: {self.authenticator}" if self.authenticator else "no auth"]
        return f"{self.address} ({', '.join(notes)})"


class Service:
    """Builds, starts and stops the components of one collector configuration."""

    def __init__(self, config: CollectorConfig, *, extensions: bool = True, base_dir: Path | None = None) -> None:
        self.config = config
        self.storages: dict[str, Storage] = {}
        self.exporters: dict[str, ClickHouseExporter] = {}
        self.alert_exporters: dict[str, AlertsExporter] = {}
        self.processors: list[Lifecycle] = []
        self.receivers: list[OTLPGrpcReceiver | OTLPHttpReceiver] = []
        self.extensions: list[QueryApiExtension] = []
        self.self_metrics: SelfMetrics | None = None
        self.logs_entries: dict[str, tuple[list[str], Consumer]] = {}
        """Each logs pipeline's entry and exporters: the compatibility routes write through one."""
        self._started: list[Lifecycle] = []
        self._authenticators: dict[str, Authenticator] = {}
        level = config.service.telemetry.logs.level
        if level is not None:  # service.telemetry.logs.level, as `--log-level` sets it
            logging.getLogger().setLevel(level.upper().replace("WARN", "WARNING"))
        self._build(extensions, base_dir)

    def _authenticator(self, settings: AuthSettings | None) -> Authenticator | None:
        """The one checker (and cache) of the authenticator a listener names; None: open."""
        if settings is None:
            return None
        name = settings.authenticator
        if name not in self._authenticators:
            found = self.config.authenticator(settings)
            assert found is not None
            self._authenticators[name] = found
        return self._authenticators[name]

    # --- building ------------------------------------------------------------------------

    def _storage(self, exporter_id: str, config: ClickHouseExporterConfig, base_dir: Path | None) -> Storage:
        if exporter_id not in self.storages:
            storage = Storage.from_config(config, base_dir)
            paths = {s.target.path for s in self.storages.values() if s.target.embedded}
            if storage.target.embedded and paths and storage.target.path not in paths:
                raise ConfigError(
                    f"exporters.{exporter_id}.endpoint: one process can hold one embedded (chDB) store; "
                    f"{storage.target.path} differs from {paths.pop()}"
                )
            self.storages[exporter_id] = storage
        return self.storages[exporter_id]

    def _build(self, with_extensions: bool, base_dir: Path | None) -> None:
        cfg = self.config
        entries: dict[tuple[str, str], list[Consumer]] = {}
        for pipeline_id, pipeline in cfg.service.pipelines.items():
            signal = SIGNALS[component_type(pipeline_id)]
            exporters: list[BatchConsumer] = []
            observers: list[BatchConsumer] = []
            for exporter_id in pipeline.exporters:
                alerts_cfg = cfg.exporters[exporter_id]
                if isinstance(alerts_cfg, AlertsExporterConfig):
                    if exporter_id not in self.alert_exporters:
                        source = self._storage(alerts_cfg.storage, cfg.storage_exporter(alerts_cfg.storage), base_dir)
                        self.alert_exporters[exporter_id] = AlertsExporter(exporter_id, alerts_cfg, source)
                    observers.append(self.alert_exporters[exporter_id])
                    continue
                if exporter_id not in self.exporters:
                    exporter_cfg = cfg.storage_exporter(exporter_id)
                    storage = self._storage(exporter_id, exporter_cfg, base_dir)
                    wal = self._wal(exporter_id, exporter_cfg, storage)
                    self.exporters[exporter_id] = ClickHouseExporter(exporter_id, exporter_cfg, storage, wal)
                exporters.append(self.exporters[exporter_id])
            stored = [e for e in pipeline.exporters if e in self.exporters]
            entry = self._entry(pipeline_id, pipeline.processors, stored, FanOut(exporters, observers))
            if signal.name == "logs":
                self.logs_entries[pipeline_id] = (stored, entry)
            for receiver_id in pipeline.receivers:
                entries.setdefault((receiver_id, signal.name), []).append(entry)
        for receiver_id, receiver_cfg in cfg.receivers.items():
            consumers: dict[str, tuple[Signal, Consumer]] = {
                name: (SIGNALS[name], ConsumerFanOut(found))
                for (rid, name), found in entries.items()
                if rid == receiver_id
            }
            if not consumers:
                continue  # defined but in no pipeline, as the Collector does
            grpc_cfg, http_cfg = receiver_cfg.protocols.grpc, receiver_cfg.protocols.http
            if grpc_cfg is not None:
                auth = self._authenticator(grpc_cfg.auth)
                self.receivers.append(OTLPGrpcReceiver(receiver_id, grpc_cfg, consumers, auth))
            if http_cfg is not None:
                auth = self._authenticator(http_cfg.auth)
                self.receivers.append(OTLPHttpReceiver(receiver_id, http_cfg, consumers, auth))
        if self.exporters:  # the collector's own metrics go to the storage of its first pipeline
            first = next(iter(self.exporters.values()))
            self.self_metrics = SelfMetrics.from_settings(first.storage, cfg.service.telemetry.metrics)
        if with_extensions:
            apis = cfg.query_apis()
            for extension_id in cfg.service.extensions:
                if extension_id not in apis:
                    continue
                ext = apis[extension_id]
                if ext.storage not in cfg.exporters:
                    raise ConfigError(f"extensions.{extension_id}.storage: no exporter named {ext.storage!r}")
                storage = self._storage(ext.storage, cfg.storage_exporter(ext.storage), base_dir)
                ingest = next((e for exps, e in self.logs_entries.values() if ext.storage in exps), None)
                alerts = [a for a in self.alert_exporters.values() if a.config.storage == ext.storage]
                auth = self._authenticator(ext.auth)
                extension = QueryApiExtension(extension_id, ext, storage, ingest, alerts, auth)
                self.extensions.append(extension)
                for exporter in alerts:
                    exporter.set_api_url(_api_url(ext, extension))

    def _wal(self, exporter_id: str, config: ClickHouseExporterConfig, storage: Storage) -> WriteAheadLog | None:
        queue = config.sending_queue
        if queue.storage is None:
            return None
        extension = self.config.file_storage(queue.storage)
        if extension.directory:
            root = Path(extension.directory).expanduser()
        elif storage.target.embedded and storage.target.path:
            root = Path(storage.target.path) / "wal"
        else:
            root = Path("labtel-wal")
        return WriteAheadLog(root / exporter_id.replace("/", "_"), queue.wal_max_bytes, fsync=extension.fsync)

    def _entry(self, pipeline_id: str, processors: list[str], exporter_ids: list[str], sink: FanOut) -> Consumer:
        batch_ids = [p for p in processors if component_type(p) == "batch"]
        if len(batch_ids) > 1:
            raise ConfigError(f"service.pipelines.{pipeline_id}.processors: use at most one 'batch' processor")
        if not batch_ids:
            entry: Consumer = Passthrough(sink)
        else:
            batch_cfg: BatchProcessorConfig = self.config.processors[batch_ids[0]]
            queues = [self.config.storage_exporter(e).sending_queue for e in exporter_ids]
            entry = GroupCommit(
                batch_cfg,
                sink,
                name=pipeline_id,
                max_in_flight=min(q.num_consumers for q in queues),
                queue_size=min(q.queue_size for q in queues),
            )
        self.processors.append(entry)  # type: ignore[arg-type]
        return entry

    # --- running -------------------------------------------------------------------------

    async def interrupt_start(self) -> None:
        """Make a `start` under way stop soon (raising StartInterrupted): the process was asked to
        stop while the exporters migrate the schema, which can take minutes on a big store."""
        for exporter in self.exporters.values():
            await exporter.interrupt_start()

    async def start(self) -> None:
        """Start every component; on failure, stop what was started and re-raise."""
        try:
            components: list[Lifecycle] = [*self.exporters.values(), *self.alert_exporters.values(), *self.extensions]
            background = [self.self_metrics] if self.self_metrics is not None else []
            for component in [*components, *self.processors, *self.receivers, *background]:
                await component.start()
                self._started.append(component)
        except BaseException:
            await self.shutdown()
            raise
        for warning in self.open_listener_warnings():
            log.warning(warning)

    def open_listener_warnings(self) -> list[str]:
        """A warning for each listener reachable from other machines without an authenticator."""
        found = []
        listeners = [(r.name, r.config.host, r.config.endpoint, r.authenticator) for r in self.receivers]
        listeners += [(e.name, e.config.host, e.config.endpoint, e.authenticator) for e in self.extensions]
        for name, host, endpoint, authenticator in listeners:
            if authenticator is None and not is_loopback(host):
                found.append(
                    f"SECURITY: {name} listens on {endpoint}, a non-loopback address, WITHOUT AUTHENTICATION: "
                    "anyone who can reach it can send or read data. Configure a labtel_auth extension and "
                    '`auth: {authenticator: labtel_auth}` on the listener (README "Security"), or listen on localhost.'
                )
        return found

    async def shutdown(self) -> None:
        """Stop accepting, store what was accepted, release storage."""
        for component in reversed(self._started):
            try:
                await component.shutdown()
            except Exception:
                log.exception("stopping %s failed", type(component).__name__)
        self._started.clear()
        for storage in self.storages.values():
            storage.close()

    def listeners(self) -> list[Listener]:
        found = []
        for receiver in self.receivers:
            kind = "OTLP/gRPC" if isinstance(receiver, OTLPGrpcReceiver) else "OTLP/HTTP"
            auth = receiver.authenticator.name if receiver.authenticator else None
            found.append(Listener(kind, receiver.address, receiver.config.tls is not None, auth))
        for e in self.extensions:
            auth = e.authenticator.name if e.authenticator else None
            found.append(Listener("query API", e.address, e.config.tls is not None, auth))
        return found

    def storage_description(self) -> str:
        return "; ".join(sorted({s.target.describe() for s in self.storages.values()}))


def _api_url(config: QueryApiConfig, extension: QueryApiExtension) -> Callable[[], str]:
    """The query API's address for links: its `public_url`, else where it listens."""
    scheme = "https" if config.tls is not None else "http"
    return lambda: config.public_url.rstrip("/") or f"{scheme}://{extension.address}"


def embedded_endpoint(data_dir: Path, configured: str = "") -> str:
    """The exporter endpoint of an embedded store in `data_dir` (`--data-dir`), with the engine
    options (`?max_server_memory_usage=...`) of the `configured` endpoint when it is embedded too."""
    options = configured.partition("?")[2] if configured.startswith("chdb:") else ""
    return f"chdb://{data_dir.expanduser().resolve()}" + (f"?{options}" if options else "")
