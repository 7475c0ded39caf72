"""The collector's configuration: `otel-config.yaml` in the OpenTelemetry Collector's own format.

Components are declared under `receivers`, `processors`, `exporters` and `extensions` as
`type[/name]`, and wired by `service.pipelines`. Values may reference the environment with
`${env:VAR}` or `${env:VAR:-default}` (the text as is, never re-parsed as YAML). Anything unknown
or invalid is rejected at start-up with a message that names the offending key.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from labtel.collector.alerts.config import AlertsExporterConfig
from labtel.collector.auth import ApiKey, Authenticator, HashFormatError, Scope, check_hash
from labtel.collector.durations import Duration
from labtel.collector.otlp.limits import RecordLimits
from labtel.collector.storage.topology import Topology, check_engine_name
from labtel.sdk.textform import digits


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key and the problem."""


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, values are immutable after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_endpoint(value: str) -> tuple[str, int]:
    """Split "host:port" (or "[v6]:port", or ":port") into host and port."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"endpoint {value!r} must be host:port, for example 'localhost:4317'")
    if not digits(port_text):
        raise ValueError(f"endpoint {value!r} has a bad port {port_text!r}: expected a number 0-65535")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"endpoint {value!r} has a bad port {port}: expected a number 0-65535")
    return host or "0.0.0.0", port


class _EndpointModel(StrictModel):
    endpoint: str

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        parse_endpoint(value)
        return value

    @property
    def host(self) -> str:
        return parse_endpoint(self.endpoint)[0]

    @property
    def port(self) -> int:
        return parse_endpoint(self.endpoint)[1]


class AuthSettings(StrictModel):
    """`auth:` of a listener, as the Collector's configauth: the authenticator extension's id."""

    authenticator: str


class TLSServerSetting(StrictModel):
    """`tls:` of a listener, with the Collector's configtls names: the server's certificate
    chain and key (PEM), and optionally the CA that client certificates must be signed by
    (then clients must present one: mutual TLS)."""

    cert_file: str
    key_file: str
    client_ca_file: str = ""

    @model_validator(mode="after")
    def _loadable(self) -> TLSServerSetting:
        for key in ("cert_file", "key_file", "client_ca_file"):
            value = getattr(self, key)
            if value and not Path(value).expanduser().is_file():
                raise ValueError(f"{key}: {value!r} is not a readable file")
        cert, key_file, ca = self.paths()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(cert, key_file)
        except (ssl.SSLError, OSError) as error:
            raise ValueError(
                f"cannot use cert_file {self.cert_file!r} with key_file {self.key_file!r}: {error} "
                "(expected a PEM certificate chain and its PEM private key)"
            ) from None
        if ca:
            try:
                context.load_verify_locations(cafile=ca)
            except (ssl.SSLError, OSError) as error:
                raise ValueError(
                    f"client_ca_file {self.client_ca_file!r} is not a PEM CA certificate: {error}"
                ) from None
        return self

    def paths(self) -> tuple[str, str, str]:
        """The certificate, key and client CA file paths, `~` expanded ("" for no client CA)."""
        cert, key, ca = (
            str(Path(p).expanduser()) if p else "" for p in (self.cert_file, self.key_file, self.client_ca_file)
        )
        return cert, key, ca

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """The certificate chain, the key and the client CA (None without one), as PEM bytes."""
        cert, key, ca = self.paths()
        return Path(cert).read_bytes(), Path(key).read_bytes(), Path(ca).read_bytes() if ca else None


class GrpcServerConfig(_EndpointModel):
    """OTLP/gRPC listener."""

    endpoint: str = "localhost:4317"
    max_recv_msg_size_mib: float = Field(4.0, gt=0)
    auth: AuthSettings | None = None
    tls: TLSServerSetting | None = None


class HttpServerConfig(_EndpointModel):
    """OTLP/HTTP listener; the body limit is counted after decompression."""

    endpoint: str = "localhost:4318"
    max_request_body_size: int = Field(20 * 1024 * 1024, gt=0)
    auth: AuthSettings | None = None
    tls: TLSServerSetting | None = None


def _empty_as_defaults(data: Any) -> Any:
    """A section's keys given with no value (`grpc:`) as empty mappings: their defaults."""
    if isinstance(data, dict):
        return {key: ({} if value is None else value) for key, value in data.items()}
    return data


class OTLPProtocols(StrictModel):
    grpc: GrpcServerConfig | None = None
    http: HttpServerConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_means_defaults(cls, data: Any) -> Any:
        # `grpc:` with no value enables the protocol with its defaults, as in the Collector.
        return _empty_as_defaults(data)

    @model_validator(mode="after")
    def _at_least_one(self) -> OTLPProtocols:
        if self.grpc is None and self.http is None:
            raise ValueError("enable at least one of 'grpc' or 'http'")
        return self


class OTLPReceiverConfig(StrictModel):
    """The `otlp` receiver: OTLP over gRPC and/or HTTP."""

    protocols: OTLPProtocols


class BatchProcessorConfig(StrictModel):
    """The `batch` processor: group commit. Concurrent requests are gathered into one insert,
    flushed when `send_batch_size` records or `send_batch_max_bytes` are pending, or when the
    oldest pending request is `timeout` old."""

    timeout: Duration = timedelta(milliseconds=200)
    send_batch_size: int = Field(8192, ge=1)
    send_batch_max_size: int = Field(0, ge=0)
    send_batch_max_bytes: int = Field(32 * 1024 * 1024, ge=1024)


class SendingQueueConfig(StrictModel):
    """How many inserts run at once, how much may wait before callers are pushed back, and the
    write-ahead log (`storage`: a `file_storage` extension) that keeps acknowledged data safe."""

    enabled: bool = True
    """The contrib exporter's switch; labtel's queue is always on (true only)."""
    num_consumers: int = Field(2, ge=1, le=64)
    queue_size: int = Field(65_536, ge=1)
    """Records waiting for or inside an insert before new calls are pushed back: bounds memory
    and latency under overload (about a second of ingest on a 2-core machine)."""
    storage: str | None = None
    wal_max_bytes: int = Field(1 << 30, ge=1 << 20)
    wal_ack_after: Duration = timedelta(seconds=2)

    @field_validator("enabled")
    @classmethod
    def _always_on(cls, value: bool) -> bool:
        if not value:
            raise ValueError(
                "labtel's queue cannot be turned off: the batch processor groups requests and queue_size bounds "
                "what waits; leave out `storage` to run without the write-ahead log"
            )
        return value


class RetryConfig(StrictModel):
    """Back-off for re-delivering stored-but-not-inserted data to ClickHouse. The contrib
    exporter's `enabled` and `max_elapsed_time` are accepted with labtel's behaviour only (true,
    and 0: a logged batch is retried until storage takes it, never dropped)."""

    enabled: bool = True
    initial_interval: Duration = timedelta(seconds=1)
    max_interval: Duration = timedelta(seconds=30)
    max_elapsed_time: Duration = timedelta(0)

    @field_validator("enabled")
    @classmethod
    def _always_on(cls, value: bool) -> bool:
        if not value:
            raise ValueError(
                "labtel's retries cannot be turned off: a batch acknowledged from the write-ahead log is stored "
                "once storage takes it; leave out sending_queue.storage to run without the log (callers then retry)"
            )
        return value

    @field_validator("max_elapsed_time")
    @classmethod
    def _never_give_up(cls, value: timedelta) -> timedelta:
        if value:
            raise ValueError(
                "labtel never drops an acknowledged batch, so it never stops retrying: leave out max_elapsed_time "
                "or set it to 0"
            )
        return value


_IDENTIFIER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def _check_identifier(value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError(f"{value!r} is not a usable ClickHouse name (letters, digits, '_', '-', '.')")
    return value


class MetricsTableConfig(StrictModel):
    """One metrics table of the `clickhouse` exporter (`metrics_tables.<type>`)."""

    name: str

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _check_identifier(value)


class MetricsTablesConfig(StrictModel):
    """The table of each metric type, as the contrib exporter's `metrics_tables` names them."""

    gauge: MetricsTableConfig = MetricsTableConfig(name="otel_metrics_gauge")
    sum: MetricsTableConfig = MetricsTableConfig(name="otel_metrics_sum")
    summary: MetricsTableConfig = MetricsTableConfig(name="otel_metrics_summary")
    histogram: MetricsTableConfig = MetricsTableConfig(name="otel_metrics_histogram")
    exponential_histogram: MetricsTableConfig = MetricsTableConfig(name="otel_metrics_exponential_histogram")

    def by_type(self) -> dict[str, str]:
        """The table name of each metric type."""
        tables = (self.gauge, self.sum, self.summary, self.histogram, self.exponential_histogram)
        kinds = ("gauge", "sum", "summary", "histogram", "exponential_histogram")
        return {kind: table.name for kind, table in zip(kinds, tables, strict=True)}

    @model_validator(mode="after")
    def _distinct(self) -> MetricsTablesConfig:
        if len(set(self.by_type().values())) != 5:
            raise ValueError("every metric type needs a table of its own")
        return self


class TableEngineConfig(StrictModel):
    """`table_engine`: the MergeTree-family engine of the tables (contrib exporter names), for
    example `{name: ReplicatedMergeTree, params: "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"}`."""

    name: str = "MergeTree"
    params: str = ""

    @field_validator("name")
    @classmethod
    def _check_engine(cls, value: str) -> str:
        return check_engine_name(value)

    @field_validator("params")
    @classmethod
    def _check_params(cls, value: str) -> str:
        if ";" in value or "\n" in value:
            raise ValueError(f"table_engine.params {value!r} must be the engine's arguments on one line, without ';'")
        return value.strip()


class RecordLimitsConfig(StrictModel):
    """What one log record may hold to be stored (labtel.collector.otlp.limits). A record over a
    limit is rejected (the rest of its request is stored: an OTLP partial success), never truncated."""

    max_attributes_per_record: int = Field(128, ge=1, le=100_000)
    max_attribute_value_length: int = Field(64 * 1024, ge=1)
    max_body_length: int = Field(1024 * 1024, ge=1)
    max_nesting_depth: int = Field(8, ge=1, le=100)

    def record_limits(self) -> RecordLimits:
        return RecordLimits(**self.model_dump())


class ClickHouseExporterConfig(StrictModel):
    """The `clickhouse` exporter. Option names follow the contrib ClickHouse exporter."""

    endpoint: str = "chdb://./labtel-data"
    endpoints: list[str] = []
    """More ClickHouse servers, tried in order after `endpoint` when it cannot be reached (failover)."""
    secure: bool | None = None
    """HTTPS to the server (None: as the endpoint's scheme says)."""
    verify: bool = True
    """Check the server's TLS certificate."""
    ca_cert: str | None = None
    """A CA certificate file for the server's TLS certificate."""
    connect_timeout: Duration = timedelta(seconds=10)
    cluster_name: str = ""
    """A ClickHouse cluster (remote_servers): every DDL statement runs ON CLUSTER."""
    table_engine: TableEngineConfig = TableEngineConfig()
    distributed: bool = False
    """Each signal's table as a Distributed table over `<name>_local` on every shard (needs cluster_name)."""
    sharding_key: Literal["rand", "TraceId", "ServiceName"] = "rand"
    username: str = "default"
    password: SecretStr = SecretStr("")
    database: str = "otel"
    ttl: Duration = timedelta(0)
    logs_ttl: Duration | None = None
    traces_ttl: Duration | None = None
    metrics_ttl: Duration | None = None
    create_schema: bool = True
    logs_table_name: str = "otel_logs"
    traces_table_name: str = "otel_traces"
    metrics_tables: MetricsTablesConfig = MetricsTablesConfig()
    timeout: Duration = timedelta(seconds=5)
    compress: Literal["lz4", "zstd", "gzip", "none", ""] = "lz4"
    async_insert: bool = True
    """The contrib exporter's option, accepted and unused: the batch processor groups inserts,
    and an Export call is answered once its insert is stored."""
    sending_queue: SendingQueueConfig = SendingQueueConfig()
    retry_on_failure: RetryConfig = RetryConfig()
    limits: RecordLimitsConfig = RecordLimitsConfig()

    @field_validator("database", "logs_table_name", "traces_table_name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _check_identifier(value)

    @field_validator("endpoint")
    @classmethod
    def _check_storage_endpoint(cls, value: str) -> str:
        if not value.startswith(("chdb:", "http://", "https://", "clickhouse://", "clickhouses://")):
            raise ValueError(
                f"endpoint {value!r} must be chdb://<path> (embedded) or http(s)://host:8123 (a ClickHouse server)"
            )
        return value

    @field_validator("endpoints")
    @classmethod
    def _check_failover_endpoints(cls, value: list[str]) -> list[str]:
        for endpoint in value:
            cls._check_storage_endpoint(endpoint)
        return value

    def failover_order(self) -> list[str]:
        """The servers in the order they are tried: `endpoint`, then each of `endpoints` not yet
        listed. `endpoints` may name `endpoint` too, so every collector of a cluster can share one
        list of all nodes and differ only in the node it prefers."""
        order: dict[str, str] = {}
        for endpoint in (self.endpoint, *self.endpoints):
            order.setdefault(endpoint.rstrip("/").lower(), endpoint)
        return list(order.values())

    @field_validator("cluster_name")
    @classmethod
    def _check_cluster(cls, value: str) -> str:
        if value and not _IDENTIFIER.match(value):
            raise ValueError(f"cluster_name {value!r} is not a usable ClickHouse cluster name")
        return value

    @model_validator(mode="after")
    def _check_topology(self) -> ClickHouseExporterConfig:
        if self.distributed and not self.cluster_name:
            raise ValueError("distributed: true needs cluster_name (the Distributed tables span that cluster)")
        if self.table_engine.name.startswith("Replicated") and self.endpoint.startswith("chdb:"):
            raise ValueError(
                f"table_engine {self.table_engine.name} needs a ClickHouse server with Keeper, not the embedded store"
            )
        if self.table_engine.name.startswith("Replicated") and not (self.cluster_name or self.table_engine.params):
            raise ValueError(
                "table_engine.params is needed for a Replicated engine without cluster_name "
                "(ClickHouse's default replica path works only ON CLUSTER)"
            )
        if self.cluster_name and self.endpoint.startswith("chdb:"):
            raise ValueError("cluster_name needs a ClickHouse server (http://host:8123), not the embedded store")
        return self

    def topology(self) -> Topology:
        """How the tables are laid out: cluster, engine, Distributed tables."""
        return Topology(
            self.cluster_name, self.table_engine.name, self.table_engine.params, self.distributed, self.sharding_key
        )

    def signal_ttl(self, signal: str) -> timedelta:
        """The retention of one signal: its own `<signal>_ttl`, else the shared `ttl`."""
        own = {"logs": self.logs_ttl, "traces": self.traces_ttl, "metrics": self.metrics_ttl}.get(signal)
        return own if own is not None else self.ttl


class SqlSandboxConfig(StrictModel):
    """Limits of `POST /sql`: every query runs read-only within these."""

    timeout: Duration = timedelta(seconds=30)
    max_rows_to_read: int = Field(2_000_000_000, ge=1)
    max_result_rows: int = Field(1_000_000, ge=1)
    max_result_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    max_memory_usage: int = Field(2 * 1024 * 1024 * 1024, ge=1024 * 1024)
    max_concurrent_queries: int = Field(4, ge=1)
    """Queries running at once; one more is refused (429) rather than the memory of all of them
    (each up to `max_memory_usage`) exhausting the server's."""


class ExportConfig(StrictModel):
    """`GET /export`: rows are read from storage in time windows of at most `chunk_rows` each,
    so an export of any size streams in bounded memory."""

    chunk_rows: int = Field(50_000, ge=1, le=10_000_000)
    max_rows: int = Field(10_000_000, ge=0)
    """An export selecting more events (without a `limit` below this) is refused with 413; 0: no limit."""
    max_concurrent: int = Field(4, ge=1)
    """Exports streaming at once; one more is a 429 with Retry-After. Each holds up to three
    windows in memory and keeps a core busy, so their memory together stays bounded."""


class MadsciCompatConfig(StrictModel):
    """The MADSci Event Manager routes (`/madsci/`).

    `timezone`: the zone of naive `event_timestamp`s (MADSci's client stamps its local time
    without a zone); empty means the API server's local zone. `backup_dir`: where `POST
    /madsci/backup` writes; empty means `<embedded store>/backups`, or `labtel-backups` under a
    ClickHouse server's `user_files_path`."""

    timezone: str = ""
    backup_dir: str = ""

    @field_validator("timezone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        return _check_timezone(value)


class PanoptesCompatConfig(StrictModel):
    """The PANOPTES telemetry routes (`/panoptes/`).

    `timezone`: the site's zone, for the local-noon day keys of site exports (empty: the API
    server's local zone, as PANOPTES uses the machine's); `site_dir`: the directory name run
    directories are reported under (nothing is written there: events live in ClickHouse)."""

    timezone: str = ""
    site_dir: str = "telemetry"

    @field_validator("timezone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        return _check_timezone(value)


class MasterLogCompatConfig(StrictModel):
    """The Master Log routes (`/api/v1/logs`).

    `max_batch_events`: the most events one `POST /api/v1/logs/batch` may hold (413 beyond,
    saying to send smaller batches); 0: only `max_request_body_size` bounds a batch. A batch is
    converted a few thousand events at a time but stored in one write (all or nothing), so this
    bounds the memory a batch takes, most of it while it is stored (50,000 of master-log-client's
    events: about 400 MB at the peak; 10,000: about 60 MB), also when its events are tiny (a
    `{}` each), and keeps a batch within the logs pipeline's `queue_size` (65,536 by default).
    master-log-client's own events (about 450 bytes each) reach `max_request_body_size` first,
    at about 45,000."""

    max_batch_events: int = Field(50_000, ge=0)


def _check_timezone(value: str) -> str:
    if value:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone, e.g. UTC or Europe/Madrid") from None
    return value


class CompatConfig(StrictModel):
    """Drop-in routes for existing lab clients: MADSci, Master Log, PANOPTES (README "Coming from ...").

    `api_keys`: bearer keys Master Log clients must send (`$LABTEL_API_KEYS`, comma-separated,
    adds more); with none, any key is accepted and start-up says so."""

    api_keys: list[SecretStr] = []
    madsci: MadsciCompatConfig = MadsciCompatConfig()
    master_log: MasterLogCompatConfig = MasterLogCompatConfig()
    panoptes: PanoptesCompatConfig = PanoptesCompatConfig()


class QueryApiConfig(_EndpointModel):
    """The `query_api` extension: labtel's HTTP query API, reading the exporter's storage."""

    endpoint: str = "localhost:8000"
    storage: str = "clickhouse"
    public_url: str = ""
    max_request_body_size: int = Field(20 * 1024 * 1024, ge=1024)
    """Request bodies (selectors, SQL, compatibility posts) over this many bytes are refused (413)."""
    sql: SqlSandboxConfig = SqlSandboxConfig()
    export: ExportConfig = ExportConfig()
    compat: CompatConfig = CompatConfig()
    auth: AuthSettings | None = None
    tls: TLSServerSetting | None = None


class ApiKeyConfig(StrictModel):
    """One key of the `labtel_auth` extension: a name, the token's hash (never the token) and
    its scopes. `labtel keys create` makes one."""

    name: str = Field(min_length=1)
    hash: str
    scopes: list[Scope] = Field(min_length=1)

    @field_validator("hash")
    @classmethod
    def _check_hash(cls, value: str) -> str:
        try:
            return check_hash(value.strip())
        except HashFormatError as error:
            raise ValueError(str(error)) from None


class AuthExtensionConfig(StrictModel):
    """The `labtel_auth` extension: bearer-token API keys with scopes (ingest, read, sql, admin),
    referenced by listeners as `auth: {authenticator: labtel_auth}`."""

    keys: list[ApiKeyConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> AuthExtensionConfig:
        names = [key.name for key in self.keys]
        hashes = [key.hash for key in self.keys]
        if len(set(names)) != len(names):
            raise ValueError("every key needs a name of its own")
        if len(set(hashes)) != len(hashes):
            raise ValueError("two keys have the same hash")
        return self

    def authenticator(self, name: str) -> Authenticator:
        """The runtime checker of these keys."""
        return Authenticator(name, [ApiKey(k.name, k.hash, frozenset(k.scopes)) for k in self.keys])


class FileStorageConfig(StrictModel):
    """The `file_storage` extension: where exporters keep their write-ahead logs.

    An empty directory means `<embedded store>/wal` (or `./labtel-wal` with a ClickHouse server);
    each exporter writes to its own subdirectory."""

    directory: str = ""
    fsync: bool = True


class PipelineConfig(StrictModel):
    receivers: list[str] = Field(min_length=1)
    processors: list[str] = []
    exporters: list[str] = Field(min_length=1)


class TelemetryLogsConfig(StrictModel):
    """`service.telemetry.logs`: the collector's own log level (None: as `--log-level` says)."""

    level: Literal["debug", "info", "warn", "error"] | None = None

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class TelemetryMetricsConfig(StrictModel):
    """`service.telemetry.metrics`: the collector's own metrics, stored every `interval` beside
    the lab's (the Collector's levels; `none` stores none)."""

    level: Literal["none", "basic", "normal", "detailed"] = "basic"
    interval: Duration = timedelta(seconds=15)

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("interval")
    @classmethod
    def _at_least_a_second(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("the interval must be at least 1s")
        return value


class ServiceTelemetryConfig(StrictModel):
    """`service.telemetry`: the collector's own logs and metrics."""

    logs: TelemetryLogsConfig = TelemetryLogsConfig()
    metrics: TelemetryMetricsConfig = TelemetryMetricsConfig()

    @model_validator(mode="before")
    @classmethod
    def _empty_means_defaults(cls, data: Any) -> Any:
        return _empty_as_defaults(data)


class ServiceConfig(StrictModel):
    extensions: list[str] = []
    pipelines: dict[str, PipelineConfig]
    telemetry: ServiceTelemetryConfig = ServiceTelemetryConfig()


COMPONENT_TYPES: dict[str, dict[str, type[BaseModel]]] = {
    "receivers": {"otlp": OTLPReceiverConfig},
    "processors": {"batch": BatchProcessorConfig},
    "exporters": {"clickhouse": ClickHouseExporterConfig, "alerts": AlertsExporterConfig},
    "extensions": {"query_api": QueryApiConfig, "file_storage": FileStorageConfig, "labtel_auth": AuthExtensionConfig},
}
SIGNALS = ("logs", "traces", "metrics")


class CollectorConfig(StrictModel):
    """A validated `otel-config.yaml`."""

    receivers: dict[str, OTLPReceiverConfig]
    processors: dict[str, BatchProcessorConfig] = {}
    exporters: dict[str, ClickHouseExporterConfig | AlertsExporterConfig]
    extensions: dict[str, QueryApiConfig | FileStorageConfig | AuthExtensionConfig] = {}
    service: ServiceConfig

    def authenticator(self, settings: AuthSettings | None) -> Authenticator | None:
        """The checker a listener's `auth:` names (None: the listener is open)."""
        if settings is None:
            return None
        found = self.extensions[settings.authenticator]
        assert isinstance(found, AuthExtensionConfig)
        return found.authenticator(settings.authenticator)

    def query_apis(self) -> dict[str, QueryApiConfig]:
        return {k: v for k, v in self.extensions.items() if isinstance(v, QueryApiConfig)}

    def file_storage(self, name: str) -> FileStorageConfig:
        found = self.extensions.get(name)
        if not isinstance(found, FileStorageConfig):
            raise ConfigError(f"no file_storage extension named {name!r}")
        return found

    def pipelines(self) -> dict[str, PipelineConfig]:
        return dict(self.service.pipelines)

    def storage_exporter(self, name: str | None = None) -> ClickHouseExporterConfig:
        """The ClickHouse exporter that a query API (or `labtel migrate`) reads and writes."""
        if name is not None:
            found = self.exporters[name]
            if not isinstance(found, ClickHouseExporterConfig):
                raise ConfigError(f"exporters.{name}: not a 'clickhouse' exporter")
            return found
        used = [e for p in self.service.pipelines.values() for e in p.exporters]
        for exporter_id in used + list(self.exporters):
            exporter = self.exporters[exporter_id]
            if isinstance(exporter, ClickHouseExporterConfig):
                return exporter
        raise ConfigError("exporters: no 'clickhouse' exporter is configured")

    def alerts_exporters(self) -> dict[str, AlertsExporterConfig]:
        """The `alerts` exporters, by id."""
        return {k: v for k, v in self.exporters.items() if isinstance(v, AlertsExporterConfig)}


def component_type(component_id: str) -> str:
    """The type part of a `type/name` component id."""
    return component_id.split("/", 1)[0]


# --- environment substitution -------------------------------------------------------------

_ENV_REF = re.compile(
    r"\$\$"
    r"|\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}"
    r"|\$\{([A-Za-z][A-Za-z0-9+.\-]*):(?!-)[^}]*\}"
)


def expand_env(value: Any, environ: Mapping[str, str] | None = None, where: str = "") -> Any:
    """Replace `${env:VAR}` / `${env:VAR:-default}` in every string of a loaded YAML tree.

    Substitution happens after YAML parsing, so the variable's text is used exactly as it is
    (never parsed as YAML again): a string field such as a password gets it unchanged, and a
    number or boolean field has it converted by its own validation (`port: ${env:PORT}`).
    `$$` is a `$`. An unset variable without a default, or another provider than `env`
    (`${file:...}`), is a ConfigError naming the key (`where`) and the reference.
    """
    env = os.environ if environ is None else environ
    if isinstance(value, dict):
        return {key: expand_env(item, env, _join(where, key)) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item, env, _join(where, index)) for index, item in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default, provider = match.group(1), match.group(2), match.group(3)
        prefix = f"{where}: " if where else ""
        if provider is not None:
            raise ConfigError(
                f"{prefix}{match.group(0)!r} uses the provider {provider!r}; labtel substitutes only "
                "${env:VAR} and ${env:VAR:-default}"
            )
        found = env.get(name)
        if found is None and default is None:
            raise ConfigError(
                f"{prefix}the environment variable {name} is not set; set it or give a default: ${{env:{name}:-...}}"
            )
        if found is None or (found == "" and default is not None):
            return default or ""
        return found

    return _ENV_REF.sub(replace, value)


def _join(where: str, key: object) -> str:
    """The dotted config path of `key` inside `where`, as error messages name it."""
    return f"{where}.{key}" if where else str(key)


# --- loading --------------------------------------------------------------------------------


def _describe(error: ValidationError, prefix: str) -> str:
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in (prefix, *item["loc"]) if part != "")
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        lines.append(f"{location}: {message}")
    return "; ".join(lines)


def _section(raw: dict[str, Any], kind: str) -> dict[str, BaseModel]:
    entries = raw.get(kind) or {}
    if not isinstance(entries, dict):
        raise ConfigError(f"{kind}: expected a mapping of components")
    known = COMPONENT_TYPES[kind]
    parsed: dict[str, BaseModel] = {}
    for component_id, body in entries.items():
        kind_name = kind[:-1]
        ctype = component_type(str(component_id))
        if ctype not in known:
            raise ConfigError(
                f"{kind}.{component_id}: unknown {kind_name} type {ctype!r}; labtel knows: {', '.join(known)}"
            )
        try:
            parsed[str(component_id)] = known[ctype].model_validate(body or {})
        except ValidationError as error:
            raise ConfigError(_describe(error, f"{kind}.{component_id}")) from None
    return parsed


def parse_config(raw: Any) -> CollectorConfig:
    """Validate an already loaded (and env-expanded) configuration tree."""
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a YAML mapping with receivers, exporters and service")
    unknown = set(raw) - {*COMPONENT_TYPES, "service", "connectors"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown top-level section")
    if raw.get("connectors"):
        raise ConfigError("connectors: labtel does not support connectors")
    sections = {kind: _section(raw, kind) for kind in COMPONENT_TYPES}
    service_raw = raw.get("service")
    if not isinstance(service_raw, dict):
        raise ConfigError("service: missing; it must list service.pipelines")
    if not service_raw.get("pipelines"):
        raise ConfigError("service.pipelines: missing; define at least one pipeline (logs, traces or metrics)")
    try:
        service = ServiceConfig.model_validate(service_raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, "service")) from None
    for pipeline_id, pipeline in service.pipelines.items():
        signal = component_type(pipeline_id)
        where = f"service.pipelines.{pipeline_id}"
        if signal not in SIGNALS:
            raise ConfigError(f"{where}: unknown signal {signal!r}; labtel pipelines are: {', '.join(SIGNALS)}")
        for kind, names in (
            ("receivers", pipeline.receivers),
            ("processors", pipeline.processors),
            ("exporters", pipeline.exporters),
        ):
            for name in names:
                if name not in sections[kind]:
                    raise ConfigError(f"{where}.{kind}: {name!r} is not defined under '{kind}'")
    for name in service.extensions:
        if name not in sections["extensions"]:
            raise ConfigError(f"service.extensions: {name!r} is not defined under 'extensions'")
    for exporter_id, exporter in sections["exporters"].items():
        if isinstance(exporter, AlertsExporterConfig):
            _check_alerts_exporter(exporter_id, exporter, sections["exporters"], service)
            continue
        assert isinstance(exporter, ClickHouseExporterConfig)
        reference = exporter.sending_queue.storage
        if reference is not None and not isinstance(sections["extensions"].get(reference), FileStorageConfig):
            raise ConfigError(
                f"exporters.{exporter_id}.sending_queue.storage: {reference!r} is not a file_storage extension"
            )
    for extension_id, api in sections["extensions"].items():
        if isinstance(api, QueryApiConfig) and not isinstance(
            sections["exporters"].get(api.storage), ClickHouseExporterConfig
        ):
            raise ConfigError(
                f"extensions.{extension_id}.storage: {api.storage!r} is not a clickhouse exporter under 'exporters'"
            )
    endpoints: dict[tuple[str, int], str] = {}
    for path, endpoint, auth in _listeners(sections):
        if auth is not None:
            extension = sections["extensions"].get(auth.authenticator)
            if not isinstance(extension, AuthExtensionConfig):
                raise ConfigError(
                    f"{path}.auth.authenticator: {auth.authenticator!r} is not a labtel_auth extension under 'extensions'"
                )
            if auth.authenticator not in service.extensions:
                raise ConfigError(f"{path}.auth.authenticator: list {auth.authenticator!r} in service.extensions")
        host, port = parse_endpoint(endpoint)
        if port and (host, port) in endpoints:
            raise ConfigError(f"{path}.endpoint: port {port} is already used by {endpoints[(host, port)]}")
        endpoints[(host, port)] = path
    try:
        return CollectorConfig.model_validate({**sections, "service": service})
    except ValidationError as error:
        raise ConfigError(_describe(error, "")) from None


def _check_alerts_exporter(
    exporter_id: str, exporter: AlertsExporterConfig, exporters: dict[str, BaseModel], service: ServiceConfig
) -> None:
    """An alerts exporter reads a clickhouse exporter's storage and sits in logs pipelines that store."""
    if not isinstance(exporters.get(exporter.storage), ClickHouseExporterConfig):
        raise ConfigError(f"exporters.{exporter_id}.storage: {exporter.storage!r} is not a clickhouse exporter")
    for pipeline_id, pipeline in service.pipelines.items():
        if exporter_id not in pipeline.exporters:
            continue
        where = f"service.pipelines.{pipeline_id}.exporters"
        if component_type(pipeline_id) != "logs":
            raise ConfigError(f"{where}: {exporter_id!r} alerts on events: list it in a logs pipeline")
        if not any(isinstance(exporters.get(e), ClickHouseExporterConfig) for e in pipeline.exporters):
            raise ConfigError(f"{where}: {exporter_id!r} needs a clickhouse exporter in the same pipeline")


def _listeners(sections: dict[str, dict[str, BaseModel]]) -> list[tuple[str, str, AuthSettings | None]]:
    found = []
    for name, receiver in sections["receivers"].items():
        assert isinstance(receiver, OTLPReceiverConfig)
        for proto in ("grpc", "http"):
            server = getattr(receiver.protocols, proto)
            if server is not None:
                found.append((f"receivers.{name}.protocols.{proto}", server.endpoint, server.auth))
    for name, extension in sections["extensions"].items():
        if isinstance(extension, QueryApiConfig):
            found.append((f"extensions.{name}", extension.endpoint, extension.auth))
    return found


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> CollectorConfig:
    """Read, expand and validate an `otel-config.yaml`; raises ConfigError with a clear message."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config {str(file)!r}: {error.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{file}: not valid YAML: {error}") from None
    return parse_config(expand_env(raw, environ))


def default_config_path() -> Path:
    """`$LABTEL_CONFIG`, else `./otel-config.yaml`, else the one shipped with labtel."""
    configured = os.environ.get("LABTEL_CONFIG")
    if configured:
        return Path(configured)
    local = Path("otel-config.yaml")
    if local.exists():
        return local
    return Path(__file__).with_name("default-config.yaml")
