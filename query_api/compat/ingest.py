"""Writing events from the compatibility routes: never lose what was accepted.

Inside `labtel serve` the records go through the logs pipeline (group commit, write-ahead log),
exactly as an OTLP Export call does, so a success means they are durable. When the API runs
alone (`labtel api`) they are inserted directly with `Storage.insert_otlp`, which returns only
once ClickHouse has stored them. A storage failure is an `HTTPException` 503 with Retry-After;
records the storage refuses as invalid are a 400. When the pipeline stores some records of a
write and refuses others, `write` returns what was refused, so a route can answer a success
that says so (a 4xx would make a client send the stored ones again).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError
from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool

from labtel.collector.component import Consumer, ExportRejected, ExportUnavailable, PartialSuccess, Payload
from labtel.collector.otlp.limits import RecordLimits, fits
from labtel.collector.otlp.records import Record, Scalar, logs_request
from labtel.collector.otlp.signals import LOGS
from labtel.collector.storage.client import Storage, StorageError
from labtel.collector.storage.schema import EXACT_PATH_ERROR, MAX_TIME_NANOS, MAX_TIME_TEXT
from labtel.query_api.compat import jsontext
from labtel.sdk import __version__

MAX_DEPTH = 6
TRUNCATED = "lab.truncated"
"""Set by `fit`: what was cut to fit the storage's limits (a JSON list: "body", attribute names, and
"time" when the event's own time is one storage cannot hold and its arrival time stands in)."""
STORABLE_TIMES = f"1970-01-01T00:00:00Z to {MAX_TIME_TEXT}"
"""The event times storage holds (the OTLP time 0 means "not set")."""
LEFT_OUT = "lab.attributes_left_out"
"""Set by `add_flattened`: how many of the event's keys are not attributes (they are in its whole JSON copy)."""
MARKERS = (TRUNCATED, LEFT_OUT)


def compact_json(value: Any) -> str:
    """JSON text of any decoded JSON value, compact, keys in their order (non-JSON values as text)."""
    return jsontext.dumps(value, default=str).decode()


def scalar(value: Any) -> Scalar:
    """A JSON value as an attribute value: scalars as they are, anything else as compact JSON."""
    if isinstance(value, bool | str | int):
        return value if not isinstance(value, int) or -(2**63) <= value < 2**63 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None:
        return ""
    return compact_json(value)


def flatten(value: Any, prefix: str = "", out: dict[str, Scalar] | None = None, depth: int = 0) -> dict[str, Scalar]:
    """A JSON object as attributes: nested objects joined with dots (`a.b`), lists and deeper
    objects as compact JSON (`add_flattened` keeps them within the storage's limits)."""
    out = {} if out is None else out
    if not isinstance(value, Mapping):
        if prefix:
            out[prefix] = scalar(value)
        return out
    for key, item in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(item, Mapping) and item and depth < MAX_DEPTH:
            flatten(item, name, out, depth + 1)
        else:
            out[name] = scalar(item)
    return out


def add_flattened(attributes: dict[str, Scalar], value: Any, limits: RecordLimits) -> None:
    """Add a JSON object's keys to `attributes` as `flatten` names them (those already set stay),
    as many as the record may hold: up to `max_attributes_per_record` less the MARKERS slots, and
    none longer than `max_attribute_value_length`. How many were left out is LEFT_OUT; they are
    still in the event's whole JSON copy, so nothing is lost, but selectors do not see them."""
    room = limits.max_attributes_per_record - len(MARKERS)
    left_out = 0
    for key, item in flatten(value).items():
        if key in attributes:
            continue
        if len(attributes) >= room or (isinstance(item, str) and not fits(item, limits.max_attribute_value_length)):
            left_out += 1
        else:
            attributes[key] = item
    if left_out:
        attributes[LEFT_OUT] = left_out


def storable(time_ns: int) -> bool:
    """Whether storage holds an event at this time (STORABLE_TIMES); a later one is refused as
    invalid by both ingest paths, an earlier one would read as "not set"."""
    return 0 < time_ns <= MAX_TIME_NANOS


def cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, ending in a marker that says how long it was
    (`text` itself when it fits)."""
    if fits(text, limit):
        return text
    data = text.encode("utf-8", "surrogatepass")
    marker = f"…[cut: {len(data)} bytes]".encode()[:limit]
    return data[: limit - len(marker)].decode("utf-8", "ignore") + marker.decode("utf-8", "ignore")


def fit(record: Record, limits: RecordLimits) -> Record:
    """The record within the storage's limits, so that it is stored, never refused for them (the
    routes keep whole copies within the limits themselves; this catches the rest): a text value
    or body over its length limit is cut (`cut`) and attributes over the count are left out, the
    last first (flattened keys come last); an event time storage cannot hold (`storable`: a
    client's clock or a typo in 2206) is the arrival time; TRUNCATED names what was cut, left out
    or replaced. The routes keep the time as sent in their own attributes."""
    truncated: list[str] = []
    time_ns = record.time_ns
    if not storable(time_ns):
        time_ns = record.observed_ns or time.time_ns()
        truncated.append("time")
    attributes: dict[str, Scalar] = {}
    for key, value in record.attributes.items():
        if isinstance(value, str) and not fits(value, limits.max_attribute_value_length):
            value = cut(value, limits.max_attribute_value_length)
            truncated.append(key)
        attributes[key] = value
    body = record.body
    if not fits(body, limits.max_body_length):
        body = cut(body, limits.max_body_length)
        truncated.insert(0, "body")
    room = limits.max_attributes_per_record - 1  # and one for TRUNCATED
    if len(attributes) > limits.max_attributes_per_record or (truncated and len(attributes) > room):
        names = list(attributes)
        truncated += names[room:]
        attributes = {name: attributes[name] for name in names[:room]}
    if not truncated:
        return record
    attributes[TRUNCATED] = cut(compact_json(truncated), limits.max_attribute_value_length)
    return replace(record, body=body, attributes=attributes, time_ns=time_ns)


def encode(records: list[Record], scope: str) -> bytes:
    """The records as one serialized ExportLogsServiceRequest; invalid text is a 400."""
    try:
        return logs_request(records, scope, __version__)
    except ValueError as error:  # a lone surrogate from a JSON \\ud800 escape
        raise HTTPException(400, f"the event holds text that is not valid Unicode: {error}") from None


def encode_each(records: list[Record], scope: str) -> tuple[bytes, list[int]]:
    """The records as serialized ExportLogsServiceRequests (concatenated, they are one), but for
    those holding text that is not valid Unicode: their indexes are returned, so that a batch
    can store the others and list these."""
    try:
        return logs_request(records, scope, __version__), []
    except ValueError:
        pass
    parts: list[bytes] = []
    invalid: list[int] = []
    for index, record in enumerate(records):
        try:
            parts.append(logs_request([record], scope, __version__))
        except ValueError:
            invalid.append(index)
    return b"".join(parts), invalid


class EventWriter:
    """Stores records for the compatibility routes: through the logs pipeline when there is one
    (inside `labtel serve`), else straight into storage."""

    def __init__(self, storage: Storage, pipeline: Consumer | None = None) -> None:
        self.storage = storage
        self.pipeline = pipeline

    @property
    def limits(self) -> RecordLimits:
        """What one record may hold to be stored (the exporter's `limits`)."""
        return self.storage.names.limits

    async def write(self, records: list[Record], scope: str) -> PartialSuccess | None:
        """Store `records`; returns once they are durable, with what the pipeline refused of them
        when it stored the others. Raises HTTPException 503 (retry), or 400 when none was stored
        (or one holds text that is not valid Unicode)."""
        if not records:
            return None
        return await self.store(encode([fit(record, self.limits) for record in records], scope), len(records))

    async def store(self, data: bytes, records: int) -> PartialSuccess | None:
        """Store serialized ExportLogsServiceRequests (`encode`, `encode_each`; concatenated ones
        are one) holding `records` records, in one write: all of them are stored, or none. As
        `write`: returns once they are durable; raises HTTPException 503 (retry) or 400."""
        if not records:
            return None
        if self.pipeline is not None:
            try:
                partial = await self.pipeline.consume(Payload(LOGS, data, records))
            except ExportRejected as error:
                raise HTTPException(400, f"the events were refused: {error.message}") from None
            except ExportUnavailable as error:
                raise unavailable(error.message, error.retry_after_s) from None
            if partial is not None and partial.rejected >= records:
                raise HTTPException(400, f"the events were refused: {partial.message}")
            return partial
        try:
            await run_in_threadpool(self.storage.insert_otlp, "logs", data, f"compat-{uuid.uuid4()}")
        except ClickHouseError as error:
            if EXACT_PATH_ERROR in str(error):
                raise HTTPException(400, "the events hold values the storage refuses") from None
            raise unavailable(f"storage refused the insert: {str(error).splitlines()[0]}") from None
        except (StorageError, OSError) as error:
            raise unavailable(str(error)) from None
        return None


def unavailable(message: str, retry_after_s: float = 2.0) -> HTTPException:
    """A 503 that tells the client to try again later."""
    return HTTPException(
        503,
        f"storage is unavailable, try again: {message}",
        headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))},
    )
