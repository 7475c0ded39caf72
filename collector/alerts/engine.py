"""The alert engine: rules evaluated in SQL over stored events, grouped, de-duplicated, resolved.

Event rules. Every `interval` (or when the exporter wakes it) the engine reads the events
inserted since its watermark. `EventId` is a UUIDv7 made by ClickHouse at insert, so its
embedded time is the insert time: the scan takes `UUIDv7ToDateTime(EventId)` after the watermark
less `lookback` (an insert that began earlier may commit later), skips events it already
handled, and tests every rule in one query (an array of per-rule booleans). A matching event
joins its rule's open group; a group is sent `group_wait` after it opened, as one alert listing
its events, less the events whose de-duplication key (rule, node, event type) was notified
within `repeat_interval` (recorded as suppressed).

Aggregate rules, every `aggregate_interval`. A threshold rule fires per group with more than
`count` matching events within `within` of event time; an event stamped later than its arrival
(a node whose clock runs ahead) counts from its arrival, and events that arrive late (a client's
spool, the write-ahead log) are counted where their times fall: the windows they join are
checked when they arrive, and fire once. A silence rule fires per group (node) from which no
matching event arrived for `for`, once the engine has watched that long: it counts arrivals, so a
node whose clock runs slow or ahead is heard when its events come. Both resolve when the
condition clears. An aggregate's alert (firing or resolved) that no notifier delivered is made
again at a later evaluation, after the notifiers' own retry back-off continued (at least
`aggregate_interval`, at most `repeat_interval`); once one is delivered, a firing group repeats
every `repeat_interval`.

All time is the engine's `clock` (tests drive it); insert times are ClickHouse's, and the engine
hears an arrival at its own time less the arrival's age on ClickHouse's clock, so the two clocks
need not agree. What the
engine knows survives a restart: the checkpoint never passes events still waiting in a group,
and handled events, notified keys, firing aggregates (and whether their last notice was
delivered) and pending deliveries are read back from the history.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from labtel.collector.alerts.config import AlertsExporterConfig
from labtel.collector.alerts.history import UNDELIVERED, Delivery, History, iso_time, new_alert_id
from labtel.collector.alerts.model import Alert, EventBrief
from labtel.collector.alerts.rules import (
    CompiledRule,
    brief_from_row,
    compile_rules,
    field_sql,
    format_key,
    level_name,
    merged_parameters,
)
from labtel.collector.durations import format_duration
from labtel.collector.storage.client import Storage
from labtel.collector.storage.schema import NOT_EXPIRED

log = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Seconds since the Unix epoch, as time.time gives them (tests pass a clock they move)."""

_INSERTED = "UUIDv7ToDateTime(EventId)"
_HEARD = f"least(Timestamp, {_INSERTED})"
"""When a threshold rule counts an event: at its time, or at its arrival if its time is later (a
node whose clock runs ahead is not counted late). Silence rules count arrivals (`_INSERTED`)."""
_NOW_MS = "SELECT toUnixTimestamp64Milli(now64(3))"
"""ClickHouse's time, the clock of insert times."""
MAX_HANDLED = 20_000
"""Handled events remembered inside the look-back window; beyond it the oldest are forgotten."""


@dataclass
class OpenGroup:
    """Events of one rule and group key waiting for `group_wait` to pass."""

    rule: CompiledRule
    key: str
    opened_at: float
    events: list[EventBrief] = field(default_factory=list)


@dataclass
class Heard:
    """A silence rule's group's newest arrival: its insert time (ClickHouse's clock), when the
    engine takes it to have arrived (its own clock), and the event."""

    inserted_ms: int
    at: float
    event_id: str


@dataclass
class LateBurst:
    """Events of a threshold rule's group within `within` of each other, of which some arrived
    late: the most in any window holding a late one, and the event times of that window."""

    count: int
    first_ns: int
    last_ns: int


@dataclass
class Firing:
    """An aggregate rule's group whose condition holds: the alert that said so, and when it last did."""

    alert: Alert
    since: float
    notified_at: float
    failures: int = 0
    """Alerts of this group in a row that no notifier delivered, this one included once reported."""
    retry_at: float | None = None
    """When no notifier delivered `alert`: when to make it again (else `repeat_interval` applies)."""


@dataclass
class UnsentResolve:
    """A resolved notice that no notifier delivered, made again while its group stays resolved."""

    alert: Alert
    failures: int
    retry_at: float | None
    """When to make it again; None while the latest copy is on its way."""


@dataclass
class Evaluation:
    """What one evaluation produced: alerts to deliver, and whether stored events are left to scan."""

    deliver: list[Alert]
    more: bool = False


class AlertEngine:
    """Evaluates one alerts exporter's rules against its storage."""

    def __init__(self, name: str, config: AlertsExporterConfig, storage: Storage, clock: Clock = time.time) -> None:
        self.name = name
        self.config = config
        self.storage = storage
        self.clock = clock
        self.rules = compile_rules(config)
        self.event_rules = [r for r in self.rules if r.kind == "event"]
        self.aggregate_rules = [r for r in self.rules if r.kind != "event"]
        self._aggregate_rule = {r.name: r for r in self.aggregate_rules}
        self.history = History(storage, name)
        self._lock = threading.RLock()
        self._loaded = False
        self._watermark_ms = 0
        self._floor_ms = 0
        """Never scan below this: what was stored before the first start, or before the checkpoint's look-back."""
        self._saved_watermark: int | None = None
        self._handled: dict[str, int] = {}
        self._groups: dict[tuple[str, str], OpenGroup] = {}
        self._notified: dict[str, float] = {}
        self._firing: dict[tuple[str, str], Firing] = {}
        self._unsent_resolves: dict[tuple[str, str], UnsentResolve] = {}
        self._next_aggregates = 0.0
        self._watching_since = 0.0
        """When this engine began watching (its load): a silence rule fires only once it has
        watched for `for` (events could not arrive while the collector was down)."""
        self._last_alert: dict[str, float] = {}
        self._arrivals_ms = 0
        """ClickHouse's time at the last aggregate round: events inserted since (less `lookback`)
        are new to the threshold rules' check of late arrivals; none inserted before the load
        (`_arrivals_floor_ms`) are."""
        self._arrivals_floor_ms = 0
        self._heard: dict[tuple[str, str], Heard] = {}
        self._arrived: dict[str, dict[str, int]] = {}
        """Per threshold rule, the events seen within `lookback` (id: insert time), not new again."""
        self._late_fired: dict[tuple[str, str], list[tuple[int, int, float]]] = {}
        """Per threshold group, the late windows alerted on (first and last event time, when):
        arrivals looked at again within `lookback` do not alert on the same window twice."""

    # --- start ----------------------------------------------------------------------------

    def load(self) -> list[tuple[Alert, list[Delivery]]]:
        """Read the engine's memory from the history; returns alerts whose delivery was pending,
        each with the deliveries that had settled."""
        with self._lock:
            lookback_ms = int(self.config.lookback.total_seconds() * 1000)
            saved = self.history.watermark()
            if saved is None:  # first start: alert on what arrives from now on
                self._watermark_ms = int(self.storage.command("SELECT toUnixTimestamp64Milli(now64(3))"))
                self._floor_ms = self._watermark_ms
            else:
                self._watermark_ms = saved
                self._floor_ms = saved - lookback_ms
                self._handled = self.history.handled_since(self._floor_ms)
            self._saved_watermark = saved
            self._arrivals_ms = self._arrivals_floor_ms = int(self.storage.command(_NOW_MS))
            self._watching_since = self.clock()
            longest = max((r.repeat_interval for r in self.rules), default=timedelta(0))
            self._notified = self.history.last_fired(self.clock() - longest.total_seconds())
            now = self.clock()
            for alert, status in self.history.open_aggregates():
                if alert.rule not in self._aggregate_rule:
                    continue
                group = (alert.rule, alert.group_key)
                unsent = status in UNDELIVERED  # sent again at the first evaluation
                if alert.kind == "firing":
                    firing = Firing(alert, alert.since or alert.fired_at, alert.fired_at)
                    if unsent:
                        firing.failures, firing.retry_at = 1, now
                    self._firing[group] = firing
                elif unsent:
                    self._unsent_resolves[group] = UnsentResolve(alert, 1, now)
            self._loaded = True
            return self.history.pending()

    def undelivered(self, alert: Alert) -> None:
        """No notifier delivered `alert`: its de-duplication keys were not notified after all,
        so they suppress nothing (unless a later alert notified them since); a threshold or
        silence alert, firing or resolved, is made again after a back-off (unless its group
        changed state since)."""
        with self._lock:
            for key in alert.dedup_keys:
                if self._notified.get(key) == alert.fired_at:
                    del self._notified[key]
            rule = self._aggregate_rule.get(alert.rule)
            if rule is None or alert.rule_type != rule.kind:
                return
            group = (alert.rule, alert.group_key)
            firing = self._firing.get(group)
            if alert.kind == "firing":
                if firing is not None and firing.alert.alert_id == alert.alert_id:
                    firing.failures += 1
                    firing.retry_at = self.clock() + self._retry_delay(rule, alert, firing.failures)
            elif alert.kind == "resolved" and firing is None:
                unsent = self._unsent_resolves.get(group)
                if unsent is None:
                    unsent = self._unsent_resolves[group] = UnsentResolve(alert, 0, None)
                if unsent.alert.alert_id == alert.alert_id:
                    unsent.failures += 1
                    unsent.retry_at = self.clock() + self._retry_delay(rule, alert, unsent.failures)

    def _retry_delay(self, rule: CompiledRule, alert: Alert, failures: int) -> float:
        """Seconds until an aggregate's alert is made again after its `failures`-th undelivered
        one in a row: each notifier's `retry` back-off continued past the attempts already made
        (the slowest notifier's), at least `aggregate_interval`, at most `repeat_interval`."""
        retries = [self.config.notifiers[name].retry for name in alert.notifiers if name in self.config.notifiers]
        backoff = max((retry.interval(failures * retry.max_attempts) for retry in retries), default=0.0)
        floor = self.config.aggregate_interval.total_seconds()
        return min(max(backoff, floor), max(rule.repeat_interval.total_seconds(), floor))

    # --- evaluating -----------------------------------------------------------------------

    def evaluate(self) -> Evaluation:
        """One round: scan new events, send groups that are due, check aggregates when due.

        Blocking (SQL); alerts are in the history (as pending) before they are returned."""
        with self._lock:
            if not self._loaded:
                self.load()
            now = self.clock()
            more = self._scan()
            made = self._flush_groups(now)
            if self.aggregate_rules and now >= self._next_aggregates:
                made += [(alert, "pending" if alert.notifiers else "recorded") for alert in self._aggregates(now)]
                self._next_aggregates = now + self.config.aggregate_interval.total_seconds()
            self.history.record(made)
            self._checkpoint()
            for alert, status in made:
                if status != "suppressed":
                    self._last_alert[alert.rule] = alert.fired_at
            return Evaluation([alert for alert, status in made if status == "pending"], more)

    def _scan(self) -> bool:
        """Read events inserted since the watermark and put those matching a rule in their groups."""
        if not self.event_rules:
            return False
        lookback_ms = int(self.config.lookback.total_seconds() * 1000)
        lo = max(self._watermark_ms - lookback_ms, self._floor_ms)
        logs = self.storage.names.logs
        top = self.storage.rows(
            f"SELECT toUnixTimestamp64Milli(max({_INSERTED})) AS hi, count() AS n FROM {logs} "
            f"WHERE {_INSERTED} > fromUnixTimestamp64Milli({{lo:Int64}})",
            parameters={"lo": lo},
        )
        if not top or not top[0]["n"]:
            return False
        hi = int(top[0]["hi"])
        from labtel.query_api.events import EVENT_COLUMNS

        flags = ", ".join(f"toUInt8({rule.condition})" for rule in self.event_rules)
        limit = self.config.max_events_per_scan
        rows = self.storage.rows(
            f"SELECT {EVENT_COLUMNS}, toUnixTimestamp64Milli({_INSERTED}) AS inserted_ms, [{flags}] AS matched "
            f"FROM {logs} WHERE {_INSERTED} > fromUnixTimestamp64Milli({{lo:Int64}}) "
            f"AND {_INSERTED} <= fromUnixTimestamp64Milli({{hi:Int64}}) AND {NOT_EXPIRED} "
            "AND NOT has({handled:Array(String)}, toString(EventId)) AND arrayExists(x -> x = 1, matched) "
            "ORDER BY inserted_ms, event_id LIMIT {limit:UInt32}",
            parameters={
                **merged_parameters(self.event_rules),
                "lo": lo,
                "hi": hi,
                "handled": list(self._handled),
                "limit": limit,
            },
        )
        now = self.clock()
        for row in rows:
            event = brief_from_row(row)
            self._handled[event.event_id] = event.inserted_ms
            for rule, hit in zip(self.event_rules, row["matched"], strict=True):
                if hit:
                    key = rule.group_key(event)
                    group = self._groups.get((rule.name, key))
                    if group is None:
                        group = self._groups[(rule.name, key)] = OpenGroup(rule, key, now)
                    group.events.append(event)
        more = len(rows) >= limit
        self._watermark_ms = max(self._watermark_ms, int(rows[-1]["inserted_ms"]) if more else hi)
        floor = self._watermark_ms - lookback_ms
        self._handled = {i: ms for i, ms in self._handled.items() if ms > floor}
        if len(self._handled) > MAX_HANDLED:
            newest = sorted(self._handled.items(), key=lambda item: item[1])[-MAX_HANDLED:]
            self._handled = dict(newest)
        return more

    def _flush_groups(self, now: float) -> list[tuple[Alert, str]]:
        """Alerts of the groups whose `group_wait` has passed, with their status: the events
        whose de-duplication key was notified within `repeat_interval` go in a suppressed one."""
        alerts: list[tuple[Alert, str]] = []
        for group_id, group in list(self._groups.items()):
            if now < group.opened_at + group.rule.group_wait.total_seconds():
                continue
            del self._groups[group_id]
            rule = group.rule
            fresh: list[EventBrief] = []
            duplicates: list[EventBrief] = []
            keys: dict[str, None] = {}
            window = rule.repeat_interval.total_seconds()
            for event in group.events:
                key = rule.dedup_key(event)
                last = self._notified.get(key)
                if last is not None and now - last < window:
                    duplicates.append(event)
                else:
                    fresh.append(event)
                    keys[key] = None
            if fresh:
                alert = self._event_alert(rule, group.key, fresh, list(keys), now)
                alerts.append((alert, "pending" if alert.notifiers else "recorded"))
                for key in keys:
                    self._notified[key] = now
            if duplicates:
                alert = self._event_alert(rule, group.key, duplicates, [], now)
                alert.summary = (
                    f"{len(duplicates)} events of rule {rule.name!r} repeat alerts sent within "
                    f"{format_duration(rule.repeat_interval)}: suppressed"
                )
                alerts.append((alert, "suppressed"))
        return alerts

    def _event_alert(
        self, rule: CompiledRule, key: str, events: list[EventBrief], dedup_keys: list[str], now: float
    ) -> Alert:
        listed = events[-self.config.max_events_listed :]
        worst = max(events, key=lambda e: e.severity_number)
        level = rule.level or worst.severity_text.split(" ")[0].upper() or level_name(worst.severity_number)
        count = len(events)
        noun = "event" if count == 1 else "events"
        where = f" ({key})" if key else ""
        return Alert(
            alert_id=new_alert_id(),
            exporter=self.name,
            kind="firing",
            rule=rule.name,
            rule_type="event",
            level=level,
            group_key=key,
            fired_at=now,
            summary=f"{count} {noun} matched rule {rule.name!r}{where}",
            notifiers=list(rule.notifiers),
            events=listed,
            event_ids=[e.event_id for e in events],
            event_count=count,
            dedup_keys=dedup_keys,
            max_inserted_ms=max(e.inserted_ms for e in events),
        )

    def _checkpoint(self) -> None:
        """Persist the watermark, never past an event still waiting in a group."""
        watermark = self._watermark_ms
        for group in self._groups.values():
            watermark = min(watermark, min(e.inserted_ms for e in group.events) - 1)
        if watermark != self._saved_watermark:
            self.history.save_watermark(watermark)
            self._saved_watermark = watermark

    # --- aggregates -----------------------------------------------------------------------

    def _aggregates(self, now: float) -> list[Alert]:
        alerts: list[Alert] = []
        server_ms = int(self.storage.command(_NOW_MS))
        lookback_ms = int(self.config.lookback.total_seconds() * 1000)
        arrived = (max(self._arrivals_ms - lookback_ms, self._arrivals_floor_ms), server_ms)
        for rule in self.aggregate_rules:
            try:
                if rule.kind == "threshold":
                    alerts += self._threshold(rule, now, arrived)
                else:
                    alerts += self._silence(rule, now, server_ms)
            except Exception:
                log.exception("%s: evaluating rule %s failed", self.name, rule.name)
        self._arrivals_ms = server_ms
        return alerts + self._resend_resolves(now)

    def _resend_resolves(self, now: float) -> list[Alert]:
        """New copies of the resolved notices no notifier delivered whose back-off has passed
        (a group that fires again has dropped its notice, and a copy sent `repeat_interval` ago
        is forgotten: had it failed, the engine would have been told)."""
        alerts: list[Alert] = []
        for group, unsent in list(self._unsent_resolves.items()):
            rule = self._aggregate_rule[group[0]]
            sent_long_ago = (
                unsent.retry_at is None and now - unsent.alert.fired_at >= rule.repeat_interval.total_seconds()
            )
            if group in self._firing or sent_long_ago:
                del self._unsent_resolves[group]
            elif unsent.retry_at is not None and now >= unsent.retry_at:
                unsent.alert = replace(unsent.alert, alert_id=new_alert_id(), fired_at=now)
                unsent.retry_at = None
                alerts.append(unsent.alert)
        return alerts

    def _group_select(self, rule: CompiledRule, parameters: dict[str, Any]) -> str:
        if not rule.group_by:
            return "CAST([], 'Array(String)')"
        return "[" + ", ".join(field_sql(name, parameters, f"{rule.name}_g") for name in rule.group_by) + "]"

    def _threshold(self, rule: CompiledRule, now: float, arrived: tuple[int, int]) -> list[Alert]:
        assert rule.config is not None
        assert rule.config.threshold is not None
        threshold = rule.config.threshold
        parameters = dict(rule.parameters)
        groups = self._group_select(rule, parameters)
        listed = self.config.max_events_listed
        t_from = int((now - threshold.within.total_seconds()) * 1000)
        rows = self.storage.rows(
            f"SELECT {groups} AS g, count() AS n, "
            f"groupArraySorted({listed})((-toUnixTimestamp64Nano(Timestamp), toString(EventId))) AS newest "
            f"FROM {self.storage.names.logs} WHERE Timestamp > fromUnixTimestamp64Milli({{t_from:Int64}}) "
            f"AND {_HEARD} > fromUnixTimestamp64Milli({{t_from:Int64}}) "
            f"AND {_HEARD} <= fromUnixTimestamp64Milli({{t_now:Int64}}) AND {NOT_EXPIRED} AND {rule.condition} "
            "GROUP BY g HAVING n > {t_count:UInt64}",
            parameters={**parameters, "t_from": t_from, "t_now": math.ceil(now * 1000), "t_count": threshold.count},
        )
        over = {format_key(rule.group_by, [str(v) for v in row["g"]]): row for row in rows}
        within = format_duration(threshold.within)
        alerts: list[Alert] = []
        for key, row in over.items():
            count = int(row["n"])
            summary = f"{count} events matched rule {rule.name!r} within {within}{f' ({key})' if key else ''}"
            summary += f", more than {threshold.count}"
            events = self._events([str(item[1]) for item in row["newest"]])
            alert = self._transition(rule, key, now, summary, float(count), events)
            if alert is not None:
                alerts.append(alert)
        late = self._late_bursts(rule, now, arrived, t_from, set(over))
        for (key, values), burst in late.items():
            summary = (
                f"{burst.count} events matched rule {rule.name!r} within {within}{f' ({key})' if key else ''}"
                f", more than {threshold.count}, stamped {iso_time(burst.first_ns / 1e9)} to "
                f"{iso_time(burst.last_ns / 1e9)}: they arrived late"
            )
            events = self._window_events(rule, values, burst)
            alert = self._transition(rule, key, now, summary, float(burst.count), events)
            if alert is not None:
                alerts.append(alert)
        firing_keys = set(over) | {key for key, _ in late}
        for (name, key), firing in list(self._firing.items()):
            if name == rule.name and key not in firing_keys:
                summary = f"rule {rule.name!r}{f' ({key})' if key else ''}: at most {threshold.count} events within {within} now"
                alerts.append(self._resolve(rule, key, firing, now, summary))
        return alerts

    def _late_arrivals(self, rule: CompiledRule, arrived: tuple[int, int], t_from: int) -> list[tuple[str, int]]:
        """The events of a threshold rule first seen this round (inserted within `arrived`,
        ClickHouse's milliseconds, and not seen at an earlier round) that came too late to be
        counted in the window they belong to (a time before the current window, which starts at
        `t_from`): their ids and times (nanoseconds)."""
        seen = self._arrived.setdefault(rule.name, {})
        rows = self.storage.rows(
            f"SELECT toString(EventId) AS id, toUnixTimestamp64Milli({_INSERTED}) AS inserted_ms, "
            f"toUnixTimestamp64Nano({_HEARD}) AS t, {_HEARD} <= fromUnixTimestamp64Milli({{t_from:Int64}}) AS late "
            f"FROM {self.storage.names.logs} WHERE {_INSERTED} > fromUnixTimestamp64Milli({{a_lo:Int64}}) "
            f"AND {_INSERTED} <= fromUnixTimestamp64Milli({{a_hi:Int64}}) AND NOT has({{seen:Array(String)}}, id) "
            f"AND {NOT_EXPIRED} AND {rule.condition} ORDER BY inserted_ms LIMIT {MAX_HANDLED}",
            parameters={
                **rule.parameters,
                "a_lo": arrived[0],
                "a_hi": arrived[1],
                "t_from": t_from,
                "seen": list(seen),
            },
        )
        for row in rows:
            seen[str(row["id"])] = int(row["inserted_ms"])
        kept = sorted((ms, i) for i, ms in seen.items() if ms > arrived[0])[-MAX_HANDLED:]
        self._arrived[rule.name] = {i: ms for ms, i in kept}
        return [(str(row["id"]), int(row["t"])) for row in rows if row["late"]]

    def _late_bursts(
        self, rule: CompiledRule, now: float, arrived: tuple[int, int], t_from: int, firing: set[str]
    ) -> dict[tuple[str, tuple[str, ...]], LateBurst]:
        """The groups (key and values) with more than `count` events within `within` in a window
        of event time that holds an event arrived late, less groups of `firing` and windows
        already alerted on: per group, the window holding the most."""
        assert rule.config is not None
        assert rule.config.threshold is not None
        threshold = rule.config.threshold
        late = self._late_arrivals(rule, arrived, t_from)
        if not late:
            return {}
        parameters: dict[str, Any] = {**rule.parameters, "late": [i for i, _ in late]}
        logs = self.storage.names.logs
        window_ns = int(threshold.within.total_seconds() * 1e9)
        # a RANGE frame's offset is a 32-bit integer: milliseconds, or seconds past 24 days
        unit = 1_000_000 if window_ns // 1_000_000 < 2**31 else 1_000_000_000
        groups = self._group_select(rule, parameters)
        rows = self.storage.rows(
            f"SELECT g, n, first * {unit} AS first_ns, last * {unit} + {unit - 1} AS last_ns FROM ("
            "SELECT g, t AS last, count() OVER w AS n, max(late) OVER w AS has_late, min(t) OVER w AS first "
            f"FROM (SELECT {groups} AS g, intDiv(toUnixTimestamp64Nano({_HEARD}), {unit}) AS t, "
            "toUInt8(has({late:Array(String)}, toString(EventId))) AS late "
            f"FROM {logs} "
            f"WHERE Timestamp >= fromUnixTimestamp64Nano({{r_lo:Int64}}) AND {_HEARD} >= fromUnixTimestamp64Nano({{r_lo:Int64}}) "
            f"AND {_HEARD} <= fromUnixTimestamp64Nano({{r_hi:Int64}}) AND {NOT_EXPIRED} AND {rule.condition}) "
            f"WINDOW w AS (PARTITION BY g ORDER BY t ASC RANGE BETWEEN {window_ns // unit - 1} PRECEDING AND CURRENT ROW)) "
            "WHERE has_late AND n > {t_count:UInt64} ORDER BY n DESC, last_ns DESC LIMIT 1 BY g",
            parameters={
                **parameters,
                "r_lo": min(t for _, t in late) - window_ns,
                "r_hi": max(t for _, t in late) + window_ns,
                "t_count": threshold.count,
            },
        )
        remember = now - rule.repeat_interval.total_seconds()
        for group, windows in list(self._late_fired.items()):
            if group[0] == rule.name:
                self._late_fired[group] = [w for w in windows if w[2] > remember]
                if not self._late_fired[group]:
                    del self._late_fired[group]
        bursts: dict[tuple[str, tuple[str, ...]], LateBurst] = {}
        for row in rows:
            values = tuple(str(v) for v in row["g"])
            key = format_key(rule.group_by, list(values))
            burst = LateBurst(int(row["n"]), int(row["first_ns"]), int(row["last_ns"]))
            alerted = self._late_fired.get((rule.name, key), [])
            if key in firing or any(w[0] <= burst.last_ns and burst.first_ns <= w[1] for w in alerted):
                continue
            self._late_fired[(rule.name, key)] = [*alerted, (burst.first_ns, burst.last_ns, now)]
            bursts[(key, values)] = burst
        return bursts

    def _window_events(self, rule: CompiledRule, values: tuple[str, ...], burst: LateBurst) -> list[EventBrief]:
        """The newest events (`max_events_listed`) of a group's late window."""
        parameters = dict(rule.parameters)
        groups = self._group_select(rule, parameters)
        rows = self.storage.rows(
            f"SELECT toString(EventId) AS id FROM {self.storage.names.logs} "
            f"WHERE Timestamp >= fromUnixTimestamp64Nano({{w_lo:Int64}}) AND {_HEARD} >= fromUnixTimestamp64Nano({{w_lo:Int64}}) "
            f"AND {_HEARD} <= fromUnixTimestamp64Nano({{w_hi:Int64}}) AND {groups} = {{w_g:Array(String)}} "
            f"AND {NOT_EXPIRED} AND {rule.condition} ORDER BY {_HEARD} DESC LIMIT {{w_n:UInt32}}",
            parameters={
                **parameters,
                "w_lo": burst.first_ns,
                "w_hi": burst.last_ns,
                "w_g": list(values),
                "w_n": self.config.max_events_listed,
            },
        )
        return self._events([str(row["id"]) for row in rows])

    def _silence(self, rule: CompiledRule, now: float, server_ms: int) -> list[Alert]:
        assert rule.config is not None
        assert rule.config.silence is not None
        silence = rule.config.silence
        parameters = dict(rule.parameters)
        groups = self._group_select(rule, parameters)
        seen_within = silence.seen_within.total_seconds()
        rows = self.storage.rows(
            f"SELECT {groups} AS g, toUnixTimestamp64Milli(max({_INSERTED})) AS last_ms, "
            f"argMax(toString(EventId), {_INSERTED}) AS last_id "
            f"FROM {self.storage.names.logs} WHERE {_INSERTED} > fromUnixTimestamp64Milli({{s_from:Int64}}) "
            f"AND {_INSERTED} <= fromUnixTimestamp64Milli({{s_now:Int64}}) AND {NOT_EXPIRED} AND {rule.condition} "
            "GROUP BY g",
            parameters={**parameters, "s_from": server_ms - int(seen_within * 1000), "s_now": server_ms},
        )
        last: dict[str, tuple[float | None, str]] = {}
        present: set[tuple[str, str]] = set()
        for row in rows:
            key = format_key(rule.group_by, [str(v) for v in row["g"]])
            heard = self._hear((rule.name, key), int(row["last_ms"]), str(row["last_id"]), now, server_ms)
            present.add((rule.name, key))
            if now - heard.at < seen_within:
                last[key] = (heard.at, heard.event_id)
        for group in [g for g in self._heard if g[0] == rule.name and g not in present]:
            del self._heard[group]
        for value in silence.expect:
            last.setdefault(format_key(rule.group_by, [value]), (None, ""))
        quiet_for = silence.for_.total_seconds()
        window = format_duration(silence.for_)
        alerts: list[Alert] = []
        for key, (seen, last_id) in last.items():
            firing = self._firing.get((rule.name, key))
            silent = seen is None or now - seen >= quiet_for
            if firing is None:  # only a silence heard for `for`: not one while labtel was not listening
                silent = silent and now - self._watching_since >= quiet_for
            if silent:
                since = (
                    "nothing seen"
                    if seen is None
                    else f"last seen {format_duration(timedelta(seconds=int(now - seen)))} ago"
                )
                summary = f"no event matching rule {rule.name!r} from {key or 'anyone'} for {window} ({since})"
                events = self._events([last_id]) if last_id else []
                alert = self._transition(rule, key, now, summary, None if seen is None else now - seen, events)
                if alert is not None:
                    alerts.append(alert)
            elif firing is not None:
                summary = f"rule {rule.name!r}: {key or 'events'} reporting again"
                alerts.append(self._resolve(rule, key, firing, now, summary, self._events([last_id])))
        for (name, key), firing in list(self._firing.items()):
            if name == rule.name and key not in last:
                summary = f"rule {rule.name!r}: {key} not seen within {format_duration(silence.seen_within)}; no longer watched"
                alert = self._resolve(rule, key, firing, now, summary)
                alert.notifiers = []
                alerts.append(alert)
        return alerts

    def _hear(self, group: tuple[str, str], inserted_ms: int, event_id: str, now: float, server_ms: int) -> Heard:
        """A silence group's newest arrival, heard at the engine's time less its age on
        ClickHouse's clock (so the engine hears an arrival when it comes, whatever the two clocks
        read, and one it first sees later, such as after a restart, when it came)."""
        heard = self._heard.get(group)
        if heard is None or inserted_ms > heard.inserted_ms:
            at = now - max(0, server_ms - inserted_ms) / 1000
            heard = self._heard[group] = Heard(inserted_ms, max(at, heard.at) if heard else at, event_id)
        return heard

    def _transition(
        self, rule: CompiledRule, key: str, now: float, summary: str, value: float | None, events: list[EventBrief]
    ) -> Alert | None:
        """A firing alert when a group's condition starts to hold, again after `repeat_interval`,
        or, when no notifier delivered the last one, again once its retry is due."""
        group = (rule.name, key)
        firing = self._firing.get(group)
        if firing is not None:
            if firing.retry_at is not None:
                if now < firing.retry_at:
                    return None
            elif now - firing.notified_at < rule.repeat_interval.total_seconds():
                return None
        # "still" only when someone heard of it: the last alert was delivered, or was a retry of a repeat
        repeat = firing is not None and (firing.retry_at is None or firing.alert.repeat)
        alert = Alert(
            alert_id=new_alert_id(),
            exporter=self.name,
            kind="firing",
            rule=rule.name,
            rule_type=rule.kind,
            level=rule.level,
            group_key=key,
            fired_at=now,
            summary=f"still: {summary}" if repeat else summary,
            notifiers=list(rule.notifiers),
            events=events,
            event_ids=[e.event_id for e in events],
            event_count=int(value) if rule.kind == "threshold" and value is not None else len(events),
            dedup_keys=[f"{rule.name}|{key}"],
            value=value,
            repeat=repeat,
            since=firing.since if firing else now,
        )
        failures = firing.failures if firing is not None and firing.retry_at is not None else 0
        self._firing[group] = Firing(alert, alert.since or now, now, failures)
        self._unsent_resolves.pop(group, None)  # firing again: that resolve is out of date
        return alert

    def _resolve(
        self,
        rule: CompiledRule,
        key: str,
        firing: Firing,
        now: float,
        summary: str,
        events: list[EventBrief] | None = None,
    ) -> Alert:
        del self._firing[(rule.name, key)]
        events = events or []
        lasted = format_duration(timedelta(seconds=int(now - firing.since)))
        return Alert(
            alert_id=new_alert_id(),
            exporter=self.name,
            kind="resolved",
            rule=rule.name,
            rule_type=rule.kind,
            level=firing.alert.level,
            group_key=key,
            fired_at=now,
            summary=f"{summary} (firing for {lasted})",
            notifiers=list(firing.alert.notifiers),
            events=events,
            event_ids=[e.event_id for e in events],
            event_count=len(events),
        )

    def _events(self, ids: list[str]) -> list[EventBrief]:
        """Stored events by id, oldest first."""
        ids = [i for i in ids if i]
        if not ids:
            return []
        from labtel.query_api.events import EVENT_COLUMNS

        rows = self.storage.rows(
            f"SELECT {EVENT_COLUMNS}, toUnixTimestamp64Milli({_INSERTED}) AS inserted_ms FROM {self.storage.names.logs} "
            "WHERE has({ids:Array(String)}, toString(EventId)) ORDER BY Timestamp, event_id",
            parameters={"ids": ids},
        )
        return [brief_from_row(row) for row in rows]

    # --- state for GET /alerts/rules ------------------------------------------------------

    def rule_states(self) -> list[dict[str, Any]]:
        """Each rule with its settings and what it is doing now: open groups, firing groups."""
        with self._lock:
            states = []
            for rule in self.rules:
                firing = [
                    {
                        "key": key,
                        "since": iso_time(f.since),
                        "value": f.alert.value,
                        "alert_id": f.alert.alert_id,
                        "summary": f.alert.summary,
                        "retry_at": iso_time(f.retry_at) if f.retry_at is not None else None,
                    }
                    for (name, key), f in self._firing.items()
                    if name == rule.name
                ]
                waiting = [
                    {
                        "key": g.key,
                        "events": len(g.events),
                        "send_at": iso_time(g.opened_at + rule.group_wait.total_seconds()),
                    }
                    for (name, _), g in self._groups.items()
                    if name == rule.name
                ]
                last = self._last_alert.get(rule.name)
                states.append(
                    {
                        "exporter": self.name,
                        "name": rule.name,
                        "type": rule.kind,
                        **rule.description,
                        "group_by": list(rule.group_by),
                        "dedup_by": list(rule.dedup_by),
                        "notify": list(rule.notifiers),
                        "level": rule.level or None,
                        "group_wait": format_duration(rule.group_wait),
                        "repeat_interval": format_duration(rule.repeat_interval),
                        "state": "firing" if firing else ("grouping" if waiting else "ok"),
                        "firing": firing,
                        "grouping": waiting,
                        "last_alert_at": iso_time(last) if last is not None else None,
                    }
                )
            return states
