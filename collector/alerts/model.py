"""What an alert is: the rule that fired, the events behind it, and where it goes.

An `Alert` is made by the engine, stored in the history, rendered by the notifiers, and rebuilt
from the history after a restart (`to_json` / `from_json`), so it holds plain values only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson

AlertKind = Literal["firing", "resolved", "test"]


@dataclass(frozen=True)
class EventBrief:
    """The fields of one stored event that a notification shows."""

    event_id: str
    timestamp: str
    time_unix_nano: int
    inserted_ms: int
    severity_text: str
    severity_number: int
    service_name: str
    event_type: str
    node_id: str
    body: str
    attributes: dict[str, str] = field(default_factory=dict)
    resource: dict[str, str] = field(default_factory=dict)
    trace_id: str = ""
    run_id: str = ""
    workflow_id: str = ""
    experiment_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Alert:
    """One notification's worth: a group of events of one rule, or a change of an aggregate's state."""

    alert_id: str
    exporter: str
    kind: AlertKind
    rule: str
    rule_type: str
    level: str
    group_key: str
    fired_at: float
    summary: str
    notifiers: list[str]
    events: list[EventBrief] = field(default_factory=list)
    """The events listed in the message (at most `max_events_listed`, newest last)."""
    event_ids: list[str] = field(default_factory=list)
    """Every event the alert covers (handled once, never alerted on again)."""
    event_count: int = 0
    dedup_keys: list[str] = field(default_factory=list)
    max_inserted_ms: int = 0
    value: float | None = None
    """The measured value of an aggregate rule: the count, or the seconds of silence."""
    repeat: bool = False
    """An aggregate's alert saying its condition still holds: an earlier alert of it was delivered."""
    held_back: int = 0
    """Messages this notifier held back by its rate limit since its last message (set per delivery)."""
    since: float | None = None
    """When an aggregate's group began firing (a repeat's first alert's time): a resolved notice
    after a restart says how long it fired."""

    @property
    def title(self) -> str:
        """A short line naming what happened (MADSci's subject ends with the event type)."""
        if self.rule_type == "event" and self.events:
            first = self.events[0]
            what = first.event_type or first.body[:60] or self.rule
            types = {e.event_type for e in self.events}
            if self.event_count > 1:
                more = "" if len(types) == 1 else " and others"
                return f"{what}{more} ({self.event_count} events)"
            return what
        return f"{self.rule}{f' [{self.group_key}]' if self.group_key else ''}"

    def to_json(self) -> str:
        """The alert as stored in the history's `Details` column."""
        data = asdict(self)
        data.pop("event_ids")  # stored in their own column
        return orjson.dumps(data).decode()

    @classmethod
    def from_json(cls, text: str, event_ids: list[str]) -> Alert:
        data = orjson.loads(text)
        events = [EventBrief(**e) for e in data.pop("events", [])]
        return cls(**data, events=events, event_ids=event_ids)
