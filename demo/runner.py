"""Running a simulated lab: which worlds, which window of time, how fast.

- backfill: simulate [start, start + period] as fast as delivery allows;
- accelerated (`speed` > 1 over a wall-clock `duration`): replay recent history so the simulated
  clock catches up with the real one exactly when the duration ends (never a future timestamp);
- real time: from now on, as it happens.
"""

from __future__ import annotations

import heapq
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labtel.demo.chemistry import ChemistryLab
from labtel.demo.emitter import Emitter
from labtel.demo.geochronology import ExtractionLine
from labtel.demo.observatory import Observatory
from labtel.demo.sim import SECOND, Item, Log, Sim, SpanStart
from labtel.demo.truth import Truth

WORLDS = ("chemistry", "observatory", "geochronology")
FOREVER_NS = 10 * 365 * 86400 * SECOND


@dataclass(frozen=True)
class Window:
    """The simulated period and how fast to play it (0 = as fast as possible)."""

    start_ns: int
    end_ns: int
    speed: float = 0.0


def backfill_window(period_s: float, start_ns: int | None = None) -> Window:
    start = start_ns if start_ns is not None else time.time_ns() - int(period_s * SECOND)
    return Window(start, start + int(period_s * SECOND), 0.0)


def accelerated_window(speed: float, duration_s: float | None) -> Window:
    """At `speed`, for `duration_s` of wall time, ending caught up with the wall clock."""
    now = time.time_ns()
    if duration_s is None:
        return Window(now, now + FOREVER_NS, max(speed, 1.0))
    start = now - int(duration_s * (speed - 1) * SECOND)
    return Window(start, now + int(duration_s * SECOND), speed)


def simulate(
    window: Window, seed: int, worlds: tuple[str, ...] = WORLDS, nodes: int = 10
) -> tuple[Iterator[Item], Truth]:
    """The items of the chosen worlds over the window, in time order, and the truth they build."""
    truth = Truth(window.start_ns, window.end_ns)
    master = random.Random(seed)
    streams = []
    for name in WORLDS:
        rng = random.Random(master.getrandbits(64))  # drawn for every world, so each world's seed is stable
        if name not in worlds:
            continue
        sim = Sim(window.start_ns, window.end_ns, rng)
        if name == "chemistry":
            ChemistryLab(sim, truth, node_count=nodes).start()
        elif name == "observatory":
            Observatory(sim, truth).start()
        else:
            ExtractionLine(sim, truth).start()
        streams.append(sim.run())
    return heapq.merge(*streams, key=lambda item: item.time_ns), truth


def item_json(item: Item) -> dict[str, Any]:
    """An item as plain JSON (for `--print` and determinism checks)."""
    if isinstance(item, Log):
        span = {"trace_id": f"{item.span.trace_id:032x}", "span_id": f"{item.span.span_id:016x}"} if item.span else {}
        return {
            "t": item.time_ns,
            "kind": "log",
            "service": item.service,
            "scope": item.scope,
            "severity": item.severity,
            "body": item.body,
            "fields": item.fields,
            **span,
        }
    if isinstance(item, SpanStart):
        return {
            "t": item.time_ns,
            "kind": "span_start",
            "service": item.span.service,
            "name": item.name,
            "trace_id": f"{item.span.trace_id:032x}",
            "span_id": f"{item.span.span_id:016x}",
            "parent": f"{item.parent.span_id:016x}" if item.parent else "",
            "attributes": item.attributes,
        }
    return {"t": item.time_ns, "kind": "span_end", "span_id": f"{item.span.span_id:016x}", "error": item.error}


def play(
    items: Iterator[Item], truth: Truth, window: Window, emitter: Emitter | None, printer: Any = None, rate: float = 0.0
) -> None:
    """Send (or print) the items, paced by the window's speed or by a fixed event rate."""
    wall_start = time.monotonic()
    sent = 0
    for item in items:
        if rate > 0:
            sent += 1
            ahead = wall_start + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        elif window.speed > 0:
            ahead = wall_start + (item.time_ns - window.start_ns) / SECOND / window.speed - time.monotonic()
            if ahead > 0:
                time.sleep(min(ahead, 1.0) if ahead > 1.0 else ahead)
                while wall_start + (item.time_ns - window.start_ns) / SECOND / window.speed > time.monotonic():
                    time.sleep(
                        min(
                            0.5,
                            wall_start
                            + (item.time_ns - window.start_ns) / SECOND / window.speed
                            - time.monotonic()
                            + 0.001,
                        )
                    )
        truth.events[type(item).__name__] += 1
        if printer is not None:
            printer(json.dumps(item_json(item), sort_keys=True, default=str))
        if emitter is not None:
            emitter.emit(item)


def write_truth(truth: Truth, path: Path) -> None:
    path.write_text(json.dumps(truth.to_dict(), indent=2, sort_keys=True))
