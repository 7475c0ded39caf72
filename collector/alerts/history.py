"""The alert history in ClickHouse: what fired, when, by which rule and key, over which events,
to which notifiers, and how delivery went; plus the engine's checkpoint.

`labtel_alerts` holds one row per alert. A row is written when the alert is made (status
`pending`, or `suppressed` / `recorded` when nothing is to be sent) and written again, with a
higher `Version`, when delivery is settled (ReplacingMergeTree keeps the newest). Reading with
FINAL gives each alert once. The history is also the engine's memory across restarts: which
events were handled, which keys fired when (de-duplication), which aggregates are firing (and
whether their last notice reached anyone), and which deliveries were still pending.
`labtel_alert_state` holds the scan checkpoint.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from labtel.collector.alerts.model import Alert
from labtel.collector.storage.client import Storage
from labtel.collector.storage.schema import SchemaNames

HISTORY_TABLE = "labtel_alerts"
STATE_TABLE = "labtel_alert_state"
WATERMARK_KEY = "watermark_ms"

STATUSES = ("pending", "delivered", "partial", "failed", "rate_limited", "suppressed", "recorded")
"""`pending`: to be sent; `delivered` / `partial` / `failed`: how sending went; `rate_limited`:
held back by every notifier's rate limit; `suppressed`: a duplicate within the repeat interval,
not sent; `recorded`: kept without notifiers."""
UNDELIVERED = ("failed", "rate_limited")
"""The statuses of an alert that no notifier delivered."""


def history_tables(names: SchemaNames) -> list[str]:
    """The tables of the alert history (one migration)."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {names.qualified(HISTORY_TABLE)}{names.on_cluster} (
    AlertId UUID,
    Version UInt64,
    Exporter LowCardinality(String),
    FiredAt DateTime64(3, 'UTC'),
    Kind LowCardinality(String),
    Rule LowCardinality(String),
    RuleType LowCardinality(String),
    Level LowCardinality(String),
    GroupKey String,
    DedupKeys Array(String),
    Summary String,
    EventIds Array(UUID),
    EventCount UInt64,
    MaxInsertedMs Int64,
    Notifiers Array(LowCardinality(String)),
    Status LowCardinality(String),
    Deliveries String,
    Details String
) ENGINE = {names.topology.engine("ReplacingMergeTree", "Version", state=True)}
PARTITION BY toYYYYMM(FiredAt)
ORDER BY (Exporter, FiredAt, AlertId)""",
        f"""CREATE TABLE IF NOT EXISTS {names.qualified(STATE_TABLE)}{names.on_cluster} (
    Exporter LowCardinality(String),
    Key String,
    Value String,
    Version UInt64
) ENGINE = {names.topology.engine("ReplacingMergeTree", "Version", state=True)}
ORDER BY (Exporter, Key)""",
    ]


@dataclass(frozen=True)
class Delivery:
    """How sending one alert through one notifier went."""

    notifier: str
    status: str  # delivered, failed, rate_limited
    attempts: int = 0
    error: str = ""
    at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "notifier": self.notifier,
            "status": self.status,
            "attempts": self.attempts,
            "error": self.error,
            "at": iso_time(self.at) if self.at else None,
        }


def _deliveries(text: str) -> list[Delivery]:
    """Deliveries as the history stores them (`Delivery.as_dict`, as JSON)."""
    return [
        Delivery(
            d["notifier"],
            d["status"],
            d["attempts"],
            d["error"],
            datetime.fromisoformat(d["at"]).timestamp() if d["at"] else 0.0,
        )
        for d in (orjson.loads(text) if text else [])
    ]


def overall_status(deliveries: Sequence[Delivery]) -> str:
    """An alert's status from its deliveries: all delivered, none delivered, or some."""
    if not deliveries:
        return "recorded"
    delivered = sum(d.status == "delivered" for d in deliveries)
    if delivered == len(deliveries):
        return "delivered"
    if delivered:
        return "partial"
    return "rate_limited" if all(d.status == "rate_limited" for d in deliveries) else "failed"


def iso_time(seconds: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_alert_id() -> str:
    return str(uuid.uuid4())


_COLUMNS = [
    "AlertId",
    "Version",
    "Exporter",
    "FiredAt",
    "Kind",
    "Rule",
    "RuleType",
    "Level",
    "GroupKey",
    "DedupKeys",
    "Summary",
    "EventIds",
    "EventCount",
    "MaxInsertedMs",
    "Notifiers",
    "Status",
    "Deliveries",
    "Details",
]


class History:
    """One alerts exporter's rows in the history tables."""

    def __init__(self, storage: Storage, exporter: str) -> None:
        self.storage = storage
        self.exporter = exporter
        self.table = storage.names.qualified(HISTORY_TABLE)
        self.state_table = storage.names.qualified(STATE_TABLE)
        self._version = 0
        self._lock = threading.Lock()

    def _next_version(self) -> int:
        with self._lock:
            self._version = max(self._version + 1, time.time_ns())
            return self._version

    # --- writing ------------------------------------------------------------------------

    def record(self, alerts: Sequence[tuple[Alert, str]], deliveries: Sequence[Delivery] = ()) -> None:
        """Write alerts with their status (a new version of any row already written)."""
        if not alerts:
            return
        rows = []
        for alert, status in alerts:
            rows.append(
                [
                    uuid.UUID(alert.alert_id),
                    self._next_version(),
                    self.exporter,
                    datetime.fromtimestamp(alert.fired_at, UTC),
                    alert.kind,
                    alert.rule,
                    alert.rule_type,
                    alert.level,
                    alert.group_key,
                    alert.dedup_keys,
                    alert.summary,
                    [uuid.UUID(i) for i in alert.event_ids],
                    alert.event_count,
                    alert.max_inserted_ms,
                    alert.notifiers,
                    status,
                    orjson.dumps([d.as_dict() for d in deliveries]).decode(),
                    alert.to_json(),
                ]
            )
        with self.storage.client() as client:
            client.insert(self.table, rows, column_names=_COLUMNS)

    def save_watermark(self, watermark_ms: int) -> None:
        with self.storage.client() as client:
            client.insert(
                self.state_table,
                [[self.exporter, WATERMARK_KEY, str(watermark_ms), self._next_version()]],
                column_names=["Exporter", "Key", "Value", "Version"],
            )

    # --- the engine's memory ------------------------------------------------------------

    def watermark(self) -> int | None:
        """The insert time (Unix ms) up to which stored events were scanned, or None at first start."""
        rows = self.storage.rows(
            f"SELECT argMax(Value, Version) AS v, count() AS n FROM {self.state_table} "
            "WHERE Exporter = {e:String} AND Key = {k:String}",
            parameters={"e": self.exporter, "k": WATERMARK_KEY},
        )
        return int(rows[0]["v"]) if rows and rows[0]["n"] else None

    def handled_since(self, lo_ms: int) -> dict[str, int]:
        """Events inserted after `lo_ms` that alerts already cover: id → insert time (Unix ms)."""
        rows = self.storage.rows(
            "SELECT toString(event) AS id, toUnixTimestamp64Milli(UUIDv7ToDateTime(event)) AS ms "
            f"FROM {self.table} FINAL ARRAY JOIN EventIds AS event "
            "WHERE Exporter = {e:String} AND Kind = 'firing' AND RuleType = 'event' AND MaxInsertedMs > {lo:Int64} "
            "AND toUnixTimestamp64Milli(UUIDv7ToDateTime(event)) > {lo:Int64}",
            parameters={"e": self.exporter, "lo": lo_ms},
        )
        return {str(row["id"]): int(row["ms"]) for row in rows}

    def last_fired(self, since: float) -> dict[str, float]:
        """De-duplication keys notified after `since` (Unix s), with when they last were."""
        rows = self.storage.rows(
            "SELECT key, toUnixTimestamp64Milli(max(FiredAt)) AS ms "
            f"FROM {self.table} FINAL ARRAY JOIN DedupKeys AS key "
            "WHERE Exporter = {e:String} AND Kind = 'firing' AND Status NOT IN ('suppressed', 'failed', 'rate_limited') "
            "AND FiredAt > fromUnixTimestamp64Milli({since:Int64}) GROUP BY key",
            parameters={"e": self.exporter, "since": int(since * 1000)},
        )
        return {str(row["key"]): int(row["ms"]) / 1000 for row in rows}

    def open_aggregates(self) -> list[tuple[Alert, str]]:
        """The latest alert of each threshold / silence rule and key, with its status, when it
        is firing (not resolved since) or is a resolved notice no notifier delivered (to send again)."""
        rows = self.storage.rows(
            "SELECT Rule, GroupKey, argMax(Kind, (FiredAt, Version)) AS kind, "
            "argMax(Status, (FiredAt, Version)) AS status, argMax(Details, (FiredAt, Version)) AS details "
            f"FROM {self.table} FINAL WHERE Exporter = {{e:String}} AND RuleType IN ('threshold', 'silence') "
            "AND Kind IN ('firing', 'resolved') GROUP BY Rule, GroupKey",
            parameters={"e": self.exporter},
        )
        return [
            (Alert.from_json(str(row["details"]), []), str(row["status"]))
            for row in rows
            if row["kind"] == "firing" or row["status"] in UNDELIVERED
        ]

    def pending(self) -> list[tuple[Alert, list[Delivery]]]:
        """Alerts whose delivery had not finished (the collector stopped first), each with the
        outcomes of the notifiers that had settled (not to be sent again)."""
        rows = self.storage.rows(
            "SELECT Details, arrayMap(x -> toString(x), EventIds) AS ids, Deliveries "
            f"FROM {self.table} FINAL WHERE Exporter = {{e:String}} AND Status = 'pending' ORDER BY FiredAt",
            parameters={"e": self.exporter},
        )
        return [
            (Alert.from_json(str(row["Details"]), [str(i) for i in row["ids"]]), _deliveries(str(row["Deliveries"])))
            for row in rows
        ]


def list_alerts(
    storage: Storage,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    exporter: str | None = None,
    rule: str | None = None,
    kind: str | None = None,
    status: str | None = None,
    key: str | None = None,
    notifier: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Alerts from the history, newest first, for `GET /alerts`."""
    clauses: list[str] = ["1"]
    params: dict[str, Any] = {"limit": limit}
    for column, name, value in (
        ("Exporter", "exporter", exporter),
        ("Rule", "rule", rule),
        ("Kind", "kind", kind),
        ("Status", "status", status),
        ("GroupKey", "key", key),
    ):
        if value is not None:
            clauses.append(f"{column} = {{{name}:String}}")
            params[name] = value
    if notifier is not None:
        clauses.append("has(Notifiers, {notifier:String})")
        params["notifier"] = notifier
    if start_ms is not None:
        clauses.append("FiredAt >= fromUnixTimestamp64Milli({start_ms:Int64})")
        params["start_ms"] = start_ms
    if end_ms is not None:
        clauses.append("FiredAt < fromUnixTimestamp64Milli({end_ms:Int64})")
        params["end_ms"] = end_ms
    table = storage.names.qualified(HISTORY_TABLE)
    rows = storage.rows(
        "SELECT toString(AlertId) AS alert_id, Exporter, toUnixTimestamp64Milli(FiredAt) AS fired_ms, Kind, Rule, "
        "RuleType, Level, GroupKey, Summary, arrayMap(x -> toString(x), EventIds) AS event_ids, EventCount, "
        "Notifiers, Status, Deliveries, Details "
        f"FROM {table} FINAL WHERE {' AND '.join(clauses)} "
        "ORDER BY FiredAt DESC, AlertId DESC LIMIT {limit:UInt32}",
        parameters=params,
    )
    found = []
    for row in rows:
        details = orjson.loads(row["Details"]) if row["Details"] else {}
        found.append(
            {
                "alert_id": row["alert_id"],
                "exporter": row["Exporter"],
                "fired_at": iso_time(int(row["fired_ms"]) / 1000),
                "kind": row["Kind"],
                "rule": row["Rule"],
                "rule_type": row["RuleType"],
                "level": row["Level"],
                "key": row["GroupKey"],
                "summary": row["Summary"],
                "status": row["Status"],
                "notifiers": list(row["Notifiers"]),
                "deliveries": orjson.loads(row["Deliveries"]) if row["Deliveries"] else [],
                "event_count": int(row["EventCount"]),
                "event_ids": list(row["event_ids"]),
                "events": details.get("events", []),
                "value": details.get("value"),
            }
        )
    return found
