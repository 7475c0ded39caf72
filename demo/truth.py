"""The ground truth of a simulation: what really happened, for tests to compare analyses against."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

SECOND = 1_000_000_000


@dataclass
class NodeTruth:
    kind: str = ""
    busy_seconds: float = 0.0
    actions_started: int = 0
    actions_completed: int = 0
    actions_failed: int = 0


@dataclass
class UserTruth:
    experiments: int = 0
    workflows_started: int = 0
    workflows_completed: int = 0
    workflows_failed: int = 0
    workflow_seconds: float = 0.0
    actions: int = 0
    busy_seconds: float = 0.0


@dataclass
class Truth:
    """Counts and durations the simulated labs produced, within [start_ns, end_ns]."""

    start_ns: int
    end_ns: int
    nodes: dict[str, NodeTruth] = field(default_factory=lambda: defaultdict(NodeTruth))
    users: dict[str, UserTruth] = field(default_factory=lambda: defaultdict(UserTruth))
    experiments: Counter[str] = field(default_factory=Counter)
    workflows: Counter[str] = field(default_factory=Counter)
    observatory: Counter[str] = field(default_factory=Counter)
    geochronology: Counter[str] = field(default_factory=Counter)
    devices: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    events: Counter[str] = field(default_factory=Counter)

    # --- chemistry ----------------------------------------------------------------------------

    def experiment_started(self, user: str) -> None:
        self.experiments["started"] += 1
        self.users[user].experiments += 1

    def experiment_finished(self, ok: bool) -> None:
        self.experiments["completed" if ok else "failed"] += 1

    def workflow_started(self, user: str) -> None:
        self.workflows["started"] += 1
        self.users[user].workflows_started += 1

    def workflow_finished(self, user: str, ok: bool, seconds: float) -> None:
        self.workflows["completed" if ok else "aborted"] += 1
        entry = self.users[user]
        if ok:
            entry.workflows_completed += 1
        else:
            entry.workflows_failed += 1
        entry.workflow_seconds += seconds

    def action_started(self, node: str, kind: str, user: str, start_ns: int, end_ns: int) -> None:
        """An action occupies a node from start to end (its time within the window counts as busy)."""
        busy = max(0, min(end_ns, self.end_ns) - max(start_ns, self.start_ns)) / SECOND
        entry = self.nodes[node]
        entry.kind = kind
        entry.busy_seconds += busy
        entry.actions_started += 1
        self.users[user].busy_seconds += busy

    def action_finished(self, node: str, user: str, seconds: float, failed: bool) -> None:
        entry = self.nodes[node]
        if failed:
            entry.actions_failed += 1
        else:
            entry.actions_completed += 1
        self.users[user].actions += 1

    # --- output -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, dict):
                return {str(k): plain(v) for k, v in sorted(value.items())}
            if hasattr(value, "__dataclass_fields__"):
                return {k: plain(getattr(value, k)) for k in value.__dataclass_fields__}
            if isinstance(value, float):
                return round(value, 3)
            return value

        return {
            "start_unix_nano": self.start_ns,
            "end_unix_nano": self.end_ns,
            "nodes": plain(dict(self.nodes)),
            "users": plain(dict(self.users)),
            "experiments": dict(self.experiments),
            "workflows": dict(self.workflows),
            "observatory": dict(self.observatory),
            "geochronology": dict(self.geochronology),
            "devices": plain({k: dict(v) for k, v in self.devices.items()}),
            "events": dict(sorted(self.events.items())),
        }
