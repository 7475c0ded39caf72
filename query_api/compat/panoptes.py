"""PANOPTES telemetry compatibility: PANOPTES' telemetry server semantics over ClickHouse.

- Events are labtel events (service `panoptes-telemetry`): `lab.event.type` and `panoptes.type`
  are the type, the body and `panoptes.data` the data as JSON (`panoptes.data` only when it is
  short enough for an attribute), `panoptes.meta` the meta (a data object's keys are also
  attributes, as many as the storage's limits leave room for), `panoptes.seq`, `panoptes.stream` (site or run), `panoptes.ts` (the
  envelope's text), `panoptes.day` (the site day key) and `lab.run.id` while a run is active. The
  event time is the client's `ts` when given (its arrival when `ts` is a time storage cannot hold,
  before 1970 or after 2106-02-07T06:28:15Z).
- `seq` counts per stream and survives restarts: blocks of numbers are reserved in
  `labtel_panoptes_seq` before use, so a restart may skip up to a block (PANOPTES restarts at 1).
  Events with `store_permanently=false` take a number too, as in PANOPTES.
- The current view (`labtel_panoptes_current`) keeps the latest envelope per stream, run and
  type (highest seq wins); `/current` merges the site view with the active run's, run values
  first. A new run starts with an empty run view, as PANOPTES clears it.
- Runs (`labtel_panoptes_runs`): one active at a time, kept across restarts; the next numeric
  id is one more than the highest numeric run id seen, zero-padded to 3 digits.
- Site day keys are the site's local date (`compat.panoptes.timezone`), switching at noon, taken
  from the server clock when the event arrives (as PANOPTES names its files).

One API process serves these routes for a site (PANOPTES' server is one process too): sequence
numbers and the active run are held by the process that serves them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import PurePosixPath
from typing import Any

import orjson
from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool

from labtel.collector.otlp.limits import fits
from labtel.collector.otlp.records import Record
from labtel.collector.storage.client import Storage
from labtel.collector.storage.compat_schema import PANOPTES_CURRENT, PANOPTES_RUNS, PANOPTES_SEQ
from labtel.collector.storage.schema import NOT_EXPIRED
from labtel.query_api.compat import jsontext
from labtel.query_api.compat.ingest import EventWriter, add_flattened, compact_json, storable
from labtel.query_api.params import ParamError, parse_time_ns
from labtel.sdk import __version__, semconv
from labtel.sdk.textform import digits

SERVICE = "panoptes-telemetry"
SCOPE = "labtel.compat.panoptes"
SEQ_BLOCK = 100
"""Sequence numbers reserved at a time (at most this many are skipped after a restart)."""


def utc_iso_z(ns: int) -> str:
    """A UTC ISO 8601 time with milliseconds and a trailing Z, as PANOPTES writes `ts`."""
    moment = datetime.fromtimestamp(ns / 1e9, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _loads(text: str) -> Any:
    """Stored JSON, or the text itself when it is not JSON (a copy cut to fit the storage's limits)."""
    try:
        return jsontext.loads(text)
    except orjson.JSONDecodeError:
        return text


def site_day_key(moment: datetime) -> str:
    """The site stream's day key: the local date, switching at noon (before 12:00, the day before)."""
    if moment.hour < 12:
        moment -= timedelta(days=1)
    return moment.strftime("%Y%m%d")


@dataclass
class Run:
    """The active run: its id, where PANOPTES would keep its files, meta and start time."""

    key: str
    run_id: str
    run_dir: str
    meta: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "run_id": self.run_id, "meta": self.meta, "started_at": self.started_at}


class Panoptes:
    """What the `/panoptes/` routes do: events, the current view, runs and exports."""

    def __init__(self, storage: Storage, writer: EventWriter, zone: tzinfo, site_dir: str) -> None:
        self.storage = storage
        self.writer = writer
        self.zone = zone
        self.site_dir = site_dir
        self._lock = asyncio.Lock()
        self._loaded = False
        self._seq: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        self._run: Run | None = None

    def _table(self, name: str) -> str:
        return self.storage.names.qualified(name)

    # --- state kept in ClickHouse -----------------------------------------------------------

    async def _load(self) -> None:
        if self._loaded:
            return
        rows = await run_in_threadpool(
            self.storage.rows, f"SELECT Stream, max(Reserved) AS r FROM {self._table(PANOPTES_SEQ)} GROUP BY Stream"
        )
        self._reserved = {r["Stream"]: int(r["r"]) for r in rows}
        self._seq = dict(self._reserved)
        self._run = await run_in_threadpool(self._active_run)
        self._loaded = True

    def _active_run(self) -> Run | None:
        rows = self.storage.rows(
            "SELECT RunKey, argMax(RunId, Version) AS id, argMax(RunDir, Version) AS dir, argMax(Meta, Version) AS meta, "
            "argMax(StartedAt, Version) AS started, argMax(Stopped, Version) AS stopped, max(Version) AS v "
            f"FROM {self._table(PANOPTES_RUNS)} GROUP BY RunKey HAVING stopped = 0 ORDER BY v DESC LIMIT 1"
        )
        if not rows:
            return None
        r = rows[0]
        return Run(r["RunKey"], r["id"], r["dir"], jsontext.loads(r["meta"] or "{}"), r["started"])

    def _save_run(self, run: Run, stopped: bool) -> None:
        self.storage.command(
            f"INSERT INTO {self._table(PANOPTES_RUNS)} (RunKey, RunId, RunDir, Meta, StartedAt, Stopped, Version) "
            "VALUES ({k:String}, {id:String}, {dir:String}, {meta:String}, {started:String}, {stopped:UInt8}, {v:UInt64})",
            parameters={
                "k": run.key,
                "id": run.run_id,
                "dir": run.run_dir,
                "meta": compact_json(run.meta),
                "started": run.started_at,
                "stopped": int(stopped),
                "v": time.time_ns(),
            },
        )

    async def _next_seq(self, stream: str) -> int:
        number = self._seq.get(stream, 0) + 1
        if number > self._reserved.get(stream, 0):
            reserved = number + SEQ_BLOCK - 1
            await run_in_threadpool(
                self.storage.command,
                f"INSERT INTO {self._table(PANOPTES_SEQ)} (Stream, Reserved) VALUES ({{s:String}}, {{r:UInt64}})",
                {"s": stream, "r": reserved},
            )
            self._reserved[stream] = reserved
        self._seq[stream] = number
        return number

    # --- routes -----------------------------------------------------------------------------

    async def ready(self) -> dict[str, Any]:
        await self._load()
        return {"ready": True, "run_active": self._run is not None, "version": __version__}

    async def get_run(self) -> dict[str, Any]:
        await self._load()
        if self._run is None:
            raise HTTPException(404, "No run is active")
        return self._run.as_dict()

    async def start_run(self, run_dir: str | None, run_id: str | None, meta: dict[str, Any]) -> dict[str, Any]:
        """Start a run (409 when one is active); the id is given, else `meta.run_id`, else the next number."""
        async with self._lock:
            await self._load()
            if self._run is not None:
                raise HTTPException(409, "A run is already active")
            meta = dict(meta)
            resolved = str(run_id or meta.get("run_id") or await run_in_threadpool(self._next_run_id))
            meta["run_id"] = resolved
            if run_dir is None:
                path = str(PurePosixPath(self.site_dir) / resolved)
            else:
                path = run_dir if PurePosixPath(run_dir).is_absolute() else str(PurePosixPath(self.site_dir) / run_dir)
            run = Run(uuid.uuid4().hex, resolved, path, meta, utc_iso_z(time.time_ns()))
            await run_in_threadpool(self._save_run, run, False)
            self._run = run
            return run.as_dict()

    def _next_run_id(self) -> str:
        rows = self.storage.rows(f"SELECT DISTINCT RunId FROM {self._table(PANOPTES_RUNS)}")
        numbers = [r["RunId"] for r in rows if digits(str(r["RunId"]))]
        if not numbers:
            return "001"
        width = max(3, *(len(n) for n in numbers))
        return str(max(int(n) for n in numbers) + 1).zfill(width)

    async def stop_run(self) -> dict[str, Any]:
        """Stop the active run (404 when none); the run view empties with it."""
        async with self._lock:
            await self._load()
            if self._run is None:
                raise HTTPException(404, "No run is active")
            run = self._run
            await run_in_threadpool(self._save_run, run, True)
            self._run = None
            return run.as_dict()

    async def append_event(
        self,
        event_type: str,
        data: Any,
        make_current: bool,
        store_permanently: bool,
        meta: dict[str, Any],
        ts: str | None,
    ) -> dict[str, Any]:
        """Take one event: number it, store it (unless `store_permanently` is false) and make it
        current (if `make_current`); returns the envelope without its stream."""
        now = time.time_ns()
        try:
            time_ns = parse_time_ns(ts, "ts") if ts else now
        except ParamError as error:
            raise HTTPException(422, str(error)) from None
        if not storable(time_ns):  # the envelope and `panoptes.ts` keep `ts` as sent
            time_ns = now
        async with self._lock:
            await self._load()
            run = self._run
            stream = "run" if run is not None else "site"
            meta = dict(meta)
            if run is not None:
                meta["run_id"] = run.run_id
            seq = await self._next_seq(stream)
        envelope = {"seq": seq, "ts": ts or utc_iso_z(now), "stream": stream, "type": event_type}
        envelope |= {"data": data, "meta": meta}
        public = {k: v for k, v in envelope.items() if k != "stream"}
        if store_permanently:
            attributes: dict[str, Any] = {
                semconv.LAB_EVENT_TYPE: event_type,
                "panoptes.type": event_type,
                "panoptes.stream": stream,
                "panoptes.seq": seq,
                "panoptes.ts": envelope["ts"],
                "panoptes.day": site_day_key(datetime.fromtimestamp(now / 1e9, self.zone)),
                "panoptes.meta": compact_json(meta),
            }
            body = compact_json(data)
            if fits(body, self.writer.limits.max_attribute_value_length):
                attributes["panoptes.data"] = body  # else the body alone holds it
            if run is not None:
                attributes[semconv.LAB_RUN_ID] = run.run_id
            add_flattened(attributes, data, self.writer.limits)
            record = Record(
                body=body,
                time_ns=time_ns,
                attributes=attributes,
                resource={semconv.SERVICE_NAME: SERVICE},
                event_name=event_type,
                observed_ns=now,
            )
            await self.writer.write([record], SCOPE)
        if make_current:
            await run_in_threadpool(
                self.storage.command,
                f"INSERT INTO {self._table(PANOPTES_CURRENT)} (Stream, RunKey, Type, Seq, Envelope) "
                "VALUES ({s:String}, {k:String}, {t:String}, {q:UInt64}, {e:String})",
                {"s": stream, "k": run.key if run else "", "t": event_type, "q": seq, "e": compact_json(public)},
            )
        return public

    def _current(self, event_type: str | None) -> dict[str, dict[str, Any]]:
        run = self._run
        sql = (
            f"SELECT Stream, Type, argMax(Envelope, Seq) AS e FROM {self._table(PANOPTES_CURRENT)} "
            "WHERE (Stream = 'site' OR (Stream = 'run' AND RunKey = {k:String}))"
        )
        params: dict[str, Any] = {"k": run.key if run else "\x00"}
        if event_type is not None:
            sql += " AND Type = {t:String}"
            params["t"] = event_type
        rows = self.storage.rows(sql + " GROUP BY Stream, Type", parameters=params)
        merged: dict[str, dict[str, Any]] = {}
        for r in sorted(rows, key=lambda r: r["Stream"] == "run"):  # run values override site values
            merged[r["Type"]] = jsontext.loads(r["e"])
        return merged

    async def current(self, event_type: str | None = None) -> dict[str, dict[str, Any]]:
        """The current view: the latest envelope per type, the active run's over the site's."""
        await self._load()
        return await run_in_threadpool(self._current, event_type)

    def export(self, stream: str, day: str | None = None, run_id: str | None = None) -> bytes:
        """Stored events of the site stream on one day key, or of one run, as PANOPTES' NDJSON lines."""
        where = "ServiceName = {svc:String} AND LogAttributes['panoptes.stream'] = {stream:String}"
        params: dict[str, Any] = {"svc": SERVICE, "stream": stream}
        if day is not None:
            where += " AND LogAttributes['panoptes.day'] = {day:String}"
            params["day"] = day
        if run_id is not None:
            where += " AND RunId = {run:String}"
            params["run"] = run_id
        rows = self.storage.rows(
            "SELECT toUInt64OrZero(LogAttributes['panoptes.seq']) AS seq, LogAttributes['panoptes.ts'] AS ts, "
            "LogAttributes['panoptes.type'] AS type, "
            "if(mapContains(LogAttributes, 'panoptes.data'), LogAttributes['panoptes.data'], Body) AS data, "
            f"LogAttributes['panoptes.meta'] AS meta FROM {self.storage.names.logs} WHERE {where} AND {NOT_EXPIRED} "
            "ORDER BY seq, Timestamp",
            parameters=params,
        )
        lines = []
        for r in rows:
            line = {"seq": r["seq"], "ts": r["ts"], "stream": stream, "type": r["type"]}
            line |= {"data": _loads(r["data"] or "null"), "meta": _loads(r["meta"] or "{}")}
            lines.append(jsontext.dumps(line) + b"\n")
        return b"".join(lines)

    def run_known(self, run_id: str) -> bool:
        """Whether a run with this id was ever started."""
        return bool(
            self.storage.command(
                f"SELECT count() FROM {self._table(PANOPTES_RUNS)} WHERE RunId = {{id:String}}",
                parameters={"id": run_id},
            )
        )
