"""`labtel demo`: start a collector if none listens, then play the simulated labs into it."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rich.markup import escape

from labtel.collector.durations import parse_duration
from labtel.demo.emitter import Emitter
from labtel.demo.runner import WORLDS, Window, accelerated_window, backfill_window, play, simulate, write_truth
from labtel.demo.sim import SECOND

_PORTS = {"grpc": 4317, "http": 4318}
_ENDPOINT_VARIABLES = {"grpc": "LABTEL_GRPC_ENDPOINT", "http": "LABTEL_HTTP_ENDPOINT"}
"""Where the default config's OTLP receivers listen, by protocol."""


def _address(endpoint: str, protocol: str) -> tuple[str, int]:
    """The host and port of a collector endpoint (the protocol's OTLP port when it names none)."""
    parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    return parsed.hostname or "localhost", parsed.port or _PORTS.get(protocol, 4317)


def _listening(endpoint: str, protocol: str = "grpc") -> bool:
    try:
        with socket.create_connection(_address(endpoint, protocol), timeout=1.0):
            return True
    except OSError:
        return False


def _start_server(console: Any, endpoint: str, protocol: str) -> subprocess.Popen[bytes]:
    """`labtel serve` with its `protocol` receiver at `endpoint` (the default config's receivers
    take their addresses from the environment); stopped again if it listens elsewhere."""
    host, port = _address(endpoint, protocol)
    ready = Path(tempfile.mkdtemp(prefix="labtel-demo-")) / "ready.json"
    env = {**os.environ, _ENDPOINT_VARIABLES.get(protocol, "LABTEL_GRPC_ENDPOINT"): f"{host}:{port}"}
    process = subprocess.Popen([sys.executable, "-m", "labtel.cli", "serve", "--ready-file", str(ready)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise SystemExit("labtel demo: could not start `labtel serve`")
            time.sleep(0.1)
        listeners = json.loads(ready.read_text())["listeners"]
    finally:
        shutil.rmtree(ready.parent, ignore_errors=True)
    if not _listening(endpoint, protocol):
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        raise SystemExit(f"labtel demo: `labtel serve` does not listen at {endpoint} (its config sets other addresses)")
    console.print(f"labtel demo: started labtel serve: {escape(str(listeners))}")
    return process


def _start_ns(start: str | None) -> int | None:
    if start is None:
        return None
    from labtel.query_api.params import parse_time_ns

    return parse_time_ns(start, "start")


def main(
    *,
    backfill: str | None,
    speed: float,
    duration: str | None,
    live: bool,
    rate: float,
    start: str | None,
    seed: int,
    worlds: tuple[str, ...],
    nodes: int,
    endpoint: str,
    protocol: str,
    truth_path: Path | None,
    print_items: bool,
    serve: bool,
    console: Any,
) -> int:
    os.environ.setdefault("OTEL_PYTHON_LOG_LEVEL", "error")  # exporter retries are reported by the summary
    unknown = set(worlds) - set(WORLDS)
    if unknown:
        console.print(
            f"[red]labtel demo: unknown world(s) {escape(str(sorted(unknown)))}; choose from {', '.join(WORLDS)}[/red]"
        )
        return 2
    windows: list[Window] = []
    wall_s = parse_duration(duration).total_seconds() if duration else None
    if backfill:
        windows.append(backfill_window(parse_duration(backfill).total_seconds(), _start_ns(start)))
        if live:
            windows.append(accelerated_window(1.0, wall_s))
    elif rate > 0:
        windows.append(backfill_window(30 * 86400))
    else:
        windows.append(accelerated_window(speed, wall_s))
    server = None
    emitter = None
    previous_term = signal.signal(signal.SIGTERM, _interrupted)  # `kill`: stop as Ctrl-C does, cleaning up
    previous = signal.getsignal(signal.SIGINT)
    undelivered = 0
    try:
        if not print_items:
            if serve and not _listening(endpoint, protocol):
                server = _start_server(console, endpoint, protocol)
            emitter = Emitter(
                endpoint, protocol, Path(tempfile.mkdtemp(prefix="labtel-demo-spool-")), demo_id=f"seed-{seed}"
            )
        for index, window in enumerate(windows):
            items, truth = simulate(window, seed + index, worlds, nodes)
            if rate > 0:  # load: 30 simulated days restamped as sent, for `duration` at most
                items = _restamped(items if wall_s is None else itertools.islice(items, math.ceil(rate * wall_s)))
            if not print_items:
                console.print(f"labtel demo: {_mode(window, rate, duration)}")
            started = time.monotonic()
            play(items, truth, window, emitter, print if print_items else None, rate)
            if emitter is not None:
                result = emitter.flush(120)
                console.print(
                    f"labtel demo: {truth.events['Log']} events and {truth.events['SpanStart']} spans in "
                    f"{time.monotonic() - started:.1f} s; delivered {result.delivered}, "
                    f"pending {result.pending}, dropped {result.dropped}"
                )
                undelivered += result.pending + result.dropped + result.rejected
            if truth_path is not None:
                write_truth(truth, truth_path)
    except KeyboardInterrupt:
        console.print("labtel demo: stopped")
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
        if emitter is not None:
            emitter.close()
            shutil.rmtree(emitter.spool_dir, ignore_errors=True)  # what is left in it would never be sent
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    if undelivered:
        console.print(f"[red]labtel demo: {undelivered} items not delivered to {escape(endpoint)}[/red]")
        return 1
    return 0


def _interrupted(signum: int, frame: Any) -> None:
    """SIGTERM: stop as Ctrl-C does (the queued events flushed, the spool removed, a `labtel serve`
    the demo started stopped), instead of dying with that server left running."""
    raise KeyboardInterrupt


def _mode(window: Window, rate: float, duration: str | None) -> str:
    """What a window plays, for the line that starts it."""
    if rate > 0:
        return f"load from now at {rate:g} events/s" + (f" for {duration}" if duration else "")
    mode = "backfill" if window.speed == 0 else "live" if window.speed <= 1 else f"x{window.speed:g}"
    return f"{mode} from {time.strftime('%Y-%m-%d %H:%M', time.gmtime(window.start_ns / SECOND))} UTC"


def _restamped(items: Any) -> Any:
    """Load mode: the simulated events, stamped with the time they are sent."""
    from dataclasses import replace

    for item in items:
        yield replace(item, time_ns=time.time_ns())
